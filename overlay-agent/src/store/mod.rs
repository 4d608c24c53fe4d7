//! The control plane: where nodes publish their endpoints and learn everyone else's.
//!
//! A [`Store`] holds one [`NodeRecord`] per node. Each agent publishes its own record
//! (atomically replacing the previous one) and watches the full set; the agent
//! reconciles its datapath with every new snapshot, so a late starter learns
//! everything already there and removals propagate like additions.

pub mod backoff;
pub mod dir;
pub mod dirkv;
pub mod etcd;
pub mod keys;
pub mod kv;

use std::{collections::BTreeMap, sync::Arc};

use tokio::sync::watch;

use crate::model::{NodeRecord, StaticEndpoint};

/// Everything in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreView {
    /// Node records, by node name.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Static endpoints, by [`StaticEndpoint::key`].
    pub statics: BTreeMap<String, StaticEndpoint>,
}

pub type Snapshot = Arc<StoreView>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store directory {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode the record {node}: {source}")]
    Encode {
        node: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("locking the store directory ({path}): {source}")]
    Lock {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("watching the store directory {path} (inotify): {source}")]
    Inotify {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store record {path} is not a valid record file: {problem}")]
    Corrupt { path: std::path::PathBuf, problem: String },
    #[error("etcd: {op}: {source}")]
    Etcd {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd: {op}: the server closed the stream without answering")]
    Unanswered { op: &'static str },
    #[error("etcd canceled the watch: {reason}")]
    WatchCanceled { reason: String },
}

impl StoreError {
    /// Whether retrying may help: the store is unreachable, has no leader or timed out,
    /// as opposed to a request it refused.
    pub fn is_transient(&self) -> bool {
        use etcd_client::Error as E;
        use tonic::Code;
        match self {
            StoreError::Etcd { source, .. } => match source {
                E::GRpcStatus(s) => matches!(
                    s.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Aborted | Code::Cancelled
                ),
                E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => true,
                _ => false,
            },
            StoreError::Unanswered { .. } | StoreError::WatchCanceled { .. } => true,
            _ => false,
        }
    }
}

#[expect(async_fn_in_trait, reason = "used with static dispatch on the agent's own runtime")]
pub trait Store {
    /// Human-readable description for `status` (backend and location).
    fn describe(&self) -> String;
    /// Publish (create or replace) this node's record.
    async fn publish(&self, record: &NodeRecord) -> Result<(), StoreError>;
    /// Remove a node's record; absent is fine.
    async fn withdraw(&self, node: &str) -> Result<(), StoreError>;
    /// Create or replace a static endpoint.
    async fn put_static(&self, endpoint: &StaticEndpoint) -> Result<(), StoreError>;
    /// Remove a static endpoint by key; absent is fine.
    async fn del_static(&self, key: &str) -> Result<(), StoreError>;
    /// The latest snapshot of all records, updated as they change; this store's own
    /// writes are in it as soon as they return.
    fn watch(&self) -> watch::Receiver<Snapshot>;
}
