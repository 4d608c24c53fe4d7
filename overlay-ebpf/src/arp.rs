//! ARP responder: a container's ARP request is answered in place from `OVL_NEIGH` and sent
//! straight back into the container, modelled on Cilium's bpf/lib/arp.h. ARP never leaves
//! the host and is never flooded.

use aya_ebpf::programs::TcContext;
use network_types::eth::EtherType;
use overlay_common::{EndpointValue, NeighKey, Reason};

use crate::{
    parse::{self, ArpFrame, ptr_at},
    redirect,
    stats::Outcome,
};

/// `ARPHRD_ETHER` (`include/uapi/linux/if_arp.h`).
const ARPHRD_ETHER: u16 = 1;
/// `ARPOP_REQUEST`, `ARPOP_REPLY` (`include/uapi/linux/if_arp.h`).
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;
/// Hardware and protocol address lengths of Ethernet/IPv4 ARP.
const ETH_ALEN: u8 = 6;
const IPV4_ALEN: u8 = 4;

/// Answers the ARP frame the container behind `ifindex` (described by `endpoint`) sent.
/// The caller has checked that the Ethernet source is the endpoint's MAC.
///
/// Returns `Ok(ArpReplied)` once the rewritten frame is redirected back into the container;
/// every other ARP frame is dropped with the reason that ruled it out.
#[inline(always)]
pub fn reply(ctx: &TcContext, endpoint: &EndpointValue, ifindex: u32) -> Outcome {
    parse::pull(ctx, size_of::<ArpFrame>()).map_err(|_| Reason::PullFailed)?;
    let frame = ptr_at::<ArpFrame>(ctx, 0).ok_or(Reason::Malformed)?;
    // SAFETY: ptr_at checked that the whole ArpFrame is inside the linear data; the map
    // lookup below does not move packet data, so the pointer stays valid until we return.
    let frame = unsafe { &mut *frame };

    let arp = &frame.arp;
    if arp.htype != ARPHRD_ETHER.to_be_bytes()
        || arp.ptype != (EtherType::Ipv4 as u16).to_ne_bytes()
        || arp.hlen != ETH_ALEN
        || arp.plen != IPV4_ALEN
        || arp.oper != ARPOP_REQUEST.to_be_bytes()
    {
        return Err(Reason::ArpNotRequest);
    }

    // The sender fields are what every ARP cache that sees the frame learns from: only
    // the endpoint's own (or 0.0.0.0, an RFC 5227 probe). The reply goes back into this
    // container only, but a request that claims someone else's address is spoofing.
    if arp.sha != endpoint.mac {
        return Err(Reason::SourceMacMismatch);
    }
    if arp.spa != endpoint.ip && arp.spa != [0; 4] {
        return Err(Reason::SourceIpMismatch);
    }
    let target_ip = arp.tpa;
    // A request for the sender's own address is duplicate address detection (RFC 5227,
    // sender IP 0) or a gratuitous ARP: answering it would report a conflict.
    if target_ip == endpoint.ip {
        return Err(Reason::ArpOwnAddress);
    }
    let key = NeighKey {
        vni: endpoint.vni,
        ip: target_ip,
    };
    // SAFETY: the value is copied out at once; the agent replaces entries whole.
    let answer_mac = unsafe { crate::OVL_NEIGH.get(key) }
        .ok_or(Reason::ArpUnknownTarget)?
        .mac;

    // The reply goes to the Ethernet source rather than to the ARP sender hardware
    // address, as in Cilium's `arp_validate`: it is the endpoint's own MAC (checked by the
    // caller), so the container's interface accepts the reply whatever `sha` says.
    let requester_mac = frame.eth.src_addr;
    let requester_ip = frame.arp.spa;

    frame.eth.dst_addr = requester_mac;
    frame.eth.src_addr = answer_mac;
    let arp = &mut frame.arp;
    arp.oper = ARPOP_REPLY.to_be_bytes();
    arp.sha = answer_mac;
    arp.spa = target_ip;
    arp.tha = requester_mac;
    arp.tpa = requester_ip;

    redirect::through_veth(ifindex)?;
    Ok(Reason::ArpReplied)
}
