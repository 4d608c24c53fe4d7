//! Start-up: check the host, open the store, choose and adopt the datapath, adopt the
//! local endpoints a previous run left. Nothing on the host changes before the checks
//! pass; a start that fails after that leaves what a previous run made in place.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use tokio::{net::UnixListener, sync::watch};
use tracing::{info, warn};

use super::{Agent, AgentError, Local};
use crate::{
    api::server,
    docker::state::DockerState,
    config::{Config, DatapathMode},
    datapath::{
        AnyDatapath, Datapath, Desired, LocalEndpoint,
        devices::{self, NetSpec},
        ebpf::{self, Capacities, EbpfDatapath, EbpfSettings},
        kernel::KernelDatapath,
    },
    netlink::{LinkInfo, Netlink},
    plumb,
    state::{self, AgentState},
    store::{AnyKv, keys::Keys, kv::Kv},
};

/// What the host looks like to the agent.
struct HostFacts {
    underlay: LinkInfo,
    vtep: std::net::Ipv4Addr,
    networks: Vec<NetSpec>,
}

async fn check_host(config: &Config, host: &Netlink) -> Result<HostFacts, AgentError> {
    let nl = |source| AgentError::Netlink { source };
    let underlay = host
        .link_by_name(&config.underlay_interface)
        .await
        .map_err(nl)?
        .ok_or_else(|| AgentError::NoUnderlay { name: config.underlay_interface.clone() })?;
    let vtep = match config.vtep_ip {
        Some(ip) => ip,
        None => host
            .first_ipv4(underlay.index)
            .await
            .map_err(nl)?
            .ok_or_else(|| AgentError::NoVtep { name: underlay.name.clone() })?,
    };
    let mut networks = Vec::new();
    for n in &config.networks {
        let mtu = n.effective_mtu(underlay.mtu);
        let max = underlay.mtu.saturating_sub(overlay_common::vxlan::OVERHEAD);
        if mtu > max {
            return Err(AgentError::MtuTooLarge {
                network: n.name.clone(),
                mtu,
                underlay: underlay.name.clone(),
                underlay_mtu: underlay.mtu,
                max,
            });
        }
        if mtu < 576 {
            return Err(AgentError::MtuTooSmall { network: n.name.clone(), mtu });
        }
        networks.push(NetSpec {
            vni: n.vni,
            udp_port: n.udp_port,
            mtu,
            subnet: n.subnet,
            router: None,
            known_vteps_only: n.known_vteps_only,
        });
    }
    Ok(HostFacts { underlay, vtep, networks })
}

/// Starts the datapath `mode` asks for, adopting what a previous run left. `auto` tries
/// eBPF and falls back to the kernel datapath, saying exactly why; a forced `ebpf` that
/// cannot run is an error. Switching modes removes the other mode's residue.
async fn select_datapath(
    mode: DatapathMode,
    s: &EbpfSettings,
    host: &Netlink,
) -> Result<AnyDatapath, AgentError> {
    let kernel = |reason: String| KernelDatapath::start(host.clone(), s.vtep, s.underlay_ifindex, &s.networks, reason);
    match mode {
        DatapathMode::Ebpf => {
            let d = EbpfDatapath::start(s, host.clone()).await.map_err(AgentError::Ebpf)?;
            Ok(AnyDatapath::Ebpf(Box::new(d)))
        }
        DatapathMode::Kernel => {
            clean_ebpf_residue(s);
            Ok(AnyDatapath::Kernel(Box::new(kernel("datapath.mode=kernel".into()).await?)))
        }
        DatapathMode::Auto => match EbpfDatapath::start(s, host.clone()).await {
            Ok(d) => Ok(AnyDatapath::Ebpf(Box::new(d))),
            Err(e) => {
                let e = crate::with_causes(&e);
                let reason = format!("auto: {e}");
                warn!("{e}; using kernel VXLAN fallback (datapath.mode=kernel to silence)");
                clean_ebpf_residue(s);
                Ok(AnyDatapath::Kernel(Box::new(kernel(reason).await?)))
            }
        },
    }
}

/// Kernel mode after an eBPF run: its pins (maps, tcx links) and, on kernels without
/// tcx, its netlink filter on the underlay go.
fn clean_ebpf_residue(s: &EbpfSettings) {
    match ebpf::remove_residue(&s.bpffs_dir, &s.underlay_ifname) {
        Ok(0) => {}
        Ok(n) => warn!(pins = n, "removed the eBPF datapath of an earlier run (another mode now)"),
        Err(e) => warn!(error = %e, "removing the eBPF datapath of an earlier run"),
    }
}

/// Keeps the endpoints of `state` whose host-side veth is still there (same name, same
/// ifindex, this node's alias); the others went while the agent was down.
async fn adopt_locals(host: &Netlink, node: &str, saved: &AgentState) -> Result<(Vec<Local>, Vec<(u32, std::net::Ipv4Addr)>), AgentError> {
    let mut kept = Vec::new();
    let mut gone = Vec::new();
    for r in &saved.endpoints {
        let link = host.link_by_index(r.host_ifindex).await.map_err(|source| AgentError::Netlink { source })?;
        let ours = plumb::alias(node, r.vni, r.ip);
        match link {
            Some(l) if l.name == r.host_ifname && l.alias.as_deref() == Some(ours.as_str()) => {
                kept.push(Local { record: r.clone(), unpublished: None });
            }
            _ => {
                info!(network = %r.network, ip = %r.ip, veth = %r.host_ifname, "endpoint's veth is gone (its container went while the agent was down); withdrawing it");
                gone.push((r.vni, r.ip));
            }
        }
    }
    Ok((kept, gone))
}

/// The sockets the agent serves.
pub(super) struct Listeners {
    pub control: UnixListener,
    /// The Docker plugin's (`[docker] enabled`), and the driver's saved state.
    pub docker: Option<(UnixListener, DockerState)>,
    /// Prometheus metrics (`[metrics] listen`).
    pub metrics: Option<tokio::net::TcpListener>,
}

/// Everything up to the main loop: the agent, and the sockets it serves.
pub(super) async fn start(config: Config) -> Result<(Agent, Listeners), AgentError> {
    let host = Netlink::open().await.map_err(|source| AgentError::Netlink { source })?;
    let facts = check_host(&config, &host).await?;
    let saved = state::load(&config.state_dir, &config.node_name)?;

    // Nothing has changed on the host up to here.
    let listener = server::bind(&config.socket_path(), config.socket_group.as_deref()).await?;
    let docker = match config.docker.enabled {
        true => {
            let state = DockerState::load(&config.state_dir).map_err(AgentError::Docker)?;
            Some((server::bind(&config.docker.socket_path(), None).await?, state))
        }
        false => None,
    };
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(crate::metrics::bind(addr).await.map_err(AgentError::Metrics)?),
        None => None,
    };
    let kv = AnyKv::open(&config.store).await.map_err(AgentError::Store)?;
    let keys = Keys::new(&config.store.prefix);
    let saved_lease = saved.as_ref().filter(|s| s.store == kv.describe()).map_or(0, |s| s.lease);
    let record = crate::records::NodeRecord {
        node: config.node_name.clone(),
        vtep: facts.vtep,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let early = super::control::register_early(&kv, &keys, &record, saved_lease, config.store.lease_ttl)
        .await
        .map_err(AgentError::Claim)?;
    let lease = early.unwrap_or(saved_lease);
    let routers = super::subnets::acquire(&config, &kv, &keys, early, saved.as_ref()).await?;
    let mut facts = facts;
    for spec in &mut facts.networks {
        spec.router = routers.get(&spec.vni).copied();
    }
    let settings = EbpfSettings {
        vtep: facts.vtep,
        underlay_ifindex: facts.underlay.index,
        underlay_ifname: facts.underlay.name.clone(),
        networks: facts.networks.clone(),
        bpffs_dir: config.bpffs_dir.clone(),
        capacities: Capacities {
            neigh: config.datapath.neigh_capacity,
            fdb: config.datapath.fdb_capacity,
            endpoints: config.datapath.endpoint_capacity,
        },
        clsact_added: saved.as_ref().is_some_and(|s| s.clsact_added),
    };
    let mut datapath = select_datapath(config.datapath.mode, &settings, &host).await?;
    // Devices of networks no longer in the config.
    if let Some(s) = &saved {
        let served: BTreeSet<u32> = facts.networks.iter().map(|n| n.vni).collect();
        let stale: BTreeSet<u32> = s.endpoints.iter().map(|e| e.vni).filter(|v| !served.contains(v)).collect();
        if let Err(e) = devices::remove_named(&host, stale).await {
            warn!(error = %e, "removing the devices of networks no longer served");
        }
    }

    let (locals, gone) = match &saved {
        Some(s) => adopt_locals(&host, &config.node_name, s).await?,
        None => (Vec::new(), Vec::new()),
    };
    let keep: BTreeSet<u32> = locals.iter().map(|l| l.record.host_ifindex).collect();
    match plumb::remove_orphans(&host, &config.node_name, &keep).await {
        Ok(0) => {}
        Ok(n) => warn!(veths = n, "removed veths of endpoints no run recorded"),
        Err(e) => warn!(error = %e, "removing veths of endpoints no run recorded"),
    }

    let served = config.networks.iter().map(|n| (n.vni, n.udp_port)).collect();
    let mut desired = Desired::new(&config.node_name, served);
    for (&vni, &r) in &routers {
        desired.set_router(vni, r);
    }
    let mut local = BTreeMap::new();
    for l in locals {
        if config.network_by_vni(l.record.vni).is_none() {
            info!(network = %l.record.network, ip = %l.record.ip, "endpoint of a network no longer served; removing it");
            if let Err(e) = plumb::unplug(&host, l.record.host_ifindex).await {
                warn!(error = %e, "removing the endpoint's veth");
            }
            continue;
        }
        let ep = LocalEndpoint {
            vni: l.record.vni,
            ip: l.record.ip,
            mac: l.record.mac,
            ifindex: l.record.host_ifindex,
            ifname: l.record.host_ifname.clone(),
        };
        datapath.attach_endpoint(&ep).await?;
        desired.add_local(ep);
        local.insert((l.record.vni, l.record.ip), l);
    }

    let mut pending = saved.as_ref().map(|s| s.pending_withdrawals.clone()).unwrap_or_default();
    pending.extend(gone);
    let (lease_tx, _) = watch::channel(lease);
    let conn = kv.connection();
    let subnets = config.networks.iter().map(|n| (n.vni, n.subnet)).collect();
    let ebpf = matches!(datapath, crate::datapath::AnyDatapath::Ebpf(_));
    let metrics = crate::metrics::Metrics::new(ebpf.then(|| crate::datapath::ebpf::maps_dir(&config.bpffs_dir)))
        .map_err(AgentError::Metrics)?;
    metrics.set_datapath(datapath.mode(), &config.node_name);
    metrics.set_store_connected(*conn.borrow() == crate::store::kv::Connection::Connected);
    let mut agent = Agent {
        keys: keys.clone(),
        clsact_added: settings.clsact_added,
        config,
        host,
        datapath,
        kv,
        vtep: facts.vtep,
        underlay_mtu: facts.underlay.mtu,
        desired,
        local,
        lease,
        lease_tx,
        registered: false,
        synced: false,
        pending_withdrawals: pending,
        conn,
        register_error: None,
        decoder: crate::store::sync::Decoder::new(keys.clone(), subnets),
        started: Instant::now(),
        watch_started: Instant::now(),
        initial_sync: None,
        metrics,
        tracing: false,
        firewall_written: std::sync::Mutex::new(None),
        unplugging: Vec::new(),
    };
    // Local entries only: nothing learnt from the store is removed before its first
    // full list has been applied.
    agent.flush().await?;
    // The gateways' NAT and the published ports of adopted endpoints.
    agent.sync_firewall().map_err(AgentError::Firewall)?;
    agent.save_state();
    info!(adopted = agent.local.len(), mode = agent.datapath.mode(), "datapath and local endpoints in place");
    agent.update_table_metrics();
    Ok((agent, Listeners { control: listener, docker, metrics: metrics_listener }))
}
