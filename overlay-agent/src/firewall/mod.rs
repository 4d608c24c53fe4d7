//! The agent's own nftables table, `inet overlay_agent`: rules the kernel datapath
//! needs, never the host's other tables or chains. The whole table is written in one
//! `nft -f -` transaction (declared, flushed by deletion, declared again with its
//! contents), so it is replaced atomically and a rerun is a no-op; `down` deletes it as
//! a whole. The `nft` tool (Debian's `nftables` package) speaks the netlink protocol
//! for us: the rules are few and change only with the config.
//!
//! Today it holds the isolation of L3 networks in kernel mode: the host routes between
//! each network's bridge and VXLAN device, and without a rule it would also route from
//! one network into another. (The eBPF datapath never hands routed frames to the host,
//! so it needs no rule.)

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use tracing::{debug, info};

use crate::datapath::devices::{bridge_name, vxlan_name};

/// The table's family and name.
pub const TABLE: &str = "inet overlay_agent";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error(
        "running `nft` ({source}): the kernel datapath's L3 networks need the nftables tool; \
         install it (`apt-get install nftables`) or use the eBPF datapath"
    )]
    Spawn {
        #[source]
        source: std::io::Error,
    },
    #[error("`nft -f -` refused the agent's table {TABLE}: {stderr}")]
    Refused { stderr: String },
}

/// The ruleset text for the L3 networks `vnis` (kernel mode).
pub fn ruleset(vnis: &[u32]) -> String {
    let mut forward = String::new();
    for vni in vnis {
        let devs = format!("{{ \"{}\", \"{}\" }}", bridge_name(*vni), vxlan_name(*vni));
        forward += &format!("        iifname {devs} oifname {devs} accept\n");
    }
    // Anything else from one overlay device to another crosses networks.
    for (i, o) in [("ovbr", "ovbr"), ("ovbr", "ovvx"), ("ovvx", "ovbr"), ("ovvx", "ovvx")] {
        forward += &format!("        iifname \"{i}*\" oifname \"{o}*\" counter drop comment \"isolation between overlay networks\"\n");
    }
    format!(
        "table {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{\n    chain forward {{\n        type filter hook forward priority filter; policy accept;\n{forward}    }}\n}}\n"
    )
}

fn nft(script: &str) -> Result<(), FirewallError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FirewallError::Spawn { source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|source| FirewallError::Spawn { source })?;
    }
    let out = child.wait_with_output().map_err(|source| FirewallError::Spawn { source })?;
    if !out.status.success() {
        return Err(FirewallError::Refused { stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned() });
    }
    Ok(())
}

/// Writes the table for the kernel datapath's L3 networks `vnis`.
pub fn apply(vnis: &[u32]) -> Result<(), FirewallError> {
    nft(&ruleset(vnis))?;
    info!(table = TABLE, networks = vnis.len(), "nftables table in place (isolation between L3 networks)");
    Ok(())
}

/// Deletes the table; fine if there is none (or no `nft` at all: then the agent
/// cannot have made one).
pub fn remove() -> Result<bool, FirewallError> {
    match nft(&format!("table {TABLE}\ndelete table {TABLE}\n")) {
        Ok(()) => {
            debug!(table = TABLE, "nftables table removed");
            Ok(true)
        }
        Err(FirewallError::Spawn { source }) if source.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_accepts_within_a_network_and_drops_across() {
        let r = ruleset(&[50, 51]);
        assert!(r.starts_with("table inet overlay_agent\ndelete table inet overlay_agent\n"), "{r}");
        assert!(r.contains("iifname { \"ovbr50\", \"ovvx50\" } oifname { \"ovbr50\", \"ovvx50\" } accept"), "{r}");
        assert!(r.contains("iifname \"ovbr*\" oifname \"ovvx*\" counter drop"), "{r}");
        let accept = r.find("accept\n").unwrap();
        let drop = r.find("drop").unwrap();
        assert!(accept < drop, "accepts come first: {r}");
    }
}
