//! etcd servers for the tests ([`EtcdCluster`]): one or three members, each a
//! real `/usr/bin/etcd` (Debian's `etcd-server`) in its own namespace plugged
//! into the underlay's 198.51.100.0/24 segment, optionally with TLS and
//! client-certificate authentication.
//!
//! Member `i` lives in namespace `etcd<i>` at 198.51.100.(250 + i), clients
//! on port 2379, peers on 2380. Its data, its log and the TLS files go into
//! one temporary directory `$TMPDIR/ovt-etcd-<pid>x<n>`, which
//! `cargo xtask test` recognises (with the processes using it) if a crashed
//! run leaves it behind. Dropping the cluster kills every member, prints their
//! logs when the test is failing, and removes that directory; the namespaces'
//! guards then delete the namespaces.
//!
//! Members get `PR_SET_PDEATHSIG(SIGKILL)`, which follows the *thread* that
//! spawned them: start, and restart, members from the thread that keeps the
//! cluster (the test's own thread).

use std::{
    env, fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{
        Mutex, Once,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use overlay_agent::netlink::LinkChange;
use tracing::{error, info, warn};

mod ctl;
mod member;
mod tls;

use member::Member;

pub use ctl::{EndpointStatus, parse_get, parse_status};
pub use tls::TlsFiles;
use tls::write_tls_files;

use crate::{
    ns::NetNs,
    topo::{UL_IF, Underlay, add_addr, add_route, link_veth, set_link},
};

/// The etcd server (Debian package `etcd-server`, installed by `cargo xtask setup`).
pub const ETCD_BIN: &str = "/usr/bin/etcd";
/// The etcd client (Debian package `etcd-client`).
pub const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";
/// The cluster's temporary directory is `$TMPDIR/ovt-etcd-<pid>x<n>`.
pub const DIR_PREFIX: &str = "ovt-etcd-";
/// The address of member 0; member `i` has `FIRST_MEMBER_IP + i`.
pub const FIRST_MEMBER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 250);
/// Members' prefix length on the segment.
pub const MEMBER_PREFIX_LEN: u8 = 24;
/// At most this many members (198.51.100.250–.252; .254 is the router).
pub const MAX_MEMBERS: usize = 3;
/// Client port of every member.
pub const CLIENT_PORT: u16 = 2379;
/// Peer port of every member (peer traffic is always plain HTTP).
pub const PEER_PORT: u16 = 2380;
/// Common name of the trusted client certificate ([`TlsFiles::cert_file`]).
pub const CLIENT_CN: &str = "overlay-agent";
/// How long [`EtcdCluster::wait_healthy`] and [`EtcdCluster::leader`] wait
/// (scaled by [`crate::hang_guard`]).
pub const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`EtcdCluster::stop`] waits after SIGTERM before SIGKILL (scaled).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// etcdctl's `--command-timeout` (scaled).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

static COUNTER: AtomicU32 = AtomicU32::new(0);
static CLEANUP: Once = Once::new();

/// What [`EtcdCluster::start`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Number of members, 1 to [`MAX_MEMBERS`] (default 1).
    pub members: usize,
    /// HTTPS client URLs with client-certificate authentication (default off).
    pub tls: bool,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            members: 1,
            tls: false,
        }
    }
}


/// A running etcd cluster on an [`Underlay`]; see the [module docs](self).
///
/// Queries take `&self` (a test can hand the cluster around while agents use
/// it); starting and stopping members takes `&mut self`.
#[derive(Debug)]
pub struct EtcdCluster {
    /// `$TMPDIR/ovt-etcd-<pid>x<n>`: data dirs, logs, TLS files.
    dir: PathBuf,
    token: String,
    tls: Option<TlsFiles>,
    /// Set once a panic message carried the logs, so `Drop` does not print
    /// them again.
    logs_shown: AtomicBool,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts `opts.members` members on the 198.51.100.0/24 segment of
    /// `underlay` ([`Underlay::segment`]: the routed or the switched
    /// underlay; panics for `two_hosts`, which has no segment to plug into)
    /// and waits until all are healthy with a leader. One cluster per
    /// underlay at a time (the addresses are fixed).
    ///
    /// Member `i`: namespace `etcd<i>`, a veth `ul0` <-> `etcd<i>p` (a port
    /// of the segment bridge) with the underlay's MTU, 198.51.100.(250 + i)/24,
    /// a default route via [`Underlay::segment_gateway`] if there is one (so
    /// h3 of the routed underlay reaches it).
    ///
    /// Panics, with the members' logs, if they do not become healthy within
    /// [`HEALTHY_TIMEOUT`].
    pub fn start(underlay: &Underlay, opts: EtcdOptions) -> EtcdCluster {
        assert!(
            (1..=MAX_MEMBERS).contains(&opts.members),
            "an etcd cluster has 1 to {MAX_MEMBERS} members, not {}",
            opts.members
        );
        for bin in [ETCD_BIN, ETCDCTL_BIN] {
            assert!(
                Path::new(bin).is_file(),
                "{bin} is missing: install etcd-server and etcd-client (cargo xtask setup)"
            );
        }
        let (segment, bridge) = underlay.segment().expect(
            "etcd needs an underlay with a bridged segment (routed or switched), not two_hosts",
        );
        match segment.netlink(|nl| async move { nl.link_by_name("etcd0p").await }) {
            Ok(None) => {}
            Ok(Some(_)) => panic!(
                "this underlay already has an etcd cluster (one at a time: the addresses are fixed)"
            ),
            Err(e) => panic!("reading the links of {}: {e:?}", segment.name()),
        }
        CLEANUP.call_once(|| {
            let removed = cleanup_stale_dirs(&env::temp_dir());
            if !removed.is_empty() {
                info!(?removed, "deleted stale etcd test directories");
            }
        });

        let id = format!(
            "{DIR_PREFIX}{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = env::temp_dir().join(&id);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        // From here on a panic drops the cluster, which removes the directory
        // and kills what was started.
        let mut cluster = EtcdCluster {
            dir,
            token: id,
            tls: None,
            logs_shown: AtomicBool::new(false),
            members: Vec::new(),
        };
        let ips: Vec<Ipv4Addr> = (0..opts.members).map(member_ip).collect();
        let server_tls = if opts.tls {
            let (files, servers) = write_tls_files(&cluster.dir.join("tls"), &ips);
            cluster.tls = Some(files);
            servers.into_iter().map(Some).collect()
        } else {
            vec![None; ips.len()]
        };

        let mtu = underlay.h1.link().mtu;
        let bridge_index = segment.link(bridge).index;
        for (i, (ip, server_tls)) in ips.iter().zip(server_tls).enumerate() {
            let ns = NetNs::new(&format!("etcd{i}"));
            let port = format!("etcd{i}p");
            link_veth(&ns, UL_IF, segment, &port, mtu);
            set_link(
                segment,
                &port,
                LinkChange {
                    master: Some(bridge_index),
                    up: Some(true),
                    ..Default::default()
                },
            );
            add_addr(&ns, UL_IF, &format!("{ip}/{MEMBER_PREFIX_LEN}"));
            if let Some(gateway) = underlay.segment_gateway() {
                add_route(&ns, "default", gateway);
            }
            cluster.members.push(Member {
                name: format!("m{i}"),
                ip: *ip,
                data_dir: cluster.dir.join(format!("m{i}")),
                log_path: cluster.dir.join(format!("m{i}.log")),
                server_tls,
                child: Mutex::new(None),
                ns,
            });
        }
        for i in 0..cluster.members.len() {
            cluster.spawn(i, "new");
        }
        let leader = cluster.wait_healthy();
        info!(dir = %cluster.dir.display(), members = cluster.len(), leader, "etcd cluster up");
        cluster
    }

    /// Number of members (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The client URLs of every member (running or not), member 0 first:
    /// `http://198.51.100.250:2379`, or `https://` with TLS.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| m.client_url(self.tls.is_some()))
            .collect()
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        self.member(i).client_url(self.tls.is_some())
    }

    /// The underlay address of member `i`.
    pub fn member_ip(&self, i: usize) -> Ipv4Addr {
        self.member(i).ip
    }

    /// The namespace of member `i`.
    pub fn member_ns(&self, i: usize) -> &NetNs {
        &self.member(i).ns
    }

    /// The TLS files, for a cluster started with `tls: true`.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The cluster's temporary directory (`$TMPDIR/ovt-etcd-<pid>x<n>`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory of member `i` (inside [`EtcdCluster::dir`]).
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.member(i).data_dir
    }

    /// The pid of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.member(i).running_pid()
    }

    /// Whether member `i` runs (started and neither stopped nor exited).
    pub fn is_running(&self, i: usize) -> bool {
        self.member(i).is_running()
    }

    /// The output of member `i` so far (every start appends to it).
    pub fn log(&self, i: usize) -> String {
        self.member(i).log()
    }

    /// Waits until every running member answers `endpoint health` and all
    /// agree on a leader that is one of them; returns the leader's index.
    /// Panics, with every log, if a started member exits meanwhile or after
    /// [`HEALTHY_TIMEOUT`].
    pub fn wait_healthy(&self) -> usize {
        self.poll("all running members healthy with a leader", || {
            let leader = self.try_leader()?;
            let health = self.etcdctl_with(
                self.any_running_ns(),
                &self.running(),
                &["endpoint", "health"],
            );
            if !health.success() {
                return Err(format!(
                    "endpoint health: {}{}",
                    health.stdout, health.stderr
                ));
            }
            Ok(leader)
        })
    }

    /// The index of the leader, as every running member reports it (`etcdctl
    /// endpoint status`), waiting up to [`HEALTHY_TIMEOUT`] until they agree
    /// on one of them (during an election they do not). Panics, with every
    /// log, on timeout.
    pub fn leader(&self) -> usize {
        self.poll("a leader all running members agree on", || {
            self.try_leader()
        })
    }

    fn member(&self, i: usize) -> &Member {
        self.members.get(i).unwrap_or_else(|| {
            panic!(
                "no etcd member {i} (the cluster has {})",
                self.members.len()
            )
        })
    }

    /// Indices of the running members.
    fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].is_running())
            .collect()
    }

    fn any_running_ns(&self) -> &NetNs {
        let i = self
            .running()
            .first()
            .copied()
            .unwrap_or_else(|| self.fail("no etcd member is running"));
        &self.members[i].ns
    }

    /// Calls `probe` every 100 ms until it succeeds; panics, with every log,
    /// if a started member exits or after [`HEALTHY_TIMEOUT`].
    fn poll<T>(&self, what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
        let timeout = crate::hang_guard(HEALTHY_TIMEOUT);
        let deadline = Instant::now() + timeout;
        loop {
            for m in &self.members {
                if let Some(status) = m.exit_status() {
                    self.fail(&format!(
                        "etcd {} exited ({status}) while waiting for {what}",
                        m.name
                    ));
                }
            }
            let last = match probe() {
                Ok(value) => return value,
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "timed out after {timeout:?} waiting for {what}; last: {last}"
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Panics with `msg` and every member's log.
    fn fail(&self, msg: &str) -> ! {
        self.logs_shown.store(true, Ordering::Relaxed);
        panic!("{msg}\n{}", self.logs());
    }

    fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "---- etcd log ({}, {} in {}) ----\n{}---- end of etcd log ----\n",
                    m.log_path.display(),
                    m.name,
                    m.ns.name(),
                    m.log()
                )
            })
            .collect()
    }

}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &self.members {
            if let Some(mut child) = m.child().take() {
                match child.try_wait() {
                    Ok(Some(_)) => {}
                    _ => {
                        if let Err(e) = child.kill() {
                            error!(member = %m.name, error = %e, "killing etcd");
                        }
                        if let Err(e) = child.wait() {
                            error!(member = %m.name, error = %e, "reaping etcd");
                        }
                    }
                }
            }
        }
        if thread::panicking() && !self.logs_shown.load(Ordering::Relaxed) {
            eprint!("{}", self.logs());
        }
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Never panic while panicking: that would abort and hide the
            // first failure.
            Err(e) if thread::panicking() => {
                error!(dir = %self.dir.display(), error = %e, "removing the etcd directory");
            }
            Err(e) => panic!("removing {}: {e}", self.dir.display()),
        }
    }
}

/// The address of member `i`.
pub fn member_ip(i: usize) -> Ipv4Addr {
    assert!(i < MAX_MEMBERS, "no etcd member {i}");
    Ipv4Addr::from(u32::from(FIRST_MEMBER_IP) + i as u32)
}

/// The pid embedded in a cluster directory name `ovt-etcd-<pid>x<n>`.
fn embedded_pid(name: &str) -> Option<u32> {
    let (pid, _) = name.strip_prefix(DIR_PREFIX)?.split_once('x')?;
    pid.parse().ok()
}

/// Removes the `ovt-etcd-<pid>x<n>` directories in `tmp` whose process
/// `<pid>` no longer exists (left by a test process that was killed; its
/// members died with it through `PR_SET_PDEATHSIG`), and returns their
/// names. Never touches directories of running processes.
pub fn cleanup_stale_dirs(tmp: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(tmp) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(pid) = embedded_pid(&name) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match fs::remove_dir_all(entry.path()) {
            Ok(()) => removed.push(name),
            Err(e) => warn!(%name, error = %e, "removing a stale etcd directory"),
        }
    }
    removed
}

#[cfg(test)]
mod tests;
