//! The control plane: where nodes publish themselves and their endpoints, and learn
//! everyone else's.
//!
//! Two backends behind one key-value interface with etcd's data model ([`kv::Kv`]):
//! [`etcd`] for clusters, [`dirkv`] (a directory shared by the agents of one machine)
//! for labs and CI. On top of it, the same code for both: the key layout ([`keys`]),
//! typed transactional writes ([`registry`]), and decoding what the watch reports
//! ([`sync`]).

pub mod backoff;
pub mod dirkv;
pub mod etcd;
pub mod ipam;
pub mod keys;
pub mod kv;
pub mod registry;
pub mod subnets;
pub mod sync;

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::{Backend, StoreSettings};
use kv::{Connection, KeyValue, Kv, LeaseId, Txn, TxnOutcome, WatchEvent};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
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
    #[error("{key:?} is not a valid store key: {problem}")]
    InvalidKey { key: String, problem: &'static str },
    #[error("lease {lease:x} does not exist or has expired")]
    LeaseNotFound { lease: kv::LeaseId },
    #[error("{source}; undoing the steps already done failed too: {}", .undo.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Undo {
        #[source]
        source: Box<StoreError>,
        /// Every error met while undoing.
        undo: Vec<StoreError>,
    },
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

/// The backend the config names.
#[derive(Clone)]
pub enum AnyKv {
    Dir(dirkv::DirKv),
    /// Boxed: the client holds one gRPC client per etcd service.
    Etcd(Box<etcd::EtcdKv>),
}

impl AnyKv {
    /// Opens the configured store. An unreachable etcd is not an error here.
    pub async fn open(s: &StoreSettings) -> Result<Self, StoreError> {
        Ok(match &s.backend {
            Backend::Dir { path } => AnyKv::Dir(dirkv::DirKv::open(path).await?),
            Backend::Etcd(e) => AnyKv::Etcd(Box::new(etcd::EtcdKv::connect(e).await?)),
        })
    }
}

macro_rules! each {
    ($self:ident, $k:ident => $e:expr) => {
        match $self {
            AnyKv::Dir($k) => $e,
            AnyKv::Etcd($k) => $e,
        }
    };
}

impl Kv for AnyKv {
    fn describe(&self) -> String {
        each!(self, k => k.describe())
    }

    fn member(&self) -> Option<String> {
        each!(self, k => k.member())
    }

    fn watch_member(&self) -> Option<String> {
        each!(self, k => k.watch_member())
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        each!(self, k => k.txn(txn).await)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        each!(self, k => k.get(key).await)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        each!(self, k => k.list(prefix).await)
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        each!(self, k => k.grant(ttl).await)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<bool, StoreError> {
        each!(self, k => k.keep_alive(lease).await)
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        each!(self, k => k.revoke(lease).await)
    }

    fn watch(&self, start: String, end: String) -> mpsc::Receiver<WatchEvent> {
        each!(self, k => k.watch(start, end))
    }

    fn connection(&self) -> watch::Receiver<Connection> {
        each!(self, k => k.connection())
    }
}
