//! `overlay-agent run`.

use anyhow::{Context as _, Result};

use crate::{config::Config, daemon};

pub fn execute(config: Config) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(daemon::run(config))?;
    Ok(())
}
