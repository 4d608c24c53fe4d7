//! What the underlay program checks before it decapsulates anything. TC ingress runs
//! before `ip_rcv` (net/ipv4/ip_input.c), so none of the kernel's own IPv4 checks have
//! happened yet: a packet with a wrong header checksum or a length that lies would be
//! decapsulated as if it were sound. And any host that can reach the VTEP's address could
//! otherwise inject frames into a network: only the VTEPs the store knows for it are
//! accepted (`OVL_VTEPS`), unless the network says otherwise.

use aya_ebpf::programs::TcContext;
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr};
use overlay_common::{NETWORK_ANY_VTEP, NetworkValue, Reason, VtepKey, vxlan};

/// The outer headers' fields the checks need, copied out of the packet.
pub struct Outer {
    pub src: [u8; 4],
    pub tot_len: u16,
    pub udp_len: u16,
    pub header: [u8; Ipv4Hdr::LEN],
}

/// Checks the outer IPv4 header (checksum; total length and UDP length against the
/// packet's length) of a VXLAN packet to this VTEP. Version, IHL (no options), protocol
/// and fragments are already checked by the caller.
#[inline(always)]
pub fn outer_headers(ctx: &TcContext, outer: &Outer) -> Result<(), Reason> {
    if !checksum_ok(&outer.header) {
        return Err(Reason::OuterBadChecksum);
    }
    let ip_len = ctx.len().saturating_sub(EthHdr::LEN as u32);
    // SAFETY: reading a field of the context the kernel passed in (`gso_size`: 5.7+). Not
    // `gso_segs`, which is 0 for a GSO packet whose sender left the count to the kernel
    // (SKB_GSO_DODGY, e.g. from virtio-net or a tap).
    let gso = unsafe { (*ctx.skb.skb).gso_size } != 0;
    // A GRO aggregate larger than 64 KiB (BIG TCP, `gro_ipv4_max_size`) has total length
    // 0 and its real length in the skb (`iph_set_totlen`, include/net/ip.h); anything
    // else, aggregated or not, says its length exactly (`inet_gro_complete` and
    // `udp_gro_complete` rewrite both fields). A VXLAN frame is at least 64 bytes, more
    // than Ethernet's minimum, so there is no legitimate padding behind it either.
    if outer.tot_len == 0 && gso {
        return Ok(());
    }
    if u32::from(outer.tot_len) != ip_len
        || u32::from(outer.udp_len) != ip_len.saturating_sub(Ipv4Hdr::LEN as u32)
    {
        return Err(Reason::OuterBadLength);
    }
    Ok(())
}

/// Whether the VTEP `outer.src` may send VXLAN of `vni` (`network` is its entry).
#[inline(always)]
pub fn known_vtep(vni: u32, network: &NetworkValue, src: [u8; 4]) -> Result<(), Reason> {
    if network.flags & NETWORK_ANY_VTEP != 0 {
        return Ok(());
    }
    // SAFETY: only tested for presence.
    if unsafe { crate::OVL_VTEPS.get(VtepKey { vni, ip: src }) }.is_none() {
        return Err(Reason::UnknownVtep);
    }
    Ok(())
}

/// Whether the inner frame fits the network's MTU. A frame the container's veth would
/// refuse (`is_skb_forwardable`: MTU plus Ethernet and VLAN headers, unless it is a GSO
/// aggregate the stack segments later) is counted here instead of vanishing uncounted.
/// One too short to hold an IPv4 header (or ARP, which is longer) is malformed: it could
/// carry nothing the overlay delivers, and `bpf_skb_adjust_room` would refuse to shrink
/// the packet to it anyway.
#[inline(always)]
pub fn inner_size(ctx: &TcContext, network: &NetworkValue) -> Result<(), Reason> {
    // SAFETY: reading a field of the context the kernel passed in (see outer_headers).
    let gso = unsafe { (*ctx.skb.skb).gso_size } != 0;
    let inner = ctx.len().saturating_sub(vxlan::OVERHEAD);
    if inner < (EthHdr::LEN + Ipv4Hdr::LEN) as u32 {
        return Err(Reason::Malformed);
    }
    if !gso && inner > u32::from(network.mtu) + EthHdr::LEN as u32 + VLAN_HLEN {
        return Err(Reason::Oversized);
    }
    Ok(())
}

/// `VLAN_HLEN` (include/linux/if_vlan.h).
const VLAN_HLEN: u32 = 4;

/// The RFC 1071 check: the ones' complement sum of the header's 16-bit words, checksum
/// field included, is all ones.
#[inline(always)]
fn checksum_ok(header: &[u8; Ipv4Hdr::LEN]) -> bool {
    crate::parse::ipv4_header_sum(header) == 0xffff
}

/// UDP length of the outer header, for [`Outer`].
#[inline(always)]
pub fn udp_len(udp: &UdpHdr) -> u16 {
    u16::from_be_bytes(udp.len)
}
