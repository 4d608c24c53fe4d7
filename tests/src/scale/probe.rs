//! Measuring the agent from outside: its `status` until the load is complete, every
//! entry of its pinned FDB map against the store, each churned key until the change
//! lands in the map, and its CPU time and RSS from `/proc`.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{self, RecvTimeoutError, TryRecvError},
    },
    thread,
    time::{Duration, Instant},
};

use overlay_common::{FDB_REMOTE, maps};
use serde::Serialize;

use super::{
    ScaleError, check_interrupt,
    churn::{Expectation, Op, Tracker},
    sim::{Plan, VNI},
    topology::ScaleTopology,
};
use crate::pinned::PinnedFdb;

/// The probe's pause between two sweeps over the changes it waits for (longer when a
/// sweep itself takes long, so that it never takes more than a fifth of a CPU).
pub const PROBE_INTERVAL: Duration = Duration::from_micros(200);
/// How often `status` is asked while the agent loads.
const STATUS_INTERVAL: Duration = Duration::from_millis(50);

/// The agent's CPU time and memory at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    pub at: Instant,
    /// utime + stime of every thread, live or exited (the kernel scales the
    /// tick-sampled split to the exact runtime), in clock ticks.
    pub cpu_ticks: u64,
    pub rss_kb: u64,
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

impl ProcSample {
    /// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
    pub fn read(pid: u32) -> Result<ProcSample, ScaleError> {
        let at = Instant::now();
        let read = |name: &str| {
            let path = PathBuf::from(format!("/proc/{pid}/{name}"));
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok((path, text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ScaleError::AgentGone { pid }),
                Err(source) => Err(ScaleError::Proc { path, source }),
            }
        };
        let (path, stat) = read("stat")?;
        // The fields after the command name, which may itself hold spaces and ')'.
        let rest = stat.rsplit_once(") ").map(|(_, r)| r).ok_or(ScaleError::ProcFormat { path: path.clone(), problem: "no ')'" })?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            return Err(ScaleError::AgentGone { pid });
        }
        // Fields 14 and 15 of stat(5) (utime, stime); `rest` starts at field 3.
        let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        let cpu_ticks = tick(11)
            .zip(tick(12))
            .map(|(u, s)| u + s)
            .ok_or(ScaleError::ProcFormat { path, problem: "no utime/stime" })?;
        let (path, status) = read("status")?;
        let rss_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or(ScaleError::ProcFormat { path, problem: "no VmRSS line" })?;
        Ok(ProcSample { at, cpu_ticks, rss_kb })
    }

    pub fn rss_mb(&self) -> f64 {
        self.rss_kb as f64 / 1024.0
    }

    /// CPU seconds used up to this sample.
    pub fn cpu_s(&self) -> f64 {
        self.cpu_ticks as f64 / clock_ticks_per_second() as f64
    }

    /// CPU seconds used since `earlier`.
    pub fn cpu_s_since(&self, earlier: &ProcSample) -> f64 {
        self.cpu_s() - earlier.cpu_s()
    }

    /// Percent of one CPU used since `earlier`.
    pub fn cpu_percent_since(&self, earlier: &ProcSample) -> f64 {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        if wall > 0.0 { 100.0 * self.cpu_s_since(earlier) / wall } else { f64::NAN }
    }
}

/// How the agent's start and first load went.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadSummary {
    /// The agent's own figure (`status` → `store.initial_sync_ms`): from the start of
    /// its first store list to the datapath holding all of it.
    pub initial_sync_ms: Option<u64>,
    /// From spawning the agent to the first `status` whose FDB table holds every
    /// endpoint (polled every 50 ms; includes loading the eBPF programs).
    pub start_to_loaded_ms: u64,
    /// FDB and neighbour entries `status` counted then.
    pub fdb_entries: u64,
    pub neigh_entries: u64,
    /// The agent's CPU from its start to the end of the load.
    pub cpu_s: f64,
    pub cpu_percent: f64,
    pub rss_mb: f64,
    /// Every endpoint was looked up in the pinned FDB map and pointed to its node's
    /// VTEP, and the map held nothing else.
    pub verified: bool,
}

/// The agent, started and loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub pid: u32,
    pub summary: LoadSummary,
}

/// Starts the agent and waits until its FDB holds every endpoint of `plan`.
pub fn load(topo: &mut ScaleTopology, plan: &Plan, timeout: Duration) -> Result<Loaded, ScaleError> {
    let total = plan.total() as u64;
    let started = Instant::now();
    let pid = topo.start_agent();
    tracing::info!(pid, "agent started (perf record -g -p {pid} to profile it)");
    loop {
        check_interrupt()?;
        ProcSample::read(pid)?;
        let status = topo.status()?;
        let entries = |name: &str| status.tables.iter().find(|t| t.name == name).map_or(0, |t| t.entries);
        let (fdb, neigh) = (entries(maps::FDB), entries(maps::NEIGH));
        if status.store.synced && fdb >= total {
            let elapsed = started.elapsed();
            let sample = ProcSample::read(pid)?;
            let summary = LoadSummary {
                initial_sync_ms: status.store.initial_sync_ms,
                start_to_loaded_ms: elapsed.as_millis() as u64,
                fdb_entries: fdb,
                neigh_entries: neigh,
                cpu_s: sample.cpu_s(),
                cpu_percent: 100.0 * sample.cpu_s() / elapsed.as_secs_f64(),
                rss_mb: sample.rss_mb(),
                verified: false,
            };
            return Ok(Loaded { pid, summary });
        }
        if started.elapsed() > timeout {
            return Err(ScaleError::Timeout { what: format!("the agent's FDB to hold {total} entries (it has {fdb})"), after: timeout });
        }
        thread::sleep(STATUS_INTERVAL);
    }
}

/// Looks every endpoint of `plan` up in the pinned FDB map: each must point to its
/// node's VTEP, and the map must hold nothing else.
pub fn verify_all(fdb: &PinnedFdb, plan: &Plan) -> Result<bool, ScaleError> {
    let mut wrong = 0usize;
    let mut first = None;
    for e in 0..plan.total() {
        let (node, ip, mac) = plan.endpoint(e);
        let want = plan.vtep(node);
        let ok = fdb.get(VNI, mac)?.is_some_and(|v| v.kind == FDB_REMOTE && v.vtep == want.octets());
        if !ok {
            wrong += 1;
            first.get_or_insert(format!("{ip} ({mac}) should point to {want}"));
        }
    }
    if let Some(first) = first {
        return Err(ScaleError::Mismatch(format!("{wrong} endpoints missing or wrong, e.g. {first}")));
    }
    let count = fdb.count()?;
    if count != plan.total() {
        return Err(ScaleError::Mismatch(format!("the FDB holds {count} entries, the store {} endpoints", plan.total())));
    }
    Ok(true)
}

/// One change seen landing in the map.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub op: Op,
    /// From sending the store transaction to the map showing its effect.
    pub latency: Duration,
    /// The store transaction's round trip.
    pub txn: Duration,
}

/// What the probe saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeOutcome {
    pub samples: Vec<Sample>,
    /// Changes not seen within the time allowed.
    pub lost: usize,
    /// The most changes waited for at once.
    pub max_pending: usize,
}

fn landed(fdb: &PinnedFdb, e: &Expectation) -> Result<bool, ScaleError> {
    let entry = fdb.get(VNI, e.mac)?;
    Ok(match e.op {
        Op::Publish => entry.is_some_and(|v| v.kind == FDB_REMOTE && v.vtep == e.vtep.octets()),
        Op::Withdraw => entry.is_none(),
    })
}

/// Waits for every change `changes` announces to land in the pinned FDB map, looking
/// each pending key up every [`PROBE_INTERVAL`]; confirms each into `tracker`. Ends
/// once the sender is gone and nothing is pending, or when `stop` is set.
pub fn watch_changes(
    fdb: &PinnedFdb,
    changes: mpsc::Receiver<Expectation>,
    tracker: &Tracker,
    stop: &AtomicBool,
    lost_after: Duration,
) -> Result<ProbeOutcome, ScaleError> {
    let mut out = ProbeOutcome::default();
    let mut pending: Vec<Expectation> = Vec::new();
    let mut open = true;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(out);
        }
        while open {
            match changes.try_recv() {
                Ok(e) => pending.push(e),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        out.max_pending = out.max_pending.max(pending.len());
        let sweep = Instant::now();
        let mut i = 0;
        while i < pending.len() {
            let e = &pending[i];
            if landed(fdb, e)? {
                let seen = Instant::now();
                out.samples.push(Sample { op: e.op, latency: seen.duration_since(e.sent), txn: e.acked.duration_since(e.sent) });
                tracker.confirmed(e.endpoint, e.op);
                pending.swap_remove(i);
            } else if e.sent.elapsed() > lost_after {
                out.lost += 1;
                pending.swap_remove(i);
            } else {
                i += 1;
            }
        }
        if pending.is_empty() {
            if !open {
                return Ok(out);
            }
            match changes.recv_timeout(Duration::from_millis(50)) {
                Ok(e) => pending.push(e),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
        } else {
            thread::sleep(PROBE_INTERVAL.max(sweep.elapsed() * 4));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let s = ProcSample::read(std::process::id()).unwrap();
        assert!(s.rss_kb > 0);
        assert!(ProcSample::read(u32::MAX).is_err());
    }
}
