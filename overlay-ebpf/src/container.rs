//! `ovl_from_container`: everything a container sends. ARP is answered, IPv4 from the
//! container's own address goes to the container or remote VTEP the FDB names (or is
//! routed, in an L3 network, when it is addressed to the router MAC), and nothing else
//! leaves.

use aya_ebpf::programs::TcContext;
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};
use overlay_common::{Direction, FDB_LOCAL, FDB_REMOTE, FDB_ROUTER, FdbKey, Reason};

use crate::{
    arp, config, encap, flood,
    parse::{self, is_group_mac, ptr_at},
    redirect, route,
    stats::Outcome,
};

/// Handles one frame from the container behind the veth this program is attached to.
///
/// Returns `Ok(ArpReplied | LocalDelivered | Encapsulated)` once the frame is redirected,
/// `Ok(PassNotConfigured)` before the agent has configured the datapath, and `Err` with
/// the drop reason otherwise: no frame from a container reaches the host stack.
#[inline(always)]
pub fn try_from_container(ctx: &TcContext) -> Outcome {
    let Some(config) = config::get() else {
        return Ok(Reason::PassNotConfigured);
    };
    // At TC ingress skb->dev is the device the program is attached to: the host-side veth.
    // SAFETY: reading a field of the context the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the value is copied out at once; the agent replaces entries whole.
    let endpoint = *unsafe { crate::OVL_ENDPOINTS.get(ifindex) }.ok_or(Reason::UnknownEndpoint)?;

    parse::pull(ctx, EthHdr::LEN).map_err(|_| Reason::PullFailed)?;
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Reason::Malformed)?;
    // SAFETY: ptr_at bounds-checked the header; copied before any helper call.
    let eth = unsafe { *eth };
    if eth.src_addr != endpoint.mac {
        return Err(Reason::SourceMacMismatch);
    }
    // A VLAN tag the veth took off into the skb's metadata (rx VLAN offload) would still
    // go with the frame, into a container or onto the underlay: tagged frames are not
    // carried, whether the tag is in the data or in the metadata.
    // SAFETY: reading a field of the context the kernel passed in.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        return Err(Reason::UnsupportedProtocol);
    }
    if eth.ether_type == EtherType::Arp as u16 {
        return arp::reply(ctx, &endpoint, ifindex);
    }
    // IPv4 only from here (IPv6, 802.1Q tags and the rest could carry any source past
    // the check below). Anti-spoofing: a container sends only from its own address, or it
    // could reach others' peers in its name (their replies would go to the real owner)
    // or slip past the isolation other hosts apply by source.
    if eth.ether_type != EtherType::Ipv4 as u16 {
        return Err(Reason::UnsupportedProtocol);
    }
    parse::pull(ctx, EthHdr::LEN + Ipv4Hdr::LEN).map_err(|_| Reason::PullFailed)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN).ok_or(Reason::Malformed)?;
    // SAFETY: ptr_at bounds-checked the header.
    if unsafe { (*ip).src_addr } != endpoint.ip {
        return Err(Reason::SourceIpMismatch);
    }
    if is_group_mac(&eth.dst_addr) {
        // Broadcast/multicast that ARP answering did not consume: the network's other
        // local endpoints and, through its VXLAN device, every remote VTEP.
        let targets = flood::targets(endpoint.vni).ok_or(Reason::BroadcastUnsupported)?;
        flood::flood(ctx, targets, ifindex, true, Direction::FromContainer)?;
        return Ok(Reason::Flooded);
    }

    // SAFETY: the fields are copied out at once; the agent replaces entries whole.
    let fdb = *unsafe { crate::OVL_FDB.get(FdbKey::new(endpoint.vni, eth.dst_addr)) }
        .ok_or(Reason::UnknownDestination)?;
    match fdb.kind {
        FDB_LOCAL => {
            // Same host: straight into the other container, never onto the wire.
            redirect::into_container(ctx, fdb.ifindex)?;
            Ok(Reason::LocalDelivered)
        }
        FDB_REMOTE => {
            encap::encapsulate(ctx, config, endpoint.vni, &fdb, &eth)?;
            redirect::to_underlay(config.underlay_ifindex)?;
            Ok(Reason::Encapsulated)
        }
        // This host's router in an L3 network: routed by the IPv4 destination.
        FDB_ROUTER => route::from_container(ctx, config, endpoint.vni, &eth, eth.dst_addr),
        _ => Err(Reason::UnknownDestination),
    }
}
