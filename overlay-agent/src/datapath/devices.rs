//! The per-network kernel devices, created over netlink: a VXLAN device `ovvx<VNI>`
//! (the classic `ip link add ... type vxlan id VNI dstport PORT local VTEP dev
//! UNDERLAY nolearning`) and, in kernel mode, a bridge `ovbr<VNI>` joining it to the
//! containers' veths. In eBPF mode the VXLAN device alone carries broadcast and
//! multicast: its all-zero-MAC FDB entries (one per remote VTEP) replicate a frame
//! head-end to every host of the network, no multicast underlay needed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use tracing::{debug, info, warn};

use crate::netlink::{LinkChange, Netlink, NetlinkError, VxlanSpec};

/// All-zeros MAC: the FDB entry the VXLAN driver uses for broadcast, multicast and
/// unknown unicast.
pub const FLOOD_MAC: [u8; 6] = [0; 6];

pub fn vxlan_name(vni: u32) -> String {
    format!("ovvx{vni}")
}

pub fn bridge_name(vni: u32) -> String {
    format!("ovbr{vni}")
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{step} ({device}): {source}")]
    Netlink {
        step: &'static str,
        device: String,
        #[source]
        source: NetlinkError,
    },
    #[error("the new device {name} vanished while it was being set up")]
    Vanished { name: String },
    #[error("writing {path}: {source} (the agent needs CAP_NET_ADMIN in its network namespace)")]
    Sysctl {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn nl_err<'a>(step: &'static str, device: &'a str) -> impl FnOnce(NetlinkError) -> DeviceError + 'a {
    move |source| DeviceError::Netlink { step, device: device.to_owned(), source }
}

/// One network's devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevices {
    pub vni: u32,
    pub udp_port: u16,
    pub vxlan_index: u32,
    pub bridge_index: Option<u32>,
}

/// What to build for one network.
#[derive(Debug, Clone, Copy)]
pub struct NetSpec {
    pub vni: u32,
    pub udp_port: u16,
    pub mtu: u32,
    /// The network's subnet.
    pub subnet: ipnet::Ipv4Net,
    /// This host's router in the network (an L3 network, or an L2 network's gateway).
    pub router: Option<super::Router>,
    /// Decapsulate only from the VTEPs the store knows for the network (eBPF).
    pub known_vteps_only: bool,
}

/// Deletes this agent's devices for `vnis` if they exist (a mode switch, `down`).
pub async fn remove_named(nl: &Netlink, vnis: impl IntoIterator<Item = u32>) -> Result<(), DeviceError> {
    for vni in vnis {
        for name in [vxlan_name(vni), bridge_name(vni)] {
            if nl.link_by_name(&name).await.map_err(nl_err("looking up", &name))?.is_some() {
                nl.delete_link_by_name(&name).await.map_err(nl_err("deleting", &name))?;
                info!(device = %name, "device removed");
            }
        }
    }
    Ok(())
}

/// Makes the devices of every network exist as `nets` says, adopting those already
/// there with the right settings (a restart: their FDB and neighbour entries stay) and
/// replacing those with other settings. With `bridged`, a bridge per network with the
/// VXLAN device as a port and ARP proxying on (the kernel answers ARP from the
/// neighbour entries the agent installs); without, a bridge left by kernel mode goes.
/// On error, whatever this call created is deleted again.
pub async fn ensure(
    nl: &Netlink,
    vtep: Ipv4Addr,
    underlay_index: u32,
    nets: &[NetSpec],
    bridged: bool,
) -> Result<BTreeMap<u32, NetDevices>, DeviceError> {
    if nets.iter().any(|n| n.router.is_some()) {
        enable_forwarding()?;
    }
    let mut made = BTreeMap::new();
    for net in nets {
        match ensure_one(nl, vtep, underlay_index, net, bridged).await {
            Ok((d, _created)) => {
                made.insert(net.vni, d);
            }
            Err(e) => {
                // Half-made devices carry predictable names.
                if let Err(undo) = remove_named(nl, [net.vni]).await {
                    warn!(error = %undo, "undo: removing half-made devices");
                }
                return Err(e);
            }
        }
    }
    Ok(made)
}

/// Whether the existing VXLAN device `index` is the one `spec` describes.
async fn matches(nl: &Netlink, index: u32, spec: &VxlanSpec) -> Result<bool, DeviceError> {
    let info = nl.vxlan_info(index).await.map_err(nl_err("reading the VXLAN settings", &spec.name))?;
    Ok(info.is_some_and(|i| {
        i.vni == spec.vni
            && i.port == spec.port
            && i.local == spec.local
            && i.underlay_index == spec.underlay_index
            && i.learning == spec.learning
            && i.proxy == spec.proxy
    }))
}

async fn ensure_one(
    nl: &Netlink,
    vtep: Ipv4Addr,
    underlay_index: u32,
    net: &NetSpec,
    bridged: bool,
) -> Result<(NetDevices, bool), DeviceError> {
    let name = vxlan_name(net.vni);
    let spec = VxlanSpec {
        name: name.clone(),
        vni: net.vni,
        port: net.udp_port,
        local: Some(vtep),
        underlay_index: Some(underlay_index),
        learning: false,
        proxy: bridged,
        mtu: Some(net.mtu),
    };
    let existing = nl.link_by_name(&name).await.map_err(nl_err("looking up", &name))?;
    let mut created = false;
    let vxlan_index = match existing {
        Some(l) if matches(nl, l.index, &spec).await? => {
            debug!(device = %name, "adopting the VXLAN device");
            l.index
        }
        other => {
            if let Some(l) = other {
                warn!(device = %name, "replacing a VXLAN device with other settings (the VTEP, port or mode changed)");
                nl.delete_link(l.index).await.map_err(nl_err("deleting", &name))?;
            }
            nl.create_vxlan(&spec).await.map_err(nl_err("creating the VXLAN device", &name))?;
            created = true;
            index_of(nl, &name).await?
        }
    };
    let br = bridge_name(net.vni);
    let existing_bridge = nl.link_by_name(&br).await.map_err(nl_err("looking up", &br))?;
    let mut bridge_index = None;
    if bridged {
        let idx = match existing_bridge {
            Some(b) if b.kind.as_deref() == Some("bridge") => b.index,
            other => {
                if let Some(b) = other {
                    nl.delete_link(b.index).await.map_err(nl_err("deleting", &br))?;
                }
                nl.create_bridge(&br).await.map_err(nl_err("creating the bridge", &br))?;
                created = true;
                index_of(nl, &br).await?
            }
        };
        nl.set_link(idx, LinkChange { mtu: Some(net.mtu), up: Some(true), ..Default::default() })
            .await
            .map_err(nl_err("bringing the bridge up", &br))?;
        match net.router.filter(|r| r.l3) {
            // L3 (seeds/003): the VXLAN device is a routed link of its own. It holds
            // the node's address (the node subnet's first, as flannel gives it) as a
            // /32 and the router MAC other hosts send to; the bridge holds the
            // containers' gateway address, which adds the node subnet's route.
            Some(r) => {
                nl.set_link(vxlan_index, LinkChange { mac: Some(r.mac.0), ..Default::default() })
                    .await
                    .map_err(nl_err("setting the router MAC", &name))?;
                nl.add_address(vxlan_index, r.subnet.network(), 32).await.map_err(nl_err("adding the node address", &name))?;
                nl.add_address(idx, r.gateway, r.subnet.prefix_len()).await.map_err(nl_err("adding the gateway address", &br))?;
            }
            _ => {
                nl.set_link(vxlan_index, LinkChange { master: Some(idx), ..Default::default() })
                    .await
                    .map_err(nl_err("adding the VXLAN device to the bridge", &name))?;
            }
        }
        // An L2 network's anycast gateway: the bridge answers for the address with the
        // MAC every host gives it. The VXLAN device's ARP proxying keeps the requests
        // for it on this host.
        // Its subnet's route goes to the `local` table, not `main` (see GATEWAY_TABLE).
        if let Some(r) = net.router.filter(|r| !r.l3) {
            nl.set_link(idx, LinkChange { mac: Some(r.mac.0), ..Default::default() })
                .await
                .map_err(nl_err("setting the gateway MAC", &br))?;
            let len = r.subnet.prefix_len();
            nl.add_address_noprefixroute(idx, r.gateway, len).await.map_err(nl_err("adding the gateway address", &br))?;
            nl.route_replace_link(r.subnet.network(), len, idx, r.gateway).await.map_err(nl_err("adding the gateway route", &br))?;
        }
        bridge_index = Some(idx);
    } else if let Some(b) = existing_bridge {
        // Kernel mode's bridge, from before a switch to eBPF mode.
        nl.delete_link(b.index).await.map_err(nl_err("deleting", &br))?;
    }
    nl.set_link(vxlan_index, LinkChange { mtu: Some(net.mtu), up: Some(true), ..Default::default() })
        .await
        .map_err(nl_err("bringing the VXLAN device up", &name))?;
    ensure_gateway_address(nl, net, vxlan_index, bridged).await?;
    if created {
        info!(device = %name, vni = net.vni, port = net.udp_port, bridged, "VXLAN device ready");
    }
    Ok((NetDevices { vni: net.vni, udp_port: net.udp_port, vxlan_index, bridge_index }, created))
}

/// eBPF mode, a network with a gateway: the host must own the gateway address for the
/// containers to reach it, and with no bridge the network's VXLAN device holds it as a
/// /32 (kernels without the dummy driver are common; the VXLAN device exists anyway).
async fn ensure_gateway_address(nl: &Netlink, net: &NetSpec, vxlan_index: u32, bridged: bool) -> Result<(), DeviceError> {
    if let Some(r) = net.router.filter(|_| !bridged) {
        let name = vxlan_name(net.vni);
        nl.add_address(vxlan_index, r.gateway, 32).await.map_err(nl_err("adding the gateway address", &name))?;
    }
    Ok(())
}

/// `sysctl net.ipv4.ip_forward=1` in the agent's network namespace: a host with a
/// gateway or an L3 network routes for its containers. Left on at `down` (other software
/// on a host may rely on it, as with Docker's and flannel's).
pub fn enable_forwarding() -> Result<(), DeviceError> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(PATH).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(PATH, "1").map_err(|source| DeviceError::Sysctl { path: PATH, source })?;
    info!("enabled IPv4 forwarding (net.ipv4.ip_forward = 1) for the networks' gateways");
    Ok(())
}

async fn index_of(nl: &Netlink, name: &str) -> Result<u32, DeviceError> {
    nl.link_by_name(name)
        .await
        .map_err(nl_err("looking up", name))?
        .map(|l| l.index)
        .ok_or_else(|| DeviceError::Vanished { name: name.to_owned() })
}

/// Deletes the devices (their FDB and neighbour entries go with them). Logs failures:
/// used on the way out, where every step must be tried.
pub async fn destroy(nl: &Netlink, devs: &BTreeMap<u32, NetDevices>) -> Vec<DeviceError> {
    let mut errors = Vec::new();
    for d in devs.values() {
        for (index, name) in [(Some(d.vxlan_index), vxlan_name(d.vni)), (d.bridge_index, bridge_name(d.vni))] {
            if let Some(index) = index
                && let Err(source) = nl.delete_link(index).await
            {
                errors.push(DeviceError::Netlink { step: "deleting", device: name, source });
            }
        }
    }
    errors
}

/// The all-zero-MAC FDB entries (remote VTEPs) the kernel holds now on each network's
/// VXLAN device.
pub async fn read_flood(nl: &Netlink, devs: &BTreeMap<u32, NetDevices>) -> Result<BTreeMap<u32, BTreeSet<(Ipv4Addr, u16)>>, DeviceError> {
    let mut out = BTreeMap::new();
    for d in devs.values() {
        let name = vxlan_name(d.vni);
        let entries = nl.fdb_entries(d.vxlan_index).await.map_err(nl_err("reading the FDB", &name))?;
        let set = entries
            .into_iter()
            .filter(|e| e.mac == FLOOD_MAC)
            .filter_map(|e| Some((e.dst?, e.port.unwrap_or(d.udp_port))))
            .collect();
        out.insert(d.vni, set);
    }
    Ok(out)
}

/// Makes network `vni`'s all-zero-MAC FDB entries (one per remote VTEP, for broadcast
/// and unknown unicast) equal `desired`; `applied` is what is installed and is kept up
/// to date as entries change. Returns how many entries changed.
pub async fn sync_flood(
    nl: &Netlink,
    dev: &NetDevices,
    desired: &BTreeSet<(Ipv4Addr, u16)>,
    applied: &mut BTreeSet<(Ipv4Addr, u16)>,
) -> Result<usize, DeviceError> {
    let name = vxlan_name(dev.vni);
    let mut changed = 0;
    for &(vtep, port) in desired.difference(&applied.clone()) {
        nl.fdb_append(dev.vxlan_index, FLOOD_MAC, vtep, Some(dev.vni), Some(port))
            .await
            .map_err(nl_err("adding a flood entry", &name))?;
        applied.insert((vtep, port));
        changed += 1;
        debug!(vni = dev.vni, %vtep, port, "flood entry added");
    }
    for &(vtep, port) in applied.clone().difference(desired) {
        nl.fdb_del(dev.vxlan_index, FLOOD_MAC, Some(vtep), Some(dev.vni), Some(port))
            .await
            .map_err(nl_err("removing a flood entry", &name))?;
        applied.remove(&(vtep, port));
        changed += 1;
        debug!(vni = dev.vni, %vtep, "flood entry removed");
    }
    Ok(changed)
}
