//! The `dir` backend of [`Kv`]: every key is a file under one directory shared by the
//! agents of one machine (several agents in network namespaces, the lab, CI). It needs
//! no daemon and costs nothing at rest: watches are driven by inotify, and the only
//! timer is the one for the earliest lease expiry.
//!
//! # Layout
//!
//! ```text
//! <root>/.lock                       flock(2)ed exclusively by every transaction and lease change
//! <root>/.leases/<lease id in hex>   one file per lease
//! <root>/overlay/v1/nodes/h1         the key /overlay/v1/nodes/h1
//! <root>/overlay/v1/nodes/.h1.<pid>.<n>.tmp   a write in progress (renamed onto h1)
//! ```
//!
//! A key starts with `/`; its components are non-empty and do not start with `.` (that
//! rules out `.`, `..` and the store's own files, which readers and watchers skip).
//! Directories are created by the first put below them and removed with their last key.
//! Unlike etcd, a key cannot also be a directory of other keys (`/a` and `/a/b`): a put
//! that would need that fails with an I/O error (`ENOTDIR`, `EISDIR`) and changes nothing.
//!
//! # File format
//!
//! A key's file is one header line, `lease <id in hex>` (`lease 0`: no lease), then the
//! value byte for byte; a lease's file holds its TTL and its expiry (unix time, ms):
//!
//! ```text
//! $ cat <root>/overlay/v1/nodes/h1
//! lease 3f2a9c0d1e4b5a67
//! {"node":"h1","vtep":"198.51.100.1"}
//! $ cat <root>/.leases/3f2a9c0d1e4b5a67
//! ttl_ms 10000
//! expires_ms 1767225600000
//! ```
//!
//! Every write creates a temporary file whose name starts with `.` in the key's
//! directory and renames it into place, so a reader sees the old or the new file, never
//! half of one.
//!
//! # Transactions
//!
//! [`Kv::txn`] takes the exclusive lock on `.lock` (on a blocking thread), checks every
//! condition in order, then writes the puts' temporary files (creating directories),
//! renames them into place and unlinks the deletes, then unlocks. A key attached to a
//! lease that expired or no longer exists counts as absent, and its file is removed
//! there and then. A failed condition returns [`TxnOutcome::Failed`] and changes
//! nothing; a put with a lease that is not alive fails with
//! [`StoreError::LeaseNotFound`]. If a step fails once files were renamed, the steps
//! done are undone in reverse (previous contents rewritten) and every error is returned.
//!
//! # Leases
//!
//! [`Kv::grant`] picks a random positive id and writes `.leases/<id>` with the TTL and
//! `now + ttl`. [`Kv::keep_alive`] (under the lock) rewrites the expiry if the lease is
//! still alive, and otherwise removes it and its keys and answers `false`. A lease is
//! alive while its file exists and its expiry is in the future; all agents share the
//! machine's clock. Readers ([`Kv::get`], [`Kv::list`], watches) treat keys of a dead
//! lease as absent; a lease file that looks expired is re-read under the lock, so a
//! renewal racing the expiry is decided one way for everyone. Files of dead leases are
//! removed by the watchers (the first to remove the lease file also scans the tree for
//! its keys), by [`Kv::keep_alive`] and [`Kv::revoke`] (which scan the tree), and by
//! transactions whose conditions meet them.
//!
//! # Watches
//!
//! A range is `[start, end)`, compared byte-wise, with etcd's conventions: `end` `"\0"`
//! has no upper bound, an empty `end` is the single key `start`.
//! [`Kv::watch`] spawns a task with its own inotify instance. It watches `.leases/` and
//! every directory that can hold a key of the range (adding each watch before listing
//! the directory, so a file created in between is not missed, and following directories
//! created later the same way), sends a [`WatchEvent::Snapshot`] of the live keys, then
//! re-reads what each batch of events names and sends `Put` when a key's (value, lease)
//! differs from what it last reported (it keeps a 64-bit hash per key, not the value)
//! and `Delete` for reported keys that went. It keeps every live lease's expiry, renewed
//! by the events on `.leases/`, and one timer for the earliest: when a lease ends, the
//! keys it had reported for it are deleted and the files garbage-collected. An inotify
//! queue overflow relists and sends a new snapshot. Corrupt or unreadable files are
//! logged and left out. The task ends when the receiver is dropped; if inotify fails
//! (e.g. `max_user_watches` reached) it logs, waits with backoff and starts over with a
//! new snapshot.
//!
//! # Limits
//!
//! - One machine only: `flock` and inotify do not work across NFS and the like, and
//!   lease expiry relies on a shared clock.
//! - A transaction is atomic for writers (the lock) but readers and watchers see its
//!   files change one at a time; a snapshot is read one file at a time, not at one
//!   point in time.
//! - No fsync: a crash of the machine (not of an agent) may lose recent writes.
//! - Temporary files of a writer that crashed mid-write stay (ignored by everyone).
//! - A key file or lease file edited by hand into something unreadable is logged and
//!   left out; the keys of a lease whose file was unreadable reappear when they change
//!   or the watch relists.
//! - Each watch holds one inotify instance (`fs.inotify.max_user_instances`, 128 per
//!   user by default) and one inotify watch per directory of its range.
//! - [`Kv::revoke`] and [`Kv::keep_alive`] of a dead lease scan the whole tree, as
//!   does the first snapshot of a watch and a [`Kv::list`] of its range: about a second
//!   per 250,000 keys with a warm page cache (a directory of many keys is read by up
//!   to 4 threads, each file with `openat` from its directory). A watch keeps about
//!   70 bytes per key (a 64-bit hash, the lease and the name).


mod files;
mod follow;
mod lease;
mod scan;
mod txn;
#[cfg(test)]
mod tests;

use std::{
    fs::{self, OpenOptions},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::{mpsc, watch};

use super::{
    StoreError,
    kv::{Connection, KeyValue, Kv, LeaseId, Txn, TxnOutcome, WatchEvent},
};

use files::*;
use follow::*;
use lease::*;
use scan::*;
use txn::*;

/// The lock file every transaction and lease change holds (exclusive `flock`).
pub const LOCK_FILE: &str = ".lock";
/// The directory of lease files.
pub const LEASES_DIR: &str = ".leases";
/// Events a watch may queue before it waits for the receiver.
const WATCH_CHANNEL: usize = 1024;
/// inotify read buffer (an event is 16 bytes plus its name).
const EVENT_BUFFER: usize = 64 << 10;
/// Events handled together (their files are read in one blocking call).
const MAX_BATCH: usize = 4096;
/// A directory with this many keys is read by several threads...
const PARALLEL_READ_MIN: usize = 2048;
/// ...at most this many.
const PARALLEL_READERS: usize = 4;

/// The embedded backend: a directory on this machine. Cheap to clone.
#[derive(Clone)]
pub struct DirKv {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    /// Always [`Connection::Connected`]: a local directory is always there.
    conn: watch::Sender<Connection>,
}

impl DirKv {
    /// Opens the store at `root`, creating the directory, `.leases/` and `.lock` if
    /// needed.
    pub async fn open(root: &Path) -> Result<Self, StoreError> {
        let dir = root.to_owned();
        blocking(root, move || {
            let leases = dir.join(LEASES_DIR);
            fs::create_dir_all(&leases).map_err(io_err(&leases))?;
            let lock = dir.join(LOCK_FILE);
            OpenOptions::new().write(true).create(true).truncate(false).open(&lock).map_err(io_err(&lock))?;
            Ok(())
        })
        .await?;
        let (conn, _) = watch::channel(Connection::Connected);
        Ok(Self { inner: Arc::new(Inner { root: root.to_owned(), conn }) })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Runs `f` with the root on a blocking thread.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Path) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        blocking(&self.inner.root, move || f(&inner.root)).await
    }
}

impl Kv for DirKv {
    fn describe(&self) -> String {
        format!("dir {}", self.inner.root.display())
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.run(move |root| apply_txn(root, txn)).await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.run(move |root| {
            let path = key_path(root, &key)?;
            let Some(record) = read_record(&path)? else { return Ok(None) };
            let mut leases = Leases::new(root, Held::No, OnCorrupt::Fail);
            Ok(leases.live(record.lease)?.then_some(KeyValue { key, value: record.value, lease: record.lease }))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let range = Range::prefix(prefix);
        self.run(move |root| {
            let mut leases = Leases::new(root, Held::No, OnCorrupt::Skip);
            let mut out = Vec::new();
            walk(root, "", &range, None, &mut |dir| {
                for (name, record) in dir.files {
                    if leases.live(record.lease)? {
                        out.push(KeyValue {
                            key: child_key(&dir.key, &name),
                            value: record.value,
                            lease: record.lease,
                        });
                    }
                }
                Ok(())
            })?;
            out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.run(move |root| grant_lease(root, ttl)).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<bool, StoreError> {
        self.run(move |root| keep_lease_alive(root, lease)).await
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.run(move |root| gc_lease(root, lease, &[], Gc::Revoke).map(drop)).await
    }

    fn watch(&self, start: String, end: String) -> mpsc::Receiver<WatchEvent> {
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        let range = Arc::new(Range::new(&start, &end));
        let root: Arc<Path> = Arc::from(self.inner.root.as_path());
        tokio::spawn(follow(root, range, tx));
        rx
    }

    fn connection(&self) -> watch::Receiver<Connection> {
        self.inner.conn.subscribe()
    }
}
