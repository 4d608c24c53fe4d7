//! The CNI specification's side of the plugin (1.1.0, also answering 0.3.x, 0.4.0 and
//! 1.0.0): the network configuration on stdin, the environment, results and errors.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use serde::{Deserialize, Serialize};

/// What VERSION reports.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Error codes of the spec (and ours, from 100).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// The agent refused (its message says why).
    pub const AGENT: u32 = 100;
    /// CHECK found the container's interface or the datapath not as ADD left them.
    pub const CHECK_FAILED: u32 = 101;
}

/// A CNI error: printed as JSON on stdout, with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: String::new() }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn to_json(&self, version: &str) -> serde_json::Value {
        serde_json::json!({ "cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details })
    }
}

/// One attachment the runtime still uses (GC's `cni.dev/valid-attachments`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The network configuration (stdin). Unknown fields are the runtime's or other
/// plugins' and are ignored, as the spec asks.
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    /// The agent network; default: the CNI network's `name`.
    #[serde(default)]
    pub network: Option<String>,
    /// The agent's config file; default `/etc/overlay-agent/agent.toml`.
    #[serde(rename = "agentConfig", default)]
    pub agent_config: Option<PathBuf>,
    /// A delegated IPAM plugin (`{"type": "host-local", ...}`); without it, addresses
    /// come from the agent's cluster-wide IPAM.
    #[serde(default)]
    pub ipam: Option<serde_json::Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    pub fn network(&self) -> &str {
        self.network.as_deref().unwrap_or(&self.name)
    }

    /// The delegated IPAM plugin's type, when there is one.
    pub fn ipam_type(&self) -> Option<&str> {
        self.ipam.as_ref().and_then(|i| i.get("type")).and_then(|t| t.as_str()).filter(|t| !t.is_empty())
    }
}

/// `X.Y.Z` as numbers, for comparisons.
pub fn version_tuple(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
}

/// The result of an ADD, in the shape of `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddResult {
    pub ifname: String,
    pub mac: String,
    pub sandbox: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Debug, Serialize)]
struct Interface<'a> {
    name: &'a str,
    mac: &'a str,
    sandbox: &'a str,
}

impl AddResult {
    pub fn to_json(&self, version: &str) -> serde_json::Value {
        let mut ip = BTreeMap::new();
        ip.insert("address", serde_json::json!(format!("{}/{}", self.ip, self.prefix_len)));
        ip.insert("interface", serde_json::json!(0));
        if let Some(g) = self.gateway {
            ip.insert("gateway", serde_json::json!(g.to_string()));
        }
        // Before 1.0.0 every IP carries its version.
        if version_tuple(version).is_some_and(|v| v < (1, 0, 0)) {
            ip.insert("version", serde_json::json!("4"));
        }
        serde_json::json!({
            "cniVersion": version,
            "interfaces": [Interface { name: &self.ifname, mac: &self.mac, sandbox: &self.sandbox }],
            "ips": [ip],
            "dns": {},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_take_the_shape_of_the_requested_version() {
        let r = AddResult {
            ifname: "eth0".into(),
            mac: "02:42:0a:00:0a:02".into(),
            sandbox: "/proc/1/ns/net".into(),
            ip: Ipv4Addr::new(10, 0, 10, 2),
            prefix_len: 24,
            gateway: None,
        };
        let new = r.to_json("1.1.0");
        assert_eq!(new["ips"][0]["address"], "10.0.10.2/24");
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["interfaces"][0]["sandbox"], "/proc/1/ns/net");
        assert_eq!(r.to_json("0.4.0")["ips"][0]["version"], "4");
        assert_eq!(r.to_json("0.3.1")["cniVersion"], "0.3.1");
    }

    #[test]
    fn config_defaults() {
        let c: NetConf = serde_json::from_str(r#"{"cniVersion":"1.1.0","name":"blue","type":"overlay-cni","other":1}"#).unwrap();
        assert_eq!(c.network(), "blue");
        assert_eq!(c.ipam_type(), None);
        let c: NetConf = serde_json::from_str(
            r#"{"cniVersion":"1.1.0","name":"x","type":"overlay-cni","network":"blue","ipam":{"type":"host-local"}}"#,
        )
        .unwrap();
        assert_eq!((c.network(), c.ipam_type()), ("blue", Some("host-local")));
        assert_eq!(version_tuple("0.3.1"), Some((0, 3, 1)));
        assert!(version_tuple("1.1.0") > version_tuple("1.0.0"));
    }
}
