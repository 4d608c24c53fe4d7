//! The reference model: what each program should do with a frame, in plain Rust,
//! following the programs' checks in their order, and how to check what came back.

use super::*;

/// The model's verdict: the reason counted, and what the program hands back.
pub(super) struct Prediction {
    pub(super) reason: Reason,
    pub(super) out: Out,
    /// Flood copies `bpf_clone_redirect` cannot send (to ifindexes no device has),
    /// each counted under `flood-copy-failed` besides the verdict.
    pub(super) lost_copies: u64,
}

/// What the program hands back with the verdict.
pub(super) enum Out {
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
pub(super) struct Vxlan {
    pub(super) src: [u8; 4],
    pub(super) dst: [u8; 4],
    pub(super) port_be: u16,
    pub(super) vni: u32,
    pub(super) inner: Box<Out>,
}

/// As the programs' `Outcome`: `Err` is a drop with that reason.
pub(super) type Outcome = Result<Prediction, Reason>;

pub(super) fn forwarded(reason: Reason, out: Out) -> Outcome {
    Ok(Prediction { reason, out, lost_copies: 0 })
}

pub(super) fn passed(reason: Reason) -> Outcome {
    Ok(Prediction { reason, out: Out::Same, lost_copies: 0 })
}

pub(super) fn settle(outcome: Outcome) -> Prediction {
    outcome.unwrap_or_else(|reason| Prediction { reason, out: Out::Any, lost_copies: 0 })
}

/// A flooded frame's verdict, with the copies that are lost: `flood::flood` clones to
/// every target but the last (the sender's veth `skip` and empty slots left out; with
/// `remote`, the VXLAN device goes last), and only `LO` exists in the test.
pub(super) fn flooded(list: &FloodValue, skip: u32, remote: bool, out: Out) -> Outcome {
    let mut targets: Vec<u32> = flood_ports(list).filter(|&ifindex| ifindex != skip).collect();
    if remote && list.vxlan_ifindex != 0 {
        targets.push(list.vxlan_ifindex);
    }
    let clones = &targets[..targets.len().saturating_sub(1)];
    let lost_copies = clones.iter().filter(|&&ifindex| ifindex != LO).count() as u64;
    Ok(Prediction { reason: Reason::Flooded, out, lost_copies })
}

pub(super) fn container_model(w: &World, f: &[u8]) -> Prediction {
    settle(from_container(w, f))
}

pub(super) fn underlay_model(w: &World, f: &[u8]) -> Prediction {
    settle(from_underlay(w, f))
}

/// `container::try_from_container` on a frame of at least an Ethernet header.
pub(super) fn from_container(w: &World, f: &[u8]) -> Outcome {
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
pub(super) fn arp_reply(w: &World, ep: &EndpointValue, f: &[u8]) -> Outcome {
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
pub(super) fn flood_from_container(w: &World, vni: u32) -> Outcome {
    let list = w.flood.get(&vni).ok_or(Reason::BroadcastUnsupported)?;
    if list.vxlan_ifindex == 0 && !flood_ports(list).any(|ifindex| ifindex != LO) {
        return Err(Reason::BroadcastUnsupported);
    }
    flooded(list, LO, true, Out::Same)
}

/// The ports of a flood list the program walks: `n_ports` of them, at most the array.
pub(super) fn flood_ports(list: &FloodValue) -> impl Iterator<Item = u32> + '_ {
    list.ifindex.iter().take(list.n_ports as usize).copied().filter(|&ifindex| ifindex != 0)
}

/// `encap::encapsulate`: only IPv4 gets here (the protocol check came first), which
/// `bpf_skb_adjust_room` always takes.
pub(super) fn encapsulated(v: Vxlan) -> Outcome {
    forwarded(Reason::Encapsulated, Out::Vxlan(v))
}

/// `route::from_container`, for a frame to this host's router MAC. The frame's IPv4 header
/// is there: the source check before made sure.
pub(super) fn route_from_container(w: &World, config: &DatapathConfig, vni: u32, f: &[u8]) -> Outcome {
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
pub(super) fn router_checks(f: &[u8]) -> Result<(), Reason> {
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
pub(super) fn routed(f: &[u8], dst_mac: [u8; 6], src_mac: [u8; 6]) -> Out {
    let mut frame = f.to_vec();
    frame[0..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    frame[22] -= 1;
    Out::Routed { frame, sum_was_valid: ipv4_checksum(&f[ETH_END..IP_END]) == 0 }
}

/// `underlay::try_from_underlay` up to "VXLAN for us": everything else is passed.
pub(super) fn from_underlay(w: &World, f: &[u8]) -> Outcome {
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
pub(super) fn vxlan_for_us(w: &World, f: &[u8]) -> Outcome {
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
pub(super) fn deliver_inner(w: &World, vni: u32, inner: &[u8]) -> Outcome {
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
pub(super) fn route_from_underlay(w: &World, vni: u32, inner: &[u8]) -> Outcome {
    if ether_type(inner) != ETH_IPV4 {
        return Err(Reason::RouteNotIpv4);
    }
    router_checks(inner)?;
    let mac = w.local_endpoint(vni, ip_at(inner, 30)).ok_or(Reason::NoRoute)?;
    forwarded(Reason::Decapsulated, routed(inner, mac, mac_at(inner, 0)))
}

/// The action `stats::account` returns for a reason.
pub(super) fn action(reason: Reason) -> u32 {
    match reason.kind() {
        ReasonKind::Forwarded => TC_ACT_REDIRECT,
        ReasonKind::Passed => TC_ACT_OK,
        ReasonKind::Dropped => TC_ACT_SHOT,
    }
}

pub(super) fn ether_type(f: &[u8]) -> [u8; 2] {
    [f[12], f[13]]
}

pub(super) fn mac_at(f: &[u8], at: usize) -> [u8; 6] {
    f[at..at + 6].try_into().unwrap()
}

pub(super) fn ip_at(f: &[u8], at: usize) -> [u8; 4] {
    f[at..at + 4].try_into().unwrap()
}

pub(super) fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// Broadcast or multicast: the I/G bit.
pub(super) fn is_group(mac: [u8; 6]) -> bool {
    mac[0] & 1 != 0
}

// --- What comes back ------------------------------------------------------------------

/// Whether `got` is what `want` says the program hands back for `sent`.
pub(super) fn check_out(want: &Out, sent: &[u8], got: &[u8]) -> Result<(), String> {
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

pub(super) fn expect_bytes(what: &str, want: &[u8], got: &[u8]) -> Result<(), String> {
    if want == got {
        return Ok(());
    }
    Err(format!("{what} came back as\n    {}\n  expected\n    {}", hex(got), hex(want)))
}

pub(super) fn check_routed(want: &[u8], sum_was_valid: bool, got: &[u8]) -> Result<(), String> {
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

pub(super) fn check_outer(v: &Vxlan, got: &[u8]) -> Result<(), String> {
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
pub(super) fn outer_headers(v: &Vxlan, len: usize, sport: u16) -> Vec<u8> {
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
