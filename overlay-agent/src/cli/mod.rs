//! The `overlay-agent` command line: argument parsing and one module per subcommand.
//! Data is fetched into `Serialize` structs first, then rendered as tables or JSON.

pub mod args;
mod down;
mod endpoint;
mod map;
mod render;
mod run;
mod status;
mod trace;

use anyhow::Result;

pub use args::Cli;
use args::{Command, EndpointCommand, MapCommand, RemoteCommand};

use crate::config::Config;

pub fn execute(cli: Cli) -> Result<()> {
    let load = || Config::load(&cli.config);
    match cli.command {
        Command::Run(a) => {
            let mut config = load()?;
            if let Some(mode) = a.datapath {
                config.datapath.mode = mode;
            }
            run::execute(config)
        }
        Command::Endpoint(EndpointCommand::Add(a)) => endpoint::add(&load()?, a),
        Command::Endpoint(EndpointCommand::Del(a)) => endpoint::del(&load()?, a),
        Command::Endpoint(EndpointCommand::List(o)) => endpoint::list(&load()?, o),
        Command::Remote(RemoteCommand::Add(a)) => endpoint::remote_add(&load()?, a),
        Command::Remote(RemoteCommand::Del(a)) => endpoint::remote_del(&load()?, a),
        Command::Map(MapCommand::Dump(args)) => map::dump(&load()?, args),
        Command::Status(o) => status::execute(&load()?, o),
        Command::Trace(args) => trace::execute(&load()?, args),
        Command::Down(o) => down::execute(&load()?, o),
    }
}
