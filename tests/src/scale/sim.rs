//! The simulated nodes: who they are ([`Plan`]: names, VTEPs, endpoint addresses)
//! and the records they write, through the agent library's own store clients and
//! transactions ([`registry::register_node`], [`registry::publish_txn`],
//! [`registry::static_txn`]), so the store holds byte for byte what real agents
//! would write.
//!
//! Addresses: endpoint `e` (node `e / per_node`) is `10.64.0.0 + 1 + e` in a subnet
//! just large enough (at least a /16), its MAC `02:42:` + the IPv4 bytes (the agent's
//! default). Node `i` is `sim<i>` with VTEP `10.192.0.0 + 1 + i`: record data only,
//! never configured on an interface (1,000 distinct VTEPs do not fit in the two
//! documentation /24s the underlays use; the agent under test only writes them into
//! its maps and its VXLAN device's flood list, inside its namespace).

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use futures::{StreamExt as _, TryStreamExt as _};
use overlay_agent::{
    mac::MacAddr,
    records::{EndpointRecord, NodeRecord, StaticRecord},
    store::{
        AnyKv, dirkv::DirKv,
        etcd::{EtcdKv, EtcdSettings},
        keys::{DEFAULT_PREFIX, Keys},
        kv::{Kv, LeaseId, Txn, TxnOutcome},
        registry::{self, Registered},
    },
};
use overlay_common::vxlan::DEFAULT_UDP_PORT;
use serde::Serialize;
use tracing::info;

use super::{ScaleError, check_interrupt};

/// The network every simulated endpoint is in.
pub const NETWORK: &str = "scale";
/// Its VNI.
pub const VNI: u32 = 42;
/// The agent's map capacity is never set below this.
pub const MIN_CAPACITY: u32 = 16_384;
/// The largest map the agent accepts (`[datapath] *_capacity`).
pub const MAX_CAPACITY: u32 = overlay_common::limits::MAX_MAP_CAPACITY;
/// The simulated nodes' lease TTL: long enough that nothing expires during a run, so
/// no keep-alives are needed.
pub const SIM_LEASE_TTL: Duration = Duration::from_secs(3_600);

const ENDPOINT_BASE: u32 = u32::from_be_bytes([10, 64, 0, 0]);
const VTEP_BASE: u32 = u32::from_be_bytes([10, 192, 0, 0]);
/// Endpoint subnets by prefix length, all based at 10.64.0.0 (aligned up to a /11).
const SUBNETS: [(u8, &str); 6] = [
    (16, "10.64.0.0/16"),
    (15, "10.64.0.0/15"),
    (14, "10.64.0.0/14"),
    (13, "10.64.0.0/13"),
    (12, "10.64.0.0/12"),
    (11, "10.64.0.0/11"),
];

/// Who the simulated nodes are and what they publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub nodes: usize,
    pub per_node: usize,
    subnet: &'static str,
}

impl Plan {
    /// `nodes` nodes of `per_node` endpoints each; fails if they do not fit the agent's
    /// largest maps or the VTEP range.
    pub fn new(nodes: usize, per_node: usize) -> Result<Plan, ScaleError> {
        let total = nodes.saturating_mul(per_node);
        if nodes == 0 || per_node == 0 {
            return Err(ScaleError::Options("--nodes and --endpoints-per-node must be at least 1".into()));
        }
        if nodes > 65_000 {
            return Err(ScaleError::Options(format!("{nodes} nodes: at most 65,000 (the simulated VTEPs are a /16)")));
        }
        let plan = Plan { nodes, per_node, subnet: "" };
        if u64::from(plan.capacity_for(total)) < total as u64 {
            return Err(ScaleError::Options(format!(
                "{total} endpoints do not fit the agent's largest maps ({MAX_CAPACITY} entries)"
            )));
        }
        let subnet = SUBNETS
            .iter()
            .find(|(len, _)| (1u64 << (32 - len)) >= total as u64 + 2)
            .map(|(_, s)| *s)
            .ok_or_else(|| ScaleError::Options(format!("{total} endpoints do not fit a /11")))?;
        Ok(Plan { subnet, ..plan })
    }

    /// Endpoints in all.
    pub fn total(&self) -> usize {
        self.nodes * self.per_node
    }

    /// The network's subnet, for the agent's config.
    pub fn subnet(&self) -> &'static str {
        self.subnet
    }

    /// `[datapath] neigh_capacity` and `fdb_capacity` for the agent: the endpoints and a
    /// quarter more.
    pub fn capacity(&self) -> u32 {
        self.capacity_for(self.total())
    }

    fn capacity_for(&self, total: usize) -> u32 {
        let want = total.saturating_add(total / 4);
        u32::try_from(want).unwrap_or(u32::MAX).clamp(MIN_CAPACITY, MAX_CAPACITY)
    }

    pub fn node_name(&self, node: usize) -> String {
        format!("sim{node}")
    }

    pub fn vtep(&self, node: usize) -> Ipv4Addr {
        Ipv4Addr::from(VTEP_BASE + 1 + node as u32)
    }

    /// Endpoint `e`: (its node, IP, MAC).
    pub fn endpoint(&self, e: usize) -> (usize, Ipv4Addr, MacAddr) {
        let ip = Ipv4Addr::from(ENDPOINT_BASE + 1 + e as u32);
        (e / self.per_node, ip, MacAddr::from_ipv4(ip))
    }

    /// The record node `node` publishes for endpoint `e` (as `Agent::endpoint_record`).
    pub fn record(&self, e: usize) -> EndpointRecord {
        let (node, _, mac) = self.endpoint(e);
        EndpointRecord { node: self.node_name(node), network: NETWORK.into(), mac, udp_port: DEFAULT_UDP_PORT }
    }

    fn node_record(&self, node: usize) -> NodeRecord {
        NodeRecord { node: self.node_name(node), vtep: self.vtep(node), version: "scale-sim".into() }
    }
}

/// Where the store is, for opening a client inside the simulator's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// etcd client URLs.
    Etcd(Vec<String>),
    /// The `dir` store's directory.
    Dir(PathBuf),
}

impl StoreSpec {
    /// A client (must be called on the runtime that will use it: an etcd client's
    /// connections belong to the namespace of the thread that makes them).
    pub async fn open(&self) -> Result<AnyKv, ScaleError> {
        let store = |source| ScaleError::Store { what: "opening the store", source };
        Ok(match self {
            StoreSpec::Etcd(endpoints) => {
                let settings = EtcdSettings { endpoints: endpoints.clone(), tls: None };
                AnyKv::Etcd(Box::new(EtcdKv::connect(&settings).await.map_err(store)?))
            }
            StoreSpec::Dir(path) => AnyKv::Dir(DirKv::open(path).await.map_err(store)?),
        })
    }

    /// Endpoints per transaction: etcd refuses a transaction with more than 128
    /// comparisons (`--max-txn-ops`), and a publication compares three keys.
    fn batch(&self) -> usize {
        match self {
            StoreSpec::Etcd(_) => 42,
            StoreSpec::Dir(_) => 500,
        }
    }

    /// Transactions in flight: etcd commits concurrent ones together; the `dir` store
    /// serialises them on its lock anyway.
    fn concurrency(&self) -> usize {
        match self {
            StoreSpec::Etcd(_) => 32,
            StoreSpec::Dir(_) => 2,
        }
    }
}

/// How writing the cluster went.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WriteSummary {
    /// Registering every node (lease, node record, VTEP claim).
    pub register_s: f64,
    /// Publishing every endpoint (record and MAC claim).
    pub publish_s: f64,
    pub total_s: f64,
    /// Transactions used to publish.
    pub transactions: usize,
    pub endpoints_per_s: f64,
}

/// The cluster as written: each node's lease, by node index.
#[derive(Debug, Clone)]
pub struct Written {
    pub leases: Vec<LeaseId>,
    pub summary: WriteSummary,
}

fn applied(what: &'static str, outcome: TxnOutcome) -> Result<(), ScaleError> {
    match outcome {
        TxnOutcome::Applied => Ok(()),
        TxnOutcome::Failed { cond, current } => {
            Err(ScaleError::Refused { what, detail: format!("{cond:?} does not hold; the key holds {current:?}") })
        }
    }
}

/// Registers every node of `plan` under its own lease and publishes all its
/// endpoints, in batched transactions. Call inside the namespace that reaches the
/// store.
pub async fn write_cluster(spec: StoreSpec, plan: Plan) -> Result<Written, ScaleError> {
    let kv = spec.open().await?;
    let keys = Keys::new(DEFAULT_PREFIX);
    let started = Instant::now();
    let leases: Vec<LeaseId> = futures::stream::iter(0..plan.nodes)
        .map(|node| {
            let (kv, keys, plan) = (&kv, &keys, &plan);
            async move {
                check_interrupt()?;
                let lease = kv.grant(SIM_LEASE_TTL).await.map_err(|source| ScaleError::Store { what: "granting a lease", source })?;
                match registry::register_node(kv, keys, &plan.node_record(node), lease).await {
                    Ok(Registered::Fresh) => Ok(lease),
                    Ok(Registered::Adopted(_)) => Err(ScaleError::Refused {
                        what: "registering a simulated node",
                        detail: format!("{} already existed", plan.node_name(node)),
                    }),
                    Err(source) => Err(ScaleError::Claim { what: "registering a simulated node", source }),
                }
            }
        })
        .buffered(spec.concurrency())
        .try_collect()
        .await?;
    let register_s = started.elapsed().as_secs_f64();
    info!(nodes = plan.nodes, seconds = register_s, "simulated nodes registered");

    let publishing = Instant::now();
    let batch = spec.batch();
    let total = plan.total();
    let batches: Vec<(usize, usize)> =
        (0..plan.nodes).flat_map(|n| (n * plan.per_node..(n + 1) * plan.per_node).step_by(batch).map(move |s| (n, s))).collect();
    let transactions = batches.len();
    let mut done = 0usize;
    let mut next_report = total / 10;
    let mut stream = futures::stream::iter(batches)
        .map(|(node, start)| {
            let (kv, keys, plan, leases) = (&kv, &keys, &plan, &leases);
            async move {
                check_interrupt()?;
                let end = ((node + 1) * plan.per_node).min(start + batch);
                let txn = (start..end).fold(Txn::default(), |txn, e| {
                    let (_, ip, _) = plan.endpoint(e);
                    txn.merge(registry::publish_txn(keys, VNI, ip, &plan.record(e), leases[node]))
                });
                let outcome = kv.txn(txn).await.map_err(|source| ScaleError::Store { what: "publishing endpoints", source })?;
                applied("publishing endpoints", outcome)?;
                Ok::<usize, ScaleError>(end - start)
            }
        })
        .buffer_unordered(spec.concurrency());
    while let Some(n) = stream.try_next().await? {
        done += n;
        if done >= next_report {
            info!(endpoints = done, of = total, seconds = publishing.elapsed().as_secs_f64(), "publishing");
            next_report += total / 10;
        }
    }
    drop(stream);
    let publish_s = publishing.elapsed().as_secs_f64();
    let summary = WriteSummary {
        register_s,
        publish_s,
        total_s: started.elapsed().as_secs_f64(),
        transactions,
        endpoints_per_s: total as f64 / publish_s.max(1e-9),
    };
    Ok(Written { leases, summary })
}

/// Declares `count` static endpoints (`remote add`'s records: the static record and
/// its MAC claim, under no lease) in network `network`/`vni`, from 10.64.0.1 on,
/// behind the VTEPs `vteps` in turn; in batched transactions of the `dir` store at
/// `store`. For preloading a lab's maps before its agents start (`cargo xtask bench
/// --preload`). Blocks: runs its own runtime.
pub fn write_statics(store: PathBuf, network: &str, vni: u32, count: usize, vteps: &[Ipv4Addr]) -> Result<(), ScaleError> {
    if vteps.is_empty() {
        return Err(ScaleError::Options("static endpoints need at least one VTEP".into()));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ScaleError::Runtime)?;
    runtime.block_on(async {
        let spec = StoreSpec::Dir(store);
        let kv = spec.open().await?;
        let keys = Keys::new(DEFAULT_PREFIX);
        let batch = spec.batch();
        for start in (0..count).step_by(batch) {
            check_interrupt()?;
            let txn = (start..(start + batch).min(count)).fold(Txn::default(), |txn, e| {
                let ip = Ipv4Addr::from(ENDPOINT_BASE + 1 + e as u32);
                let record = StaticRecord {
                    network: network.to_owned(),
                    mac: MacAddr::from_ipv4(ip),
                    vtep: vteps[e % vteps.len()],
                    udp_port: DEFAULT_UDP_PORT,
                    declared_by: "bench-preload".into(),
                };
                txn.merge(registry::static_txn(&keys, vni, ip, &record))
            });
            let outcome = kv.txn(txn).await.map_err(|source| ScaleError::Store { what: "declaring static endpoints", source })?;
            applied("declaring static endpoints", outcome)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_fit_and_are_distinct() {
        let p = Plan::new(1_000, 250).unwrap();
        assert_eq!(p.subnet(), "10.64.0.0/14");
        assert_eq!(p.capacity(), 312_500);
        assert_eq!(p.endpoint(0), (0, Ipv4Addr::new(10, 64, 0, 1), "02:42:0a:40:00:01".parse().unwrap()));
        let (node, ip, _) = p.endpoint(249_999);
        assert_eq!((node, ip), (999, Ipv4Addr::new(10, 67, 208, 144)));
        assert_eq!(p.vtep(999), Ipv4Addr::new(10, 192, 3, 232));
        assert_eq!(Plan::new(100, 100).unwrap().subnet(), "10.64.0.0/16");
        assert_eq!(Plan::new(100, 100).unwrap().capacity(), MIN_CAPACITY);
        assert_eq!(Plan::new(1_000, 1_000).unwrap().capacity(), MAX_CAPACITY, "a million endpoints fit, barely");
        assert!(Plan::new(2_000, 1_000).is_err(), "two million do not fit the largest map");
        assert!(Plan::new(0, 10).is_err());
    }

    #[test]
    fn records_are_what_agents_publish() {
        let p = Plan::new(2, 3).unwrap();
        let r = p.record(4);
        assert_eq!(r.node, "sim1");
        assert_eq!(r.mac, MacAddr::from_ipv4(Ipv4Addr::new(10, 64, 0, 5)));
        assert_eq!(r.udp_port, DEFAULT_UDP_PORT);
        assert_eq!(p.node_record(1).vtep, Ipv4Addr::new(10, 192, 0, 2));
    }
}
