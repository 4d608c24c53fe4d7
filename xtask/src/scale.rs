//! `cargo xtask scale`: builds the agent and `overlay-scale` (tests/src/bin/overlay-scale.rs)
//! with the release profile and replaces itself with it: one real agent against a store
//! holding a simulated cluster (1,000 nodes × 250 endpoints by default), load time,
//! change propagation under churn, memory and CPU. Release, because what is measured is
//! the agent's own CPU and memory, which a debug build inflates many times over.
use anyhow::Result;

use crate::{build, exec, setup, workspace};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// 100 nodes × 100 endpoints and 10 s of churn, to check that it works.
    #[arg(long)]
    pub quick: bool,
    /// Extra arguments for overlay-scale (`--store etcd|dir`, `--nodes N`,
    /// `--endpoints-per-node N`, `--churn-rate R`, `--churn-secs S`, `--idle-secs S`,
    /// `--seed N`, `--json FILE`, `--agent-log RUST_LOG`).
    #[arg(last = true)]
    pub extra: Vec<String>,
}

pub fn execute(args: &Args) -> Result<()> {
    setup::run()?;
    build::build_release(&[("overlay-agent", "overlay-agent"), ("integration-tests", "overlay-scale")])?;
    let release = workspace::target_dir().join("release");
    let mut cmd = std::process::Command::new(release.join("overlay-scale"));
    cmd.current_dir(workspace::root())
        .env("OVERLAY_AGENT_BIN", release.join("overlay-agent"))
        .args(["--json", &workspace::target_dir().join("scale/results.json").display().to_string()]);
    if args.quick {
        cmd.arg("--quick");
    }
    cmd.args(&args.extra);
    // Replaced, not spawned: Ctrl-C and SIGTERM reach overlay-scale, which tears down.
    Err(exec::exec_replace(&mut cmd))
}
