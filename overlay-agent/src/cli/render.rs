//! Output helpers shared by the subcommands: tables for people, JSON for machines.

use anyhow::{Context as _, Result, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use crate::api::{Response, client};

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(header.to_vec());
    t
}

pub fn json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value).context("encoding JSON")?);
    Ok(())
}

/// Sends a request to the agent; an error reply becomes an error.
pub fn call(config: &crate::config::Config, req: &crate::api::Request) -> Result<Response> {
    match client::call(&config.socket_path(), req)? {
        Response::Error { message, .. } => bail!("{message}"),
        other => Ok(other),
    }
}

pub fn unexpected(r: &Response) -> anyhow::Error {
    anyhow::anyhow!("unexpected reply from the agent: {r:?}")
}
