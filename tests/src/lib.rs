//! The end-to-end test harness: hosts and routers are network namespaces
//! ([`ns::NetNs`]) wired with veths and bridges ([`topo`]), traffic is made and
//! watched in pure Rust ([`traffic`], [`packet`]), and real agents run inside
//! the namespaces ([`agent`]), with etcd clusters on the underlay for their
//! control plane ([`etcd`]).
//!
//! Everything lives in namespaces the harness creates (named `ovt<pid>x<n>-*`)
//! and is deleted when their guards drop, also on failure; nothing touches the
//! machine's own interfaces, routes or sysctls. Underlays use 198.51.100.0/24
//! and 203.0.113.0/24 (documentation ranges). The tests need root; see
//! [`require_root`].

pub mod adoption;
pub mod agent;
pub mod bench;
pub mod containerd;
pub mod continuity;
pub mod daemon;
pub mod docker;
pub mod etcd;
pub mod interrupt;
pub mod lab;
pub mod ns;
pub mod packet;
pub mod pinned;
pub mod plain;
pub mod scale;
pub mod topo;
pub mod traffic;

pub use agent::{AgentProcess, CliOutput, agent_binary, cni_binary, run_cli, variant_binary};
pub use continuity::{LongConnection, Pinger};
pub use etcd::{EtcdCluster, EtcdOptions, TlsFiles};
pub use ns::NetNs;
pub use topo::{Host, Underlay, UnderlayBuilder};
pub use traffic::{Capture, Direction, Frame, PingResult, TransferResult, ping, tcp_transfer};

/// Environment variable: a factor (default 1) for the harness's hang guards (transfer
/// deadlines, agent start-up and stop waits, CLI timeouts). `cargo xtask vm-test` sets it
/// for kernels emulated without KVM, where everything runs many times slower. It never
/// loosens a property the tests check, only how long a stuck step may take to fail.
pub const SLOW_ENV: &str = "OVERLAY_TEST_SLOW";

/// `base` scaled by [`SLOW_ENV`].
pub fn hang_guard(base: std::time::Duration) -> std::time::Duration {
    let factor = std::env::var(SLOW_ENV).ok().and_then(|v| v.parse::<u32>().ok()).unwrap_or(1).max(1);
    base * factor
}

/// Fails the test (never skips it: a skipped check must not look like a pass) when not
/// running as root. `cargo xtask test` runs the suite as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, raw sockets, BPF): run it through `cargo xtask test` as root"
    );
}
