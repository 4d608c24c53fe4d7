//! Delegated IPAM: a network config with an `ipam` section has its addresses from that
//! plugin (found in `CNI_PATH`), called with the same environment and configuration as
//! the spec says, at the newest CNI version both plugins speak (Debian's plugins 1.1.1
//! stop at 1.0.0, while this plugin speaks 1.1.0).

use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
};

use crate::spec::{CniError, SUPPORTED, code, version_tuple};

/// The IPAM plugin `name` from `CNI_PATH`.
fn find(name: &str, cni_path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if name.contains('/') {
        return Err(CniError::new(code::INVALID_CONFIG, format!("ipam.type {name:?} must be a plugin name, not a path")));
    }
    cni_path.iter().map(|d| d.join(name)).find(|p| p.is_file()).ok_or_else(|| {
        CniError::new(code::INVALID_CONFIG, format!("IPAM plugin {name:?} not found in CNI_PATH ({})", join(cni_path)))
    })
}

fn join(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
}

/// Runs the plugin with `CNI_COMMAND=command`; its stdout parsed, or its error.
fn exec(plugin: &PathBuf, command: &str, stdin: &[u8]) -> Result<serde_json::Value, CniError> {
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::new(code::IO, format!("running the IPAM plugin {}: {e}", plugin.display())))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin)
        .map_err(|e| CniError::new(code::IO, format!("writing to the IPAM plugin {}: {e}", plugin.display())))?;
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(code::IO, format!("waiting for the IPAM plugin {}: {e}", plugin.display())))?;
    let value: serde_json::Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&out.stdout).map_err(|e| {
            CniError::new(code::DECODE, format!("the IPAM plugin {} printed no JSON: {e}", plugin.display()))
        })?
    };
    if !out.status.success() {
        let msg = value.get("msg").and_then(|m| m.as_str()).unwrap_or("failed");
        let c = value.get("code").and_then(serde_json::Value::as_u64).map_or(code::IO, |c| c as u32);
        return Err(CniError::new(c, format!("IPAM plugin {}: {msg}", plugin.display()))
            .with_details(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(value)
}

/// The delegate for one call: the plugin and the config to give it.
pub struct Ipam {
    plugin: PathBuf,
    config: Vec<u8>,
}

impl Ipam {
    /// Finds the plugin and settles the version to speak with it.
    pub fn new(name: &str, cni_path: &[PathBuf], raw_config: &[u8], ours: &str) -> Result<Ipam, CniError> {
        let plugin = find(name, cni_path)?;
        let theirs = exec(&plugin, "VERSION", raw_config)?;
        let versions: Vec<&str> = theirs["supportedVersions"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
        let ours = version_tuple(ours);
        let best = versions
            .iter()
            .filter(|v| SUPPORTED.contains(v) && version_tuple(v) <= ours)
            .max_by_key(|v| version_tuple(v))
            .ok_or_else(|| {
                CniError::new(code::INCOMPATIBLE_VERSION, format!("IPAM plugin {name} speaks none of our CNI versions ({versions:?})"))
            })?;
        let mut config: serde_json::Value = serde_json::from_slice(raw_config)
            .map_err(|e| CniError::new(code::DECODE, format!("network config: {e}")))?;
        config["cniVersion"] = serde_json::json!(best);
        Ok(Ipam { plugin, config: serde_json::to_vec(&config).expect("JSON") })
    }

    /// ADD: the address it allocated.
    pub fn add(&self) -> Result<Ipv4Addr, CniError> {
        let result = exec(&self.plugin, "ADD", &self.config)?;
        let address = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str())
            .find_map(|a| a.parse::<ipnet::Ipv4Net>().ok())
            .ok_or_else(|| CniError::new(code::DECODE, format!("the IPAM plugin gave no IPv4 address: {result}")))?;
        Ok(address.addr())
    }

    pub fn del(&self) -> Result<(), CniError> {
        exec(&self.plugin, "DEL", &self.config).map(drop)
    }

    pub fn check(&self) -> Result<(), CniError> {
        exec(&self.plugin, "CHECK", &self.config).map(drop)
    }
}
