//! The control API: endpoint add/del, static endpoints (`list` and `status` are in
//! `views`, node subnets in `subnets`, published ports in `gateway`). Every check
//! happens before anything changes; a change that fails half-way is undone, step by
//! step, in reverse.
//!
//! An endpoint's IP and MAC are claimed in the store first (a transaction decides
//! uniqueness cluster-wide), then the veth is plugged and the datapath told. While the
//! store is unreachable (still, after the write was retried for [`WRITE_DEADLINE`]:
//! a cluster member going away is ridden out), `endpoint add` is refused (uniqueness
//! cannot be decided);
//! `endpoint del` goes ahead locally and the withdrawal is sent when the store is back.

use std::{net::Ipv4Addr, time::Duration};

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{Agent, Local, views::static_info};
use crate::{
    api::{
        EndpointInfo, ErrorKind, EndpointSpec, RemoteSpec, Request, Response,
    },
    datapath::{Datapath, DatapathError, LocalEndpoint},
    desired::{Record, RecordKey},
    mac::MacAddr,
    plumb::{self, PlugSpec, PlumbError},
    records::{StaticRecord, is_unicast},
    state::LocalRecord,
    store::{
        StoreError,
        kv::{Connection, Kv},
        registry::{self, ClaimError},
    },
};

/// How long a write may retry a store that is electing a leader or failing over.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// Why an API request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("a trace session is already open on this agent (one at a time); end it first")]
    TraceBusy,
    #[error("trace needs the eBPF datapath; this agent runs the kernel datapath (use tcpdump on the bridge or VXLAN device)")]
    TraceNeedsEbpf,
    #[error("unknown network {name:?}; this agent serves: {known}")]
    UnknownNetwork { name: String, known: String },
    #[error("{ip} is not inside network {network}'s subnet {subnet}")]
    OutsideSubnet { ip: Ipv4Addr, network: String, subnet: ipnet::Ipv4Net },
    #[error("{ip} is the network or broadcast address of {subnet}, or its gateway")]
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
    #[error(
        "the store ({store}) is unreachable since {since}: adding needs it to claim the address cluster-wide; \
         retry when `overlay-agent status` shows the store connected"
    )]
    StoreDown { store: String, since: String },
    #[error(
        "network {network} has no free address: all {capacity} of {subnet} (but the gateway's) are in use; \
         remove endpoints or give the network a larger subnet"
    )]
    SubnetFull { network: String, subnet: ipnet::Ipv4Net, capacity: u64 },
    #[error("network {network}: {tries} free-looking addresses were taken by other hosts meanwhile; retry")]
    AllocationRaced { network: String, tries: u32 },
    #[error("the agent is still loading the store's contents; retry in a moment")]
    NotSynced,
    #[error("the agent has not reached the store ({store}) yet; retry in a moment (`overlay-agent status` shows the store)")]
    StoreConnecting { store: String },
    #[error(
        "network {network} is an L3 network: a host without an agent joins it with its subnet \
         (`overlay-agent remote add --network {network} --subnet SUBNET --vtep VTEP --mac MAC`)"
    )]
    StaticInL3 { network: String },
    #[error("network {network} is an L2 network: `remote add --subnet` is for L3 networks (mode = \"l3\"); declare endpoints with --ip")]
    SubnetInL2 { network: String },
    #[error("subnet {subnet} is not inside network {network}'s subnet {cluster}, or has host bits set")]
    SubnetOutside { subnet: ipnet::Ipv4Net, network: String, cluster: ipnet::Ipv4Net },
    #[error("no static subnet {subnet} in network {network} (see `overlay-agent status`)")]
    NoSuchSubnet { subnet: ipnet::Ipv4Net, network: String },
    #[error("{mapping}: host port {}/{} is already published by {holder}", .mapping.host_port, .mapping.proto.name())]
    PortTaken { mapping: crate::firewall::PortMapping, holder: Ipv4Addr },
    #[error("{mapping}: the host port is given twice")]
    PortRepeated { mapping: crate::firewall::PortMapping },
    #[error(transparent)]
    Firewall(#[from] crate::firewall::FirewallError),
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error(transparent)]
    Plumb(#[from] PlumbError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("the store: {0}")]
    Store(#[from] StoreError),
}

impl RequestError {
    /// The kind clients act on, if it is one.
    fn kind(&self) -> Option<ErrorKind> {
        matches!(self, RequestError::NoSuchEndpoint { .. } | RequestError::NoSuchStatic { .. } | RequestError::NoSuchSubnet { .. })
            .then_some(ErrorKind::NotFound)
    }
}

/// A container MAC must be unicast and not all zeros.
pub(super) fn check_mac(mac: MacAddr) -> Result<(), RequestError> {
    if mac.is_multicast() || mac.is_zero() { Err(RequestError::BadMac { mac }) } else { Ok(()) }
}

/// RFC 3339 (UTC, seconds) for `status`.
pub(super) fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Retries `op` while the store is failing over (a transient error), up to
/// [`WRITE_DEADLINE`].
async fn retrying<T, F, Fut>(mut op: F) -> Result<T, ClaimError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClaimError>>,
{
    let deadline = tokio::time::Instant::now() + WRITE_DEADLINE;
    let mut backoff = crate::store::backoff::Backoff::new();
    loop {
        match op().await {
            Err(ClaimError::Store(e)) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                warn!(error = %e, "the store is failing over; retrying the write");
                backoff.wait().await;
            }
            other => return other,
        }
    }
}

impl Agent {
    pub(super) async fn handle(&mut self, req: Request, reply: oneshot::Sender<Response>) {
        let err = |e: RequestError| Response::Error { message: e.to_string(), kind: e.kind() };
        let started = std::time::Instant::now();
        let response = match req {
            Request::EndpointAdd(spec) => {
                let r = self.add_endpoint(spec).await;
                self.metrics.endpoint_op("add", r.is_ok(), started.elapsed());
                self.update_table_metrics();
                r.map_or_else(err, Response::Endpoint)
            }
            Request::EndpointDel { network, ip } => {
                let r = self.del_endpoint(&network, ip).await;
                self.metrics.endpoint_op("del", r.is_ok(), started.elapsed());
                self.update_table_metrics();
                r.map_or_else(err, Response::Deleted)
            }
            Request::EndpointList => Response::Endpoints { endpoints: self.list() },
            Request::RemoteAdd(spec) => self.add_static(spec).await.map_or_else(err, Response::Endpoint),
            Request::AddressReserve { network, ip } => self.reserve(&network, ip).await.map_or_else(err, Response::Address),
            Request::AddressRelease { network, ip } => {
                self.release(&network, ip).await.map_or_else(err, |released| Response::Released { released })
            }
            Request::RemoteDel { network, ip } => self.del_static(&network, ip).await.map_or_else(err, Response::Deleted),
            Request::SubnetAdd(spec) => self.add_static_subnet(spec).await.map_or_else(err, Response::Subnet),
            Request::SubnetDel { network, subnet } => self.del_static_subnet(&network, subnet).await.map_or_else(err, Response::Subnet),
            Request::Status => Response::Status(self.status()),
            Request::Trace(spec) => self.start_trace(spec).map_or_else(err, Response::Trace),
            Request::TraceStop => {
                self.stop_trace();
                Response::TraceStopped
            }
            // Handled by the main loop, which stops after it.
            Request::Down => Response::error("down is handled by the main loop"),
        };
        // The client may have gone away; nothing to do about it.
        let _client_gone = reply.send(response);
    }

    /// Refuses changes that need the store before the agent has ever reached it. A
    /// store marked disconnected is still tried: one broken stream (a member of the
    /// cluster that went away) marks it so until the client has failed over, and the
    /// write itself is retried across that ([`Agent::store_write`]).
    pub(super) fn store_ready(&self) -> Result<(), RequestError> {
        if matches!(*self.conn.borrow(), Connection::Connecting) {
            return Err(RequestError::StoreConnecting { store: self.kv.describe() });
        }
        if !self.synced {
            return Err(RequestError::NotSynced);
        }
        Ok(())
    }

    /// A write to the store, retried while the store fails over (up to
    /// [`WRITE_DEADLINE`]); a store still unreachable after that is
    /// [`RequestError::StoreDown`].
    pub(super) async fn store_write<T, F, Fut>(&self, op: F) -> Result<T, RequestError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClaimError>>,
    {
        match retrying(op).await {
            Err(ClaimError::Store(e)) if e.is_transient() => {
                let since = match *self.conn.borrow() {
                    Connection::Disconnected { since } => since,
                    _ => std::time::SystemTime::now(),
                };
                self.metrics.store_error("write");
                warn!(error = %e, "the store stayed unreachable; refusing the change");
                Err(RequestError::StoreDown { store: self.kv.describe(), since: rfc3339(since) })
            }
            other => Ok(other?),
        }
    }

    /// The network this agent serves under `name`.
    /// Where this node's containers of `net` take their addresses: its node subnet in
    /// an L3 network, the network's subnet in an L2 one.
    pub(super) fn pool(&self, net: &crate::config::Network) -> ipnet::Ipv4Net {
        self.desired.router(net.vni).map_or(net.subnet, |r| r.subnet)
    }

    pub(super) fn network_named(&self, name: &str) -> Result<crate::config::Network, RequestError> {
        self.config.network(name).cloned().ok_or_else(|| RequestError::UnknownNetwork {
            name: name.to_string(),
            known: self.config.networks.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", "),
        })
    }

    /// The checks every new endpoint (local or static) must pass, before anything changes.
    pub(super) fn check_new(&self, network: &str, ip: Ipv4Addr, mac: MacAddr) -> Result<crate::config::Network, RequestError> {
        let net = self.network_named(network)?;
        let pool = self.pool(&net);
        if !pool.contains(&ip) {
            return Err(RequestError::OutsideSubnet { ip, network: net.name, subnet: pool });
        }
        let router = self.desired.router(net.vni).map(|r| r.gateway);
        if ip == pool.network() || ip == pool.broadcast() || Some(ip) == router {
            return Err(RequestError::ReservedAddress { ip, subnet: pool });
        }
        check_mac(mac)?;
        // A friendly early answer; the store's transaction has the last word.
        if let Some((same_ip, node)) = self.desired.holder(net.vni, ip, mac) {
            return Err(if same_ip {
                RequestError::DuplicateIp { ip, network: net.name, node }
            } else {
                RequestError::DuplicateMac { mac, network: net.name, node }
            });
        }
        Ok(net)
    }

    async fn add_endpoint(&mut self, spec: EndpointSpec) -> Result<EndpointInfo, RequestError> {
        let net = match spec.ip {
            Some(ip) => self.check_new(&spec.network, ip, spec.mac.unwrap_or_else(|| MacAddr::from_ipv4(ip)))?,
            None => {
                spec.mac.map(check_mac).transpose()?;
                self.network_named(&spec.network)?
            }
        };
        self.store_ready()?;
        let max = overlay_common::limits::MAX_FLOOD_PORTS;
        if self.local.keys().filter(|(vni, _)| *vni == net.vni).count() >= max {
            return Err(RequestError::TooManyEndpoints { network: net.name, max });
        }
        self.datapath.check_room()?;
        self.check_ports(&spec.publish)?;
        let ifname = spec.ifname.clone().unwrap_or_else(|| "eth0".into());
        if !spec.handoff {
            plumb::preflight(&spec.netns, &ifname).await?;
        }

        // 1. Claim the IP (the one asked for, or a free one) and the MAC cluster-wide.
        let (ip, mac) = self.claim_address(&net, spec.ip, spec.mac).await?;
        let plug = PlugSpec {
            node: self.config.node_name.clone(),
            network: net.name.clone(),
            vni: net.vni,
            netns: spec.netns.clone(),
            ifname: ifname.clone(),
            handoff: spec.handoff,
            ip,
            prefix_len: self.pool(&net).prefix_len(),
            gateway: self.desired.router(net.vni).map(|r| r.gateway),
            mac,
            mtu: net.effective_mtu(self.underlay_mtu),
            host_mtu: self.underlay_mtu,
        };
        // 2. Plug the veth in; 3. the datapath. Each failure undoes what came before.
        let plugged = match plumb::plug(&self.host, &plug).await {
            Ok(p) => p,
            Err(e) => {
                self.undo_claim(net.vni, ip).await;
                return Err(e.into());
            }
        };
        let ep = LocalEndpoint { vni: net.vni, ip, mac, ifindex: plugged.host_ifindex, ifname: plugged.host_ifname.clone() };
        self.desired.add_local(ep.clone());
        // Kernel mode: the veth's anti-spoofing rules (the table takes them from the
        // datapath's local endpoints) before it joins the bridge, so the container never
        // sends unchecked (the eBPF program checks from its first frame).
        if matches!(self.datapath, crate::datapath::AnyDatapath::Kernel(_))
            && let Err(e) = self.sync_firewall()
        {
            self.undo_plug(&ep).await;
            self.undo_claim(net.vni, ip).await;
            return Err(e.into());
        }
        // The veth's program (or bridge port) before the entries that make the container
        // reachable: attached after them, the first packet from another host could reach
        // the container while its answer's ARP request went to a veth without a program,
        // which the kernel drops (one second to the retry; seen in the bench).
        let attached = match self.datapath.attach_endpoint(&ep).await {
            Ok(()) => self.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = attached {
            self.undo_plug(&ep).await;
            self.undo_claim(net.vni, ip).await;
            return Err(e.into());
        }
        let record = LocalRecord {
            network: net.name.clone(),
            vni: net.vni,
            ip,
            mac,
            netns: spec.netns.clone(),
            ifname: plugged.handed_off.clone().unwrap_or(ifname),
            host_ifname: plugged.host_ifname.clone(),
            host_ifindex: plugged.host_ifindex,
            owner: spec.owner.clone(),
            publish: spec.publish.clone(),
        };
        self.local.insert((net.vni, ip), Local { record, unpublished: None });
        // 4. Published ports, once the container is reachable (and, in kernel mode, its
        // anti-spoofing rules).
        if self.firewall_follows(&spec.publish)
            && let Err(e) = self.sync_firewall()
        {
            self.local.remove(&(net.vni, ip));
            if let Err(undo) = self.sync_firewall() {
                warn!(error = %undo, "undo: rewriting the nftables table");
            }
            self.undo_plug(&ep).await;
            self.undo_claim(net.vni, ip).await;
            return Err(e.into());
        }
        self.save_state();
        info!(network = %net.name, ip = %ip, %mac, netns = %spec.netns, host_if = %plugged.host_ifname, owner = ?spec.owner, "endpoint added");
        let mut info = self.local_info(&self.local[&(net.vni, ip)]);
        info.handed_off = plugged.handed_off;
        Ok(info)
    }

    async fn undo_claim(&mut self, vni: u32, ip: Ipv4Addr) {
        if let Err(e) = registry::withdraw_endpoint(&self.kv, &self.keys, vni, ip, self.lease).await {
            warn!(error = %e, "undo: withdrawing the endpoint's claim; withdrawing it later");
            self.pending_withdrawals.push((vni, ip));
        }
    }

    async fn undo_plug(&mut self, ep: &LocalEndpoint) {
        self.keep_guard(ep);
        if let Err(e) = self.datapath.detach_endpoint(ep).await {
            warn!(error = %e, "undo: detaching the endpoint");
        }
        self.desired.remove_local(ep.ifindex);
        if let Err(e) = self.flush().await {
            warn!(error = %e, "undo: restoring the datapath tables");
        }
        if let Err(e) = plumb::unplug(&self.host, ep.ifindex).await {
            warn!(error = %e, "undo: deleting the veth");
        }
        self.drop_guard(ep);
    }

    /// Kernel mode: `ep`'s anti-spoofing rules stay in the table while its veth is
    /// taken out of the datapath and deleted (until [`Agent::drop_guard`]).
    fn keep_guard(&mut self, ep: &LocalEndpoint) {
        if matches!(self.datapath, crate::datapath::AnyDatapath::Kernel(_)) {
            self.unplugging.push(crate::firewall::Guard { ifname: ep.ifname.clone(), ip: ep.ip, mac: ep.mac });
        }
    }

    /// `ep`'s veth is gone (or could not be deleted: then its rules go too, so that no
    /// stale rule matches a new veth of the same name).
    fn drop_guard(&mut self, ep: &LocalEndpoint) {
        let before = self.unplugging.len();
        self.unplugging.retain(|g| g.ifname != ep.ifname);
        if self.unplugging.len() != before
            && let Err(e) = self.sync_firewall()
        {
            warn!(error = %e, "removing a deleted veth's anti-spoofing rules; retried with the next change");
        }
    }

    async fn del_endpoint(&mut self, network: &str, ip: Ipv4Addr) -> Result<EndpointInfo, RequestError> {
        let vni = self.config.network(network).map(|n| n.vni);
        let Some(local) = vni.and_then(|vni| self.local.remove(&(vni, ip))) else {
            return Err(RequestError::NoSuchEndpoint { ip, network: network.into() });
        };
        let info = self.local_info(&local);
        let vni = local.record.vni;
        // Its published ports go first: nothing may be forwarded to an address that is
        // about to be handed to another container.
        if self.firewall_follows(&local.record.publish)
            && let Err(e) = self.sync_firewall()
        {
            warn!(network, %ip, error = %e, "removing the endpoint's published ports; retried with the next change");
        }
        // Withdraw from peers first so they stop sending; if the store cannot take it
        // now, it is sent when the store is back (the endpoint goes locally at once).
        let withdrawn = if matches!(*self.conn.borrow(), Connection::Connected) {
            let (kv, keys, lease) = (self.kv.clone(), self.keys.clone(), self.lease);
            retrying(|| async { Ok(registry::withdraw_endpoint(&kv, &keys, vni, ip, lease).await?) }).await
        } else {
            Err(ClaimError::Raced { what: "the store is unreachable" })
        };
        if let Err(e) = withdrawn {
            warn!(network, %ip, error = %e, "cannot withdraw the endpoint from the store now; it will be when the store is back");
            self.pending_withdrawals.push((vni, ip));
        }
        let ep = LocalEndpoint {
            vni,
            ip,
            mac: local.record.mac,
            ifindex: local.record.host_ifindex,
            ifname: local.record.host_ifname.clone(),
        };
        self.save_state();
        self.keep_guard(&ep);
        let removed = self.remove_plugged(&ep).await;
        self.drop_guard(&ep);
        removed?;
        info!(network, %ip, "endpoint deleted");
        Ok(info)
    }

    async fn remove_plugged(&mut self, ep: &LocalEndpoint) -> Result<(), RequestError> {
        self.datapath.detach_endpoint(ep).await?;
        self.desired.remove_local(ep.ifindex);
        self.flush().await?;
        plumb::unplug(&self.host, ep.ifindex).await?;
        Ok(())
    }

    async fn add_static(&mut self, spec: RemoteSpec) -> Result<EndpointInfo, RequestError> {
        let net = self.network_named(&spec.network)?;
        if net.mode == crate::config::NetworkMode::L3 {
            return Err(RequestError::StaticInL3 { network: net.name });
        }
        let net = self.check_new(&spec.network, spec.ip, spec.mac)?;
        let v = spec.vtep;
        if v == self.vtep || !is_unicast(v) {
            return Err(RequestError::BadVtep { vtep: v, own: self.vtep });
        }
        self.store_ready()?;
        let st = StaticRecord {
            network: net.name.clone(),
            mac: spec.mac,
            vtep: v,
            udp_port: net.udp_port,
            declared_by: self.config.node_name.clone(),
        };
        let (kv, keys) = (self.kv.clone(), self.keys.clone());
        self.store_write(|| registry::put_static(&kv, &keys, net.vni, spec.ip, &st)).await?;
        // Apply now rather than when the watch reports it (read your own writes).
        self.desired.put(Record::Static(net.vni, spec.ip, st.clone()));
        self.flush().await?;
        info!(network = %st.network, ip = %spec.ip, mac = %st.mac, vtep = %st.vtep, "static endpoint added");
        Ok(static_info(net.vni, spec.ip, &st))
    }

    async fn del_static(&mut self, network: &str, ip: Ipv4Addr) -> Result<EndpointInfo, RequestError> {
        let no_such = || RequestError::NoSuchStatic { ip, network: network.into() };
        let vni = self.config.network(network).map(|n| n.vni).ok_or_else(no_such)?;
        self.store_ready()?;
        let (kv, keys) = (self.kv.clone(), self.keys.clone());
        let removed = self.store_write(|| async { Ok(registry::del_static(&kv, &keys, vni, ip).await?) }).await?;
        let st = removed.ok_or_else(no_such)?;
        self.desired.delete(&RecordKey::Static(vni, ip));
        self.flush().await?;
        info!(network, %ip, "static endpoint deleted");
        Ok(static_info(vni, ip, &st))
    }
}
