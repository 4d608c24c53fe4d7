//! One etcd member and its process: start, stop (SIGTERM, then SIGKILL), kill
//! (a crash), restart with its data.

use std::{
    env,
    fs::{self, OpenOptions},
    net::Ipv4Addr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tracing::{info, warn};

use super::{CLIENT_PORT, ETCD_BIN, EtcdCluster, PEER_PORT, STOP_TIMEOUT};
use crate::{
    agent::{die_with_parent, enter_netns, kill_and_reap, terminate},
    ns::NetNs,
};

/// One etcd member: its namespace and, while started, its process.
#[derive(Debug)]
pub(super) struct Member {
    pub(super) name: String,
    pub(super) ip: Ipv4Addr,
    pub(super) data_dir: PathBuf,
    pub(super) log_path: PathBuf,
    /// Server certificate and key (TLS clusters only).
    pub(super) server_tls: Option<(PathBuf, PathBuf)>,
    /// `Some` from (re)start until [`EtcdCluster::stop`] or
    /// [`EtcdCluster::kill`]; a process that exited on its own stays here (so
    /// waits can tell a crash from a stop).
    pub(super) child: Mutex<Option<Child>>,
    /// Declared last: dropped after the process is dead.
    pub(super) ns: NetNs,
}

impl Member {
    pub(super) fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn client_url(&self, tls: bool) -> String {
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://{}:{CLIENT_PORT}", self.ip)
    }

    pub(super) fn peer_url(&self) -> String {
        format!("http://{}:{PEER_PORT}", self.ip)
    }

    /// `None` while running (or never started), else how it exited.
    pub(super) fn exit_status(&self) -> Option<ExitStatus> {
        let mut child = self.child();
        let child = child.as_mut()?;
        child
            .try_wait()
            .unwrap_or_else(|e| panic!("waitpid on etcd {}: {e}", self.name))
    }

    /// The pid, while it runs.
    pub(super) fn running_pid(&self) -> Option<u32> {
        let mut child = self.child();
        let child = child.as_mut()?;
        let exited = child
            .try_wait()
            .unwrap_or_else(|e| panic!("waitpid on etcd {}: {e}", self.name));
        exited.is_none().then(|| child.id())
    }

    pub(super) fn is_running(&self) -> bool {
        self.running_pid().is_some()
    }

    pub(super) fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl EtcdCluster {
    /// Stops member `i`: SIGTERM, then SIGKILL if it is still running after
    /// [`STOP_TIMEOUT`]. It stays stopped until [`EtcdCluster::restart`].
    /// Returns how it exited; panics if it was not started.
    ///
    /// etcd 3.4 handles SIGTERM (a leader hands leadership over first), then
    /// raises it again: a clean stop reports "killed by SIGTERM", not exit 0.
    pub fn stop(&mut self, i: usize) -> ExitStatus {
        let grace = crate::hang_guard(STOP_TIMEOUT);
        let member = self.member(i);
        let mut child = member
            .child()
            .take()
            .unwrap_or_else(|| panic!("etcd {} is not started", member.name));
        if let Some(status) = child.try_wait().expect("waitpid on etcd") {
            return status;
        }
        let status = terminate(&mut child, grace, &format!("etcd {}", member.name));
        info!(member = %member.name, %status, "etcd stopped");
        status
    }

    /// SIGKILLs member `i`, as a crash would. It stays stopped until
    /// [`EtcdCluster::restart`]. Panics if it was not started.
    pub fn kill(&mut self, i: usize) -> ExitStatus {
        let member = self.member(i);
        let mut child = member
            .child()
            .take()
            .unwrap_or_else(|| panic!("etcd {} is not started", member.name));
        let status = match child.try_wait().expect("waitpid on etcd") {
            Some(status) => status,
            None => kill_and_reap(&mut child, &format!("etcd {}", member.name)),
        };
        info!(member = %member.name, %status, "etcd killed");
        status
    }

    /// Starts member `i` again, with its data directory and
    /// `--initial-cluster-state existing`. Does not wait: call
    /// [`EtcdCluster::wait_healthy`]. Panics if it runs.
    pub fn restart(&mut self, i: usize) {
        let member = self.member(i);
        assert!(!member.is_running(), "etcd {} is running", member.name);
        let crashed = member.exit_status();
        if let Some(status) = crashed {
            warn!(member = %member.name, %status, "restarting an etcd that had exited on its own");
        }
        self.spawn(i, "existing");
    }

    /// Starts the etcd process of member `i` in its namespace.
    pub(super) fn spawn(&self, i: usize, state: &str) {
        let m = &self.members[i];
        let initial_cluster: Vec<String> = self
            .members
            .iter()
            .map(|p| format!("{}={}", p.name, p.peer_url()))
            .collect();
        let client_url = m.client_url(self.tls.is_some());
        // Heartbeats and elections slow down with everything else on an
        // emulated machine; leaders would flap otherwise.
        let heartbeat = crate::hang_guard(Duration::from_millis(100));
        let election = heartbeat * 10;
        let mut command = Command::new(ETCD_BIN);
        command
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", m.data_dir.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={}", m.peer_url()))
            .arg(format!("--initial-advertise-peer-urls={}", m.peer_url()))
            .arg(format!("--initial-cluster={}", initial_cluster.join(",")))
            .arg(format!("--initial-cluster-state={state}"))
            .arg(format!("--initial-cluster-token={}", self.token))
            .arg(format!("--heartbeat-interval={}", heartbeat.as_millis()))
            .arg(format!("--election-timeout={}", election.as_millis()))
            // etcd 3.4 defaults to the capnslog logger, which ignores --log-level.
            .args(["--logger=zap", "--log-level=warn", "--log-outputs=stderr"]);
        if let (Some(tls), Some((cert, key))) = (&self.tls, &m.server_tls) {
            command
                .arg(format!("--cert-file={}", cert.display()))
                .arg(format!("--key-file={}", key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca_file.display()))
                .arg("--client-cert-auth");
        }
        // Only the flags count: etcd also reads ETCD_* variables.
        for (key, _) in env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD") {
                command.env_remove(key);
            }
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log_path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", m.log_path.display()));
        let log_err = log.try_clone().expect("clone log file");
        command.stdin(Stdio::null()).stdout(log).stderr(log_err);
        let _ns_file = enter_netns(&mut command, &m.ns);
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {ETCD_BIN} in {}: {e}", m.ns.name()));
        info!(pid = child.id(), member = %m.name, ns = m.ns.name(), state, "etcd started");
        *m.child() = Some(child);
    }
}

