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
