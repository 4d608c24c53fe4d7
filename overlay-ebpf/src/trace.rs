//! The live trace (`overlay-agent trace`): verdicts copied into `OVL_TRACE`, a ring
//! buffer the CLI reads, with the frame's first bytes. Off unless someone watches: the
//! agent sets `DatapathConfig::trace` only while a trace session is open, and with it at
//! 0 a packet costs one more read of the config word, which the program has just read.
//! A full ring buffer loses events, never packets.

use aya_ebpf::{
    helpers::generated::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use overlay_common::{Direction, Reason, TRACE_ALL, TRACE_HEAD, TraceEvent, reason::ReasonKind};

/// Records the verdict `reason` the program of `dir` took, if tracing asks for it, with
/// the frame as the program left it.
#[inline(always)]
pub fn record(ctx: &TcContext, dir: Direction, reason: Reason) {
    let Some(config) = crate::config::get() else { return };
    if config.trace == 0 {
        return;
    }
    if config.trace & TRACE_ALL == 0 && reason.kind() != ReasonKind::Dropped {
        return;
    }
    // SAFETY: reading a field of the context the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if config.trace_ifindex != 0 && dir == Direction::FromContainer && ifindex != config.trace_ifindex {
        return;
    }
    let Some(mut entry) = crate::OVL_TRACE.reserve::<TraceEvent>(0) else { return };
    const _: () = assert!(TRACE_HEAD.is_power_of_two());
    let event = entry.as_mut_ptr();
    let bytes = ctx.len();
    // The copy's length must be provably in 1..=TRACE_HEAD in the very register passed
    // to the helper (ARG_CONST_SIZE). A bounds check on another register does not do:
    // before 5.11 the verifier does not carry what a branch learnt to the copies of a
    // register, and before 6.8 a `!= 0` test does not raise a lower bound. Plain
    // arithmetic does, on every kernel: min(len, 128) - 1 masked to 0..=127, plus 1. It
    // equals min(len, 128) for every real frame (len >= 14).
    let head_len = ((u64::from(bytes).min(TRACE_HEAD as u64).wrapping_sub(1)) & (TRACE_HEAD as u64 - 1)) + 1;
    // SAFETY: `event` points at the reserved entry, which is ours until submitted; every
    // field but `head` is written here, `head` by the helper (and only read up to head_len).
    unsafe {
        (*event).ts_ns = bpf_ktime_get_ns();
        (*event).ifindex = ifindex;
        (*event).len = bytes;
        (*event).direction = dir as u32;
        (*event).reason = reason as u32;
        (*event)._pad = [0; 4];
        let ret = bpf_skb_load_bytes(ctx.skb.skb as *const _, 0, (*event).head.as_mut_ptr().cast(), head_len as u32);
        (*event).head_len = if ret == 0 { head_len as u32 } else { 0 };
    }
    entry.submit(0);
}
