//! The churn: simulated nodes withdraw and re-publish endpoints at a fixed rate, each
//! change through the agent library's own `withdraw_endpoint` / `publish_endpoint`
//! under the owning node's lease, and hand the probe what to expect in the agent's
//! FDB map and when the store transaction was sent.
//!
//! The schedule is open loop: change `k` is due at `k / rate` seconds and runs as its
//! own task, so a slow store does not slow the offered rate down (how far behind
//! schedule the loop ever got is reported). Changes alternate: a withdrawal of an
//! endpoint the agent is known to have, then a re-publication of one the agent is
//! known to have dropped; an endpoint is only picked again once the probe saw its
//! last change land, so no two changes of one key are ever in flight together.

use std::{
    net::Ipv4Addr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use overlay_agent::{
    mac::MacAddr,
    records::EndpointRecord,
    store::{
        AnyKv, StoreError,
        keys::{DEFAULT_PREFIX, Keys},
        kv::{Connection, KeyValue, Kv, LeaseId, Txn, TxnOutcome, WatchEvent},
        registry,
    },
};
use tokio::{sync::watch, task::JoinSet};
use tracing::warn;

use super::{
    ScaleError, check_interrupt,
    sim::{Plan, StoreSpec, VNI},
};
use crate::traffic::XorShift;

/// What a change does to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// `publish_endpoint`: the agent's FDB must gain the entry.
    Publish,
    /// `withdraw_endpoint`: the agent's FDB must lose it.
    Withdraw,
}

/// One change made in the store, for the probe to wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    pub endpoint: usize,
    pub op: Op,
    pub mac: MacAddr,
    /// The owning node's VTEP (what a published entry must point to).
    pub vtep: Ipv4Addr,
    /// When the store transaction was sent, and when the store acknowledged it.
    pub sent: Instant,
    pub acked: Instant,
}

/// Which endpoints the agent is known to have and not to have, shared by the churn
/// (which picks from them) and the probe (which confirms changes into them).
#[derive(Debug)]
pub struct Tracker {
    pools: Mutex<Pools>,
    /// Endpoints the store holds now (every applied change moves it).
    in_store: AtomicUsize,
}

#[derive(Debug)]
struct Pools {
    present: Vec<usize>,
    absent: Vec<usize>,
}

impl Tracker {
    /// All `total` endpoints published and loaded.
    pub fn new(total: usize) -> Tracker {
        Tracker { pools: Mutex::new(Pools { present: (0..total).collect(), absent: Vec::new() }), in_store: AtomicUsize::new(total) }
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, Pools> {
        self.pools.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Picks an endpoint for `want` (a withdrawal instead when nothing is known
    /// absent yet) and takes it out of the pools until its change is confirmed.
    fn take(&self, want: Op, rng: &mut XorShift) -> Option<(usize, Op)> {
        let mut pools = self.pools();
        let op = if want == Op::Publish && !pools.absent.is_empty() { Op::Publish } else { Op::Withdraw };
        let pool = match op {
            Op::Publish => &mut pools.absent,
            Op::Withdraw => &mut pools.present,
        };
        if pool.is_empty() {
            return None;
        }
        let i = rng.below(pool.len());
        Some((pool.swap_remove(i), op))
    }

    /// The probe saw `op` of `endpoint` land in the agent's map.
    pub fn confirmed(&self, endpoint: usize, op: Op) {
        let mut pools = self.pools();
        match op {
            Op::Publish => pools.present.push(endpoint),
            Op::Withdraw => pools.absent.push(endpoint),
        }
    }

    /// Endpoints the store holds now: what the agent's FDB must hold once every
    /// change has landed.
    pub fn present(&self) -> usize {
        self.in_store.load(Ordering::SeqCst)
    }

    fn applied(&self, op: Op) {
        match op {
            Op::Publish => self.in_store.fetch_add(1, Ordering::SeqCst),
            Op::Withdraw => self.in_store.fetch_sub(1, Ordering::SeqCst),
        };
    }
}

/// How the churn went (from the writer's side; latencies come from the probe).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChurnOutcome {
    /// Changes applied by the store and handed to the probe.
    pub applied: usize,
    pub publishes: usize,
    pub withdrawals: usize,
    /// Changes the store refused or that failed (the first few are in `errors`).
    pub failed: usize,
    /// Slots with no endpoint to pick (all still in flight).
    pub skipped: usize,
    /// The furthest behind schedule a change was started.
    pub max_lag: Duration,
    /// From the first change to the last one acknowledged.
    pub wall: Duration,
    pub errors: Vec<String>,
}

/// A [`Kv`] that remembers when its (one) transaction was sent and acknowledged.
#[derive(Clone)]
struct TimedKv {
    inner: AnyKv,
    txn: Arc<Mutex<Option<(Instant, Instant)>>>,
}

impl TimedKv {
    fn new(inner: AnyKv) -> Self {
        TimedKv { inner, txn: Arc::new(Mutex::new(None)) }
    }

    fn txn_times(&self) -> Option<(Instant, Instant)> {
        *self.txn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Kv for TimedKv {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let sent = Instant::now();
        let outcome = self.inner.txn(txn).await;
        *self.txn.lock().unwrap_or_else(PoisonError::into_inner) = Some((sent, Instant::now()));
        outcome
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.list(prefix).await
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.inner.grant(ttl).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<bool, StoreError> {
        self.inner.keep_alive(lease).await
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.revoke(lease).await
    }

    fn watch(&self, start: String, end: String) -> tokio::sync::mpsc::Receiver<WatchEvent> {
        self.inner.watch(start, end)
    }

    fn connection(&self) -> watch::Receiver<Connection> {
        self.inner.connection()
    }
}

/// One change, as the task making it needs it.
struct Change {
    endpoint: usize,
    op: Op,
    ip: Ipv4Addr,
    record: EndpointRecord,
    vtep: Ipv4Addr,
    lease: LeaseId,
}

/// Makes `c` in the store and hands the probe its expectation.
async fn change(kv: AnyKv, keys: Keys, c: Change, tracker: Arc<Tracker>, probe: mpsc::Sender<Expectation>) -> Result<Op, String> {
    let timed = TimedKv::new(kv);
    match c.op {
        Op::Publish => registry::publish_endpoint(&timed, &keys, VNI, c.ip, &c.record, c.lease).await.map_err(|e| e.to_string())?,
        Op::Withdraw => registry::withdraw_endpoint(&timed, &keys, VNI, c.ip, c.lease).await.map_err(|e| e.to_string())?,
    }
    let (sent, acked) = timed.txn_times().ok_or_else(|| format!("{:?} of {}: no transaction was needed", c.op, c.ip))?;
    tracker.applied(c.op);
    let expectation = Expectation { endpoint: c.endpoint, op: c.op, mac: c.record.mac, vtep: c.vtep, sent, acked };
    probe.send(expectation).map_err(|_| "the probe stopped".to_string())?;
    Ok(c.op)
}

/// Runs `rate` changes a second for `secs` seconds (see the module docs). Call inside
/// the namespace that reaches the store. Dropping `probe` (on return) tells the probe
/// that no more changes come.
#[expect(clippy::too_many_arguments, reason = "one call site; the pieces are independent")]
pub async fn run(
    spec: StoreSpec,
    plan: Plan,
    leases: Vec<LeaseId>,
    tracker: Arc<Tracker>,
    probe: mpsc::Sender<Expectation>,
    rate: f64,
    secs: u64,
    seed: u64,
) -> Result<ChurnOutcome, ScaleError> {
    let kv = spec.open().await?;
    let keys = Keys::new(DEFAULT_PREFIX);
    let count = (rate * secs as f64).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut rng = XorShift::new(seed);
    let mut tasks = JoinSet::new();
    let mut out = ChurnOutcome::default();
    let start = tokio::time::Instant::now();
    let record = |out: &mut ChurnOutcome, result: Result<Result<Op, String>, tokio::task::JoinError>| match result {
        Ok(Ok(op)) => {
            out.applied += 1;
            match op {
                Op::Publish => out.publishes += 1,
                Op::Withdraw => out.withdrawals += 1,
            }
        }
        Ok(Err(e)) => {
            out.failed += 1;
            if out.errors.len() < 5 {
                warn!(error = %e, "a change failed");
                out.errors.push(e);
            }
        }
        Err(e) => {
            out.failed += 1;
            out.errors.push(format!("change task: {e}"));
        }
    };
    for k in 0..count {
        check_interrupt()?;
        let due = start + interval.mul_f64(k as f64);
        tokio::time::sleep_until(due).await;
        out.max_lag = out.max_lag.max(tokio::time::Instant::now() - due);
        while let Some(done) = tasks.try_join_next() {
            record(&mut out, done);
        }
        let want = if k % 2 == 0 { Op::Withdraw } else { Op::Publish };
        let Some((endpoint, op)) = tracker.take(want, &mut rng) else {
            out.skipped += 1;
            continue;
        };
        let (node, ip, _) = plan.endpoint(endpoint);
        let c = Change { endpoint, op, ip, record: plan.record(endpoint), vtep: plan.vtep(node), lease: leases[node] };
        tasks.spawn(change(kv.clone(), keys.clone(), c, tracker.clone(), probe.clone()));
    }
    while let Some(done) = tasks.join_next().await {
        record(&mut out, done);
    }
    out.wall = start.elapsed();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_confirmed_endpoints_only() {
        let t = Tracker::new(2);
        let mut rng = XorShift::new(7);
        // Nothing known absent yet: a publication becomes a withdrawal.
        let (a, op) = t.take(Op::Publish, &mut rng).unwrap();
        assert_eq!(op, Op::Withdraw);
        let (b, _) = t.take(Op::Withdraw, &mut rng).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.take(Op::Withdraw, &mut rng), None, "both in flight");
        t.confirmed(a, Op::Withdraw);
        assert_eq!(t.take(Op::Publish, &mut rng), Some((a, Op::Publish)));
        t.applied(Op::Withdraw);
        assert_eq!(t.present(), 1);
    }
}
