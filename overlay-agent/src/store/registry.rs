//! Typed writes to the store, each one transaction whose conditions the store decides:
//! registering a node (its name and VTEP address are unique among live agents),
//! publishing and withdrawing endpoints (an IP and a MAC are unique in a network),
//! static endpoints. A conflict is an error naming the holder, and changes nothing.

use std::net::Ipv4Addr;

use super::{
    StoreError,
    keys::Keys,
    kv::{Cond, KeyValue, Kv, LeaseId, NO_LEASE, Txn, TxnOutcome},
};
use crate::{
    mac::MacAddr,
    records::{EndpointRecord, NodeRecord, StaticRecord, encode},
};

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("IP {ip} is already used in network {network} (node {holder})")]
    IpTaken { ip: Ipv4Addr, network: String, holder: String },
    #[error("MAC {mac} is already used in network {network} (by {holder})")]
    MacTaken { mac: MacAddr, network: String, holder: String },
    #[error(
        "node name {node:?} is held by another live agent (VTEP {vtep}); give this host another `node_name`, \
         or stop that agent (`overlay-agent down` there) and wait for its lease to end"
    )]
    NodeNameHeld { node: String, vtep: Ipv4Addr },
    #[error(
        "VTEP address {vtep} is already claimed by live node {node}: two hosts with one underlay address, \
         or a renamed node whose old agent still runs (stop it with `overlay-agent down`)"
    )]
    VtepClaimed { vtep: Ipv4Addr, node: String },
    #[error("subnet {subnet} of network {network} is already routed by {holder}")]
    SubnetTaken { subnet: ipnet::Ipv4Net, network: String, holder: String },
    #[error(
        "network {network} has no free /{len} node subnet left in {cluster}: give it a larger subnet or a longer \
         node_prefix_len, or remove nodes that are gone (their subnets return when their leases end)"
    )]
    NoFreeSubnet { network: String, cluster: ipnet::Ipv4Net, len: u8 },
    #[error("the store changed while {what}; try again")]
    Raced { what: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How registration went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// Under the lease given.
    Fresh,
    /// The node's record already existed under another live lease with this host's VTEP
    /// (this agent's previous run, whose state was lost): that lease is adopted.
    Adopted(LeaseId),
}

/// Who a key's value says holds it, for messages.
pub(super) fn holder_of(current: &Option<KeyValue>, keys: &Keys) -> String {
    let Some(kv) = current else { return "someone who just left".into() };
    // Subnet records have the fields of endpoint records: tell them apart by key.
    match keys.parse(&kv.key) {
        Some(super::keys::Key::Subnet(..)) => {
            if let Ok(s) = serde_json::from_slice::<crate::records::SubnetRecord>(&kv.value) {
                return format!("node {}", s.node);
            }
        }
        Some(super::keys::Key::StaticSubnet(..)) => {
            if let Ok(s) = serde_json::from_slice::<crate::records::StaticSubnetRecord>(&kv.value) {
                return format!("a host without agent at {} (declared by {})", s.vtep, s.declared_by);
            }
        }
        _ => {}
    }
    if let Ok(e) = serde_json::from_slice::<EndpointRecord>(&kv.value) {
        return e.node;
    }
    if let Ok(s) = serde_json::from_slice::<StaticRecord>(&kv.value) {
        return format!("a static endpoint declared by {}", s.declared_by);
    }
    // Claims hold the key of their owner.
    let value = String::from_utf8_lossy(&kv.value).into_owned();
    match keys.parse(&value) {
        Some(super::keys::Key::Endpoint(_, ip)) => format!("endpoint {ip}"),
        Some(super::keys::Key::Static(_, ip)) => format!("static endpoint {ip}"),
        _ => value,
    }
}

/// Registers `record` under `lease`: creates the node key and the VTEP claim, updates
/// them if this lease already holds them, adopts a lease that this host (same name,
/// same VTEP) held in an earlier run.
pub async fn register_node<K: Kv>(kv: &K, keys: &Keys, record: &NodeRecord, lease: LeaseId) -> Result<Registered, ClaimError> {
    let node_key = keys.node(&record.node);
    let vtep_key = keys.vtep_claim(record.vtep);
    for _ in 0..3 {
        let current = kv.get(&node_key).await?;
        let txn = match &current {
            Some(cur) if cur.lease == lease => {
                // Ours: update the record; move the VTEP claim if the address changed.
                let old = serde_json::from_slice::<NodeRecord>(&cur.value).ok();
                let mut t = Txn::default().when(Cond::LeaseIs(node_key.clone(), lease));
                if let Some(old) = old.filter(|o| o.vtep != record.vtep) {
                    let old_claim = keys.vtep_claim(old.vtep);
                    if kv.get(&old_claim).await?.is_some_and(|c| c.lease == lease) {
                        t = t.delete(old_claim);
                    }
                }
                match kv.get(&vtep_key).await? {
                    Some(c) if c.lease == lease => {}
                    Some(c) => return Err(ClaimError::VtepClaimed { vtep: record.vtep, node: String::from_utf8_lossy(&c.value).into() }),
                    None => t = t.when(Cond::Absent(vtep_key.clone())).put(vtep_key.clone(), record.node.clone().into_bytes(), lease),
                }
                t.put(node_key.clone(), encode(record), lease)
            }
            Some(cur) => {
                let theirs = serde_json::from_slice::<NodeRecord>(&cur.value).ok();
                match theirs {
                    Some(t) if t.vtep == record.vtep && kv.keep_alive(cur.lease).await? => {
                        return Ok(Registered::Adopted(cur.lease));
                    }
                    Some(t) if t.vtep == record.vtep => continue, // it just expired
                    Some(t) => return Err(ClaimError::NodeNameHeld { node: record.node.clone(), vtep: t.vtep }),
                    None => return Err(ClaimError::NodeNameHeld { node: record.node.clone(), vtep: Ipv4Addr::UNSPECIFIED }),
                }
            }
            None => Txn::default()
                .when(Cond::Absent(node_key.clone()))
                .when(Cond::Absent(vtep_key.clone()))
                .put(node_key.clone(), encode(record), lease)
                .put(vtep_key.clone(), record.node.clone().into_bytes(), lease),
        };
        match kv.txn(txn).await? {
            TxnOutcome::Applied => return Ok(Registered::Fresh),
            TxnOutcome::Failed { cond, current } if cond.key() == vtep_key => {
                let node = current.map_or_else(String::new, |c| String::from_utf8_lossy(&c.value).into_owned());
                return Err(ClaimError::VtepClaimed { vtep: record.vtep, node });
            }
            TxnOutcome::Failed { .. } => continue, // the node key changed meanwhile: look again
        }
    }
    Err(ClaimError::Raced { what: "registering the node" })
}

/// The transaction that creates a published endpoint: its record and its MAC claim
/// under `lease`, if neither its IP (published or static) nor its MAC is taken. What
/// [`publish_endpoint`] applies for an endpoint this lease does not hold yet; bulk
/// writers (the scale benchmark's simulated nodes) merge many with [`Txn::merge`].
pub fn publish_txn(keys: &Keys, vni: u32, ip: Ipv4Addr, record: &EndpointRecord, lease: LeaseId) -> Txn {
    Claim { vni, ip, mac: record.mac, network: &record.network, reserved_by: None }.txn(keys, keys.endpoint(vni, ip), encode(record), lease)
}

/// The transaction [`put_static`] applies: the static record and its MAC claim, under
/// no lease, if neither the IP nor the MAC is taken.
pub fn static_txn(keys: &Keys, vni: u32, ip: Ipv4Addr, record: &StaticRecord) -> Txn {
    let claim = Claim { vni, ip, mac: record.mac, network: &record.network, reserved_by: None };
    claim.txn(keys, keys.static_endpoint(vni, ip), encode(record), NO_LEASE)
}

/// Publishes a local endpoint under `lease`, claiming its IP and MAC in the network.
/// Publishing what this lease already holds is a no-op; a changed MAC is replaced. An
/// address this lease reserved ([`super::ipam::reserve_ip`]) may be published; one
/// another node reserved may not.
pub async fn publish_endpoint<K: Kv>(
    kv: &K,
    keys: &Keys,
    vni: u32,
    ip: Ipv4Addr,
    record: &EndpointRecord,
    lease: LeaseId,
) -> Result<(), ClaimError> {
    let ep_key = keys.endpoint(vni, ip);
    let value = encode(record);
    if let Some(cur) = kv.get(&ep_key).await?
        && cur.lease == lease
    {
        if cur.value == value {
            return Ok(());
        }
        // This lease's older record of the same IP (a changed MAC): take it back first.
        withdraw_endpoint(kv, keys, vni, ip, lease).await?;
    }
    let reserved_by = match kv.get(&keys.ip_reservation(vni, ip)).await? {
        Some(r) if r.lease == lease => Some(lease),
        Some(r) => {
            let holder = format!("reserved by node {}", String::from_utf8_lossy(&r.value));
            return Err(ClaimError::IpTaken { ip, network: record.network.clone(), holder });
        }
        None => None,
    };
    let claim = Claim { vni, ip, mac: record.mac, network: &record.network, reserved_by };
    claim.take(kv, keys, ep_key, value, lease).await
}

/// An IP and a MAC of a network, claimed for one key (an endpoint or a static endpoint)
/// in one transaction: the key, its IP's other key and the MAC's claim must all be
/// absent, and the IP not reserved (or reserved under `reserved_by`, the claimant's lease).
struct Claim<'a> {
    vni: u32,
    ip: Ipv4Addr,
    mac: MacAddr,
    network: &'a str,
    reserved_by: Option<LeaseId>,
}

impl Claim<'_> {
    /// The claim as a transaction writing `value` at `key` (the endpoint or static key).
    fn txn(&self, keys: &Keys, key: String, value: Vec<u8>, lease: LeaseId) -> Txn {
        let other = if key == keys.endpoint(self.vni, self.ip) {
            keys.static_endpoint(self.vni, self.ip)
        } else {
            keys.endpoint(self.vni, self.ip)
        };
        let mac_key = keys.mac_claim(self.vni, self.mac);
        let reservation = keys.ip_reservation(self.vni, self.ip);
        let reservation = match self.reserved_by {
            Some(lease) => Cond::LeaseIs(reservation, lease),
            None => Cond::Absent(reservation),
        };
        Txn::default()
            .when(Cond::Absent(key.clone()))
            .when(Cond::Absent(other))
            .when(reservation)
            .when(Cond::Absent(mac_key.clone()))
            .put(key.clone(), value, lease)
            .put(mac_key, key.into_bytes(), lease)
    }

    /// Applies the claim; a taken IP or MAC is an error naming its holder.
    async fn take<K: Kv>(&self, kv: &K, keys: &Keys, key: String, value: Vec<u8>, lease: LeaseId) -> Result<(), ClaimError> {
        let mac_key = keys.mac_claim(self.vni, self.mac);
        let network = self.network.to_owned();
        match kv.txn(self.txn(keys, key, value, lease)).await? {
            TxnOutcome::Applied => Ok(()),
            TxnOutcome::Failed { cond, current } if cond.key() == mac_key => {
                Err(ClaimError::MacTaken { mac: self.mac, network, holder: holder_of(&current, keys) })
            }
            TxnOutcome::Failed { current, .. } => Err(ClaimError::IpTaken { ip: self.ip, network, holder: holder_of(&current, keys) }),
        }
    }
}

/// Withdraws an endpoint this lease published (and its MAC claim); fine if it is gone.
pub async fn withdraw_endpoint<K: Kv>(kv: &K, keys: &Keys, vni: u32, ip: Ipv4Addr, lease: LeaseId) -> Result<(), StoreError> {
    let ep_key = keys.endpoint(vni, ip);
    let Some(cur) = kv.get(&ep_key).await? else { return Ok(()) };
    if cur.lease != lease {
        return Ok(()); // not ours (any more)
    }
    let mut txn = Txn::default().when(Cond::LeaseIs(ep_key.clone(), lease)).delete(ep_key.clone());
    if let Ok(rec) = serde_json::from_slice::<EndpointRecord>(&cur.value) {
        let mac_key = keys.mac_claim(vni, rec.mac);
        if kv.get(&mac_key).await?.is_some_and(|c| c.value == ep_key.as_bytes()) {
            txn = txn.delete(mac_key);
        }
    }
    // A failed condition means someone else holds it now: nothing of ours to remove.
    kv.txn(txn).await.map(drop)
}

/// Declares a static endpoint (under no lease), claiming its IP and MAC.
pub async fn put_static<K: Kv>(kv: &K, keys: &Keys, vni: u32, ip: Ipv4Addr, record: &StaticRecord) -> Result<(), ClaimError> {
    let claim = Claim { vni, ip, mac: record.mac, network: &record.network, reserved_by: None };
    claim.take(kv, keys, keys.static_endpoint(vni, ip), encode(record), NO_LEASE).await
}

/// Removes a static endpoint and its MAC claim; returns what was there.
pub async fn del_static<K: Kv>(kv: &K, keys: &Keys, vni: u32, ip: Ipv4Addr) -> Result<Option<StaticRecord>, StoreError> {
    let key = keys.static_endpoint(vni, ip);
    let Some(cur) = kv.get(&key).await? else { return Ok(None) };
    let record = serde_json::from_slice::<StaticRecord>(&cur.value).ok();
    let mut txn = Txn::default().when(Cond::ValueIs(key.clone(), cur.value.clone())).delete(key.clone());
    if let Some(r) = &record {
        let mac_key = keys.mac_claim(vni, r.mac);
        if kv.get(&mac_key).await?.is_some_and(|c| c.value == key.as_bytes()) {
            txn = txn.delete(mac_key);
        }
    }
    kv.txn(txn).await?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::dirkv::DirKv;
    use std::time::Duration;

    fn ep(node: &str, mac: &str) -> EndpointRecord {
        EndpointRecord { node: node.into(), network: "blue".into(), mac: mac.parse().unwrap(), udp_port: 4789 }
    }

    #[tokio::test]
    async fn uniqueness_is_decided_by_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let kv = DirKv::open(dir.path()).await.unwrap();
        let keys = Keys::new("/overlay/v1");
        let (l1, l2) = (kv.grant(Duration::from_secs(30)).await.unwrap(), kv.grant(Duration::from_secs(30)).await.unwrap());
        let h1 = NodeRecord { node: "h1".into(), vtep: [198, 51, 100, 1].into(), version: String::new() };
        assert_eq!(register_node(&kv, &keys, &h1, l1).await.unwrap(), Registered::Fresh);
        assert_eq!(register_node(&kv, &keys, &h1, l1).await.unwrap(), Registered::Fresh, "idempotent");
        // Same name, another VTEP, another lease: refused.
        let other = NodeRecord { vtep: [198, 51, 100, 9].into(), ..h1.clone() };
        assert!(matches!(register_node(&kv, &keys, &other, l2).await, Err(ClaimError::NodeNameHeld { .. })));
        // Same name and VTEP under another lease: this host's earlier run, adopted.
        assert_eq!(register_node(&kv, &keys, &h1, l2).await.unwrap(), Registered::Adopted(l1));
        // Another name with h1's VTEP: refused.
        let h2 = NodeRecord { node: "h2".into(), ..h1.clone() };
        assert!(matches!(register_node(&kv, &keys, &h2, l2).await, Err(ClaimError::VtepClaimed { .. })));
        // h1 moves to a new VTEP: the old claim is released.
        let moved = NodeRecord { vtep: [198, 51, 100, 11].into(), ..h1.clone() };
        register_node(&kv, &keys, &moved, l1).await.unwrap();
        assert!(kv.get(&keys.vtep_claim(h1.vtep)).await.unwrap().is_none());
        let h2 = NodeRecord { node: "h2".into(), vtep: h1.vtep, version: String::new() };
        register_node(&kv, &keys, &h2, l2).await.unwrap();

        let ip = Ipv4Addr::new(10, 0, 10, 11);
        publish_endpoint(&kv, &keys, 42, ip, &ep("h1", "02:42:0a:00:0a:0b"), l1).await.unwrap();
        publish_endpoint(&kv, &keys, 42, ip, &ep("h1", "02:42:0a:00:0a:0b"), l1).await.unwrap();
        let e = publish_endpoint(&kv, &keys, 42, ip, &ep("h2", "02:42:0a:00:0a:0c"), l2).await.unwrap_err();
        assert!(matches!(&e, ClaimError::IpTaken { holder, .. } if holder == "h1"), "{e}");
        let e = publish_endpoint(&kv, &keys, 42, Ipv4Addr::new(10, 0, 10, 12), &ep("h2", "02:42:0a:00:0a:0b"), l2).await.unwrap_err();
        assert!(matches!(&e, ClaimError::MacTaken { holder, .. } if holder == "endpoint 10.0.10.11"), "{e}");
        // Another network (VNI) is another address space.
        publish_endpoint(&kv, &keys, 43, ip, &ep("h2", "02:42:0a:00:0a:0b"), l2).await.unwrap();
        // A static endpoint cannot take a published IP, nor the other way round.
        let st = StaticRecord { network: "blue".into(), mac: "0a:00:00:00:00:99".parse().unwrap(), vtep: [203, 0, 113, 9].into(), udp_port: 4789, declared_by: "h1".into() };
        assert!(matches!(put_static(&kv, &keys, 42, ip, &st).await, Err(ClaimError::IpTaken { .. })));
        let sip = Ipv4Addr::new(10, 0, 10, 99);
        put_static(&kv, &keys, 42, sip, &st).await.unwrap();
        assert!(matches!(publish_endpoint(&kv, &keys, 42, sip, &ep("h2", "02:42:0a:00:0a:63"), l2).await, Err(ClaimError::IpTaken { .. })));
        // Withdrawing releases the IP and the MAC; only the owner's lease can.
        withdraw_endpoint(&kv, &keys, 42, ip, l2).await.unwrap();
        assert!(kv.get(&keys.endpoint(42, ip)).await.unwrap().is_some(), "not h2's to withdraw");
        withdraw_endpoint(&kv, &keys, 42, ip, l1).await.unwrap();
        assert!(kv.get(&keys.mac_claim(42, "02:42:0a:00:0a:0b".parse().unwrap())).await.unwrap().is_none());
        publish_endpoint(&kv, &keys, 42, ip, &ep("h2", "02:42:0a:00:0a:0b"), l2).await.unwrap();
        assert_eq!(del_static(&kv, &keys, 42, sip).await.unwrap(), Some(st.clone()));
        assert_eq!(del_static(&kv, &keys, 42, sip).await.unwrap(), None);
        // Revoking a lease removes all it held.
        kv.revoke(l2).await.unwrap();
        assert!(kv.list("/overlay/v1/").await.unwrap().iter().all(|k| k.lease != l2));
    }

    #[tokio::test]
    async fn merged_publications_apply_together_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let kv = DirKv::open(dir.path()).await.unwrap();
        let keys = Keys::new("/overlay/v1");
        let lease = kv.grant(Duration::from_secs(30)).await.unwrap();
        let (a, b) = (Ipv4Addr::new(10, 0, 10, 1), Ipv4Addr::new(10, 0, 10, 2));
        let (ra, rb) = (ep("h1", "02:42:0a:00:0a:01"), ep("h1", "02:42:0a:00:0a:02"));
        let both = publish_txn(&keys, 42, a, &ra, lease).merge(publish_txn(&keys, 42, b, &rb, lease));
        assert_eq!(both.conds.len(), 8);
        assert_eq!(kv.txn(both.clone()).await.unwrap(), TxnOutcome::Applied);
        // Exactly what publish_endpoint writes: publishing again is a no-op.
        publish_endpoint(&kv, &keys, 42, a, &ra, lease).await.unwrap();
        assert_eq!(kv.list("/overlay/v1/").await.unwrap().len(), 4, "two records, two MAC claims");
        // One taken IP fails the whole merged transaction.
        let c = Ipv4Addr::new(10, 0, 10, 3);
        let rc = ep("h1", "02:42:0a:00:0a:03");
        let clash = publish_txn(&keys, 42, c, &rc, lease).merge(publish_txn(&keys, 42, a, &ra, lease));
        assert!(matches!(kv.txn(clash).await.unwrap(), TxnOutcome::Failed { .. }));
        assert!(kv.get(&keys.endpoint(42, c)).await.unwrap().is_none(), "nothing of a failed merge applied");
        // Static endpoints the same way.
        let st = StaticRecord { network: "blue".into(), mac: rc.mac, vtep: [203, 0, 113, 9].into(), udp_port: 4789, declared_by: "h1".into() };
        assert_eq!(kv.txn(static_txn(&keys, 42, c, &st)).await.unwrap(), TxnOutcome::Applied);
        assert_eq!(del_static(&kv, &keys, 42, c).await.unwrap(), Some(st));
    }
}
