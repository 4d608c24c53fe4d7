//! Node subnets of L3 networks: each node routes one block of the network's subnet
//! (`subnets/<vni>/<net>-<len>`, under the node's lease), as flannel gives each node a
//! subnet lease. A block is taken when a node subnet or a static subnet (a host without
//! an agent, `remote add --subnet`) has its key; the claim is one transaction the store
//! decides, so two nodes starting at once never get the same block.

use ipnet::Ipv4Net;

use super::{
    StoreError,
    keys::{Key, Keys},
    kv::{Cond, KeyValue, Kv, LeaseId, Txn, TxnOutcome},
    registry::{ClaimError, holder_of},
};
use crate::records::{StaticSubnetRecord, SubnetRecord, encode};

/// The node subnets of `cluster` of length `len`, lowest first.
pub fn blocks(cluster: Ipv4Net, len: u8) -> impl Iterator<Item = Ipv4Net> {
    cluster.subnets(len).into_iter().flatten()
}

/// Claims `net` for `record.node` under `lease`: created if no node subnet or static
/// subnet holds it, rewritten if this lease holds it already.
pub async fn claim<K: Kv>(kv: &K, keys: &Keys, vni: u32, net: Ipv4Net, record: &SubnetRecord, lease: LeaseId) -> Result<(), ClaimError> {
    let key = keys.subnet(vni, net);
    let fresh = Txn::default()
        .when(Cond::Absent(key.clone()))
        .when(Cond::Absent(keys.static_subnet(vni, net)))
        .put(key.clone(), encode(record), lease);
    match kv.txn(fresh).await? {
        TxnOutcome::Applied => return Ok(()),
        TxnOutcome::Failed { cond, current: Some(cur) } if cond.key() == key && cur.lease == lease => {}
        TxnOutcome::Failed { cond, current: Some(cur) }
            if cond.key() == key && serde_json::from_slice::<SubnetRecord>(&cur.value).is_ok_and(|r| r.node == record.node) =>
        {
            // This node's own claim under a lease of an earlier run that is still alive
            // (node names are unique among live agents): moved under this lease.
            let take = Txn::default().when(Cond::LeaseIs(key.clone(), cur.lease)).put(key.clone(), encode(record), lease);
            return match kv.txn(take).await? {
                TxnOutcome::Applied => Ok(()),
                TxnOutcome::Failed { .. } => Err(ClaimError::Raced { what: "taking over this node's subnet" }),
            };
        }
        TxnOutcome::Failed { current, .. } => {
            return Err(ClaimError::SubnetTaken { subnet: net, network: record.network.clone(), holder: holder_of(&current, keys) });
        }
    }
    let update = Txn::default().when(Cond::LeaseIs(key.clone(), lease)).put(key.clone(), encode(record), lease);
    match kv.txn(update).await? {
        TxnOutcome::Applied => Ok(()),
        TxnOutcome::Failed { .. } => Err(ClaimError::Raced { what: "updating this node's subnet" }),
    }
}

/// Every node subnet and static subnet of `vni`, with its key and value.
async fn taken<K: Kv>(kv: &K, keys: &Keys, vni: u32) -> Result<Vec<(Ipv4Net, KeyValue)>, StoreError> {
    let mut out = Vec::new();
    for prefix in [keys.subnets(vni), keys.static_subnets(vni)] {
        for cur in kv.list(&prefix).await? {
            if let Some(Key::Subnet(_, net) | Key::StaticSubnet(_, net)) = keys.parse(&cur.key) {
                out.push((net, cur));
            }
        }
    }
    Ok(out)
}

/// The node subnet `node` holds in `vni`, if any.
pub async fn held_by<K: Kv>(kv: &K, keys: &Keys, vni: u32, node: &str) -> Result<Option<Ipv4Net>, StoreError> {
    for kv in kv.list(&keys.subnets(vni)).await? {
        if let (Some(Key::Subnet(_, net)), Ok(r)) = (keys.parse(&kv.key), serde_json::from_slice::<SubnetRecord>(&kv.value))
            && r.node == node
        {
            return Ok(Some(net));
        }
    }
    Ok(None)
}

/// What to allocate a node subnet from.
#[derive(Debug, Clone, Copy)]
pub struct Pool {
    /// The network's subnet.
    pub cluster: Ipv4Net,
    /// The node subnets' prefix length.
    pub len: u8,
    /// Tried first if free (the node's subnet of an earlier run).
    pub prefer: Option<Ipv4Net>,
}

/// Allocates a node subnet for `record.node` in `vni`: the one it holds already, else
/// `pool.prefer` if free, else the lowest free block of the pool. Taken blocks are
/// skipped; a race moves on to the next one.
pub async fn allocate<K: Kv>(kv: &K, keys: &Keys, vni: u32, pool: Pool, record: &SubnetRecord, lease: LeaseId) -> Result<Ipv4Net, ClaimError> {
    let Pool { cluster, len, prefer } = pool;
    if let Some(net) = held_by(kv, keys, vni, &record.node).await? {
        claim(kv, keys, vni, net, record, lease).await?;
        return Ok(net);
    }
    let taken = taken(kv, keys, vni).await?;
    let overlaps = |n: &Ipv4Net| taken.iter().any(|(t, _)| t.contains(n) || n.contains(t));
    let candidates = prefer.into_iter().filter(|p| cluster.contains(p) && p.prefix_len() == len).chain(blocks(cluster, len));
    for net in candidates.filter(|n| !overlaps(n)) {
        match claim(kv, keys, vni, net, record, lease).await {
            Ok(()) => return Ok(net),
            Err(ClaimError::SubnetTaken { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ClaimError::NoFreeSubnet { network: record.network.clone(), cluster, len })
}

/// Declares a subnet routed by a host without an agent. Refused if it overlaps a node
/// subnet or another static subnet of the network.
pub async fn add_static<K: Kv>(kv: &K, keys: &Keys, vni: u32, net: Ipv4Net, record: &StaticSubnetRecord) -> Result<(), ClaimError> {
    let key = keys.static_subnet(vni, net);
    for (other, cur) in taken(kv, keys, vni).await? {
        if (other.contains(&net) || net.contains(&other)) && cur.key != key {
            return Err(ClaimError::SubnetTaken { subnet: other, network: record.network.clone(), holder: holder_of(&Some(cur), keys) });
        }
    }
    let txn = Txn::default().when(Cond::Absent(keys.subnet(vni, net))).put(key, encode(record), super::kv::NO_LEASE);
    match kv.txn(txn).await? {
        TxnOutcome::Applied => Ok(()),
        TxnOutcome::Failed { current, .. } => {
            Err(ClaimError::SubnetTaken { subnet: net, network: record.network.clone(), holder: holder_of(&current, keys) })
        }
    }
}

/// Removes a static subnet; returns what it held (`None`: there was none, or not a
/// valid record).
pub async fn del_static<K: Kv>(kv: &K, keys: &Keys, vni: u32, net: Ipv4Net) -> Result<Option<StaticSubnetRecord>, StoreError> {
    let key = keys.static_subnet(vni, net);
    let Some(cur) = kv.get(&key).await? else { return Ok(None) };
    kv.txn(Txn::default().when(Cond::ValueIs(key.clone(), cur.value.clone())).delete(key)).await?;
    Ok(serde_json::from_slice(&cur.value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::dirkv::DirKv;

    fn rec(node: &str) -> SubnetRecord {
        SubnetRecord { node: node.into(), network: "routed".into(), mac: "0e:00:00:00:00:01".parse().unwrap(), udp_port: 4789 }
    }

    #[tokio::test]
    async fn nodes_get_distinct_blocks_keep_theirs_and_skip_static_ones() {
        let dir = tempfile::tempdir().unwrap();
        let kv = DirKv::open(dir.path()).await.unwrap();
        let keys = Keys::new("/t");
        let cluster: Ipv4Net = "10.244.0.0/22".parse().unwrap();
        let (l1, l2) = (kv.grant(std::time::Duration::from_secs(30)).await.unwrap(), kv.grant(std::time::Duration::from_secs(30)).await.unwrap());
        let st = StaticSubnetRecord { network: "routed".into(), mac: rec("x").mac, vtep: "198.51.100.9".parse().unwrap(), udp_port: 4789, declared_by: "h1".into() };
        add_static(&kv, &keys, 7, "10.244.0.0/24".parse().unwrap(), &st).await.unwrap();
        let a = allocate(&kv, &keys, 7, Pool { cluster, len: 24, prefer: None }, &rec("h1"), l1).await.unwrap();
        let b = allocate(&kv, &keys, 7, Pool { cluster, len: 24, prefer: None }, &rec("h2"), l2).await.unwrap();
        assert_eq!((a.to_string().as_str(), b.to_string().as_str()), ("10.244.1.0/24", "10.244.2.0/24"));
        // Again: the same block (held already), whatever is preferred.
        assert_eq!(allocate(&kv, &keys, 7, Pool { cluster, len: 24, prefer: Some("10.244.3.0/24".parse().unwrap()) }, &rec("h1"), l1).await.unwrap(), a);
        // An overlapping static subnet is refused, naming the holder.
        let err = add_static(&kv, &keys, 7, "10.244.2.128/25".parse().unwrap(), &st).await.unwrap_err();
        assert!(err.to_string().contains("h2"), "{err}");
        // A third node gets the last block, a fourth none.
        let l3 = kv.grant(std::time::Duration::from_secs(30)).await.unwrap();
        assert_eq!(allocate(&kv, &keys, 7, Pool { cluster, len: 24, prefer: None }, &rec("h3"), l3).await.unwrap().to_string(), "10.244.3.0/24");
        let err = allocate(&kv, &keys, 7, Pool { cluster, len: 24, prefer: None }, &rec("h4"), l3).await.unwrap_err();
        assert!(matches!(err, ClaimError::NoFreeSubnet { .. }), "{err}");
        assert_eq!(del_static(&kv, &keys, 7, "10.244.0.0/24".parse().unwrap()).await.unwrap(), Some(st.clone()));
        assert_eq!(del_static(&kv, &keys, 7, "10.244.0.0/24".parse().unwrap()).await.unwrap(), None);
        assert_eq!(allocate(&kv, &keys, 7, Pool { cluster, len: 24, prefer: None }, &rec("h4"), l3).await.unwrap().to_string(), "10.244.0.0/24");
    }
}
