//! This node's part in L3 networks: which node subnet it routes (from the config, the
//! store, or, when the store is unreachable at start, the subnet it had before) and the
//! router MAC other hosts reach it with. The subnet is claimed before the datapath is
//! built (the kernel datapath puts its addresses on the devices) and published again
//! at every registration, under the node's lease.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use tracing::{info, warn};

use super::{
    Agent, AgentError,
    requests::{RequestError, check_mac},
};
use crate::{
    config::{Config, Network, NetworkMode},
    datapath::Router,
    mac::MacAddr,
    api::{SubnetInfo, SubnetSpec},
    desired::{Record, RecordKey},
    records::{StaticSubnetRecord, SubnetRecord, is_unicast},
    state::AgentState,
    store::{
        AnyKv,
        ipam,
        keys::Keys,
        kv::LeaseId,
        registry::ClaimError,
        subnets,
    },
};

/// The router MAC of `node` in network `vni`: stable across restarts and the same
/// whichever datapath runs (kernel mode gives it to the VXLAN device). `0e:` is a
/// locally administered unicast prefix that no container MAC of this agent uses
/// (those start with `02:42:` or are given by the user).
pub fn router_mac(node: &str, vni: u32) -> MacAddr {
    // FNV-1a over the node name and the VNI.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain(vni.to_be_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    MacAddr([0x0e, b[0], b[1], b[2], b[3], b[4]])
}

/// The anycast gateway MAC of L2 network `vni`: the same on every host, so a container
/// keeps its gateway's MAC wherever it runs (as EVPN fabrics' anycast gateways do).
/// Never published: each host answers for it locally. (A NUL never occurs in a node
/// name, so no node's router MAC comes from the same input.)
pub fn anycast_mac(vni: u32) -> MacAddr {
    router_mac("\0anycast-gateway", vni)
}

/// The router of L3 network `net` on `node` once its node subnet is known.
pub fn router(node: &str, net: &Network, subnet: Ipv4Net) -> Router {
    let gateway = ipam::gateway(subnet).unwrap_or(subnet.network());
    Router { subnet, gateway, mac: router_mac(node, net.vni), l3: true }
}

/// The anycast gateway of L2 network `net`, if it has one: the subnet's first address.
pub fn l2_gateway(net: &Network) -> Option<Router> {
    let gateway = ipam::gateway(net.subnet).filter(|_| net.gateway && net.mode == NetworkMode::L2)?;
    Some(Router { subnet: net.subnet, gateway, mac: anycast_mac(net.vni), l3: false })
}

fn record(config: &Config, net: &Network) -> SubnetRecord {
    SubnetRecord {
        node: config.node_name.clone(),
        network: net.name.clone(),
        mac: router_mac(&config.node_name, net.vni),
        udp_port: net.udp_port,
    }
}

/// This host's router in every network that has one: the anycast gateway of L2 networks
/// with a gateway, and the node subnet of every L3 network of `config`. `lease`: `None` when the store was
/// unreachable at start; then the configured or previously held subnet is used (and
/// claimed at registration), and a network without either cannot start.
pub(super) async fn acquire(
    config: &Config,
    kv: &AnyKv,
    keys: &Keys,
    lease: Option<LeaseId>,
    saved: Option<&AgentState>,
) -> Result<BTreeMap<u32, Router>, AgentError> {
    let mut out: BTreeMap<u32, Router> = config.networks.iter().filter_map(|n| Some((n.vni, l2_gateway(n)?))).collect();
    for net in config.networks.iter().filter(|n| n.mode == NetworkMode::L3) {
        let before = saved.and_then(|s| s.node_subnets.get(&net.vni).copied());
        let subnet = match (lease, net.node_subnet) {
            (Some(lease), Some(want)) => {
                subnets::claim(kv, keys, net.vni, want, &record(config, net), lease).await.map_err(AgentError::Claim)?;
                want
            }
            (Some(lease), None) => {
                let pool = subnets::Pool { cluster: net.subnet, len: net.node_prefix_len, prefer: before };
                let got = subnets::allocate(kv, keys, net.vni, pool, &record(config, net), lease)
                    .await
                    .map_err(AgentError::Claim)?;
                if before.is_some_and(|b| b != got) {
                    warn!(network = %net.name, before = ?before, now = %got, "this node's subnet changed (the old one was taken while it was away)");
                }
                got
            }
            (None, Some(want)) => want,
            (None, None) => before.ok_or_else(|| AgentError::NoNodeSubnet { network: net.name.clone() })?,
        };
        info!(network = %net.name, subnet = %subnet, "node subnet");
        out.insert(net.vni, router(&config.node_name, net, subnet));
    }
    Ok(out)
}

impl Agent {
    /// Publishes this node's subnets under the current lease (at every registration).
    /// A subnet another node took meanwhile is logged; the network keeps routing its
    /// own containers.
    pub(super) async fn publish_subnets(&mut self) -> Result<(), crate::store::StoreError> {
        for net in self.config.networks.iter().filter(|n| n.mode == NetworkMode::L3) {
            let Some(r) = self.desired.router(net.vni).copied().filter(|r| r.l3) else { continue };
            match subnets::claim(&self.kv, &self.keys, net.vni, r.subnet, &record(&self.config, net), self.lease).await {
                Ok(()) => {}
                Err(ClaimError::Store(e)) => return Err(e),
                Err(e) => tracing::error!(network = %net.name, subnet = %r.subnet, error = %e, "this node's subnet cannot be published; other hosts cannot reach its containers"),
            }
        }
        Ok(())
    }
}

impl Agent {
    /// The L3 network `name`, or why not.
    fn l3_network(&self, name: &str) -> Result<Network, RequestError> {
        let net = self.network_named(name)?;
        if net.mode != NetworkMode::L3 {
            return Err(RequestError::SubnetInL2 { network: net.name });
        }
        Ok(net)
    }

    /// `remote add --subnet`: a subnet routed by a host without an agent.
    pub(super) async fn add_static_subnet(&mut self, spec: SubnetSpec) -> Result<SubnetInfo, RequestError> {
        let net = self.l3_network(&spec.network)?;
        let s = spec.subnet;
        if !net.subnet.contains(&s) || s.network() != s.addr() || s.prefix_len() > 30 {
            return Err(RequestError::SubnetOutside { subnet: s, network: net.name, cluster: net.subnet });
        }
        check_mac(spec.mac)?;
        if spec.vtep == self.vtep || !is_unicast(spec.vtep) {
            return Err(RequestError::BadVtep { vtep: spec.vtep, own: self.vtep });
        }
        self.store_ready()?;
        let rec = StaticSubnetRecord {
            network: net.name.clone(),
            mac: spec.mac,
            vtep: spec.vtep,
            udp_port: net.udp_port,
            declared_by: self.config.node_name.clone(),
        };
        let (kv, keys) = (self.kv.clone(), self.keys.clone());
        self.store_write(|| subnets::add_static(&kv, &keys, net.vni, s, &rec)).await?;
        // Read your own writes: in the datapath before the answer.
        self.desired.put(Record::StaticSubnet(net.vni, s, rec.clone()));
        self.flush().await?;
        info!(network = %net.name, subnet = %s, vtep = %rec.vtep, mac = %rec.mac, "static subnet added");
        Ok(static_subnet_info(&net, s, &rec))
    }

    /// `remote del --subnet`.
    pub(super) async fn del_static_subnet(&mut self, network: &str, subnet: Ipv4Net) -> Result<SubnetInfo, RequestError> {
        let net = self.l3_network(network)?;
        let no_such = || RequestError::NoSuchSubnet { subnet, network: net.name.clone() };
        if !self.desired.has_static_subnet(net.vni, subnet) {
            return Err(no_such());
        }
        self.store_ready()?;
        let (kv, keys) = (self.kv.clone(), self.keys.clone());
        let removed = self.store_write(|| async { Ok(subnets::del_static(&kv, &keys, net.vni, subnet).await?) }).await?;
        let rec = removed.ok_or_else(no_such)?;
        self.desired.delete(&RecordKey::StaticSubnet(net.vni, subnet));
        self.flush().await?;
        info!(network, %subnet, "static subnet deleted");
        Ok(static_subnet_info(&net, subnet, &rec))
    }

    /// Every node subnet of the L3 networks: this node's, the other nodes', the static ones.
    pub(super) fn subnet_infos(&self) -> Vec<SubnetInfo> {
        let name = |vni: u32| self.config.network_by_vni(vni).map_or_else(|| vni.to_string(), |n| n.name.clone());
        let mut out: Vec<SubnetInfo> = self
            .desired
            .node_subnets()
            .into_iter()
            .filter(|(_, _, node, _)| *node != self.config.node_name)
            .map(|(vni, subnet, node, mac)| SubnetInfo { network: name(vni), vni, subnet, node, mac })
            .collect();
        for n in &self.config.networks {
            if let Some(r) = self.desired.router(n.vni).filter(|r| r.l3) {
                out.push(SubnetInfo { network: n.name.clone(), vni: n.vni, subnet: r.subnet, node: self.config.node_name.clone(), mac: r.mac });
            }
        }
        out.sort_by_key(|a| (a.vni, a.subnet));
        out
    }
}

/// How `status` and `remote add/del --subnet` show a static subnet.
fn static_subnet_info(net: &Network, subnet: Ipv4Net, rec: &StaticSubnetRecord) -> SubnetInfo {
    SubnetInfo { network: net.name.clone(), vni: net.vni, subnet, node: rec.holder(), mac: rec.mac }
}
