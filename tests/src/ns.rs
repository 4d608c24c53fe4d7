//! [`NetNs`]: a named network namespace that lives exactly as long as its guard.

use std::{
    fs,
    future::Future,
    io,
    path::{Path, PathBuf},
    sync::{
        Once,
        atomic::{AtomicU32, Ordering},
    },
    thread,
};

use overlay_agent::netlink::{
    LinkChange, LinkInfo, Netlink,
    netns::{self, NETNS_RUN_DIR, NetnsError},
};
use tracing::{error, info, warn};

/// Every namespace made by this harness is named `ovt<pid>x<n>-<short>`.
pub const PREFIX: &str = "ovt";

static COUNTER: AtomicU32 = AtomicU32::new(0);
static CLEANUP: Once = Once::new();

/// A named network namespace (`/run/netns/ovt<pid>x<n>-<short>`, so `ip netns
/// exec` works on it while debugging) with `lo` up. Dropping it deletes the
/// namespace, which also deletes the interfaces inside it (the namespace
/// itself lingers until the last process or socket in it is gone).
///
/// Unlike aya's `NetNsGuard`, this guard never moves the current thread into
/// the namespace (every entry is on a dedicated thread, see
/// [`netns::run_in_netns`]), so it may be sent and shared between threads.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
    /// Created (and deleted on drop) by this guard; `false` for [`NetNs::borrow`].
    owned: bool,
}

impl NetNs {
    /// Creates `ovt<pid>x<n>-<short_name>` with IPv6 disabled (for every link
    /// created in or moved into it, so captures carry no neighbour discovery
    /// or MLD noise) and its `lo` up. The first call of a process also deletes
    /// namespaces left behind by dead test processes ([`cleanup_stale`]).
    /// Panics on failure, after deleting what it created.
    pub fn new(short_name: &str) -> NetNs {
        let ns = Self::new_with_ipv6(short_name);
        for key in [
            "net.ipv6.conf.all.disable_ipv6",
            "net.ipv6.conf.default.disable_ipv6",
        ] {
            match netns::write_sysctl_in_netns(&ns.path, key, "1") {
                Ok(()) => {}
                // A kernel without IPv6 has no such sysctl: nothing to disable.
                Err(NetnsError::WriteSysctl { source, .. })
                    if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => panic!("sysctl {key}=1 in {}: {e:?}", ns.name),
            }
        }
        ns
    }

    /// Like [`NetNs::new`], leaving IPv6 on.
    pub fn new_with_ipv6(short_name: &str) -> NetNs {
        CLEANUP.call_once(|| {
            let removed = cleanup_stale(PREFIX);
            if !removed.is_empty() {
                info!(?removed, "deleted stale test namespaces");
            }
        });
        let name = format!(
            "{PREFIX}{}x{}-{short_name}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = netns::create_named_netns(&name)
            .unwrap_or_else(|e| panic!("creating network namespace {name}: {e:?}"));
        // From here on, a panic drops the guard, which deletes the namespace.
        let ns = NetNs { name, path, owned: true };
        ns.netlink(|nl| async move {
            let lo = nl.link_by_name("lo").await.expect("get lo").expect("no lo");
            nl.set_link(
                lo.index,
                LinkChange {
                    up: Some(true),
                    ..Default::default()
                },
            )
            .await
            .expect("set lo up");
        });
        ns
    }

    /// A namespace someone else made (a container's, `/proc/<pid>/ns/net`), entered
    /// like the harness's own but never deleted by this guard.
    pub fn borrow(label: &str, path: &Path) -> NetNs {
        NetNs { name: label.to_owned(), path: path.to_owned(), owned: false }
    }

    /// The full name (as `ip netns list` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a thread inside this namespace and returns its result.
    pub fn run<T, F>(&self, f: F) -> T
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        netns::run_in_netns(&self.path, f)
            .unwrap_or_else(|e| panic!("entering network namespace {}: {e:?}", self.name))
    }

    /// Runs the future made by `f` on a tokio current-thread runtime inside
    /// this namespace.
    pub fn block_on<T, F, Fut>(&self, f: F) -> T
    where
        T: Send,
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = T>,
    {
        netns::block_on_in_netns(&self.path, f)
            .unwrap_or_else(|e| panic!("entering network namespace {}: {e:?}", self.name))
    }

    /// Like [`NetNs::block_on`], handing `f` a netlink connection opened
    /// inside this namespace.
    pub fn netlink<T, F, Fut>(&self, f: F) -> T
    where
        T: Send,
        F: FnOnce(Netlink) -> Fut + Send,
        Fut: Future<Output = T>,
    {
        self.block_on(|| async move {
            let nl = Netlink::open().await.expect("open netlink");
            f(nl).await
        })
    }

    /// The link `ifname` of this namespace; panics if there is none.
    pub fn link(&self, ifname: &str) -> LinkInfo {
        let found = self.netlink(|nl| async move { nl.link_by_name(ifname).await });
        match found {
            Ok(Some(link)) => link,
            Ok(None) => panic!("no link {ifname} in {}", self.name),
            Err(e) => panic!("looking up {ifname} in {}: {e:?}", self.name),
        }
    }

    /// Writes a sysctl (`net.ipv4.ip_forward`) inside this namespace only.
    pub fn sysctl(&self, key: &str, value: &str) {
        netns::write_sysctl_in_netns(&self.path, key, value)
            .unwrap_or_else(|e| panic!("sysctl {key}={value} in {}: {e:?}", self.name));
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        match netns::delete_named_netns(&self.name) {
            Ok(()) => {}
            // Never panic while panicking: that would abort and hide the
            // first failure.
            Err(e) if thread::panicking() => {
                error!(name = %self.name, error = ?e, "deleting network namespace");
            }
            Err(e) => panic!("deleting network namespace {}: {e:?}", self.name),
        }
    }
}

/// The pid embedded in a harness namespace name `<prefix><pid>x...`.
fn embedded_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let (pid, _) = rest.split_once('x')?;
    pid.parse().ok()
}

/// Deletes the namespaces in `/run/netns` named `<prefix><pid>x...` whose
/// process `<pid>` no longer exists (left by a test process that was killed),
/// and returns their names. Never touches other namespaces, nor those of
/// running processes.
pub fn cleanup_stale(prefix: &str) -> Vec<String> {
    let entries = match fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                warn!(error = %e, "listing {NETNS_RUN_DIR}");
            }
            return Vec::new();
        }
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(pid) = embedded_pid(&name, prefix) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match netns::delete_named_netns(&name) {
            Ok(()) => removed.push(name),
            Err(e) => warn!(%name, error = ?e, "deleting stale namespace"),
        }
    }
    removed
}

/// Whether a namespace of that name exists (`/run/netns/<name>`).
pub fn netns_exists(name: &str) -> bool {
    netns::netns_path(name).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_in_name() {
        assert_eq!(embedded_pid("ovt1234x7-h1", "ovt"), Some(1234));
        assert_eq!(embedded_pid("ovt1234x0", "ovt"), Some(1234));
        assert_eq!(embedded_pid("ovtx7-h1", "ovt"), None);
        assert_eq!(embedded_pid("ovt12a4x7", "ovt"), None);
        assert_eq!(embedded_pid("other1234x7", "ovt"), None);
        assert_eq!(embedded_pid("ovt1234", "ovt"), None);
    }
}
