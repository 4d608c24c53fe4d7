//! `cargo xtask soak`: the churn soak (`tests/tests/soak.rs`) for as long as asked:
//! endpoints added and removed continuously on three hosts while stable pairs ping, then
//! checks that no stable ping was lost and nothing leaked (veths, map entries, pins,
//! descriptors, memory). `cargo xtask test` runs the same test for two minutes.
use std::time::Duration;

use anyhow::Result;

use crate::{build, exec, setup, workspace};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long to churn (e.g. `10m`, `2h`).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// The agents' datapath: `ebpf` or `kernel`.
    #[arg(long, default_value = "ebpf")]
    pub mode: String,
}

pub fn execute(args: &Args) -> Result<()> {
    setup::run()?;
    build::build(false)?;
    eprintln!("xtask: churn soak for {}, {} datapath", humantime::format_duration(args.duration), args.mode);
    let mut cmd = workspace::cargo();
    cmd.args(["test", "-p", "integration-tests", "--test", "soak", "--", "--nocapture", "--test-threads=1"])
        .env("OVERLAY_SOAK_SECS", args.duration.as_secs().to_string())
        .env("OVERLAY_TEST_DATAPATH", &args.mode)
        .env("OVERLAY_AGENT_BIN", workspace::debug_bin("overlay-agent"));
    exec::exec(&mut cmd)
}
