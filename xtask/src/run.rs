//! `cargo xtask run`: setup, build, then replaces itself with the lab binary (namespaces,
//! agents, pings, map dumps) that the integration-tests crate provides.
use std::{ffi::OsString, process::Command};

use anyhow::{Result, bail};

use crate::{build, exec, setup, workspace};

const LAB: &str = "overlay-lab";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Leave the lab's namespaces and agents in place when it finishes, for inspection.
    #[arg(long)]
    pub keep: bool,
    /// The store the lab's agents share: a directory (default) or an etcd server the lab
    /// starts in a namespace of its own.
    #[arg(long, value_parser = ["dir", "etcd"], default_value = "dir")]
    pub store: String,
    /// What makes the lab's containers: `overlay-agent endpoint add` (default), or
    /// `docker run` with a dockerd per host and the agent's Docker plugin.
    #[arg(long, value_parser = ["endpoint", "docker"], default_value = "endpoint")]
    pub runtime: String,
    /// Further arguments for overlay-lab (after `--`).
    #[arg(last = true)]
    pub lab_args: Vec<OsString>,
}

pub fn execute(args: &Args) -> Result<()> {
    setup::run()?;
    build::build(false)?;
    let lab = workspace::debug_bin(LAB);
    if !lab.is_file() {
        bail!(
            "{} does not exist after the build: the lab binary `{LAB}` should come from the \
             integration-tests crate (tests/), which does not provide it (yet)",
            lab.display()
        );
    }
    let mut cmd = Command::new(&lab);
    if args.keep {
        cmd.arg("--keep");
    }
    cmd.args(["--store", &args.store, "--runtime", &args.runtime]);
    cmd.args(&args.lab_args)
        .env("OVERLAY_AGENT_BIN", workspace::debug_bin("overlay-agent"))
        .current_dir(workspace::root());
    Err(exec::exec_replace(&mut cmd))
}
