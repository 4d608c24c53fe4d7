//! `cargo xtask bench`: installs the load tools, builds, and runs `overlay-bench`
//! (tests/src/bin/overlay-bench.rs): eBPF overlay vs kernel VXLAN vs direct routing.
use anyhow::Result;

use crate::{build, exec, setup, workspace};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One short round (2 s per measurement) instead of 3 rounds of 5 s.
    #[arg(long)]
    pub quick: bool,
    /// Extra arguments for overlay-bench (`--rounds N`, `--secs S`, `--json FILE`,
    /// `--setups a,b`, `--metrics a,b`, `--hold SETUP`, `--preload N`: N static remote
    /// endpoints in the eBPF setup's maps).
    #[arg(last = true)]
    pub extra: Vec<String>,
}

pub fn execute(args: &Args) -> Result<()> {
    setup::run()?;
    setup::ensure_apt(&["iperf3", "sockperf"])?;
    build::build(false)?;
    let mut cmd = std::process::Command::new(workspace::debug_bin("overlay-bench"));
    cmd.current_dir(workspace::root())
        .env("OVERLAY_AGENT_BIN", workspace::debug_bin("overlay-agent"))
        .args(["--json", &workspace::target_dir().join("bench/results.json").display().to_string()]);
    if args.quick {
        cmd.arg("--quick");
    }
    cmd.args(&args.extra);
    exec::exec(&mut cmd)
}
