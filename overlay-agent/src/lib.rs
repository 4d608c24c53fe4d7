//! The overlay agent: loads the eBPF datapath, plugs containers in, follows the
//! control plane. The `overlay-agent` binary is a thin CLI over this library.

pub mod agent;
pub mod api;
pub mod bpffs;
pub mod cli;
pub mod config;
pub mod datapath;
pub mod desired;
pub mod docker;
pub mod firewall;
pub mod mac;
pub mod metrics;
pub mod netlink;
pub mod paths;
pub mod plumb;
pub mod records;
pub mod state;
pub mod store;

/// An error and its causes on one line, each cause once (many errors already name
/// their cause in their own message): for messages that carry a whole error as text,
/// such as `status`'s fallback reason.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out += ": ";
            out += &text;
        }
        source = cause.source();
    }
    out
}
