//! Reads the pinned maps of a (running or stopped) eBPF datapath, for `map dump`,
//! status and tests. Works without the daemon: the pins are the source of truth.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use overlay_common::{
    DatapathConfig, Direction, EndpointValue, FDB_LOCAL, FDB_REMOTE, FDB_ROUTER, FdbKey, FdbValue, FloodValue, NeighKey,
    NETWORK_ANY_VTEP, NeighValue, NetworkValue, Reason, RouteKey, RouteValue, StatsValue, VtepKey, maps,
    reason::ReasonKind, stats_index,
};
use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;

#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error(
        "no pinned datapath maps at {dir}: the agent for this config is not running in eBPF mode \
         (start it with `overlay-agent run --config FILE`, and check `bpffs_dir`)"
    )]
    NotPinned { dir: PathBuf },
    #[error("pinned map {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("reading pinned map {name}: {source}")]
    Read {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigRow {
    pub vtep: Ipv4Addr,
    pub underlay_ifindex: u32,
    pub udp_ports: Vec<u16>,
    pub src_port_min: u16,
    pub src_port_max: u16,
    pub encap_flags: String,
    pub decap_flags: String,
    pub features: u32,
    /// The live trace: "off", "drops" or "all" (a trace session is open).
    #[serde(default)]
    pub trace: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkRow {
    pub vni: u32,
    pub udp_port: u16,
    pub mtu: u16,
    /// eBPF: VXLAN only from the network's known VTEPs (`vteps`); `None` in kernel mode.
    #[serde(default)]
    pub known_vteps_only: Option<bool>,
}

/// A VTEP VXLAN of a network is accepted from (eBPF).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VtepRow {
    pub vni: u32,
    pub vtep: Ipv4Addr,
    /// The node behind the VTEP, when the running agent knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointRow {
    pub ifindex: u32,
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NeighRow {
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FdbRow {
    pub vni: u32,
    pub mac: MacAddr,
    /// "local" or "remote".
    pub kind: String,
    /// Local: the host-side veth.
    pub ifindex: Option<u32>,
    /// Remote: the VTEP and its UDP port.
    pub vtep: Option<Ipv4Addr>,
    pub udp_port: Option<u16>,
    /// Remote: the node behind the VTEP, when the running agent knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsRow {
    pub direction: String,
    pub reason: String,
    /// "forwarded", "passed" or "dropped".
    pub kind: String,
    pub packets: u64,
    pub bytes: u64,
    /// Packets per CPU (`map dump --per-cpu`), in CPU order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_cpu_packets: Vec<u64>,
}

/// Where broadcast/multicast copies of one network go.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FloodRow {
    pub vni: u32,
    /// Host-side veths of the local endpoints (eBPF mode).
    pub local_ifindexes: Vec<u32>,
    /// The network's VXLAN device, which replicates to the remote VTEPs.
    pub vxlan_ifindex: Option<u32>,
    /// Remote VTEPs with an all-zero-MAC FDB entry (kernel mode; empty when read from pins).
    pub remote_vteps: Vec<Ipv4Addr>,
}

/// Everything `map dump` shows.
/// A node subnet of an L3 network on another host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteRow {
    pub vni: u32,
    pub subnet: ipnet::Ipv4Net,
    /// "remote" (another host's node subnet), "host" (handed to this host: the
    /// gateway, the default route) or "blocked" (an overlay range without a route).
    pub kind: String,
    /// eBPF: the VTEP and router MAC routed frames go to.
    pub vtep: Option<Ipv4Addr>,
    pub mac: Option<MacAddr>,
    pub udp_port: Option<u16>,
    /// Kernel: the next hop of the route (the node's address on its VXLAN device).
    pub via: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MapDump {
    /// "ebpf" (read from the pinned maps) or "kernel" (read from the kernel's
    /// neighbour and FDB tables over netlink).
    pub datapath: String,
    /// Where it was read: the pin directory, or the kernel's tables.
    pub pin_dir: PathBuf,
    pub config: Option<ConfigRow>,
    pub networks: Vec<NetworkRow>,
    pub endpoints: Vec<EndpointRow>,
    pub neighbours: Vec<NeighRow>,
    pub fdb: Vec<FdbRow>,
    pub flood: Vec<FloodRow>,
    /// Node subnets of L3 networks on other hosts.
    #[serde(default)]
    pub routes: Vec<RouteRow>,
    /// The VTEPs each network accepts VXLAN from (eBPF).
    #[serde(default)]
    pub vteps: Vec<VtepRow>,
    /// Non-zero counters, summed over CPUs (eBPF only).
    pub stats: Vec<StatsRow>,
}

impl MapDump {
    /// Keeps only the entries of network `vni` (the endpoints, neighbours, FDB, flood,
    /// routes, VTEPs and network rows; the host-wide config and stats stay).
    pub fn only_network(&mut self, vni: u32) {
        self.networks.retain(|n| n.vni == vni);
        self.endpoints.retain(|e| e.vni == vni);
        self.neighbours.retain(|n| n.vni == vni);
        self.fdb.retain(|f| f.vni == vni);
        self.flood.retain(|f| f.vni == vni);
        self.routes.retain(|r| r.vni == vni);
        self.vteps.retain(|v| v.vni == vni);
    }

    /// Names the node behind each remote VTEP that `nodes` (VTEP → node) knows.
    pub fn name_nodes(&mut self, nodes: &std::collections::HashMap<Ipv4Addr, String>) {
        for f in &mut self.fdb {
            f.node = f.vtep.and_then(|v| nodes.get(&v).cloned());
        }
        for v in &mut self.vteps {
            v.node = nodes.get(&v.vtep).cloned();
        }
    }

    /// Packets counted under (direction, reason); 0 if never seen.
    pub fn packets(&self, dir: Direction, reason: Reason) -> u64 {
        self.stats
            .iter()
            .find(|s| s.direction == dir.name() && s.reason == reason.name())
            .map_or(0, |s| s.packets)
    }
}

fn open(dir: &Path, name: &'static str) -> Result<Map, PinnedError> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| PinnedError::Open { path: path.clone(), source })?;
    Map::from_map_data(data).map_err(|source| PinnedError::Open { path, source })
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(dir: &Path, name: &'static str) -> Result<T, PinnedError> {
    T::try_from(open(dir, name)?).map_err(|source| PinnedError::Read { name, source })
}

fn read_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> PinnedError {
    move |source| PinnedError::Read { name, source }
}

/// Names the `bpf_skb_adjust_room` flags for humans.
pub fn flag_names(flags: u64) -> String {
    use overlay_common::adjust_room as f;
    let mut names = Vec::new();
    for (bit, name) in [
        (f::FIXED_GSO, "FIXED_GSO"),
        (f::ENCAP_L3_IPV4, "ENCAP_L3_IPV4"),
        (f::ENCAP_L4_UDP, "ENCAP_L4_UDP"),
        (f::NO_CSUM_RESET, "NO_CSUM_RESET"),
        (f::ENCAP_L2_ETH, "ENCAP_L2_ETH"),
    ] {
        if flags & bit != 0 {
            names.push(name.to_string());
        }
    }
    let l2 = flags >> 56;
    if l2 != 0 {
        names.push(format!("ENCAP_L2({l2})"));
    }
    names.join("|")
}

/// One (direction, reason) counter, per CPU.
#[derive(Debug, Clone)]
pub struct Counter {
    pub direction: Direction,
    pub reason: Reason,
    pub per_cpu: Vec<StatsValue>,
}

impl Counter {
    pub fn packets(&self) -> u64 {
        self.per_cpu.iter().map(|v| v.packets).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.per_cpu.iter().map(|v| v.bytes).sum()
    }
}

/// "forwarded", "passed" or "dropped"; "event" for the counts that are not a packet's
/// verdict (lost flood copies), so that summing the dropped verdicts counts packets.
pub fn verdict(reason: Reason) -> &'static str {
    if !reason.is_verdict() {
        return "event";
    }
    match reason.kind() {
        ReasonKind::Forwarded => "forwarded",
        ReasonKind::Passed => "passed",
        ReasonKind::Dropped => "dropped",
    }
}

/// Every counter of the pinned stats map under `maps_dir` (zeros included), without
/// reading the other maps.
pub fn read_stats(maps_dir: &Path) -> Result<Vec<Counter>, PinnedError> {
    if !maps_dir.join(maps::STATS).exists() {
        return Err(PinnedError::NotPinned { dir: maps_dir.to_owned() });
    }
    let stats_map: PerCpuArray<MapData, StatsValue> = typed(maps_dir, maps::STATS)?;
    let mut out = Vec::new();
    for direction in Direction::ALL {
        for reason in Reason::ALL {
            let per_cpu = stats_map.get(&stats_index(direction, reason), 0).map_err(read_err(maps::STATS))?;
            out.push(Counter { direction, reason, per_cpu: per_cpu.iter().copied().collect() });
        }
    }
    Ok(out)
}

/// Reads every pinned map under `maps_dir`.
pub fn dump(maps_dir: &Path) -> Result<MapDump, PinnedError> {
    if !maps_dir.join(maps::CONFIG).exists() {
        return Err(PinnedError::NotPinned { dir: maps_dir.to_owned() });
    }
    let config: Array<MapData, DatapathConfig> = typed(maps_dir, maps::CONFIG)?;
    let c = config.get(&0, 0).map_err(read_err(maps::CONFIG))?;
    let config = (c.vtep != [0; 4]).then(|| ConfigRow {
        vtep: c.vtep.into(),
        underlay_ifindex: c.underlay_ifindex,
        udp_ports: c.udp_ports_be[..c.n_udp_ports as usize].iter().map(|p| u16::from_be(*p)).collect(),
        src_port_min: c.src_port_min,
        src_port_max: c.src_port_max,
        encap_flags: flag_names(c.encap_flags),
        decap_flags: flag_names(c.decap_flags),
        features: c.features,
        trace: match c.trace {
            0 => "off".into(),
            t if t & overlay_common::TRACE_ALL != 0 => "all".into(),
            _ => "drops".into(),
        },
    });

    let networks_map: HashMap<MapData, u32, NetworkValue> = typed(maps_dir, maps::NETWORKS)?;
    let mut networks = Vec::new();
    for item in networks_map.iter() {
        let (vni, v) = item.map_err(read_err(maps::NETWORKS))?;
        networks.push(NetworkRow {
            vni,
            udp_port: u16::from_be(v.udp_port_be),
            mtu: v.mtu,
            known_vteps_only: Some(v.flags & NETWORK_ANY_VTEP == 0),
        });
    }
    networks.sort_by_key(|n| n.vni);

    let ep_map: HashMap<MapData, u32, EndpointValue> = typed(maps_dir, maps::ENDPOINTS)?;
    let mut endpoints = Vec::new();
    for item in ep_map.iter() {
        let (ifindex, v) = item.map_err(read_err(maps::ENDPOINTS))?;
        endpoints.push(EndpointRow { ifindex, vni: v.vni, ip: v.ip.into(), mac: MacAddr(v.mac) });
    }
    endpoints.sort_by_key(|e| (e.vni, e.ip));

    let neigh_map: HashMap<MapData, NeighKey, NeighValue> = typed(maps_dir, maps::NEIGH)?;
    let mut neighbours = Vec::new();
    for item in neigh_map.iter() {
        let (k, v) = item.map_err(read_err(maps::NEIGH))?;
        neighbours.push(NeighRow { vni: k.vni, ip: k.ip.into(), mac: MacAddr(v.mac) });
    }
    neighbours.sort_by_key(|n| (n.vni, n.ip));

    let fdb_map: HashMap<MapData, FdbKey, FdbValue> = typed(maps_dir, maps::FDB)?;
    let mut fdb = Vec::new();
    for item in fdb_map.iter() {
        let (k, v) = item.map_err(read_err(maps::FDB))?;
        let local = v.kind == FDB_LOCAL;
        fdb.push(FdbRow {
            vni: k.vni,
            mac: MacAddr(k.mac),
            kind: match v.kind {
                FDB_LOCAL => "local".into(),
                FDB_REMOTE => "remote".into(),
                FDB_ROUTER => "router".into(),
                other => format!("unknown({other})"),
            },
            ifindex: local.then_some(v.ifindex),
            vtep: (v.kind == FDB_REMOTE).then(|| v.vtep.into()),
            udp_port: (v.kind == FDB_REMOTE).then(|| u16::from_be(v.udp_port_be)),
            node: None,
        });
    }
    fdb.sort_by_key(|f| (f.vni, f.mac));

    let flood_map: HashMap<MapData, u32, FloodValue> = typed(maps_dir, maps::FLOOD)?;
    let mut flood = Vec::new();
    for item in flood_map.iter() {
        let (vni, v) = item.map_err(read_err(maps::FLOOD))?;
        let n = (v.n_ports as usize).min(v.ifindex.len());
        flood.push(FloodRow {
            vni,
            local_ifindexes: v.ifindex[..n].to_vec(),
            vxlan_ifindex: (v.vxlan_ifindex != 0).then_some(v.vxlan_ifindex),
            remote_vteps: Vec::new(),
        });
    }
    flood.sort_by_key(|f| f.vni);

    let mut routes = Vec::new();
    // Pins of an agent from before L3 networks have no routes map.
    if maps_dir.join(maps::ROUTES).exists() {
        let routes_map: aya::maps::lpm_trie::LpmTrie<MapData, RouteKey, RouteValue> = typed(maps_dir, maps::ROUTES)?;
        for item in routes_map.iter() {
            let (k, v) = item.map_err(read_err(maps::ROUTES))?;
            let data = k.data();
            let len = k.prefix_len().saturating_sub(RouteKey::VNI_BITS).min(32) as u8;
            let Ok(subnet) = ipnet::Ipv4Net::new(data.ip.into(), len) else { continue };
            let remote = v.kind == overlay_common::ROUTE_REMOTE;
            routes.push(RouteRow {
                vni: u32::from_be_bytes(data.vni_be),
                subnet,
                kind: match v.kind {
                    overlay_common::ROUTE_REMOTE => "remote".into(),
                    overlay_common::ROUTE_HOST => "host".into(),
                    overlay_common::ROUTE_BLOCKED => "blocked".into(),
                    other => format!("unknown({other})"),
                },
                vtep: remote.then(|| v.vtep.into()),
                mac: remote.then_some(MacAddr(v.mac)),
                udp_port: remote.then(|| u16::from_be(v.udp_port_be)),
                via: None,
            });
        }
        routes.sort_by_key(|r| (r.vni, r.subnet));
    }

    let vteps_map: HashMap<MapData, VtepKey, u32> = typed(maps_dir, maps::VTEPS)?;
    let mut vteps = Vec::new();
    for item in vteps_map.iter() {
        let (k, _) = item.map_err(read_err(maps::VTEPS))?;
        vteps.push(VtepRow { vni: k.vni, vtep: k.ip.into(), node: None });
    }
    vteps.sort_by_key(|v| (v.vni, v.vtep));

    let stats = read_stats(maps_dir)?
        .into_iter()
        .filter(|c| c.packets() > 0)
        .map(|c| StatsRow {
            direction: c.direction.name().into(),
            reason: c.reason.name().into(),
            kind: verdict(c.reason).into(),
            packets: c.packets(),
            bytes: c.bytes(),
            per_cpu_packets: c.per_cpu.iter().map(|v| v.packets).collect(),
        })
        .collect();

    Ok(MapDump {
        datapath: "ebpf".into(),
        pin_dir: maps_dir.to_owned(),
        config,
        networks,
        endpoints,
        neighbours,
        fdb,
        flood,
        routes,
        vteps,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_flags() {
        let f = overlay_common::adjust_room::ENCAP_BASE | overlay_common::adjust_room::ENCAP_L2_ETH;
        assert_eq!(flag_names(f), "FIXED_GSO|ENCAP_L3_IPV4|ENCAP_L4_UDP|ENCAP_L2_ETH|ENCAP_L2(14)");
    }

    #[test]
    fn missing_pins_say_what_to_do() {
        let e = dump(Path::new("/nonexistent/overlay")).unwrap_err().to_string();
        assert!(e.contains("overlay-agent run --config"), "{e}");
    }
}
