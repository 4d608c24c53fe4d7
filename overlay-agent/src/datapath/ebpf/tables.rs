//! Writing [`Desired`] into the eBPF maps: one entry at a time for a change, a full
//! comparison with the map's contents after adopting or relisting; every map's fill
//! level counted against its capacity.
//!
//! A new key is inserted with `BPF_NOEXIST` and an existing one replaced with
//! `BPF_EXIST`, so the agent knows exactly how many entries each map holds without
//! keeping a copy of it. A map that is full refuses a new key with `E2BIG`: the entry is
//! remembered as not installed (counted, logged once per batch, shown by `status`) and
//! installed as soon as a removal makes room. Nothing is dropped silently.
//!
//! A map found empty (the first start) is filled with `BPF_MAP_UPDATE_BATCH`, thousands
//! of entries per `bpf(2)` call: at 250,000 endpoints the per-call overhead of one call
//! per entry was a third of the agent's CPU time while loading.

use std::{
    collections::{BTreeMap, HashSet},
    hash::Hash,
    io::{self, ErrorKind},
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
};

use aya::maps::{HashMap, IterableMap as _, MapData, MapError};
use overlay_common::{
    EndpointValue, FDB_LOCAL, FDB_REMOTE, FDB_ROUTER, FdbValue, FloodValue, NeighKey, NeighValue, limits::MAX_FLOOD_PORTS,
};

use super::EbpfError;
use crate::{
    datapath::{Applied, Desired, FdbTarget, LocalEndpoint, TableUsage},
    mac::MacAddr,
};

const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;
/// `bpf(2)` command (Linux 5.6; the eBPF datapath needs 5.10).
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// Entries per `BPF_MAP_UPDATE_BATCH` call.
const BATCH: usize = 4_096;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h), which the
/// `BPF_MAP_*_BATCH` commands read; the kernel zero-fills the rest of the union.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `keys[i]` → `values[i]` (`BPF_ANY`) with one `BPF_MAP_UPDATE_BATCH`. Returns
/// how many were written, in order, and the error the kernel stopped at, if any (then
/// the element after the written ones is the one it refused). `K` and `V` must be the
/// map's key and value types (aya checked their sizes when the map was typed): the
/// kernel reads the slices with the map's key and value sizes as strides.
fn update_batch<K: aya::Pod, V: aya::Pod>(fd: BorrowedFd<'_>, keys: &[K], values: &[V]) -> (usize, Option<io::Error>) {
    let count = keys.len().min(values.len());
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(count).unwrap_or(u32::MAX),
        map_fd: fd.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: the kernel reads `count` keys and values from the two slices, which hold at
    // least that many of the map's key and value types, and writes only `attr.count`
    // (how many it processed); `attr` outlives the call.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_BATCH, &raw mut attr, std::mem::size_of::<BatchAttr>())
    };
    if ret == 0 {
        (count, None)
    } else {
        let err = io::Error::last_os_error();
        ((attr.count as usize).min(count), Some(err))
    }
}

/// One hash map, with its fill level.
pub struct Table<K, V> {
    pub map: HashMap<MapData, K, V>,
    pub name: &'static str,
    pub capacity: u32,
    /// Entries in the map (counted from its contents at adoption, then kept).
    pub entries: u64,
    /// Keys that should be there but did not fit.
    pub not_installed: HashSet<K>,
}

fn errno(e: &MapError) -> Option<i32> {
    match e {
        MapError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}

impl<K: aya::Pod + Eq + Hash, V: aya::Pod + PartialEq> Table<K, V> {
    pub fn new(map: HashMap<MapData, K, V>, name: &'static str, capacity: u32) -> Self {
        Self { map, name, capacity, entries: 0, not_installed: HashSet::new() }
    }

    fn err(&self) -> impl FnOnce(MapError) -> EbpfError + '_ {
        move |source| EbpfError::Map { name: self.name, source }
    }

    /// Writes `k` → `v`. `Ok(false)`: the map is full and `k` is not installed.
    pub fn upsert(&mut self, k: K, v: V) -> Result<bool, EbpfError> {
        match self.map.insert(k, v, BPF_NOEXIST) {
            Ok(()) => self.entries += 1,
            Err(e) if errno(&e) == Some(libc::EEXIST) => self.map.insert(k, v, BPF_EXIST).map_err(self.err())?,
            Err(e) if errno(&e) == Some(libc::E2BIG) => {
                self.not_installed.insert(k);
                return Ok(false);
            }
            Err(e) => return Err(self.err()(e)),
        }
        // Almost always empty: then the key need not even be hashed.
        if !self.not_installed.is_empty() {
            self.not_installed.remove(&k);
        }
        Ok(true)
    }

    /// Inserts keys the map does not hold (distinct, into a map found empty), in one
    /// `bpf(2)` call while they fit; the entry a call stops at goes through
    /// [`Table::upsert`] (so a full map remembers it as not installed, and any other
    /// error is reported), then the call resumes after it.
    fn insert_batch(&mut self, keys: &[K], values: &[V]) -> Result<Applied, EbpfError> {
        let mut out = Applied::default();
        let mut start = 0;
        while start < keys.len() {
            let (written, stopped) = update_batch(self.map.map().fd().as_fd(), &keys[start..], &values[start..]);
            self.entries += written as u64;
            out.changed += written;
            start += written;
            if stopped.is_none() {
                break;
            }
            if start < keys.len() {
                if self.upsert(keys[start], values[start])? { out.changed += 1 } else { out.full += 1 }
                start += 1;
            }
        }
        Ok(out)
    }

    /// Removes `k`; fine if it is not there.
    pub fn remove(&mut self, k: &K) -> Result<(), EbpfError> {
        self.not_installed.remove(k);
        match self.map.remove(k) {
            Ok(()) => {
                self.entries = self.entries.saturating_sub(1);
                Ok(())
            }
            Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(EbpfError::Map { name: self.name, source }),
        }
    }

    /// The map's contents.
    pub fn read(&self) -> Result<Vec<(K, V)>, EbpfError> {
        self.map.iter().collect::<Result<Vec<_>, _>>().map_err(|source| EbpfError::Map { name: self.name, source })
    }

    pub fn usage(&self) -> TableUsage {
        TableUsage {
            name: self.name.to_owned(),
            entries: self.entries,
            capacity: Some(u64::from(self.capacity)),
            not_installed: self.not_installed.len() as u64,
        }
    }

    /// Makes the map hold exactly `desired`: writes what differs, removes the rest.
    pub fn sync(&mut self, desired: impl IntoIterator<Item = (K, V)>) -> Result<Applied, EbpfError> {
        let actual: std::collections::HashMap<K, V> = self.read()?.into_iter().collect();
        self.entries = actual.len() as u64;
        self.not_installed.clear();
        let mut out = Applied::default();
        if actual.is_empty() {
            // A new map (the first start): everything is an insert, nothing to remove.
            let (mut keys, mut values) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
            for (k, v) in desired {
                keys.push(k);
                values.push(v);
                if keys.len() == BATCH {
                    out += self.insert_batch(&keys, &values)?;
                    keys.clear();
                    values.clear();
                }
            }
            out += self.insert_batch(&keys, &values)?;
            return Ok(out);
        }
        let mut keep = HashSet::new();
        for (k, v) in desired {
            keep.insert(k);
            if actual.get(&k) != Some(&v) {
                if self.upsert(k, v)? { out.changed += 1 } else { out.full += 1 }
            }
        }
        for k in actual.keys().filter(|k| !keep.contains(*k)) {
            self.remove(k)?;
            out.changed += 1;
        }
        Ok(out)
    }
}

pub fn neigh_key(vni: u32, ip: Ipv4Addr) -> NeighKey {
    NeighKey { vni, ip: ip.octets() }
}

pub fn neigh_value(mac: MacAddr) -> NeighValue {
    NeighValue { mac: mac.0, _pad: [0; 2] }
}

pub fn fdb_value(t: FdbTarget) -> FdbValue {
    match t {
        FdbTarget::Local { ifindex } => FdbValue { kind: FDB_LOCAL, ifindex, vtep: [0; 4], udp_port_be: 0, _pad: [0; 2] },
        FdbTarget::Remote { vtep, udp_port } => {
            FdbValue { kind: FDB_REMOTE, ifindex: 0, vtep: vtep.octets(), udp_port_be: udp_port.to_be(), _pad: [0; 2] }
        }
        FdbTarget::Router => FdbValue { kind: FDB_ROUTER, ifindex: 0, vtep: [0; 4], udp_port_be: 0, _pad: [0; 2] },
    }
}

pub fn endpoint_value(l: &LocalEndpoint) -> EndpointValue {
    EndpointValue { vni: l.vni, ip: l.ip.octets(), mac: l.mac.0, _pad: [0; 2] }
}

/// The flood list of `vni`: its local veths and its VXLAN device (remote copies).
pub fn flood_value(desired: &Desired, vni: u32, vxlan_index: &BTreeMap<u32, u32>) -> FloodValue {
    let mut f = FloodValue::empty();
    f.vxlan_ifindex = vxlan_index.get(&vni).copied().unwrap_or(0);
    // The agent refuses more endpoints per network than fit (see the API).
    for (slot, ifindex) in f.ifindex.iter_mut().zip(desired.flood_local(vni).into_iter().take(MAX_FLOOD_PORTS)) {
        *slot = ifindex;
        f.n_ports += 1;
    }
    f
}

#[cfg(test)]
mod tests {
    use aya::EbpfLoader;
    use overlay_common::{FdbKey, maps};

    use super::*;

    fn fdb(capacity: u32) -> Table<FdbKey, FdbValue> {
        assert!(nix::unistd::geteuid().is_root(), "map tests need root (CAP_BPF): run them through `cargo xtask test`");
        assert!(!super::super::OBJECT.is_empty(), "built with AYA_BUILD_SKIP: these tests need the real eBPF object");
        let mut ebpf = EbpfLoader::new().map_max_entries(maps::FDB, capacity).load(super::super::OBJECT).expect("loading the eBPF object");
        let map = HashMap::try_from(ebpf.take_map(maps::FDB).expect("FDB map")).expect("FDB map type");
        Table::new(map, maps::FDB, capacity)
    }

    fn entry(i: u32) -> (FdbKey, FdbValue) {
        let [a, b, c, d] = i.to_be_bytes();
        let vtep = Ipv4Addr::new(198, 51, 100, (i % 200) as u8 + 1);
        (FdbKey::new(42, [2, 0x42, a, b, c, d]), fdb_value(FdbTarget::Remote { vtep, udp_port: 4789 }))
    }

    #[test]
    fn fills_an_empty_map_in_batches_and_counts_what_did_not_fit() {
        let mut t = fdb(10_000);
        let applied = t.sync((0..9_000).map(entry)).unwrap();
        assert_eq!(applied, Applied { changed: 9_000, full: 0 });
        assert_eq!(t.entries, 9_000);
        assert_eq!(t.map.keys().count(), 9_000);
        for i in [0, 4_095, 4_096, 8_999] {
            let (k, v) = entry(i);
            assert_eq!(t.map.get(&k, 0).unwrap(), v, "entry {i}");
        }
        // A second sync compares: nothing to do, then one change and one removal.
        assert_eq!(t.sync((0..9_000).map(entry)).unwrap(), Applied::default());
        let (k, _) = entry(5);
        let moved = fdb_value(FdbTarget::Remote { vtep: Ipv4Addr::new(203, 0, 113, 1), udp_port: 4789 });
        let applied = t.sync((1..9_000).map(|i| if i == 5 { (k, moved) } else { entry(i) })).unwrap();
        assert_eq!(applied, Applied { changed: 2, full: 0 });
        assert_eq!(t.entries, 8_999);
        assert_eq!(t.map.get(&k, 0).unwrap(), moved);
    }

    #[test]
    fn a_full_map_keeps_the_rest_as_not_installed() {
        // Capacity 5,000: the first batch fits, the second stops part way.
        let mut t = fdb(5_000);
        let applied = t.sync((0..6_000).map(entry)).unwrap();
        assert_eq!(applied, Applied { changed: 5_000, full: 1_000 });
        assert_eq!(t.entries, 5_000);
        assert_eq!(t.not_installed.len(), 1_000);
        assert_eq!(t.map.keys().count(), 5_000);
        assert!(t.not_installed.contains(&entry(5_999).0));
    }
}
