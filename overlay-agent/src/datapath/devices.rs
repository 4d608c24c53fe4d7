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
}

/// Deletes this agent's devices for `vnis` if they exist: leftovers of a crash or of
/// the other datapath mode.
pub async fn remove_stale(nl: &Netlink, vnis: impl IntoIterator<Item = u32>) -> Result<(), DeviceError> {
    for vni in vnis {
        for name in [vxlan_name(vni), bridge_name(vni)] {
            if nl.link_by_name(&name).await.map_err(nl_err("looking up", &name))?.is_some() {
                warn!(device = %name, "removing a device left by a previous agent run");
                nl.delete_link_by_name(&name).await.map_err(nl_err("deleting", &name))?;
            }
        }
    }
    Ok(())
}

/// Creates the devices of every network (replacing stale ones); with `bridged`, a
/// bridge per network with the VXLAN device as a port and ARP proxying on (the kernel
/// answers ARP from the neighbour entries the agent installs).
/// On error, whatever was created is deleted again.
pub async fn create(
    nl: &Netlink,
    vtep: Ipv4Addr,
    underlay_index: u32,
    nets: &[NetSpec],
    bridged: bool,
) -> Result<BTreeMap<u32, NetDevices>, DeviceError> {
    remove_stale(nl, nets.iter().map(|n| n.vni)).await?;
    let mut made = BTreeMap::new();
    for net in nets {
        match create_one(nl, vtep, underlay_index, net, bridged).await {
            Ok(d) => {
                made.insert(net.vni, d);
            }
            Err(e) => {
                // The half-made network's devices carry predictable names.
                if let Err(undo) = remove_stale(nl, [net.vni]).await {
                    warn!(error = %undo, "undo: removing half-made devices");
                }
                destroy(nl, &made).await;
                return Err(e);
            }
        }
    }
    Ok(made)
}

async fn create_one(
    nl: &Netlink,
    vtep: Ipv4Addr,
    underlay_index: u32,
    net: &NetSpec,
    bridged: bool,
) -> Result<NetDevices, DeviceError> {
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
    nl.create_vxlan(&spec).await.map_err(nl_err("creating the VXLAN device", &name))?;
    let vxlan_index = index_of(nl, &name).await?;
    let mut bridge_index = None;
    if bridged {
        let br = bridge_name(net.vni);
        nl.create_bridge(&br).await.map_err(nl_err("creating the bridge", &br))?;
        let idx = index_of(nl, &br).await?;
        nl.set_link(idx, LinkChange { mtu: Some(net.mtu), up: Some(true), ..Default::default() })
            .await
            .map_err(nl_err("bringing the bridge up", &br))?;
        nl.set_link(vxlan_index, LinkChange { master: Some(idx), ..Default::default() })
            .await
            .map_err(nl_err("adding the VXLAN device to the bridge", &name))?;
        bridge_index = Some(idx);
    }
    nl.set_link(vxlan_index, LinkChange { up: Some(true), ..Default::default() })
        .await
        .map_err(nl_err("bringing the VXLAN device up", &name))?;
    info!(device = %name, vni = net.vni, port = net.udp_port, bridged, "VXLAN device ready");
    Ok(NetDevices { vni: net.vni, udp_port: net.udp_port, vxlan_index, bridge_index })
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

/// Keeps the all-zero-MAC FDB entries (one per remote VTEP of each network) equal to
/// `desired`; `applied` is what is installed now and is updated as entries change.
pub async fn sync_flood(
    nl: &Netlink,
    devs: &BTreeMap<u32, NetDevices>,
    desired: &BTreeSet<(u32, Ipv4Addr, u16)>,
    applied: &mut BTreeSet<(u32, Ipv4Addr, u16)>,
) -> Result<(), DeviceError> {
    for &(vni, vtep, port) in desired.difference(&applied.clone()) {
        let Some(d) = devs.get(&vni) else { continue };
        let name = vxlan_name(vni);
        nl.fdb_append(d.vxlan_index, FLOOD_MAC, vtep, Some(vni), Some(port))
            .await
            .map_err(nl_err("adding a flood entry", &name))?;
        applied.insert((vni, vtep, port));
        debug!(vni, %vtep, port, "flood entry added");
    }
    for &(vni, vtep, port) in applied.clone().difference(desired) {
        if let Some(d) = devs.get(&vni) {
            let name = vxlan_name(vni);
            nl.fdb_del(d.vxlan_index, FLOOD_MAC, Some(vtep), Some(vni), Some(port))
                .await
                .map_err(nl_err("removing a flood entry", &name))?;
        }
        applied.remove(&(vni, vtep, port));
        debug!(vni, %vtep, "flood entry removed");
    }
    Ok(())
}
