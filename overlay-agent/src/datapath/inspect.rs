//! `map dump` for whichever datapath runs: the pinned maps in eBPF mode, otherwise the
//! kernel's own neighbour and FDB tables of the networks' devices, read over netlink
//! and shown in the same tables. Works whether or not the daemon is running, and
//! without the store: local endpoints come from the agent's state in `state_dir`.

use std::path::PathBuf;

use super::{
    devices,
    pinned::{self, EndpointRow, FdbRow, FloodRow, MapDump, NeighRow, NetworkRow, PinnedError, RouteRow},
};
use crate::{
    config::Config,
    mac::MacAddr,
    netlink::{Netlink, NetlinkError},
    state::{self, StateError},
};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Pinned(#[from] PinnedError),
    #[error(
        "no datapath found for node {node}: no pinned maps in {pins} and no kernel devices ({bridge}, ...); \
         is `overlay-agent run --config FILE` running?"
    )]
    NotRunning { node: String, pins: PathBuf, bridge: String },
    #[error("reading the kernel's tables: {0}")]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Dumps the datapath of `config`'s node from this network namespace.
pub async fn dump(config: &Config) -> Result<MapDump, InspectError> {
    let maps_dir = super::ebpf::maps_dir(&config.bpffs_dir);
    match pinned::dump(&maps_dir) {
        Ok(d) => return Ok(d),
        Err(PinnedError::NotPinned { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let nl = Netlink::open().await?;
    let first = config.networks[0].vni;
    if nl.link_by_name(&devices::bridge_name(first)).await?.is_none() {
        return Err(InspectError::NotRunning {
            node: config.node_name.clone(),
            pins: maps_dir,
            bridge: devices::bridge_name(first),
        });
    }
    kernel_dump(config, &nl).await
}

async fn kernel_dump(config: &Config, nl: &Netlink) -> Result<MapDump, InspectError> {
    // The kernel has no notion of "our" endpoints: take them from the agent's state.
    let own = state::load(&config.state_dir, &config.node_name)?.map(|s| s.endpoints).unwrap_or_default();
    let mut d = MapDump {
        datapath: "kernel".into(),
        pin_dir: PathBuf::from("(kernel neighbour and FDB tables)"),
        config: None,
        networks: Vec::new(),
        endpoints: Vec::new(),
        neighbours: Vec::new(),
        fdb: Vec::new(),
        flood: Vec::new(),
        routes: Vec::new(),
        vteps: Vec::new(),
        stats: Vec::new(),
    };
    for net in &config.networks {
        let Some(vx) = nl.link_by_name(&devices::vxlan_name(net.vni)).await? else { continue };
        let info = nl.vxlan_info(vx.index).await?;
        d.networks.push(NetworkRow {
            vni: net.vni,
            udp_port: info.map_or(net.udp_port, |i| i.port),
            mtu: vx.mtu as u16,
            known_vteps_only: None,
        });
        for ep in own.iter().filter(|e| e.vni == net.vni) {
            let ifindex = nl.link_by_name(&ep.host_ifname).await?.map_or(0, |l| l.index);
            d.endpoints.push(EndpointRow { ifindex, vni: ep.vni, ip: ep.ip, mac: ep.mac });
            d.neighbours.push(NeighRow { vni: ep.vni, ip: ep.ip, mac: ep.mac });
            d.fdb.push(FdbRow {
                vni: ep.vni,
                mac: ep.mac,
                kind: "local".into(),
                ifindex: Some(ifindex),
                vtep: None,
                udp_port: None,
                node: None,
            });
        }
        if net.mode == crate::config::NetworkMode::L3 {
            for (dst, len, via) in nl.routes_via(vx.index).await? {
                let Ok(subnet) = ipnet::Ipv4Net::new(dst, len) else { continue };
                d.routes.push(RouteRow { vni: net.vni, subnet, kind: "remote".into(), vtep: None, mac: None, udp_port: None, via: Some(via) });
            }
        }
        for n in nl.neighbours(vx.index).await? {
            if let Some(mac) = n.mac {
                d.neighbours.push(NeighRow { vni: net.vni, ip: n.ip, mac: MacAddr(mac) });
            }
        }
        let mut flood = FloodRow { vni: net.vni, local_ifindexes: Vec::new(), vxlan_ifindex: Some(vx.index), remote_vteps: Vec::new() };
        for f in nl.fdb_entries(vx.index).await? {
            let Some(dst) = f.dst else { continue };
            if f.mac == devices::FLOOD_MAC {
                flood.remote_vteps.push(dst);
            } else {
                d.fdb.push(FdbRow {
                    vni: f.vni.unwrap_or(net.vni),
                    mac: MacAddr(f.mac),
                    kind: "remote".into(),
                    ifindex: None,
                    vtep: Some(dst),
                    udp_port: Some(f.port.unwrap_or(net.udp_port)),
                    node: None,
                });
            }
        }
        flood.local_ifindexes = d.endpoints.iter().filter(|e| e.vni == net.vni).map(|e| e.ifindex).collect();
        flood.remote_vteps.sort();
        d.flood.push(flood);
    }
    d.neighbours.sort_by_key(|n| (n.vni, n.ip));
    d.fdb.sort_by_key(|f| (f.vni, f.mac));
    d.endpoints.sort_by_key(|e| (e.vni, e.ip));
    Ok(d)
}
