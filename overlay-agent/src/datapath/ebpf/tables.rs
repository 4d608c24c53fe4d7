//! Writing [`Desired`] into the eBPF maps: one entry at a time for a change, a full
//! comparison with the map's contents after adopting or relisting; every map's fill
//! level counted against its capacity.
//!
//! A new key is inserted with `BPF_NOEXIST` and an existing one replaced with
//! `BPF_EXIST`, so the agent knows exactly how many entries each map holds without
//! keeping a copy of it. A map that is full refuses a new key with `E2BIG`: the entry is
//! remembered as not installed (counted, logged once per batch, shown by `status`) and
//! installed as soon as a removal makes room. Nothing is dropped silently.

use std::{
    collections::{BTreeMap, HashSet},
    hash::Hash,
    io::ErrorKind,
    net::Ipv4Addr,
};

use aya::maps::{HashMap, MapData, MapError};
use overlay_common::{
    EndpointValue, FDB_LOCAL, FDB_REMOTE, FdbValue, FloodValue, NeighKey, NeighValue, limits::MAX_FLOOD_PORTS,
};

use super::EbpfError;
use crate::{
    datapath::{Applied, Desired, FdbTarget, LocalEndpoint, TableUsage},
    mac::MacAddr,
};

const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

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
        self.not_installed.remove(&k);
        Ok(true)
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
