//! Translates [`Forwarding`] into the exact key/value pairs of the eBPF maps, and
//! computes what to change between two such sets. Pure: unit-tested without a kernel.

use std::collections::BTreeMap;

use overlay_common::{
    EndpointValue, FDB_LOCAL, FDB_REMOTE, FdbKey, FdbValue, FloodValue, NeighKey, NeighValue,
    limits::MAX_FLOOD_PORTS,
};

use super::Forwarding;

/// The contents of the neighbour, FDB and endpoint maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    pub neigh: BTreeMap<NeighKey, NeighValue>,
    pub fdb: BTreeMap<FdbKey, FdbValue>,
    pub endpoints: BTreeMap<u32, EndpointValue>,
    /// By VNI: where broadcast/multicast copies go.
    pub flood: BTreeMap<u32, FloodValue>,
}

impl Tables {
    /// `vxlan_index`: each served network's VXLAN device (VNI → ifindex), which carries
    /// the remote copies of broadcast frames.
    pub fn from_forwarding(fwd: &Forwarding, vxlan_index: &BTreeMap<u32, u32>) -> Self {
        let mut t = Tables::default();
        for (&vni, &ifindex) in vxlan_index {
            let mut f = FloodValue::empty();
            f.vxlan_ifindex = ifindex;
            t.flood.insert(vni, f);
        }
        for (&ifindex, ep) in &fwd.local {
            let (ip, mac) = (ep.ip.octets(), ep.mac.0);
            t.neigh.insert(NeighKey { vni: ep.vni, ip }, NeighValue { mac, _pad: [0; 2] });
            t.fdb.insert(
                FdbKey::new(ep.vni, mac),
                FdbValue { kind: FDB_LOCAL, ifindex, vtep: [0; 4], udp_port_be: 0, _pad: [0; 2] },
            );
            t.endpoints.insert(ifindex, EndpointValue { vni: ep.vni, ip, mac, _pad: [0; 2] });
            let f = t.flood.entry(ep.vni).or_insert_with(FloodValue::empty);
            // The agent refuses more endpoints per network than fit (see the daemon).
            if (f.n_ports as usize) < MAX_FLOOD_PORTS {
                f.ifindex[f.n_ports as usize] = ifindex;
                f.n_ports += 1;
            }
        }
        for ep in fwd.remote.values() {
            let (ip, mac) = (ep.ip.octets(), ep.mac.0);
            let key = FdbKey::new(ep.vni, mac);
            // A local endpoint wins over a (stale or conflicting) remote claim.
            if t.fdb.contains_key(&key) {
                continue;
            }
            t.neigh
                .entry(NeighKey { vni: ep.vni, ip })
                .or_insert(NeighValue { mac, _pad: [0; 2] });
            t.fdb.insert(
                key,
                FdbValue {
                    kind: FDB_REMOTE,
                    ifindex: 0,
                    vtep: ep.vtep.octets(),
                    udp_port_be: ep.udp_port.to_be(),
                    _pad: [0; 2],
                },
            );
        }
        t
    }
}

/// Changes that turn map contents `old` into `new`: upserts, then removals.
#[derive(Debug, PartialEq, Eq)]
pub struct Diff<K, V> {
    pub upsert: Vec<(K, V)>,
    pub remove: Vec<K>,
}

pub fn diff<K: Ord + Copy, V: PartialEq + Copy>(old: &BTreeMap<K, V>, new: &BTreeMap<K, V>) -> Diff<K, V> {
    Diff {
        upsert: new
            .iter()
            .filter(|(k, v)| old.get(k) != Some(v))
            .map(|(k, v)| (*k, *v))
            .collect(),
        remove: old.keys().filter(|k| !new.contains_key(k)).copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        datapath::{LocalEndpoint, RemoteEndpoint},
        mac::MacAddr,
    };
    use std::net::Ipv4Addr;

    fn fwd() -> Forwarding {
        let mut f = Forwarding::default();
        let ip = Ipv4Addr::new(10, 0, 10, 10);
        f.local.insert(7, LocalEndpoint { vni: 42, ip, mac: MacAddr::from_ipv4(ip), ifindex: 7, ifname: "ovl1".into() });
        let rip = Ipv4Addr::new(10, 0, 10, 11);
        f.remote.insert(
            (42, MacAddr::from_ipv4(rip)),
            RemoteEndpoint {
                vni: 42,
                ip: rip,
                mac: MacAddr::from_ipv4(rip),
                vtep: Ipv4Addr::new(198, 51, 100, 2),
                udp_port: 4789,
                node: "h2".into(),
            },
        );
        f
    }

    #[test]
    fn local_and_remote_entries() {
        let t = Tables::from_forwarding(&fwd(), &BTreeMap::from([(42, 9)]));
        assert_eq!(t.neigh.len(), 2);
        let flood = t.flood[&42];
        assert_eq!((flood.vxlan_ifindex, flood.n_ports, flood.ifindex[0]), (9, 1, 7));
        let local = t.fdb[&FdbKey::new(42, [2, 0x42, 10, 0, 10, 10])];
        assert_eq!((local.kind, local.ifindex), (FDB_LOCAL, 7));
        let remote = t.fdb[&FdbKey::new(42, [2, 0x42, 10, 0, 10, 11])];
        assert_eq!(remote.kind, FDB_REMOTE);
        assert_eq!(remote.vtep, [198, 51, 100, 2]);
        assert_eq!(u16::from_be(remote.udp_port_be), 4789);
        assert_eq!(t.endpoints[&7].ip, [10, 0, 10, 10]);
    }

    #[test]
    fn local_wins_over_remote_with_same_mac() {
        let mut f = fwd();
        let ip = Ipv4Addr::new(10, 0, 10, 10);
        f.remote.insert(
            (42, MacAddr::from_ipv4(ip)),
            RemoteEndpoint { vni: 42, ip, mac: MacAddr::from_ipv4(ip), vtep: Ipv4Addr::new(198, 51, 100, 3), udp_port: 4789, node: "h3".into() },
        );
        let t = Tables::from_forwarding(&f, &BTreeMap::new());
        assert_eq!(t.fdb[&FdbKey::new(42, MacAddr::from_ipv4(ip).0)].kind, FDB_LOCAL);
    }

    #[test]
    fn diff_upserts_changed_and_removes_stale() {
        let old = BTreeMap::from([(1u32, 10u32), (2, 20), (3, 30)]);
        let new = BTreeMap::from([(1u32, 10u32), (2, 21), (4, 40)]);
        let d = diff(&old, &new);
        assert_eq!(d.upsert, vec![(2, 21), (4, 40)]);
        assert_eq!(d.remove, vec![3]);
        assert_eq!(diff(&new, &new), Diff { upsert: vec![], remove: vec![] });
    }
}
