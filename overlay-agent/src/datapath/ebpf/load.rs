//! Loading the eBPF object: maps sized from the config, reusing the pinned maps of a
//! previous run when they are compatible, then the feature probe and the verifier.
//!
//! A pinned map is reused only if the kernel reports the same type, key size, value
//! size, flags and capacity as this build would create (and it sits in this build's
//! layout directory, see [`super::pins`]). Otherwise the map is made new and pinned
//! beside the old one as `<MAP>_new` (bpffs refuses names with a dot): the agent fills it, switches the programs to it,
//! and only then renames it over the old pin (bpffs renames atomically), so the old
//! programs keep their old maps until the switch.

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, MapInfo},
};
use overlay_common::{ProbeArgs, maps, programs};
use tracing::{info, warn};

use super::{EbpfError, OBJECT, classifier, pins::Pins, take};
use crate::datapath::probe::{self, Features};

/// Capacities of the maps the config sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacities {
    pub neigh: u32,
    pub fdb: u32,
    pub endpoints: u32,
}

impl Capacities {
    pub fn of(&self, name: &str) -> Option<u32> {
        match name {
            maps::NEIGH => Some(self.neigh),
            maps::FDB => Some(self.fdb),
            maps::ENDPOINTS => Some(self.endpoints),
            _ => None,
        }
    }
}

/// The loaded object.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub features: Features,
    /// Maps made new (not reused from a pin): filled, then pinned at the switch.
    pub fresh: Vec<&'static str>,
}

/// What a map of this build looks like to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

fn shapes(caps: &Capacities) -> Result<Vec<(&'static str, Shape)>, EbpfError> {
    let obj = aya_obj::Object::parse(OBJECT).map_err(|source| EbpfError::Parse { source: Box::new(source) })?;
    maps::ALL
        .iter()
        .map(|&name| {
            let m = obj.maps.get(name).ok_or(EbpfError::Missing { name })?;
            Ok((
                name,
                Shape {
                    map_type: m.map_type(),
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                    max_entries: caps.of(name).unwrap_or(m.max_entries()),
                    flags: m.map_flags(),
                },
            ))
        })
        .collect()
}

fn pinned_shape(info: &MapInfo) -> Option<Shape> {
    Some(Shape {
        map_type: info.map_type().ok()? as u32,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    })
}

/// Loads the object, probes the kernel and loads (verifies) the programs.
pub fn load(pins: &Pins, caps: &Capacities, kernel: &str) -> Result<Loaded, EbpfError> {
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(maps::NEIGH, caps.neigh);
    loader.map_max_entries(maps::FDB, caps.fdb);
    loader.map_max_entries(maps::ENDPOINTS, caps.endpoints);
    let mut fresh = Vec::new();
    for (name, want) in shapes(caps)? {
        let pin = pins.map(name);
        let reuse = pin.exists() && {
            let have = MapInfo::from_pin(&pin).ok().as_ref().and_then(pinned_shape);
            if have != Some(want) {
                warn!(
                    map = name,
                    ?have,
                    ?want,
                    "the pinned map differs from this build's (capacity or layout): making a new one, \
                     filled before the programs switch to it"
                );
            }
            have == Some(want)
        };
        if reuse {
            loader.map_pin_path(name, pin);
        } else {
            // A `_new` pin left by an upgrade that did not finish holds who knows what.
            let staged = pins.staged(name);
            remove_file(&staged)?;
            loader.map_pin_path(name, staged);
            fresh.push(name);
        }
    }
    let dir = pins.maps_dir();
    std::fs::create_dir_all(&dir).map_err(|source| EbpfError::Io { path: dir.clone(), source })?;
    let mut ebpf = loader.load(OBJECT).map_err(|source| EbpfError::Load { source: Box::new(source) })?;

    let prog = classifier(&mut ebpf, programs::PROBE_ADJUST_ROOM)?;
    prog.load().map_err(|source| EbpfError::Program { name: programs::PROBE_ADJUST_ROOM, source })?;
    let mut probe_map: Array<MapData, ProbeArgs> = take(&mut ebpf, maps::PROBE)?;
    let prog = classifier(&mut ebpf, programs::PROBE_ADJUST_ROOM)?;
    let features = probe::probe(prog, &mut probe_map)?;
    info!(?features, kernel, "probed kernel datapath features");

    for name in [programs::FROM_CONTAINER, programs::FROM_UNDERLAY] {
        classifier(&mut ebpf, name)?.load().map_err(|source| EbpfError::Program { name, source })?;
    }
    Ok(Loaded { ebpf, features, fresh })
}

/// Moves a fresh map's `_new` pin over the map's pin (after the switch).
pub fn commit_fresh(pins: &Pins, name: &'static str) -> Result<(), EbpfError> {
    let (from, to) = (pins.staged(name), pins.map(name));
    std::fs::rename(&from, &to).map_err(|source| EbpfError::Io { path: from, source })
}

fn remove_file(path: &std::path::Path) -> Result<(), EbpfError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(EbpfError::Io { path: path.to_owned(), source }),
    }
}
