//! The key layout, the same on every backend (`<prefix>` is `[store] prefix`, default
//! `/overlay/v1`):
//!
//! | key | value | lease |
//! |---|---|---|
//! | `<prefix>/nodes/<node>` | [`NodeRecord`](crate::model::NodeRecord): VTEP, agent version | the node's |
//! | `<prefix>/endpoints/<vni>/<ip>` | [`EndpointRecord`](crate::model::EndpointRecord): owning node, MAC, port | the node's |
//! | `<prefix>/statics/<vni>/<ip>` | [`StaticRecord`](crate::model::StaticRecord): MAC, VTEP, port (`remote add`) | none |
//! | `<prefix>/claims/mac/<vni>/<mac>` | the endpoint or static key that holds the MAC | its owner's |
//! | `<prefix>/claims/vtep/<ip>` | the node that holds the VTEP address | the node's |
//! | `<prefix>/claims/ip/<vni>/<ip>` | the node that reserved the address before plugging (Docker's IPAM) | the node's |
//!
//! An IP is unique in a network because `endpoints/<vni>/<ip>` and `statics/<vni>/<ip>`
//! are created only if both are absent and the address is not reserved by another node
//! (`claims/ip/`, created only if all three are absent); a MAC because its claim key is
//! created in the same transaction. Agents watch `[<prefix>/endpoints/, <prefix>/statics0)`, which holds
//! endpoints, nodes and statics and leaves the claims (read only by writers) out.

use std::net::Ipv4Addr;

use crate::mac::MacAddr;

/// The default `[store] prefix`.
pub const DEFAULT_PREFIX: &str = "/overlay/v1";

/// A key that the agents follow, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Node(String),
    Endpoint(u32, Ipv4Addr),
    Static(u32, Ipv4Addr),
}

/// Builds and parses keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` without a trailing `/` (one is removed if given).
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.trim_end_matches('/').to_owned() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn node(&self, node: &str) -> String {
        format!("{}/nodes/{node}", self.prefix)
    }

    pub fn endpoint(&self, vni: u32, ip: Ipv4Addr) -> String {
        format!("{}/endpoints/{vni}/{ip}", self.prefix)
    }

    pub fn static_endpoint(&self, vni: u32, ip: Ipv4Addr) -> String {
        format!("{}/statics/{vni}/{ip}", self.prefix)
    }

    pub fn mac_claim(&self, vni: u32, mac: MacAddr) -> String {
        format!("{}/claims/mac/{vni}/{mac}", self.prefix)
    }

    /// An address reserved ahead of its endpoint (an IPAM request).
    pub fn ip_reservation(&self, vni: u32, ip: Ipv4Addr) -> String {
        format!("{}/claims/ip/{vni}/{ip}", self.prefix)
    }

    /// Every reservation in a network: a prefix.
    pub fn ip_reservations(&self, vni: u32) -> String {
        format!("{}/claims/ip/{vni}/", self.prefix)
    }

    pub fn vtep_claim(&self, vtep: Ipv4Addr) -> String {
        format!("{}/claims/vtep/{vtep}", self.prefix)
    }

    pub fn key(&self, key: &Key) -> String {
        match key {
            Key::Node(n) => self.node(n),
            Key::Endpoint(vni, ip) => self.endpoint(*vni, *ip),
            Key::Static(vni, ip) => self.static_endpoint(*vni, *ip),
        }
    }

    /// The range the agents watch: `[start, end)`.
    pub fn watch_range(&self) -> (String, String) {
        (format!("{}/endpoints/", self.prefix), format!("{}/statics0", self.prefix))
    }

    /// Everything of this layout (for `down` and tests).
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// Parses a followed key; `None` for anything else (claims, strangers).
    pub fn parse(&self, key: &str) -> Option<Key> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let kind = parts.next()?;
        let key = match kind {
            "nodes" => Key::Node(parts.next().filter(|n| !n.is_empty())?.to_owned()),
            "endpoints" | "statics" => {
                let vni = parts.next()?.parse().ok()?;
                let ip = parts.next()?.parse().ok()?;
                if kind == "endpoints" { Key::Endpoint(vni, ip) } else { Key::Static(vni, ip) }
            }
            _ => return None,
        };
        parts.next().is_none().then_some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_strangers() {
        let k = Keys::new("/overlay/v1/");
        let ip = Ipv4Addr::new(10, 0, 10, 11);
        for key in [Key::Node("h1".into()), Key::Endpoint(42, ip), Key::Static(42, ip)] {
            assert_eq!(k.parse(&k.key(&key)), Some(key));
        }
        assert_eq!(k.endpoint(42, ip), "/overlay/v1/endpoints/42/10.0.10.11");
        for other in [
            k.mac_claim(42, MacAddr::from_ipv4(ip)),
            k.vtep_claim(ip),
            "/overlay/v1/nodes/".into(),
            "/overlay/v1/endpoints/42/10.0.10.11/x".into(),
            "/overlay/v1/endpoints/x/10.0.10.11".into(),
            "/overlay/v2/nodes/h1".into(),
            "/overlay/v1x/nodes/h1".into(),
        ] {
            assert_eq!(k.parse(&other), None, "{other}");
        }
    }

    #[test]
    fn watch_range_holds_followed_keys_and_not_claims() {
        let k = Keys::new(DEFAULT_PREFIX);
        let (start, end) = k.watch_range();
        let ip = Ipv4Addr::new(10, 0, 10, 11);
        for key in [k.node("h1"), k.endpoint(42, ip), k.static_endpoint(42, ip)] {
            assert!(start <= key && key < end, "{key}");
        }
        for key in [k.mac_claim(42, MacAddr::from_ipv4(ip)), k.vtep_claim(ip), k.ip_reservation(42, ip), "/overlay/v10/nodes/h1".into()] {
            assert!(!(start <= key && key < end), "{key}");
        }
    }
}
