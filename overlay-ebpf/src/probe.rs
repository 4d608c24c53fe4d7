//! The `adjust_room` feature probe. `bpf_skb_adjust_room` validates its flags at call time,
//! not at load time (5.10 loads a program using `ENCAP_L2_ETH`, then fails every call
//! with -EINVAL), so the agent runs this program with `BPF_PROG_TEST_RUN` on a crafted
//! packet for each flag set it wants to use and reads the helper's verdict back.

use aya_ebpf::{
    bindings::{BPF_CSUM_LEVEL_QUERY, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::generated::{bpf_csum_level, bpf_skb_adjust_room},
    programs::TcContext,
};

/// Calls `bpf_skb_adjust_room(len_diff, BPF_ADJ_ROOM_MAC, flags)` with the arguments in
/// `OVL_PROBE[0]` and stores its return value in `ret`; when `csum_level == 1`, also stores
/// `bpf_csum_level(BPF_CSUM_LEVEL_QUERY)` (the checksum level after the call, or a negative
/// errno) in `csum_ret`.
#[inline(always)]
pub fn try_probe_adjust_room(ctx: &TcContext) {
    let Some(args) = crate::OVL_PROBE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: `args` points at the map value; the agent does not run the probe twice at
    // once. The helpers operate on our own skb.
    unsafe {
        let ret = bpf_skb_adjust_room(
            ctx.skb.skb,
            (*args).len_diff,
            BPF_ADJ_ROOM_MAC,
            (*args).flags,
        );
        (*args).ret = ret;
        if (*args).csum_level == 1 {
            (*args).csum_ret = bpf_csum_level(ctx.skb.skb, u64::from(BPF_CSUM_LEVEL_QUERY));
        }
    }
}
