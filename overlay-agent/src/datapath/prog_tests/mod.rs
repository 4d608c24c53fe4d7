//! The eBPF programs run on crafted frames with `BPF_PROG_TEST_RUN`: ARP answers,
//! encapsulation (every header field), decapsulation, the round trip, and each refusal
//! with its exact counter. Needs root (CAP_BPF) and the real eBPF object; nothing is
//! attached anywhere.

mod flood;
mod fuzz;
mod hardening;
mod route;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, lpm_trie::LpmTrie},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use overlay_common::{
    DatapathConfig, Direction, EndpointValue, FDB_LOCAL, FDB_REMOTE, FdbKey, FdbValue, FloodValue, NeighKey,
    NeighValue, NetworkValue, Reason, RouteKey, RouteValue, StatsValue, VtepKey, adjust_room, maps, programs, stats_index,
    vxlan,
};

use super::{ebpf::OBJECT, probe::ipv4_checksum};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
/// `BPF_PROG_TEST_RUN` runs skb programs on the loopback device: this is the ifindex
/// the program sees, so the test endpoint is registered under it.
const LO: u32 = 1;

const MAC_A: [u8; 6] = [0x02, 0x42, 10, 0, 10, 10];
const MAC_B: [u8; 6] = [0x02, 0x42, 10, 0, 10, 11];
const IP_A: [u8; 4] = [10, 0, 10, 10];
const IP_B: [u8; 4] = [10, 0, 10, 11];
const VTEP_1: [u8; 4] = [198, 51, 100, 1];
const VTEP_2: [u8; 4] = [198, 51, 100, 2];
const VNI: u32 = 42;

struct Progs {
    ebpf: Ebpf,
    config: Array<MapData, DatapathConfig>,
    neigh: HashMap<MapData, NeighKey, NeighValue>,
    fdb: HashMap<MapData, FdbKey, FdbValue>,
    endpoints: HashMap<MapData, u32, EndpointValue>,
    networks: HashMap<MapData, u32, NetworkValue>,
    flood: HashMap<MapData, u32, FloodValue>,
    routes: LpmTrie<MapData, RouteKey, RouteValue>,
    vteps: HashMap<MapData, VtepKey, u32>,
    stats: PerCpuArray<MapData, StatsValue>,
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(ebpf: &mut Ebpf, name: &str) -> T {
    T::try_from(ebpf.take_map(name).unwrap_or_else(|| panic!("no map {name}"))).unwrap()
}

impl Progs {
    /// Host 1 (VTEP 198.51.100.1) with container A local and B remote behind host 2.
    fn host1() -> Progs {
        assert!(nix::unistd::geteuid().is_root(), "BPF_PROG_TEST_RUN tests need root: run them through `cargo xtask test`");
        assert!(!OBJECT.is_empty(), "built with AYA_BUILD_SKIP: these tests need the real eBPF object");
        let mut ebpf = EbpfLoader::new().load(OBJECT).expect("loading the eBPF object");
        for name in [programs::FROM_CONTAINER, programs::FROM_UNDERLAY] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load().unwrap_or_else(|e| panic!("verifier rejected {name}: {e:?}"));
        }
        let mut p = Progs {
            config: take(&mut ebpf, maps::CONFIG),
            neigh: take(&mut ebpf, maps::NEIGH),
            fdb: take(&mut ebpf, maps::FDB),
            endpoints: take(&mut ebpf, maps::ENDPOINTS),
            networks: take(&mut ebpf, maps::NETWORKS),
            flood: take(&mut ebpf, maps::FLOOD),
            routes: take(&mut ebpf, maps::ROUTES),
            vteps: take(&mut ebpf, maps::VTEPS),
            stats: take(&mut ebpf, maps::STATS),
            ebpf,
        };
        p.configure(VTEP_1);
        p.networks.insert(VNI, network(0), 0).unwrap();
        // Either host may receive from the other (the tests switch roles with `configure`).
        for vtep in [VTEP_1, VTEP_2] {
            p.vteps.insert(VtepKey { vni: VNI, ip: vtep }, 1, 0).unwrap();
        }
        p.endpoints.insert(LO, EndpointValue { vni: VNI, ip: IP_A, mac: MAC_A, _pad: [0; 2] }, 0).unwrap();
        for (ip, mac) in [(IP_A, MAC_A), (IP_B, MAC_B)] {
            p.neigh.insert(NeighKey { vni: VNI, ip }, NeighValue { mac, _pad: [0; 2] }, 0).unwrap();
        }
        p.fdb.insert(FdbKey::new(VNI, MAC_A), local(LO), 0).unwrap();
        p.fdb.insert(FdbKey::new(VNI, MAC_B), remote(VTEP_2), 0).unwrap();
        p
    }

    fn configure(&mut self, vtep: [u8; 4]) {
        let mut c = DatapathConfig::zeroed();
        c.vtep = vtep;
        c.underlay_ifindex = LO;
        c.encap_flags = adjust_room::ENCAP_BASE;
        c.decap_flags = adjust_room::DECAP_BASE;
        c.src_port_min = vxlan::SRC_PORT_MIN;
        c.src_port_max = vxlan::SRC_PORT_MAX;
        c.n_udp_ports = 1;
        c.udp_ports_be[0] = 4789u16.to_be();
        self.config.set(0, c, 0).unwrap();
    }

    /// Replaces the network's flood list.
    fn flood_set(&mut self, f: FloodValue) {
        self.flood.insert(VNI, f, 0).unwrap();
    }

    /// Be host 2 from now on: VTEP 198.51.100.2, B local behind ifindex 7.
    fn become_host2(&mut self) {
        self.configure(VTEP_2);
        self.fdb.insert(FdbKey::new(VNI, MAC_B), local(7), 0).unwrap();
    }

    fn run(&self, prog: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let p: &SchedClassifier = self.ebpf.program(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 512];
        let r = p
            .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn count(&self, dir: Direction, reason: Reason) -> u64 {
        self.stats.get(&stats_index(dir, reason), 0).unwrap().iter().map(|v| v.packets).sum()
    }

    /// Total packets counted under any verdict: each run counts exactly once (the
    /// upgrade-test variant's marker and lost flood copies are not verdicts).
    fn total(&self) -> u64 {
        Direction::ALL
            .iter()
            .flat_map(|d| Reason::ALL.iter().filter(|r| r.is_verdict()).map(move |r| (*d, *r)))
            .map(|(d, r)| self.count(d, r))
            .sum()
    }
}

/// The network's map entry (MTU 1450) with `flags`.
fn network(flags: u16) -> NetworkValue {
    NetworkValue { udp_port_be: 4789u16.to_be(), mtu: 1450, flags, _pad: [0; 2] }
}

fn local(ifindex: u32) -> FdbValue {
    FdbValue { kind: FDB_LOCAL, ifindex, vtep: [0; 4], udp_port_be: 0, _pad: [0; 2] }
}

fn remote(vtep: [u8; 4]) -> FdbValue {
    FdbValue { kind: FDB_REMOTE, ifindex: 0, vtep, udp_port_be: 4789u16.to_be(), _pad: [0; 2] }
}

fn arp_request(sender_mac: [u8; 6], sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender_ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target_ip);
    f
}

/// An Ethernet/IPv4/UDP frame A → B with `payload` bytes.
fn frame_a_to_b(payload: usize) -> Vec<u8> {
    let mut f = super::probe::udp_frame(payload);
    f[0..6].copy_from_slice(&MAC_B);
    f[6..12].copy_from_slice(&MAC_A);
    f
}

#[test]
fn arp_request_is_answered_back_into_the_container() {
    let p = Progs::host1();
    let (ret, out) = p.run(programs::FROM_CONTAINER, &arp_request(MAC_A, IP_A, IP_B));
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(out.len(), 42);
    assert_eq!(&out[0..6], &MAC_A, "reply goes to the requester");
    assert_eq!(&out[6..12], &MAC_B, "from the answered MAC");
    assert_eq!(&out[12..14], &[0x08, 0x06]);
    assert_eq!(&out[14..20], &[0, 1, 0x08, 0x00, 6, 4], "Ethernet/IPv4 ARP");
    assert_eq!(&out[20..22], &[0, 2], "op REPLY");
    assert_eq!(&out[22..28], &MAC_B, "sha");
    assert_eq!(&out[28..32], &IP_B, "spa");
    assert_eq!(&out[32..38], &MAC_A, "tha");
    assert_eq!(&out[38..42], &IP_A, "tpa");
    assert_eq!(p.count(Direction::FromContainer, Reason::ArpReplied), 1);
    assert_eq!(p.total(), 1);
}

#[test]
fn arp_refusals_are_dropped_and_counted() {
    let p = Progs::host1();
    let cases = [
        (arp_request(MAC_A, IP_A, [10, 0, 10, 99]), Reason::ArpUnknownTarget),
        (arp_request(MAC_A, IP_A, IP_A), Reason::ArpOwnAddress),
        (arp_request(MAC_B, IP_A, IP_B), Reason::SourceMacMismatch),
        ({
            let mut reply = arp_request(MAC_A, IP_A, IP_B);
            reply[21] = 2;
            reply
        }, Reason::ArpNotRequest),
    ];
    for (n, (frame, reason)) in cases.iter().enumerate() {
        let (ret, _) = p.run(programs::FROM_CONTAINER, frame);
        assert_eq!(ret, TC_ACT_SHOT, "{reason:?}");
        assert_eq!(p.count(Direction::FromContainer, *reason), 1, "{reason:?}");
        assert_eq!(p.total(), n as u64 + 1);
    }
}

#[test]
fn encapsulation_writes_rfc7348_headers() {
    let p = Progs::host1();
    let inner = frame_a_to_b(100);
    let (ret, out) = p.run(programs::FROM_CONTAINER, &inner);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(out.len(), inner.len() + 50);
    // Every outer byte, against what RFC 7348 and RFC 791 say it must be; the source port
    // is the flow hash's (checked below and in hardening.rs), the checksum is computed.
    let sport = [out[34], out[35]];
    let ip_len = ((out.len() - 14) as u16).to_be_bytes();
    let udp_len = ((out.len() - 34) as u16).to_be_bytes();
    let mut want = vec![0u8; 12]; // MACs: zero, bpf_redirect_neigh fills them in
    want.extend_from_slice(&[0x08, 0x00]);
    want.extend_from_slice(&[0x45, 0, ip_len[0], ip_len[1], 0, 0, 0x40, 0, 64, 17, out[24], out[25]]);
    want.extend_from_slice(&VTEP_1);
    want.extend_from_slice(&VTEP_2);
    want.extend_from_slice(&[sport[0], sport[1], 0x12, 0xb5, udp_len[0], udp_len[1], 0, 0]);
    want.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, VNI as u8, 0]);
    assert_eq!(&out[..50], &want[..], "outer headers, byte for byte");
    assert_eq!(&out[12..14], &[0x08, 0x00], "outer ethertype IPv4");
    let ip = &out[14..34];
    assert_eq!(ip[0], 0x45, "IPv4, no options");
    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]) as usize, out.len() - 14, "total length");
    assert_eq!(u16::from_be_bytes([ip[6], ip[7]]), 0x4000, "DF, no fragment offset");
    assert_eq!(ip[8], 64, "TTL");
    assert_eq!(ip[9], 17, "UDP");
    assert_eq!(ipv4_checksum(ip), 0, "header checksum");
    assert_eq!((&ip[12..16], &ip[16..20]), (&VTEP_1[..], &VTEP_2[..]));
    let udp = &out[34..42];
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    assert!(sport >= vxlan::SRC_PORT_MIN, "source port {sport}");
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 4789);
    assert_eq!(u16::from_be_bytes([udp[4], udp[5]]) as usize, out.len() - 34, "UDP length");
    assert_eq!(&udp[6..8], &[0, 0], "UDP checksum 0");
    assert_eq!(&out[42..50], &[0x08, 0, 0, 0, 0, 0, VNI as u8, 0], "VXLAN I flag + VNI");
    assert_eq!(&out[50..], &inner[..], "inner frame untouched");
    assert_eq!(p.count(Direction::FromContainer, Reason::Encapsulated), 1);
    assert_eq!(p.total(), 1);
    // The same flow always gets the same source port (ECMP keeps a flow on one path).
    let (_, again) = p.run(programs::FROM_CONTAINER, &inner);
    assert_eq!(&again[34..36], &udp[0..2]);
}

#[test]
fn container_frames_without_a_destination_are_dropped() {
    let mut p = Progs::host1();
    let mut bcast = frame_a_to_b(10);
    bcast[0..6].copy_from_slice(&[0xff; 6]);
    let mut unknown = frame_a_to_b(10);
    unknown[0..6].copy_from_slice(&[0x02, 0x42, 10, 0, 10, 99]);
    for (frame, reason) in [(bcast, Reason::BroadcastUnsupported), (unknown, Reason::UnknownDestination)] {
        let (ret, _) = p.run(programs::FROM_CONTAINER, &frame);
        assert_eq!(ret, TC_ACT_SHOT, "{reason:?}");
        assert_eq!(p.count(Direction::FromContainer, reason), 1, "{reason:?}");
    }
    // A veth that is not a registered endpoint.
    p.endpoints.remove(&LO).unwrap();
    let (ret, _) = p.run(programs::FROM_CONTAINER, &frame_a_to_b(10));
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(p.count(Direction::FromContainer, Reason::UnknownEndpoint), 1);
    assert_eq!(p.total(), 3);
}

#[test]
fn local_destination_is_redirected_without_encapsulation() {
    let mut p = Progs::host1();
    p.fdb.insert(FdbKey::new(VNI, MAC_B), local(7), 0).unwrap();
    let inner = frame_a_to_b(10);
    let (ret, out) = p.run(programs::FROM_CONTAINER, &inner);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(out, inner, "same-host frames are not encapsulated");
    assert_eq!(p.count(Direction::FromContainer, Reason::LocalDelivered), 1);
}

#[test]
fn round_trip_encap_then_decap_restores_the_frame() {
    let mut p = Progs::host1();
    let inner = frame_a_to_b(1000);
    let (_, wire) = p.run(programs::FROM_CONTAINER, &inner);
    // Now be host 2: B is local behind ifindex 7.
    p.configure(VTEP_2);
    p.fdb.insert(FdbKey::new(VNI, MAC_B), local(7), 0).unwrap();
    let (ret, out) = p.run(programs::FROM_UNDERLAY, &wire);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(out, inner, "decapsulation restores the original frame");
    assert_eq!(p.count(Direction::FromUnderlay, Reason::Decapsulated), 1);
    assert_eq!(p.total(), 2);
}

#[test]
fn underlay_traffic_that_is_not_ours_is_passed_or_dropped_with_a_reason() {
    let mut p = Progs::host1();
    let (_, wire) = p.run(programs::FROM_CONTAINER, &frame_a_to_b(64));
    p.configure(VTEP_2);
    p.fdb.insert(FdbKey::new(VNI, MAC_B), local(7), 0).unwrap();
    let fix_ip_csum = |f: &mut Vec<u8>| {
        f[24] = 0;
        f[25] = 0;
        let c = ipv4_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    };
    let mut cases: Vec<(Vec<u8>, u32, Reason)> = Vec::new();
    let mut other_vtep = wire.clone();
    other_vtep[33] = 77;
    fix_ip_csum(&mut other_vtep);
    cases.push((other_vtep, TC_ACT_OK, Reason::PassNotOverlay));
    let mut other_port = wire.clone();
    other_port[36..38].copy_from_slice(&53u16.to_be_bytes());
    cases.push((other_port, TC_ACT_OK, Reason::PassNotOverlay));
    let mut fragment = wire.clone();
    fragment[20] = 0x20; // MF
    fix_ip_csum(&mut fragment);
    cases.push((fragment, TC_ACT_OK, Reason::PassFragment));
    let mut no_i_flag = wire.clone();
    no_i_flag[42] = 0;
    cases.push((no_i_flag, TC_ACT_SHOT, Reason::VxlanBadFlags));
    let mut other_vni = wire.clone();
    other_vni[48] = 99;
    cases.push((other_vni, TC_ACT_SHOT, Reason::UnknownVni));
    let mut unknown_mac = wire.clone();
    unknown_mac[50..56].copy_from_slice(&[0x02, 0x42, 10, 0, 10, 99]);
    cases.push((unknown_mac, TC_ACT_SHOT, Reason::UnknownDestination));
    let mut to_remote = wire.clone();
    to_remote[50..56].copy_from_slice(&MAC_A);
    p.fdb.insert(FdbKey::new(VNI, MAC_A), remote(VTEP_1), 0).unwrap();
    cases.push((to_remote, TC_ACT_SHOT, Reason::NotLocalDestination));
    let mut bcast = wire.clone();
    bcast[50..56].copy_from_slice(&[0xff; 6]);
    // No flood list for the network.
    cases.push((bcast, TC_ACT_SHOT, Reason::BroadcastUnsupported));
    // Cut short: the outer lengths say more than there is.
    cases.push((wire[..14 + 20 + 8 + 8 + 6].to_vec(), TC_ACT_SHOT, Reason::OuterBadLength));
    // Lengths that agree, but too short for the inner Ethernet header.
    let mut short = wire[..14 + 20 + 8 + 8 + 6].to_vec();
    hardening::fix_lengths(&mut short);
    cases.push((short, TC_ACT_SHOT, Reason::Malformed));
    let mut arp = vec![0u8; 60];
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    cases.push((arp, TC_ACT_OK, Reason::PassNotOverlay));

    for (n, (frame, action, reason)) in cases.iter().enumerate() {
        let before = p.count(Direction::FromUnderlay, *reason);
        let (ret, out) = p.run(programs::FROM_UNDERLAY, frame);
        assert_eq!(ret, *action, "case {n}: {reason:?}");
        assert_eq!(p.count(Direction::FromUnderlay, *reason), before + 1, "case {n}: {reason:?}");
        if *action == TC_ACT_OK {
            assert_eq!(&out, frame, "case {n}: passed packets are untouched");
        }
    }
    // One encap on the container side plus one count per underlay case.
    assert_eq!(p.total(), cases.len() as u64 + 1);
}

#[test]
fn unconfigured_datapath_passes_everything() {
    let mut p = Progs::host1();
    p.config.set(0, DatapathConfig::zeroed(), 0).unwrap();
    let frame = frame_a_to_b(10);
    assert_eq!(p.run(programs::FROM_CONTAINER, &frame).0, TC_ACT_OK);
    assert_eq!(p.run(programs::FROM_UNDERLAY, &frame).0, TC_ACT_OK);
    assert_eq!(p.count(Direction::FromContainer, Reason::PassNotConfigured), 1);
    assert_eq!(p.count(Direction::FromUnderlay, Reason::PassNotConfigured), 1);
    assert_eq!(p.total(), 2);
}

#[test]
fn decapsulated_non_ipv4_frames_are_delivered_too() {
    let mut p = Progs::host1();
    let (_, ip_wire) = p.run(programs::FROM_CONTAINER, &frame_a_to_b(64));
    // A plain Linux VTEP sends its containers' unicast ARP (neighbour probes) over VXLAN.
    let mut arp = arp_request(MAC_A, IP_A, IP_B);
    arp[0..6].copy_from_slice(&MAC_B);
    let mut wire = ip_wire[..50].to_vec();
    wire.extend_from_slice(&arp);
    let ip_len = (wire.len() - 14) as u16;
    wire[16..18].copy_from_slice(&ip_len.to_be_bytes());
    wire[24..26].copy_from_slice(&[0, 0]);
    let c = ipv4_checksum(&wire[14..34]);
    wire[24..26].copy_from_slice(&c.to_be_bytes());
    wire[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    p.configure(VTEP_2);
    p.fdb.insert(FdbKey::new(VNI, MAC_B), local(7), 0).unwrap();
    let (ret, out) = p.run(programs::FROM_UNDERLAY, &wire);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(out, arp, "the inner ARP frame is delivered as sent");
    assert_eq!(p.count(Direction::FromUnderlay, Reason::Decapsulated), 1);
}

fn flood_list(vxlan_ifindex: u32, ports: &[u32]) -> FloodValue {
    let mut f = FloodValue::empty();
    f.vxlan_ifindex = vxlan_ifindex;
    f.n_ports = ports.len() as u32;
    f.ifindex[..ports.len()].copy_from_slice(ports);
    f
}

#[test]
fn container_broadcast_is_flooded_within_its_network() {
    let mut p = Progs::host1();
    let mut bcast = frame_a_to_b(20);
    bcast[0..6].copy_from_slice(&[0xff; 6]);
    // Nothing to flood to: the sender is the only endpoint and there is no VXLAN device.
    p.flood.insert(VNI, flood_list(0, &[LO]), 0).unwrap();
    assert_eq!(p.run(programs::FROM_CONTAINER, &bcast).0, TC_ACT_SHOT);
    assert_eq!(p.count(Direction::FromContainer, Reason::BroadcastUnsupported), 1);
    // Another local endpoint (an ifindex that does not exist: its copy is lost, the
    // rest goes on) and the VXLAN device (lo here), which gets the original.
    p.flood.insert(VNI, flood_list(LO, &[LO, 999_999]), 0).unwrap();
    let (ret, out) = p.run(programs::FROM_CONTAINER, &bcast);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(out, bcast, "flooded frames are not encapsulated by the program");
    assert_eq!(p.count(Direction::FromContainer, Reason::Flooded), 1, "counted once, not per copy");
    assert_eq!(p.total(), 2);
}

#[test]
fn underlay_broadcast_is_decapsulated_to_local_endpoints_only() {
    let mut p = Progs::host1();
    let (_, unicast_wire) = p.run(programs::FROM_CONTAINER, &frame_a_to_b(64));
    let mut wire = unicast_wire.clone();
    wire[50..56].copy_from_slice(&[0xff; 6]);
    p.configure(VTEP_2);
    p.flood.insert(VNI, flood_list(99, &[]), 0).unwrap();
    assert_eq!(p.run(programs::FROM_UNDERLAY, &wire).0, TC_ACT_SHOT, "no local endpoint");
    assert_eq!(p.count(Direction::FromUnderlay, Reason::BroadcastUnsupported), 1);
    p.flood.insert(VNI, flood_list(99, &[7]), 0).unwrap();
    let (ret, out) = p.run(programs::FROM_UNDERLAY, &wire);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(out, wire[50..].to_vec(), "decapsulated");
    assert_eq!(p.count(Direction::FromUnderlay, Reason::Flooded), 1);
    assert_eq!(p.total(), 3);
}
