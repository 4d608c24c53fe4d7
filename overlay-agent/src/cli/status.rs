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
    println!("store:     {} ({} static endpoints)", s.store, s.static_endpoints);
    println!("uptime:    {}s", s.uptime_secs);
    let mut t = table(&["NETWORK", "VNI", "SUBNET", "UDP PORT", "MTU", "LOCAL", "REMOTE"]);
    for n in &s.networks {
        t.add_row(vec![
            n.name.clone(),
            n.vni.to_string(),
            n.subnet.to_string(),
            n.udp_port.to_string(),
            n.mtu.to_string(),
            n.local_endpoints.to_string(),
            n.remote_endpoints.to_string(),
        ]);
    }
    println!("{t}");
    let mut p = table(&["PEER", "VTEP", "ENDPOINTS"]);
    for peer in &s.peers {
        p.add_row(vec![peer.node.clone(), peer.vtep.to_string(), peer.endpoints.to_string()]);
    }
    println!("{p}");
    Ok(())
}
