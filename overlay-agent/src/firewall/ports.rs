//! `--publish HOST_PORT:CONTAINER_PORT[/tcp|/udp]`, as `docker run -p` writes it.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use super::Proto;

/// A container port reachable at a port of the host's underlay address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    pub host_port: u16,
    pub port: u16,
    pub proto: Proto,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid port mapping {input:?}: expected HOST_PORT:CONTAINER_PORT[/tcp|/udp] with ports 1-65535, e.g. 8080:80/tcp")]
pub struct ParsePortError {
    pub input: String,
}

impl FromStr for PortMapping {
    type Err = ParsePortError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePortError { input: s.to_owned() };
        let (ports, proto) = match s.split_once('/') {
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some(_) => return Err(err()),
            None => (s, Proto::Tcp),
        };
        let (h, c) = ports.split_once(':').ok_or_else(err)?;
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(err);
        Ok(PortMapping { host_port: port(h)?, port: port(c)?, proto })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.host_port, self.port, self.proto.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_style_mappings() {
        assert_eq!("8080:80/tcp".parse::<PortMapping>().unwrap(), PortMapping { host_port: 8080, port: 80, proto: Proto::Tcp });
        assert_eq!("53:5353/udp".parse::<PortMapping>().unwrap().to_string(), "53:5353/udp");
        assert_eq!("8080:80".parse::<PortMapping>().unwrap().proto, Proto::Tcp);
        for bad in ["80", "0:80", "8080:80/sctp", "x:80", "70000:80", ":80"] {
            assert!(bad.parse::<PortMapping>().is_err(), "{bad}");
        }
    }
}
