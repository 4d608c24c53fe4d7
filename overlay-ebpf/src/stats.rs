//! Counting: every packet a program sees is counted exactly once, under one
//! (direction, reason), and the reason alone decides the TC action.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    programs::TcContext,
};
use overlay_common::{Direction, Reason, reason::ReasonKind, stats_index};

/// What a `try_*` function decided about a packet.
///
/// `Ok` carries a forwarded reason (a redirect helper accepted the packet and returned
/// `TC_ACT_REDIRECT`) or a passed one (the kernel stack gets the packet unchanged); `Err`
/// carries a drop reason. Only [`account`] turns it into an action, so no path can count a
/// packet twice or return an action that disagrees with its counter.
pub type Outcome = Result<Reason, Reason>;

/// Counts one packet of `bytes` bytes under (`dir`, the outcome's reason) and returns the
/// TC action for it: `TC_ACT_REDIRECT` for forwarded (the redirect helper has already
/// recorded the target in the per-CPU redirect info; returning anything else would cancel
/// it, see `skb_do_redirect` callers in net/core/dev.c), `TC_ACT_OK` for passed,
/// `TC_ACT_SHOT` for dropped.
#[inline(always)]
pub fn account(ctx: &TcContext, dir: Direction, outcome: Outcome, bytes: u32) -> i32 {
    let reason = match outcome {
        Ok(reason) | Err(reason) => reason,
    };
    count(dir, reason, bytes);
    crate::trace::record(ctx, dir, reason);
    // The upgrade-test variant (a test-only build, see Cargo.toml) differs from the
    // normal programs by this extra count, which a test reads to see which build runs.
    #[cfg(feature = "upgrade-test-variant")]
    count(dir, Reason::UpgradeTestMarker, bytes);
    match reason.kind() {
        ReasonKind::Forwarded => TC_ACT_REDIRECT,
        ReasonKind::Passed => TC_ACT_OK,
        ReasonKind::Dropped => TC_ACT_SHOT,
    }
}

/// Adds one packet of `bytes` bytes to the counter of (`dir`, `reason`). Outside
/// [`account`] only for events that are not a packet's verdict (a lost flood copy).
#[inline(always)]
pub fn count(dir: Direction, reason: Reason, bytes: u32) {
    if let Some(counter) = crate::OVL_STATS.get_ptr_mut(stats_index(dir, reason)) {
        // SAFETY: a per-CPU array slot is only ever touched by this CPU, and TC programs
        // run with preemption (migration) disabled, so the read-modify-write is not torn.
        unsafe {
            (*counter).packets = (*counter).packets.wrapping_add(1);
            (*counter).bytes = (*counter).bytes.wrapping_add(u64::from(bytes));
        }
    }
}
