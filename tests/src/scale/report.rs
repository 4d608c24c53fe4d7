//! The results of a scale run: every figure, the targets they are held to, a table
//! for the terminal and a JSON document (one entry per store backend in one file).

use std::{path::Path, time::Duration};

use serde::Serialize;

use super::{
    Options,
    churn::{ChurnOutcome, Op},
    probe::{LoadSummary, PROBE_INTERVAL, ProbeOutcome, ProcSample},
    sim::{Plan, WriteSummary},
    topology::StoreSize,
};

/// Target: store list → maps loaded.
pub const TARGET_LOAD_S: f64 = 2.0;
/// Target: change propagation p99.
pub const TARGET_P99_MS: f64 = 1_000.0;
/// Target: the agent's resident memory.
pub const TARGET_RSS_MB: f64 = 200.0;
/// Target: the idle agent's CPU, percent of one CPU.
pub const TARGET_IDLE_CPU_PERCENT: f64 = 1.0;

/// The churn as measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChurnSummary {
    pub offered_per_s: f64,
    /// Changes the store applied, per second of churn.
    pub applied_per_s: f64,
    pub applied: usize,
    pub publishes: usize,
    pub withdrawals: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Applied changes never seen in the agent's map (within 30 s).
    pub lost: usize,
    /// Store transaction sent → change visible in the pinned FDB map.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub publish_p50_ms: Option<f64>,
    pub publish_p99_ms: Option<f64>,
    pub withdraw_p50_ms: Option<f64>,
    pub withdraw_p99_ms: Option<f64>,
    /// The store transaction's own round trip (part of the latency above).
    pub txn_p50_ms: Option<f64>,
    pub txn_p99_ms: Option<f64>,
    pub max_schedule_lag_ms: f64,
    pub max_pending: usize,
    pub probe_interval_us: u64,
    /// The agent's CPU from the first change to the last one seen.
    pub cpu_percent: f64,
    pub wall_s: f64,
    pub errors: Vec<String>,
}

/// The idle window after the churn.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IdleSummary {
    pub secs: f64,
    pub cpu_s: f64,
    pub cpu_percent: f64,
}

/// A figure held to a target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetRow {
    pub metric: String,
    pub value: Option<f64>,
    pub unit: &'static str,
    pub target: String,
    pub met: Option<bool>,
}

/// Everything a run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub store: &'static str,
    pub nodes: usize,
    pub endpoints_per_node: usize,
    pub endpoints: usize,
    pub map_capacity: u32,
    pub churn_rate: f64,
    pub churn_secs: u64,
    pub seed: u64,
    pub kernel: String,
    pub cpus: usize,
    /// `/proc/loadavg` when the run started and when it finished: the machine may be
    /// shared, and every figure above is wall time or CPU share on it.
    pub loadavg_start: String,
    pub loadavg_end: String,
    /// Unix time the run finished.
    pub finished_unix_s: u64,
    pub write: WriteSummary,
    pub store_after_write: StoreSize,
    pub load: LoadSummary,
    pub churn: ChurnSummary,
    pub rss_after_churn_mb: f64,
    pub idle: IdleSummary,
    pub store_after_churn: StoreSize,
    /// FDB entries after everything settled, and the endpoints the store holds.
    pub final_fdb_entries: usize,
    pub final_fdb_expected: usize,
    pub targets: Vec<TargetRow>,
}

/// The `p`th percentile (nearest rank) of `sorted`.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn sorted(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v
}

impl Report {
    /// An empty report of a run with `o` and `plan`.
    pub fn new(o: &Options, plan: &Plan) -> Report {
        Report {
            store: o.store.name(),
            nodes: plan.nodes,
            endpoints_per_node: plan.per_node,
            endpoints: plan.total(),
            map_capacity: plan.capacity(),
            churn_rate: o.churn_rate,
            churn_secs: o.churn_secs,
            seed: o.seed,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
            finished_unix_s: 0,
            write: WriteSummary::default(),
            store_after_write: StoreSize::default(),
            load: LoadSummary::default(),
            churn: ChurnSummary::default(),
            rss_after_churn_mb: 0.0,
            idle: IdleSummary::default(),
            store_after_churn: StoreSize::default(),
            final_fdb_entries: 0,
            final_fdb_expected: 0,
            targets: Vec::new(),
        }
    }

    /// Records the churn: the writer's side, the probe's latencies, the agent's CPU
    /// between `before` and `after`.
    pub fn set_churn(&mut self, c: &ChurnOutcome, p: &ProbeOutcome, before: &ProcSample, after: &ProcSample) {
        let all = sorted(p.samples.iter().map(|s| ms(s.latency)));
        let of = |op: Op| sorted(p.samples.iter().filter(|s| s.op == op).map(|s| ms(s.latency)));
        let (publish, withdraw) = (of(Op::Publish), of(Op::Withdraw));
        let txn = sorted(p.samples.iter().map(|s| ms(s.txn)));
        self.churn = ChurnSummary {
            offered_per_s: self.churn_rate,
            applied_per_s: c.applied as f64 / self.churn_secs.max(1) as f64,
            applied: c.applied,
            publishes: c.publishes,
            withdrawals: c.withdrawals,
            failed: c.failed,
            skipped: c.skipped,
            lost: p.lost,
            p50_ms: percentile(&all, 50.0),
            p99_ms: percentile(&all, 99.0),
            max_ms: all.last().copied(),
            publish_p50_ms: percentile(&publish, 50.0),
            publish_p99_ms: percentile(&publish, 99.0),
            withdraw_p50_ms: percentile(&withdraw, 50.0),
            withdraw_p99_ms: percentile(&withdraw, 99.0),
            txn_p50_ms: percentile(&txn, 50.0),
            txn_p99_ms: percentile(&txn, 99.0),
            max_schedule_lag_ms: ms(c.max_lag),
            max_pending: p.max_pending,
            probe_interval_us: PROBE_INTERVAL.as_micros() as u64,
            cpu_percent: after.cpu_percent_since(before),
            wall_s: after.at.duration_since(before.at).as_secs_f64(),
            errors: c.errors.clone(),
        };
    }

    /// Records the idle window.
    pub fn set_idle(&mut self, from: &ProcSample, to: &ProcSample) {
        self.idle = IdleSummary {
            secs: to.at.duration_since(from.at).as_secs_f64(),
            cpu_s: to.cpu_s_since(from),
            cpu_percent: to.cpu_percent_since(from),
        };
    }

    /// Holds the figures to their targets; stamps the time.
    pub fn finish(&mut self) {
        let at_most = |metric: String, value: Option<f64>, unit, limit: f64| TargetRow {
            metric,
            value,
            unit,
            target: format!("≤ {limit}"),
            met: value.map(|v| v <= limit),
        };
        let lossless = self.churn.lost == 0 && self.churn.failed == 0;
        let mut p99 = at_most(
            format!("change propagation p99 at {} changes/s", self.churn_rate),
            self.churn.p99_ms,
            "ms",
            TARGET_P99_MS,
        );
        p99.met = p99.met.map(|m| m && lossless);
        self.targets = vec![
            at_most(
                format!("load {} endpoints (store list → maps)", self.endpoints),
                self.load.initial_sync_ms.map(|v| v as f64 / 1e3),
                "s",
                TARGET_LOAD_S,
            ),
            p99,
            at_most("agent RSS after load".into(), Some(self.load.rss_mb), "MB", TARGET_RSS_MB),
            at_most("agent RSS after churn".into(), Some(self.rss_after_churn_mb), "MB", TARGET_RSS_MB),
            at_most(
                format!("idle agent CPU ({:.0} s after churn)", self.idle.secs),
                Some(self.idle.cpu_percent),
                "% of a CPU",
                TARGET_IDLE_CPU_PERCENT,
            ),
        ];
        self.loadavg_end = loadavg();
        self.finished_unix_s =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    }

    /// The terminal table: every figure, the targets marked.
    pub fn table(&self) -> String {
        let f = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
        let mb = |b: u64| format!("{:.1}", b as f64 / (1 << 20) as f64);
        let mut rows: Vec<(String, String, String)> = Vec::new();
        let mut row = |metric: String, value: String, target: &str| rows.push((metric, value, target.to_owned()));
        for t in &self.targets {
            let verdict = match t.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "-",
            };
            row(format!("{} ({})", t.metric, t.unit), f(t.value), &format!("{} {verdict}", t.target));
        }
        row("agent start → all entries in FDB (s)".into(), format!("{:.2}", self.load.start_to_loaded_ms as f64 / 1e3), "");
        row("agent CPU during load (% of a CPU)".into(), format!("{:.1}", self.load.cpu_percent), "");
        row("agent CPU during churn (% of a CPU)".into(), format!("{:.1}", self.churn.cpu_percent), "");
        row("change propagation p50 (ms)".into(), f(self.churn.p50_ms), "");
        row("  publish p50 / p99 (ms)".into(), format!("{} / {}", f(self.churn.publish_p50_ms), f(self.churn.publish_p99_ms)), "");
        row("  withdraw p50 / p99 (ms)".into(), format!("{} / {}", f(self.churn.withdraw_p50_ms), f(self.churn.withdraw_p99_ms)), "");
        row("  store txn round trip p50 / p99 (ms)".into(), format!("{} / {}", f(self.churn.txn_p50_ms), f(self.churn.txn_p99_ms)), "");
        row("  max (ms)".into(), f(self.churn.max_ms), "");
        row(
            "changes applied / failed / lost".into(),
            format!("{} / {} / {}", self.churn.applied, self.churn.failed, self.churn.lost),
            "",
        );
        let size = |s: &StoreSize| match (s.in_use_bytes, s.files) {
            (Some(used), _) => format!("{} ({} in use)", mb(s.bytes), mb(used)),
            (None, Some(files)) => format!("{} ({files} files)", mb(s.bytes)),
            _ => mb(s.bytes),
        };
        let what = if self.store == "etcd" { "etcd dbSize" } else { "store directory on disk" };
        row(format!("{what} after load (MB)"), size(&self.store_after_write), "");
        row(format!("{what} after churn (MB)"), size(&self.store_after_churn), "");
        row(
            "writing the cluster (s, endpoints/s)".into(),
            format!("{:.1}, {:.0}", self.write.total_s, self.write.endpoints_per_s),
            "",
        );
        row(
            "FDB entries at the end / expected".into(),
            format!("{} / {}", self.final_fdb_entries, self.final_fdb_expected),
            "",
        );
        let width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
        let mut out = format!(
            "scale on {}: {} nodes × {} endpoints = {} remote endpoints, churn {} changes/s for {} s\n\
             (kernel {}, {} CPUs, load average {} at the start, {} at the end)\n",
            self.store,
            self.nodes,
            self.endpoints_per_node,
            self.endpoints,
            self.churn_rate,
            self.churn_secs,
            self.kernel,
            self.cpus,
            self.loadavg_start,
            self.loadavg_end
        );
        out += &format!("{:<width$}  {:>22}  {}\n", "metric", "value", "target");
        for (metric, value, target) in rows {
            let pad = width - metric.chars().count();
            out += &format!("{metric}{:pad$}  {value:>22}  {target}\n", "");
        }
        out
    }

    /// Writes this report into the JSON document at `path` under its store's name,
    /// keeping the other backend's entry.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let mut doc = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({}));
        let entry = serde_json::to_value(self).map_err(std::io::Error::other)?;
        doc[self.store] = entry;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_string_pretty(&doc).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn targets_and_json_entry_per_store() {
        let mut r = Report::new(&Options::default(), &Plan::new(2, 2).unwrap());
        r.load.initial_sync_ms = Some(2_500);
        r.load.rss_mb = 50.0;
        r.churn.p99_ms = Some(12.0);
        r.idle.cpu_percent = 0.2;
        r.finish();
        let met: Vec<_> = r.targets.iter().map(|t| t.met).collect();
        assert_eq!(met, [Some(false), Some(true), Some(true), Some(true), Some(true)]);
        r.churn.lost = 1;
        r.finish();
        assert_eq!(r.targets[1].met, Some(false), "a lost change misses the propagation target");
        assert!(r.table().contains("MISSED"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.json");
        r.write_json(&path).unwrap();
        r.store = "dir";
        r.write_json(&path).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(doc["etcd"]["endpoints"], 4);
        assert_eq!(doc["dir"]["store"], "dir");
    }
}
