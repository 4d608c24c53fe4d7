//! Building topologies out of [`NetNs`]es with the agent's netlink module, and
//! the ready-made underlays ([`Underlay`]).
//!
//! Everything panics on failure with what it was doing: these are test
//! helpers, and the namespaces' guards clean up behind the panic.

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicU32, Ordering},
};

use overlay_agent::netlink::{LinkChange, LinkInfo};

use crate::ns::NetNs;

/// The underlay interface of every host.
pub const UL_IF: &str = "ul0";
/// The MTU of underlay links unless [`UnderlayBuilder::mtu`] says otherwise.
pub const DEFAULT_MTU: u32 = 1500;

pub const H1_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const H2_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const H3_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);
/// The router's address on the h1/h2 segment (198.51.100.0/24).
pub const ROUTER_IP_A: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
/// The router's address on the h3 segment (203.0.113.0/24).
pub const ROUTER_IP_B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
pub const SUBNET_A: &str = "198.51.100.0/24";
pub const SUBNET_B: &str = "203.0.113.0/24";
/// The bridge joining the 198.51.100.0/24 segment, in the router
/// ([`UnderlayBuilder::routed`]) or the switch ([`UnderlayBuilder::switched`]).
pub const SEGMENT_BRIDGE: &str = "br0";

static TMP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Parses `"198.51.100.1/24"` (or `"default"`, as 0.0.0.0/0); panics on
/// anything else.
pub fn parse_cidr(cidr: &str) -> (Ipv4Addr, u8) {
    if cidr == "default" {
        return (Ipv4Addr::UNSPECIFIED, 0);
    }
    let parsed = cidr.split_once('/').and_then(|(ip, len)| {
        let ip: Ipv4Addr = ip.parse().ok()?;
        let len: u8 = len.parse().ok()?;
        (len <= 32).then_some((ip, len))
    });
    parsed.unwrap_or_else(|| panic!("not an IPv4 CIDR: {cidr:?}"))
}

/// Creates a veth pair `a:a_if` <-> `b:b_if` with `mtu` on both ends and sets
/// both up. The peer is created under a temporary name and renamed once in
/// `b`, so `a_if` and `b_if` may be equal.
pub fn link_veth(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str, mtu: u32) {
    let tmp = format!(
        "tp{}x{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let b_path = b.path().to_owned();
    let tmp_ref = tmp.as_str();
    a.netlink(|nl| async move {
        let tmp = tmp_ref;
        nl.create_veth(a_if, tmp)
            .await
            .unwrap_or_else(|e| panic!("creating veth {a_if}/{tmp}: {e:?}"));
        let peer = nl.link_by_name(tmp).await.expect("get peer").expect("peer");
        nl.move_link_to_netns(peer.index, &b_path)
            .await
            .unwrap_or_else(|e| panic!("moving {tmp} to {}: {e:?}", b_path.display()));
    });
    set_link(
        b,
        &tmp,
        LinkChange {
            name: Some(b_if.to_owned()),
            mtu: Some(mtu),
            up: Some(true),
            ..Default::default()
        },
    );
    set_link(
        a,
        a_if,
        LinkChange {
            mtu: Some(mtu),
            up: Some(true),
            ..Default::default()
        },
    );
}

/// Applies `change` to the link `ifname` of `ns`.
pub fn set_link(ns: &NetNs, ifname: &str, change: LinkChange) {
    let index = ns.link(ifname).index;
    ns.netlink(|nl| async move {
        nl.set_link(index, change.clone())
            .await
            .unwrap_or_else(|e| panic!("changing {ifname} ({change:?}): {e:?}"));
    });
}

/// Sets `ifname` up.
pub fn set_up(ns: &NetNs, ifname: &str) {
    set_link(
        ns,
        ifname,
        LinkChange {
            up: Some(true),
            ..Default::default()
        },
    );
}

/// Adds an address, e.g. `add_addr(&h1, "ul0", "198.51.100.1/24")`.
pub fn add_addr(ns: &NetNs, ifname: &str, cidr: &str) {
    let (ip, len) = parse_cidr(cidr);
    let index = ns.link(ifname).index;
    ns.netlink(|nl| async move {
        nl.add_address(index, ip, len)
            .await
            .unwrap_or_else(|e| panic!("adding {cidr} to {ifname}: {e:?}"));
    });
}

/// Removes an address added with [`add_addr`].
pub fn del_addr(ns: &NetNs, ifname: &str, cidr: &str) {
    let (ip, len) = parse_cidr(cidr);
    let index = ns.link(ifname).index;
    ns.netlink(|nl| async move {
        nl.del_address(index, ip, len)
            .await
            .unwrap_or_else(|e| panic!("removing {cidr} from {ifname}: {e:?}"));
    });
}

/// Adds a route to `cidr` (or `"default"`) via the gateway `via`.
pub fn add_route(ns: &NetNs, cidr: &str, via: Ipv4Addr) {
    let (dst, len) = parse_cidr(cidr);
    ns.netlink(|nl| async move {
        nl.add_route(dst, len, Some(via), None)
            .await
            .unwrap_or_else(|e| panic!("adding route {cidr} via {via}: {e:?}"));
    });
}

/// Adds a link-scope route to `cidr` out of `ifname` (no gateway).
pub fn add_dev_route(ns: &NetNs, cidr: &str, ifname: &str) {
    let (dst, len) = parse_cidr(cidr);
    let index = ns.link(ifname).index;
    ns.netlink(|nl| async move {
        nl.add_route(dst, len, None, Some(index))
            .await
            .unwrap_or_else(|e| panic!("adding route {cidr} dev {ifname}: {e:?}"));
    });
}

/// Creates bridge `name` in `ns`, makes `members` (existing links of `ns`) its
/// ports, and sets the bridge and its ports up.
pub fn bridge(ns: &NetNs, name: &str, members: &[&str]) {
    let members: Vec<String> = members.iter().map(|m| (*m).to_owned()).collect();
    ns.netlink(|nl| async move {
        nl.create_bridge(name)
            .await
            .unwrap_or_else(|e| panic!("creating bridge {name}: {e:?}"));
        let bridge = nl
            .link_by_name(name)
            .await
            .expect("get bridge")
            .expect("bridge");
        for member in &members {
            let port = nl
                .link_by_name(member)
                .await
                .expect("get port")
                .unwrap_or_else(|| panic!("no link {member} to add to {name}"));
            nl.set_link(
                port.index,
                LinkChange {
                    master: Some(bridge.index),
                    up: Some(true),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("adding {member} to {name}: {e:?}"));
        }
        nl.set_link(
            bridge.index,
            LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("setting {name} up: {e:?}"));
    });
}

/// Turns on IPv4 forwarding inside `ns` (never in the root namespace).
pub fn enable_forwarding(ns: &NetNs) {
    ns.sysctl("net.ipv4.ip_forward", "1");
}

/// A host of an [`Underlay`]: a namespace with its underlay interface.
#[derive(Debug)]
pub struct Host {
    pub ns: NetNs,
    /// The underlay interface (`ul0`).
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
}

impl Host {
    fn new(short_name: &str, ip: Ipv4Addr, prefix_len: u8) -> Host {
        Host {
            ns: NetNs::new(short_name),
            ifname: UL_IF.to_owned(),
            ip,
            prefix_len,
        }
    }

    /// The underlay link as it is now (index, MAC, MTU...).
    pub fn link(&self) -> LinkInfo {
        self.ns.link(&self.ifname)
    }

    /// The MAC of the underlay interface.
    pub fn mac(&self) -> [u8; 6] {
        self.link().mac.expect("underlay link has a MAC")
    }
}

/// Settings of an [`Underlay`].
#[derive(Debug, Clone)]
pub struct UnderlayBuilder {
    mtu: u32,
}

impl Default for UnderlayBuilder {
    fn default() -> Self {
        UnderlayBuilder { mtu: DEFAULT_MTU }
    }
}

impl UnderlayBuilder {
    /// MTU of every underlay link (default 1500).
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = mtu;
        self
    }

    /// h1 (198.51.100.1/24) and h2 (198.51.100.2/24) on one L2 segment: a
    /// veth `h1:ul0` <-> `h2:ul0`.
    pub fn two_hosts(self) -> Underlay {
        let h1 = Host::new("h1", H1_IP, 24);
        let h2 = Host::new("h2", H2_IP, 24);
        link_veth(&h1.ns, UL_IF, &h2.ns, UL_IF, self.mtu);
        for host in [&h1, &h2] {
            add_addr(&host.ns, UL_IF, &format!("{}/{}", host.ip, host.prefix_len));
        }
        Underlay {
            h1,
            h2,
            h3: None,
            router: None,
            switch: None,
        }
    }

    /// h1 (198.51.100.1/24) and h2 (198.51.100.2/24) on one L2 segment, as
    /// in [`UnderlayBuilder::two_hosts`], but through a switch: bridge `br0`
    /// (no address) of namespace `sw`, ports `h1p` and `h2p`. More machines
    /// (an etcd cluster) can plug into it: see [`Underlay::segment`].
    pub fn switched(self) -> Underlay {
        let switch = NetNs::new("sw");
        let h1 = Host::new("h1", H1_IP, 24);
        let h2 = Host::new("h2", H2_IP, 24);
        link_veth(&switch, "h1p", &h1.ns, UL_IF, self.mtu);
        link_veth(&switch, "h2p", &h2.ns, UL_IF, self.mtu);
        bridge(&switch, SEGMENT_BRIDGE, &["h1p", "h2p"]);
        for host in [&h1, &h2] {
            add_addr(&host.ns, UL_IF, &format!("{}/{}", host.ip, host.prefix_len));
        }
        Underlay {
            h1,
            h2,
            h3: None,
            router: None,
            switch: Some(switch),
        }
    }

    /// Two segments joined by a router `r`:
    /// - h1 (198.51.100.1/24) and h2 (198.51.100.2/24) plugged into bridge
    ///   `br0` of `r` (ports `h1p`, `h2p`; `br0` is 198.51.100.254/24);
    /// - h3 (203.0.113.3/24) on `r:h3p` (203.0.113.254/24);
    /// - `r` forwards; h1 and h2 route 203.0.113.0/24 via 198.51.100.254, h3
    ///   routes 198.51.100.0/24 via 203.0.113.254.
    pub fn routed(self) -> Underlay {
        let router = NetNs::new("r");
        let h1 = Host::new("h1", H1_IP, 24);
        let h2 = Host::new("h2", H2_IP, 24);
        let h3 = Host::new("h3", H3_IP, 24);
        link_veth(&router, "h1p", &h1.ns, UL_IF, self.mtu);
        link_veth(&router, "h2p", &h2.ns, UL_IF, self.mtu);
        link_veth(&router, "h3p", &h3.ns, UL_IF, self.mtu);
        bridge(&router, "br0", &["h1p", "h2p"]);
        add_addr(&router, "br0", &format!("{ROUTER_IP_A}/24"));
        add_addr(&router, "h3p", &format!("{ROUTER_IP_B}/24"));
        enable_forwarding(&router);
        for host in [&h1, &h2, &h3] {
            add_addr(&host.ns, UL_IF, &format!("{}/{}", host.ip, host.prefix_len));
        }
        add_route(&h1.ns, SUBNET_B, ROUTER_IP_A);
        add_route(&h2.ns, SUBNET_B, ROUTER_IP_A);
        add_route(&h3.ns, SUBNET_A, ROUTER_IP_B);
        Underlay {
            h1,
            h2,
            h3: Some(h3),
            router: Some(router),
            switch: None,
        }
    }
}

/// A ready underlay: see [`UnderlayBuilder::two_hosts`],
/// [`UnderlayBuilder::routed`] and [`UnderlayBuilder::switched`]. Dropping it
/// deletes every namespace.
#[derive(Debug)]
pub struct Underlay {
    pub h1: Host,
    pub h2: Host,
    /// Only in the routed underlay.
    pub h3: Option<Host>,
    /// Only in the routed underlay.
    pub router: Option<NetNs>,
    /// Only in the switched underlay: the namespace holding bridge `br0`.
    pub switch: Option<NetNs>,
}

impl Underlay {
    pub fn builder() -> UnderlayBuilder {
        UnderlayBuilder::default()
    }

    /// [`UnderlayBuilder::two_hosts`] with MTU 1500.
    pub fn two_hosts() -> Underlay {
        Self::builder().two_hosts()
    }

    /// [`UnderlayBuilder::routed`] with MTU 1500.
    pub fn routed() -> Underlay {
        Self::builder().routed()
    }

    /// [`UnderlayBuilder::switched`] with MTU 1500.
    pub fn switched() -> Underlay {
        Self::builder().switched()
    }

    /// Where more machines join the 198.51.100.0/24 segment: the namespace
    /// and the bridge to plug a veth into (the router's `br0` in the routed
    /// underlay, the switch's `br0` in the switched one). `None` for
    /// [`UnderlayBuilder::two_hosts`], whose segment is a single veth.
    pub fn segment(&self) -> Option<(&NetNs, &str)> {
        self.router
            .as_ref()
            .or(self.switch.as_ref())
            .map(|ns| (ns, SEGMENT_BRIDGE))
    }

    /// The gateway of the 198.51.100.0/24 segment towards the other
    /// segments: 198.51.100.254 in the routed underlay, `None` otherwise.
    pub fn segment_gateway(&self) -> Option<Ipv4Addr> {
        self.router.as_ref().map(|_| ROUTER_IP_A)
    }

    /// h3; panics unless this is the routed underlay.
    pub fn h3(&self) -> &Host {
        self.h3
            .as_ref()
            .expect("h3 exists only in the routed underlay")
    }

    /// The router; panics unless this is the routed underlay.
    pub fn router(&self) -> &NetNs {
        self.router
            .as_ref()
            .expect("the router exists only in the routed underlay")
    }

    /// Every host, h1 first.
    pub fn hosts(&self) -> Vec<&Host> {
        let mut hosts = vec![&self.h1, &self.h2];
        hosts.extend(self.h3.as_ref());
        hosts
    }

    /// The names of every namespace of this underlay.
    pub fn netns_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .hosts()
            .iter()
            .map(|h| h.ns.name().to_owned())
            .collect();
        names.extend(self.router.as_ref().map(|r| r.name().to_owned()));
        names.extend(self.switch.as_ref().map(|s| s.name().to_owned()));
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("198.51.100.1/24"), (H1_IP, 24));
        assert_eq!(parse_cidr("default"), (Ipv4Addr::UNSPECIFIED, 0));
        assert_eq!(parse_cidr("0.0.0.0/0"), (Ipv4Addr::UNSPECIFIED, 0));
    }

    #[test]
    #[should_panic(expected = "not an IPv4 CIDR")]
    fn bad_cidr() {
        parse_cidr("198.51.100.1/33");
    }
}
