//! `overlay-agent endpoint add|del|list`.

use anyhow::Result;

use super::{
    args::{EndpointAddArgs, EndpointDelArgs, OutputArgs},
    render::{call, json, table, unexpected},
};
use crate::{
    api::{EndpointInfo, EndpointSpec, Request, Response},
    config::Config,
};

pub fn add(config: &Config, a: EndpointAddArgs) -> Result<()> {
    let req = Request::EndpointAdd(EndpointSpec {
        network: a.network,
        netns: a.netns,
        ip: a.ip,
        mac: a.mac,
        ifname: Some(a.ifname),
    });
    match call(config, &req)? {
        Response::Endpoint(info) => show_one(&info, a.output, "added"),
        other => Err(unexpected(&other)),
    }
}

pub fn del(config: &Config, a: EndpointDelArgs) -> Result<()> {
    match call(config, &Request::EndpointDel { network: a.network, ip: a.ip })? {
        Response::Deleted(info) => show_one(&info, a.output, "deleted"),
        other => Err(unexpected(&other)),
    }
}

fn show_one(info: &EndpointInfo, out: OutputArgs, what: &str) -> Result<()> {
    if out.json {
        return json(info);
    }
    println!(
        "endpoint {what}: network {} (vni {}) ip {} mac {} netns {} ifname {} host veth {}",
        info.network,
        info.vni,
        info.ip,
        info.mac,
        info.netns.as_deref().unwrap_or("-"),
        info.ifname.as_deref().unwrap_or("-"),
        info.host_ifname.as_deref().unwrap_or("-"),
    );
    Ok(())
}

pub fn list(config: &Config, out: OutputArgs) -> Result<()> {
    let endpoints = match call(config, &Request::EndpointList)? {
        Response::Endpoints { endpoints } => endpoints,
        other => return Err(unexpected(&other)),
    };
    if out.json {
        return json(&endpoints);
    }
    let mut t = table(&["NETWORK", "VNI", "IP", "MAC", "NODE", "VTEP", "WHERE", "NETNS", "HOST VETH"]);
    for e in &endpoints {
        t.add_row(vec![
            e.network.clone(),
            e.vni.to_string(),
            e.ip.to_string(),
            e.mac.to_string(),
            e.node.clone(),
            e.vtep.to_string(),
            if e.local { "local" } else { "remote" }.to_string(),
            e.netns.clone().unwrap_or_else(|| "-".into()),
            e.host_ifname.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    println!("{t}");
    Ok(())
}
