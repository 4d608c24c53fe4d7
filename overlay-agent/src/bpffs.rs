//! Finding the host's bpffs, wherever the agent is started from.
//!
//! Pins outlive the agent only on the host's bpffs (normally `/sys/fs/bpf`). `ip netns
//! exec NS cmd` gives `cmd` a private mount namespace with a fresh sysfs on `/sys` for
//! the namespace's own `/sys/class/net`: the host's bpffs is not there. An agent that
//! mounted a bpffs of its own there would pin into a filesystem that dies with it, and
//! `ip netns exec NS overlay-agent map dump` from another shell would find nothing.
//!
//! So before anything else (while the process is still single-threaded, as `setns`
//! into a mount namespace requires), the binary calls [`rejoin_host_mount_ns`]: when
//! `/sys/fs/bpf` is not a bpffs, it looks for the nearest ancestor process in another
//! mount namespace whose `/sys/fs/bpf` is one (the shell that ran `ip netns exec`) and
//! joins that mount namespace. The network namespace stays as it is (the agent reaches
//! links through netlink, never `/sys/class/net`).

use std::{
    sync::OnceLock,
    fs::File,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

use crate::paths;

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("joining the mount namespace of pid {pid} ({path}): {source}")]
    Join {
        pid: i32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What [`rejoin_host_mount_ns`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejoin {
    /// `/sys/fs/bpf` is a bpffs already: nothing to do.
    NotNeeded,
    /// Joined the mount namespace of this ancestor, where `/sys/fs/bpf` is a bpffs.
    Joined { pid: i32 },
    /// No bpffs here, and an ancestor runs in another mount namespace that has none
    /// either: this process's mount namespace is private (`ip netns exec`), so a bpffs
    /// mounted here would die with it.
    PrivateWithoutHostBpffs { pid: i32 },
    /// No bpffs here and no ancestor in another mount namespace: this is the host's
    /// mount namespace, where the agent may mount one.
    HostWithoutBpffs,
}

static REJOINED: OnceLock<Rejoin> = OnceLock::new();

/// What [`rejoin_host_mount_ns`] found at start-up (`None` if it did not run).
pub fn rejoined() -> Option<&'static Rejoin> {
    REJOINED.get()
}

pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|st| st.filesystem_type().0 == BPF_FS_MAGIC)
}

fn mnt_ns(pid: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

/// The parent pid from `/proc/<pid>/stat` (the field after the parenthesised name,
/// which may itself contain spaces and parentheses).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_ppid(&stat)
}

fn parse_ppid(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// See the module docs. Must run before the process starts any thread.
pub fn rejoin_host_mount_ns() -> Result<Rejoin, BpffsError> {
    let r = find_and_join()?;
    // Only the first call counts (the binary calls it once).
    let _first = REJOINED.set(r.clone()).is_ok();
    Ok(r)
}

fn find_and_join() -> Result<Rejoin, BpffsError> {
    if is_bpffs(Path::new(paths::BPFFS_MOUNT)) {
        return Ok(Rejoin::NotNeeded);
    }
    let Some(own) = mnt_ns("self") else { return Ok(Rejoin::HostWithoutBpffs) };
    let mut pid = std::process::id() as i32;
    while let Some(parent) = parent_of(pid).filter(|p| *p > 0) {
        pid = parent;
        match mnt_ns(&pid.to_string()) {
            Some(ns) if ns != own => {
                let root_bpffs = PathBuf::from(format!("/proc/{pid}/root{}", paths::BPFFS_MOUNT));
                if !is_bpffs(&root_bpffs) {
                    return Ok(Rejoin::PrivateWithoutHostBpffs { pid });
                }
                let path = PathBuf::from(format!("/proc/{pid}/ns/mnt"));
                let file = File::open(&path).map_err(|source| BpffsError::Join { pid, path: path.clone(), source })?;
                setns(file.as_fd(), CloneFlags::CLONE_NEWNS)
                    .map_err(|e| BpffsError::Join { pid, path: path.clone(), source: e.into() })?;
                return Ok(Rejoin::Joined { pid });
            }
            Some(_) => {}
            // An ancestor we may not inspect (another user, a sandbox's init): stop here.
            None => break,
        }
    }
    Ok(Rejoin::HostWithoutBpffs)
}

/// Makes `path` absolute against the current directory (before [`rejoin_host_mount_ns`]
/// moves the process to the other namespace's root).
pub fn absolute(path: &Path) -> Result<PathBuf, BpffsError> {
    std::path::absolute(path).map_err(|source| BpffsError::Io { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_pid_from_stat() {
        assert_eq!(parse_ppid("4770 (bash) S 4769 4770 4770 0 -1"), Some(4769));
        assert_eq!(parse_ppid("12 (a (b) c) R 1 12 12"), Some(1));
        assert_eq!(parse_ppid("garbage"), None);
        assert!(parent_of(std::process::id() as i32).is_some());
    }
}
