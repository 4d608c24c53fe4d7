//! `overlay-agent map dump`: reads the pinned maps directly, so it works whether or
//! not the daemon is running.

use anyhow::{Context as _, Result};

use super::{
    args::OutputArgs,
    render::{json, table},
};
use crate::{config::Config, datapath::inspect};

pub fn dump(config: &Config, out: OutputArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let d = rt.block_on(inspect::dump(config))?;
    if out.json {
        return json(&d);
    }
    println!("datapath: {} (read from {})", d.datapath, d.pin_dir.display());
    match &d.config {
        Some(c) => {
            let ports: Vec<_> = c.udp_ports.iter().map(u16::to_string).collect();
            println!(
                "config:   vtep {} underlay ifindex {} udp ports {} src ports {}-{}\n          encap {}\n          decap {}",
                c.vtep,
                c.underlay_ifindex,
                ports.join(","),
                c.src_port_min,
                c.src_port_max,
                c.encap_flags,
                c.decap_flags
            );
        }
        None if d.datapath == "kernel" => println!("config:   kernel bridge + VXLAN devices (see networks)"),
        None => println!("config:   (not configured yet)"),
    }
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
    let mut t = table(&["HOST IFINDEX", "VNI", "IP", "MAC"]);
    for e in &d.endpoints {
        t.add_row(vec![e.ifindex.to_string(), e.vni.to_string(), e.ip.to_string(), e.mac.to_string()]);
    }
    println!("\nlocal endpoints\n{t}");
    let mut t = table(&["VNI", "IP", "MAC"]);
    for n in &d.neighbours {
        t.add_row(vec![n.vni.to_string(), n.ip.to_string(), n.mac.to_string()]);
    }
    println!("\nneighbours (ARP answers)\n{t}");
    let mut t = table(&["VNI", "MAC", "KIND", "VIA"]);
    for f in &d.fdb {
        let via = match (f.ifindex, f.vtep, f.udp_port) {
            (Some(i), _, _) => format!("ifindex {i}"),
            (_, Some(v), Some(p)) => format!("{v}:{p}"),
            _ => "-".into(),
        };
        t.add_row(vec![f.vni.to_string(), f.mac.to_string(), f.kind.clone(), via]);
    }
    println!("\nfdb\n{t}");
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
    if !d.routes.is_empty() {
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
    if d.datapath == "ebpf" {
        let mut t = table(&["VNI", "VTEP"]);
        for v in &d.vteps {
            t.add_row(vec![v.vni.to_string(), v.vtep.to_string()]);
        }
        println!("\nVTEPs VXLAN is accepted from\n{t}");
    }
    let mut t = table(&["DIRECTION", "REASON", "KIND", "PACKETS", "BYTES"]);
    for s in &d.stats {
        t.add_row(vec![
            s.direction.clone(),
            s.reason.clone(),
            s.kind.clone(),
            s.packets.to_string(),
            s.bytes.to_string(),
        ]);
    }
    if d.datapath == "ebpf" {
        println!("\nstats (all CPUs)\n{t}");
    } else {
        println!("\n(per-reason packet counters exist only in the eBPF datapath)");
    }
    Ok(())
}
