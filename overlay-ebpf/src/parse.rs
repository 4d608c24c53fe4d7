//! Header layouts, their offsets, and the one bounds-checked packet accessor.
//!
//! Offsets are relative to the start of the frame (the MAC header): at TC ingress the
//! kernel pushes the MAC header back before running the program (`sch_handle_ingress` in
//! net/core/dev.c for tcx, `cls_bpf_classify` in net/sched/cls_bpf.c for clsact), so
//! `data` points at it at both of our attach points.

use core::mem::{offset_of, size_of};

use aya_ebpf::programs::TcContext;
use network_types::{arp::ArpHdr, eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr, vxlan::VxlanHdr};
use overlay_common::vxlan;

/// An ARP frame as it appears on the wire (RFC 826, Ethernet/IPv4).
#[repr(C)]
pub struct ArpFrame {
    pub eth: EthHdr,
    pub arp: ArpHdr,
}

/// The front of a VXLAN-in-IPv4 frame (RFC 7348 section 5): outer headers without IP
/// options, then the inner Ethernet header.
#[repr(C)]
pub struct VxlanFrame {
    pub eth: EthHdr,
    pub ip: Ipv4Hdr,
    pub udp: UdpHdr,
    pub vxlan: VxlanHdr,
    pub inner_eth: EthHdr,
}

pub const OUTER_IP_OFF: usize = offset_of!(VxlanFrame, ip);
pub const OUTER_UDP_OFF: usize = offset_of!(VxlanFrame, udp);
pub const VXLAN_OFF: usize = offset_of!(VxlanFrame, vxlan);
pub const INNER_ETH_OFF: usize = offset_of!(VxlanFrame, inner_eth);
/// Bytes to reach the end of the outer UDP header, enough to tell whether a packet is ours.
pub const OUTER_UDP_END: usize = VXLAN_OFF;

// The layout must be exactly the wire format: no padding anywhere, and the encapsulation
// overhead the agent subtracts from the container MTU is the distance to the inner frame.
const _: () = assert!(INNER_ETH_OFF == vxlan::OVERHEAD as usize);
const _: () = assert!(size_of::<VxlanFrame>() == INNER_ETH_OFF + EthHdr::LEN);
const _: () = assert!(size_of::<ArpFrame>() == EthHdr::LEN + ArpHdr::LEN);

/// IPv4 `version` field.
pub const IPV4_VERSION: u8 = 4;
/// IPv4 header length in 32-bit words when there are no options.
pub const IPV4_IHL_NO_OPTIONS: u8 = (Ipv4Hdr::LEN / 4) as u8;
/// The three IPv4 flag bits as `Ipv4Hdr::frag_flags` returns them (RFC 791 section 3.1).
pub const IP_FLAG_DF: u8 = 0b010;
pub const IP_FLAG_MF: u8 = 0b001;

/// The folded ones' complement sum of an IPv4 header's ten 16-bit words (RFC 1071): the
/// checksum to write is its complement (computed with the checksum field zero), and a
/// header with a correct checksum sums to all ones.
#[inline(always)]
pub fn ipv4_header_sum(bytes: &[u8; Ipv4Hdr::LEN]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < Ipv4Hdr::LEN {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    // Ten 16-bit words sum to less than 2^20: two folds bring the carries back in.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// True for broadcast and multicast MACs: the I/G bit, the least significant bit of the
/// first octet (IEEE 802, `is_multicast_ether_addr` in include/linux/etherdevice.h).
#[inline(always)]
pub fn is_group_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 0x01 != 0
}

/// A pointer to a `T` at `offset` bytes from the start of the frame, or `None` if the
/// directly accessible (linear) data ends first.
///
/// The verifier only allows a packet access that a comparison against `data_end` has
/// proved in bounds (`check_packet_access`, kernel/bpf/verifier.c), and it forgets every
/// packet pointer after a helper that may move the data (`bpf_helper_changes_pkt_data`,
/// net/core/filter.c: `adjust_room`, `pull_data`, `store_bytes`, ...). So callers take a
/// fresh pointer after any such helper instead of keeping an old one.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// `bpf_skb_pull_data` failed (out of memory): the headers could not be made accessible.
pub struct PullFailed;

/// Makes the first `want` bytes of the frame (or the whole frame, if shorter) directly
/// accessible, pulling them out of the paged fragments only when they are not already.
///
/// Direct packet access only reaches the linear part of the skb. Drivers that receive
/// into pages pull only the headers the flow dissector knows about (`eth_get_headlen`),
/// which for a VXLAN packet ends at the outer UDP header, so the VXLAN and inner Ethernet
/// headers may be paged (Cilium's `revalidate_data_pull` exists for the same reason).
/// Pulling costs a copy, so callers ask only for what the next step needs.
#[inline(always)]
pub fn pull(ctx: &TcContext, want: usize) -> Result<(), PullFailed> {
    let len = want.min(ctx.len() as usize);
    if ctx.data() + len <= ctx.data_end() {
        return Ok(());
    }
    ctx.pull_data(len as u32).map_err(|_| PullFailed)
}
