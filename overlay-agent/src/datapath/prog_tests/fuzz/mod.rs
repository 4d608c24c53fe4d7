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

mod frames;
mod model;
mod run;

use frames::*;
use model::*;
use run::*;

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
