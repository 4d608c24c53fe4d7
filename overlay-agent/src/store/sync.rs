//! From the store's key-value events to typed record changes for [`Desired`]: keys are
//! parsed, values decoded and validated; a record that fails is logged and treated as
//! absent, never applied.
//!
//! [`Desired`]: crate::desired::Desired

use std::collections::{HashMap, HashSet};

use ipnet::Ipv4Net;

use tracing::warn;

use super::{
    keys::{Key, Keys},
    kv::{KeyValue, WatchEvent},
};
use crate::{
    desired::{Record, RecordKey},
    records::{EndpointRecord, NodeRecord, RecordError, StaticRecord, StaticSubnetRecord, SubnetRecord},
};

/// A typed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Everything, replacing what was known (see [`WatchEvent::Snapshot`]).
    Snapshot(Vec<Record>),
    Put(Record),
    Delete(RecordKey),
}

fn record_key(key: &Key) -> RecordKey {
    match key {
        Key::Node(n) => RecordKey::Node(n.clone()),
        Key::Endpoint(vni, ip) => RecordKey::Endpoint(*vni, *ip),
        Key::Static(vni, ip) => RecordKey::Static(*vni, *ip),
        Key::Subnet(vni, net) => RecordKey::Subnet(*vni, *net),
        Key::StaticSubnet(vni, net) => RecordKey::StaticSubnet(*vni, *net),
    }
}

/// Checks that an address or subnet a record claims lies inside its network's subnet
/// (for the networks this host serves; the others produce no entries anyway).
fn check_inside(key: &Key, subnets: &HashMap<u32, Ipv4Net>) -> Result<(), RecordError> {
    let outside = |what, value: String, vni: u32, subnet: Ipv4Net| RecordError::OutsideNetwork { what, value, vni, subnet };
    match key {
        Key::Endpoint(vni, ip) | Key::Static(vni, ip) => match subnets.get(vni) {
            Some(s) if !s.contains(ip) || *ip == s.network() || *ip == s.broadcast() => {
                Err(outside("endpoint IP", ip.to_string(), *vni, *s))
            }
            _ => Ok(()),
        },
        Key::Subnet(vni, net) | Key::StaticSubnet(vni, net) => match subnets.get(vni) {
            Some(s) if !s.contains(net) => Err(outside("node subnet", net.to_string(), *vni, *s)),
            _ => Ok(()),
        },
        Key::Node(_) => Ok(()),
    }
}

fn decode(key: &Key, value: &[u8], subnets: &HashMap<u32, Ipv4Net>) -> Result<Record, RecordError> {
    check_inside(key, subnets)?;
    Ok(match key {
        Key::Node(n) => Record::Node(NodeRecord::decode(n, value)?),
        Key::Endpoint(vni, ip) => Record::Endpoint(*vni, *ip, EndpointRecord::decode(*ip, value)?),
        Key::Static(vni, ip) => Record::Static(*vni, *ip, StaticRecord::decode(*ip, value)?),
        Key::Subnet(vni, net) => Record::Subnet(*vni, *net, SubnetRecord::decode(value)?),
        Key::StaticSubnet(vni, net) => Record::StaticSubnet(*vni, *net, StaticSubnetRecord::decode(value)?),
    })
}

/// Decodes store events, remembering which keys it reported bad so each is logged once
/// (a record rewritten in a loop cannot flood the log).
#[derive(Debug)]
pub struct Decoder {
    keys: Keys,
    /// The subnet of each network this host serves, by VNI.
    subnets: HashMap<u32, Ipv4Net>,
    bad: HashSet<String>,
}

impl Decoder {
    pub fn new(keys: Keys, subnets: HashMap<u32, Ipv4Net>) -> Self {
        Self { keys, subnets, bad: HashSet::new() }
    }

    fn record(&mut self, kv: &KeyValue) -> Option<Result<Record, Key>> {
        let key = self.keys.parse(&kv.key)?;
        match decode(&key, &kv.value, &self.subnets) {
            Ok(r) => {
                // Almost always empty: then the key need not even be hashed.
                if !self.bad.is_empty() {
                    self.bad.remove(&kv.key);
                }
                Some(Ok(r))
            }
            Err(e) => {
                if self.bad.insert(kv.key.clone()) {
                    warn!(key = %kv.key, error = %e, "ignoring an invalid record in the store");
                }
                Some(Err(key))
            }
        }
    }

    pub fn decode(&mut self, event: WatchEvent) -> Option<Change> {
        match event {
            WatchEvent::Snapshot(kvs) => {
                let records = kvs.iter().filter_map(|kv| self.record(kv)?.ok()).collect();
                Some(Change::Snapshot(records))
            }
            WatchEvent::Put(kv) => Some(match self.record(&kv)? {
                Ok(r) => Change::Put(r),
                // A record that became invalid is gone as far as the datapath goes.
                Err(key) => Change::Delete(record_key(&key)),
            }),
            WatchEvent::Delete(key) => {
                self.bad.remove(&key);
                Some(Change::Delete(record_key(&self.keys.parse(&key)?)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::encode;

    #[test]
    fn decodes_validates_and_ignores_strangers() {
        let keys = Keys::new("/overlay/v1");
        let mut d = Decoder::new(keys.clone(), HashMap::from([(42, "10.0.10.0/24".parse().unwrap())]));
        let ip = std::net::Ipv4Addr::new(10, 0, 10, 11);
        let rec = EndpointRecord { node: "h2".into(), network: "blue".into(), mac: "02:42:0a:00:0a:0b".parse().unwrap(), udp_port: 4789 };
        let kv = |key: String, value: Vec<u8>| KeyValue { key, value, lease: 1 };
        assert_eq!(
            d.decode(WatchEvent::Put(kv(keys.endpoint(42, ip), encode(&rec)))),
            Some(Change::Put(Record::Endpoint(42, ip, rec.clone())))
        );
        assert_eq!(
            d.decode(WatchEvent::Put(kv(keys.endpoint(42, ip), b"{\"node\":7}".to_vec()))),
            Some(Change::Delete(RecordKey::Endpoint(42, ip))),
            "an invalid record is withdrawn"
        );
        assert_eq!(d.decode(WatchEvent::Put(kv(keys.vtep_claim(ip), b"h2".to_vec()))), None);
        assert_eq!(d.decode(WatchEvent::Delete(keys.node("h2"))), Some(Change::Delete(RecordKey::Node("h2".into()))));
        let snap = d.decode(WatchEvent::Snapshot(vec![
            kv(keys.endpoint(42, ip), encode(&rec)),
            kv(keys.node("h3"), b"not json".to_vec()),
        ]));
        assert_eq!(snap, Some(Change::Snapshot(vec![Record::Endpoint(42, ip, rec)])));
    }

    #[test]
    fn records_that_claim_addresses_outside_their_network_are_not_applied() {
        let keys = Keys::new("/overlay/v1");
        let mut d = Decoder::new(keys.clone(), HashMap::from([(42, "10.0.10.0/24".parse().unwrap())]));
        let kv = |key: String, value: Vec<u8>| KeyValue { key, value, lease: 1 };
        let rec = EndpointRecord { node: "h2".into(), network: "blue".into(), mac: "02:42:0a:00:0a:0b".parse().unwrap(), udp_port: 4789 };
        for ip in [[10, 0, 20, 11], [10, 0, 10, 0], [10, 0, 10, 255]] {
            let ip = std::net::Ipv4Addr::from(ip);
            assert_eq!(
                d.decode(WatchEvent::Put(kv(keys.endpoint(42, ip), encode(&rec)))),
                Some(Change::Delete(RecordKey::Endpoint(42, ip))),
                "{ip} is not an address of 10.0.10.0/24"
            );
        }
        // Another network's records are not this host's concern (it does not serve it).
        let other = std::net::Ipv4Addr::new(10, 0, 20, 11);
        assert!(matches!(d.decode(WatchEvent::Put(kv(keys.endpoint(43, other), encode(&rec)))), Some(Change::Put(_))));
        // A node subnet outside the network.
        let sub = SubnetRecord { node: "h2".into(), network: "blue".into(), mac: "0e:00:00:00:00:02".parse().unwrap(), udp_port: 4789 };
        let far: Ipv4Net = "10.1.0.0/24".parse().unwrap();
        assert_eq!(
            d.decode(WatchEvent::Put(kv(keys.subnet(42, far), encode(&sub)))),
            Some(Change::Delete(RecordKey::Subnet(42, far)))
        );
        // A VTEP that is not unicast IPv4, a MAC that is not unicast, a field of the wrong type.
        let bad_node = br#"{"node":"h9","vtep":"224.0.0.1","version":""}"#.to_vec();
        assert_eq!(d.decode(WatchEvent::Put(kv(keys.node("h9"), bad_node))), Some(Change::Delete(RecordKey::Node("h9".into()))));
        let ip = std::net::Ipv4Addr::new(10, 0, 10, 12);
        let bad_mac = br#"{"node":"h2","network":"blue","mac":"01:00:5e:00:00:01","udp_port":4789}"#.to_vec();
        assert_eq!(d.decode(WatchEvent::Put(kv(keys.endpoint(42, ip), bad_mac))), Some(Change::Delete(RecordKey::Endpoint(42, ip))));
        let bad_type = br#"{"node":"h2","network":"blue","mac":"02:42:0a:00:0a:0c","udp_port":"4789"}"#.to_vec();
        assert_eq!(d.decode(WatchEvent::Put(kv(keys.endpoint(42, ip), bad_type))), Some(Change::Delete(RecordKey::Endpoint(42, ip))));
    }
}
