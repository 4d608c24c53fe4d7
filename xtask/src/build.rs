//! `cargo xtask build`: setup, then builds the workspace (the agent's build.rs builds the
//! eBPF object with aya-build, Debian's rustc and bpf-linker).
use std::{path::PathBuf, time::Instant};

use anyhow::Result;

use crate::{exec, setup, workspace};

/// overlay-agent's test-only feature that makes the upgrade-test variant (its
/// Cargo.toml says what it changes).
const VARIANT_FEATURE: &str = "upgrade-test-variant";

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

/// Builds the upgrade-test variant of the agent (dev profile, the same Cargo.lock) into
/// [`workspace::variant_target_dir`] and returns the binary. Only the agent's binary and
/// what it needs: its first build compiles those dependencies and the eBPF programs once
/// more (the target directory is separate), later builds only what changed.
pub fn build_variant() -> Result<PathBuf> {
    let dir = workspace::variant_target_dir();
    eprintln!(
        "xtask: building the upgrade-test variant of overlay-agent (--features {VARIANT_FEATURE}) into {}; \
         the first time, this compiles the agent's dependencies and the eBPF programs again (minutes)",
        dir.display()
    );
    let started = Instant::now();
    let mut cmd = workspace::cargo();
    cmd.args(["build", "--locked", "-p", "overlay-agent", "--bin", "overlay-agent", "--features", VARIANT_FEATURE])
        .arg("--target-dir")
        .arg(&dir);
    exec::exec(&mut cmd)?;
    let bin = dir.join("debug").join("overlay-agent");
    eprintln!("xtask: upgrade-test variant built in {:.1} s: {}", started.elapsed().as_secs_f64(), bin.display());
    Ok(bin)
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
