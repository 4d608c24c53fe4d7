//! A running agent's pinned FDB map, read directly ([`PinnedFdb`]): one `bpf(2)`
//! lookup per key, no CLI and no JSON, so a probe can ask about one entry thousands
//! of times a second, and a lab whose maps hold hundreds of thousands of entries can
//! be checked without dumping them.

use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, MapError};
use overlay_agent::mac::MacAddr;
use overlay_common::{FdbKey, FdbValue, maps};

/// Why the pinned map could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PinnedMapError {
    #[error("opening the pinned map {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("reading the pinned map {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: MapError,
    },
}

/// The `OVL_FDB` map an eBPF-mode agent pinned under its `bpffs_dir`
/// (`<bpffs_dir>/maps/v<LAYOUT_VERSION>/OVL_FDB`).
pub struct PinnedFdb {
    map: HashMap<MapData, FdbKey, FdbValue>,
    path: PathBuf,
}

impl std::fmt::Debug for PinnedFdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedFdb").field("path", &self.path).finish_non_exhaustive()
    }
}

impl PinnedFdb {
    /// Where the agent with `bpffs_dir` pins its FDB map.
    pub fn path(bpffs_dir: &Path) -> PathBuf {
        overlay_agent::datapath::ebpf::maps_dir(bpffs_dir).join(maps::FDB)
    }

    /// Opens the FDB map of the agent with `bpffs_dir` (it must be running, or have
    /// run, in eBPF mode).
    pub fn open(bpffs_dir: &Path) -> Result<PinnedFdb, PinnedMapError> {
        let path = Self::path(bpffs_dir);
        let open = |source| PinnedMapError::Open { path: path.clone(), source };
        let data = MapData::from_pin(&path).map_err(open)?;
        let map = Map::from_map_data(data).map_err(open)?;
        let map = HashMap::try_from(map).map_err(open)?;
        Ok(PinnedFdb { map, path })
    }

    /// The entry of (vni, mac), if the map holds one.
    pub fn get(&self, vni: u32, mac: MacAddr) -> Result<Option<FdbValue>, PinnedMapError> {
        match self.map.get(&FdbKey::new(vni, mac.0), 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(PinnedMapError::Read { path: self.path.clone(), source }),
        }
    }

    /// How many entries the map holds (walks every key: about a second per million).
    pub fn count(&self) -> Result<usize, PinnedMapError> {
        let mut n = 0;
        for key in self.map.keys() {
            key.map_err(|source| PinnedMapError::Read { path: self.path.clone(), source })?;
            n += 1;
        }
        Ok(n)
    }
}
