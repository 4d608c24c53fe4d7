//! `overlay-agent down`: removes everything this node made: its store records and lease
//! (peers drop the node at once), its programs, links, pins and the qdisc it added, its
//! containers' veths, bridges and VXLAN devices, its state file. Every step is tried;
//! the failures come back together, each with its cause.
//!
//! With the agent running, `down` is a request it carries out before exiting; without
//! it, [`down_offline`] does the same from the saved state, the pins and the kernel.

use std::{collections::BTreeSet, fmt};

use tracing::{info, warn};

use super::Agent;
use crate::{
    config::Config,
    datapath::{Datapath, DatapathError, LocalEndpoint, devices, ebpf},
    netlink::{Netlink, NetlinkError},
    plumb::{self, PlumbError},
    records::NodeRecord,
    docker::state::{DockerState, DockerStateError},
    state::{self, StateError},
    store::{AnyKv, StoreError, keys::Keys, kv::Kv},
};

/// One step of `down` that failed.
#[derive(Debug, thiserror::Error)]
pub enum TeardownFailure {
    #[error("revoking the node's lease (its records leave the store when the lease ends): {0}")]
    Lease(#[source] StoreError),
    #[error("removing the datapath: {0}")]
    Datapath(#[source] DatapathError),
    #[error("removing the eBPF pins and programs: {0}")]
    Ebpf(#[source] ebpf::EbpfError),
    #[error("removing the network devices: {0}")]
    Devices(#[source] devices::DeviceError),
    #[error("removing the agent's nftables table: {0}")]
    Firewall(#[source] crate::firewall::FirewallError),
    #[error("deleting the veth {name}: {source}")]
    Veth {
        name: String,
        #[source]
        source: PlumbError,
    },
    #[error("netlink: {0}")]
    Netlink(#[source] NetlinkError),
    #[error("the agent state: {0}")]
    State(#[source] StateError),
    #[error("the Docker plugin: {0}")]
    Docker(#[source] DockerStateError),
}

/// `down` did not remove everything.
#[derive(Debug)]
pub struct TeardownError {
    pub failures: Vec<TeardownFailure>,
}

impl fmt::Display for TeardownError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`down` could not remove everything ({} failures):", self.failures.len())?;
        for failure in &self.failures {
            write!(f, "\n  - {failure}")?;
        }
        write!(f, "\nfix the cause and run `overlay-agent down` again (it is idempotent)")
    }
}

impl std::error::Error for TeardownError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.failures.first().map(|f| f as &(dyn std::error::Error + 'static))
    }
}

fn finish(removed: Vec<String>, failures: Vec<TeardownFailure>) -> Result<Vec<String>, TeardownError> {
    if failures.is_empty() {
        info!(?removed, "down: everything this node made is removed");
        Ok(removed)
    } else {
        for f in &failures {
            warn!(error = %f, "down");
        }
        Err(TeardownError { failures })
    }
}

/// `down` with the agent running.
pub(super) async fn down(mut agent: Agent) -> Result<Vec<String>, TeardownError> {
    let mut removed = Vec::new();
    let mut failures = Vec::new();
    if agent.lease != 0 {
        match agent.kv.revoke(agent.lease).await {
            Ok(()) => removed.push(format!("lease {:x} and the node's store records", agent.lease)),
            Err(e) => failures.push(TeardownFailure::Lease(e)),
        }
    }
    for l in std::mem::take(&mut agent.local).into_values() {
        let r = l.record;
        let ep = LocalEndpoint { vni: r.vni, ip: r.ip, mac: r.mac, ifindex: r.host_ifindex, ifname: r.host_ifname.clone() };
        if let Err(e) = agent.datapath.detach_endpoint(&ep).await {
            failures.push(TeardownFailure::Datapath(e));
        }
        match plumb::unplug(&agent.host, r.host_ifindex).await {
            Ok(()) => removed.push(format!("veth {} ({} in {})", r.host_ifname, r.ip, r.network)),
            Err(source) => failures.push(TeardownFailure::Veth { name: r.host_ifname, source }),
        }
    }
    let mode = agent.datapath.mode();
    failures.extend(agent.datapath.remove().await.into_iter().map(TeardownFailure::Datapath));
    removed.push(format!("the {mode} datapath"));
    match state::remove(&agent.config.state_dir) {
        Ok(()) => removed.push("the agent state".into()),
        Err(e) => failures.push(TeardownFailure::State(e)),
    }
    remove_docker_plugin(&agent.config, &mut removed, &mut failures);
    finish(removed, failures)
}

/// `down` without the agent: from the saved state, the pins, the kernel and the store.
pub async fn down_offline(config: &Config) -> Result<Vec<String>, TeardownError> {
    let mut removed = Vec::new();
    let mut failures = Vec::new();
    let saved = match state::load(&config.state_dir, &config.node_name) {
        Ok(s) => s,
        Err(e) => {
            failures.push(TeardownFailure::State(e));
            None
        }
    };
    let nl = match Netlink::open().await {
        Ok(nl) => nl,
        Err(e) => return Err(TeardownError { failures: vec![TeardownFailure::Netlink(e)] }),
    };

    // The store: the saved lease, or the lease holding this node's record if it is this
    // host's (same VTEP), as after a crash that lost the state.
    match revoke_offline(config, saved.as_ref().map_or(0, |s| s.lease), &nl).await {
        Ok(Some(lease)) => removed.push(format!("lease {lease:x} and the node's store records")),
        Ok(None) => {}
        Err(e) => failures.push(TeardownFailure::Lease(e)),
    }

    // Containers' veths: every link with this node's alias.
    match plumb::own_veths(&nl, &config.node_name).await {
        Ok(veths) => {
            for (index, name, vni, ip) in veths {
                match plumb::unplug(&nl, index).await {
                    Ok(()) => removed.push(format!("veth {name} ({ip} in VNI {vni})")),
                    Err(source) => failures.push(TeardownFailure::Veth { name, source }),
                }
            }
        }
        Err(source) => failures.push(TeardownFailure::Veth { name: "(listing)".into(), source }),
    }

    // eBPF: pins (maps, tcx links) and a netlink filter on the underlay.
    match ebpf::remove_residue(&config.bpffs_dir, &config.underlay_interface) {
        Ok(0) => {}
        Ok(n) => removed.push(format!("{n} eBPF pins under {}", config.bpffs_dir.display())),
        Err(e) => failures.push(TeardownFailure::Ebpf(e)),
    }
    if saved.as_ref().is_some_and(|s| s.clsact_added) {
        match nl.link_by_name(&config.underlay_interface).await {
            Ok(Some(l)) => match nl.delete_clsact(l.index).await {
                Ok(()) => removed.push(format!("the clsact qdisc of {}", config.underlay_interface)),
                Err(e) => failures.push(TeardownFailure::Netlink(e)),
            },
            Ok(None) => {}
            Err(e) => failures.push(TeardownFailure::Netlink(e)),
        }
    }

    // Devices of the configured networks, and of networks only the state remembers.
    let mut vnis: BTreeSet<u32> = config.networks.iter().map(|n| n.vni).collect();
    vnis.extend(saved.iter().flat_map(|s| s.endpoints.iter().map(|e| e.vni)));
    match devices::remove_named(&nl, vnis).await {
        Ok(()) => removed.push("the networks' bridges and VXLAN devices".into()),
        Err(e) => failures.push(TeardownFailure::Devices(e)),
    }
    match crate::firewall::remove() {
        Ok(_) => {}
        Err(e) => failures.push(TeardownFailure::Firewall(e)),
    }
    match state::remove(&config.state_dir) {
        Ok(()) => {}
        Err(e) => failures.push(TeardownFailure::State(e)),
    }
    remove_docker_plugin(config, &mut removed, &mut failures);
    finish(removed, failures)
}

/// The Docker plugin's socket and the driver's state. Docker networks made with the
/// plugin stay in dockerd (`docker network rm` them); their containers lost their veths.
fn remove_docker_plugin(config: &Config, removed: &mut Vec<String>, failures: &mut Vec<TeardownFailure>) {
    let socket = config.docker.socket_path();
    if config.docker.enabled {
        match std::fs::remove_file(&socket) {
            Ok(()) => removed.push(format!("the Docker plugin socket {}", socket.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => failures.push(TeardownFailure::Docker(DockerStateError::Io { path: socket, source })),
        }
    }
    if let Err(e) = DockerState::remove(&config.state_dir) {
        failures.push(TeardownFailure::Docker(e));
    }
}

/// Revokes this node's lease; returns it, or `None` if the store holds nothing of it.
async fn revoke_offline(config: &Config, saved: i64, nl: &Netlink) -> Result<Option<i64>, StoreError> {
    let kv = AnyKv::open(&config.store).await?;
    let keys = Keys::new(&config.store.prefix);
    let mut lease = saved;
    if lease == 0
        && let Some(kv_node) = kv.get(&keys.node(&config.node_name)).await?
    {
        let vtep = match config.vtep_ip {
            Some(v) => Some(v),
            None => match nl.link_by_name(&config.underlay_interface).await {
                Ok(Some(l)) => nl.first_ipv4(l.index).await.ok().flatten(),
                _ => None,
            },
        };
        let record: Option<NodeRecord> = serde_json::from_slice(&kv_node.value).ok();
        if record.is_some_and(|r| Some(r.vtep) == vtep) {
            lease = kv_node.lease;
        }
    }
    if lease == 0 {
        return Ok(None);
    }
    kv.revoke(lease).await?;
    Ok(Some(lease))
}
