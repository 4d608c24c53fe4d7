//! `overlay-agent down`: asks the running agent to remove everything this node made
//! and exit; without a running agent, removes it from the saved state, the pins and
//! the kernel.

use anyhow::{Context as _, Result};

use super::{args::OutputArgs, render::json};
use crate::{
    agent::teardown,
    api::{Request, Response, client},
    config::Config,
};

pub fn execute(config: &Config, out: OutputArgs) -> Result<()> {
    let removed = match client::call(&config.socket_path(), &Request::Down) {
        Ok(Response::Down { removed }) => removed,
        Ok(Response::Error { message, .. }) => anyhow::bail!("{message}"),
        Ok(other) => return Err(super::render::unexpected(&other)),
        // No agent: do it here.
        Err(client::ClientError::Connect { .. }) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(teardown::down_offline(config))?
        }
        Err(e) => return Err(e.into()),
    };
    if out.json {
        return json(&removed);
    }
    if removed.is_empty() {
        println!("nothing of node {} was left to remove", config.node_name);
    }
    for r in removed {
        println!("removed {r}");
    }
    Ok(())
}
