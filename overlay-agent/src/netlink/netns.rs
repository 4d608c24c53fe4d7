//! Named network namespaces (the `ip netns` kind) and running code inside one.
//!
//! `setns(2)` moves only the calling thread, so every helper here that enters a
//! namespace does it on a dedicated, short-lived thread and never on the caller's
//! (the approach of aya's `test_helpers.rs`). Sockets opened on that thread stay
//! bound to the namespace after the thread ends, so a netlink connection, a raw
//! socket or a listener can be created inside and handed back.

use std::{
    ffi::OsStr,
    fs::{self, File, OpenOptions},
    future::Future,
    io,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Mutex,
    thread,
};

use nix::{
    errno::Errno,
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};
use tracing::{debug, warn};

/// Where `ip netns` keeps its namespace files; mirrors `paths::NETNS_RUN_DIR`.
pub const NETNS_RUN_DIR: &str = crate::paths::NETNS_RUN_DIR;

/// The network namespace of PID 1: the machine's own (root) namespace.
const ROOT_NETNS: &str = "/proc/1/ns/net";

/// PID 2 is `kthreadd` outside PID namespaces; kernel threads live in the
/// initial network namespace.
const KTHREADD_COMM: &str = "/proc/2/comm";
const KTHREADD_NETNS: &str = "/proc/2/ns/net";

/// The network namespace of this process's main thread.
const PROCESS_NETNS: &str = "/proc/self/ns/net";

/// The network namespace of the calling thread (not of the whole process).
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Serialises the one-time "make /run/netns a shared mount point" step so two
/// threads of one process never stack two bind mounts on it.
static RUN_DIR_SETUP: Mutex<()> = Mutex::new(());

/// Errors of the namespace helpers.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The name is empty, `.`/`..`, or contains a `/` or a NUL.
    #[error("invalid network namespace name {name:?}")]
    InvalidName { name: String },
    /// A namespace of that name already exists.
    #[error("network namespace {path} already exists")]
    Exists { path: PathBuf },
    #[error("creating directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("making {path} a shared mount point")]
    MakeShared {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("creating namespace file {path}")]
    CreateFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unshare(CLONE_NEWNET)")]
    Unshare {
        #[source]
        source: Errno,
    },
    /// Binding the new namespace onto its file failed; `cleanup` holds the
    /// error of removing that file again, if that failed too.
    #[error("bind-mounting the new network namespace onto {path}")]
    BindMount {
        path: PathBuf,
        #[source]
        source: Errno,
        cleanup: Option<io::Error>,
    },
    #[error("unmounting {path}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("removing {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the identity of {path}")]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("setns(CLONE_NEWNET) into {path}")]
    Setns {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("spawning a thread for network namespace {path}")]
    SpawnThread {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("building a tokio runtime inside network namespace {path}")]
    Runtime {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Refused: `path` is the machine's own network namespace.
    #[error("refusing to write sysctls of the root network namespace ({path})")]
    RootNamespace { path: PathBuf },
    #[error("invalid sysctl key {key:?}")]
    InvalidSysctlKey { key: String },
    #[error("writing sysctl {key} in network namespace {ns}")]
    WriteSysctl {
        key: String,
        ns: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The file of a network namespace: a bare name becomes `/run/netns/NAME`
/// (what `ip netns` uses); anything containing `/` is taken as a path as is
/// (e.g. `/proc/1234/ns/net`).
pub fn netns_path(name_or_path: &str) -> PathBuf {
    if name_or_path.contains('/') {
        PathBuf::from(name_or_path)
    } else {
        Path::new(NETNS_RUN_DIR).join(name_or_path)
    }
}

fn validate_name(name: &str) -> Result<(), NetnsError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(NetnsError::InvalidName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Creates `/run/netns` if needed and makes it a shared mount point, as
/// iproute2's `netns_add` does, so that namespaces mounted on it later
/// propagate to other mount namespaces (and their unmount too).
fn prepare_run_dir() -> Result<(), NetnsError> {
    let dir = Path::new(NETNS_RUN_DIR);
    let _lock = RUN_DIR_SETUP
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
    {
        Ok(()) => {}
        Err(source) => {
            return Err(NetnsError::CreateDir {
                path: dir.to_owned(),
                source,
            });
        }
    }
    let make_shared = || {
        mount(
            Some(""),
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => Ok(()),
        // EINVAL: not a mount point yet. Bind it onto itself, then retry
        // (iproute2 does the same).
        Err(Errno::EINVAL) => {
            debug!(dir = %dir.display(), "binding the netns directory onto itself");
            mount(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|source| NetnsError::MakeShared {
                path: dir.to_owned(),
                source,
            })?;
            make_shared().map_err(|source| NetnsError::MakeShared {
                path: dir.to_owned(),
                source,
            })
        }
        Err(source) => Err(NetnsError::MakeShared {
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Creates a named network namespace like `ip netns add NAME` and returns its
/// file (`/run/netns/NAME`).
///
/// A helper thread `unshare(CLONE_NEWNET)`s and bind-mounts its
/// `/proc/thread-self/ns/net` onto the file, which keeps the namespace alive
/// after the thread is gone. The new namespace has only a `lo`, down.
/// Errors with [`NetnsError::Exists`] if the name is taken; on any later
/// failure the file is removed again.
pub fn create_named_netns(name: &str) -> Result<PathBuf, NetnsError> {
    validate_name(name)?;
    prepare_run_dir()?;
    let path = netns_path(name);
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)
    {
        Ok(file) => drop(file),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(NetnsError::Exists { path });
        }
        Err(source) => return Err(NetnsError::CreateFile { path, source }),
    }

    let thread_path = path.clone();
    let joined = thread::Builder::new()
        .name(format!("netns-add-{name}"))
        .spawn(move || -> Result<(), NetnsError> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Unshare { source })?;
            mount(
                Some(THREAD_NETNS),
                &thread_path,
                Some("none"),
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|source| NetnsError::BindMount {
                path: thread_path.clone(),
                source,
                cleanup: None,
            })
        });
    let result = match joined {
        Ok(handle) => match handle.join() {
            Ok(result) => result,
            Err(payload) => {
                remove_file_quietly(&path);
                std::panic::resume_unwind(payload)
            }
        },
        Err(source) => Err(NetnsError::SpawnThread {
            path: path.clone(),
            source,
        }),
    };
    match result {
        Ok(()) => {
            debug!(name, "created network namespace");
            Ok(path)
        }
        Err(error) => {
            let cleanup = fs::remove_file(&path).err();
            Err(match error {
                NetnsError::BindMount { path, source, .. } => NetnsError::BindMount {
                    path,
                    source,
                    cleanup,
                },
                other => {
                    if let Some(cleanup) = cleanup {
                        warn!(path = %path.display(), error = %cleanup, "could not remove the namespace file");
                    }
                    other
                }
            })
        }
    }
}

fn remove_file_quietly(path: &Path) {
    if let Err(error) = fs::remove_file(path) {
        warn!(path = %path.display(), %error, "could not remove the namespace file");
    }
}

/// Deletes a named network namespace like `ip netns delete NAME`: a lazy
/// unmount of `/run/netns/NAME` and the removal of the file. The namespace
/// itself goes away once no process, socket or mount holds it anymore.
/// Idempotent: Ok if the namespace does not exist.
pub fn delete_named_netns(name: &str) -> Result<(), NetnsError> {
    validate_name(name)?;
    let path = netns_path(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (a half-created namespace); ENOENT: gone.
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(source) => return Err(NetnsError::Unmount { path, source }),
    }
    match fs::remove_file(&path) {
        Ok(()) => {
            debug!(name, "deleted network namespace");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError::Remove { path, source }),
    }
}

fn open_netns(ns: &Path) -> Result<File, NetnsError> {
    File::open(ns).map_err(|source| NetnsError::Open {
        path: ns.to_owned(),
        source,
    })
}

/// Runs `f` on a new thread that first enters the network namespace `ns` (a
/// path, see [`netns_path`]), and returns its result. The calling thread's own
/// namespace never changes. A panic in `f` is resumed on the caller.
pub fn run_in_netns<T, F>(ns: &Path, f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let file = open_netns(ns)?;
    thread::scope(|scope| {
        let handle = thread::Builder::new()
            .name(thread_name(ns))
            .spawn_scoped(scope, move || -> Result<T, NetnsError> {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Setns {
                    path: ns.to_owned(),
                    source,
                })?;
                drop(file);
                Ok(f())
            })
            .map_err(|source| NetnsError::SpawnThread {
                path: ns.to_owned(),
                source,
            })?;
        match handle.join() {
            Ok(result) => result,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    })
}

/// Like [`run_in_netns`], for async code: the thread builds a tokio
/// current-thread runtime (all drivers enabled) inside the namespace and
/// blocks on `f()`. Everything spawned on that runtime, e.g. the connection
/// task of [`super::Netlink::open`], ends with it.
pub fn block_on_in_netns<T, F, Fut>(ns: &Path, f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
{
    run_in_netns(ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| NetnsError::Runtime {
                path: ns.to_owned(),
                source,
            })?;
        Ok(runtime.block_on(f()))
    })?
}

fn thread_name(ns: &Path) -> String {
    let short = ns.file_name().and_then(OsStr::to_str).unwrap_or("ns");
    format!("netns-{short}")
}

/// The (device, inode) pair that identifies a namespace file.
fn ns_identity(path: &Path) -> Result<(u64, u64), NetnsError> {
    let meta = fs::metadata(path).map_err(|source| NetnsError::Stat {
        path: path.to_owned(),
        source,
    })?;
    Ok((meta.dev(), meta.ino()))
}

/// The (device, inode) of the machine's own network namespace: that of PID 1
/// or, where PID 1's namespace links may not be read (some VM inits forbid
/// it), that of `kthreadd` (PID 2), which as a kernel thread always lives in
/// the initial namespace. Where neither is readable (e.g. a PID namespace),
/// the namespace this process started in stands in for it.
fn root_netns_identity() -> Result<(u64, u64), NetnsError> {
    match ns_identity(Path::new(ROOT_NETNS)) {
        Ok(identity) => return Ok(identity),
        Err(error) => debug!(%error, "falling back from PID 1's network namespace"),
    }
    let is_kthreadd = fs::read_to_string(KTHREADD_COMM).is_ok_and(|comm| comm.trim() == "kthreadd");
    if is_kthreadd && let Ok(identity) = ns_identity(Path::new(KTHREADD_NETNS)) {
        return Ok(identity);
    }
    ns_identity(Path::new(PROCESS_NETNS))
}

/// Whether `ns` is the machine's own (initial) network namespace.
pub fn is_root_netns(ns: &Path) -> Result<bool, NetnsError> {
    Ok(ns_identity(ns)? == root_netns_identity()?)
}

/// Maps `net.ipv4.ip_forward` to `/proc/sys/net/ipv4/ip_forward`, refusing
/// anything that could climb out of `/proc/sys`.
fn sysctl_path(key: &str) -> Result<PathBuf, NetnsError> {
    let invalid = || NetnsError::InvalidSysctlKey {
        key: key.to_owned(),
    };
    let mut path = PathBuf::from("/proc/sys");
    for part in key.split('.') {
        if part.is_empty() || part.contains(['/', '\0']) {
            return Err(invalid());
        }
        path.push(part);
    }
    Ok(path)
}

/// Writes a sysctl (`key` in dotted form, e.g. `net.ipv4.ip_forward`) inside
/// the network namespace `ns`.
///
/// A `/proc/sys/net` file opened by a thread in namespace X reads and writes
/// X's settings, so the write happens on a thread that entered `ns`. As a
/// guard against ever touching the machine's own settings, this refuses (with
/// [`NetnsError::RootNamespace`]) when `ns`, or the thread after `setns`, is in
/// the root network namespace (the one of PID 1, see [`is_root_netns`]).
pub fn write_sysctl_in_netns(ns: &Path, key: &str, value: &str) -> Result<(), NetnsError> {
    let path = sysctl_path(key)?;
    if is_root_netns(ns)? {
        return Err(NetnsError::RootNamespace {
            path: ns.to_owned(),
        });
    }
    run_in_netns(ns, || {
        if is_root_netns(Path::new(THREAD_NETNS))? {
            return Err(NetnsError::RootNamespace {
                path: ns.to_owned(),
            });
        }
        fs::write(&path, value).map_err(|source| NetnsError::WriteSysctl {
            key: key.to_owned(),
            ns: ns.to_owned(),
            source,
        })?;
        debug!(ns = %ns.display(), key, value, "wrote sysctl");
        Ok(())
    })?
}

#[cfg(test)]
pub(crate) mod tests;
