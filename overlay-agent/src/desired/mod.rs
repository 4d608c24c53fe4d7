//! What this host must forward, kept up to date one change at a time.
//!
//! [`Desired`] holds the cluster as the store shows it (nodes, their endpoints, static
//! endpoints) and this host's own containers, and derives from them the entries the
//! datapath needs: the neighbour table (VNI, IP → MAC), the FDB (VNI, MAC → local veth or
//! remote VTEP), the local endpoint table and, per network, where broadcast copies go.
//! Every change marks exactly the entries it affects as dirty ([`Dirty`]), so applying a
//! change costs work in proportion to the change, not to the table: a new endpoint on
//! another node is one neighbour and one FDB entry, a node that changes its VTEP is that
//! node's endpoints.
//!
//! Rules, all deterministic:
//! - only networks this host serves (by VNI, the wire identity) produce entries;
//! - a local container wins over any remote claim of its IP or MAC;
//! - an endpoint published by a node wins over a static endpoint of the same IP (the
//!   store's transactions keep them apart; this only orders a transient overlap);
//! - an endpoint is usable only once its node is known (its VTEP comes from the node);
//! - two remote IPs claiming one MAC (the store prevents it; a transient): the lowest IP
//!   owns the FDB entry.

mod query;
mod subnets;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    sync::Arc,
};

use ipnet::Ipv4Net;

use crate::{
    mac::MacAddr,
    records::{EndpointRecord, NodeRecord, StaticRecord, StaticSubnetRecord, SubnetRecord},
};

/// Maps and sets of the cluster-sized tables below: foldhash (seeded per process) hashes
/// these small keys several times faster than the default SipHash, which loading
/// 250,000 endpoints feels (every record is hashed into about ten tables). The keys
/// come from the store, which only the cluster's agents write.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// A container on this host, as the datapath needs it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LocalEndpoint {
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// The host-side veth.
    pub ifindex: u32,
    pub ifname: String,
}

/// Where frames for a MAC go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FdbTarget {
    /// A container on this host, behind this host-side veth.
    Local { ifindex: u32 },
    /// Behind a remote VTEP, over VXLAN to this UDP port.
    Remote { vtep: Ipv4Addr, udp_port: u16 },
    /// This host's router MAC in an L3 network: routed by IPv4 destination.
    Router,
}

/// This host's router in a network: in an L3 network the node subnet it routes, the
/// containers' gateway (the subnet's first address) and the router MAC that answers for
/// it; in an L2 network with a gateway, the network's subnet and its anycast gateway
/// (the same address and MAC on every host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Router {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub mac: MacAddr,
    /// An L3 network (else L2 with a gateway).
    pub l3: bool,
}

/// A node subnet published by a node (in an L3 network), as kept here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PublishedSubnet {
    node: Arc<str>,
    prefix_len: u8,
    mac: MacAddr,
    udp_port: u16,
}

/// A remote endpoint in effect: what it resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub mac: MacAddr,
    pub vtep: Ipv4Addr,
    pub udp_port: u16,
    /// The owning node; `None` for a static endpoint.
    pub node: Option<Arc<str>>,
}

/// A published endpoint, as kept here (names interned: 250,000 of them share a few
/// hundred node names).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Published {
    node: Arc<str>,
    network: Arc<str>,
    mac: MacAddr,
    udp_port: u16,
}

/// Entries whose desired value may have changed since the last [`Desired::take_dirty`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    pub neigh: HashSet<(u32, Ipv4Addr)>,
    pub fdb: HashSet<(u32, MacAddr)>,
    /// Local endpoints, by host-side ifindex.
    pub endpoints: HashSet<u32>,
    /// Networks whose broadcast replication changed.
    pub flood: HashSet<u32>,
    /// Node subnets of L3 networks, by (VNI, network address).
    pub routes: HashSet<(u32, Ipv4Addr)>,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.neigh.is_empty() && self.fdb.is_empty() && self.endpoints.is_empty() && self.flood.is_empty() && self.routes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.neigh.len() + self.fdb.len() + self.endpoints.len() + self.flood.len() + self.routes.len()
    }
}

/// One or more IPs claiming a MAC; almost always one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owners {
    One(Ipv4Addr),
    Many(BTreeSet<Ipv4Addr>),
}

impl Owners {
    fn first(&self) -> Ipv4Addr {
        match self {
            Owners::One(ip) => *ip,
            Owners::Many(set) => *set.first().unwrap_or(&Ipv4Addr::UNSPECIFIED),
        }
    }
}

/// A record as the store holds it, with its key's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Node(NodeRecord),
    Endpoint(u32, Ipv4Addr, EndpointRecord),
    Static(u32, Ipv4Addr, StaticRecord),
    Subnet(u32, Ipv4Net, SubnetRecord),
    StaticSubnet(u32, Ipv4Net, StaticSubnetRecord),
}

/// A record's identity (what a delete names).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RecordKey {
    Node(String),
    Endpoint(u32, Ipv4Addr),
    Static(u32, Ipv4Addr),
    Subnet(u32, Ipv4Net),
    StaticSubnet(u32, Ipv4Net),
}

#[derive(Debug, Default)]
pub struct Desired {
    me: String,
    /// VNI → UDP port of the networks this host serves.
    served: BTreeMap<u32, u16>,
    interned: FastSet<Arc<str>>,
    nodes: FastMap<Arc<str>, Ipv4Addr>,
    node_endpoints: FastMap<Arc<str>, FastSet<(u32, Ipv4Addr)>>,
    endpoints: FastMap<(u32, Ipv4Addr), Published>,
    statics: FastMap<(u32, Ipv4Addr), StaticRecord>,
    /// L3 networks this host serves, with its own node subnet in each.
    routers: BTreeMap<u32, Router>,
    /// Node subnets by (VNI, network address): published by nodes, and static ones.
    subnets: FastMap<(u32, Ipv4Addr), PublishedSubnet>,
    static_subnets: FastMap<(u32, Ipv4Addr), (u8, StaticSubnetRecord)>,
    node_subnets: FastMap<Arc<str>, FastSet<(u32, Ipv4Addr)>>,
    local: BTreeMap<u32, LocalEndpoint>,
    local_ip: FastMap<(u32, Ipv4Addr), u32>,
    local_mac: FastMap<(u32, MacAddr), u32>,
    mac_owners: FastMap<(u32, MacAddr), Owners>,
    /// Per VNI: remote (VTEP, port) → number of endpoints behind it.
    flood: FastMap<u32, FastMap<(Ipv4Addr, u16), u32>>,
    dirty: Dirty,
    /// Inside [`Desired::snapshot_untracked`]: changes are not recorded in `dirty`.
    untracked: bool,
}

impl Desired {
    /// `me`: this node's name (its own published endpoints are local, not remote);
    /// `served`: VNI → UDP port of the networks this host serves.
    pub fn new(me: &str, served: BTreeMap<u32, u16>) -> Self {
        let mut d = Desired { served, ..Default::default() };
        d.me = me.to_owned();
        for &vni in d.served.keys() {
            d.dirty.flood.insert(vni);
        }
        d
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn serves(&self, vni: u32) -> bool {
        self.served.contains_key(&vni)
    }

    pub fn served(&self) -> impl Iterator<Item = u32> + '_ {
        self.served.keys().copied()
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.interned.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.interned.insert(a.clone());
        a
    }

    // ---- changes -------------------------------------------------------------------

    /// The entries changed since the last call.
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Marks every entry dirty (after adopting a datapath whose contents are unknown).
    pub fn all_dirty(&self) -> Dirty {
        let mut d = Dirty::default();
        for ((vni, ip), _) in self.all_neigh() {
            d.neigh.insert((vni, ip));
        }
        for ((vni, mac), _) in self.all_fdb() {
            d.fdb.insert((vni, mac));
        }
        d.endpoints.extend(self.local.keys().copied());
        d.flood.extend(self.served.keys().copied());
        d.routes.extend(self.all_routes().map(|(k, _, _)| k));
        d
    }

    /// Runs `change`, then records what it did to (vni, ip)'s remote endpoint.
    fn at(&mut self, vni: u32, ip: Ipv4Addr, change: impl FnOnce(&mut Self)) {
        let old = self.remote(vni, ip);
        change(self);
        let new = self.remote(vni, ip);
        self.moved(vni, ip, old, new);
    }

    fn moved(&mut self, vni: u32, ip: Ipv4Addr, old: Option<Remote>, new: Option<Remote>) {
        if old == new {
            return;
        }
        let track = !self.untracked;
        if track {
            self.dirty.neigh.insert((vni, ip));
        }
        // In an L3 network a remote is a node subnet: a route; broadcast stays on the
        // host (no flood entries).
        let l3 = self.is_l3(vni);
        if l3 && track {
            self.dirty.routes.insert((vni, ip));
        }
        if let Some(o) = old {
            self.unown(vni, o.mac, ip);
            if track {
                self.dirty.fdb.insert((vni, o.mac));
            }
            if !l3
                && let Some(m) = self.flood.get_mut(&vni)
                && let Some(n) = m.get_mut(&(o.vtep, o.udp_port))
            {
                *n -= 1;
                if *n == 0 {
                    m.remove(&(o.vtep, o.udp_port));
                    if track {
                        self.dirty.flood.insert(vni);
                    }
                }
            }
        }
        if let Some(n) = new {
            self.own(vni, n.mac, ip);
            if track {
                self.dirty.fdb.insert((vni, n.mac));
            }
            if !l3 {
                let count = self.flood.entry(vni).or_default().entry((n.vtep, n.udp_port)).or_insert(0);
                *count += 1;
                if *count == 1 && track {
                    self.dirty.flood.insert(vni);
                }
            }
        }
    }

    fn own(&mut self, vni: u32, mac: MacAddr, ip: Ipv4Addr) {
        match self.mac_owners.get_mut(&(vni, mac)) {
            None => {
                self.mac_owners.insert((vni, mac), Owners::One(ip));
            }
            Some(Owners::One(other)) if *other == ip => {}
            Some(o @ Owners::One(_)) => {
                let first = o.first();
                *o = Owners::Many(BTreeSet::from([first, ip]));
            }
            Some(Owners::Many(set)) => {
                set.insert(ip);
            }
        }
    }

    fn unown(&mut self, vni: u32, mac: MacAddr, ip: Ipv4Addr) {
        let key = (vni, mac);
        let remove = match self.mac_owners.get_mut(&key) {
            Some(Owners::One(o)) => *o == ip,
            Some(Owners::Many(set)) => {
                set.remove(&ip);
                if set.len() == 1 {
                    let last = set.first().copied().unwrap_or(ip);
                    self.mac_owners.insert(key, Owners::One(last));
                }
                false
            }
            None => false,
        };
        if remove {
            self.mac_owners.remove(&key);
        }
    }

    /// Applies one record from the store (created or changed).
    pub fn put(&mut self, record: Record) {
        match record {
            Record::Node(n) => self.put_node(&n.node, n.vtep),
            Record::Endpoint(vni, ip, e) => self.put_endpoint(vni, ip, e),
            Record::Static(vni, ip, s) => self.put_static(vni, ip, s),
            Record::Subnet(vni, net, s) => self.put_subnet(vni, net, s),
            Record::StaticSubnet(vni, net, s) => self.put_static_subnet(vni, net, s),
        }
    }

    /// Applies one deletion from the store.
    pub fn delete(&mut self, key: &RecordKey) {
        match key {
            RecordKey::Node(n) => self.del_node(n),
            RecordKey::Endpoint(vni, ip) => self.del_endpoint(*vni, *ip),
            RecordKey::Static(vni, ip) => {
                if self.statics.contains_key(&(*vni, *ip)) {
                    self.at(*vni, *ip, |s| {
                        s.statics.remove(&(*vni, *ip));
                    });
                }
            }
            RecordKey::Subnet(vni, net) => self.del_subnet(*vni, net.network()),
            RecordKey::StaticSubnet(vni, net) => self.del_static_subnet(*vni, net.network()),
        }
    }

    /// Replaces the whole store view with `records` (after a list or relist): deletes
    /// what is no longer there, applies the rest; only real differences become dirty.
    pub fn snapshot(&mut self, records: Vec<Record>) {
        let mut nodes = FastSet::default();
        let mut eps = FastSet::with_capacity_and_hasher(records.len(), Default::default());
        let mut sts = FastSet::default();
        let mut subs = FastSet::default();
        let mut static_subs = FastSet::default();
        for r in &records {
            match r {
                Record::Node(n) => {
                    nodes.insert(n.node.clone());
                }
                Record::Endpoint(vni, ip, _) => {
                    eps.insert((*vni, *ip));
                }
                Record::Static(vni, ip, _) => {
                    sts.insert((*vni, *ip));
                }
                Record::Subnet(vni, net, _) => {
                    subs.insert((*vni, net.network()));
                }
                Record::StaticSubnet(vni, net, _) => {
                    static_subs.insert((*vni, net.network()));
                }
            }
        }
        let gone: Vec<_> = self.subnets.keys().filter(|k| !subs.contains(*k)).copied().collect();
        for (vni, at) in gone {
            self.del_subnet(vni, at);
        }
        let gone: Vec<_> = self.static_subnets.keys().filter(|k| !static_subs.contains(*k)).copied().collect();
        for (vni, at) in gone {
            self.del_static_subnet(vni, at);
        }
        let gone_eps: Vec<_> = self.endpoints.keys().filter(|k| !eps.contains(*k)).copied().collect();
        for (vni, ip) in gone_eps {
            self.delete(&RecordKey::Endpoint(vni, ip));
        }
        let gone_sts: Vec<_> = self.statics.keys().filter(|k| !sts.contains(*k)).copied().collect();
        for (vni, ip) in gone_sts {
            self.delete(&RecordKey::Static(vni, ip));
        }
        let gone_nodes: Vec<_> = self.nodes.keys().filter(|n| !nodes.contains(&***n)).map(|n| n.to_string()).collect();
        for n in gone_nodes {
            self.del_node(&n);
        }
        // Room for everything at once rather than rehashing all along the way.
        self.endpoints.reserve(eps.len().saturating_sub(self.endpoints.len()));
        self.mac_owners.reserve((eps.len() + sts.len()).saturating_sub(self.mac_owners.len()));
        self.statics.reserve(sts.len().saturating_sub(self.statics.len()));
        // Nodes first, so their endpoints resolve as they arrive.
        let (node_records, rest): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| matches!(r, Record::Node(_)));
        for r in node_records.into_iter().chain(rest) {
            self.put(r);
        }
    }

    /// [`Desired::snapshot`] for a caller that compares the whole datapath with the
    /// result right after (a full resync): the same state, without recording which
    /// entries changed (at 250,000 endpoints that record is half a million set
    /// insertions, all thrown away). Whatever was dirty before is dropped too.
    pub fn snapshot_untracked(&mut self, records: Vec<Record>) {
        self.untracked = true;
        self.snapshot(records);
        self.untracked = false;
        self.dirty = Dirty::default();
    }

    fn put_node(&mut self, name: &str, vtep: Ipv4Addr) {
        if self.nodes.get(name) == Some(&vtep) {
            return;
        }
        let name = self.intern(name);
        self.rekey_node(&name, |s| {
            s.nodes.insert(name.clone(), vtep);
        });
    }

    fn del_node(&mut self, name: &str) {
        if !self.nodes.contains_key(name) {
            return;
        }
        let name = self.intern(name);
        self.rekey_node(&name, |s| {
            s.nodes.remove(&name);
        });
    }

    /// Runs `change` on a node, re-resolving every endpoint and subnet it published.
    fn rekey_node(&mut self, name: &Arc<str>, change: impl FnOnce(&mut Self)) {
        let eps: Vec<_> = self
            .node_endpoints
            .get(name)
            .into_iter()
            .flatten()
            .chain(self.node_subnets.get(name).into_iter().flatten())
            .copied()
            .collect();
        let old: Vec<_> = eps.iter().map(|&(vni, ip)| self.remote(vni, ip)).collect();
        change(self);
        for (&(vni, ip), old) in eps.iter().zip(old) {
            let new = self.remote(vni, ip);
            self.moved(vni, ip, old, new);
        }
    }

    fn put_endpoint(&mut self, vni: u32, ip: Ipv4Addr, e: EndpointRecord) {
        let node = self.intern(&e.node);
        let network = self.intern(&e.network);
        let p = Published { node: node.clone(), network, mac: e.mac, udp_port: e.udp_port };
        if self.endpoints.get(&(vni, ip)) == Some(&p) {
            return;
        }
        self.at(vni, ip, |s| {
            if let Some(old) = s.endpoints.insert((vni, ip), p)
                && old.node != node
                && let Some(set) = s.node_endpoints.get_mut(&old.node)
            {
                set.remove(&(vni, ip));
            }
            s.node_endpoints.entry(node).or_default().insert((vni, ip));
        });
    }

    fn del_endpoint(&mut self, vni: u32, ip: Ipv4Addr) {
        if !self.endpoints.contains_key(&(vni, ip)) {
            return;
        }
        self.at(vni, ip, |s| {
            if let Some(old) = s.endpoints.remove(&(vni, ip))
                && let Some(set) = s.node_endpoints.get_mut(&old.node)
            {
                set.remove(&(vni, ip));
                if set.is_empty() {
                    s.node_endpoints.remove(&old.node);
                }
            }
        });
    }

    fn put_static(&mut self, vni: u32, ip: Ipv4Addr, st: StaticRecord) {
        if self.statics.get(&(vni, ip)) == Some(&st) {
            return;
        }
        self.at(vni, ip, |s| {
            s.statics.insert((vni, ip), st);
        });
    }

    /// Plugs a local container into the tables.
    pub fn add_local(&mut self, ep: LocalEndpoint) {
        let (vni, ip, mac, ifindex) = (ep.vni, ep.ip, ep.mac, ep.ifindex);
        if let Some(old) = self.local.get(&ifindex).cloned() {
            self.remove_local(old.ifindex);
        }
        self.at(vni, ip, |s| {
            s.local.insert(ifindex, ep);
            s.local_ip.insert((vni, ip), ifindex);
            s.local_mac.insert((vni, mac), ifindex);
        });
        self.dirty.neigh.insert((vni, ip));
        self.dirty.fdb.insert((vni, mac));
        self.dirty.endpoints.insert(ifindex);
        self.dirty.flood.insert(vni);
    }

    /// Takes a local container out of the tables; returns it if it was there.
    pub fn remove_local(&mut self, ifindex: u32) -> Option<LocalEndpoint> {
        let ep = self.local.get(&ifindex)?.clone();
        let (vni, ip, mac) = (ep.vni, ep.ip, ep.mac);
        self.at(vni, ip, |s| {
            s.local.remove(&ifindex);
            if s.local_ip.get(&(vni, ip)) == Some(&ifindex) {
                s.local_ip.remove(&(vni, ip));
            }
            if s.local_mac.get(&(vni, mac)) == Some(&ifindex) {
                s.local_mac.remove(&(vni, mac));
            }
        });
        self.dirty.neigh.insert((vni, ip));
        self.dirty.fdb.insert((vni, mac));
        self.dirty.endpoints.insert(ifindex);
        self.dirty.flood.insert(vni);
        Some(ep)
    }
}
