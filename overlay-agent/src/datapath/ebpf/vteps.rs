//! `OVL_VTEPS`: per network, the VTEPs whose VXLAN the underlay program decapsulates
//! (overlay-ebpf's `validate`): those of the network's remote endpoints (L2) or node
//! subnets (L3), static ones included. A network with `known_vteps_only = false` is not
//! checked against it. The agent keeps a copy per network, so a change rewrites only the
//! networks it touched.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use overlay_common::{VtepKey, limits::MAX_VTEPS, maps};

use super::{EbpfError, tables::Table};
use crate::datapath::{Applied, Desired, TableUsage};

pub struct Vteps {
    table: Table<VtepKey, u32>,
    /// What the map holds, per VNI.
    installed: BTreeMap<u32, BTreeSet<Ipv4Addr>>,
}

fn key(vni: u32, vtep: Ipv4Addr) -> VtepKey {
    VtepKey { vni, ip: vtep.octets() }
}

impl Vteps {
    /// Wraps the map and reads what it holds (adopted from an earlier run, or empty).
    pub fn new(map: aya::maps::HashMap<aya::maps::MapData, VtepKey, u32>) -> Result<Self, EbpfError> {
        let mut v = Self { table: Table::new(map, maps::VTEPS, MAX_VTEPS), installed: BTreeMap::new() };
        for (k, _) in v.table.read()? {
            v.installed.entry(k.vni).or_default().insert(Ipv4Addr::from(k.ip));
        }
        v.table.entries = v.installed.values().map(|s| s.len() as u64).sum();
        Ok(v)
    }

    pub fn usage(&self) -> TableUsage {
        self.table.usage()
    }

    /// Brings the networks `vnis` up to date with `d`. Before the first full sync
    /// (`synced` false) `d` does not know the store's records yet: a restarted agent
    /// adding its local endpoints would otherwise take every adopted VTEP away and drop
    /// the traffic of a hitless restart; then VTEPs are only added, and the first
    /// [`Vteps::sync`] removes what is stale.
    pub fn apply(&mut self, d: &Desired, vnis: impl IntoIterator<Item = u32>, synced: bool) -> Result<usize, EbpfError> {
        let mut changed = 0;
        for vni in vnis {
            let mut want = if d.serves(vni) { d.vteps(vni) } else { BTreeSet::new() };
            let have = self.installed.remove(&vni).unwrap_or_default();
            let mut refused = Vec::new();
            for &vtep in want.difference(&have) {
                if self.table.upsert(key(vni, vtep), 1)? {
                    changed += 1;
                } else {
                    // The map is full: not installed, so tried again with the network's
                    // next change (and counted in `status` as not installed).
                    refused.push(vtep);
                }
            }
            for vtep in refused {
                want.remove(&vtep);
            }
            if synced {
                for &vtep in have.difference(&want) {
                    self.table.remove(&key(vni, vtep))?;
                    changed += 1;
                }
            } else {
                want.extend(have);
            }
            if !want.is_empty() {
                self.installed.insert(vni, want);
            }
        }
        Ok(changed)
    }

    /// Makes the map hold exactly what `d` says (after adopting or relisting).
    pub fn sync(&mut self, d: &Desired) -> Result<Applied, EbpfError> {
        let want: Vec<(VtepKey, u32)> =
            d.served().flat_map(|vni| d.vteps(vni).into_iter().map(move |v| (key(vni, v), 1))).collect();
        self.installed.clear();
        for (k, _) in &want {
            self.installed.entry(k.vni).or_default().insert(Ipv4Addr::from(k.ip));
        }
        self.table.sync(want)
    }
}
