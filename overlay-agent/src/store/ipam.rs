//! Cluster-wide address management. An address is taken when the store holds an
//! endpoint or a static endpoint for it, or a reservation (`claims/ip/<vni>/<ip>`, made
//! by an IPAM request ahead of the endpoint, as Docker's IPAM driver does). Every
//! allocation is a transaction that the store decides, so two hosts asking at once never
//! get the same address; the agent's own view only picks which address to try first.
//! Reservations and endpoints live under their node's lease: they are released when the
//! node goes away.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{
    StoreError,
    keys::Keys,
    kv::{Cond, Kv, LeaseId, Txn, TxnOutcome},
    registry::{ClaimError, holder_of},
};

/// The addresses that automatic allocation hands out, lowest first: every host address
/// of the subnet but the first, which is kept for the network's gateway (as Docker and
/// flannel keep it).
pub fn candidates(subnet: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let gateway = gateway(subnet);
    subnet.hosts().filter(move |ip| Some(*ip) != gateway && *ip != subnet.network() && *ip != subnet.broadcast())
}

/// The network's gateway address: its subnet's first host address (`None` for a /31 or
/// /32, which have no room for one).
pub fn gateway(subnet: Ipv4Net) -> Option<Ipv4Addr> {
    (subnet.prefix_len() <= 30).then(|| Ipv4Addr::from(u32::from(subnet.network()) + 1))
}

/// How many addresses [`candidates`] yields.
pub fn capacity(subnet: Ipv4Net) -> u64 {
    let hosts = 1u64 << (32 - u32::from(subnet.prefix_len()));
    if subnet.prefix_len() <= 30 { hosts - 3 } else { 0 }
}

/// Reserves `ip` in `vni` for `node` under `lease`, if no endpoint, static endpoint or
/// other reservation holds it. Reserving what this lease already reserved is a no-op.
pub async fn reserve_ip<K: Kv>(
    kv: &K,
    keys: &Keys,
    vni: u32,
    ip: Ipv4Addr,
    network: &str,
    node: &str,
    lease: LeaseId,
) -> Result<(), ClaimError> {
    let key = keys.ip_reservation(vni, ip);
    let txn = Txn::default()
        .when(Cond::Absent(key.clone()))
        .when(Cond::Absent(keys.endpoint(vni, ip)))
        .when(Cond::Absent(keys.static_endpoint(vni, ip)))
        .put(key.clone(), node.as_bytes().to_vec(), lease);
    match kv.txn(txn).await? {
        TxnOutcome::Applied => Ok(()),
        TxnOutcome::Failed { cond, current: Some(cur) } if cond.key() == key && cur.lease == lease => Ok(()),
        TxnOutcome::Failed { current, .. } => {
            Err(ClaimError::IpTaken { ip, network: network.to_owned(), holder: holder_of(&current, keys) })
        }
    }
}

/// Releases a reservation this lease holds; `false` if there was none of ours.
pub async fn release_ip<K: Kv>(kv: &K, keys: &Keys, vni: u32, ip: Ipv4Addr, lease: LeaseId) -> Result<bool, StoreError> {
    let key = keys.ip_reservation(vni, ip);
    let txn = Txn::default().when(Cond::LeaseIs(key.clone(), lease)).delete(key);
    Ok(kv.txn(txn).await? == TxnOutcome::Applied)
}

/// The reserved addresses of a network.
pub async fn reserved<K: Kv>(kv: &K, keys: &Keys, vni: u32) -> Result<Vec<Ipv4Addr>, StoreError> {
    let prefix = keys.ip_reservations(vni);
    Ok(kv.list(&prefix).await?.iter().filter_map(|k| k.key.strip_prefix(&prefix)?.parse().ok()).collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        records::EndpointRecord,
        store::{dirkv::DirKv, registry::publish_endpoint},
    };

    #[test]
    fn candidates_skip_the_network_gateway_and_broadcast_addresses() {
        let net: Ipv4Net = "10.0.10.0/24".parse().unwrap();
        let all: Vec<_> = candidates(net).collect();
        assert_eq!(all.first(), Some(&Ipv4Addr::new(10, 0, 10, 2)));
        assert_eq!(all.last(), Some(&Ipv4Addr::new(10, 0, 10, 254)));
        assert_eq!(all.len() as u64, capacity(net));
        assert_eq!(gateway(net), Some(Ipv4Addr::new(10, 0, 10, 1)));
        let tiny: Ipv4Net = "10.0.10.0/30".parse().unwrap();
        assert_eq!(candidates(tiny).collect::<Vec<_>>(), vec![Ipv4Addr::new(10, 0, 10, 2)]);
        assert_eq!(capacity(tiny), 1);
        let none: Ipv4Net = "10.0.10.0/31".parse().unwrap();
        assert_eq!(candidates(none).count(), 0);
        assert_eq!(capacity(none), 0);
    }

    #[tokio::test]
    async fn a_reservation_holds_the_address_for_its_node_only() {
        let dir = tempfile::tempdir().unwrap();
        let kv = DirKv::open(dir.path()).await.unwrap();
        let keys = Keys::new("/overlay/v1");
        let (l1, l2) = (kv.grant(Duration::from_secs(30)).await.unwrap(), kv.grant(Duration::from_secs(30)).await.unwrap());
        let ip = Ipv4Addr::new(10, 0, 10, 5);
        reserve_ip(&kv, &keys, 42, ip, "blue", "h1", l1).await.unwrap();
        reserve_ip(&kv, &keys, 42, ip, "blue", "h1", l1).await.unwrap();
        let e = reserve_ip(&kv, &keys, 42, ip, "blue", "h2", l2).await.unwrap_err();
        assert!(matches!(&e, ClaimError::IpTaken { holder, .. } if holder == "h1"), "{e}");
        assert_eq!(reserved(&kv, &keys, 42).await.unwrap(), vec![ip]);
        assert!(reserved(&kv, &keys, 43).await.unwrap().is_empty());
        // Another node cannot publish it; the reserving node can.
        let rec = |node: &str| EndpointRecord {
            node: node.into(),
            network: "blue".into(),
            mac: crate::mac::MacAddr::from_ipv4(ip),
            udp_port: 4789,
        };
        let e = publish_endpoint(&kv, &keys, 42, ip, &rec("h2"), l2).await.unwrap_err();
        assert!(matches!(&e, ClaimError::IpTaken { holder, .. } if holder.contains("h1")), "{e}");
        publish_endpoint(&kv, &keys, 42, ip, &rec("h1"), l1).await.unwrap();
        // Releasing is the holder's to do, and leaves a published endpoint alone.
        assert!(!release_ip(&kv, &keys, 42, ip, l2).await.unwrap());
        assert!(release_ip(&kv, &keys, 42, ip, l1).await.unwrap());
        assert!(kv.get(&keys.endpoint(42, ip)).await.unwrap().is_some());
        // A published address cannot be reserved by anyone.
        let e = reserve_ip(&kv, &keys, 42, ip, "blue", "h2", l2).await.unwrap_err();
        assert!(matches!(&e, ClaimError::IpTaken { holder, .. } if holder == "h1"), "{e}");
        // A reservation ends with its node's lease.
        let other = Ipv4Addr::new(10, 0, 10, 6);
        reserve_ip(&kv, &keys, 42, other, "blue", "h2", l2).await.unwrap();
        kv.revoke(l2).await.unwrap();
        assert!(reserved(&kv, &keys, 42).await.unwrap().is_empty());
    }
}
