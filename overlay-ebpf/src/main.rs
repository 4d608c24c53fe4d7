//! TC programs of the VXLAN overlay datapath.
//!
//! This file holds only the maps, the entry points and the panic handler. Each entry point
//! runs a `try_*` function that returns an [`stats::Outcome`] and hands it to
//! [`stats::account`], the one place that counts a packet and turns its reason into a TC
//! action. The modules, by concern:
//! - [`container`]: what a container sends (ARP, local delivery, encapsulation),
//! - [`underlay`]: what arrives on the underlay (recognising our VXLAN packets),
//! - [`arp`], [`encap`], [`decap`], [`redirect`]: the packet operations,
//! - [`parse`]: header layouts and the bounds-checked packet access,
//! - [`probe`]: the `adjust_room` feature probe the agent runs at start-up.
#![no_std]
#![no_main]

mod arp;
mod config;
mod container;
mod decap;
mod encap;
mod flood;
mod parse;
mod probe;
mod redirect;
mod route;
mod stats;
mod trace;
mod underlay;
mod validate;

use aya_ebpf::{
    bindings::TC_ACT_OK,
    macros::{classifier, map},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf},
    programs::TcContext,
};
use overlay_common::{
    DatapathConfig, Direction, EndpointValue, FdbKey, FdbValue, FloodValue, NeighKey, NeighValue, NetworkValue,
    ProbeArgs, RouteKey, RouteValue, STATS_ENTRIES, StatsValue, VtepKey, limits, maps, programs,
};

// Maps. No pinning flag: the agent pins them itself under its own bpffs directory. The
// statics' names are the kernel map names, checked against overlay-common below.

/// Which MAC answers ARP for an IP in a network.
#[map]
static OVL_NEIGH: HashMap<NeighKey, NeighValue> = HashMap::with_max_entries(limits::MAX_NEIGH, 0);

/// Where frames for a MAC in a network go: a local veth or a remote VTEP.
#[map]
static OVL_FDB: HashMap<FdbKey, FdbValue> = HashMap::with_max_entries(limits::MAX_FDB, 0);

/// Local containers, keyed by the ifindex of their host-side veth.
#[map]
static OVL_ENDPOINTS: HashMap<u32, EndpointValue> =
    HashMap::with_max_entries(limits::MAX_LOCAL_ENDPOINTS, 0);

/// Networks this host serves, keyed by VNI.
#[map]
static OVL_NETWORKS: HashMap<u32, NetworkValue> =
    HashMap::with_max_entries(limits::MAX_NETWORKS, 0);

/// Broadcast/multicast replication per network, keyed by VNI (see `flood`).
#[map]
static OVL_FLOOD: HashMap<u32, FloodValue> = HashMap::with_max_entries(limits::MAX_NETWORKS, 0);

/// Node subnets of L3 networks on other hosts, by (VNI, prefix): see `route`.
#[map]
static OVL_ROUTES: LpmTrie<RouteKey, RouteValue> = LpmTrie::with_max_entries(limits::MAX_ROUTES, 0);

/// (VNI, VTEP) pairs VXLAN is accepted from (see `validate`).
#[map]
static OVL_VTEPS: HashMap<VtepKey, u32> = HashMap::with_max_entries(limits::MAX_VTEPS, 0);

/// Traced verdicts for `overlay-agent trace` (see `trace`).
#[map]
static OVL_TRACE: RingBuf = RingBuf::with_byte_size(limits::TRACE_BYTES, 0);

/// Host-wide settings, index 0 only.
#[map]
static OVL_CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);

/// Per-CPU {packets, bytes} per (direction, reason), index `overlay_common::stats_index`.
#[map]
static OVL_STATS: PerCpuArray<StatsValue> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);

/// Arguments and results of the `adjust_room` probe, index 0 only.
#[map]
static OVL_PROBE: Array<ProbeArgs> = Array::with_max_entries(1, 0);

/// TC ingress of a container's host-side veth: every frame the container sends.
#[classifier]
pub fn ovl_from_container(ctx: TcContext) -> i32 {
    let bytes = ctx.len();
    stats::account(
        &ctx,
        Direction::FromContainer,
        container::try_from_container(&ctx),
        bytes,
    )
}

/// TC ingress of the underlay interface: VXLAN packets from other hosts, and everything
/// else, which goes on to the kernel stack untouched.
#[classifier]
pub fn ovl_from_underlay(ctx: TcContext) -> i32 {
    let bytes = ctx.len();
    stats::account(
        &ctx,
        Direction::FromUnderlay,
        underlay::try_from_underlay(&ctx),
        bytes,
    )
}

/// Never attached: run with `BPF_PROG_TEST_RUN` to learn which `adjust_room` flags the
/// running kernel accepts. Always returns `TC_ACT_OK`; the results are in `OVL_PROBE`.
#[classifier]
pub fn ovl_probe_adjust_room(ctx: TcContext) -> i32 {
    probe::try_probe_adjust_room(&ctx);
    TC_ACT_OK
}

/// Fails the build if a map or program symbol drifts from the name the agent looks up.
macro_rules! assert_named {
    ($($symbol:ident = $name:expr;)*) => {
        $(const _: () = assert!(
            const_str_eq(stringify!($symbol), $name),
            concat!(stringify!($symbol), " is not the name overlay-common gives it"),
        );)*
    };
}

const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

assert_named! {
    OVL_NEIGH = maps::NEIGH;
    OVL_FDB = maps::FDB;
    OVL_FLOOD = maps::FLOOD;
    OVL_ROUTES = maps::ROUTES;
    OVL_VTEPS = maps::VTEPS;
    OVL_TRACE = maps::TRACE;
    OVL_ENDPOINTS = maps::ENDPOINTS;
    OVL_NETWORKS = maps::NETWORKS;
    OVL_CONFIG = maps::CONFIG;
    OVL_STATS = maps::STATS;
    OVL_PROBE = maps::PROBE;
    ovl_from_container = programs::FROM_CONTAINER;
    ovl_from_underlay = programs::FROM_UNDERLAY;
    ovl_probe_adjust_room = programs::PROBE_ADJUST_ROOM;
}

/// eBPF has no unwinding and the programs never panic (no unwrap, no indexing the compiler
/// cannot prove in bounds); the verifier would reject a program that reached this loop.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// `bpf_redirect_peer`, `bpf_redirect_neigh`, `bpf_csum_level` and friends are GPL-only
/// helpers: the verifier refuses them to programs without a GPL-compatible license
/// (`check_helper_call`, kernel/bpf/verifier.c).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
