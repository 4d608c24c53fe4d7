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

/// Smallest MTU IPv4 requires of a link (RFC 791).
const MIN_MTU: u32 = 576;
const MAX_MTU: u32 = 65_535 - vxlan::OVERHEAD;

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

/// Names become parts of paths and of the store's keys: keep them boring.
fn check_name(field: &str, name: &str, max: usize) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > max {
        return Err(invalid(field, format!("must be 1 to {max} characters long")));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        || name.starts_with('.')
    {
        return Err(invalid(
            field,
            format!("{name:?} may contain only letters, digits, '-', '_' and '.' (not leading)"),
        ));
    }
    Ok(())
}

fn validate_store(raw: StoreConfig) -> Result<StoreSettings, ConfigError> {
    let (backend, prefix, ttl) = match raw {
        StoreConfig::Dir { path, prefix, lease_ttl_s } => {
            if path.as_os_str().is_empty() || path.is_relative() {
                return Err(invalid("store.path", "must be an absolute directory path"));
            }
            (Backend::Dir { path }, prefix, lease_ttl_s)
        }
        StoreConfig::Etcd { endpoints, prefix, lease_ttl_s, ca_file, cert_file, key_file } => {
            if endpoints.is_empty() {
                return Err(invalid("store.endpoints", "is empty: list the etcd client URLs, e.g. [\"http://198.51.100.250:2379\"]"));
            }
            let mut schemes = BTreeSet::new();
            for (i, e) in endpoints.iter().enumerate() {
                let scheme = e.split_once("://").map(|(s, _)| s);
                let host = e.split_once("://").map_or("", |(_, h)| h);
                match scheme {
                    Some(s @ ("http" | "https")) if !host.is_empty() && !host.contains(char::is_whitespace) => {
                        schemes.insert(s);
                    }
                    _ => {
                        return Err(invalid(
                            format!("store.endpoints[{i}]"),
                            format!("{e:?} is not an etcd client URL like http://198.51.100.250:2379 or https://..."),
                        ));
                    }
                }
            }
            if schemes.len() > 1 {
                return Err(invalid("store.endpoints", "mixes http:// and https:// URLs"));
            }
            let tls = match (ca_file, cert_file, key_file) {
                (None, None, None) => None,
                (Some(ca_file), Some(cert_file), Some(key_file)) => Some(EtcdTls { ca_file, cert_file, key_file }),
                (ca, cert, key) => {
                    let missing = [("store.ca_file", ca.is_none()), ("store.cert_file", cert.is_none()), ("store.key_file", key.is_none())]
                        .into_iter()
                        .find(|(_, m)| *m)
                        .map_or("store.ca_file", |(f, _)| f);
                    return Err(invalid(missing, "is missing: TLS needs ca_file, cert_file and key_file together"));
                }
            };
            if let Some(t) = &tls {
                for (field, path) in [("store.ca_file", &t.ca_file), ("store.cert_file", &t.cert_file), ("store.key_file", &t.key_file)] {
                    if path.is_relative() {
                        return Err(invalid(field, "must be an absolute path"));
                    }
                }
            }
            match (schemes.contains("https"), tls.is_some()) {
                (true, false) => return Err(invalid("store.ca_file", "is missing: https:// endpoints need ca_file, cert_file and key_file")),
                (false, true) => return Err(invalid("store.endpoints", "use https:// URLs with TLS files")),
                _ => {}
            }
            (Backend::Etcd(EtcdSettings { endpoints, tls }), prefix, lease_ttl_s)
        }
    };
    let prefix = prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
    if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') || prefix.contains(char::is_whitespace) || prefix.contains("//") {
        return Err(invalid("store.prefix", format!("{prefix:?} must look like /overlay/v1 (a leading '/', no trailing '/', no spaces)")));
    }
    let ttl = ttl.unwrap_or(DEFAULT_LEASE_TTL_S);
    if !(MIN_LEASE_TTL_S..=MAX_LEASE_TTL_S).contains(&ttl) {
        return Err(invalid("store.lease_ttl_s", format!("{ttl} is outside {MIN_LEASE_TTL_S}..={MAX_LEASE_TTL_S}")));
    }
    Ok(StoreSettings { backend, prefix, lease_ttl: std::time::Duration::from_secs(ttl) })
}

fn validate_datapath(d: &DatapathConfig) -> Result<(), ConfigError> {
    for (field, value, min, max) in [
        ("datapath.neigh_capacity", d.neigh_capacity, 16, limits::MAX_MAP_CAPACITY),
        ("datapath.fdb_capacity", d.fdb_capacity, 16, limits::MAX_MAP_CAPACITY),
        ("datapath.endpoint_capacity", d.endpoint_capacity, 16, limits::MAX_MAP_CAPACITY),
    ] {
        if !(min..=max).contains(&value) {
            return Err(invalid(field, format!("{value} is outside {min}..={max}")));
        }
    }
    if !(1..=3600).contains(&d.kernel_resync_s) {
        return Err(invalid("datapath.kernel_resync_s", format!("{} is outside 1..=3600", d.kernel_resync_s)));
    }
    Ok(())
}

impl RawConfig {
    pub fn validate(self) -> Result<Config, ConfigError> {
        check_name("node_name", &self.node_name, 63)?;
        // IFNAMSIZ is 16 including the terminating NUL.
        if self.underlay_interface.is_empty() || self.underlay_interface.len() > 15 {
            return Err(invalid("underlay_interface", "must be an interface name of 1 to 15 characters"));
        }
        if let Some(ip) = self.vtep_ip
            && (ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback())
        {
            return Err(invalid("vtep_ip", format!("{ip} is not a unicast address")));
        }
        if self.networks.is_empty() {
            return Err(invalid("network", "no [[network]] defined: the agent has nothing to serve"));
        }
        let mut names = BTreeSet::new();
        let mut vnis = BTreeSet::new();
        let mut ports = BTreeSet::new();
        let mut networks = Vec::with_capacity(self.networks.len());
        for (i, n) in self.networks.into_iter().enumerate() {
            let field = |f: &str| format!("network[{i}].{f}");
            check_name(&field("name"), &n.name, 32)?;
            if !names.insert(n.name.clone()) {
                return Err(invalid(field("name"), format!("{:?} is defined twice", n.name)));
            }
            if n.vni == 0 || n.vni > vxlan::MAX_VNI {
                return Err(invalid(field("vni"), format!("{} is outside 1..={}", n.vni, vxlan::MAX_VNI)));
            }
            if !vnis.insert(n.vni) {
                return Err(invalid(field("vni"), format!("{} is used by another network", n.vni)));
            }
            if n.subnet.prefix_len() > 30 {
                return Err(invalid(field("subnet"), format!("{} leaves no room for endpoints (use /30 or larger)", n.subnet)));
            }
            if n.subnet.network() != n.subnet.addr() {
                return Err(invalid(
                    field("subnet"),
                    format!("{} has host bits set; did you mean {}?", n.subnet, n.subnet.trunc()),
                ));
            }
            let udp_port = n.udp_port.unwrap_or(vxlan::DEFAULT_UDP_PORT);
            if udp_port == 0 {
                return Err(invalid(field("udp_port"), "must not be 0"));
            }
            ports.insert(udp_port);
            if let Some(mtu) = n.mtu
                && !(MIN_MTU..=MAX_MTU).contains(&mtu)
            {
                return Err(invalid(field("mtu"), format!("{mtu} is outside {MIN_MTU}..={MAX_MTU}")));
            }
            let node_prefix_len = n.node_prefix_len.unwrap_or(DEFAULT_NODE_PREFIX_LEN);
            if n.mode == NetworkMode::L2 && (n.node_prefix_len.is_some() || n.node_subnet.is_some()) {
                return Err(invalid(field("mode"), "node_prefix_len and node_subnet apply to mode = \"l3\" networks only"));
            }
            if n.mode == NetworkMode::L3 {
                if node_prefix_len <= n.subnet.prefix_len() || node_prefix_len > 30 {
                    return Err(invalid(
                        field("node_prefix_len"),
                        format!("{node_prefix_len} must be longer than the subnet's /{} and at most 30", n.subnet.prefix_len()),
                    ));
                }
                if let Some(ns) = n.node_subnet
                    && (ns.prefix_len() != node_prefix_len || !n.subnet.contains(&ns) || ns.network() != ns.addr())
                {
                    return Err(invalid(
                        field("node_subnet"),
                        format!("{ns} must be a /{node_prefix_len} inside {} without host bits", n.subnet),
                    ));
                }
            }
            let gateway = n.gateway.unwrap_or(true);
            if n.mode == NetworkMode::L3 && !gateway {
                return Err(invalid(field("gateway"), "an L3 network routes through its gateway; gateway = false applies to L2 networks"));
            }
            let masquerade = n.masquerade.unwrap_or(gateway);
            if masquerade && !gateway {
                return Err(invalid(field("masquerade"), "needs the gateway (gateway = true): the way out is through the host"));
            }
            networks.push(Network {
                name: n.name,
                vni: n.vni,
                subnet: n.subnet,
                udp_port,
                mtu: n.mtu,
                mode: n.mode,
                node_prefix_len,
                node_subnet: n.node_subnet,
                gateway,
                masquerade,
                known_vteps_only: n.known_vteps_only.unwrap_or(true),
            });
        }
        if ports.len() > limits::MAX_UDP_PORTS {
            return Err(invalid(
                "network[].udp_port",
                format!("{} distinct ports; at most {} are supported", ports.len(), limits::MAX_UDP_PORTS),
            ));
        }
        let store = validate_store(self.store.clone())?;
        validate_datapath(&self.datapath)?;
        self.docker.check().map_err(|(field, problem)| invalid(field, problem))?;
        let absolute = |field: &str, p: Option<PathBuf>, root: &str| -> Result<PathBuf, ConfigError> {
            match p {
                Some(p) if p.is_relative() => Err(invalid(field, "must be an absolute path")),
                Some(p) => Ok(p),
                None => Ok(Path::new(root).join(&self.node_name)),
            }
        };
        let state_dir = absolute("state_dir", self.state_dir.clone(), paths::DEFAULT_STATE_ROOT)?;
        let bpffs_dir = absolute("bpffs_dir", self.bpffs_dir.clone(), paths::DEFAULT_BPFFS_ROOT)?;
        if !bpffs_dir.starts_with(paths::BPFFS_MOUNT) {
            return Err(invalid(
                "bpffs_dir",
                format!("{} is not under {}, where bpffs is mounted", bpffs_dir.display(), paths::BPFFS_MOUNT),
            ));
        }
        Ok(Config {
            node_name: self.node_name,
            underlay_interface: self.underlay_interface,
            vtep_ip: self.vtep_ip,
            state_dir,
            bpffs_dir,
            networks,
            store,
            datapath: self.datapath,
            docker: self.docker,
            metrics: self.metrics,
            socket_group: self.socket_group,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_name = "h1"
underlay_interface = "ul0"

[[network]]
name = "blue"
vni = 42
subnet = "10.0.10.0/24"

[store]
backend = "dir"
path = "/tmp/store"
"#;

    #[test]
    fn fills_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.state_dir, Path::new("/run/overlay-agent/h1"));
        assert_eq!(c.bpffs_dir, Path::new("/sys/fs/bpf/overlay/h1"));
        assert_eq!(c.networks[0].udp_port, 4789);
        assert_eq!(c.networks[0].effective_mtu(1500), 1450);
        assert_eq!(c.vtep_ip, None);
        assert_eq!(c.datapath.mode, DatapathMode::Auto);
        assert!(c.networks[0].known_vteps_only, "VXLAN only from known VTEPs by default");
        let open = Config::parse(&GOOD.replace("subnet = \"10.0.10.0/24\"", "subnet = \"10.0.10.0/24\"\nknown_vteps_only = false")).unwrap();
        assert!(!open.networks[0].known_vteps_only);
        let k = Config::parse(&format!("{GOOD}\n[datapath]\nmode = \"kernel\"\n")).unwrap();
        assert_eq!(k.datapath.mode, DatapathMode::Kernel);
        assert!(err_of(&format!("{GOOD}\n[datapath]\nmode = \"xdp\"\n")).contains("unknown variant `xdp`"));
    }

    /// The error with its causes, as the CLI prints it.
    fn err_of(text: &str) -> String {
        crate::with_causes(&Config::parse(text).unwrap_err())
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (GOOD.replace("vni = 42", "vni = 0"), "network[0].vni"),
            (GOOD.replace("vni = 42", "vni = 16777216"), "network[0].vni"),
            (GOOD.replace("10.0.10.0/24", "10.0.10.5/24"), "network[0].subnet"),
            (GOOD.replace("10.0.10.0/24", "10.0.10.0/31"), "network[0].subnet"),
            (GOOD.replace("node_name = \"h1\"", "node_name = \"h 1\""), "node_name"),
            (GOOD.replace("/tmp/store", "relative/store"), "store.path"),
            (GOOD.replace("ul0", "an-interface-name-too-long"), "underlay_interface"),
            (format!("vtep_ip = \"0.0.0.0\"\n{GOOD}"), "vtep_ip"),
            (format!("bpffs_dir = \"/tmp/pins\"\n{GOOD}"), "bpffs_dir"),
            (
                format!("{GOOD}\n[[network]]\nname = \"blue\"\nvni = 43\nsubnet = \"10.0.20.0/24\"\n"),
                "network[1].name",
            ),
            (
                format!("{GOOD}\n[[network]]\nname = \"red\"\nvni = 42\nsubnet = \"10.0.20.0/24\"\n"),
                "network[1].vni",
            ),
            (GOOD.replace("subnet = \"10.0.10.0/24\"", "subnet = \"10.0.10.0/24\"\nmtu = 100"), "network[0].mtu"),
            // L3 networks.
            (GOOD.replace("subnet = \"10.0.10.0/24\"", "subnet = \"10.0.10.0/24\"\nnode_prefix_len = 26"), "network[0].mode"),
            (GOOD.replace("subnet = \"10.0.10.0/24\"", "subnet = \"10.0.0.0/16\"\nmode = \"l3\"\nnode_prefix_len = 16"), "network[0].node_prefix_len"),
            (
                GOOD.replace("subnet = \"10.0.10.0/24\"", "subnet = \"10.0.0.0/16\"\nmode = \"l3\"\nnode_subnet = \"10.1.0.0/24\""),
                "network[0].node_subnet",
            ),
            (GOOD.replace("subnet = \"10.0.10.0/24\"", "subnet = \"10.0.0.0/16\"\nmode = \"l3\"\ngateway = false"), "network[0].gateway"),
            (GOOD.replace("subnet = \"10.0.10.0/24\"", "subnet = \"10.0.10.0/24\"\ngateway = false\nmasquerade = true"), "network[0].masquerade"),
        ];
        for (text, field) in cases {
            let e = err_of(&text);
            assert!(e.contains(&format!("`{field}`")), "expected field {field} in: {e}");
        }
    }

    const ETCD: &str = r#"
node_name = "h1"
underlay_interface = "ul0"

[[network]]
name = "blue"
vni = 42
subnet = "10.0.10.0/24"

[store]
backend = "etcd"
endpoints = ["https://198.51.100.250:2379", "https://198.51.100.251:2379"]
lease_ttl_s = 5
ca_file = "/etc/overlay/ca.pem"
cert_file = "/etc/overlay/client.pem"
key_file = "/etc/overlay/client-key.pem"
"#;

    #[test]
    fn etcd_store() {
        let c = Config::parse(ETCD).unwrap();
        assert_eq!(c.store.prefix, "/overlay/v1");
        assert_eq!(c.store.lease_ttl, std::time::Duration::from_secs(5));
        let Backend::Etcd(e) = &c.store.backend else { panic!("{:?}", c.store) };
        assert_eq!(e.endpoints.len(), 2);
        assert_eq!(e.tls.as_ref().unwrap().cert_file, Path::new("/etc/overlay/client.pem"));
        let d = Config::parse(GOOD).unwrap();
        assert_eq!(d.store.lease_ttl, std::time::Duration::from_secs(DEFAULT_LEASE_TTL_S));
        let cases = [
            (ETCD.replace("lease_ttl_s = 5", "lease_ttl_s = 1"), "store.lease_ttl_s"),
            (ETCD.replace("https://198.51.100.251:2379", "198.51.100.251:2379"), "store.endpoints[1]"),
            (ETCD.replace("https://198.51.100.251", "http://198.51.100.251"), "store.endpoints"),
            (ETCD.replace("cert_file = \"/etc/overlay/client.pem\"\n", ""), "store.cert_file"),
            (ETCD.replace("https", "http"), "store.endpoints"),
            (ETCD.replace("lease_ttl_s = 5", "prefix = \"overlay/\""), "store.prefix"),
            (ETCD.replace("lease_ttl_s = 5", "endpoint = \"x\""), "endpoint"),
            (ETCD.replace("\"https://198.51.100.250:2379\", \"https://198.51.100.251:2379\"", ""), "store.endpoints"),
            (format!("{GOOD}\n[datapath]\nfdb_capacity = 0\n"), "datapath.fdb_capacity"),
        ];
        for (text, field) in cases {
            let e = err_of(&text);
            assert!(e.contains(field), "expected {field} in: {e}");
        }
        let k = Config::parse(&format!("{GOOD}\n[datapath]\nneigh_capacity = 300000\n")).unwrap();
        assert_eq!((k.datapath.neigh_capacity, k.datapath.fdb_capacity), (300_000, limits::DEFAULT_FDB));
    }

    #[test]
    fn rejects_missing_and_unknown_fields() {
        assert!(err_of(&GOOD.replace("underlay_interface = \"ul0\"", "")).contains("underlay_interface"));
        assert!(err_of(&format!("colour = \"red\"\n{GOOD}")).contains("colour"));
        let no_net = "node_name = \"h1\"\nunderlay_interface = \"ul0\"\n[store]\nbackend = \"dir\"\npath = \"/s\"\n";
        assert!(err_of(no_net).contains("`network`"));
        assert!(err_of(&GOOD.replace("backend = \"dir\"", "backend = \"zookeeper\"")).contains("zookeeper"));
    }
}
