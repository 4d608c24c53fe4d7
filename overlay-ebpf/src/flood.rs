//! Broadcast and multicast (BUM) replication within one network, head-end: no
//! multicast underlay, never another VNI.
//!
//! `OVL_FLOOD[vni]` lists the network's local endpoints (their host-side veths) and
//! its kernel VXLAN device. Copies go out with `bpf_clone_redirect` to every target but
//! the last, and the original frame is redirected to the last one, so a flood always
//! ends in a redirect and is counted once, as forwarded. The VXLAN device, when it is a
//! target, goes last: its all-zero-MAC FDB entries (one per remote VTEP, kept by the
//! agent) make the kernel send one encapsulated copy to every other host.

use aya_ebpf::{helpers::generated::bpf_clone_redirect, programs::TcContext};
use overlay_common::{Direction, FloodValue, Reason, limits::MAX_FLOOD_PORTS};

use crate::{redirect, stats};

/// The network's flood list, if this host serves `vni`.
#[inline(always)]
pub fn targets(vni: u32) -> Option<&'static FloodValue> {
    // SAFETY: map values live as long as the map; the agent replaces entries whole.
    unsafe { crate::OVL_FLOOD.get(vni) }
}

/// Floods the frame to every local endpoint of the network except the one behind
/// `skip` (the sender's veth; 0 for none) and, with `remote`, to the network's VXLAN
/// device. Local copies leave through the egress of each host-side veth, so the veth
/// runs `eth_type_trans` and the container sees a proper broadcast.
///
/// `Err(BroadcastUnsupported)` when there is nowhere to send it. A copy that cannot be
/// sent is counted under `flood-copy-failed` of `dir` (the frame itself is counted
/// once, by the caller's verdict).
#[inline(always)]
pub fn flood(ctx: &TcContext, f: &FloodValue, skip: u32, remote: bool, dir: Direction) -> Result<(), Reason> {
    let n = f.n_ports as usize;
    // The previous target, sent as a clone once the next one is known.
    let mut pending: u32 = 0;
    // A constant bound keeps the verifier's walk finite (bounded loops, 5.3+).
    for i in 0..MAX_FLOOD_PORTS {
        if i >= n {
            break;
        }
        let Some(&ifindex) = f.ifindex.get(i) else { break };
        if ifindex == 0 || ifindex == skip {
            continue;
        }
        if pending != 0 {
            clone_to(ctx, pending, dir);
        }
        pending = ifindex;
    }
    let last = if remote && f.vxlan_ifindex != 0 {
        if pending != 0 {
            clone_to(ctx, pending, dir);
        }
        f.vxlan_ifindex
    } else {
        pending
    };
    if last == 0 {
        return Err(Reason::BroadcastUnsupported);
    }
    redirect::through_veth(last)
}

/// `NET_XMIT_DROP` (include/linux/netdevice.h).
const NET_XMIT_DROP: i64 = 1;

/// One copy out of `ifindex`'s egress. A failed copy (the veth vanished between the
/// agent's update and now) only loses that copy, counted: the others still go out.
#[inline(always)]
fn clone_to(ctx: &TcContext, ifindex: u32, dir: Direction) {
    // SAFETY: a helper call on our own skb; it invalidates packet pointers, and none
    // are held across it.
    let ret = unsafe { bpf_clone_redirect(ctx.skb.skb, ifindex, 0) };
    // Negative: the copy was never sent; NET_XMIT_DROP (1): the device dropped it.
    // NET_XMIT_CN (2) only reports congestion: the copy went out.
    if ret < 0 || ret == NET_XMIT_DROP {
        stats::count(dir, Reason::FloodCopyFailed, ctx.len());
    }
}
