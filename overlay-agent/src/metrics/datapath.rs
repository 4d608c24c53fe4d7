//! The eBPF datapath's counters as Prometheus counters, read from the pinned stats map
//! at each scrape: `overlay_datapath_packets_total` and `overlay_datapath_bytes_total`,
//! by direction (`from-container`, `from-underlay`), reason (the `map dump` names, see
//! the README's reason table) and verdict (`forwarded`, `passed`, `dropped`). Every
//! reason is exported, zeros included, so rates work from the first scrape.

use std::path::PathBuf;

use overlay_common::Reason;
use prometheus::{
    IntCounterVec, Opts,
    core::{Collector, Desc},
    proto::MetricFamily,
};
use tracing::debug;

use crate::datapath::pinned;

pub struct DatapathCounters {
    maps_dir: PathBuf,
    packets: IntCounterVec,
    bytes: IntCounterVec,
}

const LABELS: &[&str] = &["direction", "reason", "verdict"];

impl DatapathCounters {
    pub fn new(maps_dir: PathBuf) -> Self {
        // The options are fixed and valid: these cannot fail.
        let vec = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help).namespace("overlay"), LABELS).expect("valid metric options")
        };
        DatapathCounters {
            maps_dir,
            packets: vec("datapath_packets_total", "Packets the eBPF programs handled, by direction, reason and verdict."),
            bytes: vec("datapath_bytes_total", "Bytes the eBPF programs handled, by direction, reason and verdict."),
        }
    }
}

impl Collector for DatapathCounters {
    fn desc(&self) -> Vec<&Desc> {
        self.packets.desc().into_iter().chain(self.bytes.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // Values are set, not added: a fresh pair of vectors per scrape, filled from the map.
        let (packets, bytes) = (self.packets.clone(), self.bytes.clone());
        packets.reset();
        bytes.reset();
        match pinned::read_stats(&self.maps_dir) {
            Ok(counters) => {
                for c in counters.iter().filter(|c| c.reason != Reason::UpgradeTestMarker) {
                    let labels = [c.direction.name(), c.reason.name(), pinned::verdict(c.reason)];
                    packets.with_label_values(&labels).inc_by(c.packets());
                    bytes.with_label_values(&labels).inc_by(c.bytes());
                }
            }
            // Not pinned (yet, or any more): no datapath counters in this scrape.
            Err(e) => debug!(error = %e, "reading the datapath counters for metrics"),
        }
        packets.collect().into_iter().chain(bytes.collect()).collect()
    }
}
