//! What the control plane knows: nodes and their endpoints, as published in the store
//! and shown by the CLI.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;

/// One container plugged into a network on some node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub network: String,
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// The UDP port the owning node's VTEP receives this network's VXLAN on.
    pub udp_port: u16,
}

/// Everything one node publishes: who it is, where its VTEP is, its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    pub vtep: Ipv4Addr,
    pub endpoints: Vec<EndpointRecord>,
}

/// An endpoint behind a VTEP that runs no agent (a hand-configured Linux VXLAN host, a
/// hardware VTEP), declared with `overlay-agent remote add`. Kept in the store, not in
/// any node's record, so it outlives the agent that declared it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StaticEndpoint {
    pub network: String,
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub vtep: Ipv4Addr,
    pub udp_port: u16,
    /// The node whose CLI declared it (for people; not an owner).
    pub declared_by: String,
}

impl StaticEndpoint {
    /// The store key: unique per (network, IP).
    pub fn key(&self) -> String {
        static_key(&self.network, self.ip)
    }
}

pub fn static_key(network: &str, ip: Ipv4Addr) -> String {
    format!("{network}_{ip}")
}
