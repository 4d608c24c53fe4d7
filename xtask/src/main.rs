//! `cargo xtask`: from a bare clone to a working build and test run, as root on Debian 12.
//! Every subcommand installs what it needs first (`setup`), and says so when nothing is missing.
mod bench;
mod build;
mod disk;
mod exec;
mod run;
mod scale;
mod setup;
mod soak;
mod test;
mod vm;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, test and run the overlay (as root, Debian 12)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install what is missing: apt packages, bpf-linker, the bpffs mount; check Debian's rustc.
    Setup,
    /// Setup, then build the workspace (the eBPF object through the agent's build.rs).
    Build(build::Args),
    /// Setup, build, then the unit tests and the integration suite.
    Test(test::Args),
    /// Setup, build, then run the lab (target/debug/overlay-lab).
    Run(run::Args),
    /// Benchmark: eBPF overlay vs kernel VXLAN vs direct routing (table + JSON).
    Bench(bench::Args),
    /// Scale: one real agent against a store holding a simulated cluster (load time,
    /// propagation under churn, memory, CPU; table + JSON).
    Scale(scale::Args),
    /// Boot Debian kernels in QEMU (virtme-ng) and run the integration suite in each.
    VmTest(vm::Args),
    /// Churn soak: endpoints added and removed on three hosts while stable pairs ping;
    /// checks no loss and no leak (veths, map entries, pins, descriptors, memory).
    Soak(soak::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // SAFETY: no threads have been started yet.
    let result = unsafe { workspace::put_cargo_bin_on_path() }.and_then(|()| match &cli.command {
        Cmd::Setup => setup::run(),
        Cmd::Build(args) => build::execute(args),
        Cmd::Test(args) => test::execute(args),
        Cmd::Run(args) => run::execute(args),
        Cmd::VmTest(args) => vm::execute(args),
        Cmd::Bench(args) => bench::execute(args),
        Cmd::Scale(args) => scale::execute(args),
        Cmd::Soak(args) => soak::execute(args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
