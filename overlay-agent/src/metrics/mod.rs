//! Prometheus metrics (`[metrics] listen`): `GET /metrics` in the text exposition format
//! (version 0.0.4, what `promtool check metrics` validates), served by the agent.
//!
//! Two kinds of values:
//! - the datapath's per-reason packet and byte counters, read from the pinned stats map
//!   at every scrape ([`datapath::DatapathCounters`]): nothing is copied on the packet
//!   path, and the values are the kernel's even across agent restarts;
//! - the agent's own: endpoint operations and their latency, store apply latency and
//!   errors, map fill levels, the store connection, which the agent updates as it works.
//!
//! The `prometheus` crate (the text format with `# HELP`/`# TYPE`, registries, process
//! metrics) rather than hand-written output: its encoder is what Prometheus itself
//! parses.

mod datapath;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tokio::{net::TcpListener, sync::oneshot};
use tracing::{info, warn};

use crate::datapath::TableUsage;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot serve metrics on {addr} ([metrics] listen): {source}; pick a free address or remove the setting")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("registering metric {name}: {source}")]
    Register {
        name: &'static str,
        #[source]
        source: prometheus::Error,
    },
}

/// Latency buckets (seconds) for endpoint operations and store applies: from a
/// millisecond (a warm add) to ten seconds (a store failing over).
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The agent's metrics. Cheap to update (atomics); shared with the HTTP server.
pub struct Metrics {
    registry: Registry,
    endpoint_ops: IntCounterVec,
    endpoint_seconds: HistogramVec,
    store_apply_seconds: Histogram,
    store_events: IntCounter,
    store_errors: IntCounterVec,
    store_connected: IntGauge,
    map_entries: IntGaugeVec,
    map_capacity: IntGaugeVec,
    map_not_installed: IntGaugeVec,
    local_endpoints: IntGauge,
    datapath_info: IntGaugeVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    name: &'static str,
    metric: Result<T, prometheus::Error>,
) -> Result<T, MetricsError> {
    let metric = metric.map_err(|source| MetricsError::Register { name, source })?;
    registry.register(Box::new(metric.clone())).map_err(|source| MetricsError::Register { name, source })?;
    Ok(metric)
}

impl Metrics {
    /// The metrics of one agent; `maps_dir`: the pinned maps of its eBPF datapath (its
    /// counters are exported while the stats map is pinned there).
    pub fn new(maps_dir: Option<PathBuf>) -> Result<Arc<Self>, MetricsError> {
        let registry = Registry::new();
        let r = &registry;
        // The agent's metrics are `overlay_*`; the process collector's keep their
        // standard `process_*` names.
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace("overlay");
        let latency = |name: &str, help: &str| {
            HistogramOpts::new(name, help).namespace("overlay").buckets(LATENCY_BUCKETS.to_vec())
        };
        let m = Metrics {
            endpoint_ops: register(r, "endpoint_operations_total", IntCounterVec::new(
                opts("endpoint_operations_total", "Endpoint add and delete requests, by result."),
                &["op", "result"],
            ))?,
            endpoint_seconds: register(r, "endpoint_operation_duration_seconds", HistogramVec::new(
                latency("endpoint_operation_duration_seconds", "Time to handle an endpoint add or delete request."),
                &["op"],
            ))?,
            store_apply_seconds: register(r, "store_apply_duration_seconds", Histogram::with_opts(latency(
                "store_apply_duration_seconds",
                "Time from a batch of store events received to the datapath updated.",
            )))?,
            store_events: register(r, "store_events_applied_total", IntCounter::with_opts(opts(
                "store_events_applied_total",
                "Store events (puts, deletes, full lists) applied to the datapath.",
            )))?,
            store_errors: register(r, "store_errors_total", IntCounterVec::new(
                opts("store_errors_total", "Failed store operations: registration, applying events, writes."),
                &["op"],
            ))?,
            store_connected: register(r, "store_connected", IntGauge::with_opts(opts(
                "store_connected",
                "1 while the store (etcd or dir) is reachable.",
            )))?,
            map_entries: register(r, "map_entries", IntGaugeVec::new(
                opts("map_entries", "Entries in a datapath table (eBPF map or kernel table)."),
                &["map"],
            ))?,
            map_capacity: register(r, "map_capacity", IntGaugeVec::new(
                opts("map_capacity", "Capacity of a datapath table (eBPF maps only)."),
                &["map"],
            ))?,
            map_not_installed: register(r, "map_not_installed", IntGaugeVec::new(
                opts("map_not_installed", "Entries that should be in a table but did not fit."),
                &["map"],
            ))?,
            local_endpoints: register(r, "local_endpoints", IntGauge::with_opts(opts(
                "local_endpoints",
                "Containers plugged in on this host.",
            )))?,
            datapath_info: register(r, "datapath_info", IntGaugeVec::new(
                opts("datapath_info", "The datapath in use (value 1), by mode and node."),
                &["mode", "node"],
            ))?,
            registry,
        };
        if let Some(dir) = maps_dir {
            m.registry
                .register(Box::new(datapath::DatapathCounters::new(dir)))
                .map_err(|source| MetricsError::Register { name: "datapath_packets_total", source })?;
        }
        let process = prometheus::process_collector::ProcessCollector::for_self();
        m.registry.register(Box::new(process)).map_err(|source| MetricsError::Register { name: "process", source })?;
        Ok(Arc::new(m))
    }

    /// The datapath mode in use (`ebpf` or `kernel`).
    pub fn set_datapath(&self, mode: &str, node: &str) {
        self.datapath_info.reset();
        self.datapath_info.with_label_values(&[mode, node]).set(1);
    }

    /// One endpoint add or delete and how long it took.
    pub fn endpoint_op(&self, op: &str, ok: bool, took: Duration) {
        self.endpoint_ops.with_label_values(&[op, if ok { "ok" } else { "error" }]).inc();
        self.endpoint_seconds.with_label_values(&[op]).observe(took.as_secs_f64());
    }

    /// A batch of `events` store events applied (or not) in `took`.
    pub fn store_applied(&self, events: usize, ok: bool, took: Duration) {
        self.store_apply_seconds.observe(took.as_secs_f64());
        self.store_events.inc_by(events as u64);
        if !ok {
            self.store_error("apply");
        }
    }

    /// A failed store operation (`register`, `apply`, `write`).
    pub fn store_error(&self, op: &str) {
        self.store_errors.with_label_values(&[op]).inc();
    }

    pub fn set_store_connected(&self, connected: bool) {
        self.store_connected.set(i64::from(connected));
    }

    /// The datapath's tables as they are now, and the local endpoint count.
    pub fn set_tables(&self, usage: &[TableUsage], local: usize) {
        for t in usage {
            self.map_entries.with_label_values(&[&t.name]).set(t.entries as i64);
            self.map_not_installed.with_label_values(&[&t.name]).set(t.not_installed as i64);
            if let Some(cap) = t.capacity {
                self.map_capacity.with_label_values(&[&t.name]).set(cap as i64);
            }
        }
        self.local_endpoints.set(local as i64);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            warn!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Binds `addr` (before the agent reports itself running, so a taken port is a start
/// error that says so).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `GET /metrics` until `stop` fires.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: oneshot::Receiver<()>) {
    use axum::{Router, http::header, response::IntoResponse, routing::get};
    let addr = listener.local_addr().ok();
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = Arc::clone(&metrics);
            async move { ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], metrics.render()).into_response() }
        }),
    );
    info!(listen = ?addr, "serving Prometheus metrics at /metrics");
    let served = axum::serve(listener, app).with_graceful_shutdown(async {
        let _ = stop.await;
    });
    if let Err(e) = served.await {
        warn!(error = %e, "the metrics server failed");
    }
}
