//! What a container or a stranger on the underlay must not get through: spoofed source
//! addresses and ARP sender fields, other networks, VXLAN from unknown VTEPs, outer
//! headers that lie (checksum, lengths), oversized frames; and the outer UDP source port
//! that ECMP needs (spread over flows, stable within one).

use std::collections::BTreeSet;

use overlay_common::{Direction, FdbKey, NETWORK_ANY_VTEP, NeighKey, NeighValue, Reason, VtepKey, programs, vxlan};

use super::{
    IP_A, IP_B, MAC_A, MAC_B, Progs, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, VNI, VTEP_1, VTEP_2, arp_request,
    frame_a_to_b, local, network,
};
use crate::datapath::probe::ipv4_checksum;

/// Makes the outer IPv4 total length, UDP length and header checksum of a VXLAN frame
/// agree with its length.
pub fn fix_lengths(f: &mut [u8]) {
    let ip_len = (f.len() - 14) as u16;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    fix_checksum(f);
}

fn fix_checksum(f: &mut [u8]) {
    f[24..26].copy_from_slice(&[0, 0]);
    let c = ipv4_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// Runs `frame` through `prog` and checks the action and that exactly `reason` counted it.
#[track_caller]
fn expect(p: &Progs, prog: &str, frame: &[u8], action: u32, reason: Reason) -> Vec<u8> {
    let dir = if prog == programs::FROM_CONTAINER { Direction::FromContainer } else { Direction::FromUnderlay };
    let (before, total) = (p.count(dir, reason), p.total());
    let (ret, out) = p.run(prog, frame);
    assert_eq!(ret, action, "{reason:?}");
    assert_eq!(p.count(dir, reason), before + 1, "{reason:?} counted");
    assert_eq!(p.total(), total + 1, "{reason:?}: counted once");
    out
}

#[test]
fn a_container_cannot_send_from_another_address() {
    let mut p = Progs::host1();
    let mut spoofed = frame_a_to_b(32);
    spoofed[26..30].copy_from_slice(&IP_B);
    expect(&p, programs::FROM_CONTAINER, &spoofed, TC_ACT_SHOT, Reason::SourceIpMismatch);
    // Not to a local container either, nor as a broadcast.
    p.fdb.insert(FdbKey::new(VNI, MAC_B), local(7), 0).unwrap();
    expect(&p, programs::FROM_CONTAINER, &spoofed, TC_ACT_SHOT, Reason::SourceIpMismatch);
    let mut bcast = spoofed.clone();
    bcast[0..6].copy_from_slice(&[0xff; 6]);
    expect(&p, programs::FROM_CONTAINER, &bcast, TC_ACT_SHOT, Reason::SourceIpMismatch);
    // Another source MAC on the Ethernet header.
    let mut mac = frame_a_to_b(32);
    mac[6..12].copy_from_slice(&[0x02, 0x42, 10, 0, 10, 99]);
    expect(&p, programs::FROM_CONTAINER, &mac, TC_ACT_SHOT, Reason::SourceMacMismatch);
    // Its own address still goes through.
    expect(&p, programs::FROM_CONTAINER, &frame_a_to_b(32), TC_ACT_REDIRECT, Reason::LocalDelivered);
}

#[test]
fn arp_sender_fields_must_be_the_containers_own() {
    let p = Progs::host1();
    // Claims B's address: a poisoning attempt, even if only the sender would see the answer.
    expect(&p, programs::FROM_CONTAINER, &arp_request(MAC_A, IP_B, IP_B), TC_ACT_SHOT, Reason::SourceIpMismatch);
    let mut other_sha = arp_request(MAC_A, IP_A, IP_B);
    other_sha[22..28].copy_from_slice(&MAC_B);
    expect(&p, programs::FROM_CONTAINER, &other_sha, TC_ACT_SHOT, Reason::SourceMacMismatch);
    // An ARP reply that answers for B (the container pretending to be B): never sent on.
    let mut reply = arp_request(MAC_A, IP_B, IP_A);
    reply[21] = 2;
    reply[28..32].copy_from_slice(&IP_B);
    expect(&p, programs::FROM_CONTAINER, &reply, TC_ACT_SHOT, Reason::ArpNotRequest);
    // An RFC 5227 probe (sender address 0.0.0.0) is legitimate and answered.
    let out = expect(&p, programs::FROM_CONTAINER, &arp_request(MAC_A, [0; 4], IP_B), TC_ACT_REDIRECT, Reason::ArpReplied);
    assert_eq!(&out[22..28], &MAC_B);
}

#[test]
fn a_container_cannot_reach_another_network() {
    let mut p = Progs::host1();
    // C lives in network 43 on this host, behind ifindex 7.
    const OTHER: u32 = 43;
    const IP_C: [u8; 4] = [10, 0, 10, 12];
    const MAC_C: [u8; 6] = [0x02, 0x42, 10, 0, 10, 12];
    p.neigh.insert(NeighKey { vni: OTHER, ip: IP_C }, NeighValue { mac: MAC_C, _pad: [0; 2] }, 0).unwrap();
    p.fdb.insert(FdbKey::new(OTHER, MAC_C), local(7), 0).unwrap();
    expect(&p, programs::FROM_CONTAINER, &arp_request(MAC_A, IP_A, IP_C), TC_ACT_SHOT, Reason::ArpUnknownTarget);
    let mut to_c = frame_a_to_b(32);
    to_c[0..6].copy_from_slice(&MAC_C);
    to_c[30..34].copy_from_slice(&IP_C);
    expect(&p, programs::FROM_CONTAINER, &to_c, TC_ACT_SHOT, Reason::UnknownDestination);
}

/// Host 2's view: B is local behind ifindex 7; returns the VXLAN frame host 1 sent.
fn host2_receiving(payload: usize) -> (Progs, Vec<u8>) {
    let mut p = Progs::host1();
    let (_, wire) = p.run(programs::FROM_CONTAINER, &frame_a_to_b(payload));
    p.configure(VTEP_2);
    p.fdb.insert(FdbKey::new(VNI, MAC_B), local(7), 0).unwrap();
    (p, wire)
}

#[test]
fn vxlan_is_accepted_only_from_known_vteps() {
    let (mut p, wire) = host2_receiving(64);
    expect(&p, programs::FROM_UNDERLAY, &wire, TC_ACT_REDIRECT, Reason::Decapsulated);
    p.vteps.remove(&VtepKey { vni: VNI, ip: VTEP_1 }).unwrap();
    expect(&p, programs::FROM_UNDERLAY, &wire, TC_ACT_SHOT, Reason::UnknownVtep);
    // Known for another network is not enough.
    p.vteps.insert(VtepKey { vni: 43, ip: VTEP_1 }, 1, 0).unwrap();
    expect(&p, programs::FROM_UNDERLAY, &wire, TC_ACT_SHOT, Reason::UnknownVtep);
    // A broadcast from it neither.
    let mut bcast = wire.clone();
    bcast[50..56].copy_from_slice(&[0xff; 6]);
    expect(&p, programs::FROM_UNDERLAY, &bcast, TC_ACT_SHOT, Reason::UnknownVtep);
    // `known_vteps_only = false`: any source.
    p.networks.insert(VNI, network(NETWORK_ANY_VTEP), 0).unwrap();
    expect(&p, programs::FROM_UNDERLAY, &wire, TC_ACT_REDIRECT, Reason::Decapsulated);
}

#[test]
fn outer_headers_are_validated_before_decapsulation() {
    let (p, wire) = host2_receiving(64);
    let mut bad_sum = wire.clone();
    bad_sum[25] ^= 0x01;
    expect(&p, programs::FROM_UNDERLAY, &bad_sum, TC_ACT_SHOT, Reason::OuterBadChecksum);
    for delta in [1i32, -1] {
        let mut f = wire.clone();
        let len = (u16::from_be_bytes([f[16], f[17]]) as i32 + delta) as u16;
        f[16..18].copy_from_slice(&len.to_be_bytes());
        fix_checksum(&mut f);
        expect(&p, programs::FROM_UNDERLAY, &f, TC_ACT_SHOT, Reason::OuterBadLength);
    }
    let mut udp_len = wire.clone();
    udp_len[39] = udp_len[39].wrapping_sub(1);
    expect(&p, programs::FROM_UNDERLAY, &udp_len, TC_ACT_SHOT, Reason::OuterBadLength);
    let mut trailing = wire.clone();
    trailing.extend_from_slice(&[0xaa; 4]);
    expect(&p, programs::FROM_UNDERLAY, &trailing, TC_ACT_SHOT, Reason::OuterBadLength);
    // A VXLAN packet with no payload at all, and inner frames too short for an IPv4
    // header (an Ethernet header alone; one byte short of Ethernet + 20).
    let mut empty = wire[..42].to_vec();
    fix_lengths(&mut empty);
    expect(&p, programs::FROM_UNDERLAY, &empty, TC_ACT_SHOT, Reason::Malformed);
    for inner_len in [14, 33] {
        let mut short = wire[..50 + inner_len].to_vec();
        fix_lengths(&mut short);
        expect(&p, programs::FROM_UNDERLAY, &short, TC_ACT_SHOT, Reason::Malformed);
    }
    // IP options: the kernel's (its own checks run there).
    let mut options = wire[..34].to_vec();
    options[14] = 0x46;
    options.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
    options.extend_from_slice(&wire[34..]);
    fix_lengths_with_options(&mut options);
    let out = expect(&p, programs::FROM_UNDERLAY, &options, TC_ACT_OK, Reason::PassIpOptions);
    assert_eq!(out, options, "passed untouched");
    // The sound frame is still delivered.
    expect(&p, programs::FROM_UNDERLAY, &wire, TC_ACT_REDIRECT, Reason::Decapsulated);
}

fn fix_lengths_with_options(f: &mut [u8]) {
    let ip_len = (f.len() - 14) as u16;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[42..44].copy_from_slice(&(ip_len - 24).to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = ipv4_checksum(&f[14..38]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn frames_larger_than_the_network_mtu_are_dropped_at_decap() {
    // MTU 1450: the container's veth takes frames up to 1450 + 14 + 4 bytes.
    let fits = 1450 + 14 + 4 - (14 + 20 + 8);
    let (p, wire) = host2_receiving(fits);
    assert_eq!(wire.len(), 1468 + vxlan::OVERHEAD as usize);
    expect(&p, programs::FROM_UNDERLAY, &wire, TC_ACT_REDIRECT, Reason::Decapsulated);
    let (p, wire) = host2_receiving(fits + 1);
    expect(&p, programs::FROM_UNDERLAY, &wire, TC_ACT_SHOT, Reason::Oversized);
}

#[test]
fn outer_source_ports_spread_flows_and_stay_put_within_one() {
    let p = Progs::host1();
    let sport = |flow: u16| {
        let mut f = frame_a_to_b(16);
        f[34..36].copy_from_slice(&flow.to_be_bytes());
        let (ret, out) = p.run(programs::FROM_CONTAINER, &f);
        assert_eq!(ret, TC_ACT_REDIRECT);
        u16::from_be_bytes([out[34], out[35]])
    };
    let flows: Vec<u16> = (0..256).map(|i| 10_000 + i).collect();
    let ports: Vec<u16> = flows.iter().map(|&f| sport(f)).collect();
    for &port in &ports {
        assert!((vxlan::SRC_PORT_MIN..=vxlan::SRC_PORT_MAX).contains(&port), "source port {port} outside the range");
    }
    // 256 flows over 16,384 ports: a good hash collides a couple of times; a constant or
    // poorly mixed port (no ECMP entropy) does not get anywhere near 240 distinct values.
    let distinct: BTreeSet<u16> = ports.iter().copied().collect();
    assert!(distinct.len() >= 240, "only {} distinct source ports for 256 flows", distinct.len());
    // Both halves of the range are used (the hash reaches the high bits).
    assert!(ports.iter().any(|&p| p < 57_344) && ports.iter().any(|&p| p >= 57_344));
    // One flow keeps its port (no reordering across paths).
    for (&flow, &port) in flows.iter().zip(&ports).take(16) {
        assert_eq!(sport(flow), port, "flow {flow} changed its source port");
    }
}
