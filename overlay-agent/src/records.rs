//! The records agents publish in the store (JSON values of the keys in
//! [`crate::store::keys`]), and their validation: a record from another node is
//! checked before it can reach the datapath.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;

/// `nodes/<node>`: an agent, under its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub node: String,
    /// The VTEP: where the node's endpoints are reached over VXLAN.
    pub vtep: Ipv4Addr,
    /// The agent's version, for people.
    #[serde(default)]
    pub version: String,
}

/// `endpoints/<vni>/<ip>`: a container plugged in on `node`, under that node's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRecord {
    pub node: String,
    /// The network's name on the publishing node (the VNI in the key is the identity).
    pub network: String,
    pub mac: MacAddr,
    /// The UDP port the owning node receives this network's VXLAN on.
    pub udp_port: u16,
}

/// `statics/<vni>/<ip>`: an endpoint behind a VTEP that runs no agent, declared with
/// `overlay-agent remote add`. Under no lease: it outlives the agent that declared it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRecord {
    pub network: String,
    pub mac: MacAddr,
    pub vtep: Ipv4Addr,
    pub udp_port: u16,
    /// The node whose CLI declared it (for people; not an owner).
    pub declared_by: String,
}

/// `subnets/<vni>/<net>-<len>`: the node subnet that `node` routes in an L3 network,
/// under that node's lease. Containers on the node take their addresses from it; other
/// hosts route it to the node's VTEP with `mac` (the node's router MAC, its VXLAN
/// device's address in kernel mode) as the inner destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetRecord {
    pub node: String,
    pub network: String,
    pub mac: MacAddr,
    pub udp_port: u16,
}

/// `static-subnets/<vni>/<net>-<len>`: a subnet routed by a host that runs no agent
/// (seeds/003's recipe by hand), declared with `overlay-agent remote add --subnet`.
/// Under no lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticSubnetRecord {
    pub network: String,
    /// The MAC of that host's VXLAN device.
    pub mac: MacAddr,
    pub vtep: Ipv4Addr,
    pub udp_port: u16,
    pub declared_by: String,
}

/// Why a record read from the store was not applied.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not a valid record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{what} {value} is not a unicast IPv4 address")]
    NotUnicast { what: &'static str, value: Ipv4Addr },
    #[error("MAC {0} is not a unicast address other than 00:00:00:00:00:00")]
    BadMac(MacAddr),
    #[error("UDP port 0")]
    ZeroPort,
    #[error("node name {0:?} in the record does not match its key")]
    NodeMismatch(String),
    #[error("{what} {value} is outside network {vni}'s subnet {subnet}")]
    OutsideNetwork { what: &'static str, value: String, vni: u32, subnet: ipnet::Ipv4Net },
}

/// A VTEP or endpoint address a datapath can use: not 0.0.0.0, multicast, broadcast or
/// loopback.
pub fn is_unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback())
}

fn check_mac(mac: MacAddr) -> Result<(), RecordError> {
    if mac.is_multicast() || mac.is_zero() { Err(RecordError::BadMac(mac)) } else { Ok(()) }
}

impl NodeRecord {
    pub fn decode(key_node: &str, bytes: &[u8]) -> Result<Self, RecordError> {
        let r: NodeRecord = serde_json::from_slice(bytes)?;
        if r.node != key_node {
            return Err(RecordError::NodeMismatch(r.node));
        }
        if !is_unicast(r.vtep) {
            return Err(RecordError::NotUnicast { what: "VTEP", value: r.vtep });
        }
        Ok(r)
    }
}

impl EndpointRecord {
    pub fn decode(ip: Ipv4Addr, bytes: &[u8]) -> Result<Self, RecordError> {
        let r: EndpointRecord = serde_json::from_slice(bytes)?;
        if !is_unicast(ip) {
            return Err(RecordError::NotUnicast { what: "endpoint IP", value: ip });
        }
        check_mac(r.mac)?;
        if r.udp_port == 0 {
            return Err(RecordError::ZeroPort);
        }
        Ok(r)
    }
}

impl StaticRecord {
    pub fn decode(ip: Ipv4Addr, bytes: &[u8]) -> Result<Self, RecordError> {
        let r: StaticRecord = serde_json::from_slice(bytes)?;
        if !is_unicast(ip) {
            return Err(RecordError::NotUnicast { what: "endpoint IP", value: ip });
        }
        if !is_unicast(r.vtep) {
            return Err(RecordError::NotUnicast { what: "VTEP", value: r.vtep });
        }
        check_mac(r.mac)?;
        if r.udp_port == 0 {
            return Err(RecordError::ZeroPort);
        }
        Ok(r)
    }
}

impl SubnetRecord {
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let r: SubnetRecord = serde_json::from_slice(bytes)?;
        check_mac(r.mac)?;
        if r.udp_port == 0 {
            return Err(RecordError::ZeroPort);
        }
        Ok(r)
    }
}

impl StaticSubnetRecord {
    /// Who routes it, for people: the host without an agent behind `vtep`.
    pub fn holder(&self) -> String {
        format!("static ({})", self.vtep)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let r: StaticSubnetRecord = serde_json::from_slice(bytes)?;
        if !is_unicast(r.vtep) {
            return Err(RecordError::NotUnicast { what: "VTEP", value: r.vtep });
        }
        check_mac(r.mac)?;
        if r.udp_port == 0 {
            return Err(RecordError::ZeroPort);
        }
        Ok(r)
    }
}

/// JSON of a record (never fails for these types: plain fields only).
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).unwrap_or_else(|e| unreachable!("records of plain fields always encode: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_validates() {
        let ep = EndpointRecord { node: "h1".into(), network: "blue".into(), mac: "02:42:0a:00:0a:0b".parse().unwrap(), udp_port: 4789 };
        let ip = Ipv4Addr::new(10, 0, 10, 11);
        assert_eq!(EndpointRecord::decode(ip, &encode(&ep)).unwrap(), ep);
        assert!(EndpointRecord::decode(ip, b"{\"node\":1}").is_err());
        let bad_mac = EndpointRecord { mac: "01:00:5e:00:00:01".parse().unwrap(), ..ep.clone() };
        assert!(matches!(EndpointRecord::decode(ip, &encode(&bad_mac)), Err(RecordError::BadMac(_))));
        assert!(matches!(EndpointRecord::decode(Ipv4Addr::BROADCAST, &encode(&ep)), Err(RecordError::NotUnicast { .. })));
        let node = NodeRecord { node: "h1".into(), vtep: Ipv4Addr::new(198, 51, 100, 1), version: "x".into() };
        assert_eq!(NodeRecord::decode("h1", &encode(&node)).unwrap(), node);
        assert!(matches!(NodeRecord::decode("h2", &encode(&node)), Err(RecordError::NodeMismatch(_))));
        let mcast = NodeRecord { vtep: Ipv4Addr::new(224, 0, 0, 1), ..node };
        assert!(NodeRecord::decode("h1", &encode(&mcast)).is_err());
        let st = StaticRecord { network: "blue".into(), mac: ep.mac, vtep: Ipv4Addr::new(127, 0, 0, 1), udp_port: 4789, declared_by: "h1".into() };
        assert!(StaticRecord::decode(ip, &encode(&st)).is_err(), "loopback VTEP");
        let sub = SubnetRecord { node: "h1".into(), network: "routed".into(), mac: ep.mac, udp_port: 4789 };
        assert_eq!(SubnetRecord::decode(&encode(&sub)).unwrap(), sub);
        assert!(SubnetRecord::decode(&encode(&SubnetRecord { udp_port: 0, ..sub.clone() })).is_err());
        let ss = StaticSubnetRecord { network: "routed".into(), mac: ep.mac, vtep: Ipv4Addr::BROADCAST, udp_port: 4789, declared_by: "h1".into() };
        assert!(StaticSubnetRecord::decode(&encode(&ss)).is_err(), "broadcast VTEP");
    }
}
