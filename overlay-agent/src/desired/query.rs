//! What [`Desired`] holds: the entries the datapath must have, and the views `status`,
//! `endpoint list` and the store side need.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;

use super::{Desired, FdbTarget, LocalEndpoint, Remote};
use crate::{mac::MacAddr, records::StaticRecord};

impl Desired {
    /// The remote endpoint in effect at (vni, ip), if any.
    pub fn remote(&self, vni: u32, ip: Ipv4Addr) -> Option<Remote> {
        if !self.serves(vni) || self.local_ip.contains_key(&(vni, ip)) {
            return None;
        }
        if self.is_l3(vni) {
            // Routed: the remotes are the other nodes' subnets, by network address (the
            // next hop's address, as seeds/003 and flannel give each node's VXLAN device).
            return self.route(vni, ip).map(|(_, r)| r);
        }
        if let Some(p) = self.endpoints.get(&(vni, ip)) {
            if *p.node == *self.me {
                // This node's own record, without a local container (being withdrawn).
                return None;
            }
            if let Some(&vtep) = self.nodes.get(&p.node) {
                return Some(Remote { mac: p.mac, vtep, udp_port: p.udp_port, node: Some(p.node.clone()) });
            }
        }
        self.statics
            .get(&(vni, ip))
            .map(|s| Remote { mac: s.mac, vtep: s.vtep, udp_port: s.udp_port, node: None })
    }

    /// The node subnet of another host (or a static one) whose network address is `at`
    /// in L3 network `vni`: its prefix length and where it is. `None` in an L2 network
    /// (whatever subnet records the store holds for its VNI).
    pub fn route(&self, vni: u32, at: Ipv4Addr) -> Option<(u8, Remote)> {
        if !self.serves(vni) || !self.is_l3(vni) {
            return None;
        }
        if let Some(p) = self.subnets.get(&(vni, at))
            && *p.node != *self.me
            && let Some(&vtep) = self.nodes.get(&p.node)
        {
            return Some((p.prefix_len, Remote { mac: p.mac, vtep, udp_port: p.udp_port, node: Some(p.node.clone()) }));
        }
        self.static_subnets
            .get(&(vni, at))
            .map(|(len, s)| (*len, Remote { mac: s.mac, vtep: s.vtep, udp_port: s.udp_port, node: None }))
    }

    /// The VTEPs VXLAN of `vni` may come from: those of its remote endpoints (L2) or
    /// node subnets (L3), static ones included.
    pub fn vteps(&self, vni: u32) -> BTreeSet<Ipv4Addr> {
        let mut out: BTreeSet<Ipv4Addr> =
            self.flood.get(&vni).into_iter().flat_map(|m| m.keys().map(|&(vtep, _)| vtep)).collect();
        if self.is_l3(vni) {
            out.extend(self.all_routes().filter(|((v, _), _, _)| *v == vni).map(|(_, _, r)| r.vtep));
        }
        out
    }

    /// Every route in effect: ((vni, network address), prefix length, where).
    pub fn all_routes(&self) -> impl Iterator<Item = ((u32, Ipv4Addr), u8, Remote)> + '_ {
        self.subnets
            .keys()
            .chain(self.static_subnets.keys().filter(|k| !self.subnets.contains_key(k)))
            .filter_map(|&(vni, at)| self.route(vni, at).map(|(len, r)| ((vni, at), len, r)))
    }

    /// Node subnets as the store shows them: (vni, subnet, node) (for `status`).
    pub fn node_subnets(&self) -> Vec<(u32, Ipv4Net, String, MacAddr)> {
        let mut out: Vec<_> = self
            .subnets
            .iter()
            .filter_map(|(&(vni, at), p)| Some((vni, Ipv4Net::new(at, p.prefix_len).ok()?, p.node.to_string(), p.mac)))
            .chain(self.static_subnets.iter().filter_map(|(&(vni, at), (len, s))| {
                Some((vni, Ipv4Net::new(at, *len).ok()?, s.holder(), s.mac))
            }))
            .collect();
        out.sort_by_key(|a| (a.0, a.1));
        out
    }

    /// The MAC that answers ARP for (vni, ip).
    pub fn neigh(&self, vni: u32, ip: Ipv4Addr) -> Option<MacAddr> {
        if let Some(ifindex) = self.local_ip.get(&(vni, ip)) {
            return self.local.get(ifindex).map(|l| l.mac);
        }
        if let Some(r) = self.routers.get(&vni).filter(|r| r.gateway == ip) {
            return Some(r.mac);
        }
        self.remote(vni, ip).map(|r| r.mac)
    }

    /// Where frames for (vni, mac) go.
    pub fn fdb(&self, vni: u32, mac: MacAddr) -> Option<FdbTarget> {
        if let Some(&ifindex) = self.local_mac.get(&(vni, mac)) {
            return Some(FdbTarget::Local { ifindex });
        }
        if self.routers.get(&vni).is_some_and(|r| r.mac == mac) {
            return Some(FdbTarget::Router);
        }
        let ip = self.mac_owners.get(&(vni, mac))?.first();
        self.remote(vni, ip).map(|r| FdbTarget::Remote { vtep: r.vtep, udp_port: r.udp_port })
    }

    pub fn local(&self) -> &BTreeMap<u32, LocalEndpoint> {
        &self.local
    }

    pub fn local_endpoint(&self, ifindex: u32) -> Option<&LocalEndpoint> {
        self.local.get(&ifindex)
    }

    /// Host-side veths of `vni`'s local endpoints (broadcast copies), in ifindex order.
    pub fn flood_local(&self, vni: u32) -> Vec<u32> {
        self.local.values().filter(|l| l.vni == vni).map(|l| l.ifindex).collect()
    }

    /// Remote VTEPs (with their UDP port) that have endpoints in `vni`.
    pub fn flood_remote(&self, vni: u32) -> BTreeSet<(Ipv4Addr, u16)> {
        self.flood.get(&vni).map(|m| m.keys().copied().collect()).unwrap_or_default()
    }

    /// Every neighbour entry.
    pub fn all_neigh(&self) -> impl Iterator<Item = ((u32, Ipv4Addr), MacAddr)> + '_ {
        let local = self.local.values().map(|l| ((l.vni, l.ip), l.mac));
        let gateways = self.routers.iter().map(|(&vni, r)| ((vni, r.gateway), r.mac));
        let remote = self
            .endpoints
            .keys()
            .chain(self.statics.keys().filter(|k| !self.endpoints.contains_key(k)))
            .filter(|(vni, _)| !self.is_l3(*vni))
            .filter_map(|&(vni, ip)| self.remote(vni, ip).map(|r| ((vni, ip), r.mac)));
        let routed = self.all_routes().map(|(k, _, r)| (k, r.mac));
        local.chain(gateways).chain(remote).chain(routed)
    }

    /// Every FDB entry.
    pub fn all_fdb(&self) -> impl Iterator<Item = ((u32, MacAddr), FdbTarget)> + '_ {
        let local = self.local.values().map(|l| ((l.vni, l.mac), FdbTarget::Local { ifindex: l.ifindex }));
        let remote = self
            .mac_owners
            .keys()
            .filter(|k| !self.local_mac.contains_key(k))
            .filter_map(|&(vni, mac)| self.fdb(vni, mac).map(|t| ((vni, mac), t)));
        let routers = self.routers.iter().map(|(&vni, r)| ((vni, r.mac), FdbTarget::Router));
        local.chain(routers).chain(remote)
    }

    /// Remote endpoints in effect in `vni` (for `status`).
    pub fn remote_count(&self, vni: u32) -> usize {
        self.flood.get(&vni).map_or(0, |m| m.values().map(|&n| n as usize).sum())
    }

    /// Known nodes other than this one: (name, VTEP, endpoints published).
    pub fn peers(&self) -> Vec<(String, Ipv4Addr, usize)> {
        let mut out: Vec<_> = self
            .nodes
            .iter()
            .filter(|(n, _)| ***n != *self.me)
            .map(|(n, &vtep)| (n.to_string(), vtep, self.node_endpoints.get(n).map_or(0, |eps| eps.len())))
            .collect();
        out.sort();
        out
    }

    pub fn node_vtep(&self, node: &str) -> Option<Ipv4Addr> {
        self.nodes.get(node).copied()
    }

    /// Published endpoints: (vni, ip, node, network, mac).
    pub fn published(&self) -> impl Iterator<Item = (u32, Ipv4Addr, &str, &str, MacAddr)> + '_ {
        self.endpoints.iter().map(|(&(vni, ip), p)| (vni, ip, &*p.node, &*p.network, p.mac))
    }

    /// This node's endpoints as the store shows them: (vni, ip) → MAC.
    pub fn own_published(&self) -> HashMap<(u32, Ipv4Addr), MacAddr> {
        self.node_endpoints
            .get(self.me.as_str())
            .into_iter()
            .flatten()
            .filter_map(|k| self.endpoints.get(k).map(|p| (*k, p.mac)))
            .collect()
    }

    pub fn statics(&self) -> impl Iterator<Item = (u32, Ipv4Addr, &StaticRecord)> + '_ {
        self.statics.iter().map(|(&(vni, ip), s)| (vni, ip, s))
    }

    pub fn static_at(&self, vni: u32, ip: Ipv4Addr) -> Option<&StaticRecord> {
        self.statics.get(&(vni, ip))
    }

    /// Who holds (vni, ip) or (vni, mac) in the store or on this host, as a name for
    /// messages: `Some((true, holder))` for the IP, `(false, holder)` for the MAC.
    pub fn holder(&self, vni: u32, ip: Ipv4Addr, mac: MacAddr) -> Option<(bool, String)> {
        if self.local_ip.contains_key(&(vni, ip)) {
            return Some((true, self.me.clone()));
        }
        if let Some(p) = self.endpoints.get(&(vni, ip)) {
            return Some((true, p.node.to_string()));
        }
        if self.statics.contains_key(&(vni, ip)) {
            return Some((true, "static".into()));
        }
        if self.local_mac.contains_key(&(vni, mac)) {
            return Some((false, self.me.clone()));
        }
        if let Some(o) = self.mac_owners.get(&(vni, mac))
            && let Some(r) = self.remote(vni, o.first())
        {
            return Some((false, r.node.map_or_else(|| "static".to_string(), |n| n.to_string())));
        }
        None
    }
}
