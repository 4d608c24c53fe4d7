//! `cargo xtask scale`: one real agent against a store holding a simulated cluster
//! (see `integration_tests::scale`). Prints a table and writes the results as JSON
//! (one entry per store backend, so an etcd and a dir run share one file).
//!
//! Usage: overlay-scale [--store etcd|dir] [--nodes N] [--endpoints-per-node N]
//!                      [--churn-rate R] [--churn-secs S] [--idle-secs S] [--quick]
//!                      [--seed N] [--json FILE] [--agent-log RUST_LOG]
//!
//! Ctrl-C or SIGTERM stops after the current step and tears everything down.

use std::{path::PathBuf, process::ExitCode};

use integration_tests::{
    interrupt,
    scale::{self, Options, StoreKind},
};

const USAGE: &str = "usage: overlay-scale [--store etcd|dir] [--nodes N] [--endpoints-per-node N] \
[--churn-rate R] [--churn-secs S] [--idle-secs S] [--quick] [--seed N] [--json FILE] [--agent-log RUST_LOG]";

struct Args {
    options: Options,
    json: PathBuf,
}

fn value<T: std::str::FromStr>(args: &mut impl Iterator<Item = String>, flag: &str) -> Result<T, String> {
    let v = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
    v.parse().map_err(|_| format!("{flag}: {v:?} is not valid"))
}

fn parse() -> Result<Args, String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // --quick sets the sizes first; explicit values given anywhere win over it.
    let mut options = Options::default();
    if argv.iter().any(|a| a == "--quick") {
        options = options.quick();
    }
    let mut json = PathBuf::from("target/scale/results.json");
    let mut args = argv.into_iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => {}
            "--store" => {
                options.store = match value::<String>(&mut args, "--store")?.as_str() {
                    "etcd" => StoreKind::Etcd,
                    "dir" => StoreKind::Dir,
                    other => return Err(format!("--store: {other:?} is neither etcd nor dir")),
                }
            }
            "--nodes" => options.nodes = value(&mut args, "--nodes")?,
            "--endpoints-per-node" => options.endpoints_per_node = value(&mut args, "--endpoints-per-node")?,
            "--churn-rate" => options.churn_rate = value(&mut args, "--churn-rate")?,
            "--churn-secs" => options.churn_secs = value(&mut args, "--churn-secs")?,
            "--idle-secs" => options.idle_secs = value(&mut args, "--idle-secs")?,
            "--seed" => options.seed = value(&mut args, "--seed")?,
            "--json" => json = value(&mut args, "--json")?,
            "--agent-log" => options.agent_log = Some(value(&mut args, "--agent-log")?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let log = json.with_file_name(format!("agent-{}.log", options.store.name()));
    options.agent_log_copy = Some(log);
    Ok(Args { options, json })
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    if let Err(e) = interrupt::install() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let report = match scale::run(&args.options) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("scale: {e}");
            if let Some(log) = &args.options.agent_log_copy {
                eprintln!("scale: the agent's log is in {}", log.display());
            }
            return ExitCode::FAILURE;
        }
    };
    println!("\n{}", report.table());
    match report.write_json(&args.json) {
        Ok(()) => println!("results written to {} (entry \"{}\")", args.json.display(), report.store),
        Err(e) => {
            eprintln!("writing {}: {e}", args.json.display());
            return ExitCode::FAILURE;
        }
    }
    if let Some(log) = &args.options.agent_log_copy {
        println!("the agent's log: {}", log.display());
    }
    ExitCode::SUCCESS
}
