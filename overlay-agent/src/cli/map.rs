//! `overlay-agent map dump`: reads the pinned maps directly, so it works whether or
//! not the daemon is running.

use anyhow::Result;

use super::{
    args::OutputArgs,
    render::{json, table},
};
use crate::{config::Config, datapath::pinned};

pub fn dump(config: &Config, out: OutputArgs) -> Result<()> {
    let d = pinned::dump(&config.maps_dir())?;
    if out.json {
        return json(&d);
    }
    println!("datapath: {} (pins in {})", d.datapath, d.pin_dir.display());
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
        None => println!("config:   (not configured yet)"),
    }
    let mut t = table(&["VNI", "UDP PORT", "MTU"]);
    for n in &d.networks {
        t.add_row(vec![n.vni.to_string(), n.udp_port.to_string(), n.mtu.to_string()]);
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
    println!("\nstats (all CPUs)\n{t}");
    Ok(())
}
