//! The eBPF datapath: loads `overlay-ebpf`, probes the kernel, pins the maps under
//! `<bpffs_dir>/maps`, attaches the programs (TC ingress of the underlay and of every
//! container's host-side veth) and keeps the maps equal to the agent's [`Forwarding`].

use std::{
    collections::HashMap as StdHashMap,
    io::ErrorKind,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        SchedClassifier, TcAttachType,
        tc::{self, SchedClassifierLinkId, TcError},
    },
    util::KernelVersion,
};
use std::collections::{BTreeMap, BTreeSet};

use overlay_common::{
    DatapathConfig, EndpointValue, FEATURE_CSUM_LEVEL, FdbKey, FdbValue, FloodValue, NeighKey,
    NeighValue, NetworkValue, ProbeArgs, StatsValue, limits, maps, programs, vxlan,
};
use tracing::{debug, info, warn};

use super::{
    Datapath, DatapathError, DatapathStatus, Forwarding, LocalEndpoint,
    devices::{self, DeviceError, NetDevices, NetSpec},
    probe::{self, Features, ProbeError},
    tables::{Tables, diff},
};
use crate::{netlink::Netlink, paths};

/// Testing aid: names a helper the probe treats as missing, to exercise the automatic
/// fallback on a kernel that has everything (e.g. `bpf_redirect_peer`).
pub const SIMULATE_MISSING_ENV: &str = "OVERLAY_AGENT_SIMULATE_MISSING_HELPER";

/// The helpers the programs call, and the first mainline kernel that has each.
const HELPERS: [(&str, &str); 9] = [
    ("bpf_redirect_peer", "5.10"),
    ("bpf_redirect_neigh", "5.10"),
    ("bpf_csum_level", "5.7"),
    ("bpf_skb_adjust_room", "4.13"),
    ("bpf_skb_change_type", "4.8"),
    ("bpf_get_hash_recalc", "4.8"),
    ("bpf_clone_redirect", "4.2"),
    ("bpf_skb_store_bytes", "4.1"),
    ("bpf_redirect", "4.4"),
];

/// The eBPF object built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
pub(crate) static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay-ebpf"));

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(
        "this overlay-agent was built without its eBPF datapath (AYA_BUILD_SKIP); \
         rebuild it with `cargo xtask build`"
    )]
    NotBuilt,
    #[error("bpffs at {path}: {source} (mount it with `mount -t bpf bpf {path}`)")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object: {source}")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF object has no program or map named {name}")]
    Missing { name: &'static str },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("adding the clsact qdisc to {interface}: {source}")]
    Clsact {
        interface: String,
        #[source]
        source: TcError,
    },
    #[error("attaching {program} to {interface}: {source}")]
    Attach {
        program: &'static str,
        interface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("more than {max} distinct VXLAN UDP ports")]
    TooManyPorts { max: usize },
    #[error("kernel {kernel} lacks {helper} (Linux {since}+){simulated}", simulated = if *simulated { " [simulated]" } else { "" })]
    MissingHelper { helper: String, since: &'static str, kernel: String, simulated: bool },
    #[error("setting up the broadcast VXLAN devices: {0}")]
    Devices(#[from] DeviceError),
}

impl EbpfError {
    /// Refines a verifier rejection into the helper the kernel lacks, when that is why.
    fn refine(self, kernel: &str) -> EbpfError {
        if let EbpfError::Program { source: aya::programs::ProgramError::LoadError { verifier_log, .. }, .. } = &self {
            let log = verifier_log.to_string();
            if let Some(rest) = log.split("unknown func ").nth(1) {
                let name = rest.split(['#', ' ', '\n']).next().unwrap_or_default();
                if let Some((helper, since)) = HELPERS.iter().find(|(h, _)| *h == name) {
                    return EbpfError::MissingHelper {
                        helper: (*helper).into(),
                        since,
                        kernel: kernel.into(),
                        simulated: false,
                    };
                }
            }
        }
        self
    }
}

/// What the eBPF datapath needs to know about this host.
#[derive(Debug, Clone)]
pub struct EbpfSettings {
    pub vtep: Ipv4Addr,
    pub underlay_ifindex: u32,
    pub underlay_ifname: String,
    pub networks: Vec<NetSpec>,
    pub bpffs_dir: PathBuf,
}

struct Maps {
    neigh: HashMap<MapData, NeighKey, NeighValue>,
    fdb: HashMap<MapData, FdbKey, FdbValue>,
    endpoints: HashMap<MapData, u32, EndpointValue>,
    flood: HashMap<MapData, u32, FloodValue>,
}

pub struct EbpfDatapath {
    ebpf: Ebpf,
    maps: Maps,
    applied: Tables,
    links: StdHashMap<u32, SchedClassifierLinkId>,
    underlay: Option<(String, SchedClassifierLinkId)>,
    maps_dir: PathBuf,
    bpffs_dir: PathBuf,
    features: Features,
    kernel: String,
    tcx: bool,
    nl: Netlink,
    devs: BTreeMap<u32, NetDevices>,
    /// VNI → VXLAN device ifindex, for the flood map.
    vxlan_index: BTreeMap<u32, u32>,
    flood_entries: BTreeSet<(u32, Ipv4Addr, u16)>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EbpfError + '_ {
    move |source| EbpfError::Io { path: path.to_owned(), source }
}

/// Makes sure a bpffs is mounted at /sys/fs/bpf, mounting one if not.
pub fn ensure_bpffs() -> Result<(), EbpfError> {
    let mount = Path::new(paths::BPFFS_MOUNT);
    let bpffs_err = |source| EbpfError::Bpffs { path: mount.to_owned(), source };
    let st = nix::sys::statfs::statfs(mount).map_err(|e| bpffs_err(e.into()))?;
    if st.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    info!(path = paths::BPFFS_MOUNT, "bpffs is not mounted; mounting it");
    nix::mount::mount(Some("bpf"), mount, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|e| bpffs_err(e.into()))
}

/// Removes pinned maps left under `maps_dir` (by a crashed agent) and the directory.
pub fn remove_pins(maps_dir: &Path) -> Result<usize, EbpfError> {
    let entries = match std::fs::read_dir(maps_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(EbpfError::Io { path: maps_dir.to_owned(), source }),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry.map_err(io_err(maps_dir))?.path();
        std::fs::remove_file(&path).map_err(io_err(&path))?;
        removed += 1;
    }
    std::fs::remove_dir(maps_dir).map_err(io_err(maps_dir))?;
    Ok(removed)
}

/// Removes every pin of the node whose pin directory is `bpffs_dir`, and the directory.
pub fn remove_node_pins(bpffs_dir: &Path) -> Result<usize, EbpfError> {
    let n = remove_pins(&bpffs_dir.join(paths::MAPS_SUBDIR))?;
    remove_empty_dirs(bpffs_dir);
    Ok(n)
}

/// Removes `dir` and then its parents up to (not including) the bpffs mount, as long
/// as they are empty: several agents may share `/sys/fs/bpf/overlay`.
fn remove_empty_dirs(dir: &Path) {
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d == Path::new(paths::BPFFS_MOUNT) || !d.starts_with(paths::BPFFS_MOUNT) {
            break;
        }
        if std::fs::remove_dir(d).is_err() {
            break; // not empty (another agent) or already gone
        }
        cur = d.parent();
    }
}

/// On kernels without tcx, TC programs are netlink filters that outlive the agent:
/// remove ours from the underlay if a crashed eBPF-mode agent left it.
pub fn detach_stale_underlay_filter(ifname: &str) {
    match tc::qdisc_detach_program(ifname, TcAttachType::Ingress, programs::FROM_UNDERLAY) {
        Ok(()) => warn!(interface = ifname, "removed the eBPF filter a previous agent left on the underlay"),
        Err(TcError::IoError(e)) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => debug!(interface = ifname, error = %e, "no stale underlay filter removed"),
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(EbpfError::Missing { name })?;
    T::try_from(map).map_err(|source| EbpfError::Map { name, source })
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, EbpfError> {
    let prog = ebpf.program_mut(name).ok_or(EbpfError::Missing { name })?;
    prog.try_into().map_err(|source| EbpfError::Program { name, source })
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> EbpfError {
    move |source| EbpfError::Map { name, source }
}

/// The kernel's version, for messages.
pub fn kernel_version() -> Option<KernelVersion> {
    KernelVersion::current().ok()
}

impl EbpfDatapath {
    /// Loads, probes, pins and attaches the datapath and builds the networks' VXLAN
    /// devices. On failure everything made so far is removed again, so `auto` can fall
    /// back to the kernel datapath on a clean host.
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
        let maps_dir = s.bpffs_dir.join(paths::MAPS_SUBDIR);
        let stale = remove_pins(&maps_dir)?;
        if stale > 0 {
            warn!(dir = %maps_dir.display(), stale, "removed pinned maps left by a previous agent run");
        }
        let mut dp = match Self::load(s, &maps_dir, nl) {
            Ok(dp) => dp,
            Err(e) => {
                // The Ebpf object is gone: programs detached. Remove the pins too.
                if let Err(undo) = remove_pins(&maps_dir) {
                    warn!(error = %undo, "undo: removing pins");
                }
                remove_empty_dirs(&s.bpffs_dir);
                return Err(e.refine(&kernel));
            }
        };
        match devices::create(&dp.nl, s.vtep, s.underlay_ifindex, &s.networks, false).await {
            Ok(devs) => {
                dp.vxlan_index = devs.iter().map(|(vni, d)| (*vni, d.vxlan_index)).collect();
                dp.devs = devs;
                // Publish the flood lists (VXLAN devices, no local endpoints yet).
                dp.apply(Tables::from_forwarding(&Forwarding::default(), &dp.vxlan_index))?;
                Ok(dp)
            }
            Err(e) => {
                let devs_err = EbpfError::Devices(e);
                if let Err(undo) = dp.teardown_bpf() {
                    warn!(error = %undo, "undo: removing the eBPF datapath");
                }
                Err(devs_err)
            }
        }
    }

    fn load(s: &EbpfSettings, maps_dir: &Path, nl: Netlink) -> Result<Self, EbpfError> {
        let maps_dir = maps_dir.to_owned();
        let version = KernelVersion::current().ok();
        let kernel = version.map_or_else(|| "unknown".into(), |v| v.to_string());
        // tcx links (6.6+) are owned by the agent's file descriptors: if the agent dies,
        // the kernel detaches them. Older kernels use netlink filters on a clsact qdisc.
        // aya's `attach` makes the same choice.
        let tcx = version.is_some_and(|v| v >= KernelVersion::new(6, 6, 0));

        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|source| EbpfError::Load { source: Box::new(source) })?;

        let prog = classifier(&mut ebpf, programs::PROBE_ADJUST_ROOM)?;
        prog.load()
            .map_err(|source| EbpfError::Program { name: programs::PROBE_ADJUST_ROOM, source })?;
        let mut probe_map: Array<MapData, ProbeArgs> = take(&mut ebpf, maps::PROBE)?;
        let prog = classifier(&mut ebpf, programs::PROBE_ADJUST_ROOM)?;
        let features = probe::probe(prog, &mut probe_map)?;
        info!(?features, kernel, "probed kernel datapath features");

        std::fs::create_dir_all(&maps_dir).map_err(io_err(&maps_dir))?;
        for name in maps::ALL {
            let map = ebpf.map(name).ok_or(EbpfError::Missing { name })?;
            let path = maps_dir.join(name);
            map.pin(&path).map_err(|source| EbpfError::Pin { path, source })?;
        }

        let mut config: Array<MapData, DatapathConfig> = take(&mut ebpf, maps::CONFIG)?;
        let mut networks: HashMap<MapData, u32, NetworkValue> = take(&mut ebpf, maps::NETWORKS)?;
        let mut cfg = DatapathConfig::zeroed();
        for &NetSpec { vni, udp_port: port, mtu } in &s.networks {
            let value = NetworkValue { udp_port_be: port.to_be(), mtu: mtu as u16, _pad: [0; 4] };
            networks.insert(vni, value, 0).map_err(map_err(maps::NETWORKS))?;
            let n = cfg.n_udp_ports as usize;
            if !cfg.udp_ports_be[..n].contains(&port.to_be()) {
                if n == limits::MAX_UDP_PORTS {
                    return Err(EbpfError::TooManyPorts { max: limits::MAX_UDP_PORTS });
                }
                cfg.udp_ports_be[n] = port.to_be();
                cfg.n_udp_ports += 1;
            }
        }
        cfg.underlay_ifindex = s.underlay_ifindex;
        cfg.encap_flags = features.encap_flags;
        cfg.decap_flags = features.decap_flags;
        cfg.src_port_min = vxlan::SRC_PORT_MIN;
        cfg.src_port_max = vxlan::SRC_PORT_MAX;
        if features.csum_level {
            cfg.features |= FEATURE_CSUM_LEVEL;
        }
        // The VTEP goes in last: an all-zero VTEP tells the programs "not configured".
        cfg.vtep = s.vtep.octets();
        config.set(0, cfg, 0).map_err(map_err(maps::CONFIG))?;

        let maps = Maps {
            neigh: take(&mut ebpf, maps::NEIGH)?,
            fdb: take(&mut ebpf, maps::FDB)?,
            endpoints: take(&mut ebpf, maps::ENDPOINTS)?,
            flood: take(&mut ebpf, maps::FLOOD)?,
        };
        // Stats stay readable through the pin; the agent itself does not need them.
        let _stats: PerCpuArray<MapData, StatsValue> = take(&mut ebpf, maps::STATS)?;

        for name in [programs::FROM_CONTAINER, programs::FROM_UNDERLAY] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| EbpfError::Program { name, source })?;
        }
        let underlay_link = attach(&mut ebpf, programs::FROM_UNDERLAY, &s.underlay_ifname, tcx)?;
        info!(interface = %s.underlay_ifname, tcx, "eBPF datapath attached to the underlay");

        Ok(Self {
            ebpf,
            maps,
            applied: Tables::default(),
            links: StdHashMap::new(),
            underlay: Some((s.underlay_ifname.clone(), underlay_link)),
            maps_dir,
            bpffs_dir: s.bpffs_dir.clone(),
            features,
            kernel,
            tcx,
            nl,
            devs: BTreeMap::new(),
            vxlan_index: BTreeMap::new(),
            flood_entries: BTreeSet::new(),
        })
    }

    pub fn features(&self) -> Features {
        self.features
    }

    fn apply(&mut self, desired: Tables) -> Result<(), EbpfError> {
        let Maps { neigh, fdb, endpoints, flood } = &mut self.maps;
        let fl = diff(&self.applied.flood, &desired.flood);
        // Upserts of all three maps before any removal, endpoints first so a new
        // veth's program finds its identity; removals in the reverse order.
        let e = diff(&self.applied.endpoints, &desired.endpoints);
        let f = diff(&self.applied.fdb, &desired.fdb);
        let n = diff(&self.applied.neigh, &desired.neigh);
        for (k, v) in &e.upsert {
            endpoints.insert(k, v, 0).map_err(map_err(maps::ENDPOINTS))?;
        }
        for (k, v) in &f.upsert {
            fdb.insert(k, v, 0).map_err(map_err(maps::FDB))?;
        }
        for (k, v) in &n.upsert {
            neigh.insert(k, v, 0).map_err(map_err(maps::NEIGH))?;
        }
        for (k, v) in &fl.upsert {
            flood.insert(k, v, 0).map_err(map_err(maps::FLOOD))?;
        }
        for k in &fl.remove {
            remove_entry(flood, k, maps::FLOOD)?;
        }
        for k in &n.remove {
            remove_entry(neigh, k, maps::NEIGH)?;
        }
        for k in &f.remove {
            remove_entry(fdb, k, maps::FDB)?;
        }
        for k in &e.remove {
            remove_entry(endpoints, k, maps::ENDPOINTS)?;
        }
        let changes = e.upsert.len() + e.remove.len() + f.upsert.len() + f.remove.len() + n.upsert.len() + n.remove.len();
        if changes > 0 {
            debug!(changes, neigh = desired.neigh.len(), fdb = desired.fdb.len(), "eBPF maps updated");
        }
        self.applied = desired;
        Ok(())
    }
}

/// Removing an absent key is fine: the goal state is reached either way.
fn remove_entry<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
    name: &'static str,
) -> Result<(), EbpfError> {
    match map.remove(key) {
        Ok(()) => Ok(()),
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(EbpfError::Map { name, source }),
    }
}

fn attach(ebpf: &mut Ebpf, name: &'static str, ifname: &str, tcx: bool) -> Result<SchedClassifierLinkId, EbpfError> {
    if !tcx {
        match tc::qdisc_add_clsact(ifname) {
            Ok(()) => {}
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(source) => return Err(EbpfError::Clsact { interface: ifname.into(), source }),
        }
    }
    classifier(ebpf, name)?
        .attach(ifname, TcAttachType::Ingress)
        .map_err(|source| EbpfError::Attach { program: name, interface: ifname.into(), source })
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

    async fn attach_endpoint(&mut self, ep: &LocalEndpoint) -> Result<(), DatapathError> {
        let link = attach(&mut self.ebpf, programs::FROM_CONTAINER, &ep.ifname, self.tcx)?;
        if let Some(old) = self.links.insert(ep.ifindex, link) {
            // Cannot happen (ifindexes are unique while the veth lives); be tidy anyway.
            detach(&mut self.ebpf, old);
        }
        Ok(())
    }

    async fn detach_endpoint(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        if let Some(link) = self.links.remove(&ifindex) {
            detach(&mut self.ebpf, link);
        }
        Ok(())
    }

    async fn sync(&mut self, fwd: &Forwarding) -> Result<(), DatapathError> {
        self.apply(Tables::from_forwarding(fwd, &self.vxlan_index))?;
        let desired: BTreeSet<_> = fwd.flood_targets().into_iter().filter(|(vni, ..)| self.devs.contains_key(vni)).collect();
        devices::sync_flood(&self.nl, &self.devs, &desired, &mut self.flood_entries).await?;
        Ok(())
    }

    async fn shutdown(mut self) -> Result<(), DatapathError> {
        let errors = devices::destroy(&self.nl, &self.devs).await;
        self.teardown_bpf()?;
        match errors.into_iter().next() {
            None => Ok(()),
            Some(first) => Err(first.into()),
        }
    }
}

impl EbpfDatapath {
    /// Detaches every program and removes the pins.
    fn teardown_bpf(&mut self) -> Result<(), EbpfError> {
        let links: Vec<_> = self.links.drain().map(|(_, l)| l).collect();
        for link in links {
            detach(&mut self.ebpf, link);
        }
        if let Some((ifname, link)) = self.underlay.take()
            && let Ok(prog) = classifier(&mut self.ebpf, programs::FROM_UNDERLAY)
            && let Err(e) = prog.detach(link)
        {
            warn!(interface = %ifname, error = %e, "detaching the underlay program");
        }
        remove_pins(&self.maps_dir)?;
        remove_empty_dirs(&self.bpffs_dir);
        info!(dir = %self.bpffs_dir.display(), "eBPF datapath removed");
        Ok(())
    }
}

fn detach(ebpf: &mut Ebpf, link: SchedClassifierLinkId) {
    if let Ok(prog) = classifier(ebpf, programs::FROM_CONTAINER)
        && let Err(e) = prog.detach(link)
    {
        // The veth may already be gone (the container's namespace was deleted),
        // which detaches the program by itself.
        debug!(error = %e, "detaching an endpoint program");
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
