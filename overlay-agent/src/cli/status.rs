//! `overlay-agent status`.

use anyhow::Result;

use super::{
    args::OutputArgs,
    render::{call, json, table, unexpected},
};
use crate::{
    api::{Request, Response},
    config::Config,
};

pub fn execute(config: &Config, out: OutputArgs) -> Result<()> {
    let s = match call(config, &Request::Status)? {
        Response::Status(s) => s,
        other => return Err(unexpected(&other)),
    };
    if out.json {
        return json(&s);
    }
    println!("node:      {}", s.node);
    println!("vtep:      {} on {} (mtu {})", s.vtep, s.underlay_interface, s.underlay_mtu);
    println!("datapath:  {} ({})", s.datapath.mode, s.datapath.detail);
    let st = &s.store;
    let mut conn = match &st.disconnected_since {
        Some(since) => format!("disconnected since {since}"),
        None => st.state.clone(),
    };
    if let (None, Some(member)) = (&st.disconnected_since, &st.member) {
        conn = format!("{conn} to {member}");
        if let Some(watched) = st.watch_member.as_ref().filter(|w| *w != member) {
            conn = format!("{conn}, watching on {watched}");
        }
    }
    println!(
        "store:     {} ({conn}; lease {} ttl {}s; {}{}; {} static endpoints{})",
        st.backend,
        st.lease.as_deref().unwrap_or("none"),
        st.lease_ttl_secs,
        if st.registered { "registered" } else { "not registered" },
        if st.synced { ", synced" } else { ", syncing" },
        s.static_endpoints,
        if st.pending_withdrawals > 0 { format!(", {} withdrawals pending", st.pending_withdrawals) } else { String::new() },
    );
    println!("uptime:    {}s", s.uptime_secs);
    let mut t = table(&["NETWORK", "VNI", "MODE", "SUBNET", "NODE SUBNET", "GATEWAY", "UDP PORT", "MTU", "LOCAL", "REMOTE"]);
    for n in &s.networks {
        let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        t.add_row(vec![
            n.name.clone(),
            n.vni.to_string(),
            match n.mode {
                crate::config::NetworkMode::L2 => "l2".into(),
                crate::config::NetworkMode::L3 => "l3".into(),
            },
            n.subnet.to_string(),
            dash(n.node_subnet.map(|x| x.to_string())),
            dash(n.gateway.map(|x| x.to_string())),
            n.udp_port.to_string(),
            n.mtu.to_string(),
            n.local_endpoints.to_string(),
            n.remote_endpoints.to_string(),
        ]);
    }
    println!("{t}");
    let mut t = table(&["TABLE", "ENTRIES", "CAPACITY", "NOT INSTALLED"]);
    for u in &s.tables {
        t.add_row(vec![
            u.name.clone(),
            u.entries.to_string(),
            u.capacity.map_or("-".into(), |c| c.to_string()),
            u.not_installed.to_string(),
        ]);
    }
    println!("{t}");
    let mut p = table(&["PEER", "VTEP", "ENDPOINTS"]);
    for peer in &s.peers {
        p.add_row(vec![peer.node.clone(), peer.vtep.to_string(), peer.endpoints.to_string()]);
    }
    println!("{p}");
    if !s.subnets.is_empty() {
        // The MAC is what a host configured by hand (seeds/003) gives the neighbour entry
        // of the node's address (the subnet's first) on its VXLAN device.
        let mut t = table(&["NETWORK", "NODE SUBNET", "NODE", "ROUTER MAC"]);
        for x in &s.subnets {
            t.add_row(vec![x.network.clone(), x.subnet.to_string(), x.node.clone(), x.mac.to_string()]);
        }
        println!("{t}");
    }
    Ok(())
}
