//! MAC addresses as they appear in configs, the API, the store and dumps.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

#[derive(Debug, thiserror::Error)]
#[error("invalid MAC address {input:?}: expected six hex bytes like 02:42:0a:00:0a:0a")]
pub struct ParseMacError {
    pub input: String,
}

impl MacAddr {
    /// Docker's scheme: `02:42:` followed by the four bytes of the IPv4 address
    /// (locally administered, unicast), so MACs are stable and unique per IP.
    pub fn from_ipv4(ip: Ipv4Addr) -> Self {
        let [a, b, c, d] = ip.octets();
        MacAddr([0x02, 0x42, a, b, c, d])
    }

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError { input: s.to_owned() };
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_docker_style_mac_from_ip() {
        let mac = MacAddr::from_ipv4(Ipv4Addr::new(10, 0, 10, 10));
        assert_eq!(mac.to_string(), "02:42:0a:00:0a:0a");
        assert!(!mac.is_multicast());
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!("02:42:0A:00:0a:0b".parse::<MacAddr>().unwrap().0, [2, 0x42, 10, 0, 10, 11]);
        assert_eq!("02-42-0a-00-0a-0b".parse::<MacAddr>().unwrap().0, [2, 0x42, 10, 0, 10, 11]);
        for bad in ["", "02:42:0a:00:0a", "02:42:0a:00:0a:0b:0c", "zz:42:0a:00:0a:0b", "2:42:0a:00:0a:0b"] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} accepted");
        }
    }
}
