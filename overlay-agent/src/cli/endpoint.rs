//! `overlay-agent endpoint add|del|list`.

use anyhow::Result;

use super::{
    args::{EndpointAddArgs, EndpointDelArgs, OutputArgs, RemoteAddArgs, RemoteDelArgs},
    render::{call, json, table, unexpected},
};
use crate::{
    api::{EndpointInfo, EndpointSpec, RemoteSpec, Request, Response, SubnetInfo, SubnetSpec},
    config::Config,
};

pub fn add(config: &Config, a: EndpointAddArgs) -> Result<()> {
    let req = Request::EndpointAdd(EndpointSpec {
        network: a.network,
        netns: a.netns,
        ip: a.ip,
        mac: a.mac,
        ifname: Some(a.ifname),
        handoff: false,
        owner: None,
        publish: a.publish,
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

pub fn remote_add(config: &Config, a: RemoteAddArgs) -> Result<()> {
    let req = match (a.ip, a.subnet) {
        (_, Some(subnet)) => Request::SubnetAdd(SubnetSpec { network: a.network, subnet, mac: a.mac, vtep: a.vtep }),
        (Some(ip), None) => Request::RemoteAdd(RemoteSpec { network: a.network, ip, mac: a.mac, vtep: a.vtep }),
        (None, None) => anyhow::bail!("give --ip (L2 network) or --subnet (L3 network)"),
    };
    match call(config, &req)? {
        Response::Endpoint(info) => show_one(&info, a.output, "added"),
        Response::Subnet(info) => show_subnet(&info, a.output, "added"),
        other => Err(unexpected(&other)),
    }
}

pub fn remote_del(config: &Config, a: RemoteDelArgs) -> Result<()> {
    let req = match (a.ip, a.subnet) {
        (_, Some(subnet)) => Request::SubnetDel { network: a.network, subnet },
        (Some(ip), None) => Request::RemoteDel { network: a.network, ip },
        (None, None) => anyhow::bail!("give --ip (L2 network) or --subnet (L3 network)"),
    };
    match call(config, &req)? {
        Response::Deleted(info) => show_one(&info, a.output, "deleted"),
        Response::Subnet(info) => show_subnet(&info, a.output, "deleted"),
        other => Err(unexpected(&other)),
    }
}

fn show_subnet(info: &SubnetInfo, out: OutputArgs, what: &str) -> Result<()> {
    if out.json {
        return json(info);
    }
    println!("subnet {what}: network {} (vni {}) subnet {} via {} mac {}", info.network, info.vni, info.subnet, info.node, info.mac);
    Ok(())
}

fn show_one(info: &EndpointInfo, out: OutputArgs, what: &str) -> Result<()> {
    if out.json {
        return json(info);
    }
    match info.kind {
        crate::api::EndpointKind::Local => println!(
            "endpoint {what}: network {} (vni {}) ip {} mac {} netns {} ifname {} host veth {}",
            info.network,
            info.vni,
            info.ip,
            info.mac,
            info.netns.as_deref().unwrap_or("-"),
            info.ifname.as_deref().unwrap_or("-"),
            info.host_ifname.as_deref().unwrap_or("-"),
        ),
        kind => println!(
            "{} endpoint {what}: network {} (vni {}) ip {} mac {} behind vtep {}",
            kind.as_str(),
            info.network,
            info.vni,
            info.ip,
            info.mac,
            info.vtep
        ),
    }
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
            e.kind.as_str().to_string(),
            e.netns.clone().unwrap_or_else(|| "-".into()),
            e.host_ifname.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    println!("{t}");
    Ok(())
}
