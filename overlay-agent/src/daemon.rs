//! `overlay-agent run`: the daemon. One task owns all kernel state (links, maps,
//! programs); the control API and the store feed it through channels, so changes are
//! applied one at a time and in order.
//!
//! Lifecycle: check the host, start the datapath, publish this node, then serve and
//! reconcile until SIGTERM/SIGINT. On the way out every endpoint's veth is deleted,
//! the node's record is withdrawn (peers drop its entries within their poll time) and
//! the datapath removes its programs and pins. Endpoints therefore do not survive an
//! agent restart; containers must be plugged in again.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    time::Instant,
};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};
use tracing::{error, info, warn};

use crate::{
    api::{
        EndpointInfo, EndpointKind, EndpointSpec, NetworkInfo, PeerInfo, RemoteSpec, Request,
        Response, StatusInfo,
        server::{self, Call, ServerError},
    },
    config::{Config, DatapathMode},
    datapath::{
        AnyDatapath, Datapath, DatapathError, Forwarding, LocalEndpoint, RemoteEndpoint,
        devices::NetSpec,
        ebpf::{self, EbpfDatapath, EbpfError, EbpfSettings},
        kernel::KernelDatapath,
    },
    mac::MacAddr,
    model::{EndpointRecord, NodeRecord, StaticEndpoint, static_key},
    netlink::{Netlink, NetlinkError},
    plumb::{self, PlugSpec, PlumbError},
    store::{Snapshot, Store, StoreError, dir::DirStore},
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
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
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("datapath.mode=ebpf, but the eBPF datapath cannot run here: {0} (use datapath.mode=auto or kernel)")]
    Ebpf(#[from] EbpfError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("installing signal handlers: {source}")]
    Signal {
        #[source]
        source: std::io::Error,
    },
    #[error("shutting down: {errors:?}")]
    Teardown { errors: Vec<String> },
}

/// Why an API request was refused. Every check happens before anything changes.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("unknown network {name:?}; this agent serves: {known}")]
    UnknownNetwork { name: String, known: String },
    #[error("{ip} is not inside network {network}'s subnet {subnet}")]
    OutsideSubnet { ip: Ipv4Addr, network: String, subnet: ipnet::Ipv4Net },
    #[error("{ip} is the network or broadcast address of {subnet}")]
    ReservedAddress { ip: Ipv4Addr, subnet: ipnet::Ipv4Net },
    #[error("IP {ip} is already used in network {network} (node {node})")]
    DuplicateIp { ip: Ipv4Addr, network: String, node: String },
    #[error("MAC {mac} is already used in network {network} (node {node})")]
    DuplicateMac { mac: MacAddr, network: String, node: String },
    #[error("MAC {mac} must be a unicast address other than 00:00:00:00:00:00")]
    BadMac { mac: MacAddr },
    #[error("no endpoint {ip} in network {network} on this node")]
    NoSuchEndpoint { ip: Ipv4Addr, network: String },
    #[error("no static endpoint {ip} in network {network} (see `overlay-agent endpoint list`)")]
    NoSuchStatic { ip: Ipv4Addr, network: String },
    #[error("VTEP {vtep} is not a unicast address other than this host's ({own})")]
    BadVtep { vtep: Ipv4Addr, own: Ipv4Addr },
    #[error("network {network} already has {max} endpoints on this host, the most broadcast replication supports")]
    TooManyEndpoints { network: String, max: usize },
    #[error(transparent)]
    Plumb(#[from] PlumbError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("publishing to the store: {0}")]
    Store(#[from] StoreError),
}

struct Local {
    record: EndpointRecord,
    netns: String,
    ifname: String,
    host_ifindex: u32,
    host_ifname: String,
}

struct Agent<D, S> {
    config: Config,
    host: Netlink,
    datapath: D,
    store: S,
    vtep: Ipv4Addr,
    underlay_mtu: u32,
    /// By (network name, IP).
    local: BTreeMap<(String, Ipv4Addr), Local>,
    snapshot: Snapshot,
    started: Instant,
}

/// Runs the agent until SIGTERM/SIGINT. Must be called on a tokio runtime.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(|source| DaemonError::Signal { source })?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|source| DaemonError::Signal { source })?;

    let host = Netlink::open().await.map_err(|source| DaemonError::Netlink { source })?;
    let underlay = host
        .link_by_name(&config.underlay_interface)
        .await
        .map_err(|source| DaemonError::Netlink { source })?
        .ok_or_else(|| DaemonError::NoUnderlay { name: config.underlay_interface.clone() })?;
    let vtep = match config.vtep_ip {
        Some(ip) => ip,
        None => host
            .first_ipv4(underlay.index)
            .await
            .map_err(|source| DaemonError::Netlink { source })?
            .ok_or_else(|| DaemonError::NoVtep { name: underlay.name.clone() })?,
    };
    let mut networks = Vec::new();
    for n in &config.networks {
        let mtu = n.effective_mtu(underlay.mtu);
        let max = underlay.mtu.saturating_sub(overlay_common::vxlan::OVERHEAD);
        if mtu > max {
            return Err(DaemonError::MtuTooLarge {
                network: n.name.clone(),
                mtu,
                underlay: underlay.name.clone(),
                underlay_mtu: underlay.mtu,
                max,
            });
        }
        if mtu < 576 {
            return Err(DaemonError::MtuTooSmall { network: n.name.clone(), mtu });
        }
        networks.push(NetSpec { vni: n.vni, udp_port: n.udp_port, mtu });
    }

    // Nothing has changed on the host up to here. From now on, undo on failure.
    let listener = server::bind(&config.socket_path()).await?;
    if let Err(e) = plumb::remove_orphans(&host).await {
        warn!(error = %e, "removing veths left by a previous agent run");
    }
    let socket = config.socket_path();
    let store = match &config.store.backend {
        crate::config::Backend::Dir { path } => DirStore::open(path).await,
        crate::config::Backend::Etcd(_) => unimplemented!("being rewritten"),
    };
    let store = match store {
        Ok(s) => s,
        Err(e) => {
            remove_socket(&socket);
            return Err(e.into());
        }
    };
    if store.watch().borrow().nodes.contains_key(&config.node_name) {
        warn!(
            node = %config.node_name,
            "the store already holds a record for this node (a crashed agent, or another host with the same node_name); replacing it"
        );
    }
    let settings = EbpfSettings {
        vtep,
        underlay_ifindex: underlay.index,
        underlay_ifname: underlay.name.clone(),
        networks,
        bpffs_dir: config.bpffs_dir.clone(),
    };
    let datapath = match select_datapath(config.datapath.mode, &settings, &host, underlay.index).await {
        Ok(d) => d,
        Err(e) => {
            remove_socket(&socket);
            return Err(e);
        }
    };

    let snapshot = store.watch().borrow().clone();
    let mut agent = Agent {
        config,
        host,
        datapath,
        store,
        vtep,
        underlay_mtu: underlay.mtu,
        local: BTreeMap::new(),
        snapshot,
        started: Instant::now(),
    };
    info!(
        node = %agent.config.node_name,
        %vtep,
        underlay = %underlay.name,
        datapath = %agent.datapath.status().detail,
        socket = %socket.display(),
        "overlay agent running"
    );

    let (tx, mut rx) = mpsc::channel::<Call>(16);
    let server = tokio::spawn(server::serve(listener, tx));
    let mut watch = agent.store.watch();
    let result: Result<(), DaemonError> = async {
        agent.publish().await?;
        agent.reconcile().await?;
        loop {
            tokio::select! {
                _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
                _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
                Some((req, reply)) = rx.recv() => agent.handle(req, reply).await,
                changed = watch.changed() => {
                    if changed.is_err() { break; }
                    agent.snapshot = watch.borrow_and_update().clone();
                    if let Err(e) = agent.reconcile().await {
                        error!(error = %e, "applying the store's state to the datapath");
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    server.abort();
    remove_socket(&socket);
    let teardown = agent.teardown().await;
    result?;
    teardown
}

/// Starts the datapath `mode` asks for. `auto` tries eBPF and falls back to the kernel
/// datapath, saying exactly why; a forced `ebpf` that cannot run is an error.
async fn select_datapath(
    mode: DatapathMode,
    s: &EbpfSettings,
    host: &Netlink,
    underlay_index: u32,
) -> Result<AnyDatapath, DaemonError> {
    let kernel = |reason: String| KernelDatapath::start(host.clone(), s.vtep, underlay_index, &s.networks, reason);
    match mode {
        DatapathMode::Ebpf => Ok(AnyDatapath::Ebpf(Box::new(EbpfDatapath::start(s, host.clone()).await?))),
        DatapathMode::Kernel => {
            clean_ebpf_residue(s);
            Ok(AnyDatapath::Kernel(kernel("datapath.mode=kernel".into()).await?))
        }
        DatapathMode::Auto => match EbpfDatapath::start(s, host.clone()).await {
            Ok(d) => Ok(AnyDatapath::Ebpf(Box::new(d))),
            Err(e) => {
                let reason = format!("auto: {e}");
                warn!("{e}; using kernel VXLAN fallback (datapath.mode=kernel to silence)");
                Ok(AnyDatapath::Kernel(kernel(reason).await?))
            }
        },
    }
}

/// Kernel mode after an eBPF run that did not clean up (a crash): its pins, and on
/// kernels without tcx its netlink filter on the underlay, outlive it.
fn clean_ebpf_residue(s: &EbpfSettings) {
    match ebpf::remove_node_pins(&s.bpffs_dir) {
        Ok(0) => {}
        Ok(n) => warn!(pins = n, "removed pinned maps left by an eBPF-mode agent"),
        Err(e) => warn!(error = %e, "removing pinned maps left by an eBPF-mode agent"),
    }
    ebpf::detach_stale_underlay_filter(&s.underlay_ifname);
}

fn remove_socket(path: &PathBuf) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(path = %path.display(), error = %e, "removing the control socket");
    }
    if let Some(dir) = path.parent() {
        // Only if empty: the state directory may hold the user's files.
        let _ignored_if_not_empty = std::fs::remove_dir(dir);
    }
}

impl<D: Datapath, S: Store> Agent<D, S> {
    fn record(&self) -> NodeRecord {
        NodeRecord {
            node: self.config.node_name.clone(),
            vtep: self.vtep,
            endpoints: self.local.values().map(|l| l.record.clone()).collect(),
        }
    }

    async fn publish(&self) -> Result<(), StoreError> {
        self.store.publish(&self.record()).await
    }

    fn forwarding(&self) -> Forwarding {
        let mut fwd = Forwarding::default();
        for l in self.local.values() {
            fwd.local.insert(
                l.host_ifindex,
                LocalEndpoint {
                    vni: l.record.vni,
                    ip: l.record.ip,
                    mac: l.record.mac,
                    ifindex: l.host_ifindex,
                    ifname: l.host_ifname.clone(),
                },
            );
        }
        // Static endpoints first: a node's own record of the same MAC replaces them.
        let statics = self.snapshot.statics.values().map(|st| RemoteEndpoint {
            vni: st.vni,
            ip: st.ip,
            mac: st.mac,
            vtep: st.vtep,
            udp_port: st.udp_port,
            node: "static".into(),
        });
        let published = self
            .snapshot
            .nodes
            .iter()
            .filter(|(node, _)| **node != self.config.node_name)
            .flat_map(|(node, rec)| {
                rec.endpoints.iter().map(|ep| RemoteEndpoint {
                    vni: ep.vni,
                    ip: ep.ip,
                    mac: ep.mac,
                    vtep: rec.vtep,
                    udp_port: ep.udp_port,
                    node: node.clone(),
                })
            });
        for remote in statics.chain(published) {
            // Only networks this host serves, matched by VNI (the wire identity).
            if self.config.network_by_vni(remote.vni).is_some() {
                fwd.remote.insert((remote.vni, remote.mac), remote);
            }
        }
        fwd
    }

    async fn reconcile(&mut self) -> Result<(), DatapathError> {
        let fwd = self.forwarding();
        self.datapath.sync(&fwd).await
    }

    async fn handle(&mut self, req: Request, reply: oneshot::Sender<Response>) {
        let response = match req {
            Request::EndpointAdd(spec) => match self.add_endpoint(spec).await {
                Ok(info) => Response::Endpoint(info),
                Err(e) => Response::Error { message: e.to_string() },
            },
            Request::EndpointDel { network, ip } => match self.del_endpoint(&network, ip).await {
                Ok(info) => Response::Deleted(info),
                Err(e) => Response::Error { message: e.to_string() },
            },
            Request::EndpointList => Response::Endpoints { endpoints: self.list() },
            Request::RemoteAdd(spec) => match self.add_static(spec).await {
                Ok(info) => Response::Endpoint(info),
                Err(e) => Response::Error { message: e.to_string() },
            },
            Request::RemoteDel { network, ip } => match self.del_static(&network, ip).await {
                Ok(info) => Response::Deleted(info),
                Err(e) => Response::Error { message: e.to_string() },
            },
            Request::Status => Response::Status(self.status()),
        };
        // The client may have gone away; nothing to do about it.
        let _client_gone = reply.send(response);
    }

    /// Who uses (vni, ip) or (vni, mac) already, among local and remote endpoints.
    fn find_conflict(&self, vni: u32, ip: Ipv4Addr, mac: MacAddr) -> Option<(bool, String)> {
        let me = &self.config.node_name;
        let local = self.local.values().map(|l| (me.as_str(), &l.record));
        let remote = self
            .snapshot
            .nodes
            .iter()
            .filter(|(n, _)| *n != me)
            .flat_map(|(n, r)| r.endpoints.iter().map(move |e| (n.as_str(), e.vni, e.ip, e.mac)));
        let statics = self.snapshot.statics.values().map(|s| ("static", s.vni, s.ip, s.mac));
        local
            .map(|(n, e)| (n, e.vni, e.ip, e.mac))
            .chain(remote)
            .chain(statics)
            .filter(|(_, v, _, _)| *v == vni)
            .find(|(_, _, i, m)| *i == ip || *m == mac)
            .map(|(node, _, i, _)| (i == ip, node.to_string()))
    }

    /// The checks every new endpoint (local or static) must pass, before anything changes.
    fn check_new(&self, network: &str, ip: Ipv4Addr, mac: MacAddr) -> Result<crate::config::Network, RequestError> {
        let net = self
            .config
            .network(network)
            .ok_or_else(|| RequestError::UnknownNetwork {
                name: network.to_string(),
                known: self.config.networks.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", "),
            })?
            .clone();
        if !net.subnet.contains(&ip) {
            return Err(RequestError::OutsideSubnet { ip, network: net.name, subnet: net.subnet });
        }
        if ip == net.subnet.network() || ip == net.subnet.broadcast() {
            return Err(RequestError::ReservedAddress { ip, subnet: net.subnet });
        }
        if mac.is_multicast() || mac.is_zero() {
            return Err(RequestError::BadMac { mac });
        }
        if let Some((same_ip, node)) = self.find_conflict(net.vni, ip, mac) {
            return Err(if same_ip {
                RequestError::DuplicateIp { ip, network: net.name, node }
            } else {
                RequestError::DuplicateMac { mac, network: net.name, node }
            });
        }
        Ok(net)
    }

    async fn add_endpoint(&mut self, spec: EndpointSpec) -> Result<EndpointInfo, RequestError> {
        let mac = spec.mac.unwrap_or_else(|| MacAddr::from_ipv4(spec.ip));
        let net = self.check_new(&spec.network, spec.ip, mac)?;
        let max = overlay_common::limits::MAX_FLOOD_PORTS;
        if self.local.values().filter(|l| l.record.vni == net.vni).count() >= max {
            return Err(RequestError::TooManyEndpoints { network: net.name, max });
        }
        let ifname = spec.ifname.clone().unwrap_or_else(|| "eth0".into());
        let plug = PlugSpec {
            network: net.name.clone(),
            netns: spec.netns.clone(),
            ifname: ifname.clone(),
            ip: spec.ip,
            prefix_len: net.subnet.prefix_len(),
            mac,
            mtu: net.effective_mtu(self.underlay_mtu),
            host_mtu: self.underlay_mtu,
        };
        let plugged = plumb::plug(&self.host, &plug).await?;
        let record = EndpointRecord { network: net.name.clone(), vni: net.vni, ip: spec.ip, mac, udp_port: net.udp_port };
        let key = (net.name.clone(), spec.ip);
        self.local.insert(
            key.clone(),
            Local {
                record,
                netns: spec.netns.clone(),
                ifname,
                host_ifindex: plugged.host_ifindex,
                host_ifname: plugged.host_ifname.clone(),
            },
        );
        // Maps first (the program must find the endpoint's identity), then the program.
        let ep = LocalEndpoint {
            vni: net.vni,
            ip: spec.ip,
            mac,
            ifindex: plugged.host_ifindex,
            ifname: plugged.host_ifname.clone(),
        };
        let applied = match self.reconcile().await {
            Ok(()) => self.datapath.attach_endpoint(&ep).await,
            Err(e) => Err(e),
        };
        if let Err(e) = applied {
            self.local.remove(&key);
            self.undo_plug(plugged.host_ifindex).await;
            return Err(e.into());
        }
        if let Err(e) = self.publish().await {
            // Keep the host and the store consistent: take the endpoint back out.
            self.local.remove(&key);
            self.undo_plug(plugged.host_ifindex).await;
            return Err(e.into());
        }
        info!(network = %net.name, ip = %spec.ip, %mac, netns = %spec.netns, host_if = %plugged.host_ifname, "endpoint added");
        Ok(self.local_info(&self.local[&key]))
    }

    async fn undo_plug(&mut self, ifindex: u32) {
        if let Err(e) = self.datapath.detach_endpoint(ifindex).await {
            warn!(error = %e, "undo: detaching the endpoint");
        }
        if let Err(e) = plumb::unplug(&self.host, ifindex).await {
            warn!(error = %e, "undo: deleting the veth");
        }
        if let Err(e) = self.reconcile().await {
            warn!(error = %e, "undo: restoring the datapath tables");
        }
    }

    async fn del_endpoint(&mut self, network: &str, ip: Ipv4Addr) -> Result<EndpointInfo, RequestError> {
        let key = (network.to_string(), ip);
        let Some(local) = self.local.remove(&key) else {
            return Err(RequestError::NoSuchEndpoint { ip, network: network.into() });
        };
        let info = self.local_info(&local);
        // Withdraw from peers first so they stop sending, then tear down locally.
        if let Err(e) = self.publish().await {
            self.local.insert(key, local);
            return Err(e.into());
        }
        self.datapath.detach_endpoint(local.host_ifindex).await?;
        plumb::unplug(&self.host, local.host_ifindex).await?;
        self.reconcile().await?;
        info!(network, %ip, "endpoint deleted");
        Ok(info)
    }

    async fn add_static(&mut self, spec: RemoteSpec) -> Result<EndpointInfo, RequestError> {
        let net = self.check_new(&spec.network, spec.ip, spec.mac)?;
        let v = spec.vtep;
        if v == self.vtep || v.is_unspecified() || v.is_multicast() || v.is_broadcast() || v.is_loopback() {
            return Err(RequestError::BadVtep { vtep: v, own: self.vtep });
        }
        let st = StaticEndpoint {
            network: net.name.clone(),
            vni: net.vni,
            ip: spec.ip,
            mac: spec.mac,
            vtep: v,
            udp_port: net.udp_port,
            declared_by: self.config.node_name.clone(),
        };
        self.store.put_static(&st).await?;
        // Apply now rather than on the next store poll: the store's snapshot has it.
        self.snapshot = self.store.watch().borrow().clone();
        self.reconcile().await?;
        info!(network = %st.network, ip = %st.ip, mac = %st.mac, vtep = %st.vtep, "static endpoint added");
        Ok(static_info(&st))
    }

    async fn del_static(&mut self, network: &str, ip: Ipv4Addr) -> Result<EndpointInfo, RequestError> {
        let key = static_key(network, ip);
        let Some(st) = self.snapshot.statics.get(&key).cloned() else {
            return Err(RequestError::NoSuchStatic { ip, network: network.into() });
        };
        self.store.del_static(&key).await?;
        self.snapshot = self.store.watch().borrow().clone();
        self.reconcile().await?;
        info!(network, %ip, "static endpoint deleted");
        Ok(static_info(&st))
    }

    fn local_info(&self, l: &Local) -> EndpointInfo {
        EndpointInfo {
            network: l.record.network.clone(),
            vni: l.record.vni,
            ip: l.record.ip,
            mac: l.record.mac,
            node: self.config.node_name.clone(),
            vtep: self.vtep,
            kind: EndpointKind::Local,
            netns: Some(l.netns.clone()),
            ifname: Some(l.ifname.clone()),
            host_ifname: Some(l.host_ifname.clone()),
        }
    }

    fn list(&self) -> Vec<EndpointInfo> {
        let mut out: Vec<_> = self.local.values().map(|l| self.local_info(l)).collect();
        for (node, rec) in self.snapshot.nodes.iter().filter(|(n, _)| **n != self.config.node_name) {
            for e in &rec.endpoints {
                out.push(EndpointInfo {
                    network: e.network.clone(),
                    vni: e.vni,
                    ip: e.ip,
                    mac: e.mac,
                    node: node.clone(),
                    vtep: rec.vtep,
                    kind: EndpointKind::Remote,
                    netns: None,
                    ifname: None,
                    host_ifname: None,
                });
            }
        }
        out.extend(self.snapshot.statics.values().map(static_info));
        out.sort_by(|a, b| (a.vni, a.ip, &a.node).cmp(&(b.vni, b.ip, &b.node)));
        out
    }

    fn status(&self) -> StatusInfo {
        let fwd = self.forwarding();
        StatusInfo {
            node: self.config.node_name.clone(),
            vtep: self.vtep,
            underlay_interface: self.config.underlay_interface.clone(),
            underlay_mtu: self.underlay_mtu,
            datapath: self.datapath.status(),
            static_endpoints: self.snapshot.statics.len(),
            store: self.store.describe(),
            networks: self
                .config
                .networks
                .iter()
                .map(|n| NetworkInfo {
                    name: n.name.clone(),
                    vni: n.vni,
                    subnet: n.subnet,
                    udp_port: n.udp_port,
                    mtu: n.effective_mtu(self.underlay_mtu),
                    local_endpoints: fwd.local.values().filter(|e| e.vni == n.vni).count(),
                    remote_endpoints: fwd.remote.values().filter(|e| e.vni == n.vni).count(),
                })
                .collect(),
            peers: self
                .snapshot
                .nodes
                .values()
                .filter(|r| r.node != self.config.node_name)
                .map(|r| PeerInfo { node: r.node.clone(), vtep: r.vtep, endpoints: r.endpoints.len() })
                .collect(),
            uptime_secs: self.started.elapsed().as_secs(),
        }
    }

    /// Removes everything the agent made, collecting (not stopping at) errors.
    async fn teardown(mut self) -> Result<(), DaemonError> {
        let mut errors = Vec::new();
        if let Err(e) = self.store.withdraw(&self.config.node_name).await {
            errors.push(format!("withdrawing the node record: {e}"));
        }
        let locals: Vec<_> = std::mem::take(&mut self.local).into_values().collect();
        for l in locals {
            if let Err(e) = self.datapath.detach_endpoint(l.host_ifindex).await {
                errors.push(format!("detaching {}: {e}", l.host_ifname));
            }
            if let Err(e) = plumb::unplug(&self.host, l.host_ifindex).await {
                errors.push(format!("deleting {}: {e}", l.host_ifname));
            }
        }
        if let Err(e) = self.datapath.shutdown().await {
            errors.push(format!("removing the datapath: {e}"));
        }
        if errors.is_empty() {
            info!("agent stopped; everything it made is removed");
            Ok(())
        } else {
            Err(DaemonError::Teardown { errors })
        }
    }
}

fn static_info(st: &StaticEndpoint) -> EndpointInfo {
    EndpointInfo {
        network: st.network.clone(),
        vni: st.vni,
        ip: st.ip,
        mac: st.mac,
        node: format!("static (declared by {})", st.declared_by),
        vtep: st.vtep,
        kind: EndpointKind::Static,
        netns: None,
        ifname: None,
        host_ifname: None,
    }
}
