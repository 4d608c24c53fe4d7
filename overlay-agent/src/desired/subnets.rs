//! L3 networks and gateways in [`Desired`]: this host's router per network, and the node
//! subnets of other hosts (published by their agents, or static for hosts without
//! one), each a remote at the subnet's network address, so the neighbour, FDB and route
//! entries follow it through the same change tracking as endpoints.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{Desired, PublishedSubnet, Router};
use crate::records::{StaticSubnetRecord, SubnetRecord};

impl Desired {
    /// Gives this host a router in `vni`: an L3 network's node subnet, or an L2 network's
    /// anycast gateway (its gateway address answered with its MAC, frames to the MAC routed).
    pub fn set_router(&mut self, vni: u32, router: Router) {
        if let Some(old) = self.routers.insert(vni, router) {
            self.dirty.neigh.insert((vni, old.gateway));
            self.dirty.fdb.insert((vni, old.mac));
        }
        self.dirty.neigh.insert((vni, router.gateway));
        self.dirty.fdb.insert((vni, router.mac));
    }

    pub fn router(&self, vni: u32) -> Option<&Router> {
        self.routers.get(&vni)
    }

    pub fn is_l3(&self, vni: u32) -> bool {
        self.routers.get(&vni).is_some_and(|r| r.l3)
    }

    /// Whether the store holds the static subnet `net` of `vni`.
    pub fn has_static_subnet(&self, vni: u32, net: Ipv4Net) -> bool {
        self.static_subnets.get(&(vni, net.network())).is_some_and(|(len, _)| *len == net.prefix_len())
    }

    pub(super) fn put_subnet(&mut self, vni: u32, net: Ipv4Net, r: SubnetRecord) {
        let node = self.intern(&r.node);
        let p = PublishedSubnet { node: node.clone(), prefix_len: net.prefix_len(), mac: r.mac, udp_port: r.udp_port };
        let at = net.network();
        if self.subnets.get(&(vni, at)) == Some(&p) {
            return;
        }
        self.at(vni, at, |s| {
            if let Some(old) = s.subnets.insert((vni, at), p)
                && old.node != node
                && let Some(set) = s.node_subnets.get_mut(&old.node)
            {
                set.remove(&(vni, at));
            }
            s.node_subnets.entry(node).or_default().insert((vni, at));
        });
    }

    pub(super) fn del_subnet(&mut self, vni: u32, at: Ipv4Addr) {
        if !self.subnets.contains_key(&(vni, at)) {
            return;
        }
        self.at(vni, at, |s| {
            if let Some(old) = s.subnets.remove(&(vni, at))
                && let Some(set) = s.node_subnets.get_mut(&old.node)
            {
                set.remove(&(vni, at));
                if set.is_empty() {
                    s.node_subnets.remove(&old.node);
                }
            }
        });
    }


    pub(super) fn put_static_subnet(&mut self, vni: u32, net: Ipv4Net, s: StaticSubnetRecord) {
        let v = (net.prefix_len(), s);
        let at = net.network();
        if self.static_subnets.get(&(vni, at)) != Some(&v) {
            self.at(vni, at, |d| {
                d.static_subnets.insert((vni, at), v);
            });
        }
    }

    pub(super) fn del_static_subnet(&mut self, vni: u32, at: Ipv4Addr) {
        if self.static_subnets.contains_key(&(vni, at)) {
            self.at(vni, at, |s| {
                s.static_subnets.remove(&(vni, at));
            });
        }
    }
}
