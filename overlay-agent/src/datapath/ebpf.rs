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
use overlay_common::{
    DatapathConfig, EndpointValue, FEATURE_CSUM_LEVEL, FdbKey, FdbValue, NeighKey, NeighValue,
    NetworkValue, ProbeArgs, StatsValue, limits, maps, programs, vxlan,
};
use tracing::{debug, info, warn};

use super::{
    Datapath, DatapathError, DatapathStatus, Forwarding,
    probe::{self, Features, ProbeError},
    tables::{Tables, diff},
};
use crate::paths;

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
}

/// What the eBPF datapath needs to know about this host.
#[derive(Debug, Clone)]
pub struct EbpfSettings {
    pub vtep: Ipv4Addr,
    pub underlay_ifindex: u32,
    pub underlay_ifname: String,
    /// (VNI, UDP port, container MTU) per network.
    pub networks: Vec<(u32, u16, u32)>,
    pub bpffs_dir: PathBuf,
}

struct Maps {
    neigh: HashMap<MapData, NeighKey, NeighValue>,
    fdb: HashMap<MapData, FdbKey, FdbValue>,
    endpoints: HashMap<MapData, u32, EndpointValue>,
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

impl EbpfDatapath {
    pub fn start(s: &EbpfSettings) -> Result<Self, EbpfError> {
        if OBJECT.is_empty() {
            return Err(EbpfError::NotBuilt);
        }
        ensure_bpffs()?;
        let maps_dir = s.bpffs_dir.join(paths::MAPS_SUBDIR);
        let stale = remove_pins(&maps_dir)?;
        if stale > 0 {
            warn!(dir = %maps_dir.display(), stale, "removed pinned maps left by a previous agent run");
        }
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
        for &(vni, port, mtu) in &s.networks {
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
        })
    }

    pub fn features(&self) -> Features {
        self.features
    }

    fn apply(&mut self, desired: Tables) -> Result<(), EbpfError> {
        let Maps { neigh, fdb, endpoints } = &mut self.maps;
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

    async fn attach_endpoint(&mut self, ifindex: u32, ifname: &str) -> Result<(), DatapathError> {
        let link = attach(&mut self.ebpf, programs::FROM_CONTAINER, ifname, self.tcx)?;
        if let Some(old) = self.links.insert(ifindex, link) {
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
        self.apply(Tables::from_forwarding(fwd))?;
        Ok(())
    }

    async fn shutdown(mut self) -> Result<(), DatapathError> {
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
