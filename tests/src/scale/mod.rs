//! `cargo xtask scale`: one real agent against a store that holds a whole cluster.
//!
//! N simulated nodes write exactly what real agents write (each registers
//! `nodes/<name>` and its VTEP claim under its own lease, then publishes its
//! endpoints: record plus MAC claim, with the agent library's own transactions), and
//! ONE real `overlay-agent run` process in eBPF mode consumes them. Measured:
//!
//! - **load**: the agent's own `store.initial_sync_ms` (store list started → maps
//!   hold all of it), cross-checked from outside: from the agent's spawn, `status`
//!   polled until its FDB table holds every endpoint; then every entry of the pinned
//!   FDB map is looked up and compared with what the store says;
//! - **propagation under churn**: simulated nodes withdraw and re-publish endpoints at
//!   a fixed rate (open loop), each through the agent library's `withdraw_endpoint` /
//!   `publish_endpoint`; a probe thread looks the changed key up in the agent's pinned
//!   FDB map until the entry is there with the right VTEP (or gone): latency from the
//!   moment the store transaction was sent;
//! - the agent's **RSS** after load and after churn, its **CPU** during load, during
//!   churn and idle afterwards (`/proc/<pid>/stat`), and the store's size.
//!
//! By concern: [`topology`] (underlay, etcd, the agent's lab), [`sim`] (simulated
//! nodes and their records), [`churn`] (the change schedule), [`probe`] (watching the
//! pinned map, `status`, `/proc`), [`report`] (results, targets, table, JSON).
//!
//! Everything runs in namespaces the harness creates and is torn down on return, on
//! a panic and after Ctrl-C/SIGTERM ([`crate::interrupt`]): every wait checks for it.

pub mod churn;
pub mod probe;
pub mod report;
pub mod sim;
pub mod topology;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use tracing::info;

use crate::{interrupt, pinned::PinnedMapError};
pub use report::Report;
use sim::Plan;
use topology::ScaleTopology;

/// Which store backend the cluster uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// One etcd member in a namespace on the underlay.
    Etcd,
    /// The `dir` backend: a directory on this machine.
    Dir,
}

impl StoreKind {
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Etcd => "etcd",
            StoreKind::Dir => "dir",
        }
    }
}

/// What [`run`] does.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub store: StoreKind,
    /// Simulated nodes.
    pub nodes: usize,
    /// Endpoints each simulated node publishes.
    pub endpoints_per_node: usize,
    /// Endpoint changes per second across all nodes (half withdrawals, half
    /// re-publications).
    pub churn_rate: f64,
    /// How long the churn lasts.
    pub churn_secs: u64,
    /// The window over which idle CPU is measured after the churn.
    pub idle_secs: u64,
    /// Seed of the churn's choices (same seed, same sequence of endpoints).
    pub seed: u64,
    /// `RUST_LOG` for the agent (default: its own, `info`).
    pub agent_log: Option<String>,
    /// Where to copy the agent's log at the end (kept also when the run fails).
    pub agent_log_copy: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            store: StoreKind::Etcd,
            nodes: 1_000,
            endpoints_per_node: 250,
            churn_rate: 100.0,
            churn_secs: 30,
            idle_secs: 10,
            seed: 1,
            agent_log: None,
            agent_log_copy: None,
        }
    }
}

impl Options {
    /// The `--quick` sizes: 100 nodes × 100 endpoints, 10 s of churn.
    pub fn quick(mut self) -> Self {
        self.nodes = 100;
        self.endpoints_per_node = 100;
        self.churn_secs = 10;
        self
    }
}

/// Why a scale run failed (the harness's own steps panic instead, as in the tests).
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error("invalid options: {0}")]
    Options(String),
    #[error("interrupted (Ctrl-C or SIGTERM); everything is torn down")]
    Interrupted,
    #[error("{what}: {source}")]
    Store {
        what: &'static str,
        #[source]
        source: overlay_agent::store::StoreError,
    },
    #[error("{what}: {source}")]
    Claim {
        what: &'static str,
        #[source]
        source: overlay_agent::store::registry::ClaimError,
    },
    #[error("{what}: the store refused the transaction ({detail})")]
    Refused { what: &'static str, detail: String },
    #[error(transparent)]
    Map(#[from] PinnedMapError),
    #[error("asking the agent for its status: {0}")]
    Status(#[source] overlay_agent::api::client::ClientError),
    #[error("the agent answered `status` with: {0}")]
    StatusReply(String),
    #[error("reading {path}: {source}")]
    Proc {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting an async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("{path} is not in the expected format: {problem}")]
    ProcFormat { path: PathBuf, problem: &'static str },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("the agent's maps do not match the store: {0}")]
    Mismatch(String),
    #[error("the agent (pid {pid}) is not running any more; see its log")]
    AgentGone { pid: u32 },
}

/// Fails with [`ScaleError::Interrupted`] once Ctrl-C or SIGTERM arrived.
pub fn check_interrupt() -> Result<(), ScaleError> {
    if interrupt::requested() { Err(ScaleError::Interrupted) } else { Ok(()) }
}

/// How long the agent may take to load before the run gives up.
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// A change not seen in the map after this long counts as lost.
const LOST_AFTER: Duration = Duration::from_secs(30);
/// Pause between the end of the churn and the idle window (the last events settle).
const SETTLE: Duration = Duration::from_secs(1);

/// Builds the topology, writes the cluster, starts the agent, churns, measures, and
/// tears everything down. Panics (after tearing down) if the harness cannot build the
/// topology; everything else is a [`ScaleError`].
pub fn run(o: &Options) -> Result<Report, ScaleError> {
    if !(o.churn_rate > 0.0 && o.churn_rate.is_finite()) {
        return Err(ScaleError::Options(format!("churn rate {} is not a positive number", o.churn_rate)));
    }
    let plan = Plan::new(o.nodes, o.endpoints_per_node)?;
    let mut report = Report::new(o, &plan);
    let mut topo = ScaleTopology::build(o, &plan);
    check_interrupt()?;

    // 1. The simulated nodes write the cluster.
    let spec = topo.store_spec();
    let wrote = {
        let (spec, plan) = (spec.clone(), plan.clone());
        topo.sim_ns().block_on(move || sim::write_cluster(spec, plan))?
    };
    report.write = wrote.summary;
    report.store_after_write = topo.store_size();
    info!(seconds = report.write.total_s, size = ?report.store_after_write, "cluster written");
    check_interrupt()?;

    // 2. The agent starts and loads it.
    let load = probe::load(&mut topo, &plan, LOAD_TIMEOUT)?;
    let pid = load.pid;
    report.load = load.summary;
    info!(pid, initial_sync_ms = ?report.load.initial_sync_ms, start_to_loaded_ms = report.load.start_to_loaded_ms, "agent loaded");
    let fdb = topo.fdb()?;
    report.load.verified = probe::verify_all(&fdb, &plan)?;
    check_interrupt()?;

    // 3. Churn, each change watched in the pinned map.
    let tracker = Arc::new(churn::Tracker::new(plan.total()));
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel();
    let before = probe::ProcSample::read(pid)?;
    let (probed, churned) = thread::scope(|s| {
        let probe = s.spawn(|| probe::watch_changes(&fdb, rx, &tracker, &stop, LOST_AFTER));
        let churned = {
            let (spec, plan, tracker) = (spec.clone(), plan.clone(), tracker.clone());
            let (leases, rate, secs, seed) = (wrote.leases.clone(), o.churn_rate, o.churn_secs, o.seed);
            topo.sim_ns().block_on(move || churn::run(spec, plan, leases, tracker, tx, rate, secs, seed))
        };
        if churned.is_err() {
            stop.store(true, Ordering::SeqCst);
        }
        (probe.join(), churned)
    });
    let probed = match probed {
        Ok(p) => p?,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    let churned = churned?;
    let after = probe::ProcSample::read(pid)?;
    report.set_churn(&churned, &probed, &before, &after);
    report.rss_after_churn_mb = after.rss_mb();
    info!(p50_ms = ?report.churn.p50_ms, p99_ms = ?report.churn.p99_ms, lost = report.churn.lost, "churn done");
    check_interrupt()?;

    // 4. Idle.
    sleep_interruptibly(SETTLE)?;
    let idle_from = probe::ProcSample::read(pid)?;
    sleep_interruptibly(Duration::from_secs(o.idle_secs))?;
    let idle_to = probe::ProcSample::read(pid)?;
    report.set_idle(&idle_from, &idle_to);

    // 5. What the map and the store hold at the end.
    report.store_after_churn = topo.store_size();
    let present = tracker.present();
    let count = fdb.count()?;
    report.final_fdb_entries = count;
    report.final_fdb_expected = present;
    if count != present {
        return Err(ScaleError::Mismatch(format!(
            "after the churn the FDB holds {count} entries, the store {present} endpoints"
        )));
    }
    report.finish();
    drop(topo);
    Ok(report)
}

/// Sleeps `d` in small steps, failing early on Ctrl-C/SIGTERM.
fn sleep_interruptibly(d: Duration) -> Result<(), ScaleError> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupt()?;
        thread::sleep((end - Instant::now()).min(Duration::from_millis(100)));
    }
    Ok(())
}
