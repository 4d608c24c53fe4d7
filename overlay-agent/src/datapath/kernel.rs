//! The kernel fallback datapath: what the classic recipe builds by hand, through
//! rtnetlink. Per network a bridge `ovbr<VNI>` and a VXLAN device `ovvx<VNI>` (`id VNI
//! dstport PORT local VTEP dev UNDERLAY nolearning proxy`) on it; containers' host-side
//! veths join the bridge. For every remote endpoint a permanent neighbour entry on the
//! VXLAN device (IP → MAC, so `proxy` answers ARP locally and no ARP crosses the
//! underlay) and an FDB entry (MAC → VTEP, `self`, VNI, port); one all-zero-MAC entry
//! per remote VTEP replicates broadcast and unknown unicast head-end.
//!
//! An L3 network (seeds/003's routed recipe) has the same two devices, but the VXLAN
//! device is not a bridge port: it holds the node's address as a /32 and the router
//! MAC, the bridge holds the containers' gateway address, and every remote node subnet
//! is a route `SUBNET via NODE-ADDRESS dev ovvx<VNI> onlink` with the neighbour entry
//! (node address → its router MAC) and FDB entry (router MAC → VTEP) it needs. The host
//! forwards (`net.ipv4.ip_forward = 1`, as flannel and Docker set it).
//!
//! All of it stays in the kernel when the agent stops; the next start adopts the
//! devices and reads their tables back. [`KernelDatapath::resync`] compares the tables
//! with what they should hold and repairs them; the agent runs it periodically, since
//! the kernel drops a device's neighbour entries when it goes down and up.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use tracing::{debug, info, warn};

use super::{
    Applied, Datapath, DatapathError, DatapathStatus, Desired, Dirty, LocalEndpoint, TableUsage,
    devices::{self, DeviceError, NetDevices, NetSpec},
};
use crate::{
    mac::MacAddr,
    netlink::{LinkChange, Netlink, NetlinkError},
};

/// Where a remote MAC is: (VTEP, UDP port).
type FdbTarget = (Ipv4Addr, u16);

pub struct KernelDatapath {
    nl: Netlink,
    vtep: Ipv4Addr,
    underlay_index: u32,
    nets: Vec<NetSpec>,
    devs: BTreeMap<u32, NetDevices>,
    /// (VNI, IP) → MAC installed as neighbour entries.
    neigh: HashMap<(u32, Ipv4Addr), MacAddr>,
    /// (VNI, MAC) → target installed as unicast FDB entries.
    fdb: HashMap<(u32, MacAddr), FdbTarget>,
    flood: BTreeMap<u32, BTreeSet<(Ipv4Addr, u16)>>,
    /// (VNI, node subnet address) → prefix length: routes installed for L3 networks.
    routes: BTreeMap<(u32, Ipv4Addr), u8>,
    /// The first full sync has happened: entries derived from the store may be removed.
    synced: bool,
    reason: String,
}

fn nl_err(step: &'static str, device: String) -> impl FnOnce(NetlinkError) -> DatapathError {
    move |source| DeviceError::Netlink { step, device, source }.into()
}

impl KernelDatapath {
    /// Builds (or adopts) the devices of every network and reads their tables. `reason`
    /// says why this mode runs (shown by `status`).
    pub async fn start(
        nl: Netlink,
        vtep: Ipv4Addr,
        underlay_index: u32,
        nets: &[NetSpec],
        reason: String,
    ) -> Result<Self, DatapathError> {
        let devs = devices::ensure(&nl, vtep, underlay_index, nets, true).await?;
        let mut dp = Self {
            nl,
            vtep,
            underlay_index,
            nets: nets.to_vec(),
            devs,
            neigh: HashMap::new(),
            fdb: HashMap::new(),
            flood: BTreeMap::new(),
            routes: BTreeMap::new(),
            synced: false,
            reason,
        };
        dp.read_tables().await?;
        info!(networks = dp.devs.len(), neigh = dp.neigh.len(), fdb = dp.fdb.len(), reason = %dp.reason, "kernel VXLAN datapath ready");
        Ok(dp)
    }

    /// Reads the neighbour, FDB and flood entries the kernel holds now.
    async fn read_tables(&mut self) -> Result<(), DatapathError> {
        self.neigh.clear();
        self.fdb.clear();
        for d in self.devs.values() {
            let name = devices::vxlan_name(d.vni);
            for n in self.nl.neighbours(d.vxlan_index).await.map_err(nl_err("reading neighbours", name.clone()))? {
                if let (Some(mac), true) = (n.mac, n.permanent) {
                    self.neigh.insert((d.vni, n.ip), MacAddr(mac));
                }
            }
            for f in self.nl.fdb_entries(d.vxlan_index).await.map_err(nl_err("reading the FDB", name))? {
                if let (Some(dst), false) = (f.dst, f.mac == devices::FLOOD_MAC) {
                    self.fdb.insert((d.vni, MacAddr(f.mac)), (dst, f.port.unwrap_or(d.udp_port)));
                }
            }
        }
        self.flood = devices::read_flood(&self.nl, &self.devs).await?;
        self.routes.clear();
        for n in self.nets.iter().filter(|n| n.router.is_some_and(|r| r.l3)) {
            let Some(d) = self.devs.get(&n.vni) else { continue };
            let name = devices::vxlan_name(d.vni);
            for (dst, len, via) in self.nl.routes_via(d.vxlan_index).await.map_err(nl_err("reading routes", name))? {
                if via == dst {
                    self.routes.insert((d.vni, dst), len);
                }
            }
        }
        Ok(())
    }

    async fn set_route(&mut self, vni: u32, at: Ipv4Addr, want: Option<u8>) -> Result<bool, DatapathError> {
        let Some(dev) = self.devs.get(&vni).map(|d| d.vxlan_index) else { return Ok(false) };
        let have = self.routes.get(&(vni, at)).copied();
        if have == want {
            return Ok(false);
        }
        let name = devices::vxlan_name(vni);
        if let Some(len) = want {
            self.nl.route_replace_onlink(at, len, at, dev).await.map_err(nl_err("adding a route", name.clone()))?;
            self.routes.insert((vni, at), len);
        }
        if let Some(old) = have.filter(|old| Some(*old) != want) {
            self.nl.route_del(at, old, dev).await.map_err(nl_err("removing a route", name))?;
            if want.is_none() {
                self.routes.remove(&(vni, at));
            }
        }
        Ok(true)
    }

    async fn set_neigh(&mut self, vni: u32, ip: Ipv4Addr, mac: Option<MacAddr>) -> Result<bool, DatapathError> {
        let Some(dev) = self.devs.get(&vni).map(|d| d.vxlan_index) else { return Ok(false) };
        if self.neigh.get(&(vni, ip)).copied() == mac {
            return Ok(false);
        }
        let name = devices::vxlan_name(vni);
        match mac {
            Some(mac) => {
                self.nl.neigh_replace(dev, ip, mac.0).await.map_err(nl_err("adding a neighbour entry", name))?;
                self.neigh.insert((vni, ip), mac);
            }
            None => {
                self.nl.neigh_del(dev, ip).await.map_err(nl_err("removing a neighbour entry", name))?;
                self.neigh.remove(&(vni, ip));
            }
        }
        Ok(true)
    }

    async fn set_fdb(&mut self, vni: u32, mac: MacAddr, target: Option<FdbTarget>) -> Result<bool, DatapathError> {
        let Some(dev) = self.devs.get(&vni).map(|d| d.vxlan_index) else { return Ok(false) };
        let current = self.fdb.get(&(vni, mac)).copied();
        if current == target {
            return Ok(false);
        }
        let name = devices::vxlan_name(vni);
        match (target, current) {
            (Some((vtep, port)), _) => {
                self.nl
                    .fdb_replace(dev, mac.0, vtep, Some(vni), Some(port))
                    .await
                    .map_err(nl_err("adding an FDB entry", name))?;
                self.fdb.insert((vni, mac), (vtep, port));
            }
            (None, Some((vtep, port))) => {
                self.nl
                    .fdb_del(dev, mac.0, Some(vtep), Some(vni), Some(port))
                    .await
                    .map_err(nl_err("removing an FDB entry", name))?;
                self.fdb.remove(&(vni, mac));
            }
            (None, None) => {}
        }
        Ok(true)
    }

    async fn set_flood(&mut self, d: &Desired, vni: u32) -> Result<usize, DatapathError> {
        let Some(dev) = self.devs.get(&vni) else { return Ok(0) };
        let want = d.flood_remote(vni);
        let applied = self.flood.entry(vni).or_default();
        Ok(devices::sync_flood(&self.nl, dev, &want, applied).await?)
    }

    /// The VTEPs this datapath sends `vni`'s frames to now (its flood list; for an L3
    /// network also the FDB entries of the other nodes' VXLAN MACs): from a fresh start
    /// what the store says, after a restart what the previous run installed.
    pub fn vteps(&self, vni: u32) -> BTreeSet<Ipv4Addr> {
        let mut out: BTreeSet<Ipv4Addr> = self.flood.get(&vni).into_iter().flatten().map(|&(vtep, _)| vtep).collect();
        if self.nets.iter().any(|n| n.vni == vni && n.router.is_some_and(|r| r.l3)) {
            out.extend(self.fdb.iter().filter(|((v, _), _)| *v == vni).map(|(_, &(vtep, _))| vtep));
        }
        out
    }

    /// Brings back devices that vanished or went down (someone's `ip link set down`).
    async fn repair_devices(&mut self) -> Result<(), DatapathError> {
        let mut broken = false;
        for d in self.devs.values() {
            for index in [Some(d.vxlan_index), d.bridge_index].into_iter().flatten() {
                let link = self.nl.link_by_index(index).await.map_err(nl_err("looking up", devices::vxlan_name(d.vni)))?;
                if !link.is_some_and(|l| l.up) {
                    warn!(vni = d.vni, "a device of the network vanished or went down; repairing it");
                    broken = true;
                }
            }
        }
        if broken {
            self.devs = devices::ensure(&self.nl, self.vtep, self.underlay_index, &self.nets, true).await?;
        }
        Ok(())
    }
}

/// The remote part of `d`: kernel mode installs neighbour and FDB entries only for
/// endpoints behind other VTEPs (the bridge learns local MACs, the containers answer
/// their own ARP).
fn remote_neigh(d: &Desired, vni: u32, ip: Ipv4Addr) -> Option<MacAddr> {
    d.remote(vni, ip).map(|r| r.mac)
}

fn remote_fdb(d: &Desired, vni: u32, mac: MacAddr) -> Option<FdbTarget> {
    match d.fdb(vni, mac)? {
        super::FdbTarget::Remote { vtep, udp_port } => Some((vtep, udp_port)),
        // The bridge learns local MACs; the gateway is the bridge's own address.
        super::FdbTarget::Local { .. } | super::FdbTarget::Router => None,
    }
}

impl Datapath for KernelDatapath {
    fn status(&self) -> DatapathStatus {
        DatapathStatus { mode: "kernel".into(), detail: self.reason.clone() }
    }

    fn usage(&self) -> Vec<TableUsage> {
        let flood = self.flood.values().map(BTreeSet::len).sum::<usize>();
        [("kernel neighbours", self.neigh.len()), ("kernel fdb", self.fdb.len()), ("kernel flood", flood), ("kernel routes", self.routes.len())]
            .into_iter()
            .map(|(name, n)| TableUsage { name: name.into(), entries: n as u64, capacity: None, not_installed: 0 })
            .collect()
    }

    fn check_room(&self) -> Result<(), DatapathError> {
        Ok(())
    }

    async fn attach_endpoint(&mut self, ep: &LocalEndpoint) -> Result<(), DatapathError> {
        let Some(bridge) = self.devs.get(&ep.vni).and_then(|d| d.bridge_index) else {
            return Err(DeviceError::Vanished { name: devices::bridge_name(ep.vni) }.into());
        };
        self.nl
            .set_link(ep.ifindex, LinkChange { master: Some(bridge), ..Default::default() })
            .await
            .map_err(nl_err("adding the endpoint's veth to the bridge", ep.ifname.clone()))?;
        // The bridge learns MACs on its VXLAN port from traffic of remote containers; an
        // address that lived on another host before (a container moved, or an address
        // and its MAC reused) would go on being sent back out there until that entry
        // aged out (5 minutes) or the container spoke first. A static entry on the new
        // port wins at once; it goes with the veth.
        self.nl
            .bridge_fdb_static(ep.ifindex, ep.mac.0)
            .await
            .map_err(nl_err("pinning the endpoint's MAC to its bridge port", ep.ifname.clone()))
    }

    async fn detach_endpoint(&mut self, _ep: &LocalEndpoint) -> Result<(), DatapathError> {
        // Deleting the veth removes it from the bridge; nothing else refers to it.
        Ok(())
    }

    async fn apply(&mut self, d: &Desired, dirty: &Dirty) -> Result<Applied, DatapathError> {
        let mut out = Applied::default();
        // Additions and changes first, then removals.
        for pass_removals in [false, true] {
            for &(vni, mac) in &dirty.fdb {
                let want = remote_fdb(d, vni, mac);
                if want.is_none() == pass_removals && self.set_fdb(vni, mac, want).await? {
                    out.changed += 1;
                }
            }
            for &(vni, ip) in &dirty.neigh {
                let want = remote_neigh(d, vni, ip);
                if want.is_none() == pass_removals && self.set_neigh(vni, ip, want).await? {
                    out.changed += 1;
                }
            }
        }
        if self.synced {
            for &vni in &dirty.flood {
                out.changed += self.set_flood(d, vni).await?;
            }
        }
        // Routes once their neighbour and FDB entries exist; a removed route goes before
        // nothing else needs it (the entries of a gone subnet are removed above, which
        // only leaves the route unusable for the moment in between).
        for &(vni, at) in &dirty.routes {
            let want = d.route(vni, at).map(|(len, _)| len);
            if self.set_route(vni, at, want).await? {
                out.changed += 1;
            }
        }
        Ok(out)
    }

    async fn resync(&mut self, d: &Desired) -> Result<Applied, DatapathError> {
        self.repair_devices().await?;
        self.read_tables().await?;
        let mut dirty = Dirty::default();
        for ((vni, ip), _) in d.all_neigh() {
            dirty.neigh.insert((vni, ip));
        }
        for ((vni, mac), _) in d.all_fdb() {
            dirty.fdb.insert((vni, mac));
        }
        // What the kernel holds that should not be there.
        dirty.neigh.extend(self.neigh.keys().copied());
        dirty.fdb.extend(self.fdb.keys().copied());
        dirty.flood.extend(d.served());
        dirty.routes.extend(d.all_routes().map(|(k, _, _)| k));
        dirty.routes.extend(self.routes.keys().copied());
        self.synced = true;
        let out = self.apply(d, &dirty).await?;
        if out.changed > 0 {
            info!(changed = out.changed, "kernel tables repaired");
        } else {
            debug!(neigh = self.neigh.len(), fdb = self.fdb.len(), "kernel tables in sync");
        }
        Ok(out)
    }

    fn release(self) {
        info!("kernel VXLAN datapath left running (bridges, VXLAN devices and their entries)");
    }

    async fn remove(self) -> Vec<DatapathError> {
        let mut errors: Vec<DatapathError> = devices::destroy(&self.nl, &self.devs).await.into_iter().map(Into::into).collect();
        if let Err(e) = crate::firewall::remove() {
            errors.push(e.into());
        }
        if errors.is_empty() {
            info!("kernel VXLAN datapath removed");
        }
        errors
    }
}
