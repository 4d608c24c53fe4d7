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
//! - No fsync: a crash of the machine may lose recent writes (never half a file).
//! - Temporary files of a writer that crashed mid-write stay (ignored by everyone).
//! - [`Kv::revoke`] and [`Kv::keep_alive`] of a dead lease scan the whole tree (about
//!   a second per 250,000 keys).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fs::{self, File, OpenOptions},
    hash::{DefaultHasher, Hash, Hasher},
    io::{self, ErrorKind, Read, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::{FutureExt, StreamExt};
use inotify::{EventMask, EventOwned, Inotify, WatchDescriptor, WatchMask, Watches};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::{
    StoreError,
    backoff::Backoff,
    kv::{Cond, Connection, KeyValue, Kv, LeaseId, NO_LEASE, Txn, TxnOutcome, WatchEvent},
};

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
                        out.push(KeyValue { key: child_key(&dir.key, &name), value: record.value, lease: record.lease });
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

// ---------------------------------------------------------------------------------
// Keys, ranges and file formats

fn invalid(key: &str, problem: &'static str) -> StoreError {
    StoreError::InvalidKey { key: key.to_owned(), problem }
}

/// The file of `key`, after checking that the key is valid.
fn key_path(root: &Path, key: &str) -> Result<PathBuf, StoreError> {
    let Some(rest) = key.strip_prefix('/') else { return Err(invalid(key, "it does not start with /")) };
    if key.contains('\0') {
        return Err(invalid(key, "it contains a NUL byte"));
    }
    for component in rest.split('/') {
        if component.is_empty() {
            return Err(invalid(key, "it has an empty component"));
        }
        if component.starts_with('.') {
            return Err(invalid(key, "a component starts with . (reserved for the store's own files)"));
        }
    }
    Ok(root.join(rest))
}

/// The directory of the keys `<dir_key>/...` (`""`: the root).
fn dir_path(root: &Path, dir_key: &str) -> PathBuf {
    match dir_key.strip_prefix('/') {
        Some(rest) => root.join(rest),
        None => root.to_owned(),
    }
}

fn child_key(dir_key: &str, name: &str) -> String {
    format!("{dir_key}/{name}")
}

fn lease_path(root: &Path, lease: LeaseId) -> PathBuf {
    root.join(LEASES_DIR).join(format!("{lease:x}"))
}

fn parse_hex(s: &str) -> Option<LeaseId> {
    // Two's complement, as `{:x}` prints an i64.
    u64::from_str_radix(s, 16).ok().map(|id| id as LeaseId)
}

/// Keys in `[start, end)`, compared byte-wise; `end == None`: no upper bound.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Range {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Range {
    /// etcd's conventions: `end` empty is the single key `start`, `"\0"` is everything
    /// from `start` on.
    fn new(start: &str, end: &str) -> Self {
        let end = match end {
            "" => Some([start.as_bytes(), b"\0"].concat()),
            "\0" => None,
            end => Some(end.as_bytes().to_vec()),
        };
        Self { start: start.as_bytes().to_vec(), end }
    }

    /// Every key starting with `prefix`.
    fn prefix(prefix: &str) -> Self {
        let mut end = prefix.as_bytes().to_vec();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return Self { start: prefix.as_bytes().to_vec(), end: Some(end) };
            }
        }
        Self { start: prefix.as_bytes().to_vec(), end: None }
    }

    fn below_end(&self, key: &[u8]) -> bool {
        self.end.as_deref().is_none_or(|end| key < end)
    }

    fn contains(&self, key: &str) -> bool {
        key.as_bytes() >= self.start.as_slice() && self.below_end(key.as_bytes())
    }

    /// Whether the directory of `<dir_key>/...` may hold a key in range: its keys all lie
    /// in `[dir_key + "/", dir_key + "0")` (`'0'` follows `'/'`).
    fn holds_dir(&self, dir_key: &str) -> bool {
        let low = [dir_key.as_bytes(), b"/"].concat();
        let high = [dir_key.as_bytes(), b"0"].concat();
        self.below_end(&low) && self.start < high
    }
}

/// A key's file, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    lease: LeaseId,
    value: Vec<u8>,
}

fn encode_record(lease: LeaseId, value: &[u8]) -> Vec<u8> {
    let mut out = format!("lease {lease:x}\n").into_bytes();
    out.extend_from_slice(value);
    out
}

fn decode_record(mut bytes: Vec<u8>) -> Result<Record, &'static str> {
    let newline = bytes.iter().position(|&b| b == b'\n').ok_or("no header line (`lease <id in hex>`)")?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| "the header line is not UTF-8")?;
    let hex = header.strip_prefix("lease ").ok_or("the header line is not `lease <id in hex>`")?;
    let lease = parse_hex(hex).ok_or("the lease id is not hexadecimal")?;
    bytes.drain(..=newline);
    Ok(Record { lease, value: bytes })
}

/// A lease's file, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LeaseFile {
    ttl_ms: u64,
    expires_ms: u64,
}

fn encode_lease(lease: LeaseFile) -> Vec<u8> {
    format!("ttl_ms {}\nexpires_ms {}\n", lease.ttl_ms, lease.expires_ms).into_bytes()
}

fn decode_lease(bytes: &[u8]) -> Result<LeaseFile, &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8")?;
    let (mut ttl_ms, mut expires_ms) = (None, None);
    for line in text.lines() {
        let (name, value) = line.split_once(' ').ok_or("a line is not `<name> <value>`")?;
        let value: u64 = value.trim().parse().map_err(|_| "a value is not a number")?;
        match name {
            "ttl_ms" => ttl_ms = Some(value),
            "expires_ms" => expires_ms = Some(value),
            _ => {}
        }
    }
    Ok(LeaseFile { ttl_ms: ttl_ms.ok_or("no ttl_ms line")?, expires_ms: expires_ms.ok_or("no expires_ms line")? })
}

fn fingerprint(record: &Record) -> u64 {
    let mut hasher = DefaultHasher::new();
    record.lease.hash(&mut hasher);
    record.value.hash(&mut hasher);
    hasher.finish()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------------
// File helpers (blocking)

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// The file is not there: missing, a parent is a file, or it is a directory (a
/// directory is never a key).
fn is_absent(e: &io::Error) -> bool {
    e.kind() == ErrorKind::NotFound || matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::EISDIR))
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match read_small(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if is_absent(&e) => Ok(None),
        Err(source) => Err(StoreError::Io { path: path.to_owned(), source }),
    }
}

/// Reads a small file whole: `O_NOATIME` (a file read for the first time since it was
/// written would otherwise get its access time updated, dirtying its inode: a sixth of
/// the time to list 250,000 fresh keys on ext4), and no `statx`/`lseek` for a size hint
/// as `fs::read` makes (records are a few hundred bytes).
fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = match OpenOptions::new().read(true).custom_flags(libc::O_NOATIME).open(path) {
        // O_NOATIME needs the file's owner (or CAP_FOWNER).
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => File::open(path)?,
        other => other?,
    };
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Directories with more key files than this are read by several threads.
const PARALLEL_READ_MIN: usize = 4_096;

/// Reads the key files `names` of `dir` (leaving out bad ones, logged); by up to four
/// threads when there are many (one directory can hold every endpoint of a network).
fn read_records(dir: &Path, names: Vec<String>) -> Vec<(String, Record)> {
    let read = |name: &String| Some((name.clone(), read_record_lenient(&dir.join(name))?));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    if threads < 2 || names.len() < PARALLEL_READ_MIN {
        return names.iter().filter_map(read).collect();
    }
    let per_thread = names.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> =
            names.chunks(per_thread).map(|part| scope.spawn(move || part.iter().filter_map(read).collect::<Vec<_>>())).collect();
        parts
            .into_iter()
            .flat_map(|part| part.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    })
}

fn read_record(path: &Path) -> Result<Option<Record>, StoreError> {
    match read_opt(path)? {
        None => Ok(None),
        Some(bytes) => decode_record(bytes)
            .map(Some)
            .map_err(|problem| StoreError::Corrupt { path: path.to_owned(), problem: problem.to_owned() }),
    }
}

/// [`read_record`] for scans and watches: a bad file is logged and left out.
fn read_record_lenient(path: &Path) -> Option<Record> {
    match read_record(path) {
        Ok(record) => record,
        Err(error) => {
            warn!(%error, "leaving out a store file");
            None
        }
    }
}

fn read_lease(path: &Path) -> Result<Option<LeaseFile>, StoreError> {
    match read_opt(path)? {
        None => Ok(None),
        Some(bytes) => decode_lease(&bytes)
            .map(Some)
            .map_err(|problem| StoreError::Corrupt { path: path.to_owned(), problem: problem.to_owned() }),
    }
}

/// Removes a file; `false` if it was not there.
fn remove_opt(path: &Path) -> Result<bool, StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if is_absent(&e) => Ok(false),
        Err(source) => Err(StoreError::Io { path: path.to_owned(), source }),
    }
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to a new temporary file next to `path` (a name starting with `.`).
fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf, StoreError> {
    let name = path.file_name().map_or_else(Default::default, |n| n.to_string_lossy());
    let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{name}.{}.{seq}.tmp", std::process::id()));
    let written = OpenOptions::new().write(true).create_new(true).open(&tmp).and_then(|mut f| f.write_all(bytes));
    match written {
        Ok(()) => Ok(tmp),
        Err(source) => {
            if let Err(e) = remove_opt(&tmp) {
                warn!(error = %e, "cannot remove a temporary file");
            }
            Err(StoreError::Io { path: tmp, source })
        }
    }
}

/// Replaces `path` with `bytes` atomically.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = write_temp(path, bytes)?;
    match fs::rename(&tmp, path) {
        Ok(()) => Ok(()),
        Err(source) => {
            if let Err(e) = remove_opt(&tmp) {
                warn!(error = %e, "cannot remove a temporary file");
            }
            Err(StoreError::Io { path: path.to_owned(), source })
        }
    }
}

/// Removes the empty directories from `dir` up to (not including) `root`.
fn prune_dirs(root: &Path, dir: Option<&Path>) {
    let mut dir = dir;
    while let Some(d) = dir.filter(|d| *d != root && d.starts_with(root)) {
        match fs::remove_dir(d) {
            Ok(()) => dir = d.parent(),
            Err(e) if is_absent(&e) || matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => return,
            Err(error) => {
                warn!(path = %d.display(), %error, "cannot remove an empty store directory");
                return;
            }
        }
    }
}

/// The store's lock, held until dropped. Blocks: call on a blocking thread only.
fn lock(root: &Path) -> Result<Flock<File>, StoreError> {
    let path = root.join(LOCK_FILE);
    let lock_err = |source| StoreError::Lock { path: path.clone(), source };
    // Read-only when it exists: closing it then queues no inotify event for watchers.
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            OpenOptions::new().write(true).create(true).truncate(false).open(&path).map_err(lock_err)?
        }
        Err(e) => return Err(lock_err(e)),
    };
    loop {
        match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(locked) => return Ok(locked),
            Err((f, Errno::EINTR)) => file = f,
            Err((_, errno)) => return Err(lock_err(errno.into())),
        }
    }
}

/// Runs blocking work off the runtime's thread; a panic there is resumed here.
async fn blocking<T: Send + 'static>(
    root: &Path,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StoreError::Io { path: root.to_owned(), source: io::Error::other(e) }),
    }
}

// ---------------------------------------------------------------------------------
// Leases

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseState {
    Alive { expires_ms: u64 },
    /// Expired or gone: it never comes back.
    Dead,
    /// Its file is corrupt (only with [`OnCorrupt::Skip`]): its keys are left out, not
    /// collected.
    Unreadable,
}

/// Whether the caller holds the store's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Yes,
    No,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnCorrupt {
    Fail,
    /// Log and report [`LeaseState::Unreadable`].
    Skip,
}

/// Lease states read once per operation.
struct Leases<'a> {
    root: &'a Path,
    held: Held,
    on_corrupt: OnCorrupt,
    seen: HashMap<LeaseId, LeaseState>,
}

impl<'a> Leases<'a> {
    fn new(root: &'a Path, held: Held, on_corrupt: OnCorrupt) -> Self {
        Self { root, held, on_corrupt, seen: HashMap::new() }
    }

    /// Whether a key attached to `lease` is live.
    fn live(&mut self, lease: LeaseId) -> Result<bool, StoreError> {
        Ok(lease == NO_LEASE || matches!(self.state(lease)?, LeaseState::Alive { .. }))
    }

    fn state(&mut self, lease: LeaseId) -> Result<LeaseState, StoreError> {
        if let Some(state) = self.seen.get(&lease) {
            return Ok(*state);
        }
        let state = self.read(lease)?;
        self.seen.insert(lease, state);
        Ok(state)
    }

    fn read(&self, lease: LeaseId) -> Result<LeaseState, StoreError> {
        let path = lease_path(self.root, lease);
        let state = |file: Option<LeaseFile>| match file {
            Some(f) if f.expires_ms > now_ms() => LeaseState::Alive { expires_ms: f.expires_ms },
            _ => LeaseState::Dead,
        };
        let first = match read_lease(&path) {
            Ok(file) => file,
            Err(error @ StoreError::Corrupt { .. }) if self.on_corrupt == OnCorrupt::Skip => {
                warn!(%error, "leaving out the keys of an unreadable lease");
                return Ok(LeaseState::Unreadable);
            }
            Err(e) => return Err(e),
        };
        match (first, self.held) {
            // Expired but still there: a keep-alive may be renewing it right now.
            // Decide under the lock, as keep_alive does.
            (Some(_), Held::No) if state(first) == LeaseState::Dead => {
                let _lock = lock(self.root)?;
                Self { root: self.root, held: Held::Yes, on_corrupt: self.on_corrupt, seen: HashMap::new() }.read(lease)
            }
            _ => Ok(state(first)),
        }
    }
}

fn random_lease() -> Result<LeaseId, StoreError> {
    const URANDOM: &str = "/dev/urandom";
    let mut bytes = [0u8; 8];
    File::open(URANDOM).and_then(|mut f| f.read_exact(&mut bytes)).map_err(io_err(Path::new(URANDOM)))?;
    Ok((u64::from_ne_bytes(bytes) >> 1) as LeaseId)
}

fn grant_lease(root: &Path, ttl: Duration) -> Result<LeaseId, StoreError> {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    let _lock = lock(root)?;
    loop {
        let lease = random_lease()?;
        let path = lease_path(root, lease);
        if lease == NO_LEASE || path.symlink_metadata().is_ok() {
            continue;
        }
        write_atomic(&path, &encode_lease(LeaseFile { ttl_ms, expires_ms: now_ms().saturating_add(ttl_ms) }))?;
        return Ok(lease);
    }
}

fn keep_lease_alive(root: &Path, lease: LeaseId) -> Result<bool, StoreError> {
    let path = lease_path(root, lease);
    {
        let _lock = lock(root)?;
        match read_lease(&path)? {
            Some(file) if file.expires_ms > now_ms() => {
                let renewed = LeaseFile { expires_ms: now_ms().saturating_add(file.ttl_ms), ..file };
                write_atomic(&path, &encode_lease(renewed))?;
                return Ok(true);
            }
            Some(_) => {
                remove_opt(&path)?;
            }
            None => {}
        }
    }
    collect_lease_keys(root, lease)?;
    Ok(false)
}

/// How [`gc_lease`] goes about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gc {
    /// Only if the lease is dead; scan the tree only if this call removed its file.
    IfDead,
    /// Whatever its state; always scan the tree.
    Revoke,
}

/// Removes a dead (or revoked) lease's file and keys: `known` under the lock at once,
/// the rest after a scan of the tree. Idempotent; agents may race to do it.
fn gc_lease(root: &Path, lease: LeaseId, known: &[String], how: Gc) -> Result<LeaseState, StoreError> {
    let removed = {
        let _lock = lock(root)?;
        let path = lease_path(root, lease);
        let file = match read_lease(&path) {
            Err(StoreError::Corrupt { .. }) if how == Gc::Revoke => Some(LeaseFile { ttl_ms: 0, expires_ms: 0 }),
            other => other?,
        };
        let removed = match file {
            Some(f) if how == Gc::IfDead && f.expires_ms > now_ms() => {
                return Ok(LeaseState::Alive { expires_ms: f.expires_ms });
            }
            Some(_) => remove_opt(&path)?,
            None => false,
        };
        for key in known {
            collect_key(root, key, lease)?;
        }
        removed
    };
    if removed || how == Gc::Revoke {
        collect_lease_keys(root, lease)?;
    }
    Ok(LeaseState::Dead)
}

/// Finds every key of `lease` (a dead one: no key can be attached to it any more) and
/// removes them under the lock.
fn collect_lease_keys(root: &Path, lease: LeaseId) -> Result<(), StoreError> {
    let mut keys = Vec::new();
    walk(root, "", &Range::new("", "\0"), None, &mut |dir| {
        keys.extend(dir.files.iter().filter(|(_, r)| r.lease == lease).map(|(name, _)| child_key(&dir.key, name)));
        Ok(())
    })?;
    if !keys.is_empty() {
        let _lock = lock(root)?;
        for key in &keys {
            collect_key(root, key, lease)?;
        }
    }
    Ok(())
}

/// Removes `key` if it is still attached to the dead `lease`. The caller holds the lock.
fn collect_key(root: &Path, key: &str, lease: LeaseId) -> Result<(), StoreError> {
    let path = key_path(root, key)?;
    match read_record(&path) {
        Ok(Some(record)) if record.lease == lease => {
            remove_opt(&path)?;
            prune_dirs(root, path.parent());
        }
        Ok(_) => {}
        Err(error @ StoreError::Corrupt { .. }) => debug!(%error, "not collecting a corrupt file"),
        Err(e) => return Err(e),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Transactions

fn holds(cond: &Cond, current: Option<&KeyValue>) -> bool {
    match (cond, current) {
        (Cond::Absent(_), current) => current.is_none(),
        (Cond::LeaseIs(_, lease), Some(kv)) => kv.lease == *lease,
        (Cond::ValueIs(_, value), Some(kv)) => kv.value == *value,
        (Cond::LeaseIs(..) | Cond::ValueIs(..), None) => false,
    }
}

fn apply_txn(root: &Path, txn: Txn) -> Result<TxnOutcome, StoreError> {
    let cond_paths = txn.conds.iter().map(|c| key_path(root, c.key())).collect::<Result<Vec<_>, _>>()?;
    let puts = txn
        .puts
        .iter()
        .map(|(key, value, lease)| Ok((key_path(root, key)?, encode_record(*lease, value), *lease)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    let deletes = txn.deletes.iter().map(|key| key_path(root, key)).collect::<Result<Vec<_>, _>>()?;

    let _lock = lock(root)?;
    let mut leases = Leases::new(root, Held::Yes, OnCorrupt::Fail);
    for (cond, path) in txn.conds.iter().zip(&cond_paths) {
        let current = match read_record(path)? {
            Some(record) if leases.live(record.lease)? => {
                Some(KeyValue { key: cond.key().to_owned(), value: record.value, lease: record.lease })
            }
            Some(_) => {
                // Its lease ended: absent, and collected now.
                remove_opt(path)?;
                prune_dirs(root, path.parent());
                None
            }
            None => None,
        };
        if !holds(cond, current.as_ref()) {
            return Ok(TxnOutcome::Failed { cond: cond.clone(), current });
        }
    }
    for (_, _, lease) in &puts {
        if !leases.live(*lease)? {
            return Err(StoreError::LeaseNotFound { lease: *lease });
        }
    }
    let mut steps = Steps {
        root,
        before: Vec::new(),
        index: HashMap::with_capacity(puts.len() + deletes.len()),
        changed: Vec::new(),
        made_dirs: Vec::new(),
        temps: Vec::new(),
        renamed: 0,
    };
    match steps.apply(&puts, &deletes) {
        Ok(()) => {
            for path in &deletes {
                prune_dirs(root, path.parent());
            }
            Ok(TxnOutcome::Applied)
        }
        Err(e) => {
            let undo = steps.undo();
            Err(if undo.is_empty() { e } else { StoreError::Undo { source: Box::new(e), undo } })
        }
    }
}

/// A transaction's changes, recorded so that they can be undone.
struct Steps<'a> {
    root: &'a Path,
    /// Every path the transaction touches and what it held before (`None`: absent).
    before: Vec<(PathBuf, Option<Vec<u8>>)>,
    /// Path → its index in `before` (a batch of thousands of keys must not search).
    index: HashMap<PathBuf, usize>,
    /// Indexes into `before` of the paths changed so far.
    changed: Vec<usize>,
    /// Directories created, outermost first.
    made_dirs: Vec<PathBuf>,
    /// Temporary files written, in the order they are renamed into place.
    temps: Vec<PathBuf>,
    /// How many of `temps` have been renamed (the rest are still temporary files).
    renamed: usize,
}

impl Steps<'_> {
    fn remember(&mut self, path: &Path) -> Result<usize, StoreError> {
        if let Some(&i) = self.index.get(path) {
            return Ok(i);
        }
        let before = read_opt(path)?;
        self.before.push((path.to_owned(), before));
        self.index.insert(path.to_owned(), self.before.len() - 1);
        Ok(self.before.len() - 1)
    }

    fn make_dirs(&mut self, dir: &Path) -> Result<(), StoreError> {
        if dir.is_dir() {
            return Ok(());
        }
        let mut cur = self.root.to_owned();
        for component in dir.strip_prefix(self.root).unwrap_or(dir).components() {
            cur.push(component);
            match fs::create_dir(&cur) {
                Ok(()) => self.made_dirs.push(cur.clone()),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(source) => return Err(StoreError::Io { path: cur, source }),
            }
        }
        Ok(())
    }

    /// Prepares (directories, temporary files: nothing visible changes), then commits
    /// (renames, unlinks).
    fn apply(&mut self, puts: &[(PathBuf, Vec<u8>, LeaseId)], deletes: &[PathBuf]) -> Result<(), StoreError> {
        let mut renames = Vec::with_capacity(puts.len());
        for (path, bytes, _) in puts {
            if let Some(dir) = path.parent() {
                self.make_dirs(dir)?;
            }
            if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                return Err(StoreError::Io { path: path.clone(), source: io::Error::from_raw_os_error(libc::EISDIR) });
            }
            let i = self.remember(path)?;
            self.temps.push(write_temp(path, bytes)?);
            renames.push((i, path));
        }
        let deletes = deletes.iter().map(|p| Ok((self.remember(p)?, p))).collect::<Result<Vec<_>, StoreError>>()?;
        for (n, (i, path)) in renames.into_iter().enumerate() {
            fs::rename(&self.temps[n], path).map_err(io_err(path))?;
            self.renamed = n + 1;
            self.changed.push(i);
        }
        for (i, path) in deletes {
            if remove_opt(path)? {
                self.changed.push(i);
            }
        }
        Ok(())
    }

    /// Undoes in reverse what [`Steps::apply`] did; every error is returned.
    fn undo(self) -> Vec<StoreError> {
        let mut errors = Vec::new();
        let mut restored = HashSet::new();
        for &i in self.changed.iter().rev() {
            if !restored.insert(i) {
                continue;
            }
            let (path, before) = &self.before[i];
            let result = match before {
                Some(bytes) => write_atomic(path, bytes),
                None => remove_opt(path).map(drop),
            };
            errors.extend(result.err());
        }
        for tmp in &self.temps[self.renamed..] {
            errors.extend(remove_opt(tmp).err());
        }
        for dir in self.made_dirs.iter().rev() {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if is_absent(&e) => {}
                Err(source) => errors.push(StoreError::Io { path: dir.clone(), source }),
            }
        }
        errors
    }
}

// ---------------------------------------------------------------------------------
// Scanning

/// One directory as [`walk`] found it.
struct ScannedDir {
    /// `""` for the root, else `/a/b`.
    key: String,
    /// Its inotify watch, added before it was listed (when watching).
    wd: Option<WatchDescriptor>,
    /// Its keys in range (names), with their records; bad files left out.
    files: Vec<(String, Record)>,
}

fn dir_mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::DELETE
        | WatchMask::ONLYDIR
        | WatchMask::DONT_FOLLOW
}

fn leases_mask() -> WatchMask {
    WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::MOVED_FROM | WatchMask::DELETE | WatchMask::ONLYDIR
}

/// Visits `from` and every directory below it that may hold a key of `range`, with its
/// keys in range. With `watches`, each directory is watched before it is listed.
/// Directories that vanish meanwhile are skipped.
fn walk(
    root: &Path,
    from: &str,
    range: &Range,
    mut watches: Option<&mut Watches>,
    visit: &mut dyn FnMut(ScannedDir) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut stack = vec![from.to_owned()];
    while let Some(key) = stack.pop() {
        let path = dir_path(root, &key);
        let wd = match watches.as_deref_mut() {
            Some(watches) => match watches.add(&path, dir_mask()) {
                Ok(wd) => Some(wd),
                Err(e) if is_absent(&e) => continue,
                Err(source) => return Err(StoreError::Inotify { path, source }),
            },
            None => None,
        };
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if is_absent(&e) => continue,
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&path))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                debug!(dir = %path.display(), name = ?name, "skipping a name that is not UTF-8");
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let file_type = match entry.file_type() {
                Ok(t) => t,
                Err(e) if is_absent(&e) => continue,
                Err(source) => return Err(StoreError::Io { path: entry.path(), source }),
            };
            let child = child_key(&key, name);
            if file_type.is_dir() {
                if range.holds_dir(&child) {
                    stack.push(child);
                }
            } else if file_type.is_file() && range.contains(&child) {
                names.push(name.to_owned());
            }
        }
        let files = read_records(&path, names);
        visit(ScannedDir { key, wd, files })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Watching

/// What the watcher reported for a key: enough to tell a change, not the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    fingerprint: u64,
    lease: LeaseId,
}

#[derive(Default)]
struct DirState {
    wd: Option<WatchDescriptor>,
    /// Reported keys in this directory, by name.
    files: HashMap<Box<str>, Seen>,
}

/// Whether the watch goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Keys of dead leases, to collect in the background (per lease: the keys known).
#[derive(Default)]
struct GcPlan(HashMap<LeaseId, Vec<String>>);

impl GcPlan {
    fn lease(&mut self, lease: LeaseId) -> &mut Vec<String> {
        self.0.entry(lease).or_default()
    }

    fn spawn(self, root: &Arc<Path>) {
        for (lease, keys) in self.0 {
            let root = root.clone();
            // Detached: the watch goes on while it runs; it logs its own failure.
            drop(tokio::task::spawn_blocking(move || {
                if let Err(error) = gc_lease(&root, lease, &keys, Gc::IfDead) {
                    warn!(lease = format_args!("{lease:x}"), %error, "cannot collect the keys of an ended lease");
                }
            }));
        }
    }
}

/// What the files named by a batch of events hold now.
#[derive(Default)]
struct Changes {
    leases: HashMap<LeaseId, LeaseState>,
    /// (directory key, name, record or absent)
    files: Vec<(String, String, Option<Record>)>,
    /// Directories rescanned (outermost), and what they hold now.
    subtrees: Vec<String>,
    scanned: Vec<ScannedDir>,
}

/// A full listing, for a snapshot.
struct Listing {
    leases_wd: WatchDescriptor,
    dirs: Vec<ScannedDir>,
    leases: HashMap<LeaseId, LeaseState>,
}

/// Follows `range` until the receiver is dropped, starting over (with a new snapshot)
/// after a failure.
async fn follow(root: Arc<Path>, range: Arc<Range>, tx: mpsc::Sender<WatchEvent>) {
    let mut backoff = Backoff::new();
    loop {
        match follow_once(&root, &range, &tx, &mut backoff).await {
            Ok(()) => return,
            Err(error) => warn!(root = %root.display(), %error, "following the store directory failed; starting over"),
        }
        tokio::select! {
            () = tx.closed() => return,
            () = backoff.wait() => {}
        }
    }
}

/// Ok when the receiver is gone.
async fn follow_once(
    root: &Arc<Path>,
    range: &Arc<Range>,
    tx: &mpsc::Sender<WatchEvent>,
    backoff: &mut Backoff,
) -> Result<(), StoreError> {
    let inotify_err = |source| StoreError::Inotify { path: root.to_path_buf(), source };
    let mut stream = Inotify::init().map_err(inotify_err)?.into_event_stream(vec![0u8; EVENT_BUFFER]).map_err(inotify_err)?;
    let mut follower = Follower {
        root: root.clone(),
        range: range.clone(),
        watches: stream.watches(),
        leases_wd: None,
        wds: HashMap::new(),
        dirs: HashMap::new(),
        leases: HashMap::new(),
    };
    if follower.relist(tx).await? == Flow::Stop {
        return Ok(());
    }
    backoff.reset();
    let event = |e: Option<io::Result<EventOwned>>| match e {
        Some(Ok(event)) => Ok(event),
        Some(Err(source)) => Err(inotify_err(source)),
        None => Err(inotify_err(io::Error::new(ErrorKind::UnexpectedEof, "the inotify event stream ended"))),
    };
    loop {
        let next_expiry = follower.leases.values().min().copied();
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(next_expiry.unwrap_or(0).saturating_sub(now_ms()).saturating_add(1));
        let flow = tokio::select! {
            () = tx.closed() => Flow::Stop,
            e = stream.next() => {
                let mut batch = vec![event(e)?];
                while batch.len() < MAX_BATCH {
                    match stream.next().now_or_never() {
                        Some(e) => batch.push(event(e)?),
                        None => break,
                    }
                }
                follower.on_events(batch, tx).await?
            }
            () = tokio::time::sleep_until(deadline), if next_expiry.is_some() => follower.on_timer(tx).await?,
        };
        if flow == Flow::Stop {
            return Ok(());
        }
    }
}

struct Follower {
    root: Arc<Path>,
    range: Arc<Range>,
    watches: Watches,
    leases_wd: Option<i32>,
    /// Watch descriptor id → directory key.
    wds: HashMap<i32, String>,
    /// Directory key → what was reported there.
    dirs: HashMap<String, DirState>,
    /// Live leases → expiry (unix ms). Every reported key's lease is here.
    leases: HashMap<LeaseId, u64>,
}

impl Follower {
    /// Lists everything and sends a snapshot, replacing all that was reported.
    async fn relist(&mut self, tx: &mpsc::Sender<WatchEvent>) -> Result<Flow, StoreError> {
        let (root, range, mut watches) = (self.root.clone(), self.range.clone(), self.watches.clone());
        let started = std::time::Instant::now();
        let listing = blocking(&self.root, move || list_all(&root, &range, &mut watches)).await?;
        let read = started.elapsed();
        self.wds.clear();
        self.dirs.clear();
        self.leases.clear();
        self.leases_wd = Some(listing.leases_wd.get_watch_descriptor_id());
        let mut gc = GcPlan::default();
        for (&lease, &state) in &listing.leases {
            match state {
                LeaseState::Alive { expires_ms } => {
                    self.leases.insert(lease, expires_ms);
                }
                LeaseState::Dead => {
                    gc.lease(lease);
                }
                LeaseState::Unreadable => {}
            }
        }
        let mut snapshot = Vec::new();
        for dir in listing.dirs {
            let mut state = DirState { wd: dir.wd, files: HashMap::with_capacity(dir.files.len()) };
            if let Some(wd) = &state.wd {
                self.wds.insert(wd.get_watch_descriptor_id(), dir.key.clone());
            }
            for (name, record) in dir.files {
                let key = child_key(&dir.key, &name);
                if record.lease == NO_LEASE || self.leases.contains_key(&record.lease) {
                    state.files.insert(name.into(), Seen { fingerprint: fingerprint(&record), lease: record.lease });
                    snapshot.push(KeyValue { key, value: record.value, lease: record.lease });
                } else if listing.leases.get(&record.lease) == Some(&LeaseState::Dead) {
                    gc.lease(record.lease).push(key);
                }
            }
            self.dirs.insert(dir.key, state);
        }
        snapshot.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        gc.spawn(&self.root);
        debug!(keys = snapshot.len(), read_ms = read.as_millis() as u64, ms = started.elapsed().as_millis() as u64, "store listed");
        Ok(send(tx, vec![WatchEvent::Snapshot(snapshot)]).await)
    }

    async fn on_events(&mut self, batch: Vec<EventOwned>, tx: &mpsc::Sender<WatchEvent>) -> Result<Flow, StoreError> {
        let mut files = BTreeSet::new();
        let mut subtrees = BTreeSet::new();
        let mut leases = BTreeSet::new();
        for event in batch {
            if event.mask.contains(EventMask::Q_OVERFLOW) {
                debug!(root = %self.root.display(), "inotify queue overflow: relisting");
                return self.relist(tx).await;
            }
            let wd = event.wd.get_watch_descriptor_id();
            let name = event.name.as_deref().and_then(|n| n.to_str()).filter(|n| !n.starts_with('.'));
            if Some(wd) == self.leases_wd {
                if event.mask.contains(EventMask::IGNORED) {
                    warn!(root = %self.root.display(), "the lease directory was removed; lease changes go unnoticed");
                    self.leases_wd = None;
                }
                leases.extend(name.and_then(parse_hex));
                continue;
            }
            if event.mask.contains(EventMask::IGNORED) {
                // The directory went (or was moved away): see what its path holds now.
                if let Some(dir) = self.wds.remove(&wd) {
                    if let Some(state) = self.dirs.get_mut(&dir) {
                        state.wd = None;
                    }
                    subtrees.insert(dir);
                }
                continue;
            }
            let (Some(dir), Some(name)) = (self.wds.get(&wd), name) else { continue };
            let key = child_key(dir, name);
            if event.mask.contains(EventMask::ISDIR) {
                if self.range.holds_dir(&key) {
                    subtrees.insert(key);
                }
            } else if !event.mask.contains(EventMask::CREATE) && self.range.contains(&key) {
                // A file's CREATE is followed by its CLOSE_WRITE; ours arrive by rename.
                files.insert((dir.clone(), name.to_owned()));
            }
        }
        if files.is_empty() && subtrees.is_empty() && leases.is_empty() {
            return Ok(Flow::Continue);
        }
        let subtrees = outermost(subtrees);
        let (root, range, mut watches) = (self.root.clone(), self.range.clone(), self.watches.clone());
        let changes = blocking(&self.root, move || {
            let mut lease_states = Leases::new(&root, Held::No, OnCorrupt::Skip);
            let mut read = Vec::with_capacity(files.len());
            for (dir, name) in files {
                let record = read_record_lenient(&dir_path(&root, &dir).join(&name));
                if let Some(r) = &record {
                    lease_states.live(r.lease)?;
                }
                read.push((dir, name, record));
            }
            let mut scanned = Vec::new();
            for subtree in &subtrees {
                walk(&root, subtree, &range, Some(&mut watches), &mut |dir| {
                    for (_, record) in &dir.files {
                        lease_states.live(record.lease)?;
                    }
                    scanned.push(dir);
                    Ok(())
                })?;
            }
            for lease in leases {
                lease_states.state(lease)?;
            }
            Ok(Changes { leases: lease_states.seen, files: read, subtrees, scanned })
        })
        .await?;
        let mut out = Vec::new();
        let mut gc = GcPlan::default();
        self.apply(changes, &mut out, &mut gc);
        gc.spawn(&self.root);
        Ok(send(tx, out).await)
    }

    /// The earliest lease expiry came: ask each expired lease's file (under the lock if
    /// it is still there), then delete the keys of those that ended.
    async fn on_timer(&mut self, tx: &mpsc::Sender<WatchEvent>) -> Result<Flow, StoreError> {
        let now = now_ms();
        let due: Vec<LeaseId> = self.leases.iter().filter(|&(_, &exp)| exp <= now).map(|(&id, _)| id).collect();
        if due.is_empty() {
            return Ok(Flow::Continue);
        }
        let root = self.root.clone();
        let leases = blocking(&self.root, move || {
            let mut states = Leases::new(&root, Held::No, OnCorrupt::Skip);
            for lease in due {
                states.state(lease)?;
            }
            Ok(states.seen)
        })
        .await?;
        let mut out = Vec::new();
        let mut gc = GcPlan::default();
        self.apply(Changes { leases, ..Changes::default() }, &mut out, &mut gc);
        gc.spawn(&self.root);
        Ok(send(tx, out).await)
    }

    fn apply(&mut self, changes: Changes, out: &mut Vec<WatchEvent>, gc: &mut GcPlan) {
        for (&lease, &state) in &changes.leases {
            self.set_lease(lease, state, out, gc);
        }
        for (dir, name, record) in changes.files {
            if let Some(state) = self.dirs.get_mut(&dir) {
                update(&mut state.files, &dir, &name, record, &self.leases, &changes.leases, out, gc);
            }
        }
        // Directories gone from the rescanned subtrees.
        let found: HashSet<&str> = changes.scanned.iter().map(|d| d.key.as_str()).collect();
        let kept_wds: HashSet<i32> =
            changes.scanned.iter().filter_map(|d| d.wd.as_ref()).map(WatchDescriptor::get_watch_descriptor_id).collect();
        let gone: Vec<String> = self
            .dirs
            .keys()
            .filter(|k| !found.contains(k.as_str()) && changes.subtrees.iter().any(|s| is_under(k, s)))
            .cloned()
            .collect();
        for dir in gone {
            self.forget_dir(&dir, &kept_wds, out);
        }
        for scanned in changes.scanned {
            if let Some(wd) = &scanned.wd {
                self.wds.insert(wd.get_watch_descriptor_id(), scanned.key.clone());
            }
            let state = self.dirs.entry(scanned.key.clone()).or_default();
            if scanned.wd.is_some() {
                state.wd = scanned.wd;
            }
            let present: HashSet<&str> = scanned.files.iter().map(|(n, _)| n.as_str()).collect();
            state.files.retain(|name, _| {
                let keep = present.contains(&**name);
                if !keep {
                    out.push(WatchEvent::Delete(child_key(&scanned.key, name)));
                }
                keep
            });
            for (name, record) in scanned.files {
                update(&mut state.files, &scanned.key, &name, Some(record), &self.leases, &changes.leases, out, gc);
            }
        }
    }

    fn set_lease(&mut self, lease: LeaseId, state: LeaseState, out: &mut Vec<WatchEvent>, gc: &mut GcPlan) {
        if let LeaseState::Alive { expires_ms } = state {
            self.leases.insert(lease, expires_ms);
            return;
        }
        // Every reported key's lease is in the table: none to delete if it was not.
        if self.leases.remove(&lease).is_none() {
            return;
        }
        let mut keys = Vec::new();
        for (dir, state) in &mut self.dirs {
            state.files.retain(|name, seen| {
                let keep = seen.lease != lease;
                if !keep {
                    keys.push(child_key(dir, name));
                }
                keep
            });
        }
        out.extend(keys.iter().cloned().map(WatchEvent::Delete));
        if state == LeaseState::Dead {
            gc.lease(lease).extend(keys);
        }
    }

    /// Deletes what was reported under a directory that is gone.
    fn forget_dir(&mut self, dir: &str, kept_wds: &HashSet<i32>, out: &mut Vec<WatchEvent>) {
        let Some(state) = self.dirs.remove(dir) else { return };
        out.extend(state.files.keys().map(|name| WatchEvent::Delete(child_key(dir, name))));
        if let Some(wd) = state.wd {
            let id = wd.get_watch_descriptor_id();
            if !kept_wds.contains(&id) {
                if self.wds.get(&id).is_some_and(|d| d == dir) {
                    self.wds.remove(&id);
                }
                // Gone with its directory already, unless it was moved away.
                if let Err(error) = self.watches.remove(wd) {
                    debug!(dir, %error, "removing the watch of a directory that went");
                }
            }
        }
    }
}

/// Brings one reported key up to date with what its file holds now.
#[expect(clippy::too_many_arguments, reason = "the follower's parts, borrowed separately")]
fn update(
    files: &mut HashMap<Box<str>, Seen>,
    dir: &str,
    name: &str,
    record: Option<Record>,
    alive: &HashMap<LeaseId, u64>,
    states: &HashMap<LeaseId, LeaseState>,
    out: &mut Vec<WatchEvent>,
    gc: &mut GcPlan,
) {
    let live = match record {
        Some(r) if r.lease == NO_LEASE || alive.contains_key(&r.lease) => Some(r),
        Some(r) => {
            if states.get(&r.lease) == Some(&LeaseState::Dead) {
                gc.lease(r.lease).push(child_key(dir, name));
            }
            None
        }
        None => None,
    };
    match live {
        Some(record) => {
            let seen = Seen { fingerprint: fingerprint(&record), lease: record.lease };
            if files.get(name) != Some(&seen) {
                files.insert(name.into(), seen);
                out.push(WatchEvent::Put(KeyValue {
                    key: child_key(dir, name),
                    value: record.value,
                    lease: record.lease,
                }));
            }
        }
        None => {
            if files.remove(name).is_some() {
                out.push(WatchEvent::Delete(child_key(dir, name)));
            }
        }
    }
}

/// Whether directory key `k` is `dir` or below it.
fn is_under(k: &str, dir: &str) -> bool {
    k.strip_prefix(dir).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The directories of `set` that are not below another one of them.
fn outermost(set: BTreeSet<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    // Sorted: a directory comes before what is below it... except that `/a/b` sorts
    // after `/a-c`, so test against every kept one.
    for dir in set {
        if !out.iter().any(|kept| is_under(&dir, kept)) {
            out.push(dir);
        }
    }
    out
}

async fn send(tx: &mpsc::Sender<WatchEvent>, events: Vec<WatchEvent>) -> Flow {
    for event in events {
        if tx.send(event).await.is_err() {
            return Flow::Stop;
        }
    }
    Flow::Continue
}

/// Watches `.leases/` and every directory of the range, then reads them all.
fn list_all(root: &Path, range: &Range, watches: &mut Watches) -> Result<Listing, StoreError> {
    let leases_dir = root.join(LEASES_DIR);
    fs::create_dir_all(&leases_dir).map_err(io_err(&leases_dir))?;
    let leases_wd = watches
        .add(&leases_dir, leases_mask())
        .map_err(|source| StoreError::Inotify { path: leases_dir.clone(), source })?;
    let mut states = Leases::new(root, Held::No, OnCorrupt::Skip);
    let mut dirs = Vec::new();
    walk(root, "", range, Some(watches), &mut |dir| {
        for (_, record) in &dir.files {
            states.live(record.lease)?;
        }
        dirs.push(dir);
        Ok(())
    })?;
    // Every lease, for its expiry (and to collect the dead ones).
    for entry in fs::read_dir(&leases_dir).map_err(io_err(&leases_dir))? {
        let entry = entry.map_err(io_err(&leases_dir))?;
        if let Some(lease) = entry.file_name().to_str().filter(|n| !n.starts_with('.')).and_then(parse_hex) {
            states.state(lease)?;
        }
    }
    Ok(Listing { leases_wd, dirs, leases: states.seen })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn put(key: &str, value: &str, lease: LeaseId) -> Txn {
        Txn::default().put(key.into(), value.into(), lease)
    }

    fn pair(key: &str, value: &str, lease: LeaseId) -> KeyValue {
        KeyValue { key: key.into(), value: value.into(), lease }
    }

    async fn store() -> (tempfile::TempDir, DirKv) {
        let dir = tempfile::tempdir().unwrap();
        let kv = DirKv::open(dir.path()).await.unwrap();
        (dir, kv)
    }

    async fn next(rx: &mut mpsc::Receiver<WatchEvent>, within: Duration) -> WatchEvent {
        tokio::time::timeout(within, rx.recv()).await.expect("an event in time").expect("the watch runs")
    }

    async fn quiet(rx: &mut mpsc::Receiver<WatchEvent>, for_: Duration) {
        if let Ok(event) = tokio::time::timeout(for_, rx.recv()).await {
            panic!("unexpected event {event:?}");
        }
    }

    async fn snapshot(rx: &mut mpsc::Receiver<WatchEvent>) -> Vec<KeyValue> {
        match next(rx, SECOND).await {
            WatchEvent::Snapshot(kvs) => kvs,
            other => panic!("expected a snapshot, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn file_formats_are_readable_and_round_trip() {
        let (dir, kv) = store().await;
        let lease = kv.grant(Duration::from_secs(10)).await.unwrap();
        assert!(lease > 0);
        assert_eq!(kv.txn(put("/o/nodes/h1", "{\"a\":1}\nline 2", lease)).await.unwrap(), TxnOutcome::Applied);
        let file = fs::read_to_string(dir.path().join("o/nodes/h1")).unwrap();
        assert_eq!(file, format!("lease {lease:x}\n{{\"a\":1}}\nline 2"));
        let lease_file = fs::read_to_string(dir.path().join(LEASES_DIR).join(format!("{lease:x}"))).unwrap();
        let parsed = decode_lease(lease_file.as_bytes()).unwrap();
        assert_eq!(parsed.ttl_ms, 10_000);
        assert!(parsed.expires_ms > now_ms() + 9_000, "{lease_file}");
        assert!(lease_file.starts_with("ttl_ms 10000\nexpires_ms "), "{lease_file}");
        assert_eq!(kv.get("/o/nodes/h1").await.unwrap(), Some(kv_owned("/o/nodes/h1", b"{\"a\":1}\nline 2", lease)));
        assert_eq!(decode_record(b"lease 0\n".to_vec()), Ok(Record { lease: NO_LEASE, value: vec![] }));
        assert!(decode_record(b"no header".to_vec()).is_err());
        assert_eq!(kv.describe(), format!("dir {}", dir.path().display()));
        assert_eq!(*kv.connection().borrow(), Connection::Connected);
    }

    fn kv_owned(key: &str, value: &[u8], lease: LeaseId) -> KeyValue {
        KeyValue { key: key.into(), value: value.to_vec(), lease }
    }

    #[tokio::test]
    async fn invalid_keys_are_refused() {
        let (dir, kv) = store().await;
        for key in ["", "a/b", "/", "/a//b", "/a/", "/a/../b", "/a/.b", "/.leases/x", "/..", "/a\0b"] {
            match kv.txn(put(key, "v", NO_LEASE)).await {
                Err(StoreError::InvalidKey { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key:?}: {other:?}"),
            }
            assert!(matches!(kv.get(key).await, Err(StoreError::InvalidKey { .. })), "{key:?}");
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "only .lock and .leases");
    }

    #[tokio::test]
    async fn txn_conditions() {
        let (dir, kv) = store().await;
        let lease = kv.grant(Duration::from_secs(10)).await.unwrap();
        assert_eq!(kv.txn(put("/p/a", "1", lease)).await.unwrap(), TxnOutcome::Applied);

        // Absent on an existing key: Failed with the current value, nothing changed.
        let txn = Txn::default()
            .when(Cond::Absent("/p/b".into()))
            .when(Cond::Absent("/p/a".into()))
            .put("/p/a".into(), "2".into(), NO_LEASE)
            .put("/p/c".into(), "3".into(), NO_LEASE)
            .delete("/p/b".into());
        assert_eq!(
            kv.txn(txn).await.unwrap(),
            TxnOutcome::Failed { cond: Cond::Absent("/p/a".into()), current: Some(pair("/p/a", "1", lease)) }
        );
        assert_eq!(kv.get("/p/a").await.unwrap(), Some(pair("/p/a", "1", lease)));
        assert_eq!(kv.get("/p/c").await.unwrap(), None);
        assert!(!dir.path().join("p/c").exists());

        // LeaseIs.
        let wrong = Txn::default().when(Cond::LeaseIs("/p/a".into(), lease + 1)).delete("/p/a".into());
        assert_eq!(
            kv.txn(wrong).await.unwrap(),
            TxnOutcome::Failed { cond: Cond::LeaseIs("/p/a".into(), lease + 1), current: Some(pair("/p/a", "1", lease)) }
        );
        let absent = Txn::default().when(Cond::LeaseIs("/p/zz".into(), lease));
        assert_eq!(
            kv.txn(absent).await.unwrap(),
            TxnOutcome::Failed { cond: Cond::LeaseIs("/p/zz".into(), lease), current: None }
        );
        let right = Txn::default().when(Cond::LeaseIs("/p/a".into(), lease)).put("/p/a".into(), "4".into(), lease);
        assert_eq!(kv.txn(right).await.unwrap(), TxnOutcome::Applied);
        assert_eq!(kv.get("/p/a").await.unwrap(), Some(pair("/p/a", "4", lease)));

        // ValueIs.
        let wrong = Txn::default().when(Cond::ValueIs("/p/a".into(), b"1".to_vec())).delete("/p/a".into());
        assert!(matches!(kv.txn(wrong).await.unwrap(), TxnOutcome::Failed { .. }));
        assert!(kv.get("/p/a").await.unwrap().is_some());
        let right = Txn::default().when(Cond::ValueIs("/p/a".into(), b"4".to_vec())).delete("/p/a".into());
        assert_eq!(kv.txn(right).await.unwrap(), TxnOutcome::Applied);
        assert_eq!(kv.get("/p/a").await.unwrap(), None);
        assert!(!dir.path().join("p").exists(), "the emptied directory is removed");

        // Several puts (and a delete of an absent key) apply together.
        let many = Txn::default()
            .when(Cond::Absent("/p/x/1".into()))
            .put("/p/x/1".into(), "a".into(), NO_LEASE)
            .put("/p/y/deep/2".into(), "b".into(), lease)
            .put("/p/3".into(), "c".into(), NO_LEASE)
            .delete("/p/never".into());
        assert_eq!(kv.txn(many).await.unwrap(), TxnOutcome::Applied);
        assert_eq!(
            kv.list("/p/").await.unwrap(),
            vec![pair("/p/3", "c", NO_LEASE), pair("/p/x/1", "a", NO_LEASE), pair("/p/y/deep/2", "b", lease)]
        );
        assert_eq!(kv.list("/p/x").await.unwrap(), vec![pair("/p/x/1", "a", NO_LEASE)]);

        // A put with a lease that does not exist fails and changes nothing.
        match kv.txn(put("/p/q", "v", 12345)).await {
            Err(StoreError::LeaseNotFound { lease: 12345 }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(kv.get("/p/q").await.unwrap(), None);

        // A key cannot also be a directory: refused, nothing changed.
        let clash = Txn::default().put("/p/z".into(), "1".into(), NO_LEASE).put("/p/3/sub".into(), "2".into(), NO_LEASE);
        assert!(matches!(kv.txn(clash).await, Err(StoreError::Io { .. })));
        assert_eq!(kv.get("/p/z").await.unwrap(), None);
        assert_eq!(kv.get("/p/3").await.unwrap(), Some(pair("/p/3", "c", NO_LEASE)));
    }

    #[tokio::test]
    async fn racing_absent_txns_apply_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirKv::open(dir.path()).await.unwrap();
        let b = DirKv::open(dir.path()).await.unwrap();
        for round in 0..20 {
            let key = format!("/claims/ip/{round}");
            let attempt = |kv: DirKv, who: &'static str| {
                let key = key.clone();
                tokio::spawn(async move {
                    kv.txn(Txn::default().when(Cond::Absent(key.clone())).put(key, who.into(), NO_LEASE)).await.unwrap()
                })
            };
            let (ra, rb) = (attempt(a.clone(), "a"), attempt(b.clone(), "b"));
            let (ra, rb) = (ra.await.unwrap(), rb.await.unwrap());
            let applied = [&ra, &rb].iter().filter(|o| ***o == TxnOutcome::Applied).count();
            assert_eq!(applied, 1, "round {round}: {ra:?} {rb:?}");
            let winner = if ra == TxnOutcome::Applied { "a" } else { "b" };
            let loser = if ra == TxnOutcome::Applied { rb } else { ra };
            assert_eq!(
                loser,
                TxnOutcome::Failed { cond: Cond::Absent(key.clone()), current: Some(pair(&key, winner, NO_LEASE)) }
            );
        }
    }

    #[tokio::test]
    async fn two_stores_see_each_other_through_watch() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirKv::open(dir.path()).await.unwrap();
        let b = DirKv::open(dir.path()).await.unwrap();
        a.txn(put("/o/nodes/h1", "one", NO_LEASE)).await.unwrap();
        let mut rx = b.watch("/o/".into(), "/o0".into());
        assert_eq!(snapshot(&mut rx).await, vec![pair("/o/nodes/h1", "one", NO_LEASE)]);
        a.txn(put("/o/nodes/h2", "two", NO_LEASE)).await.unwrap();
        assert_eq!(next(&mut rx, SECOND).await, WatchEvent::Put(pair("/o/nodes/h2", "two", NO_LEASE)));
        // The same value again: no event; a new one: Put.
        a.txn(put("/o/nodes/h2", "two", NO_LEASE)).await.unwrap();
        a.txn(put("/o/nodes/h2", "three", NO_LEASE)).await.unwrap();
        assert_eq!(next(&mut rx, SECOND).await, WatchEvent::Put(pair("/o/nodes/h2", "three", NO_LEASE)));
        a.txn(Txn::default().delete("/o/nodes/h1".into())).await.unwrap();
        assert_eq!(next(&mut rx, SECOND).await, WatchEvent::Delete("/o/nodes/h1".into()));
        // Deleting an absent key: fine, and nothing to report.
        a.txn(Txn::default().delete("/o/nodes/h1".into())).await.unwrap();
        quiet(&mut rx, Duration::from_millis(300)).await;
    }

    #[tokio::test]
    async fn watch_follows_new_directories_and_only_its_range() {
        let (dir, kv) = store().await;
        let mut rx = kv.watch("/p/b".into(), "/p/d".into());
        assert_eq!(snapshot(&mut rx).await, vec![]);
        // Outside the range, before and after it, and a prefix-sibling.
        kv.txn(put("/p/a/x", "no", NO_LEASE)).await.unwrap();
        kv.txn(put("/p/d/x", "no", NO_LEASE)).await.unwrap();
        kv.txn(put("/q/c", "no", NO_LEASE)).await.unwrap();
        // Inside, in directories created now (several levels at once).
        kv.txn(put("/p/c/endpoints/43/10.0.0.1", "yes", NO_LEASE)).await.unwrap();
        assert_eq!(next(&mut rx, SECOND).await, WatchEvent::Put(pair("/p/c/endpoints/43/10.0.0.1", "yes", NO_LEASE)));
        kv.txn(put("/p/b", "edge", NO_LEASE)).await.unwrap();
        assert_eq!(next(&mut rx, SECOND).await, WatchEvent::Put(pair("/p/b", "edge", NO_LEASE)));
        // A directory made by hand, with a file written into it right away.
        fs::create_dir_all(dir.path().join("p/c/endpoints/44")).unwrap();
        fs::write(dir.path().join("p/c/endpoints/44/10.0.0.2"), "lease 0\nhand").unwrap();
        assert_eq!(next(&mut rx, SECOND).await, WatchEvent::Put(pair("/p/c/endpoints/44/10.0.0.2", "hand", NO_LEASE)));
        // Temporary and hidden files never show up, in list or watch.
        fs::write(dir.path().join("p/c/endpoints/44/.10.0.0.3.1.2.tmp"), "lease 0\ntmp").unwrap();
        fs::write(dir.path().join("p/c/.hidden"), "lease 0\nhidden").unwrap();
        // The directory's last key goes: Delete, and the directory is removed.
        kv.txn(Txn::default().delete("/p/c/endpoints/43/10.0.0.1".into())).await.unwrap();
        assert_eq!(next(&mut rx, SECOND).await, WatchEvent::Delete("/p/c/endpoints/43/10.0.0.1".into()));
        assert!(!dir.path().join("p/c/endpoints/43").exists());
        // Recreated: followed again.
        kv.txn(put("/p/c/endpoints/43/10.0.0.9", "again", NO_LEASE)).await.unwrap();
        assert_eq!(next(&mut rx, SECOND).await, WatchEvent::Put(pair("/p/c/endpoints/43/10.0.0.9", "again", NO_LEASE)));
        quiet(&mut rx, Duration::from_millis(300)).await;
        let listed: Vec<String> = kv.list("/").await.unwrap().into_iter().map(|kv| kv.key).collect();
        assert_eq!(
            listed,
            ["/p/a/x", "/p/b", "/p/c/endpoints/43/10.0.0.9", "/p/c/endpoints/44/10.0.0.2", "/p/d/x", "/q/c"]
        );
        // A relist (new watch) sees the same, without the temporary files.
        let mut again = kv.watch("/p/b".into(), "/p/d".into());
        let keys: Vec<String> = snapshot(&mut again).await.into_iter().map(|kv| kv.key).collect();
        assert_eq!(keys, ["/p/b", "/p/c/endpoints/43/10.0.0.9", "/p/c/endpoints/44/10.0.0.2"]);
    }

    #[tokio::test]
    async fn leased_keys_go_when_keep_alives_stop() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirKv::open(dir.path()).await.unwrap();
        let b = DirKv::open(dir.path()).await.unwrap();
        let ttl = SECOND;
        let kept = a.grant(ttl).await.unwrap();
        let dropped = a.grant(ttl).await.unwrap();
        a.txn(put("/o/kept", "k", kept).put("/o/dropped".into(), "d".into(), dropped)).await.unwrap();
        let mut rx = b.watch("/o/".into(), "/o0".into());
        assert_eq!(snapshot(&mut rx).await, vec![pair("/o/dropped", "d", dropped), pair("/o/kept", "k", kept)]);
        let keeper = {
            let a = a.clone();
            tokio::spawn(async move {
                loop {
                    assert!(a.keep_alive(kept).await.unwrap());
                    tokio::time::sleep(ttl / 4).await;
                }
            })
        };
        let start = tokio::time::Instant::now();
        assert_eq!(next(&mut rx, ttl + SECOND).await, WatchEvent::Delete("/o/dropped".into()));
        assert!(start.elapsed() >= ttl - Duration::from_millis(300), "{:?}", start.elapsed());
        // Collected: the file (and the lease's) go soon after.
        let file = dir.path().join("o/dropped");
        for _ in 0..50 {
            if !file.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!file.exists());
        assert!(!lease_path(dir.path(), dropped).exists());
        // The kept lease's key stays through several TTLs.
        quiet(&mut rx, ttl * 2).await;
        assert_eq!(a.get("/o/kept").await.unwrap(), Some(pair("/o/kept", "k", kept)));
        assert_eq!(a.get("/o/dropped").await.unwrap(), None);
        keeper.abort();
    }

    #[tokio::test]
    async fn keep_alive_of_an_expired_lease_is_false_and_collects() {
        let (dir, kv) = store().await;
        let lease = kv.grant(SECOND).await.unwrap();
        assert!(kv.keep_alive(lease).await.unwrap());
        kv.txn(put("/o/a", "1", lease).put("/o/b/c".into(), "2".into(), lease)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // Expired: absent for readers and conditions even before anything collects it.
        assert_eq!(kv.get("/o/a").await.unwrap(), None);
        assert_eq!(kv.list("/o/").await.unwrap(), vec![]);
        assert!(!kv.keep_alive(lease).await.unwrap());
        assert!(!dir.path().join("o").exists(), "keys and directories collected");
        assert!(!lease_path(dir.path(), lease).exists());
        assert!(!kv.keep_alive(lease).await.unwrap());
        // A put on the dead lease is refused.
        assert!(matches!(kv.txn(put("/o/a", "1", lease)).await, Err(StoreError::LeaseNotFound { .. })));
    }

    #[tokio::test]
    async fn expired_key_counts_as_absent_in_a_txn_and_is_collected() {
        let (dir, kv) = store().await;
        let lease = kv.grant(Duration::from_millis(300)).await.unwrap();
        kv.txn(put("/o/a", "old", lease)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(dir.path().join("o/a").exists());
        let txn = Txn::default().when(Cond::Absent("/o/a".into())).put("/o/a".into(), "new".into(), NO_LEASE);
        assert_eq!(kv.txn(txn).await.unwrap(), TxnOutcome::Applied);
        assert_eq!(kv.get("/o/a").await.unwrap(), Some(pair("/o/a", "new", NO_LEASE)));
    }

    #[tokio::test]
    async fn revoke_deletes_at_once() {
        let (dir, kv) = store().await;
        let lease = kv.grant(Duration::from_secs(60)).await.unwrap();
        kv.txn(put("/o/a", "1", lease).put("/o/b".into(), "2".into(), NO_LEASE)).await.unwrap();
        let mut rx = kv.watch("/o/".into(), "/o0".into());
        assert_eq!(snapshot(&mut rx).await.len(), 2);
        kv.revoke(lease).await.unwrap();
        assert_eq!(kv.get("/o/a").await.unwrap(), None);
        assert!(!dir.path().join("o/a").exists());
        assert!(!lease_path(dir.path(), lease).exists());
        assert_eq!(kv.get("/o/b").await.unwrap(), Some(pair("/o/b", "2", NO_LEASE)));
        assert_eq!(next(&mut rx, SECOND).await, WatchEvent::Delete("/o/a".into()));
        quiet(&mut rx, Duration::from_millis(200)).await;
        kv.revoke(lease).await.unwrap();
        assert!(!kv.keep_alive(lease).await.unwrap());
    }

    #[tokio::test]
    async fn overflow_relists() {
        let (dir, kv) = store().await;
        let max: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events").unwrap().trim().parse().unwrap();
        if max > 100_000 {
            eprintln!("max_queued_events is {max}: skipping");
            return;
        }
        kv.txn(put("/o/0", "0", NO_LEASE)).await.unwrap();
        let mut rx = kv.watch("/o/".into(), "/o0".into());
        assert_eq!(snapshot(&mut rx).await.len(), 1);
        // Written without yielding: the watch cannot drain its queue (2 events a file).
        let n = max / 2 + 100;
        for i in 1..n {
            fs::write(dir.path().join(format!("o/{i}")), format!("lease 0\n{i}")).unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await.unwrap().unwrap() {
                WatchEvent::Snapshot(kvs) => {
                    assert_eq!(kvs.len(), n);
                    break;
                }
                WatchEvent::Put(_) => {}
                other => panic!("{other:?}"),
            }
        }
        kv.txn(put("/o/after", "1", NO_LEASE)).await.unwrap();
        loop {
            match next(&mut rx, SECOND).await {
                WatchEvent::Put(kv) if kv.key == "/o/after" => break,
                WatchEvent::Put(_) => {}
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn watch_ends_when_the_receiver_is_dropped() {
        let (_dir, kv) = store().await;
        let rx = kv.watch("/".into(), "\0".into());
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(rx);
        // Nothing to assert on the task directly: the store still works, and writes
        // after the drop do not block on a full channel.
        for i in 0..(WATCH_CHANNEL + 10) {
            kv.txn(put(&format!("/k/{i}"), "v", NO_LEASE)).await.unwrap();
        }
        assert_eq!(kv.list("/k/").await.unwrap().len(), WATCH_CHANNEL + 10);
    }

    #[test]
    fn ranges() {
        let r = Range::new("/p/b", "/p/d");
        assert!(r.contains("/p/b") && r.contains("/p/c/x") && !r.contains("/p/d") && !r.contains("/p/a"));
        assert!(r.holds_dir("") && r.holds_dir("/p") && r.holds_dir("/p/c") && r.holds_dir("/p/b"));
        assert!(!r.holds_dir("/p/d") && !r.holds_dir("/p/a") && !r.holds_dir("/q"));
        let p = Range::prefix("/o/");
        assert!(p.contains("/o/x") && !p.contains("/o") && !p.contains("/o0"));
        assert_eq!(Range::prefix("").end, None);
        let one = Range::new("/a", "");
        assert!(one.contains("/a") && !one.contains("/a/b") && !one.contains("/b"));
        assert!(Range::new("/a", "\0").contains("/zzz"));
        assert_eq!(outermost(["/a".into(), "/a-c".into(), "/a/b".into(), "/b".into()].into()), ["/a", "/a-c", "/b"]);
    }

    #[tokio::test]
    async fn a_large_directory_is_read_whole_by_several_threads() {
        let (dir, kv) = store().await;
        let d = dir.path().join("o/endpoints/42");
        fs::create_dir_all(&d).unwrap();
        let n = PARALLEL_READ_MIN + 1_000;
        for i in 0..n {
            fs::write(d.join(format!("k{i:05}")), encode_record(NO_LEASE, format!("v{i}").as_bytes())).unwrap();
        }
        fs::write(d.join("bad"), b"no header").unwrap();
        let listed = kv.list("/o/").await.unwrap();
        assert_eq!(listed.len(), n, "every key once, the corrupt file left out");
        for (i, kv) in listed.iter().enumerate() {
            assert_eq!((kv.key.as_str(), kv.value.as_slice()), (format!("/o/endpoints/42/k{i:05}").as_str(), format!("v{i}").as_bytes()));
        }
    }

    /// Lists 250,000 keys (the scale the interface is built for) and reports the time.
    /// `cargo test -p overlay-agent --release --lib store::dirkv::tests::list_250k -- --ignored --nocapture`
    #[tokio::test]
    #[ignore = "a measurement, about 10 s"]
    async fn list_250k() {
        let (dir, kv) = store().await;
        let lease = kv.grant(Duration::from_secs(600)).await.unwrap();
        let start = std::time::Instant::now();
        for vni in 0..50 {
            let d = dir.path().join(format!("o/endpoints/{vni}"));
            fs::create_dir_all(&d).unwrap();
            for i in 0..5000u32 {
                let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
                let value = format!("{{\"node\":\"h{}\",\"mac\":\"02:00:00:00:{:02x}:{:02x}\",\"port\":4789}}", i % 100, i >> 8, i & 0xff);
                fs::write(d.join(ip.to_string()), encode_record(lease, value.as_bytes())).unwrap();
            }
        }
        eprintln!("wrote 250,000 keys in {:?}", start.elapsed());
        let start = std::time::Instant::now();
        let listed = kv.list("/o/").await.unwrap();
        assert_eq!(listed.len(), 250_000);
        eprintln!("list: {:?}", start.elapsed());
        let rss = || {
            // SAFETY: malloc_trim only returns free memory to the system.
            unsafe { libc::malloc_trim(0) };
            fs::read_to_string("/proc/self/statm").unwrap().split(' ').nth(1).unwrap().parse::<u64>().unwrap() * 4
        };
        drop(listed);
        let before = rss();
        let start = std::time::Instant::now();
        let mut rx = kv.watch("/o/".into(), "/o0".into());
        let snap = match rx.recv().await.unwrap() {
            WatchEvent::Snapshot(s) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(snap.len(), 250_000);
        eprintln!("watch snapshot: {:?}", start.elapsed());
        drop(snap);
        kv.txn(put("/o/endpoints/0/x", "1", NO_LEASE)).await.unwrap();
        assert!(matches!(next(&mut rx, SECOND).await, WatchEvent::Put(_)));
        eprintln!("resident memory after the snapshot was dropped: +{} KiB (watch state and allocator)", rss().saturating_sub(before));
    }
}
