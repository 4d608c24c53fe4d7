//! The agent's TOML configuration: parsing, defaults and validation.
//!
//! Validation happens in full before the agent touches anything, and an invalid file
//! yields one error naming the offending field, so the agent never half-configures.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::{
    docker::DockerConfig,
    paths,
    store::{
        etcd::{EtcdSettings, EtcdTls},
        keys::DEFAULT_PREFIX,
    },
};
use overlay_common::{limits, vxlan};

#[cfg(test)]
mod tests;
mod validate;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path} (pass --config FILE or set {env})", env = paths::CONFIG_ENV)]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("invalid config: `{field}` {problem}")]
    Invalid { field: String, problem: String },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// The file as written by the user (optional fields still optional).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub node_name: String,
    pub underlay_interface: String,
    #[serde(default)]
    pub vtep_ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub bpffs_dir: Option<PathBuf>,
    #[serde(default, rename = "network")]
    pub networks: Vec<RawNetwork>,
    pub store: StoreConfig,
    #[serde(default)]
    pub datapath: DatapathConfig,
    #[serde(default)]
    pub docker: DockerConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The control socket is root's only (mode 0600); with a group, that group may use
    /// it too (0660, owned by root and the group).
    #[serde(default)]
    pub socket_group: Option<String>,
}

/// `[metrics]`: Prometheus metrics over HTTP (`GET /metrics`, text exposition format).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where to serve them, e.g. `127.0.0.1:9464`; off when absent.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
}

/// Which datapath forwards the overlay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DatapathMode {
    /// eBPF when every feature it needs works on this host, else the kernel VXLAN device.
    #[default]
    Auto,
    /// The eBPF datapath; refuse to start if it cannot run.
    Ebpf,
    /// The kernel's bridge + VXLAN device (the classic recipe, built over netlink).
    Kernel,
}

impl std::fmt::Display for DatapathMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DatapathMode::Auto => "auto",
            DatapathMode::Ebpf => "ebpf",
            DatapathMode::Kernel => "kernel",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatapathConfig {
    #[serde(default)]
    pub mode: DatapathMode,
    /// eBPF neighbour map (ARP answers): local plus remote endpoints of every network.
    #[serde(default = "default_neigh_capacity")]
    pub neigh_capacity: u32,
    /// eBPF FDB map: local plus remote MACs of every network.
    #[serde(default = "default_fdb_capacity")]
    pub fdb_capacity: u32,
    /// eBPF local endpoint map: containers on this host.
    #[serde(default = "default_endpoint_capacity")]
    pub endpoint_capacity: u32,
    /// Kernel mode: how often the agent compares the kernel's neighbour and FDB tables
    /// with what they should hold and repairs them (a VXLAN device set down and up
    /// loses its entries).
    #[serde(default = "default_kernel_resync_s")]
    pub kernel_resync_s: u64,
}

fn default_neigh_capacity() -> u32 {
    limits::DEFAULT_NEIGH
}
fn default_fdb_capacity() -> u32 {
    limits::DEFAULT_FDB
}
fn default_endpoint_capacity() -> u32 {
    limits::DEFAULT_LOCAL_ENDPOINTS
}
fn default_kernel_resync_s() -> u64 {
    10
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            mode: DatapathMode::default(),
            neigh_capacity: default_neigh_capacity(),
            fdb_capacity: default_fdb_capacity(),
            endpoint_capacity: default_endpoint_capacity(),
            kernel_resync_s: default_kernel_resync_s(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub name: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    #[serde(default)]
    pub udp_port: Option<u16>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// `l2` (one subnet stretched over every host) or `l3` (a node subnet per host,
    /// routed).
    #[serde(default)]
    pub mode: NetworkMode,
    /// L3: the length of each node's subnet carved out of `subnet` (default 24).
    #[serde(default)]
    pub node_prefix_len: Option<u8>,
    /// L3: this host's node subnet, instead of one allocated from the store.
    #[serde(default)]
    pub node_subnet: Option<Ipv4Net>,
    /// Containers reach their own host through a gateway (default true). L2: one
    /// address of the subnet, the same on every host (an anycast gateway); L3: the node
    /// subnet's first address, which routes anyway.
    #[serde(default)]
    pub gateway: Option<bool>,
    /// Traffic from containers to destinations outside every overlay network leaves
    /// through the host's routing with source NAT to the host's address (default true;
    /// needs the gateway).
    #[serde(default)]
    pub masquerade: Option<bool>,
    /// eBPF datapath: VXLAN of this network is decapsulated only from VTEPs the store
    /// knows for it (its nodes, static endpoints and static subnets); default true.
    /// `false` accepts any source (peers that are neither agents nor declared with
    /// `remote add`).
    #[serde(default)]
    pub known_vteps_only: Option<bool>,
}

/// How a network spans hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// One L2 segment across every host: every container's MAC and IP in every host's
    /// tables (the "big network" of seeds/003).
    #[default]
    L2,
    /// A node subnet per host, routed between hosts (flannel's VXLAN backend): tables
    /// grow with hosts, not containers.
    L3,
}

/// The default `node_prefix_len` of an L3 network.
pub const DEFAULT_NODE_PREFIX_LEN: u8 = 24;

/// `[store]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// A directory shared by all agents on one machine (the lab, CI).
    Dir {
        path: PathBuf,
        #[serde(default)]
        prefix: Option<String>,
        #[serde(default)]
        lease_ttl_s: Option<u64>,
    },
    /// An etcd v3 cluster.
    Etcd {
        endpoints: Vec<String>,
        #[serde(default)]
        prefix: Option<String>,
        #[serde(default)]
        lease_ttl_s: Option<u64>,
        #[serde(default)]
        ca_file: Option<PathBuf>,
        #[serde(default)]
        cert_file: Option<PathBuf>,
        #[serde(default)]
        key_file: Option<PathBuf>,
    },
}

/// How a node's lease is long by default. A dead node's endpoints vanish from every
/// other host within this (+ about 2 s); an agent restart or an etcd outage shorter than
/// this is invisible to peers. 60 s: Kubernetes marks a node lost after 40-50 s, and
/// Cilium found a 60 s session too short only because it restarted by revoking.
pub const DEFAULT_LEASE_TTL_S: u64 = 60;
/// Shortest lease allowed: keep-alives go every third of it.
pub const MIN_LEASE_TTL_S: u64 = 2;
pub const MAX_LEASE_TTL_S: u64 = 24 * 3600;

/// The validated `[store]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    pub backend: Backend,
    /// Key prefix, without a trailing `/`.
    pub prefix: String,
    pub lease_ttl: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Dir { path: PathBuf },
    Etcd(EtcdSettings),
}

/// A validated configuration with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub node_name: String,
    pub underlay_interface: String,
    /// `None`: the first IPv4 address of the underlay interface, found at start-up.
    pub vtep_ip: Option<Ipv4Addr>,
    pub state_dir: PathBuf,
    pub bpffs_dir: PathBuf,
    pub networks: Vec<Network>,
    pub store: StoreSettings,
    pub datapath: DatapathConfig,
    pub docker: DockerConfig,
    pub metrics: MetricsConfig,
    /// A group that may use the control socket besides root.
    pub socket_group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    pub name: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    pub udp_port: u16,
    /// `None`: underlay MTU − 50, found at start-up.
    pub mtu: Option<u32>,
    pub mode: NetworkMode,
    /// L3 only: the length of every node subnet.
    pub node_prefix_len: u8,
    /// L3 only: this host's node subnet as configured (else allocated from the store).
    pub node_subnet: Option<Ipv4Net>,
    /// Containers reach their host (and, with `masquerade`, the world) through a gateway.
    pub gateway: bool,
    pub masquerade: bool,
    /// VXLAN only from the VTEPs the store knows for this network (eBPF datapath).
    pub known_vteps_only: bool,
}

impl Network {
    /// The container MTU given the underlay's MTU.
    pub fn effective_mtu(&self, underlay_mtu: u32) -> u32 {
        self.mtu
            .unwrap_or(underlay_mtu.saturating_sub(vxlan::OVERHEAD))
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source: Box::new(source),
        })?;
        raw.validate()
    }

    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    pub fn network_by_vni(&self, vni: u32) -> Option<&Network> {
        self.networks.iter().find(|n| n.vni == vni)
    }

    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join(paths::SOCKET_NAME)
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.bpffs_dir.join(paths::MAPS_SUBDIR)
    }
}
