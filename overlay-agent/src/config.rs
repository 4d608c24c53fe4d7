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

use crate::paths;
use overlay_common::{limits, vxlan};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source} (pass --config FILE or set {env})", env = paths::CONFIG_ENV)]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatapathConfig {
    #[serde(default)]
    pub mode: DatapathMode,
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
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// A directory shared by all agents on one machine (the lab, CI).
    Dir { path: PathBuf },
}

/// A validated configuration with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    pub node_name: String,
    pub underlay_interface: String,
    /// `None`: the first IPv4 address of the underlay interface, found at start-up.
    pub vtep_ip: Option<Ipv4Addr>,
    pub state_dir: PathBuf,
    pub bpffs_dir: PathBuf,
    pub networks: Vec<Network>,
    pub store: StoreConfig,
    pub datapath: DatapathConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    pub name: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    pub udp_port: u16,
    /// `None`: underlay MTU − 50, found at start-up.
    pub mtu: Option<u32>,
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
            networks.push(Network {
                name: n.name,
                vni: n.vni,
                subnet: n.subnet,
                udp_port,
                mtu: n.mtu,
            });
        }
        if ports.len() > limits::MAX_UDP_PORTS {
            return Err(invalid(
                "network[].udp_port",
                format!("{} distinct ports; at most {} are supported", ports.len(), limits::MAX_UDP_PORTS),
            ));
        }
        match &self.store {
            StoreConfig::Dir { path } if path.as_os_str().is_empty() || path.is_relative() => {
                return Err(invalid("store.path", "must be an absolute directory path"));
            }
            StoreConfig::Dir { .. } => {}
        }
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
            store: self.store,
            datapath: self.datapath,
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
        let k = Config::parse(&format!("{GOOD}\n[datapath]\nmode = \"kernel\"\n")).unwrap();
        assert_eq!(k.datapath.mode, DatapathMode::Kernel);
        assert!(err_of(&format!("{GOOD}\n[datapath]\nmode = \"xdp\"\n")).contains("unknown variant `xdp`"));
    }

    fn err_of(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
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
        ];
        for (text, field) in cases {
            let e = err_of(&text);
            assert!(e.contains(&format!("`{field}`")), "expected field {field} in: {e}");
        }
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
