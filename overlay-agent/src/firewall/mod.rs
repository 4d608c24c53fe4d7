//! The agent's own nftables table, `inet overlay_agent`: rules the kernel datapath
//! needs, never the host's other tables or chains. The whole table is written in one
//! `nft -f -` transaction (declared, flushed by deletion, declared again with its
//! contents), so it is replaced atomically and a rerun is a no-op; `down` deletes it as
//! a whole. The `nft` tool (Debian's `nftables` package) speaks the netlink protocol
//! for us: the rules are few and change only with the config.
//!
//! It holds:
//! - in kernel mode, the isolation of networks: the host routes between each network's
//!   bridge and VXLAN device, and without a rule it would also route from one network
//!   into another (the eBPF datapath never hands frames for another network to the
//!   host, so it needs no rule);
//! - source NAT (`masquerade`) for traffic from containers to outside every overlay
//!   network;
//! - published ports (`endpoint add --publish`): DNAT from this host's address;
//! - in kernel mode, anti-spoofing on each container's host-side veth (the bridge-family
//!   table): only the container's own MAC, IPv4 from its own address, ARP with its own
//!   sender fields, and nothing but IPv4 and ARP, as the eBPF datapath enforces;
//! - in kernel mode, the underlay filter: VXLAN of a network (its UDP port and VNI) only
//!   from the VTEPs the agent knows for it (`known_vteps_only`), as the eBPF datapath's
//!   `OVL_VTEPS` check does; the kernel's VXLAN device itself takes any source.

use std::{
    io::Write as _,
    net::Ipv4Addr,
    process::{Command, Stdio},
};

use ipnet::Ipv4Net;

use tracing::{debug, info};

use crate::datapath::devices::{bridge_name, vxlan_name};

mod ports;

pub use ports::{ParsePortError, PortMapping};

/// The table's family and name.
pub const TABLE: &str = "inet overlay_agent";
/// Kernel mode's bridge-family table (L2 networks' anycast gateways).
pub const BRIDGE_TABLE: &str = "bridge overlay_agent";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error(
        "running `nft` ({source}): the networks' gateways (masquerade, published ports) and, in kernel mode, the \
         isolation between networks and the containers' anti-spoofing rules need the nftables tool; install it \
         (`apt-get install nftables`)"
    )]
    Spawn {
        #[source]
        source: std::io::Error,
    },
    #[error("`nft -f -` refused the agent's table {TABLE}: {stderr}")]
    Refused { stderr: String },
}

/// A published port: `host_ip:host_port` (this host's underlay address) forwarded to
/// `ip:port` in a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dnat {
    pub proto: Proto,
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// What the table holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Kernel mode: the networks whose devices (bridge, VXLAN device) must not forward
    /// into another network's.
    pub isolate: Vec<u32>,
    /// Every overlay subnet this host serves.
    pub overlay: Vec<Ipv4Net>,
    /// Subnets whose traffic to destinations outside every overlay subnet leaves with
    /// the host's address (source NAT).
    pub masquerade: Vec<Ipv4Net>,
    pub publish: Vec<Dnat>,
    /// Kernel mode, L2 networks with a gateway: (VNI, the anycast gateway MAC). The
    /// bridge holding the gateway address sends frames of its own (IGMP reports, ARP)
    /// that it would flood to the VXLAN device, i.e. to every other host, where the same
    /// MAC is local: they are dropped on the way out.
    pub anycast: Vec<(u32, crate::mac::MacAddr)>,
    /// Kernel mode: the local containers' host-side veths and what they may send from.
    pub guards: Vec<Guard>,
    /// Kernel mode: the networks that take VXLAN only from known VTEPs, and those VTEPs.
    pub vteps: Vec<VtepFilter>,
}

/// VXLAN of one network (UDP port and VNI) is decapsulated only from `sources`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VtepFilter {
    pub vni: u32,
    pub udp_port: u16,
    pub sources: std::collections::BTreeSet<Ipv4Addr>,
}

/// A container's host-side veth and its own addresses (kernel mode's anti-spoofing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub mac: crate::mac::MacAddr,
}

impl Ruleset {
    pub fn is_empty(&self) -> bool {
        self.isolate.is_empty()
            && self.masquerade.is_empty()
            && self.publish.is_empty()
            && self.anycast.is_empty()
            && self.guards.is_empty()
            && self.vteps.is_empty()
    }

    /// The `nft -f -` script that replaces the table with this ruleset.
    pub fn script(&self) -> String {
        let mut t = format!("table {TABLE}\ndelete table {TABLE}\ntable {BRIDGE_TABLE}\ndelete table {BRIDGE_TABLE}\n");
        if !self.anycast.is_empty() || !self.guards.is_empty() {
            t += &format!("table {BRIDGE_TABLE} {{\n");
            if !self.anycast.is_empty() {
                t += "    chain output {\n        type filter hook output priority filter; policy accept;\n";
                for (vni, mac) in &self.anycast {
                    t += &format!("        oifname \"{}\" ether saddr {mac} drop comment \"the anycast gateway stays on its host\"\n", vxlan_name(*vni));
                }
                t += "    }\n";
            }
            if !self.guards.is_empty() {
                t += "    chain prerouting {\n        type filter hook prerouting priority filter; policy accept;\n";
                for g in &self.guards {
                    let (i, ip, mac) = (&g.ifname, g.ip, g.mac);
                    t += &format!("        iifname \"{i}\" ether saddr != {mac} counter drop comment \"anti-spoofing\"\n");
                    t += &format!("        iifname \"{i}\" ether type != {{ ip, arp }} counter drop comment \"IPv4 and ARP only\"\n");
                    t += &format!("        iifname \"{i}\" ip saddr != {ip} counter drop comment \"anti-spoofing\"\n");
                    t += &format!("        iifname \"{i}\" arp saddr ether != {mac} counter drop comment \"anti-spoofing\"\n");
                    t += &format!("        iifname \"{i}\" arp saddr ip != {{ {ip}, 0.0.0.0 }} counter drop comment \"anti-spoofing\"\n");
                }
                t += "    }\n";
            }
            t += "}\n";
        }
        t += &format!("table {TABLE} {{\n");
        if !self.vteps.is_empty() {
            // The VNI is the 24 bits at byte 12 of the UDP header and payload: after the
            // 8-byte UDP header, the VXLAN flags (1 byte) and 3 reserved bytes. The input
            // hook runs before the UDP socket hands the packet to the VXLAN device.
            t += "    chain input {\n        type filter hook input priority filter; policy accept;\n";
            for f in &self.vteps {
                let (port, vni) = (f.udp_port, f.vni);
                let from = if f.sources.is_empty() { String::new() } else { format!("ip saddr != {} ", set(&f.sources)) };
                t += &format!(
                    "        udp dport {port} @th,96,24 {vni} {from}counter drop comment \"VXLAN of VNI {vni} from an unknown VTEP\"\n"
                );
            }
            t += "    }\n";
        }
        if !self.isolate.is_empty() {
            t += "    chain forward {\n        type filter hook forward priority filter; policy accept;\n";
            for vni in &self.isolate {
                let devs = format!("{{ \"{}\", \"{}\" }}", bridge_name(*vni), vxlan_name(*vni));
                t += &format!("        iifname {devs} oifname {devs} accept\n");
            }
            // Anything else from one overlay device to another crosses networks.
            for (i, o) in [("ovbr", "ovbr"), ("ovbr", "ovvx"), ("ovvx", "ovbr"), ("ovvx", "ovvx")] {
                t += &format!("        iifname \"{i}*\" oifname \"{o}*\" counter drop comment \"isolation between overlay networks\"\n");
            }
            t += "    }\n";
        }
        if !self.publish.is_empty() {
            // Published ports: from other machines (prerouting) and from the host itself.
            // Priority -100 is `dstnat`, a name nft accepts for prerouting only.
            for (chain, hook) in [("prerouting", "prerouting"), ("output", "output")] {
                t += &format!("    chain {chain} {{\n        type nat hook {hook} priority -100; policy accept;\n");
                for d in &self.publish {
                    t += &format!(
                        "        ip daddr {} {} dport {} dnat ip to {}:{}\n",
                        d.host_ip,
                        d.proto.name(),
                        d.host_port,
                        d.ip,
                        d.port
                    );
                }
                t += "    }\n";
            }
        }
        if !self.masquerade.is_empty() {
            let overlay = set(&self.overlay);
            t += "    chain postrouting {\n        type nat hook postrouting priority srcnat; policy accept;\n";
            for s in &self.masquerade {
                t += &format!("        ip saddr {s} ip daddr != {overlay} counter masquerade\n");
            }
            t += "    }\n";
        }
        t += "}\n";
        t
    }
}

/// An anonymous nft set: `{ a, b }`.
fn set<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    format!("{{ {} }}", items.join(", "))
}

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
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

/// Makes the table hold `rules` (removes it when there is nothing to hold).
pub fn apply(rules: &Ruleset) -> Result<(), FirewallError> {
    if rules.is_empty() {
        remove()?;
        return Ok(());
    }
    nft(&rules.script())?;
    info!(
        table = TABLE,
        isolated = rules.isolate.len(),
        masquerade = rules.masquerade.len(),
        published = rules.publish.len(),
        vtep_filters = rules.vteps.len(),
        "nftables table in place"
    );
    Ok(())
}

/// Deletes the table; fine if there is none (or no `nft` at all: then the agent
/// cannot have made one).
pub fn remove() -> Result<bool, FirewallError> {
    match nft(&format!("table {TABLE}\ndelete table {TABLE}\ntable {BRIDGE_TABLE}\ndelete table {BRIDGE_TABLE}\n")) {
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
    fn the_script_isolates_masquerades_and_publishes() {
        let r = Ruleset {
            isolate: vec![50, 51],
            overlay: vec!["10.50.0.0/16".parse().unwrap(), "10.51.0.0/16".parse().unwrap()],
            masquerade: vec!["10.50.0.0/16".parse().unwrap()],
            publish: vec![Dnat {
                proto: Proto::Tcp,
                host_ip: "198.51.100.1".parse().unwrap(),
                host_port: 8080,
                ip: "10.50.0.2".parse().unwrap(),
                port: 80,
            }],
            anycast: vec![(42, crate::mac::MacAddr([0x0e, 1, 2, 3, 4, 5]))],
            guards: vec![Guard {
                ifname: "ovl0123".into(),
                ip: "10.50.0.2".parse().unwrap(),
                mac: crate::mac::MacAddr([2, 0x42, 10, 50, 0, 2]),
            }],
            vteps: vec![
                VtepFilter {
                    vni: 50,
                    udp_port: 4789,
                    sources: ["198.51.100.2".parse().unwrap(), "203.0.113.3".parse().unwrap()].into(),
                },
                VtepFilter { vni: 51, udp_port: 8472, sources: Default::default() },
            ],
        };
        let s = r.script();
        assert!(s.starts_with("table inet overlay_agent\ndelete table inet overlay_agent\ntable bridge overlay_agent\ndelete table bridge overlay_agent\n"), "{s}");
        assert!(s.contains("oifname \"ovvx42\" ether saddr 0e:01:02:03:04:05 drop"), "{s}");
        assert!(s.contains("iifname { \"ovbr50\", \"ovvx50\" } oifname { \"ovbr50\", \"ovvx50\" } accept"), "{s}");
        assert!(s.contains("iifname \"ovbr*\" oifname \"ovvx*\" counter drop"), "{s}");
        let forward = &s[s.find("chain forward").unwrap()..];
        assert!(forward.find("accept\n").unwrap() < forward.find("counter drop").unwrap(), "accepts come first: {s}");
        assert!(s.contains("ip saddr 10.50.0.0/16 ip daddr != { 10.50.0.0/16, 10.51.0.0/16 } counter masquerade"), "{s}");
        assert!(s.contains("ip daddr 198.51.100.1 tcp dport 8080 dnat ip to 10.50.0.2:80"), "{s}");
        assert!(s.contains("iifname \"ovl0123\" ether saddr != 02:42:0a:32:00:02 counter drop"), "{s}");
        assert!(s.contains("iifname \"ovl0123\" ether type != { ip, arp } counter drop"), "{s}");
        assert!(s.contains("iifname \"ovl0123\" ip saddr != 10.50.0.2 counter drop"), "{s}");
        assert!(s.contains("iifname \"ovl0123\" arp saddr ip != { 10.50.0.2, 0.0.0.0 } counter drop"), "{s}");
        assert!(
            s.contains("udp dport 4789 @th,96,24 50 ip saddr != { 198.51.100.2, 203.0.113.3 } counter drop"),
            "{s}"
        );
        assert!(s.contains("udp dport 8472 @th,96,24 51 counter drop"), "no known VTEP: nothing of VNI 51: {s}");
        assert!(Ruleset::default().is_empty());
    }
}
