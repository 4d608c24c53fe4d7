//! The eBPF datapath: loads `overlay-ebpf`, probes the kernel, pins the maps, attaches
//! the programs (TC ingress of the underlay and of every container's host-side veth)
//! and keeps the maps equal to the agent's [`Desired`].
//!
//! It survives the agent: maps are pinned ([`pins`]), programs stay attached through
//! pinned tcx links or netlink filters ([`attach`]). A new agent adopts them: it reuses
//! compatible maps, swaps its programs in place, and changes only the entries that
//! differ. When this build's maps differ from the pinned ones (another layout or
//! capacity), it makes new maps, waits for the first full store sync to fill them, and
//! only then switches the programs over ([`EbpfDatapath::resync`]).

mod attach;
mod error;
mod load;
pub mod pins;
mod routes;
mod tables;
mod vteps;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
    programs::SchedClassifier,
    util::KernelVersion,
};
use overlay_common::{
    DatapathConfig, FEATURE_CSUM_LEVEL, FloodValue, NETWORK_ANY_VTEP, NetworkValue, limits, maps, programs, vxlan,
};
use tracing::{debug, info, warn};

pub use attach::{Attached, TC_HANDLE, TC_PRIORITY};
pub use error::EbpfError;
use error::HELPERS;
pub use load::Capacities;
use pins::Pins;
use tables::{Table, endpoint_value, fdb_value, flood_value, neigh_key, neigh_value};

use super::{
    Applied, Datapath, DatapathError, DatapathStatus, Desired, Dirty, LocalEndpoint, TableUsage,
    devices::{self, NetDevices, NetSpec},
    probe::Features,
};
use crate::{bpffs, netlink::Netlink, paths};

/// Testing aid: names a helper the probe treats as missing, to exercise the automatic
/// fallback on a kernel that has everything (e.g. `bpf_redirect_peer`).
pub const SIMULATE_MISSING_ENV: &str = "OVERLAY_AGENT_SIMULATE_MISSING_HELPER";

/// The eBPF object built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
pub(crate) static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay-ebpf"));

/// What the eBPF datapath needs to know about this host.
#[derive(Debug, Clone)]
pub struct EbpfSettings {
    pub vtep: Ipv4Addr,
    pub underlay_ifindex: u32,
    pub underlay_ifname: String,
    pub networks: Vec<NetSpec>,
    pub bpffs_dir: PathBuf,
    pub capacities: Capacities,
    /// An earlier run added the underlay's `clsact` qdisc (netlink attach only).
    pub clsact_added: bool,
}

pub struct EbpfDatapath {
    ebpf: Ebpf,
    neigh: Table<overlay_common::NeighKey, overlay_common::NeighValue>,
    fdb: Table<overlay_common::FdbKey, overlay_common::FdbValue>,
    endpoints: Table<u32, overlay_common::EndpointValue>,
    flood: HashMap<MapData, u32, FloodValue>,
    routes: routes::Routes,
    vteps: vteps::Vteps,
    /// `OVL_CONFIG`, for switching tracing on and off.
    config: Array<MapData, DatapathConfig>,
    pins: Pins,
    features: Features,
    kernel: String,
    tcx: bool,
    nl: Netlink,
    underlay: (String, u32),
    devs: BTreeMap<u32, NetDevices>,
    /// VNI → VXLAN device ifindex, for the flood map.
    vxlan_index: BTreeMap<u32, u32>,
    /// Networks with a gateway to the host: their local endpoints get a host route.
    gateways: BTreeMap<u32, crate::datapath::Router>,
    /// Per VNI: the remote VTEPs with an all-zero-MAC FDB entry on its VXLAN device.
    flood_remote: BTreeMap<u32, BTreeSet<(Ipv4Addr, u16)>>,
    /// New maps waiting for the first full sync before the programs switch to them
    /// (an upgrade to another map layout or capacity); empty once switched.
    pending: Vec<&'static str>,
    /// Local endpoints: host-side ifindex → ifname (attached, or to attach at the switch).
    attached: BTreeMap<u32, String>,
    /// The first full sync has happened: entries derived from the store may be removed.
    synced: bool,
    clsact_added: bool,
}

pub fn kernel_version() -> Option<KernelVersion> {
    KernelVersion::current().ok()
}

/// Makes sure the host's bpffs is at /sys/fs/bpf, mounting one if this is the host's
/// mount namespace and none is there (see [`bpffs`] for `ip netns exec`).
pub fn ensure_bpffs() -> Result<(), EbpfError> {
    let mount = Path::new(paths::BPFFS_MOUNT);
    if bpffs::is_bpffs(mount) {
        return Ok(());
    }
    if let Some(bpffs::Rejoin::PrivateWithoutHostBpffs { pid }) = bpffs::rejoined() {
        return Err(EbpfError::NoHostBpffs { pid: *pid });
    }
    info!(path = paths::BPFFS_MOUNT, "bpffs is not mounted; mounting it");
    nix::mount::mount(Some("bpf"), mount, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|e| EbpfError::Bpffs { path: mount.to_owned(), source: e.into() })
}

pub(crate) fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(EbpfError::Missing { name })?;
    T::try_from(map).map_err(|source| EbpfError::Map { name, source })
}

pub(crate) fn classifier<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, EbpfError> {
    let prog = ebpf.program_mut(name).ok_or(EbpfError::Missing { name })?;
    prog.try_into().map_err(|source| EbpfError::Program { name, source })
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> EbpfError {
    move |source| EbpfError::Map { name, source }
}

/// Removes every pin of the node with `bpffs_dir` and detaches its programs from the
/// underlay (a switch to kernel mode, `down` without a running datapath).
pub fn remove_residue(bpffs_dir: &Path, underlay_ifname: &str) -> Result<usize, EbpfError> {
    let pins = Pins::new(bpffs_dir);
    let tcx = kernel_version().is_some_and(|v| v >= KernelVersion::new(6, 6, 0));
    if !tcx {
        attach::detach(underlay_ifname, Path::new(""), false)?;
    }
    pins.remove_all()
}

/// The pin directory `map dump` reads.
pub fn maps_dir(bpffs_dir: &Path) -> PathBuf {
    Pins::new(bpffs_dir).maps_dir()
}

/// Writes the host-wide config (tracing off: a new agent starts without sessions) and
/// returns the config map, kept to switch tracing on and off.
fn write_config(ebpf: &mut Ebpf, s: &EbpfSettings, features: &Features) -> Result<Array<MapData, DatapathConfig>, EbpfError> {
    let mut config: Array<MapData, DatapathConfig> = take(ebpf, maps::CONFIG)?;
    let mut networks: HashMap<MapData, u32, NetworkValue> = take(ebpf, maps::NETWORKS)?;
    let mut cfg = DatapathConfig::zeroed();
    let mut served = BTreeSet::new();
    for &NetSpec { vni, udp_port: port, mtu, known_vteps_only, .. } in &s.networks {
        let flags = if known_vteps_only { 0 } else { NETWORK_ANY_VTEP };
        let value = NetworkValue { udp_port_be: port.to_be(), mtu: mtu as u16, flags, _pad: [0; 2] };
        networks.insert(vni, value, 0).map_err(map_err(maps::NETWORKS))?;
        served.insert(vni);
        let n = cfg.n_udp_ports as usize;
        if !cfg.udp_ports_be[..n].contains(&port.to_be()) {
            if n == limits::MAX_UDP_PORTS {
                return Err(EbpfError::TooManyPorts { max: limits::MAX_UDP_PORTS });
            }
            cfg.udp_ports_be[n] = port.to_be();
            cfg.n_udp_ports += 1;
        }
    }
    // Networks no longer in the config (an adopted map).
    let stale: Vec<u32> = networks.keys().filter_map(Result::ok).filter(|v| !served.contains(v)).collect();
    for vni in stale {
        networks.remove(&vni).map_err(map_err(maps::NETWORKS))?;
    }
    cfg.underlay_ifindex = s.underlay_ifindex;
    cfg.encap_flags = features.encap_flags;
    cfg.decap_flags = features.decap_flags;
    cfg.src_port_min = vxlan::SRC_PORT_MIN;
    cfg.src_port_max = vxlan::SRC_PORT_MAX;
    if features.csum_level {
        cfg.features |= FEATURE_CSUM_LEVEL;
    }
    cfg.vtep = s.vtep.octets();
    config.set(0, cfg, 0).map_err(map_err(maps::CONFIG))?;
    Ok(config)
}

impl EbpfDatapath {
    /// Loads (or adopts) the datapath. On failure, whatever this call created is removed
    /// again, so `auto` can fall back to the kernel datapath on a clean host; what a
    /// previous run left running is left alone.
    pub async fn start(s: &EbpfSettings, nl: Netlink) -> Result<Self, EbpfError> {
        let kernel = kernel_version().map_or_else(|| "unknown".into(), |v| v.to_string());
        if let Ok(helper) = std::env::var(SIMULATE_MISSING_ENV) {
            let since = HELPERS.iter().find(|(h, _)| *h == helper).map_or("?", |(_, v)| *v);
            return Err(EbpfError::MissingHelper { helper, since, kernel, simulated: true });
        }
        if OBJECT.is_empty() {
            return Err(EbpfError::NotBuilt);
        }
        ensure_bpffs()?;
        let pins = Pins::new(&s.bpffs_dir);
        let upgrading = pins.any();
        let loaded = match load::load(&pins, &s.capacities, &kernel) {
            Ok(l) => l,
            Err(e) => {
                if !upgrading {
                    // Nothing of ours was here: leave nothing.
                    if let Err(undo) = pins.remove_all() {
                        warn!(error = %undo, "undo: removing pins");
                    }
                }
                return Err(e.refine(&kernel));
            }
        };
        let load::Loaded { mut ebpf, features, fresh } = loaded;
        let config = write_config(&mut ebpf, s, &features)?;
        let caps = s.capacities;
        let mut dp = Self {
            neigh: Table::new(take(&mut ebpf, maps::NEIGH)?, maps::NEIGH, caps.neigh),
            fdb: Table::new(take(&mut ebpf, maps::FDB)?, maps::FDB, caps.fdb),
            endpoints: Table::new(take(&mut ebpf, maps::ENDPOINTS)?, maps::ENDPOINTS, caps.endpoints),
            flood: take(&mut ebpf, maps::FLOOD)?,
            routes: routes::Routes::new(take(&mut ebpf, maps::ROUTES)?, &s.networks)?,
            config,
            vteps: vteps::Vteps::new(take(&mut ebpf, maps::VTEPS)?)?,
            ebpf,
            pins,
            features,
            kernel,
            tcx: kernel_version().is_some_and(|v| v >= KernelVersion::new(6, 6, 0)),
            nl,
            underlay: (s.underlay_ifname.clone(), s.underlay_ifindex),
            devs: BTreeMap::new(),
            vxlan_index: BTreeMap::new(),
            gateways: s.networks.iter().filter_map(|n| Some((n.vni, n.router?))).collect(),
            flood_remote: BTreeMap::new(),
            pending: Vec::new(),
            attached: BTreeMap::new(),
            synced: false,
            clsact_added: s.clsact_added,
        };
        dp.neigh.entries = dp.neigh.map.keys().count() as u64;
        dp.fdb.entries = dp.fdb.map.keys().count() as u64;
        dp.endpoints.entries = dp.endpoints.map.keys().count() as u64;
        dp.devs = devices::ensure(&dp.nl, s.vtep, s.underlay_ifindex, &s.networks, false).await?;
        dp.vxlan_index = dp.devs.iter().map(|(vni, d)| (*vni, d.vxlan_index)).collect();
        dp.flood_remote = devices::read_flood(&dp.nl, &dp.devs).await?;
        if upgrading && !fresh.is_empty() {
            info!(maps = ?fresh, "new maps for this build: the programs switch once they are filled from the store");
            dp.pending = fresh;
        } else {
            dp.pending = fresh;
            dp.switch()?;
        }
        info!(
            dir = %dp.pins.root().display(),
            tcx = dp.tcx,
            neigh = dp.neigh.entries,
            fdb = dp.fdb.entries,
            adopted = upgrading,
            "eBPF datapath ready"
        );
        Ok(dp)
    }

    pub fn features(&self) -> Features {
        self.features
    }

    /// Sets which verdicts the programs copy into the trace ring buffer (`trace`: 0,
    /// [`overlay_common::TRACE_DROPS`] or [`overlay_common::TRACE_ALL`]), for frames from
    /// the container behind `ifindex` only (0: all). Returns the ring buffer's pin.
    pub fn set_trace(&mut self, trace: u32, ifindex: u32) -> Result<PathBuf, EbpfError> {
        let mut c = self.config.get(&0, 0).map_err(map_err(maps::CONFIG))?;
        c.trace = trace;
        c.trace_ifindex = ifindex;
        self.config.set(0, c, 0).map_err(map_err(maps::CONFIG))?;
        Ok(self.pins.map(maps::TRACE))
    }

    /// Whether the programs still wait for their new maps to be filled.
    pub fn switch_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    fn attach_one(&mut self, name: &'static str, ifname: &str, ifindex: u32) -> Result<Attached, EbpfError> {
        let pin = self.pins.link(ifindex, ifname);
        let prog = classifier(&mut self.ebpf, name)?;
        attach::attach(prog, name, ifname, &pin, self.tcx)
    }

    /// Attaches (or swaps in) this build's programs everywhere, then makes the new maps
    /// the pinned ones and drops other builds' map directories. Link pins of endpoints
    /// that are gone are left to [`Self::remove_stale_links`]: at start-up this runs
    /// before the agent has adopted its endpoints, when every container's link would
    /// look stale.
    fn switch(&mut self) -> Result<(), EbpfError> {
        let (ifname, ifindex) = self.underlay.clone();
        let how = self.attach_one(programs::FROM_UNDERLAY, &ifname, ifindex)?;
        self.clsact_added |= how == Attached::NewWithQdisc;
        info!(interface = %ifname, tcx = self.tcx, ?how, "eBPF program on the underlay");
        for (ifindex, ifname) in self.attached.clone() {
            self.attach_one(programs::FROM_CONTAINER, &ifname, ifindex)?;
        }
        for name in std::mem::take(&mut self.pending) {
            load::commit_fresh(&self.pins, name)?;
        }
        for dir in self.pins.other_map_dirs() {
            let n = pins::remove_dir(&dir)?;
            info!(dir = %dir.display(), pins = n, "removed another build's maps");
        }
        Ok(())
    }

    /// Removes the link pins of interfaces that are gone or not ours any more. Only
    /// once the local endpoints are known (after the first full sync): unpinning a
    /// live endpoint's link detaches its program, and its container is cut off until
    /// the program is attached again, on a new link.
    fn remove_stale_links(&mut self) -> Result<(), EbpfError> {
        let live: BTreeSet<u32> = self.attached.keys().copied().chain([self.underlay.1]).collect();
        for (idx, name, path) in self.pins.links() {
            if !live.contains(&idx) {
                debug!(link = %path.display(), interface = %name, "removing a stale link pin");
                attach::detach(&name, &path, true)?;
            }
        }
        Ok(())
    }

    async fn sync_flood_remote(&mut self, desired: &Desired, vni: u32) -> Result<usize, EbpfError> {
        let Some(dev) = self.devs.get(&vni) else { return Ok(0) };
        let want = desired.flood_remote(vni);
        let applied = self.flood_remote.entry(vni).or_default();
        Ok(devices::sync_flood(&self.nl, dev, &want, applied).await?)
    }

    /// Whether this agent (or an earlier run, per the saved state) added the underlay's
    /// `clsact` qdisc, which `down` then removes.
    pub fn clsact_added(&self) -> bool {
        self.clsact_added
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

impl Datapath for EbpfDatapath {
    fn status(&self) -> DatapathStatus {
        let f = &self.features;
        DatapathStatus {
            mode: "ebpf".into(),
            detail: format!(
                "kernel {}, {} attach, adjust_room encap L2_ETH {}, decap NO_CSUM_RESET {}, csum_level {}",
                self.kernel,
                if self.tcx { "tcx" } else { "netlink/clsact" },
                yes_no(f.encap_l2_eth),
                yes_no(f.no_csum_reset),
                yes_no(f.csum_level),
            ),
        }
    }

    fn usage(&self) -> Vec<TableUsage> {
        vec![self.neigh.usage(), self.fdb.usage(), self.endpoints.usage(), self.routes.usage(), self.vteps.usage()]
    }

    fn check_room(&self) -> Result<(), DatapathError> {
        for (t, setting, more) in [
            (self.endpoints.usage(), "endpoint_capacity", 1),
            (self.neigh.usage(), "neigh_capacity", 1),
            (self.fdb.usage(), "fdb_capacity", 1),
        ] {
            let cap = t.capacity.unwrap_or(u64::MAX);
            if t.entries + more > cap {
                let map = [maps::ENDPOINTS, maps::NEIGH, maps::FDB].into_iter().find(|m| *m == t.name).unwrap_or(maps::FDB);
                return Err(DatapathError::Full { map, capacity: cap as u32, setting });
            }
        }
        Ok(())
    }

    async fn attach_endpoint(&mut self, ep: &LocalEndpoint) -> Result<(), DatapathError> {
        if let Some(r) = self.gateways.get(&ep.vni) {
            // The way back from the host to a container that reached it through its
            // gateway (the eBPF datapath has no bridge for the kernel to route to): `ip
            // route replace IP/32 dev VETH src GATEWAY table local` and a permanent
            // neighbour entry, so the host never ARPs into the container. Both go with
            // the veth.
            let netlink = |source| EbpfError::Netlink { interface: ep.ifname.clone(), source };
            self.nl.route_replace_link(ep.ip, 32, ep.ifindex, r.gateway).await.map_err(netlink)?;
            self.nl.add_neighbour(ep.ifindex, ep.ip, ep.mac.0).await.map_err(netlink)?;
        }
        self.attached.insert(ep.ifindex, ep.ifname.clone());
        if self.pending.is_empty() {
            self.attach_one(programs::FROM_CONTAINER, &ep.ifname, ep.ifindex)?;
        }
        Ok(())
    }

    async fn detach_endpoint(&mut self, ep: &LocalEndpoint) -> Result<(), DatapathError> {
        self.attached.remove(&ep.ifindex);
        attach::detach(&ep.ifname, &self.pins.link(ep.ifindex, &ep.ifname), self.tcx)?;
        Ok(())
    }

    async fn apply(&mut self, d: &Desired, dirty: &Dirty) -> Result<Applied, DatapathError> {
        let mut out = Applied::default();
        let mut count = |ok: bool| if ok { out.changed += 1 } else { out.full += 1 };
        // Upserts first (endpoints before the FDB, so a new veth's program finds its
        // identity), then removals.
        let mut removals = (Vec::new(), Vec::new(), Vec::new());
        for &ifindex in &dirty.endpoints {
            match d.local_endpoint(ifindex) {
                Some(l) => count(self.endpoints.upsert(ifindex, endpoint_value(l))?),
                None => removals.0.push(ifindex),
            }
        }
        for &(vni, mac) in &dirty.fdb {
            let key = overlay_common::FdbKey::new(vni, mac.0);
            match d.fdb(vni, mac) {
                Some(t) => count(self.fdb.upsert(key, fdb_value(t))?),
                None => removals.1.push(key),
            }
        }
        for &(vni, ip) in &dirty.neigh {
            match d.neigh(vni, ip) {
                Some(mac) => count(self.neigh.upsert(neigh_key(vni, ip), neigh_value(mac))?),
                None => removals.2.push(neigh_key(vni, ip)),
            }
        }
        for &vni in &dirty.flood {
            if d.serves(vni) {
                let v = flood_value(d, vni, &self.vxlan_index);
                self.flood.insert(vni, v, 0).map_err(map_err(maps::FLOOD))?;
                out.changed += 1;
            }
            if self.synced {
                out.changed += self.sync_flood_remote(d, vni).await?;
            }
        }
        // Routes after the neighbour and FDB upserts, before their removals.
        out.changed += self.routes.apply(d, dirty.routes.iter().copied())?;
        // A network's VTEPs change with its remote endpoints' (flood) and node subnets.
        let vnis: BTreeSet<u32> = dirty.flood.iter().copied().chain(dirty.routes.iter().map(|&(vni, _)| vni)).collect();
        out.changed += self.vteps.apply(d, vnis, self.synced)?;
        for k in &removals.2 {
            self.neigh.remove(k)?;
        }
        for k in &removals.1 {
            self.fdb.remove(k)?;
        }
        for k in &removals.0 {
            self.endpoints.remove(k)?;
        }
        out.changed += removals.0.len() + removals.1.len() + removals.2.len();
        // Room may have freed up for entries that did not fit.
        for key in self.fdb.not_installed.clone() {
            if let Some(t) = d.fdb(key.vni, crate::mac::MacAddr(key.mac)) {
                if !self.fdb.upsert(key, fdb_value(t))? {
                    break;
                }
            } else {
                self.fdb.not_installed.remove(&key);
            }
        }
        for key in self.neigh.not_installed.clone() {
            if let Some(mac) = d.neigh(key.vni, key.ip.into()) {
                if !self.neigh.upsert(key, neigh_value(mac))? {
                    break;
                }
            } else {
                self.neigh.not_installed.remove(&key);
            }
        }
        Ok(out)
    }

    async fn resync(&mut self, d: &Desired) -> Result<Applied, DatapathError> {
        let mut out = Applied::default();
        out += self.endpoints.sync(d.local().values().map(|l| (l.ifindex, endpoint_value(l))))?;
        out += self.fdb.sync(d.all_fdb().map(|((vni, mac), t)| (overlay_common::FdbKey::new(vni, mac.0), fdb_value(t))))?;
        out += self.neigh.sync(d.all_neigh().map(|((vni, ip), mac)| (neigh_key(vni, ip), neigh_value(mac))))?;
        out += self.routes.sync(d)?;
        out += self.vteps.sync(d)?;
        let stale: Vec<u32> = self.flood.keys().filter_map(Result::ok).filter(|v| !d.serves(*v)).collect();
        for vni in stale {
            self.flood.remove(&vni).map_err(map_err(maps::FLOOD))?;
        }
        self.synced = true;
        for vni in d.served().collect::<Vec<_>>() {
            let v = flood_value(d, vni, &self.vxlan_index);
            self.flood.insert(vni, v, 0).map_err(map_err(maps::FLOOD))?;
            out.changed += self.sync_flood_remote(d, vni).await?;
        }
        if out.full > 0 {
            warn!(entries = out.full, "eBPF maps full: entries not installed (see `overlay-agent status`)");
        }
        if !self.pending.is_empty() {
            info!(maps = ?self.pending, "new maps filled; switching the programs to them");
            self.switch()?;
        }
        self.remove_stale_links()?;
        Ok(out)
    }

    fn release(self) {
        info!(dir = %self.pins.root().display(), "eBPF datapath left running (pinned maps and links)");
        // Dropping the object closes our descriptors; pins and filters keep everything.
    }

    async fn remove(self) -> Vec<DatapathError> {
        let mut errors: Vec<DatapathError> = Vec::new();
        for (ifindex, ifname) in &self.attached {
            if let Err(e) = attach::detach(ifname, &self.pins.link(*ifindex, ifname), self.tcx) {
                errors.push(e.into());
            }
        }
        let (ifname, ifindex) = &self.underlay;
        if let Err(e) = attach::detach(ifname, &self.pins.link(*ifindex, ifname), self.tcx) {
            errors.push(e.into());
        }
        if self.clsact_added
            && let Err(source) = self.nl.delete_clsact(*ifindex).await
        {
            errors.push(EbpfError::Netlink { interface: ifname.clone(), source }.into());
        }
        errors.extend(devices::destroy(&self.nl, &self.devs).await.into_iter().map(DatapathError::from));
        // A table kernel mode made before a switch to eBPF mode.
        if let Err(e) = crate::firewall::remove() {
            errors.push(e.into());
        }
        match self.pins.remove_all() {
            Ok(n) => info!(dir = %self.pins.root().display(), pins = n, "eBPF datapath removed"),
            Err(e) => errors.push(e.into()),
        }
        errors
    }
}
