//! VXLAN decapsulation: turns a VXLAN packet for a local container back into the inner
//! frame, ready for `redirect::into_container`.

use aya_ebpf::{
    bindings::{BPF_CSUM_LEVEL_DEC, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::generated::bpf_csum_level,
    programs::TcContext,
};
use overlay_common::{DatapathConfig, FEATURE_CSUM_LEVEL, Reason, vxlan};

use crate::parse::{VxlanFrame, ptr_at};

/// Strips the outer Ethernet/IPv4/UDP/VXLAN headers. The caller has validated them and
/// made the whole [`VxlanFrame`] linear. On failure the frame is left half-rewritten and
/// must be dropped with the returned reason.
#[inline(always)]
pub fn decapsulate(ctx: &TcContext, config: &DatapathConfig) -> Result<(), Reason> {
    // adjust_room(-50, BPF_ADJ_ROOM_MAC) removes the 50 bytes *after* the MAC header
    // (`bpf_skb_net_shrink` at offset `skb_mac_header_len`, net/core/filter.c), i.e. the
    // outer IP/UDP/VXLAN headers and the inner Ethernet header, and keeps the outer one.
    // So the inner Ethernet header is copied over the outer one first. These 14 bytes are
    // in front of the network header and outside any CHECKSUM_COMPLETE sum; the helper
    // itself subtracts the removed bytes from skb->csum.
    let frame = ptr_at::<VxlanFrame>(ctx, 0).ok_or(Reason::Malformed)?;
    // SAFETY: ptr_at checked the whole frame is inside the linear data; the two headers do
    // not overlap.
    unsafe { (*frame).eth = (*frame).inner_eth };

    // The agent's flags carry FIXED_GSO: without it the helper would grow gso_size by 50 on
    // a GRO aggregate and TCP segmentation would later drop it (calico#11160); and
    // NO_CSUM_RESET when csum_level is available, so a verified checksum survives.
    ctx.adjust_room(
        -(vxlan::OVERHEAD as i32),
        BPF_ADJ_ROOM_MAC,
        config.decap_flags,
    )
    .map_err(|_| Reason::AdjustRoomFailed)?;

    if config.features & FEATURE_CSUM_LEVEL != 0 {
        // CHECKSUM_UNNECESSARY with csum_level N vouches for N+1 checksums counted from
        // the outside; one level (the outer UDP) is gone now. BPF_CSUM_LEVEL_DEC always
        // returns 0 (`bpf_csum_level`, net/core/filter.c), so there is nothing to check.
        // SAFETY: a plain helper call on our own skb.
        unsafe { bpf_csum_level(ctx.skb.skb, u64::from(BPF_CSUM_LEVEL_DEC)) };
    }
    Ok(())
}
