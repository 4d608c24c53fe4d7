//! The kernel fallback datapath: what the classic recipe builds by hand, through
//! rtnetlink. Per network a bridge `ovbr<VNI>` and a VXLAN device `ovvx<VNI>` (`id VNI
//! dstport PORT local VTEP dev UNDERLAY nolearning proxy`) on it; containers' host-side
//! veths join the bridge. For every remote endpoint a permanent neighbour entry on the
//! VXLAN device (IP → MAC, so `proxy` answers ARP locally and no ARP crosses the
//! underlay) and an FDB entry (MAC → VTEP, `self`, VNI, port); one all-zero-MAC entry
//! per remote VTEP replicates broadcast and unknown unicast head-end.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use tracing::{debug, info, warn};

use super::{
    Datapath, DatapathError, DatapathStatus, Forwarding, LocalEndpoint,
    devices::{self, DeviceError, NetDevices, NetSpec},
};
use crate::netlink::{LinkChange, Netlink, NetlinkError};

/// Where a remote MAC is: (VTEP, UDP port).
type FdbTarget = (Ipv4Addr, u16);

pub struct KernelDatapath {
    nl: Netlink,
    devs: BTreeMap<u32, NetDevices>,
    /// (VNI, IP) → MAC installed as neighbour entries.
    neigh: BTreeMap<(u32, Ipv4Addr), [u8; 6]>,
    /// (VNI, MAC) → target installed as unicast FDB entries.
    fdb: BTreeMap<(u32, [u8; 6]), FdbTarget>,
    flood: BTreeSet<(u32, Ipv4Addr, u16)>,
    reason: String,
}

fn nl_err(step: &'static str, device: String) -> impl FnOnce(NetlinkError) -> DatapathError {
    move |source| DeviceError::Netlink { step, device, source }.into()
}

impl KernelDatapath {
    /// Builds the devices of every network. `reason` says why this mode runs (shown by
    /// `status`).
    pub async fn start(
        nl: Netlink,
        vtep: Ipv4Addr,
        underlay_index: u32,
        nets: &[NetSpec],
        reason: String,
    ) -> Result<Self, DatapathError> {
        let devs = devices::create(&nl, vtep, underlay_index, nets, true).await?;
        info!(networks = devs.len(), %reason, "kernel VXLAN datapath ready");
        Ok(Self { nl, devs, neigh: BTreeMap::new(), fdb: BTreeMap::new(), flood: BTreeSet::new(), reason })
    }

    fn vxlan(&self, vni: u32) -> Option<u32> {
        self.devs.get(&vni).map(|d| d.vxlan_index)
    }
}

impl Datapath for KernelDatapath {
    fn status(&self) -> DatapathStatus {
        DatapathStatus { mode: "kernel".into(), detail: self.reason.clone() }
    }

    async fn attach_endpoint(&mut self, ep: &LocalEndpoint) -> Result<(), DatapathError> {
        let Some(bridge) = self.devs.get(&ep.vni).and_then(|d| d.bridge_index) else {
            return Err(DeviceError::Vanished { name: devices::bridge_name(ep.vni) }.into());
        };
        self.nl
            .set_link(ep.ifindex, LinkChange { master: Some(bridge), ..Default::default() })
            .await
            .map_err(nl_err("adding the endpoint's veth to the bridge", ep.ifname.clone()))
    }

    async fn detach_endpoint(&mut self, _ifindex: u32) -> Result<(), DatapathError> {
        // Deleting the veth removes it from the bridge; nothing else refers to it.
        Ok(())
    }

    async fn sync(&mut self, fwd: &Forwarding) -> Result<(), DatapathError> {
        let mut neigh = BTreeMap::new();
        let mut fdb = BTreeMap::new();
        for r in fwd.remote.values() {
            if !self.devs.contains_key(&r.vni) {
                continue;
            }
            neigh.insert((r.vni, r.ip), r.mac.0);
            fdb.insert((r.vni, r.mac.0), (r.vtep, r.udp_port));
        }
        // Additions and changes first, then removals.
        for (&(vni, mac), &(vtep, port)) in &fdb {
            if self.fdb.get(&(vni, mac)) != Some(&(vtep, port))
                && let Some(dev) = self.vxlan(vni)
            {
                self.nl
                    .fdb_replace(dev, mac, vtep, Some(vni), Some(port))
                    .await
                    .map_err(nl_err("adding an FDB entry", devices::vxlan_name(vni)))?;
                self.fdb.insert((vni, mac), (vtep, port));
            }
        }
        for (&(vni, ip), &mac) in &neigh {
            if self.neigh.get(&(vni, ip)) != Some(&mac)
                && let Some(dev) = self.vxlan(vni)
            {
                self.nl
                    .neigh_replace(dev, ip, mac)
                    .await
                    .map_err(nl_err("adding a neighbour entry", devices::vxlan_name(vni)))?;
                self.neigh.insert((vni, ip), mac);
            }
        }
        let desired_flood: BTreeSet<_> = fwd.flood_targets().into_iter().filter(|(vni, ..)| self.devs.contains_key(vni)).collect();
        devices::sync_flood(&self.nl, &self.devs, &desired_flood, &mut self.flood).await?;
        for (vni, ip) in self.neigh.keys().copied().filter(|k| !neigh.contains_key(k)).collect::<Vec<_>>() {
            if let Some(dev) = self.vxlan(vni) {
                self.nl
                    .neigh_del(dev, ip)
                    .await
                    .map_err(nl_err("removing a neighbour entry", devices::vxlan_name(vni)))?;
            }
            self.neigh.remove(&(vni, ip));
        }
        for (vni, mac) in self.fdb.keys().copied().filter(|k| !fdb.contains_key(k)).collect::<Vec<_>>() {
            if let Some(dev) = self.vxlan(vni) {
                let (vtep, port) = self.fdb[&(vni, mac)];
                self.nl
                    .fdb_del(dev, mac, Some(vtep), Some(vni), Some(port))
                    .await
                    .map_err(nl_err("removing an FDB entry", devices::vxlan_name(vni)))?;
            }
            self.fdb.remove(&(vni, mac));
        }
        debug!(neigh = self.neigh.len(), fdb = self.fdb.len(), flood = self.flood.len(), "kernel tables in sync");
        Ok(())
    }

    async fn shutdown(self) -> Result<(), DatapathError> {
        let errors = devices::destroy(&self.nl, &self.devs).await;
        for e in &errors {
            warn!(error = %e, "removing the kernel datapath");
        }
        match errors.into_iter().next() {
            None => {
                info!("kernel VXLAN datapath removed");
                Ok(())
            }
            Some(first) => Err(first.into()),
        }
    }
}
