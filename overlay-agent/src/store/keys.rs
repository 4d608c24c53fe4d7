//! The key layout, the same on every backend (`<prefix>` is `[store] prefix`, default
//! `/overlay/v1`):
//!
//! | key | value | lease |
//! |---|---|---|
//! | `<prefix>/nodes/<node>` | [`NodeRecord`](crate::model::NodeRecord): VTEP, agent version | the node's |
//! | `<prefix>/endpoints/<vni>/<ip>` | [`EndpointRecord`](crate::model::EndpointRecord): owning node, MAC, port | the node's |
//! | `<prefix>/statics/<vni>/<ip>` | [`StaticRecord`](crate::model::StaticRecord): MAC, VTEP, port (`remote add`) | none |
//! | `<prefix>/subnets/<vni>/<net>-<len>` | [`SubnetRecord`](crate::records::SubnetRecord): the node routing that node subnet of an L3 network | the node's |
//! | `<prefix>/static-subnets/<vni>/<net>-<len>` | [`StaticSubnetRecord`](crate::records::StaticSubnetRecord): a subnet behind a host without agent (`remote add --subnet`) | none |
//! | `<prefix>/claims/mac/<vni>/<mac>` | the endpoint or static key that holds the MAC | its owner's |
//! | `<prefix>/claims/vtep/<ip>` | the node that holds the VTEP address | the node's |
//! | `<prefix>/claims/ip/<vni>/<ip>` | the node that reserved the address before plugging (Docker's IPAM) | the node's |
//!
//! An IP is unique in a network because `endpoints/<vni>/<ip>` and `statics/<vni>/<ip>`
//! are created only if both are absent and the address is not reserved by another node
//! (`claims/ip/`, created only if all three are absent); a MAC because its claim key is
//! created in the same transaction. A node subnet is unique because its key is created only
//! if it and the static subnet of the same key are absent. Agents watch
//! `[<prefix>/endpoints/, <prefix>/subnets0)`, which holds endpoints, nodes, statics and
//! subnets and leaves the claims (read only by writers) out.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::mac::MacAddr;

/// The default `[store] prefix`.
pub const DEFAULT_PREFIX: &str = "/overlay/v1";

/// A key that the agents follow, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Node(String),
    Endpoint(u32, Ipv4Addr),
    Static(u32, Ipv4Addr),
    Subnet(u32, Ipv4Net),
    StaticSubnet(u32, Ipv4Net),
}

/// `10.244.1.0/24` as a key segment: `10.244.1.0-24` (no `/` inside a segment).
fn net_segment(net: Ipv4Net) -> String {
    format!("{}-{}", net.network(), net.prefix_len())
}

fn parse_net_segment(s: &str) -> Option<Ipv4Net> {
    let (ip, len) = s.split_once('-')?;
    let net = Ipv4Net::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
    // Only the canonical form: no host bits.
    (net.network() == net.addr()).then_some(net)
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

    pub fn subnet(&self, vni: u32, net: Ipv4Net) -> String {
        format!("{}/subnets/{vni}/{}", self.prefix, net_segment(net))
    }

    pub fn static_subnet(&self, vni: u32, net: Ipv4Net) -> String {
        format!("{}/static-subnets/{vni}/{}", self.prefix, net_segment(net))
    }

    /// Every node subnet of a network: a prefix.
    pub fn subnets(&self, vni: u32) -> String {
        format!("{}/subnets/{vni}/", self.prefix)
    }

    /// Every static subnet of a network: a prefix.
    pub fn static_subnets(&self, vni: u32) -> String {
        format!("{}/static-subnets/{vni}/", self.prefix)
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
            Key::Subnet(vni, net) => self.subnet(*vni, *net),
            Key::StaticSubnet(vni, net) => self.static_subnet(*vni, *net),
        }
    }

    /// The range the agents watch: `[start, end)`.
    pub fn watch_range(&self) -> (String, String) {
        (format!("{}/endpoints/", self.prefix), format!("{}/subnets0", self.prefix))
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
            "subnets" | "static-subnets" => {
                let vni = parts.next()?.parse().ok()?;
                let net = parse_net_segment(parts.next()?)?;
                if kind == "subnets" { Key::Subnet(vni, net) } else { Key::StaticSubnet(vni, net) }
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
        let net: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        for key in [Key::Node("h1".into()), Key::Endpoint(42, ip), Key::Static(42, ip), Key::Subnet(42, net), Key::StaticSubnet(42, net)] {
            assert_eq!(k.parse(&k.key(&key)), Some(key));
        }
        assert_eq!(k.subnet(42, net), "/overlay/v1/subnets/42/10.244.3.0-24");
        assert_eq!(k.endpoint(42, ip), "/overlay/v1/endpoints/42/10.0.10.11");
        for other in [
            k.mac_claim(42, MacAddr::from_ipv4(ip)),
            k.vtep_claim(ip),
            "/overlay/v1/nodes/".into(),
            "/overlay/v1/endpoints/42/10.0.10.11/x".into(),
            "/overlay/v1/endpoints/x/10.0.10.11".into(),
            "/overlay/v2/nodes/h1".into(),
            "/overlay/v1x/nodes/h1".into(),
            "/overlay/v1/subnets/42/10.244.3.1-24".into(),
            "/overlay/v1/subnets/42/10.244.3.0/24".into(),
            "/overlay/v1/subnets/42/10.244.3.0-33".into(),
        ] {
            assert_eq!(k.parse(&other), None, "{other}");
        }
    }

    #[test]
    fn watch_range_holds_followed_keys_and_not_claims() {
        let k = Keys::new(DEFAULT_PREFIX);
        let (start, end) = k.watch_range();
        let ip = Ipv4Addr::new(10, 0, 10, 11);
        let net: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        for key in [k.node("h1"), k.endpoint(42, ip), k.static_endpoint(42, ip), k.subnet(42, net), k.static_subnet(42, net)] {
            assert!(start <= key && key < end, "{key}");
        }
        for key in [k.mac_claim(42, MacAddr::from_ipv4(ip)), k.vtep_claim(ip), k.ip_reservation(42, ip), "/overlay/v10/nodes/h1".into()] {
            assert!(!(start <= key && key < end), "{key}");
        }
    }
}
