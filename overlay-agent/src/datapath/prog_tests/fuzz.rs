//! Fuzzing both programs with `BPF_PROG_TEST_RUN`: `FRAMES` frames each through
//! `ovl_from_container` and `ovl_from_underlay`, every verdict checked against a reference
//! model written here in plain Rust, which follows the programs' checks in their order.
//!
//! Frames. About one in seven is random bytes of a random length (up to 1,600 bytes; half
//! of them at most 100, where the header boundaries are). The rest are templates under up
//! to four mutations. Container side: ARP requests and a reply, IPv4 to a remote, a local
//! and an unknown MAC and to an FDB entry of an unknown kind, broadcast, IPv6 multicast,
//! spoofed source IP and MAC, IPv6 and another protocol to a remote MAC, frames to the
//! router MAC (remote subnet, local container, gateway, outside, no route, blocked, TTL 1).
//! Underlay side: VXLAN the container program encapsulated (IPv4, IPv6 and routed inner
//! frames, full MTU), and edits of it: other and unknown VTEPs, other and unknown VNIs, no
//! I flag, fragments, IP options, TCP, another port, another VTEP's address, inner
//! broadcast, inner ARP, a remote or unknown inner MAC, an inner frame too short for an
//! IPv4 header, ARP on the underlay. Mutations: bit flips, random bytes, header fields
//! overwritten with boundary values or the addresses the maps hold, truncation or extension
//! to boundary or random lengths, random tails. On the underlay side, half of the mutated
//! frames get their outer lengths and checksum fixed again and a quarter their checksum, so
//! that the mutation reaches the checks behind those. Frames shorter than an Ethernet header
//! are sent too: `BPF_PROG_TEST_RUN` must refuse them (`EINVAL`); newer kernels (6.18 here)
//! also refuse IPv4 and IPv6 frames shorter than their network header, older ones run them
//! (see `refusal`). Refused frames must not be counted, and are not among the `FRAMES`.
//!
//! Maps. Host 1 of the other prog tests as the router of an L3 network (route.rs's routes),
//! with a second local container C, an FDB entry of a kind no program knows, and a second
//! network (VNI 43: any VTEP, MTU 1500, container X); for the underlay test it then becomes
//! host 2 (B and a container routed to are local, VTEP 3 is known too). Every `PHASE`
//! frames one variant of the maps is installed (each once, then half of the phases as set
//! up): unconfigured datapath, unregistered veth, no or degenerate flood lists, any VTEP
//! accepted. The model reads the maps back after each change (`World`), never during a run.
//!
//! Checks, for every frame: the action is the model's, and `TC_ACT_REDIRECT` (delivered)
//! only where the model delivers; the counter of the model's reason moved by one; passed
//! frames come back unchanged, delivered ones as predicted (the ARP reply, the outer headers
//! byte for byte but the source port, which only has to be in range, the decapsulated
//! frame, a routed frame's rewrite). Every `CHECKPOINT` frames and at the end, every counter
//! of both directions equals the model's tally, so nothing was counted twice or under another
//! reason in between (reading all 70 counters after each frame would make the test ten times
//! slower), and at the end the counters grew by exactly the number of frames run.
//!
//! Replay: `OVERLAY_FUZZ_SEED=<n>` (decimal or 0x-hex) sets the seed; a failure prints it,
//! the iteration, the maps' variant, how the frame was made and the frame in hex.
//!
//! Out of scope. What `BPF_PROG_TEST_RUN` cannot produce: its skbs are linear (no pull
//! fails) and not GSO (no BIG TCP zero total length, no GSO exemption from the MTU check),
//! and the redirect and store helpers do not fail for the arguments the programs pass, so
//! the model never predicts pull-failed, redirect-failed or store-failed. Flood copies go to
//! ifindexes no device has, so none leaves (`bpf_clone_redirect` fails, the program counts
//! each lost copy under flood-copy-failed and goes on, which the model predicts): which
//! copies were made is observed in flood.rs, here only the verdict and the count. Since
//! containers may send IPv4 and ARP only and inner frames too short for an IPv4 header
//! are malformed, `bpf_skb_adjust_room` never fails in these runs (it refuses other
//! protocols and shorter remainders; the first fuzzing found frames counted
//! adjust-room-failed, and IPv6 and 802.1Q frames that carried spoofed sources past the
//! IPv4 check: both fixed in the programs).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    time::Instant,
};

use aya::{
    maps::lpm_trie::Key,
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions},
};
use overlay_common::{
    DatapathConfig, Direction, EndpointValue, FDB_LOCAL, FDB_REMOTE, FDB_ROUTER, FdbKey, FdbValue, FloodValue,
    NETWORK_ANY_VTEP, NeighKey, NeighValue, NetworkValue, ROUTE_BLOCKED, ROUTE_HOST, ROUTE_REMOTE, Reason, RouteKey,
    RouteValue, VtepKey, programs, reason::ReasonKind, vxlan,
};

use super::{
    IP_A, IP_B, LO, MAC_A, MAC_B, Progs, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, VNI, VTEP_1, VTEP_2, arp_request,
    flood_list, frame_a_to_b, local, network, remote,
};
use crate::datapath::probe::ipv4_checksum;

/// Frames each program runs (the too-short ones the kernel refuses come on top).
const FRAMES: u64 = 100_000;
/// Frames per variant of the maps.
const PHASE: u64 = 1_000;
/// Frames between two comparisons of every counter with the model's tally.
const CHECKPOINT: u64 = 100;
/// "ovl_fuzz" in ASCII.
const DEFAULT_SEED: u64 = 0x6f76_6c5f_6675_7a7a;
/// The longest random frame and random length, and the limit of "short" random frames.
const MAX_LEN: usize = 1_600;
const SHORT_LEN: usize = 100;

/// Where the headers end: Ethernet, IPv4 without options, ARP, outer UDP, VXLAN, and the
/// inner Ethernet header of a VXLAN frame.
const ETH_END: usize = 14;
const IP_END: usize = 34;
const ARP_END: usize = 42;
const UDP_END: usize = 42;
const VXLAN_END: usize = vxlan::OVERHEAD as usize;
const INNER_ETH_END: usize = VXLAN_END + ETH_END;

const ETH_IPV4: [u8; 2] = [0x08, 0x00];
const ETH_ARP: [u8; 2] = [0x08, 0x06];
const ETH_IPV6: [u8; 2] = [0x86, 0xdd];

/// C: a second container on host 1, behind ifindex 7 (the veths need not exist:
/// `BPF_PROG_TEST_RUN` only records a redirect's target).
const MAC_C: [u8; 6] = [0x02, 0x42, 10, 0, 10, 12];
const IP_C: [u8; 4] = [10, 0, 10, 12];
const MAC_UNKNOWN: [u8; 6] = [0x02, 0x42, 10, 0, 10, 99];
/// An FDB entry whose kind no program knows (a newer agent's, say).
const MAC_ODD: [u8; 6] = [0x02, 0x42, 10, 0, 10, 77];
const FDB_UNKNOWN_KIND: u32 = 9;
/// X: a container of another network (VNI 43) on this host.
const OTHER_VNI: u32 = 43;
const MAC_X: [u8; 6] = [0x02, 0x42, 10, 0, 10, 13];
const IP_X: [u8; 4] = [10, 0, 10, 13];
/// Routing, as in route.rs: the two hosts' router MACs, the gateway, a container in host 2's
/// node subnet, an address outside the network, one in no node subnet.
const ROUTER_1: [u8; 6] = [0x0e, 1, 1, 1, 1, 1];
const ROUTER_2: [u8; 6] = [0x0e, 2, 2, 2, 2, 2];
const GATEWAY: [u8; 4] = [10, 0, 10, 1];
const FAR: [u8; 4] = [10, 0, 20, 5];
const FAR_MAC: [u8; 6] = [0x02, 0x42, 10, 0, 20, 5];
const OUTSIDE: [u8; 4] = [203, 0, 113, 9];
const UNROUTED: [u8; 4] = [10, 0, 30, 5];
const VTEP_3: [u8; 4] = [198, 51, 100, 3];
const VTEP_UNKNOWN: [u8; 4] = [198, 51, 100, 99];
/// Ifindexes no device has: a flood copy to one fails (so nothing really leaves the test),
/// a redirect to one is only recorded.
const NO_DEV: [u32; 3] = [0x7fff_ff01, 0x7fff_ff02, 0x7fff_ff03];

/// Values worth writing into header fields: what the maps know, and boundaries.
const MACS: [[u8; 6]; 13] = [
    MAC_A, MAC_B, MAC_C, MAC_X, MAC_UNKNOWN, MAC_ODD, ROUTER_1, ROUTER_2, FAR_MAC,
    [0xff; 6], [0x01, 0x00, 0x5e, 0, 0, 1], [0x33, 0x33, 0, 0, 0, 1], [0; 6],
];
const IPS: [[u8; 4]; 14] =
    [IP_A, IP_B, IP_C, IP_X, GATEWAY, FAR, OUTSIDE, UNROUTED, VTEP_1, VTEP_2, VTEP_3, VTEP_UNKNOWN, [0; 4], [255; 4]];
const ETHER_TYPES: [u16; 9] = [0x0800, 0x0806, 0x86dd, 0x8100, 0x88b5, 0x0600, 0x05ff, 0, 0xffff];
const BYTES: [u8; 18] = [0, 1, 2, 4, 5, 6, 8, 0x0f, 0x11, 0x20, 0x40, 0x44, 0x45, 0x46, 0x4f, 0x7f, 0x80, 0xff];
const WORDS: [u16; 12] = [0, 1, 2, 0x00ff, 0x0100, 0x1fff, 0x2000, 0x4000, 0x7fff, 0x8000, 0xfffe, 0xffff];
const PORTS: [u16; 6] = [4789, 4790, 8472, 53, 0, 0xffff];
const VNIS: [u32; 5] = [VNI, OTHER_VNI, 0, 99, vxlan::MAX_VNI];

/// What a header field holds, for the values `value` draws.
#[derive(Clone, Copy)]
enum Kind {
    Mac,
    Ip,
    EtherType,
    Byte,
    Word,
    Port,
    Vni,
}

/// The fields the container program reads: Ethernet; IPv4 version/IHL, TTL, addresses;
/// ARP hardware and protocol types, lengths, operation, sender and target addresses.
const CONTAINER_FIELDS: &[(usize, Kind)] = &[
    (0, Kind::Mac), (6, Kind::Mac), (12, Kind::EtherType),
    (14, Kind::Byte), (22, Kind::Byte), (26, Kind::Ip), (30, Kind::Ip),
    (14, Kind::Word), (16, Kind::EtherType), (18, Kind::Byte), (19, Kind::Byte), (20, Kind::Word),
    (22, Kind::Mac), (28, Kind::Ip), (32, Kind::Mac), (38, Kind::Ip),
];

/// The fields the underlay program reads: outer Ethernet type; IPv4 version/IHL, total
/// length, flags and fragment offset, TTL, protocol, checksum, addresses; UDP ports and
/// length; VXLAN flags and VNI; inner Ethernet, IPv4 version/IHL, TTL and destination.
const UNDERLAY_FIELDS: &[(usize, Kind)] = &[
    (12, Kind::EtherType),
    (14, Kind::Byte), (16, Kind::Word), (20, Kind::Word), (22, Kind::Byte), (23, Kind::Byte), (24, Kind::Word),
    (26, Kind::Ip), (30, Kind::Ip),
    (34, Kind::Port), (36, Kind::Port), (38, Kind::Word),
    (42, Kind::Byte), (46, Kind::Vni),
    (50, Kind::Mac), (56, Kind::Mac), (62, Kind::EtherType), (64, Kind::Byte), (72, Kind::Byte), (80, Kind::Ip),
];

/// Lengths where the container program's checks change their mind: the Ethernet, IPv4 and
/// ARP ends, Ethernet's minimum.
const CONTAINER_LENGTHS: &[usize] = &[14, 15, 33, 34, 35, 41, 42, 43, 60];
/// The underlay's: IPv4, UDP, VXLAN and inner Ethernet ends, the shortest inner frame
/// `adjust_room` leaves, and the MTU limits of both networks (1450 and 1500, plus Ethernet,
/// VLAN and VXLAN headers).
const UNDERLAY_LENGTHS: &[usize] = &[14, 33, 34, 41, 42, 49, 50, 63, 64, 83, 84, 85, 1518, 1519, 1568, 1569];

/// The reasons the model gives in these setups: the fuzzing must reach every one, or the
/// frames it makes do not exercise what they should.
const CONTAINER_REASONS: &[Reason] = &[
    Reason::PassNotConfigured, Reason::UnknownEndpoint, Reason::SourceMacMismatch, Reason::Malformed,
    Reason::ArpNotRequest, Reason::SourceIpMismatch, Reason::ArpOwnAddress, Reason::ArpUnknownTarget,
    Reason::ArpReplied, Reason::BroadcastUnsupported, Reason::Flooded, Reason::UnknownDestination,
    Reason::LocalDelivered, Reason::Encapsulated, Reason::UnsupportedProtocol, Reason::RouteNotIpv4,
    Reason::TtlExceeded, Reason::Routed, Reason::NoRoute, Reason::PassToHost,
];
const UNDERLAY_REASONS: &[Reason] = &[
    Reason::PassNotConfigured, Reason::PassNotOverlay, Reason::PassFragment, Reason::PassIpOptions,
    Reason::Malformed, Reason::OuterBadChecksum, Reason::OuterBadLength, Reason::VxlanBadFlags,
    Reason::UnknownVni, Reason::UnknownVtep, Reason::Oversized, Reason::BroadcastUnsupported,
    Reason::Flooded, Reason::UnknownDestination, Reason::NotLocalDestination, Reason::Decapsulated,
    Reason::RouteNotIpv4, Reason::TtlExceeded, Reason::NoRoute,
];

#[test]
fn container_program_agrees_with_the_model_on_fuzzed_frames() {
    let mut p = host1();
    let target = Target {
        prog: programs::FROM_CONTAINER,
        dir: Direction::FromContainer,
        model: container_model,
        templates: container_templates(),
        fields: CONTAINER_FIELDS,
        lengths: CONTAINER_LENGTHS,
        refix_outer: false,
        variants: CONTAINER_VARIANTS,
        restore: restore_host1,
        reachable: CONTAINER_REASONS,
    };
    Fuzzer::new(&mut p, &target).run();
}

#[test]
fn underlay_program_agrees_with_the_model_on_fuzzed_frames() {
    let mut p = host1();
    let templates = underlay_templates(&p);
    become_host2(&mut p);
    let target = Target {
        prog: programs::FROM_UNDERLAY,
        dir: Direction::FromUnderlay,
        model: underlay_model,
        templates,
        fields: UNDERLAY_FIELDS,
        lengths: UNDERLAY_LENGTHS,
        refix_outer: true,
        variants: UNDERLAY_VARIANTS,
        restore: restore_host2,
        reachable: UNDERLAY_REASONS,
    };
    Fuzzer::new(&mut p, &target).run();
}

// --- The maps -------------------------------------------------------------------------

/// Host 1 of the other prog tests as the router of an L3 network 10.0.0.0/16 (route.rs's
/// routes), with C local behind ifindex 7, an FDB entry of an unknown kind, and network 43
/// (any VTEP, MTU 1500) with X behind ifindex 9.
fn host1() -> Progs {
    let mut p = Progs::host1();
    let entries = [
        (VNI, ROUTER_1, router()),
        (VNI, MAC_C, local(7)),
        (VNI, MAC_ODD, FdbValue { kind: FDB_UNKNOWN_KIND, ..local(7) }),
        (OTHER_VNI, MAC_X, local(9)),
    ];
    for (vni, mac, value) in entries {
        p.fdb.insert(FdbKey::new(vni, mac), value, 0).unwrap();
    }
    for (vni, ip, mac) in [(VNI, GATEWAY, ROUTER_1), (VNI, IP_C, MAC_C), (OTHER_VNI, IP_X, MAC_X)] {
        p.neigh.insert(NeighKey { vni, ip }, NeighValue { mac, _pad: [0; 2] }, 0).unwrap();
    }
    let other = NetworkValue { mtu: 1500, flags: NETWORK_ANY_VTEP, ..network(0) };
    p.networks.insert(OTHER_VNI, other, 0).unwrap();
    route(&mut p, [0; 4], 0, policy(ROUTE_HOST));
    route(&mut p, [10, 0, 0, 0], 16, policy(ROUTE_BLOCKED));
    route(&mut p, GATEWAY, 32, policy(ROUTE_HOST));
    let far = RouteValue { kind: ROUTE_REMOTE, vtep: VTEP_2, mac: ROUTER_2, udp_port_be: 4789u16.to_be() };
    route(&mut p, [10, 0, 20, 0], 24, far);
    restore_host1(&mut p);
    p
}

/// Host 2 receiving from host 1: B (ifindex 7) and FAR (8) are local, A and C remote behind
/// VTEP 1, ROUTER_2 is this host's router, VTEP 3 is known too.
fn become_host2(p: &mut Progs) {
    p.fdb.remove(&FdbKey::new(VNI, ROUTER_1)).unwrap();
    let local_here = [(MAC_B, local(7)), (FAR_MAC, local(8)), (ROUTER_2, router())];
    for (mac, value) in local_here.into_iter().chain([(MAC_A, remote(VTEP_1)), (MAC_C, remote(VTEP_1))]) {
        p.fdb.insert(FdbKey::new(VNI, mac), value, 0).unwrap();
    }
    p.neigh.insert(NeighKey { vni: VNI, ip: FAR }, NeighValue { mac: FAR_MAC, _pad: [0; 2] }, 0).unwrap();
    p.vteps.insert(VtepKey { vni: VNI, ip: VTEP_3 }, 1, 0).unwrap();
    restore_host2(p);
}

/// What the container variants change, as set up: host 1's configuration, A's endpoint, the
/// flood list (A's own veth, skipped, and a VXLAN device that does not exist).
fn restore_host1(p: &mut Progs) {
    p.configure(VTEP_1);
    let a = EndpointValue { vni: VNI, ip: IP_A, mac: MAC_A, _pad: [0; 2] };
    p.endpoints.insert(LO, a, 0).unwrap();
    p.flood.insert(VNI, flood_list(NO_DEV[0], &[LO, NO_DEV[1]]), 0).unwrap();
}

/// What the underlay variants change, as set up: host 2's configuration, network 42 (known
/// VTEPs only), its flood list (no VXLAN device: never used from the underlay).
fn restore_host2(p: &mut Progs) {
    p.configure(VTEP_2);
    p.networks.insert(VNI, network(0), 0).unwrap();
    p.flood.insert(VNI, flood_list(0, &[NO_DEV[1], NO_DEV[2]]), 0).unwrap();
}

fn router() -> FdbValue {
    FdbValue { kind: FDB_ROUTER, ifindex: 0, vtep: [0; 4], udp_port_be: 0, _pad: [0; 2] }
}

fn route(p: &mut Progs, ip: [u8; 4], len: u32, value: RouteValue) {
    let key = Key::new(RouteKey::VNI_BITS + len, RouteKey { vni_be: VNI.to_be_bytes(), ip });
    p.routes.insert(&key, value, 0).unwrap();
}

fn policy(kind: u32) -> RouteValue {
    RouteValue { kind, vtep: [0; 4], mac: [0; 6], udp_port_be: 0 }
}

/// A change to the maps, applied to the state `Target::restore` brings back.
#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    apply: fn(&mut Progs),
}

const CONTAINER_VARIANTS: &[Variant] = &[
    Variant { name: "as set up", apply: |_| {} },
    Variant { name: "not configured", apply: |p| p.config.set(0, DatapathConfig::zeroed(), 0).unwrap() },
    Variant { name: "veth not an endpoint", apply: |p| p.endpoints.remove(&LO).unwrap() },
    Variant { name: "no flood list", apply: |p| p.flood.remove(&VNI).unwrap() },
    Variant {
        name: "flood list: only the sender",
        apply: |p| p.flood.insert(VNI, flood_list(0, &[LO]), 0).unwrap(),
    },
    Variant {
        name: "flood list: local ports only",
        apply: |p| p.flood.insert(VNI, flood_list(0, &[0, LO, NO_DEV[1]]), 0).unwrap(),
    },
];

const UNDERLAY_VARIANTS: &[Variant] = &[
    Variant { name: "as set up", apply: |_| {} },
    Variant { name: "not configured", apply: |p| p.config.set(0, DatapathConfig::zeroed(), 0).unwrap() },
    Variant { name: "any VTEP accepted", apply: |p| p.networks.insert(VNI, network(NETWORK_ANY_VTEP), 0).unwrap() },
    Variant { name: "no flood list", apply: |p| p.flood.remove(&VNI).unwrap() },
    Variant {
        name: "flood list without ports",
        apply: |p| p.flood.insert(VNI, flood_list(NO_DEV[0], &[]), 0).unwrap(),
    },
    Variant {
        name: "flood list of empty slots",
        apply: |p| p.flood.insert(VNI, flood_list(0, &[0, 0, 0]), 0).unwrap(),
    },
    Variant {
        name: "flood list counting past its array",
        apply: |p| {
            let mut list = flood_list(0, &[]);
            list.n_ports = 1_000;
            list.ifindex[list.ifindex.len() - 1] = NO_DEV[2];
            p.flood.insert(VNI, list, 0).unwrap();
        },
    },
];

/// The maps as the programs see them, read back after each change: besides the frame,
/// all the model knows.
struct World {
    /// `None` when no VTEP address is configured (`config::get`).
    config: Option<DatapathConfig>,
    endpoints: BTreeMap<u32, EndpointValue>,
    networks: BTreeMap<u32, NetworkValue>,
    fdb: BTreeMap<FdbKey, FdbValue>,
    neigh: BTreeMap<NeighKey, [u8; 6]>,
    flood: BTreeMap<u32, FloodValue>,
    vteps: BTreeSet<VtepKey>,
    /// (prefix length counted from the VNI's first bit, key, value), as in the trie.
    routes: Vec<(u32, RouteKey, RouteValue)>,
}

impl World {
    fn read(p: &Progs) -> World {
        let config = p.config.get(&0, 0).unwrap();
        World {
            config: (config.vtep != [0; 4]).then_some(config),
            endpoints: p.endpoints.iter().map(Result::unwrap).collect(),
            networks: p.networks.iter().map(Result::unwrap).collect(),
            fdb: p.fdb.iter().map(Result::unwrap).collect(),
            neigh: p.neigh.iter().map(Result::unwrap).map(|(k, v)| (k, v.mac)).collect(),
            flood: p.flood.iter().map(Result::unwrap).collect(),
            vteps: p.vteps.keys().map(Result::unwrap).collect(),
            routes: p.routes.iter().map(Result::unwrap).map(|(k, v)| (k.prefix_len(), k.data(), v)).collect(),
        }
    }

    /// `route::local_endpoint`: the MAC of the local container that has `ip`.
    fn local_endpoint(&self, vni: u32, ip: [u8; 4]) -> Option<[u8; 6]> {
        let mac = *self.neigh.get(&NeighKey { vni, ip })?;
        (self.fdb.get(&FdbKey::new(vni, mac))?.kind == FDB_LOCAL).then_some(mac)
    }

    /// The longest prefix matching (`vni`, `ip`), as the LPM trie finds it.
    fn route(&self, vni: u32, ip: [u8; 4]) -> Option<RouteValue> {
        let bits = |k: &RouteKey| u64::from(u32::from_be_bytes(k.vni_be)) << 32 | u64::from(u32::from_be_bytes(k.ip));
        let want = bits(&RouteKey { vni_be: vni.to_be_bytes(), ip });
        self.routes
            .iter()
            .filter(|(len, key, _)| (bits(key) ^ want).checked_shr(64 - len).unwrap_or(0) == 0)
            .max_by_key(|(len, _, _)| *len)
            .map(|(_, _, value)| *value)
    }
}

// --- The model ------------------------------------------------------------------------

/// The model's verdict: the reason counted, and what the program hands back.
struct Prediction {
    reason: Reason,
    out: Out,
    /// Flood copies `bpf_clone_redirect` cannot send (to ifindexes no device has),
    /// each counted under `flood-copy-failed` besides the verdict.
    lost_copies: u64,
}

/// What the program hands back with the verdict.
enum Out {
    /// Dropped: possibly half rewritten, anything goes.
    Any,
    /// The frame as sent.
    Same,
    /// Exactly these bytes.
    Bytes(Vec<u8>),
    /// This frame (routed once) except the IPv4 checksum, which must be valid if the sent
    /// one was (it is updated incrementally).
    Routed { frame: Vec<u8>, sum_was_valid: bool },
    /// Encapsulated in VXLAN.
    Vxlan(Vxlan),
}

/// The outer headers an encapsulated frame must have, around `inner`.
struct Vxlan {
    src: [u8; 4],
    dst: [u8; 4],
    port_be: u16,
    vni: u32,
    inner: Box<Out>,
}

/// As the programs' `Outcome`: `Err` is a drop with that reason.
type Outcome = Result<Prediction, Reason>;

fn forwarded(reason: Reason, out: Out) -> Outcome {
    Ok(Prediction { reason, out, lost_copies: 0 })
}

fn passed(reason: Reason) -> Outcome {
    Ok(Prediction { reason, out: Out::Same, lost_copies: 0 })
}

fn settle(outcome: Outcome) -> Prediction {
    outcome.unwrap_or_else(|reason| Prediction { reason, out: Out::Any, lost_copies: 0 })
}

/// A flooded frame's verdict, with the copies that are lost: `flood::flood` clones to
/// every target but the last (the sender's veth `skip` and empty slots left out; with
/// `remote`, the VXLAN device goes last), and only `LO` exists in the test.
fn flooded(list: &FloodValue, skip: u32, remote: bool, out: Out) -> Outcome {
    let mut targets: Vec<u32> = flood_ports(list).filter(|&ifindex| ifindex != skip).collect();
    if remote && list.vxlan_ifindex != 0 {
        targets.push(list.vxlan_ifindex);
    }
    let clones = &targets[..targets.len().saturating_sub(1)];
    let lost_copies = clones.iter().filter(|&&ifindex| ifindex != LO).count() as u64;
    Ok(Prediction { reason: Reason::Flooded, out, lost_copies })
}

fn container_model(w: &World, f: &[u8]) -> Prediction {
    settle(from_container(w, f))
}

fn underlay_model(w: &World, f: &[u8]) -> Prediction {
    settle(from_underlay(w, f))
}

/// `container::try_from_container` on a frame of at least an Ethernet header.
fn from_container(w: &World, f: &[u8]) -> Outcome {
    let Some(config) = w.config else { return passed(Reason::PassNotConfigured) };
    let ep = *w.endpoints.get(&LO).ok_or(Reason::UnknownEndpoint)?;
    if mac_at(f, 6) != ep.mac {
        return Err(Reason::SourceMacMismatch);
    }
    match ether_type(f) {
        ETH_ARP => return arp_reply(w, &ep, f),
        ETH_IPV4 if f.len() < IP_END => return Err(Reason::Malformed),
        ETH_IPV4 if ip_at(f, 26) != ep.ip => return Err(Reason::SourceIpMismatch),
        ETH_IPV4 => {}
        // IPv6, 802.1Q and the rest: not carried (they would bypass the source check).
        _ => return Err(Reason::UnsupportedProtocol),
    }
    let dst = mac_at(f, 0);
    if is_group(dst) {
        return flood_from_container(w, ep.vni);
    }
    let fdb = *w.fdb.get(&FdbKey::new(ep.vni, dst)).ok_or(Reason::UnknownDestination)?;
    match fdb.kind {
        FDB_LOCAL => forwarded(Reason::LocalDelivered, Out::Same),
        FDB_REMOTE => {
            let (src, dst, port_be, vni) = (config.vtep, fdb.vtep, fdb.udp_port_be, ep.vni);
            encapsulated(Vxlan { src, dst, port_be, vni, inner: Box::new(Out::Same) })
        }
        FDB_ROUTER => route_from_container(w, &config, ep.vni, f),
        _ => Err(Reason::UnknownDestination),
    }
}

/// `arp::reply`: answered from the neighbour map, or dropped by the first check that fails.
fn arp_reply(w: &World, ep: &EndpointValue, f: &[u8]) -> Outcome {
    if f.len() < ARP_END {
        return Err(Reason::Malformed);
    }
    // Ethernet hardware, IPv4 protocol, their address lengths, a request.
    if f[14..22] != [0, 1, 0x08, 0x00, 6, 4, 0, 1] {
        return Err(Reason::ArpNotRequest);
    }
    let (sha, spa, tpa) = (mac_at(f, 22), ip_at(f, 28), ip_at(f, 38));
    if sha != ep.mac {
        return Err(Reason::SourceMacMismatch);
    }
    if spa != ep.ip && spa != [0; 4] {
        return Err(Reason::SourceIpMismatch);
    }
    if tpa == ep.ip {
        return Err(Reason::ArpOwnAddress);
    }
    let answer = *w.neigh.get(&NeighKey { vni: ep.vni, ip: tpa }).ok_or(Reason::ArpUnknownTarget)?;
    // To the requester from the answer, as an ARP reply from the answer's MAC and the asked
    // address to the requester's.
    let requester = mac_at(f, 6);
    let mut reply = f.to_vec();
    let fields: [(usize, &[u8]); 7] =
        [(0, &requester), (6, &answer), (20, &[0, 2]), (22, &answer), (28, &tpa), (32, &requester), (38, &spa)];
    for (at, bytes) in fields {
        reply[at..at + bytes.len()].copy_from_slice(bytes);
    }
    forwarded(Reason::ArpReplied, Out::Bytes(reply))
}

/// `flood::flood` from a container: to the network's VXLAN device or another local endpoint
/// than the sender, or dropped.
fn flood_from_container(w: &World, vni: u32) -> Outcome {
    let list = w.flood.get(&vni).ok_or(Reason::BroadcastUnsupported)?;
    if list.vxlan_ifindex == 0 && !flood_ports(list).any(|ifindex| ifindex != LO) {
        return Err(Reason::BroadcastUnsupported);
    }
    flooded(list, LO, true, Out::Same)
}

/// The ports of a flood list the program walks: `n_ports` of them, at most the array.
fn flood_ports(list: &FloodValue) -> impl Iterator<Item = u32> + '_ {
    list.ifindex.iter().take(list.n_ports as usize).copied().filter(|&ifindex| ifindex != 0)
}

/// `encap::encapsulate`: only IPv4 gets here (the protocol check came first), which
/// `bpf_skb_adjust_room` always takes.
fn encapsulated(v: Vxlan) -> Outcome {
    forwarded(Reason::Encapsulated, Out::Vxlan(v))
}

/// `route::from_container`, for a frame to this host's router MAC. The frame's IPv4 header
/// is there: the source check before made sure.
fn route_from_container(w: &World, config: &DatapathConfig, vni: u32, f: &[u8]) -> Outcome {
    if ether_type(f) != ETH_IPV4 {
        return Err(Reason::RouteNotIpv4);
    }
    router_checks(f)?;
    let (router_mac, dst) = (mac_at(f, 0), ip_at(f, 30));
    if let Some(mac) = w.local_endpoint(vni, dst) {
        return forwarded(Reason::Routed, routed(f, mac, router_mac));
    }
    let route = w.route(vni, dst).ok_or(Reason::NoRoute)?;
    match route.kind {
        ROUTE_HOST => passed(Reason::PassToHost),
        ROUTE_REMOTE => {
            let inner = Box::new(routed(f, route.mac, router_mac));
            encapsulated(Vxlan { src: config.vtep, dst: route.vtep, port_be: route.udp_port_be, vni, inner })
        }
        _ => Err(Reason::NoRoute),
    }
}

/// `route::checked_ip` on a frame with an IPv4 header: version 4, no shorter than its
/// fixed part, and a TTL that survives the hop (RFC 1812 5.3.1).
fn router_checks(f: &[u8]) -> Result<(), Reason> {
    let vihl = f[ETH_END];
    if vihl >> 4 != 4 || vihl & 0x0f < 5 {
        return Err(Reason::RouteNotIpv4);
    }
    if f[22] <= 1 {
        return Err(Reason::TtlExceeded);
    }
    Ok(())
}

/// `f` as a router forwards it to `dst_mac`: new MACs, TTL − 1.
fn routed(f: &[u8], dst_mac: [u8; 6], src_mac: [u8; 6]) -> Out {
    let mut frame = f.to_vec();
    frame[0..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    frame[22] -= 1;
    Out::Routed { frame, sum_was_valid: ipv4_checksum(&f[ETH_END..IP_END]) == 0 }
}

/// `underlay::try_from_underlay` up to "VXLAN for us": everything else is passed.
fn from_underlay(w: &World, f: &[u8]) -> Outcome {
    let Some(config) = w.config else { return passed(Reason::PassNotConfigured) };
    if f.len() < IP_END || ether_type(f) != ETH_IPV4 {
        return passed(Reason::PassNotOverlay);
    }
    if f[14] >> 4 != 4 || ip_at(f, 30) != config.vtep || f[23] != 17 {
        return passed(Reason::PassNotOverlay);
    }
    // MF, or a fragment offset.
    if be16(f, 20) & 0x3fff != 0 {
        return passed(Reason::PassFragment);
    }
    if f[14] & 0x0f != 5 {
        return passed(Reason::PassIpOptions);
    }
    if f.len() < UDP_END {
        return Err(Reason::Malformed);
    }
    let mut ports = config.udp_ports_be.iter().take(config.n_udp_ports as usize);
    if !ports.any(|&port| port == u16::from_ne_bytes([f[36], f[37]])) {
        return passed(Reason::PassNotOverlay);
    }
    vxlan_for_us(w, f)
}

/// The checks before decapsulation (`validate`), then delivery.
fn vxlan_for_us(w: &World, f: &[u8]) -> Outcome {
    if ipv4_checksum(&f[ETH_END..IP_END]) != 0 {
        return Err(Reason::OuterBadChecksum);
    }
    let ip_len = f.len() - ETH_END;
    if usize::from(be16(f, 16)) != ip_len || usize::from(be16(f, 38)) != ip_len - 20 {
        return Err(Reason::OuterBadLength);
    }
    if f.len() < VXLAN_END {
        return Err(Reason::Malformed);
    }
    if f[42] & vxlan::FLAG_VNI_VALID == 0 {
        return Err(Reason::VxlanBadFlags);
    }
    let vni = u32::from_be_bytes([0, f[46], f[47], f[48]]);
    let network = w.networks.get(&vni).ok_or(Reason::UnknownVni)?;
    if network.flags & NETWORK_ANY_VTEP == 0 && !w.vteps.contains(&VtepKey { vni, ip: ip_at(f, 26) }) {
        return Err(Reason::UnknownVtep);
    }
    // Too short for an IPv4 header or ARP behind the inner Ethernet header.
    if f.len() - VXLAN_END < IP_END {
        return Err(Reason::Malformed);
    }
    // MTU plus Ethernet and VLAN headers (`is_skb_forwardable`).
    if f.len() - VXLAN_END > usize::from(network.mtu) + ETH_END + 4 {
        return Err(Reason::Oversized);
    }
    deliver_inner(w, vni, &f[VXLAN_END..])
}

/// The inner frame of sound VXLAN of network `vni`: flooded, delivered, routed or dropped.
fn deliver_inner(w: &World, vni: u32, inner: &[u8]) -> Outcome {
    let dst = mac_at(inner, 0);
    if is_group(dst) {
        let list = w.flood.get(&vni).ok_or(Reason::BroadcastUnsupported)?;
        if list.n_ports == 0 {
            return Err(Reason::BroadcastUnsupported);
        }
        // Local endpoints only: never back out to the VXLAN device.
        if flood_ports(list).next().is_none() {
            return Err(Reason::BroadcastUnsupported);
        }
        return flooded(list, 0, false, Out::Bytes(inner.to_vec()));
    }
    let fdb = w.fdb.get(&FdbKey::new(vni, dst)).ok_or(Reason::UnknownDestination)?;
    match fdb.kind {
        FDB_LOCAL => {
                forwarded(Reason::Decapsulated, Out::Bytes(inner.to_vec()))
        }
        FDB_ROUTER => {
                route_from_underlay(w, vni, inner)
        }
        FDB_REMOTE => Err(Reason::NotLocalDestination),
        _ => Err(Reason::UnknownDestination),
    }
}

/// `route::from_underlay`, on the decapsulated frame to this host's router MAC.
fn route_from_underlay(w: &World, vni: u32, inner: &[u8]) -> Outcome {
    if ether_type(inner) != ETH_IPV4 {
        return Err(Reason::RouteNotIpv4);
    }
    router_checks(inner)?;
    let mac = w.local_endpoint(vni, ip_at(inner, 30)).ok_or(Reason::NoRoute)?;
    forwarded(Reason::Decapsulated, routed(inner, mac, mac_at(inner, 0)))
}

/// The action `stats::account` returns for a reason.
fn action(reason: Reason) -> u32 {
    match reason.kind() {
        ReasonKind::Forwarded => TC_ACT_REDIRECT,
        ReasonKind::Passed => TC_ACT_OK,
        ReasonKind::Dropped => TC_ACT_SHOT,
    }
}

fn ether_type(f: &[u8]) -> [u8; 2] {
    [f[12], f[13]]
}

fn mac_at(f: &[u8], at: usize) -> [u8; 6] {
    f[at..at + 6].try_into().unwrap()
}

fn ip_at(f: &[u8], at: usize) -> [u8; 4] {
    f[at..at + 4].try_into().unwrap()
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// Broadcast or multicast: the I/G bit.
fn is_group(mac: [u8; 6]) -> bool {
    mac[0] & 1 != 0
}

// --- What comes back ------------------------------------------------------------------

/// Whether `got` is what `want` says the program hands back for `sent`.
fn check_out(want: &Out, sent: &[u8], got: &[u8]) -> Result<(), String> {
    match want {
        Out::Any => Ok(()),
        Out::Same => expect_bytes("the frame", sent, got),
        Out::Bytes(bytes) => expect_bytes("the frame", bytes, got),
        Out::Routed { frame, sum_was_valid } => check_routed(frame, *sum_was_valid, got),
        Out::Vxlan(v) => {
            check_outer(v, got)?;
            check_out(&v.inner, sent, &got[VXLAN_END..])
        }
    }
}

fn expect_bytes(what: &str, want: &[u8], got: &[u8]) -> Result<(), String> {
    if want == got {
        return Ok(());
    }
    Err(format!("{what} came back as\n    {}\n  expected\n    {}", hex(got), hex(want)))
}

fn check_routed(want: &[u8], sum_was_valid: bool, got: &[u8]) -> Result<(), String> {
    // Everything but the IPv4 header checksum (bytes 24 and 25).
    let same_but_checksum = got.len() == want.len() && got[..24] == want[..24] && got[26..] == want[26..];
    if !same_but_checksum {
        let (got, want) = (hex(got), hex(want));
        return Err(format!("the routed frame came back as\n    {got}\n  expected, checksum aside,\n    {want}"));
    }
    if sum_was_valid && ipv4_checksum(&got[ETH_END..IP_END]) != 0 {
        return Err(format!("the routed frame's IPv4 checksum is wrong: {}", hex(got)));
    }
    Ok(())
}

fn check_outer(v: &Vxlan, got: &[u8]) -> Result<(), String> {
    if got.len() < INNER_ETH_END {
        return Err(format!("encapsulated frame of {} bytes: {}", got.len(), hex(got)));
    }
    let sport = be16(got, 34);
    if !(vxlan::SRC_PORT_MIN..=vxlan::SRC_PORT_MAX).contains(&sport) {
        return Err(format!("outer source port {sport} out of range"));
    }
    expect_bytes("the outer headers", &outer_headers(v, got.len(), sport), &got[..VXLAN_END])
}

/// RFC 7348's outer headers for a frame of `len` bytes in all: MACs zero (the neighbour
/// lookup fills them in), IPv4 without options with DF and TTL 64, UDP checksum zero, the
/// I flag and the VNI.
fn outer_headers(v: &Vxlan, len: usize, sport: u16) -> Vec<u8> {
    let ip_len = (len - ETH_END) as u16;
    let mut h = vec![0u8; 12];
    h.extend(ETH_IPV4);
    h.extend([0x45, 0]);
    h.extend(ip_len.to_be_bytes());
    h.extend([0, 0, 0x40, 0, 64, 17, 0, 0]);
    h.extend(v.src);
    h.extend(v.dst);
    fix_ip_checksum(&mut h, ETH_END);
    h.extend(sport.to_be_bytes());
    h.extend(v.port_be.to_ne_bytes());
    h.extend((ip_len - 20).to_be_bytes());
    h.extend([0, 0, vxlan::FLAG_VNI_VALID, 0, 0, 0]);
    h.extend(&v.vni.to_be_bytes()[1..]);
    h.push(0);
    h
}

// --- Frames ---------------------------------------------------------------------------

struct Template {
    name: &'static str,
    frame: Vec<u8>,
}

fn template(name: &'static str, frame: Vec<u8>) -> Template {
    Template { name, frame }
}

/// frame_a_to_b's UDP packet from A, to `ip` at `mac`.
fn a_to(mac: [u8; 6], ip: [u8; 4]) -> Vec<u8> {
    let mut f = frame_a_to_b(64);
    f[0..6].copy_from_slice(&mac);
    f[30..34].copy_from_slice(&ip);
    fix_ip_checksum(&mut f, ETH_END);
    f
}

fn with_type(mut f: Vec<u8>, ether_type: [u8; 2]) -> Vec<u8> {
    f[12..14].copy_from_slice(&ether_type);
    f
}

/// A → `dst` through host 1's router, with TTL `ttl`.
fn routed_frame(dst: [u8; 4], ttl: u8) -> Vec<u8> {
    let mut f = a_to(ROUTER_1, dst);
    f[22] = ttl;
    fix_ip_checksum(&mut f, ETH_END);
    f
}

fn container_templates() -> Vec<Template> {
    let mut arp_reply = arp_request(MAC_A, IP_A, IP_B);
    arp_reply[21] = 2;
    let mut spoofed_ip = frame_a_to_b(64);
    spoofed_ip[26..30].copy_from_slice(&IP_C);
    let mut spoofed_mac = frame_a_to_b(64);
    spoofed_mac[6..12].copy_from_slice(&MAC_C);
    vec![
        template("ARP request for B", arp_request(MAC_A, IP_A, IP_B)),
        template("ARP probe for the gateway", arp_request(MAC_A, [0; 4], GATEWAY)),
        template("ARP request for its own address", arp_request(MAC_A, IP_A, IP_A)),
        template("ARP request for another network's container", arp_request(MAC_A, IP_A, IP_X)),
        template("ARP reply", arp_reply),
        template("IPv4 to remote B", frame_a_to_b(64)),
        template("IPv4 to remote B, full MTU", frame_a_to_b(1450 - 28)),
        template("IPv4 to local C", a_to(MAC_C, IP_C)),
        template("IPv4 broadcast", a_to([0xff; 6], [10, 0, 255, 255])),
        template("IPv4 to an unknown MAC", a_to(MAC_UNKNOWN, IP_B)),
        template("IPv4 to an FDB entry of unknown kind", a_to(MAC_ODD, IP_B)),
        template("IPv4 from a spoofed address", spoofed_ip),
        template("IPv4 from a spoofed MAC", spoofed_mac),
        template("IPv6 to remote B", with_type(frame_a_to_b(64), ETH_IPV6)),
        template("IPv6 multicast", with_type(a_to([0x33, 0x33, 0, 0, 0, 1], IP_B), ETH_IPV6)),
        template("another protocol to remote B", with_type(frame_a_to_b(64), [0x88, 0xb5])),
        template("routed to a remote subnet", routed_frame(FAR, 64)),
        template("routed to local C", routed_frame(IP_C, 64)),
        template("routed to the gateway", routed_frame(GATEWAY, 64)),
        template("routed outside", routed_frame(OUTSIDE, 64)),
        template("routed to no subnet", routed_frame(UNROUTED, 64)),
        template("routed to remote B (not routable)", routed_frame(IP_B, 64)),
        template("routed with TTL 1", routed_frame(FAR, 1)),
    ]
}

/// VXLAN frames host 1 sends (its container program encapsulates them), and edits of them.
fn underlay_templates(p: &Progs) -> Vec<Template> {
    let wire = |frame: &[u8]| {
        let (ret, out) = p.run(programs::FROM_CONTAINER, frame);
        assert_eq!(ret, TC_ACT_REDIRECT, "host 1 encapsulates the template");
        out
    };
    let a_to_b = wire(&frame_a_to_b(64));
    let edit = |at: usize, bytes: &[u8]| {
        let mut f = a_to_b.clone();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        fix_outer(&mut f);
        f
    };
    let mut inner_arp = a_to_b[..VXLAN_END].to_vec();
    let mut arp = arp_request(MAC_A, IP_A, IP_B);
    arp[0..6].copy_from_slice(&MAC_B);
    inner_arp.extend(arp);
    fix_outer(&mut inner_arp);
    let mut short_inner = a_to_b[..VXLAN_END + 20].to_vec();
    fix_outer(&mut short_inner);
    vec![
        template("VXLAN A to B", a_to_b.clone()),
        template("VXLAN A to B, full MTU", wire(&frame_a_to_b(1450 - 28))),
        // Built by hand: no container may send IPv6 any more, but other VTEPs may carry it.
        template("VXLAN A to B, IPv6 inside", edit(VXLAN_END + 12, &ETH_IPV6)),
        template("VXLAN routed to FAR", wire(&routed_frame(FAR, 64))),
        template("VXLAN routed to FAR, TTL 1 left", wire(&routed_frame(FAR, 2))),
        template("VXLAN from VTEP 3", edit(26, &VTEP_3)),
        template("VXLAN from an unknown VTEP", edit(26, &VTEP_UNKNOWN)),
        template("VXLAN to another VTEP", edit(30, &VTEP_1)),
        template("VXLAN of network 43", edit(46, &[0, 0, OTHER_VNI as u8])),
        template("VXLAN of an unknown VNI", edit(46, &[0, 0, 99])),
        template("VXLAN without the I flag", edit(42, &[0])),
        template("VXLAN fragment (MF)", edit(20, &[0x20, 0])),
        template("VXLAN fragment (offset)", edit(20, &[0, 0xb9])),
        template("VXLAN with IP options", with_ip_options(&a_to_b)),
        template("TCP to the VTEP", edit(23, &[6])),
        template("UDP to another port", edit(36, &53u16.to_be_bytes())),
        template("VXLAN, inner broadcast", edit(50, &[0xff; 6])),
        template("VXLAN to A, remote here", edit(50, &MAC_A)),
        template("VXLAN to an unknown MAC", edit(50, &MAC_UNKNOWN)),
        template("VXLAN carrying ARP", inner_arp),
        template("VXLAN with a 20-byte inner frame", short_inner),
        template("ARP on the underlay", arp_request(MAC_A, VTEP_1, VTEP_2)),
    ]
}

/// `wire` with four bytes of IP options (NOP NOP NOP EOL), lengths and checksum right.
fn with_ip_options(wire: &[u8]) -> Vec<u8> {
    let mut f = wire[..IP_END].to_vec();
    f[ETH_END] = 0x46;
    f.extend([1, 1, 1, 0]);
    f.extend(&wire[IP_END..]);
    let ip_len = (f.len() - ETH_END) as u16;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[42..44].copy_from_slice(&(ip_len - 24).to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = ipv4_checksum(&f[ETH_END..IP_END + 4]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// Sets the checksum of the 20-byte IPv4 header at `at`.
fn fix_ip_checksum(f: &mut [u8], at: usize) {
    f[at + 10..at + 12].copy_from_slice(&[0, 0]);
    let c = ipv4_checksum(&f[at..at + 20]);
    f[at + 10..at + 12].copy_from_slice(&c.to_be_bytes());
}

/// Makes the outer IPv4 total length, UDP length and checksum agree with the frame, as far
/// as it reaches: what a sender that means it would send.
fn fix_outer(f: &mut [u8]) {
    if f.len() >= UDP_END {
        let ip_len = (f.len() - ETH_END) as u16;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    }
    fix_outer_checksum(f);
}

fn fix_outer_checksum(f: &mut [u8]) {
    if f.len() >= IP_END {
        fix_ip_checksum(f, ETH_END);
    }
}

/// One frame to send, and how it was made.
fn generate(rng: &mut Rng, t: &Target) -> (String, Vec<u8>) {
    if rng.chance(7) {
        let limit = if rng.chance(2) { MAX_LEN } else { SHORT_LEN };
        let len = rng.below(limit + 1);
        return ("random bytes".to_string(), rng.bytes(len));
    }
    let template = &t.templates[rng.below(t.templates.len())];
    let mut frame = template.frame.clone();
    let mut origin = template.name.to_string();
    let mutations = if rng.chance(10) { 0 } else { 1 + rng.below(4) };
    for _ in 0..mutations {
        let what = mutate(rng, &mut frame, t);
        write!(origin, "; {what}").unwrap();
    }
    if t.refix_outer && mutations > 0 {
        match rng.below(4) {
            0 | 1 => {
                fix_outer(&mut frame);
                origin.push_str("; outer lengths and checksum fixed");
            }
            2 => {
                fix_outer_checksum(&mut frame);
                origin.push_str("; outer checksum fixed");
            }
            _ => {}
        }
    }
    (origin, frame)
}

fn mutate(rng: &mut Rng, f: &mut Vec<u8>, t: &Target) -> String {
    match rng.below(8) {
        0 if !f.is_empty() => {
            let (at, bit) = (position(rng, f.len()), rng.below(8));
            f[at] ^= 1 << bit;
            format!("bit {bit} of byte {at} flipped")
        }
        1 if !f.is_empty() => {
            let at = position(rng, f.len());
            f[at] = rng.byte();
            format!("byte {at} random")
        }
        2..=4 => overwrite_field(rng, f, t.fields),
        5 => {
            let len = rng.pick(t.lengths);
            resize(rng, f, len);
            format!("resized to {len}")
        }
        6 => {
            let len = rng.below(MAX_LEN + 1);
            resize(rng, f, len);
            format!("resized to {len}")
        }
        _ => {
            let keep = rng.below(f.len().min(80) + 1);
            let len = keep + rng.below(200);
            f.truncate(keep);
            resize(rng, f, len);
            format!("random after byte {keep}, {len} bytes")
        }
    }
}

/// Mostly in the headers, where the checks look.
fn position(rng: &mut Rng, len: usize) -> usize {
    if rng.chance(4) { rng.below(len) } else { rng.below(len.min(96)) }
}

fn overwrite_field(rng: &mut Rng, f: &mut [u8], fields: &[(usize, Kind)]) -> String {
    let (at, kind) = rng.pick(fields);
    let value = value(rng, kind);
    match f.get_mut(at..at + value.len()) {
        Some(field) => {
            field.copy_from_slice(&value);
            format!("bytes {at}.. set to {}", hex(&value))
        }
        None => format!("field at {at} beyond the end"),
    }
}

/// A value for a field of `kind`: one in four random, the others from the dictionaries.
fn value(rng: &mut Rng, kind: Kind) -> Vec<u8> {
    let width = match kind {
        Kind::Mac => 6,
        Kind::Ip => 4,
        Kind::Vni => 3,
        Kind::Byte => 1,
        Kind::EtherType | Kind::Word | Kind::Port => 2,
    };
    if rng.chance(4) {
        return rng.bytes(width);
    }
    match kind {
        Kind::Mac => rng.pick(&MACS).to_vec(),
        Kind::Ip => rng.pick(&IPS).to_vec(),
        Kind::EtherType => rng.pick(&ETHER_TYPES).to_be_bytes().to_vec(),
        Kind::Byte => vec![rng.pick(&BYTES)],
        Kind::Word => rng.pick(&WORDS).to_be_bytes().to_vec(),
        Kind::Port => rng.pick(&PORTS).to_be_bytes().to_vec(),
        Kind::Vni => rng.pick(&VNIS).to_be_bytes()[1..].to_vec(),
    }
}

/// Truncates `f` to `len` bytes or extends it with random ones.
fn resize(rng: &mut Rng, f: &mut Vec<u8>, len: usize) {
    if len <= f.len() {
        f.truncate(len);
    } else {
        let extra = rng.bytes(len - f.len());
        f.extend(extra);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        write!(s, "{b:02x}").unwrap();
        s
    })
}

/// SplitMix64 (Steele, Lea, Flood: "Fast splittable pseudorandom number generators"): small,
/// and the same sequence for a seed on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in 0..n for n far below 2^64.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

fn seed() -> u64 {
    let Ok(text) = std::env::var("OVERLAY_FUZZ_SEED") else { return DEFAULT_SEED };
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.unwrap_or_else(|e| panic!("OVERLAY_FUZZ_SEED={text}: {e}"))
}

// --- Running --------------------------------------------------------------------------

/// One program's fuzzing: what to send it, and what it should do.
struct Target {
    prog: &'static str,
    dir: Direction,
    model: fn(&World, &[u8]) -> Prediction,
    templates: Vec<Template>,
    fields: &'static [(usize, Kind)],
    lengths: &'static [usize],
    /// Whether mutated frames get their outer IPv4 lengths and checksum fixed again.
    refix_outer: bool,
    /// The first is the maps as set up.
    variants: &'static [Variant],
    /// Brings back what the variants change.
    restore: fn(&mut Progs),
    reachable: &'static [Reason],
}

/// One frame and how it came about, for the failure message.
struct Case {
    iteration: u64,
    variant: &'static str,
    origin: String,
    frame: Vec<u8>,
}

/// Every counter of both directions.
struct Counters(BTreeMap<(Direction, Reason), u64>);

impl Counters {
    fn read(p: &Progs) -> Counters {
        let reasons = Reason::ALL.into_iter().filter(|r| *r != Reason::UpgradeTestMarker);
        let keys = Direction::ALL.into_iter().flat_map(|d| reasons.clone().map(move |r| (d, r)));
        Counters(keys.map(|(d, r)| ((d, r), p.count(d, r))).collect())
    }

    fn get(&self, dir: Direction, reason: Reason) -> u64 {
        self.0[&(dir, reason)]
    }

    fn add(&mut self, dir: Direction, reason: Reason) {
        *self.0.get_mut(&(dir, reason)).unwrap() += 1;
    }

    /// The counters whose value in the map differs from this tally.
    fn differences(&self, p: &Progs) -> String {
        let now = Counters::read(p);
        let mut s = String::new();
        for (&(dir, reason), &want) in &self.0 {
            let got = now.0[&(dir, reason)];
            if got != want {
                write!(s, "\n    {} {}: counted {got}, the model {want}", dir.name(), reason.name()).unwrap();
            }
        }
        s
    }
}

struct Fuzzer<'a> {
    p: &'a mut Progs,
    t: &'a Target,
    seed: u64,
    rng: Rng,
    /// What the counters must say: as read before the first frame, plus the model's reasons.
    tally: Counters,
    first_total: u64,
    seen: BTreeMap<Reason, u64>,
    iteration: u64,
    last_checkpoint: u64,
    ran: u64,
    /// Refused frames (not counted: the checkpoints see to it): shorter than Ethernet, and
    /// IPv4 or IPv6 shorter than their header.
    refused: (u64, u64),
    out: Vec<u8>,
}

impl<'a> Fuzzer<'a> {
    fn new(p: &'a mut Progs, t: &'a Target) -> Fuzzer<'a> {
        let seed = seed();
        eprintln!("{}: seed {seed:#x} (OVERLAY_FUZZ_SEED replays it)", t.prog);
        let (tally, first_total) = (Counters::read(p), p.total());
        Fuzzer {
            p,
            t,
            seed,
            rng: Rng(seed),
            tally,
            first_total,
            seen: BTreeMap::new(),
            iteration: 0,
            last_checkpoint: 0,
            ran: 0,
            refused: (0, 0),
            // Larger than any frame plus VXLAN: BPF_PROG_TEST_RUN fails when the output does not fit.
            out: vec![0; 4096],
        }
    }

    fn run(mut self) {
        let started = Instant::now();
        for phase in 0..(FRAMES / PHASE) as usize {
            // Every variant once, then the maps as set up for half of the phases.
            let variants = self.t.variants;
            let variant = match variants.get(phase) {
                Some(v) => *v,
                None if self.rng.chance(2) => variants[0],
                None => self.rng.pick(variants),
            };
            (self.t.restore)(self.p);
            (variant.apply)(self.p);
            let world = World::read(self.p);
            let end = self.ran + PHASE;
            while self.ran < end {
                self.iteration += 1;
                let (origin, frame) = generate(&mut self.rng, self.t);
                self.one(&Case { iteration: self.iteration, variant: variant.name, origin, frame }, &world);
            }
        }
        self.finish(started);
    }

    fn one(&mut self, case: &Case, world: &World) {
        let result = test_run(self.p, self.t.prog, &case.frame, &mut self.out);
        let refused = result.as_ref().is_err_and(|e| {
            matches!(e, ProgramError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::EINVAL))
        });
        match refusal(&case.frame) {
            Refusal::Must if !refused => self.fail(case, format!("not refused (EINVAL): {result:?}")),
            Refusal::Must => {
                self.refused.0 += 1;
                return;
            }
            Refusal::May if refused => {
                self.refused.1 += 1;
                return;
            }
            _ => {}
        }
        let (ret, len) = result.unwrap_or_else(|e| self.fail(case, format!("BPF_PROG_TEST_RUN: {e:?}")));
        let prediction = (self.t.model)(world, &case.frame);
        self.expect_action(case, &prediction, ret);
        self.expect_counted(case, prediction.reason);
        for _ in 0..prediction.lost_copies {
            self.tally.add(self.t.dir, Reason::FloodCopyFailed);
        }
        if let Err(what) = check_out(&prediction.out, &case.frame, &self.out[..len]) {
            self.fail(case, format!("{}: {what}", prediction.reason.name()));
        }
        self.ran += 1;
        if self.ran.is_multiple_of(CHECKPOINT) {
            self.checkpoint();
        }
    }

    fn expect_action(&self, case: &Case, prediction: &Prediction, ret: u32) {
        let want = action(prediction.reason);
        if ret == TC_ACT_REDIRECT && want != TC_ACT_REDIRECT {
            let what = format!("DELIVERED (TC_ACT_REDIRECT) a frame the model gives {}", prediction.reason.name());
            self.fail(case, what);
        }
        if ret != want {
            self.fail(case, format!("action {ret}, the model says {want} ({})", prediction.reason.name()));
        }
    }

    /// The model's reason counted the frame; the checkpoints see that nothing else did.
    fn expect_counted(&mut self, case: &Case, reason: Reason) {
        self.tally.add(self.t.dir, reason);
        if self.p.count(self.t.dir, reason) != self.tally.get(self.t.dir, reason) {
            let what = format!("not counted as {}:{}", reason.name(), self.tally.differences(self.p));
            self.fail(case, what);
        }
        *self.seen.entry(reason).or_default() += 1;
    }

    fn checkpoint(&mut self) {
        let differences = self.tally.differences(self.p);
        assert!(
            differences.is_empty(),
            "{}: seed {:#x}, iterations {}..={}: counters the model did not predict:{differences}",
            self.t.prog,
            self.seed,
            self.last_checkpoint + 1,
            self.iteration,
        );
        self.last_checkpoint = self.iteration;
    }

    fn finish(mut self, started: Instant) {
        self.checkpoint();
        assert_eq!(self.p.total() - self.first_total, self.ran, "every frame run is counted once");
        let reasons = self.seen.iter().fold(String::new(), |mut s, (reason, n)| {
            write!(s, "\n    {:<24} {n}", reason.name()).unwrap();
            s
        });
        eprintln!(
            "{}: {} frames in {:.1?}; refused: {} shorter than Ethernet, {} IPv4/IPv6 shorter than their header; \
             reasons:{reasons}",
            self.t.prog,
            self.ran,
            started.elapsed(),
            self.refused.0,
            self.refused.1,
        );
        for reason in self.t.reachable {
            assert!(self.seen.contains_key(reason), "{}: no frame reached {}", self.t.prog, reason.name());
        }
    }

    fn fail(&self, case: &Case, what: String) -> ! {
        panic!(
            "{}: {what}\n  seed {:#x} (OVERLAY_FUZZ_SEED), iteration {}, maps {}\n  frame: {}\n  {} bytes: {}",
            self.t.prog,
            self.seed,
            case.iteration,
            case.variant,
            case.origin,
            case.frame.len(),
            hex(&case.frame),
        )
    }
}

/// Whether `BPF_PROG_TEST_RUN` refuses a frame before the program sees it.
enum Refusal {
    /// Shorter than an Ethernet header (`bpf_prog_test_run_skb`).
    Must,
    /// An IPv4 or IPv6 frame shorter than its network header: 6.18 refuses them (so the
    /// container program's "IPv4 shorter than its header" check cannot be reached here),
    /// older kernels run them.
    May,
    Never,
}

fn refusal(frame: &[u8]) -> Refusal {
    if frame.len() < ETH_END {
        return Refusal::Must;
    }
    match ether_type(frame) {
        ETH_IPV4 if frame.len() < IP_END => Refusal::May,
        ETH_IPV6 if frame.len() < ETH_END + 40 => Refusal::May,
        _ => Refusal::Never,
    }
}

/// Runs `prog` on `frame`: (return value, bytes written to `out`).
fn test_run(p: &Progs, prog: &str, frame: &[u8], out: &mut [u8]) -> Result<(u32, usize), ProgramError> {
    let prog: &SchedClassifier = p.ebpf.program(prog).unwrap().try_into().unwrap();
    let r = prog.test_run(TestRunOptions { data_in: Some(frame), data_out: Some(out), ..Default::default() })?;
    Ok((r.return_value, r.data_size_out as usize))
}

