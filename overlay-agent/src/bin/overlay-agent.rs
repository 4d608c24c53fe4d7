//! The `overlay-agent` binary: logging setup and the CLI; everything else is the library.

use clap::Parser as _;
use overlay_agent::cli::{Cli, args::Command};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The daemon logs at info by default; CLI commands only warn, so their output stays clean.
    let default = if matches!(cli.command, Command::Run(_)) { "info" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match overlay_agent::cli::execute(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
