//! `OVL_ROUTES`, the LPM trie routed frames are looked up in (see overlay-ebpf's
//! `route`): per network, the node subnets of L3 networks on other hosts (from the
//! store, they grow with hosts, not containers), and the policy this host's config
//! sets: every served network's subnet blocked (isolation; the more specific node
//! subnets win), and, with a gateway, the gateway address and the default route handed
//! to the host. The agent keeps a copy of what it installed (a key's prefix length is
//! needed to remove it) and compares the whole trie on a resync.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use aya::maps::{
    MapData, MapError,
    lpm_trie::{Key, LpmTrie},
};
use overlay_common::{ROUTE_BLOCKED, ROUTE_HOST, ROUTE_REMOTE, RouteKey, RouteValue, limits::MAX_ROUTES, maps};

use super::EbpfError;
use crate::datapath::{Applied, Desired, Remote, TableUsage, devices::NetSpec};

/// (VNI, network address, prefix length): one trie key.
type Prefix = (u32, Ipv4Addr, u8);

pub struct Routes {
    map: LpmTrie<MapData, RouteKey, RouteValue>,
    /// What the trie holds.
    installed: BTreeMap<Prefix, RouteValue>,
    /// The policy entries (fixed by the config).
    policy: BTreeMap<Prefix, RouteValue>,
}

fn key((vni, at, len): Prefix) -> Key<RouteKey> {
    Key::new(RouteKey::VNI_BITS + u32::from(len), RouteKey { vni_be: vni.to_be_bytes(), ip: at.octets() })
}

pub fn route_value(r: &Remote) -> RouteValue {
    RouteValue { kind: ROUTE_REMOTE, vtep: r.vtep.octets(), mac: r.mac.0, udp_port_be: r.udp_port.to_be() }
}

fn policy_value(kind: u32) -> RouteValue {
    RouteValue { kind, vtep: [0; 4], mac: [0; 6], udp_port_be: 0 }
}

/// The policy entries of `nets`: in every network with a router, every served subnet
/// blocked, and with a gateway the gateway address and the default route to the host.
pub fn policy(nets: &[NetSpec]) -> BTreeMap<Prefix, RouteValue> {
    let mut out = BTreeMap::new();
    for n in nets {
        let Some(r) = n.router else { continue };
        for other in nets {
            out.insert((n.vni, other.subnet.network(), other.subnet.prefix_len()), policy_value(ROUTE_BLOCKED));
        }
        out.insert((n.vni, r.gateway, 32), policy_value(ROUTE_HOST));
        out.insert((n.vni, Ipv4Addr::UNSPECIFIED, 0), policy_value(ROUTE_HOST));
    }
    out
}

fn map_err(source: MapError) -> EbpfError {
    EbpfError::Map { name: maps::ROUTES, source }
}

impl Routes {
    /// Wraps the map and reads what it holds (adopted from an earlier run, or empty).
    pub fn new(map: LpmTrie<MapData, RouteKey, RouteValue>, nets: &[NetSpec]) -> Result<Self, EbpfError> {
        let mut r = Self { map, installed: BTreeMap::new(), policy: policy(nets) };
        r.read()?;
        Ok(r)
    }

    fn read(&mut self) -> Result<(), EbpfError> {
        self.installed.clear();
        for entry in self.map.iter() {
            let (k, v) = entry.map_err(map_err)?;
            let data = k.data();
            let len = k.prefix_len().saturating_sub(RouteKey::VNI_BITS).min(32) as u8;
            self.installed.insert((u32::from_be_bytes(data.vni_be), Ipv4Addr::from(data.ip), len), v);
        }
        Ok(())
    }

    fn put(&mut self, p: Prefix, v: RouteValue) -> Result<bool, EbpfError> {
        if self.installed.get(&p) == Some(&v) {
            return Ok(false);
        }
        self.map.insert(&key(p), v, 0).map_err(map_err)?;
        self.installed.insert(p, v);
        Ok(true)
    }

    fn del(&mut self, p: Prefix) -> Result<bool, EbpfError> {
        if self.installed.remove(&p).is_none() {
            return Ok(false);
        }
        match self.map.remove(&key(p)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(true),
            Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(map_err(e)),
        }
    }

    /// The remote route at (vni, at) as `d` has it, if any.
    fn wanted(d: &Desired, vni: u32, at: Ipv4Addr) -> Option<(Prefix, RouteValue)> {
        let (len, r) = d.route(vni, at)?;
        Some(((vni, at, len), route_value(&r)))
    }

    /// Writes the dirty node subnets as `d` has them.
    pub fn apply(&mut self, d: &Desired, dirty: impl IntoIterator<Item = (u32, Ipv4Addr)>) -> Result<usize, EbpfError> {
        let mut changed = 0;
        for (vni, at) in dirty {
            let want = Self::wanted(d, vni, at);
            if let Some((p, v)) = want {
                changed += usize::from(self.put(p, v)?);
            }
            // Remote entries at this address with another prefix length (or none wanted).
            let stale: Vec<Prefix> = self
                .installed
                .iter()
                .filter(|(p, v)| p.0 == vni && p.1 == at && v.kind == ROUTE_REMOTE && want.is_none_or(|(w, _)| w != **p))
                .map(|(p, _)| *p)
                .collect();
            for p in stale {
                changed += usize::from(self.del(p)?);
            }
        }
        Ok(changed)
    }

    /// Makes the trie hold exactly the policy and `d`'s node subnets.
    pub fn sync(&mut self, d: &Desired) -> Result<Applied, EbpfError> {
        self.read()?;
        let mut want = self.policy.clone();
        for ((vni, at), len, r) in d.all_routes() {
            want.insert((vni, at, len), route_value(&r));
        }
        let mut out = Applied::default();
        let stale: BTreeSet<Prefix> = self.installed.keys().filter(|p| !want.contains_key(*p)).copied().collect();
        for (p, v) in want {
            out.changed += usize::from(self.put(p, v)?);
        }
        for p in stale {
            out.changed += usize::from(self.del(p)?);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{datapath::Router, mac::MacAddr};

    #[test]
    fn policy_blocks_every_served_subnet_and_sends_the_rest_to_the_host() {
        let spec = |vni, subnet: &str, router: Option<Router>| NetSpec { vni, udp_port: 4789, mtu: 1450, subnet: subnet.parse().unwrap(), router, known_vteps_only: true };
        let r = Router { subnet: "10.50.3.0/24".parse().unwrap(), gateway: "10.50.3.1".parse().unwrap(), mac: MacAddr([0x0e, 0, 0, 0, 0, 1]), l3: true };
        let p = policy(&[spec(50, "10.50.0.0/16", Some(r)), spec(42, "10.0.10.0/24", None)]);
        let kinds: Vec<(Prefix, u32)> = p.iter().map(|(k, v)| (*k, v.kind)).collect();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            kinds,
            vec![
                ((50, ip("0.0.0.0"), 0), ROUTE_HOST),
                ((50, ip("10.0.10.0"), 24), ROUTE_BLOCKED),
                ((50, ip("10.50.0.0"), 16), ROUTE_BLOCKED),
                ((50, ip("10.50.3.1"), 32), ROUTE_HOST),
            ],
            "only the network with a router gets entries"
        );
    }
}
