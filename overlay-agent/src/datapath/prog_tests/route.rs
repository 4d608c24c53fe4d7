//! Routing (L3 networks, gateways) on crafted frames: a frame to the router MAC is
//! encapsulated to the host owning the longest matching node subnet with a router's
//! Ethernet rewrite and TTL − 1, delivered locally the same way, handed to the host for
//! the gateway and the outside, dropped for blocked overlay ranges, and delivered after
//! decapsulation on the other host with TTL − 1 again.

use aya::maps::lpm_trie::Key;
use overlay_common::{
    Direction, FDB_ROUTER, FdbKey, FdbValue, NeighKey, NeighValue, ROUTE_BLOCKED, ROUTE_HOST, ROUTE_REMOTE, Reason, RouteKey,
    RouteValue, programs,
};

use super::{IP_B, MAC_B, Progs, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, VNI, VTEP_2, frame_a_to_b, local};
use crate::datapath::probe::ipv4_checksum;

/// This host's router MAC, and the other host's.
const ROUTER_1: [u8; 6] = [0x0e, 1, 1, 1, 1, 1];
const ROUTER_2: [u8; 6] = [0x0e, 2, 2, 2, 2, 2];
/// A container in the other host's node subnet 10.0.20.0/24.
const FAR: [u8; 4] = [10, 0, 20, 5];
const FAR_MAC: [u8; 6] = [0x02, 0x42, 10, 0, 20, 5];

fn route(p: &mut Progs, ip: [u8; 4], len: u32, value: RouteValue) {
    let key = Key::new(RouteKey::VNI_BITS + len, RouteKey { vni_be: VNI.to_be_bytes(), ip });
    p.routes.insert(&key, value, 0).unwrap();
}

fn policy(kind: u32) -> RouteValue {
    RouteValue { kind, vtep: [0; 4], mac: [0; 6], udp_port_be: 0 }
}

/// Host 1 as the router of 10.0.10.0/24 in an L3 network 10.0.0.0/16, with the other
/// host's node subnet 10.0.20.0/24 behind VTEP 2.
fn l3_host1() -> Progs {
    let mut p = Progs::host1();
    let router = FdbValue { kind: FDB_ROUTER, ifindex: 0, vtep: [0; 4], udp_port_be: 0, _pad: [0; 2] };
    p.fdb.insert(FdbKey::new(VNI, ROUTER_1), router, 0).unwrap();
    p.neigh.insert(NeighKey { vni: VNI, ip: [10, 0, 10, 1] }, NeighValue { mac: ROUTER_1, _pad: [0; 2] }, 0).unwrap();
    route(&mut p, [0; 4], 0, policy(ROUTE_HOST));
    route(&mut p, [10, 0, 0, 0], 16, policy(ROUTE_BLOCKED));
    route(&mut p, [10, 0, 10, 1], 32, policy(ROUTE_HOST));
    route(&mut p, [10, 0, 20, 0], 24, RouteValue { kind: ROUTE_REMOTE, vtep: VTEP_2, mac: ROUTER_2, udp_port_be: 4789u16.to_be() });
    p
}

/// A → `dst` through the router: Ethernet to ROUTER_1, IPv4 TTL `ttl`.
fn routed_frame(dst: [u8; 4], ttl: u8) -> Vec<u8> {
    let mut f = frame_a_to_b(100);
    f[0..6].copy_from_slice(&ROUTER_1);
    f[14 + 8] = ttl;
    f[14 + 16..14 + 20].copy_from_slice(&dst);
    f[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let c = ipv4_checksum(&f[14..34]);
    f[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    f
}

/// `out` is `sent` routed once more: new MACs, TTL − `hops`, checksum valid, the rest equal.
fn assert_routed(out: &[u8], sent: &[u8], dst_mac: [u8; 6], src_mac: [u8; 6], hops: u8) {
    assert_eq!(out.len(), sent.len());
    assert_eq!((&out[0..6], &out[6..12]), (&dst_mac[..], &src_mac[..]), "router's Ethernet rewrite");
    assert_eq!(out[22], sent[22] - hops, "TTL");
    assert_eq!(ipv4_checksum(&out[14..34]), 0, "IPv4 header checksum after the TTL change");
    assert_eq!(&out[14..22], &sent[14..22]);
    assert_eq!(&out[23..24], &sent[23..24]);
    assert_eq!(&out[26..], &sent[26..], "addresses and payload untouched");
}

#[test]
fn a_frame_to_the_router_is_routed_to_the_host_owning_the_subnet() {
    let mut p = l3_host1();
    let sent = routed_frame(FAR, 64);
    let (ret, wire) = p.run(programs::FROM_CONTAINER, &sent);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(wire.len(), sent.len() + 50);
    assert_eq!(&wire[30..34], &VTEP_2, "outer destination: the subnet's host");
    assert_eq!(&wire[42..50], &[0x08, 0, 0, 0, 0, 0, VNI as u8, 0]);
    assert_routed(&wire[50..], &sent, ROUTER_2, ROUTER_1, 1);
    assert_eq!(p.count(Direction::FromContainer, Reason::Encapsulated), 1);

    // Host 2 receives it: routed to its local container, TTL − 1 again.
    p.configure(VTEP_2);
    let router = FdbValue { kind: FDB_ROUTER, ifindex: 0, vtep: [0; 4], udp_port_be: 0, _pad: [0; 2] };
    p.fdb.insert(FdbKey::new(VNI, ROUTER_2), router, 0).unwrap();
    p.neigh.insert(NeighKey { vni: VNI, ip: FAR }, NeighValue { mac: FAR_MAC, _pad: [0; 2] }, 0).unwrap();
    p.fdb.insert(FdbKey::new(VNI, FAR_MAC), local(7), 0).unwrap();
    let (ret, out) = p.run(programs::FROM_UNDERLAY, &wire);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_routed(&out, &sent, FAR_MAC, ROUTER_2, 2);
    assert_eq!(p.count(Direction::FromUnderlay, Reason::Decapsulated), 1);
    // A routed frame for an address with no local container is not forwarded on.
    p.neigh.remove(&NeighKey { vni: VNI, ip: FAR }).unwrap();
    let (ret, _) = p.run(programs::FROM_UNDERLAY, &wire);
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(p.count(Direction::FromUnderlay, Reason::NoRoute), 1);
    assert_eq!(p.total(), 3);
}

#[test]
fn routing_delivers_locally_hands_the_outside_to_the_host_and_refuses_the_rest() {
    let mut p = l3_host1();
    // B is a local container too: routed to it directly.
    p.fdb.insert(FdbKey::new(VNI, MAC_B), local(7), 0).unwrap();
    let sent = routed_frame(IP_B, 64);
    let (ret, out) = p.run(programs::FROM_CONTAINER, &sent);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_routed(&out, &sent, MAC_B, ROUTER_1, 1);
    assert_eq!(p.count(Direction::FromContainer, Reason::Routed), 1);

    // The gateway itself and the outside: to the host, untouched (the host routes it).
    for dst in [[10, 0, 10, 1], [203, 0, 113, 9]] {
        let sent = routed_frame(dst, 64);
        let (ret, out) = p.run(programs::FROM_CONTAINER, &sent);
        assert_eq!(ret, TC_ACT_OK, "{dst:?}");
        assert_eq!(out, sent, "{dst:?}: passed frames are untouched");
    }
    assert_eq!(p.count(Direction::FromContainer, Reason::PassToHost), 2);

    let mut ipv6 = routed_frame(FAR, 64);
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    let cases = [
        (routed_frame([10, 0, 30, 5], 64), Reason::NoRoute),
        (routed_frame(FAR, 1), Reason::TtlExceeded),
        (routed_frame(FAR, 0), Reason::TtlExceeded),
        (ipv6, Reason::UnsupportedProtocol),
    ];
    for (frame, reason) in &cases {
        let before = p.count(Direction::FromContainer, *reason);
        let (ret, _) = p.run(programs::FROM_CONTAINER, frame);
        assert_eq!(ret, TC_ACT_SHOT, "{reason:?}");
        assert_eq!(p.count(Direction::FromContainer, *reason), before + 1, "{reason:?}");
    }
    // Without a default route (no gateway), the outside has no route either.
    let key = Key::new(RouteKey::VNI_BITS, RouteKey { vni_be: VNI.to_be_bytes(), ip: [0; 4] });
    p.routes.remove(&key).unwrap();
    let (ret, _) = p.run(programs::FROM_CONTAINER, &routed_frame([203, 0, 113, 9], 64));
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(p.total(), 1 + 2 + cases.len() as u64 + 1);
}
