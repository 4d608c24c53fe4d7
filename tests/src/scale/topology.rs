//! Where the scale run happens: host h1 runs the one real agent (eBPF mode, the
//! simulated cluster's network in its config, maps sized for every endpoint), host h2
//! is where the simulated nodes' store clients run, and for etcd one member sits on
//! the switched underlay at 198.51.100.250. With the `dir` store, the store is the
//! lab's directory and h2 just hosts the writers.
//!
//! Dropping it stops the agent (SIGTERM), copies its log if asked, then the lab, the
//! etcd member and the namespaces go, as in the tests.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use overlay_agent::api::{Request, Response, StatusInfo, client};
use serde::Serialize;
use tracing::warn;

use super::{
    LOAD_TIMEOUT, Options, ScaleError, StoreKind,
    sim::{NETWORK, Plan, StoreSpec, VNI},
};
use crate::{
    EtcdCluster, EtcdOptions, NetNs, Underlay,
    lab::{Lab, LabOptions, LabStore, NetworkDef},
    pinned::PinnedFdb,
};

/// The agent's host in the lab.
const AGENT: usize = 0;
/// The simulated nodes' host.
const SIMULATOR: usize = 1;

/// How big the store is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreSize {
    /// etcd: the database file (`dbSize`); dir: disk blocks of every file.
    pub bytes: u64,
    /// etcd: the part holding live data (`dbSizeInUse`).
    pub in_use_bytes: Option<u64>,
    /// dir: files (keys, leases, the lock).
    pub files: Option<u64>,
}

/// The lab of one scale run; see the module docs.
pub struct ScaleTopology {
    // Field order is drop order: the lab (agent, hosts) before the etcd member.
    lab: Lab,
    etcd: Option<EtcdCluster>,
    log_copy: Option<PathBuf>,
}

impl ScaleTopology {
    /// Builds the underlay, the store and the agent's config (the agent is not started).
    /// Panics, after tearing down what it made, if the harness fails.
    pub fn build(o: &Options, plan: &Plan) -> ScaleTopology {
        let (underlay, etcd) = match o.store {
            StoreKind::Etcd => {
                let underlay = Underlay::switched();
                let cluster = EtcdCluster::start(&underlay, EtcdOptions::default());
                (underlay, Some(cluster))
            }
            StoreKind::Dir => (Underlay::two_hosts(), None),
        };
        let capacity = plan.capacity();
        let options = LabOptions {
            store: etcd.as_ref().map_or(LabStore::Dir, LabStore::etcd),
            datapath_extra: format!("neigh_capacity = {capacity}\nfdb_capacity = {capacity}\n"),
            start_timeout: LOAD_TIMEOUT,
            ..LabOptions::default()
        };
        let network = NetworkDef { name: NETWORK, vni: VNI, subnet: plan.subnet(), l3: None };
        let mut lab = Lab::with_options(underlay, &[network], options);
        lab.set_mode(AGENT, overlay_agent::config::DatapathMode::Ebpf);
        if let Some(level) = &o.agent_log {
            lab.nodes[AGENT].env.push(("RUST_LOG".into(), level.clone()));
        }
        ScaleTopology { lab, etcd, log_copy: o.agent_log_copy.clone() }
    }

    /// Where the simulated nodes write.
    pub fn store_spec(&self) -> StoreSpec {
        match &self.etcd {
            Some(cluster) => StoreSpec::Etcd(cluster.endpoints()),
            None => StoreSpec::Dir(self.lab.store_dir.clone()),
        }
    }

    /// The namespace the simulated nodes' clients run in.
    pub fn sim_ns(&self) -> &NetNs {
        &self.lab.host(SIMULATOR).ns
    }

    /// Starts the agent (returns once it answers `status`); returns its pid.
    pub fn start_agent(&mut self) -> u32 {
        self.lab.start_agent(AGENT);
        self.lab.nodes[AGENT].agent.as_ref().and_then(|a| a.pid()).expect("the agent was just started")
    }

    /// The agent's `status`.
    pub fn status(&self) -> Result<StatusInfo, ScaleError> {
        let socket = self.lab.nodes[AGENT].state_dir.join(overlay_agent::paths::SOCKET_NAME);
        match client::call(&socket, &Request::Status).map_err(ScaleError::Status)? {
            Response::Status(info) => Ok(info),
            Response::Error { message, .. } => Err(ScaleError::StatusReply(message)),
            other => Err(ScaleError::StatusReply(format!("{other:?}"))),
        }
    }

    /// The agent's pinned FDB map.
    pub fn fdb(&self) -> Result<PinnedFdb, ScaleError> {
        Ok(PinnedFdb::open(&self.lab.nodes[AGENT].bpffs_dir)?)
    }

    /// How big the store is now.
    pub fn store_size(&self) -> StoreSize {
        match &self.etcd {
            Some(cluster) => {
                let status = cluster.endpoint_status();
                let first = status.first().expect("one etcd member answers");
                StoreSize { bytes: first.db_size, in_use_bytes: Some(first.db_size_in_use), files: None }
            }
            None => {
                let (files, bytes) = disk_usage(&self.lab.store_dir);
                StoreSize { bytes, in_use_bytes: None, files: Some(files) }
            }
        }
    }
}

/// Files under `dir` and the disk blocks they take (bytes); unreadable entries are
/// skipped.
fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                files += 1;
                bytes += meta.blocks() * 512;
            }
        }
    }
    (files, bytes)
}

impl Drop for ScaleTopology {
    fn drop(&mut self) {
        let Some(agent) = self.lab.nodes[AGENT].agent.as_mut() else { return };
        agent.stop_within(Duration::from_secs(10));
        if let Some(dest) = &self.log_copy {
            if let Some(dir) = dest.parent()
                && let Err(e) = std::fs::create_dir_all(dir)
            {
                warn!(dir = %dir.display(), error = %e, "creating the directory for the agent's log");
            }
            if let Err(e) = std::fs::copy(agent.log_path(), dest) {
                warn!(from = %agent.log_path().display(), to = %dest.display(), error = %e, "copying the agent's log");
            }
        }
    }
}
