//! `overlay-agent run`.

use anyhow::{Context as _, Result};

use crate::{agent, config::Config};

pub fn execute(config: Config) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(agent::run(config))?;
    Ok(())
}
