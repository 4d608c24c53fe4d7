//! What the agent keeps in `state_dir` between runs (`state.json`): its local endpoints
//! (which container, which host-side veth), its store lease, and the withdrawals it
//! still owes the store. A restarted agent adopts the datapath from this and the pins;
//! `map dump` and `down` read it without the daemon and without the store.
//!
//! Written atomically (a temporary file, then rename) after every change, so a crash
//! leaves either the old or the new state, never half of one.

use std::{
    io::ErrorKind,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{mac::MacAddr, store::kv::LeaseId};

pub const STATE_FILE: &str = "state.json";
/// Bumped when the file's meaning changes; an unknown version is refused, not guessed.
pub const STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("agent state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("agent state {path} is not valid ({source}); move it away to start without adopting anything")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "agent state {path} has version {found}, this agent understands {STATE_VERSION}; \
         run `overlay-agent down` with the agent that wrote it, or move the file away"
    )]
    Version { path: PathBuf, found: u32 },
    #[error("agent state {path} belongs to node {found:?}, not {expected:?}; each node needs its own state_dir")]
    OtherNode { path: PathBuf, found: String, expected: String },
}

/// A container this agent plugged in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalRecord {
    pub network: String,
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// Where the container end lives (a name under /run/netns or a path).
    pub netns: String,
    /// Its name inside the container.
    pub ifname: String,
    pub host_ifname: String,
    pub host_ifindex: u32,
    /// Who plugged it (see `EndpointSpec::owner`).
    #[serde(default)]
    pub owner: Option<String>,
    /// Ports published to the host's address (`--publish`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<crate::firewall::PortMapping>,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub version: u32,
    pub node: String,
    /// `ebpf` or `kernel`: the datapath that runs.
    pub mode: String,
    /// The store lease, or 0.
    pub lease: LeaseId,
    /// `store.describe()` when the lease was granted: a lease is only reused on the same
    /// store.
    pub store: String,
    pub endpoints: Vec<LocalRecord>,
    /// Endpoints deleted while the store was unreachable: (VNI, IP) still to withdraw.
    #[serde(default)]
    pub pending_withdrawals: Vec<(u32, Ipv4Addr)>,
    /// The agent added the underlay's `clsact` qdisc (netlink attach, before Linux
    /// 6.6): `down` removes it, and only then.
    #[serde(default)]
    pub clsact_added: bool,
    /// The node subnet of each L3 network (by VNI), tried first at the next start.
    #[serde(default)]
    pub node_subnets: std::collections::BTreeMap<u32, ipnet::Ipv4Net>,
}

impl AgentState {
    pub fn new(node: &str, mode: &str) -> Self {
        Self {
            version: STATE_VERSION,
            node: node.to_owned(),
            mode: mode.to_owned(),
            lease: 0,
            store: String::new(),
            endpoints: Vec::new(),
            pending_withdrawals: Vec::new(),
            clsact_added: false,
            node_subnets: Default::default(),
        }
    }
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}

/// Reads the state of `node` from `state_dir`; `None` if there is none.
pub fn load(state_dir: &Path, node: &str) -> Result<Option<AgentState>, StateError> {
    let path = path(state_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Io { path, source }),
    };
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let v: Versioned = serde_json::from_slice(&bytes).map_err(|source| StateError::Decode { path: path.clone(), source })?;
    if v.version != STATE_VERSION {
        return Err(StateError::Version { path, found: v.version });
    }
    let state: AgentState = serde_json::from_slice(&bytes).map_err(|source| StateError::Decode { path: path.clone(), source })?;
    if state.node != node {
        return Err(StateError::OtherNode { path, found: state.node, expected: node.to_owned() });
    }
    Ok(Some(state))
}

/// Writes `state` atomically.
pub fn save(state_dir: &Path, state: &AgentState) -> Result<(), StateError> {
    let path = path(state_dir);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StateError::Io { path, source }
    };
    std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
    let tmp = state_dir.join(format!(".{STATE_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(state).map_err(|source| StateError::Decode { path: path.clone(), source })?;
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

/// Removes the state file (after `down`); fine if absent.
pub fn remove(state_dir: &Path) -> Result<(), StateError> {
    let path = path(state_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), "h1").unwrap(), None);
        let mut s = AgentState::new("h1", "ebpf");
        s.lease = 0x1234;
        s.endpoints.push(LocalRecord {
            network: "blue".into(),
            vni: 42,
            ip: [10, 0, 10, 11].into(),
            mac: MacAddr::from_ipv4([10, 0, 10, 11].into()),
            netns: "c1".into(),
            ifname: "eth0".into(),
            host_ifname: "ovl1234abcd".into(),
            host_ifindex: 7,
            owner: None,
            publish: vec!["8080:80/tcp".parse().unwrap()],
        });
        s.node_subnets.insert(50, "10.50.3.0/24".parse().unwrap());
        save(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path(), "h1").unwrap(), Some(s.clone()));
        assert!(matches!(load(dir.path(), "h2"), Err(StateError::OtherNode { .. })));
        s.version = 99;
        save(dir.path(), &s).unwrap();
        assert!(matches!(load(dir.path(), "h1"), Err(StateError::Version { found: 99, .. })));
        std::fs::write(path(dir.path()), b"{").unwrap();
        assert!(matches!(load(dir.path(), "h1"), Err(StateError::Decode { .. })));
        remove(dir.path()).unwrap();
        remove(dir.path()).unwrap();
        assert_eq!(load(dir.path(), "h1").unwrap(), None);
    }
}
