//! `OVL_ROUTES`, the LPM trie of node subnets of L3 networks on other hosts. It grows
//! with hosts, not containers, so the agent keeps a copy of what it installed (the key's
//! prefix length is needed to remove an entry) and compares the whole trie on a resync.

use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::maps::{
    MapData, MapError,
    lpm_trie::{Key, LpmTrie},
};
use overlay_common::{RouteKey, RouteValue, limits::MAX_ROUTES, maps};

use super::EbpfError;
use crate::datapath::{Applied, Desired, Remote, TableUsage};

pub struct Routes {
    map: LpmTrie<MapData, RouteKey, RouteValue>,
    /// (VNI, network address) → (prefix length, value) as installed.
    installed: BTreeMap<(u32, Ipv4Addr), (u8, RouteValue)>,
}

fn key(vni: u32, at: Ipv4Addr, len: u8) -> Key<RouteKey> {
    Key::new(RouteKey::VNI_BITS + u32::from(len), RouteKey { vni_be: vni.to_be_bytes(), ip: at.octets() })
}

pub fn route_value(r: &Remote) -> RouteValue {
    RouteValue { vtep: r.vtep.octets(), mac: r.mac.0, udp_port_be: r.udp_port.to_be() }
}

fn map_err(source: MapError) -> EbpfError {
    EbpfError::Map { name: maps::ROUTES, source }
}

impl Routes {
    /// Wraps the map and reads what it holds (adopted from an earlier run, or empty).
    pub fn new(map: LpmTrie<MapData, RouteKey, RouteValue>) -> Result<Self, EbpfError> {
        let mut r = Self { map, installed: BTreeMap::new() };
        r.read()?;
        Ok(r)
    }

    fn read(&mut self) -> Result<(), EbpfError> {
        self.installed.clear();
        for entry in self.map.iter() {
            let (k, v) = entry.map_err(map_err)?;
            let data = k.data();
            let len = k.prefix_len().saturating_sub(RouteKey::VNI_BITS) as u8;
            self.installed.insert((u32::from_be_bytes(data.vni_be), Ipv4Addr::from(data.ip)), (len, v));
        }
        Ok(())
    }

    /// Makes (vni, at) hold `want`. Returns whether anything changed.
    pub fn set(&mut self, vni: u32, at: Ipv4Addr, want: Option<(u8, RouteValue)>) -> Result<bool, EbpfError> {
        let have = self.installed.get(&(vni, at)).copied();
        if have == want {
            return Ok(false);
        }
        if let Some((len, v)) = want {
            self.map.insert(&key(vni, at, len), v, 0).map_err(map_err)?;
        }
        // A prefix length that changed leaves the old key behind: remove it.
        if let Some((len, _)) = have.filter(|(l, _)| want.is_none_or(|(w, _)| w != *l)) {
            match self.map.remove(&key(vni, at, len)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(map_err(e)),
            }
        }
        match want {
            Some(w) => self.installed.insert((vni, at), w),
            None => self.installed.remove(&(vni, at)),
        };
        Ok(true)
    }

    /// Writes the dirty routes as `d` has them.
    pub fn apply(&mut self, d: &Desired, dirty: impl IntoIterator<Item = (u32, Ipv4Addr)>) -> Result<usize, EbpfError> {
        let mut changed = 0;
        for (vni, at) in dirty {
            let want = d.route(vni, at).filter(|_| d.is_l3(vni)).map(|(len, r)| (len, route_value(&r)));
            changed += usize::from(self.set(vni, at, want)?);
        }
        Ok(changed)
    }

    /// Makes the trie equal `d`'s routes.
    pub fn sync(&mut self, d: &Desired) -> Result<Applied, EbpfError> {
        self.read()?;
        let want: BTreeMap<_, _> = d.all_routes().map(|(k, len, r)| (k, (len, route_value(&r)))).collect();
        let mut out = Applied::default();
        let stale: Vec<_> = self.installed.keys().filter(|k| !want.contains_key(*k)).copied().collect();
        for (k, w) in &want {
            out.changed += usize::from(self.set(k.0, k.1, Some(*w))?);
        }
        for (vni, at) in stale {
            out.changed += usize::from(self.set(vni, at, None)?);
        }
        Ok(out)
    }

    pub fn usage(&self) -> TableUsage {
        TableUsage {
            name: maps::ROUTES.into(),
            entries: self.installed.len() as u64,
            capacity: Some(u64::from(MAX_ROUTES)),
            not_installed: 0,
        }
    }
}
