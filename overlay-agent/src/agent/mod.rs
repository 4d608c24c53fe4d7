//! `overlay-agent run`: the daemon. One task owns all kernel state (links, maps,
//! programs) and the agent's view of the cluster; the control API, the store's watch
//! and the lease keeper feed it through channels, so changes apply one at a time.
//!
//! By concern:
//! - [`startup`]: host checks, choosing and adopting the datapath, adopting the local
//!   endpoints a previous run left (its `state_dir` and the kernel agree on them);
//! - [`control`]: the store side: registering the node under its lease, publishing
//!   and withdrawing endpoints, applying what the watch reports to the datapath;
//! - [`requests`]: the control API (endpoint add/del/list, static endpoints, status);
//! - [`teardown`]: `overlay-agent down`, which removes everything the node made.
//!
//! Lifecycle: SIGTERM/SIGINT stop the agent and leave the datapath running (pinned
//! maps and links, veths, devices, the store records under a lease that is not
//! revoked); the next start adopts all of it and changes only what is stale, so a
//! restart within the lease TTL is invisible to containers and to peers. `down`
//! removes everything and revokes the lease, so peers drop the node at once.

mod control;
mod gateway;
mod ipam;
mod requests;
mod startup;
mod subnets;
mod views;

pub use subnets::l2_gateway;
pub mod teardown;
mod trace;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot, watch},
};
use tracing::{debug, error, info, warn};

use crate::{
    api::server::{self, ServerError},
    docker,
    config::Config,
    datapath::{AnyDatapath, Datapath, DatapathError, Desired, ebpf::EbpfError},
    netlink::{Netlink, NetlinkError},
    state::{self, AgentState, LocalRecord, StateError},
    store::{AnyKv, StoreError, keys::Keys, kv::{Connection, Kv, LeaseId, WatchEvent}},
};

pub use teardown::TeardownError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("netlink: {source}")]
    Netlink {
        #[source]
        source: NetlinkError,
    },
    #[error("underlay interface {name:?} not found in this network namespace (check `underlay_interface`)")]
    NoUnderlay { name: String },
    #[error("underlay interface {name} has no IPv4 address; add one or set `vtep_ip`")]
    NoVtep { name: String },
    #[error(
        "network {network}: MTU {mtu} does not fit the underlay ({underlay} has MTU {underlay_mtu}, \
         VXLAN needs 50 bytes); set network.mtu to at most {max}"
    )]
    MtuTooLarge { network: String, mtu: u32, underlay: String, underlay_mtu: u32, max: u32 },
    #[error("network {network}: MTU {mtu} is too small (the underlay MTU leaves less than 576)")]
    MtuTooSmall { network: String, mtu: u32 },
    #[error("opening the store: {0}")]
    Store(#[source] StoreError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("datapath.mode=ebpf, but the eBPF datapath cannot run here: {0} (use datapath.mode=auto or kernel)")]
    Ebpf(#[source] EbpfError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("installing signal handlers: {source}")]
    Signal {
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Teardown(#[from] TeardownError),
    #[error("registering with the store: {0}")]
    Claim(#[source] crate::store::registry::ClaimError),
    #[error("the Docker plugin's state: {0}")]
    Docker(#[source] crate::docker::state::DockerStateError),
    #[error(
        "network {network} is an L3 network and this node has no subnet in it yet, but the store is unreachable: \
         start again once the store answers, or set network.node_subnet"
    )]
    NoNodeSubnet { network: String },
    #[error(transparent)]
    Firewall(crate::firewall::FirewallError),
    #[error(transparent)]
    Metrics(crate::metrics::MetricsError),
}

/// A container this agent plugged in.
#[derive(Debug, Clone)]
struct Local {
    record: LocalRecord,
    /// Why the store does not hold it, if it does not (a conflict at re-registration).
    unpublished: Option<String>,
}

/// What the lease keeper tells the main loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEvent {
    /// The lease ended (the store was unreachable for longer than its TTL, or someone
    /// revoked it): everything published under it is gone.
    Expired(LeaseId),
}

pub struct Agent {
    config: Config,
    host: Netlink,
    datapath: AnyDatapath,
    kv: AnyKv,
    keys: Keys,
    vtep: Ipv4Addr,
    underlay_mtu: u32,
    desired: Desired,
    /// By (VNI, IP).
    local: BTreeMap<(u32, Ipv4Addr), Local>,
    lease: LeaseId,
    /// Tells the lease keeper which lease to renew.
    lease_tx: watch::Sender<LeaseId>,
    /// The node record and every local endpoint are in the store under `lease`.
    registered: bool,
    /// The first full store list has been applied to the datapath.
    synced: bool,
    /// Endpoints deleted while the store was unreachable, still to withdraw.
    pending_withdrawals: Vec<(u32, Ipv4Addr)>,
    /// An earlier run (or this one) added the underlay's clsact qdisc.
    clsact_added: bool,
    conn: watch::Receiver<Connection>,
    /// The last registration failure logged (each distinct one is logged once).
    register_error: Option<String>,
    started: Instant,
    /// Turns the watch's key-value events into records (remembering which keys held
    /// invalid records, to log each once).
    decoder: crate::store::sync::Decoder,
    /// When the store's watch (and its first list) started, and how long until the
    /// datapath held all of it.
    watch_started: Instant,
    initial_sync: Option<Duration>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// A trace session is open (see [`trace`]).
    tracing: bool,
    /// The nftables table as last written (see [`gateway`]).
    firewall_written: std::sync::Mutex<Option<crate::firewall::Ruleset>>,
    /// Kernel mode: the anti-spoofing rules of veths being removed, kept until they are
    /// gone (the datapath no longer lists them as local meanwhile).
    unplugging: Vec<crate::firewall::Guard>,
}

/// How the main loop ended.
enum Stop {
    /// SIGTERM/SIGINT: leave everything running.
    Release,
    /// `down`: remove everything; the reply goes back once done.
    Down(server::Call),
}

/// Runs the agent until SIGTERM/SIGINT or `down`. Must be called on a tokio runtime.
pub async fn run(config: Config) -> Result<(), AgentError> {
    raise_memlock();
    let mut sigterm = signal(SignalKind::terminate()).map_err(|source| AgentError::Signal { source })?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|source| AgentError::Signal { source })?;
    let socket = config.socket_path();
    let docker_socket = config.docker.enabled.then(|| config.docker.socket_path());
    if cfg!(feature = "upgrade-test-variant") {
        warn!(
            layout = overlay_common::maps::LAYOUT_VERSION,
            "this agent is the upgrade-test variant, a build for the restart tests only (see overlay-agent/Cargo.toml)"
        );
    }
    let (mut agent, listeners) = match startup::start(config).await {
        Ok(started) => started,
        Err(e) => {
            // Our sockets, but not another agent's (the control socket is bound first).
            match &e {
                AgentError::Server(ServerError::AlreadyRunning { path }) if *path == socket => {}
                AgentError::Server(ServerError::AlreadyRunning { .. }) => remove_socket(&socket),
                _ => {
                    remove_socket(&socket);
                    docker_socket.iter().for_each(remove_socket);
                }
            }
            return Err(e);
        }
    };

    let (api_tx, mut api_rx) = mpsc::channel::<server::Call>(16);
    let (server_stop, server_stopped) = oneshot::channel();
    let docker = match listeners.docker {
        Some((listener, state)) => {
            let driver = docker::driver::Driver::new(
                agent.config.networks.clone(),
                agent.config.docker.plugin_name.clone(),
                agent.config.state_dir.clone(),
                api_tx.clone(),
                state,
            );
            let (stop, stopped) = oneshot::channel();
            info!(socket = %agent.config.docker.socket_path().display(), "serving the Docker network and IPAM plugin");
            Some((tokio::spawn(docker::serve(listener, driver, stopped)), stop))
        }
        None => None,
    };
    let server = tokio::spawn(server::serve(listeners.control, api_tx, server_stopped));
    let metrics_server = listeners.metrics.map(|listener| {
        let (stop, stopped) = oneshot::channel();
        (tokio::spawn(crate::metrics::serve(listener, agent.metrics.clone(), stopped)), stop)
    });
    let (start, end) = agent.keys.watch_range();
    agent.watch_started = Instant::now();
    let mut store_rx = agent.kv.watch(start, end);
    let (session_tx, mut session_rx) = mpsc::channel(4);
    let keeper = tokio::spawn(control::keep_lease(
        agent.kv.clone(),
        agent.lease_tx.subscribe(),
        agent.config.store.lease_ttl,
        session_tx,
    ));
    let mut conn = agent.conn.clone();
    let mut resync = tokio::time::interval(Duration::from_secs(agent.config.datapath.kernel_resync_s));
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry = control::Retry::new();

    agent.register().await;
    info!(
        node = %agent.config.node_name,
        vtep = %agent.vtep,
        underlay = %agent.config.underlay_interface,
        datapath = %agent.datapath.status().detail,
        store = %agent.kv.describe(),
        socket = %socket.display(),
        "overlay agent running"
    );

    let stop = loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: stopping; the datapath stays up"); break Stop::Release; }
            _ = sigint.recv() => { info!("SIGINT: stopping; the datapath stays up"); break Stop::Release; }
            Some(call) = api_rx.recv() => {
                if matches!(call.request, crate::api::Request::Down) {
                    break Stop::Down(call);
                }
                agent.handle(call.request, call.reply).await;
            }
            Some(event) = store_rx.recv() => {
                let mut batch = vec![event];
                while batch.len() < control::MAX_BATCH {
                    match store_rx.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
                agent.on_store(batch).await;
            }
            Some(SessionEvent::Expired(lease)) = session_rx.recv() => agent.on_lease_expired(lease).await,
            Ok(()) = conn.changed() => {
                let now = *conn.borrow_and_update();
                agent.metrics.set_store_connected(now == Connection::Connected);
                if now == Connection::Connected {
                    agent.register().await;
                }
            }
            _ = retry.tick(), if agent.store_work_pending() => {
                agent.register().await;
                if !agent.store_work_pending() {
                    retry.reset();
                }
            }
            _ = resync.tick(), if agent.synced && matches!(agent.datapath, AnyDatapath::Kernel(_)) => {
                if let Err(e) = agent.datapath.resync(&agent.desired).await {
                    error!(error = %e, "repairing the kernel's tables");
                }
                // Also retries a table write that failed (nothing else may change soon).
                agent.follow_vteps();
            }
        }
    };
    keeper.abort();
    if let Some((task, stop)) = metrics_server {
        stop_server(task, stop, "the metrics server").await;
    }
    // Requests the loop will not take any more are answered with an error at once.
    drop(api_rx);
    if let Some((task, stop)) = docker {
        // The socket file stays: dockerd retries until the next start binds it again.
        stop_server(task, stop, "the Docker plugin server").await;
    }
    match stop {
        Stop::Release => {
            stop_server(server, server_stop, "the control server").await;
            agent.stop_trace();
            agent.save_state();
            remove_socket(&socket);
            agent.datapath.release();
            Ok(())
        }
        Stop::Down(call) => {
            let result = teardown::down(agent).await;
            remove_socket(&socket);
            let response = match &result {
                Ok(removed) => crate::api::Response::Down { removed: removed.clone() },
                Err(e) => crate::api::Response::error(e.to_string()),
            };
            // The CLI may have gone away; nothing to do about it.
            let _client_gone = call.reply.send(response);
            // The reply is written before the runtime (and its connection task) ends.
            stop_server(server, server_stop, "the control server").await;
            result.map(drop).map_err(AgentError::from)
        }
    }
}

/// Before 5.11 the kernel charges BPF maps to RLIMIT_MEMLOCK (often 64 KiB or 8 MiB),
/// not to the memory cgroup: lift it, as BPF loaders do, so that map creation does not
/// fail with EPERM there. Later kernels ignore it for BPF.
fn raise_memlock() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: a plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        debug!(error = %std::io::Error::last_os_error(), "raising RLIMIT_MEMLOCK (needed for BPF maps before Linux 5.11)");
    }
}

/// Stops a server (`what`: the control server or the Docker plugin's), letting open
/// connections write their replies.
async fn stop_server(server: tokio::task::JoinHandle<()>, stop: oneshot::Sender<()>, what: &str) {
    if stop.send(()).is_err() {
        debug!("{what} had already ended");
    }
    if let Err(e) = server.await {
        warn!(error = %e, "{what}: the task failed");
    }
}

fn remove_socket(path: &PathBuf) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(path = %path.display(), error = %e, "removing the control socket");
    }
}

impl Agent {
    /// The state to persist, as it is now.
    fn snapshot_state(&self) -> AgentState {
        let mut s = AgentState::new(&self.config.node_name, self.datapath.mode());
        s.lease = self.lease;
        s.store = self.kv.describe();
        s.endpoints = self.local.values().map(|l| l.record.clone()).collect();
        s.pending_withdrawals.clone_from(&self.pending_withdrawals);
        s.clsact_added = self.clsact_added();
        s.node_subnets = self
            .config
            .networks
            .iter()
            .filter_map(|n| Some((n.vni, self.desired.router(n.vni).filter(|r| r.l3)?.subnet)))
            .collect();
        s
    }

    fn clsact_added(&self) -> bool {
        let now = match &self.datapath {
            AnyDatapath::Ebpf(d) => d.clsact_added(),
            AnyDatapath::Kernel(_) => false,
        };
        now || self.clsact_added
    }

    /// Writes the state file; a failure is logged (the kernel state is right, only the
    /// next start's adoption would miss the change).
    fn save_state(&self) {
        if let Err(e) = state::save(&self.config.state_dir, &self.snapshot_state()) {
            error!(error = %e, "saving the agent state; the next start may not adopt everything");
        }
    }

    /// Whether store work waits for a retry (registration, publications, withdrawals).
    fn store_work_pending(&self) -> bool {
        !self.registered || !self.pending_withdrawals.is_empty()
    }

    /// Applies what changed in `desired` to the datapath.
    async fn flush(&mut self) -> Result<(), DatapathError> {
        let dirty = self.desired.take_dirty();
        if dirty.is_empty() {
            return Ok(());
        }
        self.follow_vteps();
        let applied = self.datapath.apply(&self.desired, &dirty).await;
        self.follow_vteps();
        let applied = applied?;
        if applied.full > 0 {
            warn!(entries = applied.full, "datapath tables full: entries not installed (see `overlay-agent status`)");
        }
        Ok(())
    }

    /// Hands store events to [`control`].
    async fn on_store(&mut self, batch: Vec<WatchEvent>) {
        let (started, events) = (Instant::now(), batch.len());
        let ok = self.apply_store_events(batch).await;
        self.metrics.store_applied(events, ok, started.elapsed());
        self.update_table_metrics();
    }

    /// The tables' fill levels and the local endpoint count, for the metrics.
    fn update_table_metrics(&self) {
        self.metrics.set_tables(&self.datapath.usage(), self.local.len());
    }
}
