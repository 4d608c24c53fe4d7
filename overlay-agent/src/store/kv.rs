//! The key-value interface both store backends implement: etcd's data model, cut to
//! what the overlay needs. Keys are `/`-separated strings under a prefix, values are
//! bytes (JSON records), and a key may be attached to a lease: when the lease expires
//! or is revoked, its keys are deleted and watchers see the deletes.
//!
//! Writes are transactions ([`Txn`]): conditions on keys (absent, held by a lease, equal
//! to a value) decided by the store itself, then puts and deletes applied all together
//! or not at all. Uniqueness (an IP, a MAC, a node name, a VTEP) is decided this way,
//! never by reading first and writing later.

use std::{fmt, future::Future, time::Duration};

use tokio::sync::mpsc;

use super::StoreError;

/// A lease; [`NO_LEASE`] attaches a key to none (it lives until deleted).
pub type LeaseId = i64;
pub const NO_LEASE: LeaseId = 0;

/// One key and its value.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The lease the key is attached to, or [`NO_LEASE`].
    pub lease: LeaseId,
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {} (lease {:x})", self.key, String::from_utf8_lossy(&self.value), self.lease)
    }
}

/// A condition a [`Txn`] checks before it changes anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// The key does not exist.
    Absent(String),
    /// The key exists and is attached to this lease.
    LeaseIs(String, LeaseId),
    /// The key exists and holds exactly this value.
    ValueIs(String, Vec<u8>),
}

impl Cond {
    pub fn key(&self) -> &str {
        match self {
            Cond::Absent(k) | Cond::LeaseIs(k, _) | Cond::ValueIs(k, _) => k,
        }
    }
}

/// A change applied atomically: every condition holds, then every put and delete is
/// applied; otherwise nothing is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub conds: Vec<Cond>,
    /// (key, value, lease)
    pub puts: Vec<(String, Vec<u8>, LeaseId)>,
    pub deletes: Vec<String>,
}

impl Txn {
    pub fn when(mut self, cond: Cond) -> Self {
        self.conds.push(cond);
        self
    }

    pub fn put(mut self, key: String, value: Vec<u8>, lease: LeaseId) -> Self {
        self.puts.push((key, value, lease));
        self
    }

    pub fn delete(mut self, key: String) -> Self {
        self.deletes.push(key);
        self
    }

    /// This transaction and `other` as one: all conditions of both, then all changes of
    /// both (applied together or not at all).
    pub fn merge(mut self, other: Txn) -> Self {
        self.conds.extend(other.conds);
        self.puts.extend(other.puts);
        self.deletes.extend(other.deletes);
        self
    }
}

/// How a [`Txn`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    Applied,
    /// The first condition (in the order given) that did not hold, and what the key
    /// holds now (`None`: absent). Nothing was changed.
    Failed { cond: Cond, current: Option<KeyValue> },
}

/// What a watch reports, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Everything under the watched prefix, read at one point in time: sent first, and
    /// again after every relist (a compacted revision, a broken watch, an overflowed
    /// event queue). The receiver replaces what it had with this.
    Snapshot(Vec<KeyValue>),
    /// A key was created or changed.
    Put(KeyValue),
    /// A key was deleted (directly, or because its lease ended).
    Delete(String),
}

/// Whether the store can be reached, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// No request has been answered or failed yet.
    Connecting,
    Connected,
    /// Since when (the first failure after the last success).
    Disconnected { since: std::time::SystemTime },
}

/// The operations both backends provide. Methods may be called concurrently; every
/// method is idempotent where that makes sense (deleting an absent key, revoking an
/// expired lease).
pub trait Kv: Clone + Send + Sync + 'static {
    /// Backend and location, for `status` and logs.
    fn describe(&self) -> String;

    /// The server requests go to now, where the backend has several (etcd's members).
    fn member(&self) -> Option<String> {
        None
    }

    /// The server the watch runs on, where the backend has several.
    fn watch_member(&self) -> Option<String> {
        None
    }

    /// Applies `txn` atomically.
    fn txn(&self, txn: Txn) -> impl Future<Output = Result<TxnOutcome, StoreError>> + Send;

    /// One key.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<KeyValue>, StoreError>> + Send;

    /// Every key under `prefix` (a few: for a node's own records, not for the whole
    /// cluster; the watch lists those).
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<KeyValue>, StoreError>> + Send;

    /// A new lease that expires `ttl` after its last keep-alive.
    fn grant(&self, ttl: Duration) -> impl Future<Output = Result<LeaseId, StoreError>> + Send;

    /// Renews `lease`. `Ok(false)`: it has expired (or was revoked) and its keys are gone.
    fn keep_alive(&self, lease: LeaseId) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Ends `lease` now, deleting its keys; fine if it already ended.
    fn revoke(&self, lease: LeaseId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Follows the keys in `[start, end)`: a [`WatchEvent::Snapshot`] first, then every
    /// change, relisting by itself when it must. Runs until the receiver is dropped. The
    /// first snapshot may take a while when the store is unreachable: the task retries
    /// with backoff and reports through [`Kv::connection`].
    fn watch(&self, start: String, end: String) -> mpsc::Receiver<WatchEvent>;

    /// Connection state changes (every request and the watch feed it).
    fn connection(&self) -> tokio::sync::watch::Receiver<Connection>;
}
