//! `cargo xtask build`: setup, then builds the workspace (the agent's build.rs builds the
//! eBPF object with aya-build, Debian's rustc and bpf-linker).
use anyhow::Result;

use crate::{exec, setup, workspace};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

pub fn execute(args: &Args) -> Result<()> {
    setup::run()?;
    build(args.release)
}

/// `cargo build` of every host crate. `--workspace` would include overlay-ebpf (it ignores
/// `default-members`), which only builds for the BPF target, through build.rs.
pub fn build(release: bool) -> Result<()> {
    let mut cmd = workspace::cargo();
    cmd.args(["build", "--workspace", "--exclude", "overlay-ebpf"]);
    if release {
        cmd.arg("--release");
    }
    exec::exec(&mut cmd)
}

/// `cargo build --release` of just these (package, binary) pairs: the benchmarks that
/// measure the agent itself run optimised builds.
pub fn build_release(bins: &[(&str, &str)]) -> Result<()> {
    let mut cmd = workspace::cargo();
    cmd.args(["build", "--release"]);
    for (package, bin) in bins {
        cmd.args(["-p", package, "--bin", bin]);
    }
    exec::exec(&mut cmd)
}
