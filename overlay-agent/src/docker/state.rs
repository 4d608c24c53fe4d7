//! What the Docker driver remembers across agent restarts (`<state_dir>/docker.json`):
//! which agent network each Docker network is, and the endpoints dockerd created but
//! has not deleted. dockerd does not repeat `CreateNetwork` or `CreateEndpoint` after a
//! restart of the plugin, so without this file a restarted agent could not serve a
//! `Join` or a `Leave` for them.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;

pub const FILE: &str = "docker.json";

#[derive(Debug, thiserror::Error)]
pub enum DockerStateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a Docker driver state file ({source}); move it away to start afresh")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// An endpoint dockerd created: its address comes from `CreateEndpoint`, its
/// namespace from `Join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerEndpoint {
    pub network_id: String,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerState {
    /// Docker network ID → agent network name.
    pub networks: BTreeMap<String, String>,
    /// Docker endpoint ID → endpoint.
    pub endpoints: BTreeMap<String, DockerEndpoint>,
}

impl DockerState {
    /// The saved state, or an empty one if there is none.
    pub fn load(dir: &Path) -> Result<DockerState, DockerStateError> {
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| DockerStateError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockerState::default()),
            Err(source) => Err(DockerStateError::Io { path, source }),
        }
    }

    /// Writes the state atomically (a temporary file renamed over the old one).
    pub fn save(&self, dir: &Path) -> Result<(), DockerStateError> {
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let io = |source| DockerStateError::Io { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let bytes = serde_json::to_vec_pretty(self).expect("the state always serializes");
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// Removes the file (`down`); fine if it is not there.
    pub fn remove(dir: &Path) -> Result<(), DockerStateError> {
        let path = dir.join(FILE);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DockerStateError::Io { path, source: e }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(DockerState::load(dir.path()).unwrap(), DockerState::default());
        let mut s = DockerState::default();
        s.networks.insert("n1".into(), "blue".into());
        let ip = Ipv4Addr::new(10, 0, 10, 2);
        s.endpoints.insert("e1".into(), DockerEndpoint { network_id: "n1".into(), ip, mac: MacAddr::from_ipv4(ip) });
        s.save(dir.path()).unwrap();
        assert_eq!(DockerState::load(dir.path()).unwrap(), s);
        std::fs::write(dir.path().join(FILE), "nope").unwrap();
        assert!(matches!(DockerState::load(dir.path()), Err(DockerStateError::Corrupt { .. })));
        DockerState::remove(dir.path()).unwrap();
        DockerState::remove(dir.path()).unwrap();
        assert_eq!(DockerState::load(dir.path()).unwrap(), DockerState::default());
    }
}
