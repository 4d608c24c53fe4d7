//! Where a node's eBPF objects live in bpffs, under its `bpffs_dir`:
//!
//! - `maps/v<LAYOUT>/<MAP>`: the maps, by the layout version of `overlay-common`
//!   (`maps::LAYOUT_VERSION`). A build with another layout finds no maps of its version,
//!   makes new ones, fills them and only then switches the programs; the old version's
//!   directory goes after the switch.
//! - `links/<ifindex>-<ifname>`: the tcx links (Linux 6.6+) that attach the programs to
//!   the underlay and to each container's veth. A pinned link stays attached when the
//!   agent exits; the next agent swaps its own program into the same link
//!   (`BPF_LINK_UPDATE`). Netlink filters (older kernels) need no pin: they stay by
//!   themselves and are found again by their fixed priority and handle.

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
};

use overlay_common::maps;

use super::EbpfError;
use crate::paths;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pins {
    root: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EbpfError + '_ {
    move |source| EbpfError::Io { path: path.to_owned(), source }
}

impl Pins {
    /// `bpffs_dir` of the node.
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_owned() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This build's map directory.
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join(paths::MAPS_SUBDIR).join(format!("v{}", maps::LAYOUT_VERSION))
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// Where a new map waits until the programs switch to it.
    pub fn staged(&self, name: &str) -> PathBuf {
        self.maps_dir().join(format!("{name}_new"))
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join(paths::LINKS_SUBDIR)
    }

    pub fn link(&self, ifindex: u32, ifname: &str) -> PathBuf {
        self.links_dir().join(format!("{ifindex}-{ifname}"))
    }

    /// Map directories of other layout versions (left by another build).
    pub fn other_map_dirs(&self) -> Vec<PathBuf> {
        let current = self.maps_dir();
        entries(&self.root.join(paths::MAPS_SUBDIR)).into_iter().filter(|p| *p != current).collect()
    }

    /// The pinned links: (ifindex, ifname, path).
    pub fn links(&self) -> Vec<(u32, String, PathBuf)> {
        entries(&self.links_dir())
            .into_iter()
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?.to_owned();
                let (ifindex, ifname) = name.split_once('-')?;
                Some((ifindex.parse().ok()?, ifname.to_owned(), p))
            })
            .collect()
    }

    /// Removes every pin of the node and its directories (`down`, a switch to kernel
    /// mode). Unpinning a link detaches it; unpinning a map frees it once no program
    /// uses it. Returns how many pins were removed.
    pub fn remove_all(&self) -> Result<usize, EbpfError> {
        let mut removed = 0;
        for dir in entries(&self.root.join(paths::MAPS_SUBDIR)).into_iter().chain([self.links_dir()]) {
            removed += remove_dir(&dir)?;
        }
        remove_empty_dirs(&self.root.join(paths::MAPS_SUBDIR));
        remove_empty_dirs(&self.root);
        Ok(removed)
    }

    /// Whether anything of this node is pinned.
    pub fn any(&self) -> bool {
        !entries(&self.root.join(paths::MAPS_SUBDIR)).is_empty() || !entries(&self.links_dir()).is_empty()
    }
}

/// The entries of `dir` (none if it does not exist).
fn entries(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    out.sort();
    out
}

/// Removes the pins in `dir`, then `dir`; fine if it does not exist.
pub fn remove_dir(dir: &Path) -> Result<usize, EbpfError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(EbpfError::Io { path: dir.to_owned(), source }),
    };
    let mut removed = 0;
    for entry in rd {
        let path = entry.map_err(io_err(dir))?.path();
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => return Err(EbpfError::Io { path, source }),
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(removed),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(removed),
        Err(source) => Err(EbpfError::Io { path: dir.to_owned(), source }),
    }
}

/// Removes `dir` and then its parents up to (not including) the bpffs mount, as long
/// as they are empty: several agents may share `/sys/fs/bpf/overlay`.
pub fn remove_empty_dirs(dir: &Path) {
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d == Path::new(paths::BPFFS_MOUNT) || !d.starts_with(paths::BPFFS_MOUNT) {
            break;
        }
        if std::fs::remove_dir(d).is_err() {
            break; // not empty (another agent's) or already gone
        }
        cur = d.parent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let p = Pins::new(Path::new("/sys/fs/bpf/overlay/h1"));
        assert_eq!(p.map("OVL_FDB"), Path::new(&format!("/sys/fs/bpf/overlay/h1/maps/v{}/OVL_FDB", maps::LAYOUT_VERSION)));
        assert_eq!(p.link(7, "ovl12345678"), Path::new("/sys/fs/bpf/overlay/h1/links/7-ovl12345678"));
    }
}
