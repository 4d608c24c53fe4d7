//! VXLAN encapsulation (RFC 7348) of a container's frame for a remote VTEP.

use core::{mem::offset_of, slice};

use aya_ebpf::{
    bindings::{BPF_F_RECOMPUTE_CSUM, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::generated::{bpf_get_hash_recalc, bpf_skb_store_bytes},
    programs::TcContext,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{IpProto, Ipv4Hdr},
    udp::UdpHdr,
    vxlan::VxlanHdr,
};
use overlay_common::{DatapathConfig, FdbValue, Reason, vxlan};

use crate::parse::{
    IP_FLAG_DF, IPV4_IHL_NO_OPTIONS, IPV4_VERSION, OUTER_IP_OFF, OUTER_UDP_OFF, VxlanFrame,
};

/// Outer TTL, the kernel's default `ip_default_ttl` (and what the vxlan driver uses when
/// no TTL is configured).
const OUTER_TTL: u8 = 64;

/// Wraps the frame in outer Ethernet/IPv4/UDP/VXLAN headers addressed from this host's VTEP
/// to `remote.vtep`, for network `vni`. `inner` is a copy of the frame's Ethernet header.
///
/// On success the skb is ready for `redirect::to_underlay` (the outer MACs are zero: the
/// neighbour lookup fills them in). On failure the frame may be half-built and must be
/// dropped with the returned reason.
#[inline(always)]
pub fn encapsulate(
    ctx: &TcContext,
    config: &DatapathConfig,
    vni: u32,
    remote: &FdbValue,
    inner: &EthHdr,
) -> Result<(), Reason> {
    // Hash the inner flow now, before the outer headers exist, so the source port gives
    // ECMP the same entropy the kernel's vxlan driver gives it.
    // SAFETY: a plain helper call on our own skb.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let src_port = flow_src_port(
        if hash != 0 { hash } else { mac_hash(inner) },
        config.src_port_min,
        config.src_port_max,
    );

    // Insert 50 bytes after the MAC header: [old Ethernet][50 zero bytes][inner L3...]. The
    // flags (probed by the agent) always carry FIXED_GSO, so a GSO super-packet keeps its
    // gso_size (the container MTU already leaves room for the headers) and is segmented as
    // a UDP tunnel packet later; ENCAP_L3_IPV4|ENCAP_L4_UDP|ENCAP_L2(14) set the inner
    // header offsets (`bpf_skb_net_grow`, net/core/filter.c).
    ctx.adjust_room(vxlan::OVERHEAD as i32, BPF_ADJ_ROOM_MAC, config.encap_flags)
        .map_err(|_| Reason::AdjustRoomFailed)?;

    // skb->len now includes the outer headers. A GSO super-packet can exceed what the
    // 16-bit length fields hold only with BIG TCP, whose convention is a zero tot_len
    // (`iph_set_totlen`); segmentation writes the real lengths into every segment anyway
    // (`inet_gso_segment`, `__skb_udp_tunnel_segment`).
    let len = ctx.len() as usize;
    let ip_len = u16::try_from(len.saturating_sub(OUTER_IP_OFF)).unwrap_or(0);
    let udp_len = u16::try_from(len.saturating_sub(OUTER_UDP_OFF)).unwrap_or(0);

    let mut ip = Ipv4Hdr {
        vihl: (IPV4_VERSION << 4) | IPV4_IHL_NO_OPTIONS,
        tos: 0,
        tot_len: ip_len.to_be_bytes(),
        id: [0; 2],
        // DF: the outer packet must never be fragmented (the container MTU is lowered
        // instead), and with DF set a zero IP ID is fine (RFC 6864).
        frags: (u16::from(IP_FLAG_DF) << 13).to_be_bytes(),
        ttl: OUTER_TTL,
        proto: IpProto::Udp as u8,
        check: [0; 2],
        src_addr: config.vtep,
        dst_addr: remote.vtep,
    };
    ip.check = ipv4_checksum(&ip);

    let vni_be = vni.to_be_bytes();
    let mut frame = VxlanFrame {
        // The MACs are zeroed below; bpf_redirect_neigh fills them in.
        eth: EthHdr {
            dst_addr: inner.dst_addr,
            src_addr: inner.src_addr,
            ether_type: EtherType::Ipv4 as u16,
        },
        ip,
        udp: UdpHdr {
            src: src_port.to_be_bytes(),
            dst: remote.udp_port_be.to_ne_bytes(),
            len: udp_len.to_be_bytes(),
            // Zero (no checksum, allowed for IPv4 by RFC 7348 section 5): the helper never
            // sets SKB_GSO_UDP_TUNNEL_CSUM, so a non-zero checksum would be wrong on every
            // segment. Cilium and Calico do the same.
            check: [0; 2],
        },
        // Spelled out rather than VxlanHdr::with_flags, whose `[0; 3]` becomes a memset
        // call (see clear_macs).
        vxlan: VxlanHdr {
            flags: vxlan::FLAG_VNI_VALID,
            _reserved1: [0, 0, 0],
            vni: [vni_be[1], vni_be[2], vni_be[3]],
            _reserved2: 0,
        },
        inner_eth: *inner,
    };

    clear_macs(&mut frame.eth);

    // SAFETY: VxlanFrame is repr(C) with no padding (asserted in parse.rs), so all of its
    // bytes are initialised.
    let bytes =
        unsafe { slice::from_raw_parts((&raw const frame).cast::<u8>(), size_of::<VxlanFrame>()) };
    // Two stores because of CHECKSUM_COMPLETE: skb->csum covers the packet from the
    // network header on, and the bytes adjust_room inserted there were zeros, which left
    // the sum valid (`bpf_skb_generic_push`). Overwriting them changes it, so the bytes
    // from the outer IP header on are stored with BPF_F_RECOMPUTE_CSUM (a no-op unless the
    // skb is CHECKSUM_COMPLETE). The outer MAC header is outside the sum and is stored
    // without it.
    store(ctx, 0, &bytes[..OUTER_IP_OFF], 0)?;
    store(
        ctx,
        OUTER_IP_OFF,
        &bytes[OUTER_IP_OFF..],
        u64::from(BPF_F_RECOMPUTE_CSUM),
    )?;
    Ok(())
}

/// Zeroes both MAC addresses of `eth` with one 8-byte and one 4-byte store.
///
/// Spelled out because zero-filled arrays (`[0; 6]`) become `memset`, which the BPF backend
/// leaves as a call to a BPF-to-BPF `memset` subprogram: bpf-linker passes
/// `--bpf-expand-memcpy-in-order`, which disables LLVM's inline expansion of memset
/// (`BPFTargetLowering`, llvm/lib/Target/BPF/BPFISelLowering.cpp). Two stores are also too
/// few for LLVM to merge them back into a memset (`MemsetRange::isProfitableToUseMemset`).
#[inline(always)]
fn clear_macs(eth: &mut EthHdr) {
    const MACS_LEN: usize = offset_of!(EthHdr, ether_type);
    const _: () = assert!(MACS_LEN == size_of::<u64>() + size_of::<u32>());
    let macs = (&raw mut *eth).cast::<u8>();
    // SAFETY: the first 12 bytes of an EthHdr are its two MAC addresses (asserted above).
    unsafe {
        macs.cast::<u64>().write_unaligned(0);
        macs.add(size_of::<u64>()).cast::<u32>().write_unaligned(0);
    }
}

/// `bpf_skb_store_bytes`, which also makes the skb writable and works on any layout, so
/// no packet pointer has to be re-derived after `adjust_room`.
#[inline(always)]
fn store(ctx: &TcContext, offset: usize, bytes: &[u8], flags: u64) -> Result<(), Reason> {
    // SAFETY: `bytes` is a live stack buffer of `bytes.len()` bytes.
    let ret = unsafe {
        bpf_skb_store_bytes(
            ctx.skb.skb.cast(),
            offset as u32,
            bytes.as_ptr().cast(),
            bytes.len() as u32,
            flags,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(Reason::StoreFailed)
    }
}

/// The IPv4 header checksum (RFC 791, RFC 1071): the ones' complement of the ones'
/// complement sum of the header's 16-bit words, computed with `check` zero.
#[inline(always)]
fn ipv4_checksum(ip: &Ipv4Hdr) -> [u8; 2] {
    // SAFETY: Ipv4Hdr is repr(C), made only of bytes and byte arrays: 20 initialised bytes.
    let bytes = unsafe { &*(&raw const *ip).cast::<[u8; Ipv4Hdr::LEN]>() };
    (!crate::parse::ipv4_header_sum(bytes)).to_be_bytes()
}

/// The outer UDP source port for a flow hash, as the kernel's `udp_flow_src_port`
/// (include/net/udp.h) computes it: the hash is folded so its low bits also feed the
/// result, then scaled into the range, here the inclusive [min, max] the agent configured.
/// An unset or inverted range falls back to RFC 7348's recommendation (the dynamic ports),
/// as the kernel falls back to the local port range.
#[inline(always)]
pub fn flow_src_port(hash: u32, min: u16, max: u16) -> u16 {
    let (min, max) = if min == 0 || min > max {
        (vxlan::SRC_PORT_MIN, vxlan::SRC_PORT_MAX)
    } else {
        (min, max)
    };
    let hash = hash ^ (hash << 16);
    let range = u64::from(max - min) + 1;
    // hash < 2^32, so the scaled value is < range and the sum is <= max.
    (((u64::from(hash) * range) >> 32) + u64::from(min)) as u16
}

/// Fallback flow hash from the MAC addresses when the kernel could not dissect the frame
/// (`bpf_get_hash_recalc` returned 0), like `udp_flow_src_port`'s `jhash` over the two
/// MACs, with a cheaper mix (multiplicative hashing with the golden ratio constant).
#[inline(always)]
fn mac_hash(eth: &EthHdr) -> u32 {
    let d = eth.dst_addr;
    let s = eth.src_addr;
    let a = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]);
    let b = u32::from_ne_bytes([d[4], d[5], s[0], s[1]]);
    let c = u32::from_ne_bytes([s[2], s[3], s[4], s[5]]);
    (a ^ b.rotate_left(11) ^ c.rotate_left(22)).wrapping_mul(0x9e37_79b9)
}
