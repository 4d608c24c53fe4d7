//! The agent's control API: newline-delimited JSON over a unix socket in `state_dir`.
//! One request per connection line, one response line back. The CLI is its client.

pub mod client;
pub mod server;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{DatapathStatus, TableUsage},
    mac::MacAddr,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    pub network: String,
    /// A name under /run/netns (`ip netns`) or a path such as /proc/PID/ns/net.
    pub netns: String,
    /// Default: the lowest free address of the network, allocated in the store.
    pub ip: Option<Ipv4Addr>,
    /// Default: derived from the IP (`02:42:` + the IPv4 bytes).
    pub mac: Option<MacAddr>,
    /// Interface name inside the container; default `eth0`.
    pub ifname: Option<String>,
    /// Leave the container end of the veth in the host namespace for the runtime to
    /// move and address (Docker's plugin protocol); `netns` is then only recorded.
    #[serde(default)]
    pub handoff: bool,
    /// Who plugged it (e.g. `docker:<endpoint id>`, `cni:<container id>/<ifname>`), for
    /// runtimes that find their endpoints again by their own ids.
    #[serde(default)]
    pub owner: Option<String>,
    /// Container ports reachable at ports of the host's underlay address.
    #[serde(default)]
    pub publish: Vec<crate::firewall::PortMapping>,
}

/// An address reserved ahead of its endpoint (an IPAM request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressInfo {
    pub network: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    /// The network's gateway address (its subnet's first), which allocation never hands out.
    pub gateway: Option<Ipv4Addr>,
}

/// An endpoint behind a VTEP that runs no agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSpec {
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub vtep: Ipv4Addr,
}

/// `remote add --subnet`: a subnet of an L3 network behind a host that runs no agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetSpec {
    pub network: String,
    pub subnet: Ipv4Net,
    /// The MAC of that host's VXLAN device (its routed frames' inner destination).
    pub mac: MacAddr,
    pub vtep: Ipv4Addr,
}

/// A node subnet of an L3 network, as `status` and `remote add --subnet` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetInfo {
    pub network: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    /// The node routing it, or `static (<vtep>)` for a host without an agent.
    pub node: String,
    /// Its router MAC: what routed frames carry as inner destination, and the MAC a
    /// hand-configured host gives its neighbour entry for the node's address.
    pub mac: MacAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    EndpointAdd(EndpointSpec),
    EndpointDel { network: String, ip: Ipv4Addr },
    EndpointList,
    RemoteAdd(RemoteSpec),
    RemoteDel { network: String, ip: Ipv4Addr },
    /// A subnet of an L3 network routed by a host without an agent (`remote add --subnet`).
    SubnetAdd(SubnetSpec),
    SubnetDel { network: String, subnet: Ipv4Net },
    /// Reserve an address (the one given, or the lowest free one) for an endpoint to come.
    AddressReserve { network: String, ip: Option<Ipv4Addr> },
    /// Release a reservation of this node (fine if there is none).
    AddressRelease { network: String, ip: Ipv4Addr },
    Status,
    /// Remove everything this node made (datapath, veths, store records, lease) and exit.
    Down,
    /// Start a trace session (eBPF datapath): the programs copy verdicts into the pinned
    /// ring buffer until the client closes the connection this request came on.
    Trace(TraceSpec),
    /// Sent by the control server, not by clients: the session's connection closed.
    TraceStop,
}

/// What a trace session watches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceSpec {
    /// Every verdict, not only drops.
    pub all: bool,
    /// Only this local endpoint's frames (network name, IP).
    pub endpoint: Option<(String, Ipv4Addr)>,
}

/// A trace session is open: where to read its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceInfo {
    /// The pinned `OVL_TRACE` ring buffer.
    pub ring: std::path::PathBuf,
    /// With an endpoint: its host-side veth's ifindex.
    pub ifindex: Option<u32>,
    /// The VXLAN UDP ports in use (to tell VXLAN apart in the frames' heads).
    pub udp_ports: Vec<u16>,
    /// `CLOCK_MONOTONIC` when the session started: events before it are an earlier
    /// session's, still in the ring.
    #[serde(default)]
    pub since_ns: u64,
}

/// Where an endpoint lives, as `endpoint list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    /// A container on this host.
    Local,
    /// A container on another agent's host.
    Remote,
    /// Declared with `remote add`: behind a VTEP that runs no agent.
    Static,
}

impl EndpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Local => "local",
            EndpointKind::Remote => "remote",
            EndpointKind::Static => "static",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    pub network: String,
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub node: String,
    pub vtep: Ipv4Addr,
    pub kind: EndpointKind,
    /// Local only: where the container end lives and the host-side veth.
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub host_ifname: Option<String>,
    /// Local only: who plugged it ([`EndpointSpec::owner`]).
    #[serde(default)]
    pub owner: Option<String>,
    /// Local only, for a hand-off: the container end's name in the host namespace
    /// until the runtime takes it.
    #[serde(default)]
    pub handed_off: Option<String>,
    /// Local only: why the store does not hold it (a conflict found when re-registering),
    /// `None` when it is published.
    #[serde(default)]
    pub unpublished: Option<String>,
    /// Local only: its published ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<crate::firewall::PortMapping>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub name: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    pub udp_port: u16,
    pub mtu: u32,
    pub local_endpoints: usize,
    pub remote_endpoints: usize,
    /// `l2` or `l3`.
    #[serde(default)]
    pub mode: crate::config::NetworkMode,
    /// L3: this node's subnet, its gateway address and its router MAC.
    #[serde(default)]
    pub node_subnet: Option<Ipv4Net>,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub router_mac: Option<MacAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub node: String,
    pub vtep: Ipv4Addr,
    pub endpoints: usize,
}

/// The store as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreInfo {
    /// Backend and location.
    pub backend: String,
    /// `connected`, or `disconnected`.
    pub state: String,
    /// The etcd member requests go to now (the next one takes over when it fails).
    #[serde(default)]
    pub member: Option<String>,
    /// The etcd member the watch runs on (it moves when its stream breaks).
    #[serde(default)]
    pub watch_member: Option<String>,
    /// Since when disconnected (RFC 3339, UTC).
    pub disconnected_since: Option<String>,
    /// The node's lease, in hex (etcd's notation), `None` before registration.
    pub lease: Option<String>,
    pub lease_ttl_secs: u64,
    /// The node record and every endpoint are in the store.
    pub registered: bool,
    /// The first full list of the store has been applied to the datapath.
    pub synced: bool,
    /// Endpoint deletions still to be withdrawn from the store (made while unreachable).
    pub pending_withdrawals: usize,
    /// From the start of the first store list to the datapath holding all of it.
    #[serde(default)]
    pub initial_sync_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub node: String,
    pub vtep: Ipv4Addr,
    pub underlay_interface: String,
    pub underlay_mtu: u32,
    pub datapath: DatapathStatus,
    /// Fill levels of the datapath's tables.
    pub tables: Vec<TableUsage>,
    pub static_endpoints: usize,
    pub store: StoreInfo,
    pub networks: Vec<NetworkInfo>,
    pub peers: Vec<PeerInfo>,
    /// Node subnets of the L3 networks, this node's included.
    #[serde(default)]
    pub subnets: Vec<SubnetInfo>,
    pub uptime_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    Endpoint(EndpointInfo),
    Deleted(EndpointInfo),
    Endpoints { endpoints: Vec<EndpointInfo> },
    Address(AddressInfo),
    Subnet(SubnetInfo),
    Released { released: bool },
    Status(StatusInfo),
    /// `down` is done: the agent removed everything and exits.
    Down { removed: Vec<String> },
    Trace(TraceInfo),
    TraceStopped,
    Error {
        message: String,
        /// What kind of refusal, for clients that act on it (absent: any other).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<ErrorKind>,
    },
}

/// Refusals that clients tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// No such endpoint (or static endpoint): for a delete, already done.
    NotFound,
}

impl Response {
    /// An error reply of no particular kind.
    pub fn error(message: impl Into<String>) -> Response {
        Response::Error { message: message.into(), kind: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_tagged_json() {
        let r = Request::EndpointDel { network: "blue".into(), ip: Ipv4Addr::new(10, 0, 10, 10) };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"endpoint-del","network":"blue","ip":"10.0.10.10"}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let e = Response::error("no");
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"result":"error","message":"no"}"#);
    }
}
