//! The datapath: how frames actually move. The agent decides *what* must be
//! forwarded ([`Forwarding`]); a [`Datapath`] makes the kernel do it. The eBPF
//! implementation lives in [`ebpf`]; a kernel-VXLAN-device implementation can sit
//! beside it behind the same trait.

pub mod devices;
pub mod ebpf;
pub mod inspect;
pub mod kernel;
pub mod pinned;
pub mod probe;
#[cfg(test)]
mod prog_tests;
pub mod tables;

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::Serialize;

use crate::mac::MacAddr;

/// A container on this host, as the datapath needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalEndpoint {
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// The host-side veth.
    pub ifindex: u32,
    pub ifname: String,
}

/// A container on another host, or a static endpoint behind a VTEP with no agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteEndpoint {
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub vtep: Ipv4Addr,
    pub udp_port: u16,
    /// The owning node, or `static` for `remote add` endpoints.
    pub node: String,
}

impl Forwarding {
    /// Every remote VTEP (with its UDP port) of each network: where broadcast and
    /// unknown unicast are replicated head-end.
    pub fn flood_targets(&self) -> std::collections::BTreeSet<(u32, Ipv4Addr, u16)> {
        self.remote.values().map(|r| (r.vni, r.vtep, r.udp_port)).collect()
    }
}

/// Everything this host must forward, whatever the datapath.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarding {
    /// By host-side veth ifindex.
    pub local: BTreeMap<u32, LocalEndpoint>,
    /// By (VNI, MAC).
    pub remote: BTreeMap<(u32, MacAddr), RemoteEndpoint>,
}

/// What `status` shows about the datapath.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DatapathStatus {
    pub mode: String,
    /// Why this mode, or which kernel features it uses.
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    Ebpf(#[from] ebpf::EbpfError),
    #[error(transparent)]
    Devices(#[from] devices::DeviceError),
}

#[expect(async_fn_in_trait, reason = "used with static dispatch on the agent's own runtime")]
pub trait Datapath {
    fn status(&self) -> DatapathStatus;
    /// Makes a freshly created host-side veth part of the datapath.
    async fn attach_endpoint(&mut self, ep: &LocalEndpoint) -> Result<(), DatapathError>;
    /// Undoes [`Datapath::attach_endpoint`]; fine if the veth is already gone.
    async fn detach_endpoint(&mut self, ifindex: u32) -> Result<(), DatapathError>;
    /// Makes the forwarding tables equal `fwd`: adds what is missing, then removes
    /// what is stale (adding first so a changed entry never blackholes).
    async fn sync(&mut self, fwd: &Forwarding) -> Result<(), DatapathError>;
    /// Removes everything this datapath made.
    async fn shutdown(self) -> Result<(), DatapathError>;
}

/// The datapath the agent runs: chosen at start-up by `[datapath] mode`.
pub enum AnyDatapath {
    /// Boxed: the eBPF datapath (its loaded object and links) is far larger than the
    /// kernel one.
    Ebpf(Box<ebpf::EbpfDatapath>),
    Kernel(kernel::KernelDatapath),
}

impl Datapath for AnyDatapath {
    fn status(&self) -> DatapathStatus {
        match self {
            AnyDatapath::Ebpf(d) => d.status(),
            AnyDatapath::Kernel(d) => d.status(),
        }
    }

    async fn attach_endpoint(&mut self, ep: &LocalEndpoint) -> Result<(), DatapathError> {
        match self {
            AnyDatapath::Ebpf(d) => d.attach_endpoint(ep).await,
            AnyDatapath::Kernel(d) => d.attach_endpoint(ep).await,
        }
    }

    async fn detach_endpoint(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        match self {
            AnyDatapath::Ebpf(d) => d.detach_endpoint(ifindex).await,
            AnyDatapath::Kernel(d) => d.detach_endpoint(ifindex).await,
        }
    }

    async fn sync(&mut self, fwd: &Forwarding) -> Result<(), DatapathError> {
        match self {
            AnyDatapath::Ebpf(d) => d.sync(fwd).await,
            AnyDatapath::Kernel(d) => d.sync(fwd).await,
        }
    }

    async fn shutdown(self) -> Result<(), DatapathError> {
        match self {
            AnyDatapath::Ebpf(d) => (*d).shutdown().await,
            AnyDatapath::Kernel(d) => d.shutdown().await,
        }
    }
}
