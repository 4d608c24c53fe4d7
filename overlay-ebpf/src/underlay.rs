//! `ovl_from_underlay`: recognise VXLAN packets for this VTEP, decapsulate those for local
//! containers and pass everything else to the kernel stack untouched.

use aya_ebpf::programs::TcContext;
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{IpProto, Ipv4Hdr},
    udp::UdpHdr,
    vxlan::VxlanHdr,
};
use overlay_common::{DatapathConfig, Direction, FDB_LOCAL, FDB_REMOTE, FDB_ROUTER, FdbKey, Reason, vxlan};

use crate::{
    config, decap, flood,
    parse::{
        self, INNER_ETH_OFF, IP_FLAG_MF, IPV4_VERSION, OUTER_IP_OFF, OUTER_UDP_END, OUTER_UDP_OFF,
        VXLAN_OFF, VxlanFrame, is_group_mac, ptr_at,
    },
    redirect, route,
    stats::Outcome,
    validate,
};

/// Classifies and handles one packet from the underlay.
///
/// Passes (never drops) anything that is not UDP to this VTEP on a VXLAN port, and the
/// VXLAN packets the kernel must handle (IP fragments, IP options). Drops VXLAN packets it
/// cannot deliver to a local container; returns `Ok(Decapsulated)` once one is redirected
/// into its container.
#[inline(always)]
pub fn try_from_underlay(ctx: &TcContext) -> Outcome {
    let Some(config) = config::get() else {
        return Ok(Reason::PassNotConfigured);
    };

    // Headers are normally linear up to L4 already; if the pull fails, whatever this is, it
    // is the kernel's to deal with.
    if parse::pull(ctx, OUTER_UDP_END).is_err() {
        return Ok(Reason::PassNotOverlay);
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Ok(Reason::PassNotOverlay);
    };
    // SAFETY: ptr_at bounds-checked the header.
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
        return Ok(Reason::PassNotOverlay);
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, OUTER_IP_OFF) else {
        return Ok(Reason::PassNotOverlay);
    };
    // SAFETY: ptr_at bounds-checked the header; the reference is dropped before any helper
    // that may move packet data.
    let ip = unsafe { &*ip };
    if ip.version() != IPV4_VERSION || ip.dst_addr != config.vtep || ip.proto != IpProto::Udp as u8
    {
        return Ok(Reason::PassNotOverlay);
    }
    // UDP to our VTEP: possibly ours. A fragment's UDP header (if any) says nothing about
    // the rest of the datagram, and reassembly is the kernel's job.
    if ip.frag_flags() & IP_FLAG_MF != 0 || ip.frag_offset() != 0 {
        return Ok(Reason::PassFragment);
    }
    // With options the UDP header is not where VxlanFrame expects it; such packets are
    // rare enough to leave to the kernel rather than parse a variable-length header.
    if usize::from(ip.ihl()) != Ipv4Hdr::LEN {
        return Ok(Reason::PassIpOptions);
    }
    // An unfragmented IPv4 packet that says UDP must carry a UDP header.
    let udp = ptr_at::<UdpHdr>(ctx, OUTER_UDP_OFF).ok_or(Reason::Malformed)?;
    // SAFETY: ptr_at bounds-checked the header.
    let udp = unsafe { &*udp };
    if !is_vxlan_port(config, u16::from_ne_bytes(udp.dst)) {
        return Ok(Reason::PassNotOverlay);
    }

    // VXLAN for us from here on: everything not delivered is dropped and counted. The
    // outer headers are copied before the pull below, which invalidates packet pointers.
    let outer = validate::Outer {
        src: ip.src_addr,
        tot_len: ip.tot_len(),
        udp_len: validate::udp_len(udp),
        // SAFETY: `ip` points at a bounds-checked header of exactly this size.
        header: unsafe { *(ip as *const Ipv4Hdr as *const [u8; Ipv4Hdr::LEN]) },
    };
    validate::outer_headers(ctx, &outer)?;
    parse::pull(ctx, size_of::<VxlanFrame>()).map_err(|_| Reason::PullFailed)?;
    let vxlan_hdr = ptr_at::<VxlanHdr>(ctx, VXLAN_OFF).ok_or(Reason::Malformed)?;
    // SAFETY: ptr_at bounds-checked the header.
    let vxlan_hdr = unsafe { &*vxlan_hdr };
    if vxlan_hdr.flags & vxlan::FLAG_VNI_VALID == 0 {
        return Err(Reason::VxlanBadFlags);
    }
    let vni = vxlan_hdr.vni();
    // SAFETY: the value is copied out at once; the agent replaces entries whole.
    let network = *unsafe { crate::OVL_NETWORKS.get(vni) }.ok_or(Reason::UnknownVni)?;
    validate::known_vtep(vni, &network, outer.src)?;
    validate::inner_size(ctx, &network)?;
    let inner_eth = ptr_at::<EthHdr>(ctx, INNER_ETH_OFF).ok_or(Reason::Malformed)?;
    // SAFETY: ptr_at bounds-checked the header.
    let (inner_dst, inner_type) = unsafe { ((*inner_eth).dst_addr, (*inner_eth).ether_type) };
    if is_group_mac(&inner_dst) {
        // Broadcast from another host: to every local endpoint of this VNI, nowhere else
        // (in particular never back out: the sender replicated it to every host).
        let targets = flood::targets(vni).ok_or(Reason::BroadcastUnsupported)?;
        if targets.n_ports == 0 {
            return Err(Reason::BroadcastUnsupported);
        }
        decap::decapsulate(ctx, config)?;
        flood::flood(ctx, targets, 0, false, Direction::FromUnderlay)?;
        return Ok(Reason::Flooded);
    }

    // SAFETY: the fields are copied out at once; the agent replaces entries whole.
    let Some(fdb) = (unsafe { crate::OVL_FDB.get(FdbKey::new(vni, inner_dst)) }) else {
        return Err(Reason::UnknownDestination);
    };
    let (kind, ifindex) = (fdb.kind, fdb.ifindex);
    match kind {
        FDB_LOCAL => {}
        // Routed to this host's router MAC (L3 network): delivered by inner IPv4
        // destination to a local container.
        FDB_ROUTER => {
            decap::decapsulate(ctx, config)?;
            return route::from_underlay(ctx, vni, inner_type, inner_dst);
        }
        // Never VXLAN to VXLAN: this host is not a relay.
        FDB_REMOTE => return Err(Reason::NotLocalDestination),
        _ => return Err(Reason::UnknownDestination),
    }

    decap::decapsulate(ctx, config)?;
    if inner_type == EtherType::Ipv4 as u16 {
        redirect::into_container(ctx, ifindex)?;
    } else {
        // skb->protocol still says IPv4 (the outer header's), and bpf_redirect_peer does
        // not re-parse the frame; the DECAP_L3_* flags that fix it exist only from 6.3.
        // The host veth's egress hands the frame to its peer through eth_type_trans,
        // which sets protocol (ARP from a plain Linux VTEP, IPv6) right.
        redirect::through_veth(ifindex)?;
    }
    Ok(Reason::Decapsulated)
}

/// Whether `port_be` (network order) is one of the VXLAN ports the agent configured.
#[inline(always)]
fn is_vxlan_port(config: &DatapathConfig, port_be: u16) -> bool {
    let n = config.n_udp_ports as usize;
    // A fixed-size array with a constant bound: the loop is unrolled (or bounded for the
    // verifier) whatever n_udp_ports says.
    config
        .udp_ports_be
        .iter()
        .take(n)
        .any(|&port| port == port_be)
}
