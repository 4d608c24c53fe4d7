//! Keys as paths, the record and lease file formats, file IO helpers, the lock.

use std::{
    fs::{self, File, OpenOptions},
    hash::{DefaultHasher, Hash, Hasher},
    io::{self, ErrorKind, Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg, OFlag},
    sys::stat::Mode,
};
use tracing::warn;

use super::super::{
    StoreError,
    kv::LeaseId,
};

use super::*;

// Keys, ranges and file formats

pub(super) fn invalid(key: &str, problem: &'static str) -> StoreError {
    StoreError::InvalidKey { key: key.to_owned(), problem }
}

/// The file of `key`, after checking that the key is valid.
pub(super) fn key_path(root: &Path, key: &str) -> Result<PathBuf, StoreError> {
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
pub(super) fn dir_path(root: &Path, dir_key: &str) -> PathBuf {
    match dir_key.strip_prefix('/') {
        Some(rest) => root.join(rest),
        None => root.to_owned(),
    }
}

pub(super) fn child_key(dir_key: &str, name: &str) -> String {
    format!("{dir_key}/{name}")
}

pub(super) fn lease_path(root: &Path, lease: LeaseId) -> PathBuf {
    root.join(LEASES_DIR).join(format!("{lease:x}"))
}

pub(super) fn parse_hex(s: &str) -> Option<LeaseId> {
    // Two's complement, as `{:x}` prints an i64.
    u64::from_str_radix(s, 16).ok().map(|id| id as LeaseId)
}

/// Keys in `[start, end)`, compared byte-wise; `end == None`: no upper bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Range {
    pub(super) start: Vec<u8>,
    pub(super) end: Option<Vec<u8>>,
}

impl Range {
    /// etcd's conventions: `end` empty is the single key `start`, `"\0"` is everything
    /// from `start` on.
    pub(super) fn new(start: &str, end: &str) -> Self {
        let end = match end {
            "" => Some([start.as_bytes(), b"\0"].concat()),
            "\0" => None,
            end => Some(end.as_bytes().to_vec()),
        };
        Self { start: start.as_bytes().to_vec(), end }
    }

    /// Every key starting with `prefix`.
    pub(super) fn prefix(prefix: &str) -> Self {
        let mut end = prefix.as_bytes().to_vec();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return Self { start: prefix.as_bytes().to_vec(), end: Some(end) };
            }
        }
        Self { start: prefix.as_bytes().to_vec(), end: None }
    }

    pub(super) fn below_end(&self, key: &[u8]) -> bool {
        self.end.as_deref().is_none_or(|end| key < end)
    }

    pub(super) fn contains(&self, key: &str) -> bool {
        key.as_bytes() >= self.start.as_slice() && self.below_end(key.as_bytes())
    }

    /// Whether the directory of `<dir_key>/...` may hold a key in range: its keys all lie
    /// in `[dir_key + "/", dir_key + "0")` (`'0'` follows `'/'`).
    pub(super) fn holds_dir(&self, dir_key: &str) -> bool {
        let low = [dir_key.as_bytes(), b"/"].concat();
        let high = [dir_key.as_bytes(), b"0"].concat();
        self.below_end(&low) && self.start < high
    }
}

/// A key's file, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) lease: LeaseId,
    pub(super) value: Vec<u8>,
}

pub(super) fn encode_record(lease: LeaseId, value: &[u8]) -> Vec<u8> {
    let mut out = format!("lease {lease:x}\n").into_bytes();
    out.extend_from_slice(value);
    out
}

pub(super) fn decode_record(mut bytes: Vec<u8>) -> Result<Record, &'static str> {
    let newline = bytes.iter().position(|&b| b == b'\n').ok_or("no header line (`lease <id in hex>`)")?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| "the header line is not UTF-8")?;
    let hex = header.strip_prefix("lease ").ok_or("the header line is not `lease <id in hex>`")?;
    let lease = parse_hex(hex).ok_or("the lease id is not hexadecimal")?;
    bytes.drain(..=newline);
    Ok(Record { lease, value: bytes })
}

/// A lease's file, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LeaseFile {
    pub(super) ttl_ms: u64,
    pub(super) expires_ms: u64,
}

pub(super) fn encode_lease(lease: LeaseFile) -> Vec<u8> {
    format!("ttl_ms {}\nexpires_ms {}\n", lease.ttl_ms, lease.expires_ms).into_bytes()
}

pub(super) fn decode_lease(bytes: &[u8]) -> Result<LeaseFile, &'static str> {
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

pub(super) fn fingerprint(record: &Record) -> u64 {
    let mut hasher = DefaultHasher::new();
    record.lease.hash(&mut hasher);
    record.value.hash(&mut hasher);
    hasher.finish()
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------------
// File helpers (blocking)

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// The file is not there: missing, a parent is a file, or it is a directory (a
/// directory is never a key).
pub(super) fn is_absent(e: &io::Error) -> bool {
    e.kind() == ErrorKind::NotFound || matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::EISDIR))
}

pub(super) fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if is_absent(&e) => Ok(None),
        Err(source) => Err(StoreError::Io { path: path.to_owned(), source }),
    }
}

pub(super) fn read_record(path: &Path) -> Result<Option<Record>, StoreError> {
    match read_opt(path)? {
        None => Ok(None),
        Some(bytes) => decode_record(bytes)
            .map(Some)
            .map_err(|problem| StoreError::Corrupt { path: path.to_owned(), problem: problem.to_owned() }),
    }
}

/// [`read_record`] for scans and watches: a bad file is logged and left out.
pub(super) fn read_record_lenient(path: &Path) -> Option<Record> {
    match read_record(path) {
        Ok(record) => record,
        Err(error) => {
            warn!(%error, "leaving out a store file");
            None
        }
    }
}

pub(super) fn read_lease(path: &Path) -> Result<Option<LeaseFile>, StoreError> {
    match read_opt(path)? {
        None => Ok(None),
        Some(bytes) => decode_lease(&bytes)
            .map(Some)
            .map_err(|problem| StoreError::Corrupt { path: path.to_owned(), problem: problem.to_owned() }),
    }
}

/// Reads the (small) file `name` of the open directory `dir`, for scans of many files:
/// no path lookup from the root and no stat, which halves the cost of a file.
pub(super) fn read_at(dir: &File, name: &str) -> io::Result<Vec<u8>> {
    // O_NOATIME: a file read for the first time since it was written would otherwise
    // get its access time updated, dirtying its inode (a sixth of the time to list
    // 250,000 fresh keys on ext4). It needs the file's owner or CAP_FOWNER: without, the
    // plain open.
    let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let fd = match nix::fcntl::openat(Some(dir.as_raw_fd()), name, flags | OFlag::O_NOATIME, Mode::empty()) {
        Err(Errno::EPERM) => nix::fcntl::openat(Some(dir.as_raw_fd()), name, flags, Mode::empty())?,
        other => other?,
    };
    // SAFETY: `openat` just returned this descriptor; nothing else owns it.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(bytes),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Removes a file; `false` if it was not there.
pub(super) fn remove_opt(path: &Path) -> Result<bool, StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if is_absent(&e) => Ok(false),
        Err(source) => Err(StoreError::Io { path: path.to_owned(), source }),
    }
}

pub(super) static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to a new temporary file next to `path` (a name starting with `.`).
pub(super) fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf, StoreError> {
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
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
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
pub(super) fn prune_dirs(root: &Path, dir: Option<&Path>) {
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
pub(super) fn lock(root: &Path) -> Result<Flock<File>, StoreError> {
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
pub(super) async fn blocking<T: Send + 'static>(
    root: &Path,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StoreError::Io { path: root.to_owned(), source: io::Error::other(e) }),
    }
}
