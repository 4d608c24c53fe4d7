//! Routes of the kernel datapath's L3 networks: `ip route replace SUBNET via NEXTHOP dev
//! VXLAN onlink`, one per remote node subnet, as seeds/003 and flannel install them.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::route::{RouteAddress, RouteAttribute, RouteScope},
};
use tracing::debug;

use super::{Netlink, NetlinkError, idempotent, request_error, validate_prefix_len};

/// A route out of one device: destination, prefix length, next hop.
pub type DeviceRoute = (Ipv4Addr, u8, Ipv4Addr);

/// The kernel's `local` routing table (255), consulted before `main` by the default
/// rules. The routes a network's gateway needs on the host (the way back into the
/// containers) go there rather than into `main`, where software that looks for a free
/// subnet by the host's routes would see the overlay's subnet as taken: dockerd's
/// libnetwork asks the IPAM driver again and again for a pool that does not overlap a
/// route of `main` (`netutils.FindAvailableNetwork`), forever if the IPAM always
/// answers the same subnet. `ip route show table local` lists them.
pub const GATEWAY_TABLE: u32 = 255;

impl Netlink {
    /// `ip route replace DST/LEN via VIA dev #OIF onlink`: the next hop is on the link
    /// even though no address of the link covers it (the VXLAN device holds only a /32).
    pub async fn route_replace_onlink(&self, dst: Ipv4Addr, prefix_len: u8, via: Ipv4Addr, oif: u32) -> Result<(), NetlinkError> {
        validate_prefix_len(prefix_len)?;
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix_len)
            .gateway(via)
            .output_interface(oif)
            .onlink()
            .build();
        self.replace_route(msg, format!("{dst}/{prefix_len} via {via} dev #{oif} onlink")).await
    }

    /// `ip route replace DST/LEN dev #OIF scope link src SRC table local`: the way from
    /// the host into a container's veth (a /32), or a bridge's subnet (see
    /// [`GATEWAY_TABLE`]), answered from `src`.
    pub async fn route_replace_link(&self, dst: Ipv4Addr, prefix_len: u8, oif: u32, src: Ipv4Addr) -> Result<(), NetlinkError> {
        validate_prefix_len(prefix_len)?;
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix_len)
            .output_interface(oif)
            .scope(rtnetlink::packet_route::route::RouteScope::Link)
            .pref_source(src)
            .table_id(GATEWAY_TABLE)
            .build();
        self.replace_route(msg, format!("{dst}/{prefix_len} dev #{oif} src {src} table local")).await
    }

    /// `ip route replace` of `msg` (`what` names it in errors and logs).
    async fn replace_route(&self, msg: rtnetlink::packet_route::route::RouteMessage, what: String) -> Result<(), NetlinkError> {
        self.handle.route().add(msg).replace().execute().await.map_err(request_error("replace route", &what))?;
        debug!(route = %what, "route replaced");
        Ok(())
    }

    /// `ip route del DST/LEN dev #OIF`; fine if it is gone.
    pub async fn route_del(&self, dst: Ipv4Addr, prefix_len: u8, oif: u32) -> Result<(), NetlinkError> {
        validate_prefix_len(prefix_len)?;
        let msg = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dst, prefix_len).output_interface(oif).build();
        let result = self.handle.route().del(msg).execute().await;
        idempotent(result, &[libc::ESRCH, libc::ENOENT], "delete route", format!("{dst}/{prefix_len}")).map(drop)
    }

    /// The IPv4 routes of the main table out of link `oif` that have a next hop.
    pub async fn routes_via(&self, oif: u32) -> Result<Vec<DeviceRoute>, NetlinkError> {
        let msgs: Vec<_> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(request_error("dump routes", format!("of #{oif}")))?;
        Ok(msgs
            .iter()
            .filter(|m| m.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == oif)))
            .filter_map(|m| {
                let mut dst = Ipv4Addr::UNSPECIFIED;
                let mut via = None;
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
                        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => via = Some(*ip),
                        _ => {}
                    }
                }
                via.map(|v| (dst, m.header.destination_prefix_length, v))
            })
            .collect())
    }
}

/// The message of `ip route ... blackhole DST/LEN`.
fn blackhole_route(dst: Ipv4Addr, prefix_len: u8) -> Result<rtnetlink::packet_route::route::RouteMessage, NetlinkError> {
    validate_prefix_len(prefix_len)?;
    Ok(RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, prefix_len)
        .kind(rtnetlink::packet_route::route::RouteType::BlackHole)
        .build())
}

/// Routes of the main table (`ip route add`) and blackhole routes (the tests' way to cut a
/// host off from a peer).
impl Netlink {
    /// Adds a route to `dst/prefix_len` in the main table, via `gateway`
    /// and/or out of `oif` (without a gateway it is a link-scope route, like
    /// `ip route add DST dev IF`). `dst` must have no host bits set.
    /// Idempotent: Ok if the same route exists.
    pub async fn add_route(
        &self,
        dst: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
        oif: Option<u32>,
    ) -> Result<(), NetlinkError> {
        validate_prefix_len(prefix_len)?;
        let mut builder =
            RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dst, prefix_len);
        match (gateway, oif) {
            (None, None) => return Err(NetlinkError::RouteWithoutNextHop { dst, prefix_len }),
            (Some(gateway), _) => builder = builder.gateway(gateway),
            (None, Some(_)) => builder = builder.scope(RouteScope::Link),
        }
        if let Some(oif) = oif {
            builder = builder.output_interface(oif);
        }
        let result = self.handle.route().add(builder.build()).execute().await;
        if idempotent(result, &[libc::EEXIST], "add route", format!("{dst}/{prefix_len}"))? {
            debug!(%dst, prefix_len, ?gateway, ?oif, "added route");
        }
        Ok(())
    }

    /// `ip route add blackhole DST/LEN`: traffic to it is dropped (tests use it to cut a
    /// host off from one address). Idempotent.
    pub async fn add_blackhole_route(&self, dst: Ipv4Addr, prefix_len: u8) -> Result<(), NetlinkError> {
        let result = self.handle.route().add(blackhole_route(dst, prefix_len)?).execute().await;
        idempotent(result, &[libc::EEXIST], "add blackhole route", format!("{dst}/{prefix_len}")).map(drop)
    }

    /// Removes a route added by [`Netlink::add_blackhole_route`]; fine if it is gone.
    pub async fn del_blackhole_route(&self, dst: Ipv4Addr, prefix_len: u8) -> Result<(), NetlinkError> {
        let result = self.handle.route().del(blackhole_route(dst, prefix_len)?).execute().await;
        idempotent(result, &[libc::ESRCH, libc::ENOENT], "delete blackhole route", format!("{dst}/{prefix_len}")).map(drop)
    }
}
