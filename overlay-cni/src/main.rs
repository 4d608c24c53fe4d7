//! `overlay-cni`: a CNI plugin (spec 1.1.0; 0.3.x, 0.4.0 and 1.0.0 results too) that
//! plugs containers into the overlay through the local agent. Network config:
//!
//! ```json
//! {"cniVersion":"1.1.0","name":"blue","type":"overlay-cni","network":"blue",
//!  "agentConfig":"/etc/overlay-agent/agent.toml"}
//! ```
//!
//! Addresses come from the agent's cluster-wide IPAM unless the config has an `ipam`
//! section, which is delegated as the spec says. Errors are CNI error objects on stdout
//! carrying the agent's message.

mod commands;
mod delegate;
mod spec;

use std::io::{Read as _, Write as _};

use commands::{Call, Env};
use spec::{CniError, NetConf, SUPPORTED, code, version_tuple};

fn main() -> std::process::ExitCode {
    // Under `ip netns exec` (tests, debugging), /sys is private: rejoin the host's mount
    // namespace so that CHECK reads the host's pins. Must run before any thread exists.
    // Not fatal: only CHECK reads the pins, and it says so if it cannot.
    if let Err(e) = overlay_agent::bpffs::rejoin_host_mount_ns() {
        eprintln!("overlay-cni: finding the host's bpffs: {e}");
    }
    let mut raw = Vec::new();
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let read = std::io::stdin().read_to_end(&mut raw);
    let version = serde_json::from_slice::<serde_json::Value>(&raw)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(|c| c.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "1.1.0".into());
    let outcome = match read {
        Err(e) => Err(CniError::new(code::IO, format!("reading the network config from stdin: {e}"))),
        Ok(_) => run(&command, &raw, &version),
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(value)) => {
            let _ = writeln!(out, "{value}");
            std::process::ExitCode::SUCCESS
        }
        Ok(None) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: &str, raw: &[u8], version: &str) -> Result<Option<serde_json::Value>, CniError> {
    if command == "VERSION" {
        return Ok(Some(serde_json::json!({ "cniVersion": version, "supportedVersions": SUPPORTED })));
    }
    if !SUPPORTED.contains(&version) {
        return Err(CniError::new(code::INCOMPATIBLE_VERSION, format!("CNI version {version} is not supported ({SUPPORTED:?})")));
    }
    let since = |min: (u32, u32, u32), what: &str| {
        if version_tuple(version) < Some(min) {
            Err(CniError::new(code::INCOMPATIBLE_VERSION, format!("{what} needs CNI {}.{}.{} or later, the config says {version}", min.0, min.1, min.2)))
        } else {
            Ok(())
        }
    };
    let conf: NetConf = serde_json::from_slice(raw).map_err(|e| CniError::new(code::DECODE, format!("network config: {e}")))?;
    let env = Env::from_process();
    let call = Call::new(&conf, raw, &env)?;
    match command {
        "ADD" => call.add().map(Some),
        "DEL" => call.del().map(|()| None),
        "CHECK" => {
            since((0, 4, 0), "CHECK")?;
            call.check().map(|()| None)
        }
        "STATUS" => {
            since((1, 1, 0), "STATUS")?;
            call.status().map(|()| None)
        }
        "GC" => {
            since((1, 1, 0), "GC")?;
            call.gc().map(|removed| {
                if !removed.is_empty() {
                    eprintln!("overlay-cni: GC removed {}", removed.join(", "));
                }
                None
            })
        }
        "" => Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set")),
        other => Err(CniError::new(code::INVALID_ENV, format!("unknown CNI_COMMAND {other:?}"))),
    }
}
