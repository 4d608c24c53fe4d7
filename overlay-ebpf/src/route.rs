//! Routing for L3 networks (flannel's design, seeds/003): every host owns a node subnet
//! of the network and is the router of its containers. A frame to this host's router MAC
//! is routed by its IPv4 destination: to a local container (Ethernet header rewritten
//! as a router does, TTL decremented), or to the host owning the longest matching node
//! subnet (`OVL_ROUTES`), encapsulated with that host's router MAC as inner destination.
//! A routed packet from another host is delivered the same way after decapsulation, so
//! a container-to-container packet across hosts loses two TTL, as through two Linux
//! routers. The same router MAC is the gateway of an L2 network (one anycast address on
//! every host): there every destination is local or on the L2 segment, so only the
//! host's routes (`ROUTE_HOST`, `ROUTE_BLOCKED`) apply.

use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};
use overlay_common::{
    DatapathConfig, FDB_LOCAL, FDB_REMOTE, FdbKey, FdbValue, NeighKey, ROUTE_HOST, ROUTE_REMOTE,
    Reason, RouteKey,
};

use crate::{
    encap,
    parse::{self, IPV4_VERSION, ptr_at},
    redirect,
    stats::Outcome,
};

/// Offset of the IPv4 header in an Ethernet frame.
const IP_OFF: usize = EthHdr::LEN;

/// Routes a frame a container sent to this host's router MAC `router_mac` in network
/// `vni`. `eth` is a copy of its Ethernet header.
#[inline(always)]
pub fn from_container(
    ctx: &TcContext,
    config: &DatapathConfig,
    vni: u32,
    eth: &EthHdr,
    router_mac: [u8; 6],
) -> Outcome {
    if eth.ether_type != EtherType::Ipv4 as u16 {
        return Err(Reason::RouteNotIpv4);
    }
    let dst = checked_ip(ctx)?;

    if let Some((ifindex, mac)) = local_endpoint(vni, dst) {
        return deliver(ctx, ifindex, mac, router_mac, Reason::Routed);
    }

    let key = Key::new(
        RouteKey::VNI_BITS + 32,
        RouteKey {
            vni_be: vni.to_be_bytes(),
            ip: dst,
        },
    );
    // SAFETY: the value is copied out at once; the agent replaces entries whole.
    let route = *unsafe { crate::OVL_ROUTES.get(&key) }.ok_or(Reason::NoRoute)?;
    match route.kind {
        ROUTE_REMOTE => {}
        ROUTE_HOST => {
            // The host's own stack routes it (its gateway address, or out through the
            // host's routing with NAT). The frame carries the router MAC, not the veth's,
            // so it must be marked PACKET_HOST, as Cilium's to-host path does. The TTL is
            // the host's to decrement if it forwards.
            redirect::mark_for_host(ctx)?;
            return Ok(Reason::PassToHost);
        }
        // ROUTE_BLOCKED: another overlay network, or an address no node holds.
        _ => return Err(Reason::NoRoute),
    }
    decrement_ttl(ctx)?;
    let inner = EthHdr {
        dst_addr: route.mac,
        src_addr: router_mac,
        ether_type: eth.ether_type,
    };
    let remote = FdbValue {
        kind: FDB_REMOTE,
        ifindex: 0,
        vtep: route.vtep,
        udp_port_be: route.udp_port_be,
        _pad: [0; 2],
    };
    encap::encapsulate(ctx, config, vni, &remote, &inner)?;
    redirect::to_underlay(config.underlay_ifindex)?;
    Ok(Reason::Encapsulated)
}

/// Delivers a decapsulated frame that another host routed to this host's router MAC
/// `router_mac` in network `vni`: only to a local container (never back out: this host
/// is not a transit router for other hosts).
#[inline(always)]
pub fn from_underlay(ctx: &TcContext, vni: u32, inner_type: u16, router_mac: [u8; 6]) -> Outcome {
    if inner_type != EtherType::Ipv4 as u16 {
        return Err(Reason::RouteNotIpv4);
    }
    let dst = checked_ip(ctx)?;
    let (ifindex, mac) = local_endpoint(vni, dst).ok_or(Reason::NoRoute)?;
    deliver(ctx, ifindex, mac, router_mac, Reason::Decapsulated)
}

/// Makes the Ethernet and IPv4 headers linear and checks the IPv4 header a router
/// reads; returns the destination address. TTL 1 or 0 is not forwarded (RFC 1812
/// section 5.3.1); no ICMP time-exceeded is sent back.
#[inline(always)]
fn checked_ip(ctx: &TcContext) -> Result<[u8; 4], Reason> {
    parse::pull(ctx, IP_OFF + Ipv4Hdr::LEN).map_err(|_| Reason::PullFailed)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, IP_OFF).ok_or(Reason::RouteNotIpv4)?;
    // SAFETY: ptr_at bounds-checked the header; copied out before any helper call.
    let ip = unsafe { &*ip };
    if ip.version() != IPV4_VERSION || usize::from(ip.ihl()) < Ipv4Hdr::LEN {
        return Err(Reason::RouteNotIpv4);
    }
    if ip.ttl <= 1 {
        return Err(Reason::TtlExceeded);
    }
    Ok(ip.dst_addr)
}

/// The local container that has `ip` in network `vni`: (host-side veth, its MAC).
#[inline(always)]
fn local_endpoint(vni: u32, ip: [u8; 4]) -> Option<(u32, [u8; 6])> {
    // SAFETY: the values are copied out at once; the agent replaces entries whole.
    let mac = unsafe { crate::OVL_NEIGH.get(NeighKey { vni, ip }) }?.mac;
    // SAFETY: as above.
    let fdb = unsafe { crate::OVL_FDB.get(FdbKey::new(vni, mac)) }?;
    (fdb.kind == FDB_LOCAL).then_some((fdb.ifindex, mac))
}

/// Rewrites the Ethernet header as a router does (from the router MAC to the
/// container's), decrements the TTL and moves the packet into the container.
#[inline(always)]
fn deliver(
    ctx: &TcContext,
    ifindex: u32,
    mac: [u8; 6],
    router_mac: [u8; 6],
    done: Reason,
) -> Outcome {
    decrement_ttl(ctx)?;
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Reason::Malformed)?;
    // SAFETY: ptr_at bounds-checked the header (no helper ran since decrement_ttl's
    // access, but the pointer is taken fresh anyway).
    unsafe {
        (*eth).dst_addr = mac;
        (*eth).src_addr = router_mac;
    }
    redirect::into_container(ctx, ifindex)?;
    Ok(done)
}

/// `ip_decrease_ttl` (include/net/ip.h): TTL − 1 and the header checksum updated
/// incrementally (RFC 1624): the TTL is the high byte of its 16-bit word, so the sum
/// grows by 0x0100, with the end-around carry. The header's ones' complement sum is
/// unchanged, so a CHECKSUM_COMPLETE `skb->csum` stays right.
#[inline(always)]
fn decrement_ttl(ctx: &TcContext) -> Result<(), Reason> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, IP_OFF).ok_or(Reason::Malformed)?;
    // SAFETY: ptr_at bounds-checked the header; the program writes packet data directly
    // (the verifier makes the skb head writable for such programs).
    unsafe {
        let check = u32::from(u16::from_be_bytes((*ip).check)) + 0x0100;
        let check = check + u32::from(check >= 0xffff);
        (*ip).check = (check as u16).to_be_bytes();
        (*ip).ttl -= 1;
    }
    Ok(())
}
