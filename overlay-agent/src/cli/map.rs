//! `overlay-agent map dump`: reads the pinned maps directly, so it works whether or
//! not the daemon is running (a running daemon only adds the node names behind VTEPs).

use std::collections::HashMap;

use anyhow::{Context as _, Result, bail};

use super::{
    args::{MapDumpArgs, MapTable},
    render::{json, table},
};
use crate::{
    api::{Request, Response, client},
    config::Config,
    datapath::{inspect, pinned::MapDump},
};

pub fn dump(config: &Config, args: MapDumpArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut d = rt.block_on(inspect::dump(config))?;
    if let Some(name) = &args.network {
        let Some(net) = config.network(name) else {
            let names: Vec<_> = config.networks.iter().map(|n| n.name.as_str()).collect();
            bail!("no network {name:?} in the config; it has: {}", names.join(", "));
        };
        d.only_network(net.vni);
    }
    d.name_nodes(&node_names(config));
    if !args.per_cpu {
        d.stats.iter_mut().for_each(|s| s.per_cpu_packets.clear());
    }
    if args.json {
        return match args.table {
            MapTable::All => json(&d),
            MapTable::Config => json(&d.config),
            MapTable::Networks => json(&d.networks),
            MapTable::Endpoints => json(&d.endpoints),
            MapTable::Neigh => json(&d.neighbours),
            MapTable::Fdb => json(&d.fdb),
            MapTable::Flood => json(&d.flood),
            MapTable::Routes => json(&d.routes),
            MapTable::Vteps => json(&d.vteps),
            MapTable::Stats => json(&d.stats),
        };
    }
    let show = |t: MapTable| args.table == MapTable::All || args.table == t;
    if args.table == MapTable::All {
        println!("datapath: {} (read from {})", d.datapath, d.pin_dir.display());
    }
    if show(MapTable::Config) {
        print_config(&d);
    }
    if show(MapTable::Networks) {
        let mut t = table(&["VNI", "UDP PORT", "MTU", "VXLAN FROM"]);
        for n in &d.networks {
            let from = match n.known_vteps_only {
                Some(true) => "known VTEPs",
                Some(false) => "any source",
                None => "-",
            };
            t.add_row(vec![n.vni.to_string(), n.udp_port.to_string(), n.mtu.to_string(), from.into()]);
        }
        println!("\nnetworks\n{t}");
    }
    if show(MapTable::Endpoints) {
        let mut t = table(&["HOST IFINDEX", "VNI", "IP", "MAC"]);
        for e in &d.endpoints {
            t.add_row(vec![e.ifindex.to_string(), e.vni.to_string(), e.ip.to_string(), e.mac.to_string()]);
        }
        println!("\nlocal endpoints\n{t}");
    }
    if show(MapTable::Neigh) {
        let mut t = table(&["VNI", "IP", "MAC"]);
        for n in &d.neighbours {
            t.add_row(vec![n.vni.to_string(), n.ip.to_string(), n.mac.to_string()]);
        }
        println!("\nneighbours (ARP answers)\n{t}");
    }
    if show(MapTable::Fdb) {
        let mut t = table(&["VNI", "MAC", "KIND", "VIA", "NODE"]);
        for f in &d.fdb {
            let via = match (f.ifindex, f.vtep, f.udp_port) {
                (Some(i), _, _) => format!("ifindex {i}"),
                (_, Some(v), Some(p)) => format!("{v}:{p}"),
                _ => "-".into(),
            };
            t.add_row(vec![f.vni.to_string(), f.mac.to_string(), f.kind.clone(), via, f.node.clone().unwrap_or_else(|| "-".into())]);
        }
        println!("\nfdb\n{t}");
    }
    if show(MapTable::Flood) {
        let mut t = table(&["VNI", "LOCAL VETHS", "VXLAN DEVICE", "REMOTE VTEPS"]);
        for f in &d.flood {
            let list = |v: Vec<String>| if v.is_empty() { "-".to_string() } else { v.join(",") };
            t.add_row(vec![
                f.vni.to_string(),
                list(f.local_ifindexes.iter().map(u32::to_string).collect()),
                f.vxlan_ifindex.map_or("-".into(), |i| format!("ifindex {i}")),
                list(f.remote_vteps.iter().map(ToString::to_string).collect()),
            ]);
        }
        println!("\nbroadcast/multicast replication\n{t}");
    }
    if show(MapTable::Routes) && (args.table == MapTable::Routes || !d.routes.is_empty()) {
        let mut t = table(&["VNI", "PREFIX", "KIND", "VIA"]);
        for r in &d.routes {
            let via = match (r.vtep, r.mac, r.udp_port, r.via) {
                (Some(v), Some(m), Some(p), _) => format!("{v}:{p} (router MAC {m})"),
                (_, _, _, Some(hop)) => format!("{hop} onlink"),
                _ => "-".into(),
            };
            t.add_row(vec![r.vni.to_string(), r.subnet.to_string(), r.kind.clone(), via]);
        }
        println!("\nroutes (node subnets of L3 networks, gateways)\n{t}");
    }
    if show(MapTable::Vteps) && d.datapath == "ebpf" {
        let mut t = table(&["VNI", "VTEP", "NODE"]);
        for v in &d.vteps {
            t.add_row(vec![v.vni.to_string(), v.vtep.to_string(), v.node.clone().unwrap_or_else(|| "-".into())]);
        }
        println!("\nVTEPs VXLAN is accepted from\n{t}");
    }
    if show(MapTable::Stats) {
        print_stats(&d, args.per_cpu);
    }
    Ok(())
}

fn print_config(d: &MapDump) {
    match &d.config {
        Some(c) => {
            let ports: Vec<_> = c.udp_ports.iter().map(u16::to_string).collect();
            println!(
                "config:   vtep {} underlay ifindex {} udp ports {} src ports {}-{} trace {}\n          encap {}\n          decap {}",
                c.vtep,
                c.underlay_ifindex,
                ports.join(","),
                c.src_port_min,
                c.src_port_max,
                c.trace,
                c.encap_flags,
                c.decap_flags
            );
        }
        None if d.datapath == "kernel" => println!("config:   kernel bridge + VXLAN devices (see networks)"),
        None => println!("config:   (not configured yet)"),
    }
}

fn print_stats(d: &MapDump, per_cpu: bool) {
    if d.datapath != "ebpf" {
        println!("\n(per-reason packet counters exist only in the eBPF datapath)");
        return;
    }
    let mut header = vec!["DIRECTION", "REASON", "KIND", "PACKETS", "BYTES"];
    let cpus: Vec<String> = (0..d.stats.first().map_or(0, |s| s.per_cpu_packets.len())).map(|i| format!("CPU{i}")).collect();
    if per_cpu {
        header.extend(cpus.iter().map(String::as_str));
    }
    let mut t = table(&header);
    for s in &d.stats {
        let mut row = vec![s.direction.clone(), s.reason.clone(), s.kind.clone(), s.packets.to_string(), s.bytes.to_string()];
        if per_cpu {
            row.extend(s.per_cpu_packets.iter().map(u64::to_string));
        }
        t.add_row(row);
    }
    println!("\nstats (all CPUs)\n{t}");
}

/// VTEP → node name, from the running agent's `status` (its peers); empty when no
/// agent answers (the dump itself needs none).
fn node_names(config: &Config) -> HashMap<std::net::Ipv4Addr, String> {
    match client::call(&config.socket_path(), &Request::Status) {
        Ok(Response::Status(s)) => s.peers.into_iter().map(|p| (p.vtep, p.node)).collect(),
        _ => HashMap::new(),
    }
}
