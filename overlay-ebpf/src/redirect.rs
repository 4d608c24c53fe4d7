//! The three ways a packet leaves the datapath. Each returns `Ok` only when the helper
//! accepted the redirect (returned `TC_ACT_REDIRECT`); the helpers return `TC_ACT_SHOT`
//! for bad flags and the redirect itself can still fail later in `skb_do_redirect`
//! (net/core/filter.c), e.g. when the target is down, which the kernel counts as a drop
//! on the device.

use core::ptr;

use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::generated::{bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use overlay_common::Reason;

/// `PACKET_HOST` from include/uapi/linux/if_packet.h: "to us".
const PACKET_HOST: u32 = 0;

#[inline(always)]
fn accepted(ret: i64) -> Result<(), Reason> {
    if ret == i64::from(TC_ACT_REDIRECT) {
        Ok(())
    } else {
        Err(Reason::RedirectFailed)
    }
}

/// Into the container behind the host-side veth `ifindex`: `bpf_redirect_peer` (5.10)
/// moves the skb from this TC ingress straight to the ingress of the veth's peer in the
/// container's namespace, without a backlog pass.
///
/// The skb keeps the `pkt_type` it got on the device it arrived on (`eth_type_trans` is
/// not run again on the peer), and that was `PACKET_OTHERHOST`, as the frame's MAC was not
/// the device's own; `ip_rcv_core` drops such packets. So mark it `PACKET_HOST` first, as
/// Cilium does before `ctx_redirect_peer`.
#[inline(always)]
pub fn into_container(ctx: &TcContext, ifindex: u32) -> Result<(), Reason> {
    mark_for_host(ctx)?;
    // SAFETY: a plain helper call; it only records the target in per-CPU redirect info.
    accepted(unsafe { bpf_redirect_peer(ifindex, 0) })
}

/// Marks the skb `PACKET_HOST` (addressed to the device it is on), which `ip_rcv_core`
/// needs to accept it: a frame to a MAC other than the device's own was marked
/// `PACKET_OTHERHOST` on arrival. For a frame redirected into a container (see
/// [`into_container`]) and for one the host's stack routes on (see `route`).
#[inline(always)]
pub fn mark_for_host(ctx: &TcContext) -> Result<(), Reason> {
    // Fails only if the current pkt_type is above PACKET_OTHERHOST (loopback, kernel
    // internal), which no frame reaching these hooks has.
    ctx.change_type(PACKET_HOST).map_err(|_| Reason::RedirectFailed)
}

/// Out of the underlay interface `ifindex` (`bpf_redirect_neigh`, 5.10): the kernel looks
/// up the route to the outer destination and fills in the Ethernet addresses from its
/// neighbour table, resolving the next hop if needed, so no MAC is ever hard-coded and a
/// routed underlay works too. No parameters: the next hop comes from the FIB.
#[inline(always)]
pub fn to_underlay(ifindex: u32) -> Result<(), Reason> {
    // SAFETY: a NULL `params` with length 0 is the documented "look up the FIB" form.
    accepted(unsafe { bpf_redirect_neigh(ifindex, ptr::null_mut(), 0, 0) })
}

/// Into the container behind the host-side veth `ifindex` through the veth itself: the
/// egress of the host side is the container's ingress, and the veth runs
/// `eth_type_trans` on the way. Used for ARP replies (back to the sender) and for
/// decapsulated frames whose protocol must be re-derived, and broadcast copies; also
/// hands frames to a VXLAN device's transmit path. (`BPF_F_INGRESS` would hand the
/// frame to the host instead.)
#[inline(always)]
pub fn through_veth(ifindex: u32) -> Result<(), Reason> {
    // SAFETY: a plain helper call; it only records the target in per-CPU redirect info.
    accepted(unsafe { bpf_redirect(ifindex, 0) })
}
