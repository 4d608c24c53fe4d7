//! The `overlay-agent` binary: logging setup and the CLI; everything else is the library.

use clap::Parser as _;
use overlay_agent::cli::{
    Cli,
    args::{Command, LogFormat},
};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let mut cli = Cli::parse();
    // Before any thread exists (setns into a mount namespace requires it): under `ip
    // netns exec`, rejoin the host's mount namespace so that pins land on the host's
    // bpffs. Relative paths are resolved first, against the directory we started in.
    let rejoin = overlay_agent::bpffs::absolute(&cli.config)
        .map(|abs| cli.config = abs)
        .and_then(|()| overlay_agent::bpffs::rejoin_host_mount_ns());
    // The daemon logs at info by default; CLI commands only warn, so their output stays clean.
    let default = if matches!(cli.command, Command::Run(_)) { "info" } else { "warn" };
    let filter = match &cli.log_level {
        Some(level) => match EnvFilter::try_new(level) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: --log-level {level:?} is not a level or filter ({e}); use error, warn, info, debug or trace");
                return std::process::ExitCode::FAILURE;
            }
        },
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
    };
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match rejoin {
        Ok(overlay_agent::bpffs::Rejoin::Joined { pid }) => tracing::info!(
            pid,
            "this process had a private /sys without the host's bpffs (ip netns exec); joined the mount namespace of pid {pid}"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "finding the host's bpffs"),
    }
    match overlay_agent::cli::execute(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", overlay_agent::with_causes(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}
