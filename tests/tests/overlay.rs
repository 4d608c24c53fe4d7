//! End-to-end tests of the overlay: real agents in host namespaces, containers
//! plugged in with the CLI, traffic and captures in pure Rust. `cargo xtask test` runs
//! this suite once per datapath (`OVERLAY_TEST_DATAPATH=ebpf|kernel`); where the eBPF
//! datapath's per-reason counters prove a property, kernel mode checks the same
//! property another way (captures, the kernel's tables).
//!
//! The reference topology ([`full_lab`]): three hosts, h3 behind a router on another
//! underlay subnet, networks blue (VNI 42, 10.0.10.0/24) and red (VNI 43,
//! 10.0.20.0/24), one container per network per host plus a second blue container on
//! h1 for same-host traffic.

use std::{net::Ipv4Addr, time::Duration};

use integration_tests::{
    Capture, Frame,
    lab::{BLUE, Container, Lab, NetworkDef, RED, ROUTED, suite_mode},
    NetNs,
    packet::{ETH_P_ARP, ETH_P_IP},
    ping, require_root, tcp_transfer,
    topo::{H1_IP, H2_IP, H3_IP, Underlay, add_dev_route},
};
use overlay_agent::config::DatapathMode;
use overlay_common::{Direction, Reason};

fn ebpf() -> bool {
    suite_mode() != DatapathMode::Kernel
}

const CONVERGE: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// (name, host index, network, ip)
const CONTAINERS: [(&str, usize, NetworkDef, &str); 7] = [
    ("b1", 0, BLUE, "10.0.10.11"),
    ("r1", 0, RED, "10.0.20.11"),
    ("b1x", 0, BLUE, "10.0.10.21"),
    ("b2", 1, BLUE, "10.0.10.12"),
    ("r2", 1, RED, "10.0.20.12"),
    ("b3", 2, BLUE, "10.0.10.13"),
    ("r3", 2, RED, "10.0.20.13"),
];

fn full_lab() -> Lab {
    require_root();
    let mut lab = Lab::new(Underlay::routed(), &[BLUE, RED]);
    lab.start_all();
    for (name, host, net, addr) in CONTAINERS {
        lab.add_container(host, name, net, ip(addr));
    }
    lab.wait_converged(Duration::from_secs(5));
    lab
}

fn pings(from: &Container, to: &Container, count: u32) -> bool {
    let r = ping(&from.ns, to.ip, count, PING_TIMEOUT);
    r.sent == count && r.received == count
}

fn stat(lab: &Lab, host: usize, dir: Direction, reason: Reason) -> u64 {
    lab.dump(host).packets(dir, reason)
}

/// Every frame in `frames` that decodes (captures may hold other noise).
fn decoded(frames: &[Frame]) -> Vec<integration_tests::packet::Packet> {
    frames.iter().filter_map(|f| f.decode().ok()).collect()
}

fn static_neighbour(ns: &NetNs, ip: Ipv4Addr, mac: [u8; 6]) {
    let index = ns.link("eth0").index;
    ns.netlink(|nl| async move { nl.add_neighbour(index, ip, mac).await.expect("adding a static neighbour") });
}

fn is_overlay_ip(ip: Ipv4Addr) -> bool {
    ip.octets()[0] == 10
}

#[test]
fn same_network_pairs_reach_each_other_both_ways() {
    let lab = full_lab();
    let mut failures = Vec::new();
    for a in &lab.containers {
        for b in &lab.containers {
            if a.name != b.name && a.network.vni == b.network.vni && !pings(a, b, 2) {
                failures.push(format!("{} -> {}", a.name, b.name));
            }
        }
    }
    assert!(failures.is_empty(), "no reply for: {failures:?}");
}

#[test]
fn same_host_traffic_never_leaves_the_host() {
    let lab = full_lab();
    let (b1, b1x) = (lab.container("b1"), lab.container("b1x"));
    let before = stat(&lab, 0, Direction::FromContainer, Reason::LocalDelivered);
    let cap = Capture::start(&lab.host(0).ns, &lab.host(0).ifname);
    assert!(pings(b1, b1x, 3), "b1 -> b1x");
    let frames = cap.stop();
    if ebpf() {
        let after = stat(&lab, 0, Direction::FromContainer, Reason::LocalDelivered);
        // 3 requests + 3 replies, each redirected straight into the peer container.
        assert_eq!(after - before, 6, "local deliveries on h1");
    }
    let leaked: Vec<_> = decoded(&frames)
        .into_iter()
        .filter(|p| p.innermost().ipv4().is_some_and(|i| is_overlay_ip(i.src)))
        .collect();
    assert!(leaked.is_empty(), "overlay frames on h1's underlay during same-host traffic: {leaked:?}");
}

#[test]
fn networks_are_isolated() {
    let lab = full_lab();
    let (b1, r2) = (lab.container("b1"), lab.container("r2"));
    // Make b1 believe 10.0.20.0/24 is on its link, so it ARPs for r2 inside VNI 42.
    add_dev_route(&b1.ns, "10.0.20.0/24", "eth0");
    let unknown_before = stat(&lab, 0, Direction::FromContainer, Reason::ArpUnknownTarget);
    let r = ping(&b1.ns, r2.ip, 2, Duration::from_secs(1));
    assert_eq!(r.received, 0, "a blue container reached a red one: {r:?}");
    if ebpf() {
        let unknown_after = stat(&lab, 0, Direction::FromContainer, Reason::ArpUnknownTarget);
        assert!(unknown_after > unknown_before, "the ARP for a red IP from blue was not refused by eBPF");
    }

    // Even knowing r2's MAC, blue frames for it go nowhere: the FDB is keyed by VNI.
    static_neighbour(&b1.ns, r2.ip, r2.mac.0);
    let cap = Capture::start(&lab.host(0).ns, &lab.host(0).ifname);
    let miss_before = stat(&lab, 0, Direction::FromContainer, Reason::UnknownDestination);
    let r = ping(&b1.ns, r2.ip, 2, Duration::from_secs(1));
    let frames = cap.stop();
    assert_eq!(r.received, 0, "a blue container reached a red one with a static neighbour: {r:?}");
    let for_r2: Vec<_> = decoded(&frames)
        .into_iter()
        .filter(|p| p.inner().is_some_and(|i| i.eth.dst == r2.mac.0))
        .collect();
    if ebpf() {
        let miss_after = stat(&lab, 0, Direction::FromContainer, Reason::UnknownDestination);
        assert_eq!(miss_after - miss_before, 2, "both echo requests dropped as unknown destination");
        assert!(for_r2.is_empty(), "frames for r2 left h1: {for_r2:?}");
    } else {
        // The kernel floods unknown unicast head-end, but only within VNI 42.
        let crossed: Vec<_> = for_r2.iter().filter(|p| p.vxlan().is_some_and(|v| v.vni != BLUE.vni)).collect();
        assert!(crossed.is_empty(), "frames for r2 left h1 outside VNI 42: {crossed:?}");
    }
    // And red still works.
    assert!(pings(lab.container("r1"), r2, 2));
}

#[test]
fn arp_is_answered_in_ebpf_and_never_reaches_the_underlay() {
    let lab = full_lab();
    let caps: Vec<Capture> = lab.hosts().iter().map(|h| Capture::start(&h.ns, &h.ifname)).collect();
    let before: Vec<u64> = (0..3).map(|h| stat(&lab, h, Direction::FromContainer, Reason::ArpReplied)).collect();
    let (b1, b2, b3) = (lab.container("b1"), lab.container("b2"), lab.container("b3"));
    assert!(pings(b1, b2, 2));
    assert!(pings(b1, b3, 2));
    let frames: Vec<Frame> = caps.into_iter().flat_map(Capture::stop).collect();
    let after: Vec<u64> = (0..3).map(|h| stat(&lab, h, Direction::FromContainer, Reason::ArpReplied)).collect();
    if ebpf() {
        // b1 resolved b2 and b3; b2 and b3 each resolved b1 to answer.
        assert_eq!(after[0] - before[0], 2, "ARP replies on h1");
        assert_eq!(after[1] - before[1], 1, "ARP replies on h2");
        assert_eq!(after[2] - before[2], 1, "ARP replies on h3");
    } else {
        // The VXLAN device's proxy answered from the neighbour entries the agent installed.
        let neigh = b1.ns.netlink(|nl| async move {
            let eth0 = nl.link_by_name("eth0").await.unwrap().unwrap().index;
            nl.neighbours(eth0).await.unwrap()
        });
        for peer in [b2, b3] {
            assert!(neigh.iter().any(|n| n.ip == peer.ip && n.mac == Some(peer.mac.0)), "b1 resolved {}: {neigh:?}", peer.name);
        }
    }
    let packets = decoded(&frames);
    assert!(packets.iter().any(|p| p.vxlan().is_some()), "the captures saw no VXLAN at all");
    let overlay_arp: Vec<_> = packets
        .iter()
        .filter(|p| {
            let outer = p.arp().is_some_and(|a| is_overlay_ip(a.sender_ip) || is_overlay_ip(a.target_ip));
            let inner = p.inner().is_some_and(|i| i.eth.ethertype == ETH_P_ARP);
            outer || inner
        })
        .collect();
    assert!(overlay_arp.is_empty(), "container ARP seen on the underlay: {overlay_arp:?}");
}

#[test]
fn underlay_carries_standard_vxlan() {
    let lab = full_lab();
    let check = |from: &str, to: &str, host: usize, vni: u32, outer_src: Ipv4Addr, outer_dst: Ipv4Addr, ttl: u8| {
        let (a, b) = (lab.container(from), lab.container(to));
        let cap = Capture::start(&lab.host(host).ns, &lab.host(host).ifname);
        assert!(pings(a, b, 2), "{from} -> {to}");
        let packets = decoded(&cap.stop());
        let requests: Vec<_> = packets
            .iter()
            .filter(|p| p.inner().is_some_and(|i| i.is_echo_request_from(a.ip)))
            .collect();
        assert_eq!(requests.len(), 2, "echo requests {from} -> {to} seen on {}", lab.nodes[host].name);
        for p in requests {
            let o = p.ipv4().unwrap();
            assert_eq!((o.src, o.dst), (outer_src, outer_dst), "outer addresses");
            if ebpf() {
                // The kernel VXLAN driver leaves DF off unless `df set`: eBPF mode sets it.
                assert!(o.dont_fragment, "DF set on the outer header");
            }
            assert!(o.checksum_ok, "outer IPv4 checksum");
            assert_eq!(o.ttl, ttl, "outer TTL");
            assert_eq!(o.protocol, 17);
            let u = p.udp().unwrap();
            assert_eq!(u.dst_port, 4789);
            // eBPF: RFC 7348's dynamic range; kernel: its local port range.
            let min = if ebpf() { 49152 } else { 32768 };
            assert!(u.src_port >= min, "source port {} in the dynamic range", u.src_port);
            assert_eq!(u.len, o.total_len - 20, "UDP length");
            if ebpf() {
                // RFC 7348 allows 0 over IPv4; the kernel driver fills one in by default.
                assert_eq!(u.checksum, 0, "outer UDP checksum is 0 (allowed for IPv4)");
            }
            let v = p.vxlan().unwrap();
            assert_eq!(v.flags, 0x08, "only the I flag");
            assert_eq!(v.vni, vni);
            let inner = p.inner().unwrap();
            assert_eq!((inner.eth.src, inner.eth.dst), (a.mac.0, b.mac.0), "inner MACs");
            assert_eq!(inner.eth.ethertype, ETH_P_IP);
            assert_eq!(p.len, 50 + inner.len, "exactly 50 bytes of outer headers");
        }
    };
    check("b1", "b2", 1, 42, H1_IP, H2_IP, 64);
    check("r1", "r2", 1, 43, H1_IP, H2_IP, 64);
    // Routed underlay: h3 is behind the router, which decrements the outer TTL.
    check("b1", "b3", 2, 42, H1_IP, H3_IP, 63);
    check("r3", "r2", 1, 43, H3_IP, H2_IP, 63);
}

#[test]
fn large_tcp_transfers_arrive_intact() {
    let lab = full_lab();
    const SIZE: usize = 64 << 20;
    for (client, server) in [("b1", "b3"), ("b3", "b1"), ("r2", "r1")] {
        let (c, s) = (lab.container(client), lab.container(server));
        let t = tcp_transfer(&s.ns, s.ip, &c.ns, SIZE);
        assert!(t.is_complete(), "{client} -> {server}: {t:?}");
        assert_eq!(t.bytes_received, SIZE, "{client} -> {server}");
        assert_eq!(t.sent_sha256, t.received_sha256, "{client} -> {server}: data corrupted");
    }
    if ebpf() {
        let d = lab.dump(0);
        assert!(d.packets(Direction::FromContainer, Reason::Encapsulated) > 0);
        assert_eq!(d.packets(Direction::FromContainer, Reason::AdjustRoomFailed), 0);
        assert_eq!(d.packets(Direction::FromUnderlay, Reason::Malformed), 0);
    }
}

#[test]
fn endpoint_del_converges_on_other_hosts() {
    let lab = full_lab();
    let (b1, b2) = (lab.container("b1"), lab.container("b2"));
    assert!(pings(b1, b2, 1));
    let out = lab.cli(1, &["endpoint", "del", "--network", "blue", "--ip", &b2.ip.to_string()]);
    out.assert_success();
    let gone = |d: &overlay_agent::datapath::pinned::MapDump| {
        !d.fdb.iter().any(|f| f.mac == b2.mac) && !d.neighbours.iter().any(|n| n.ip == b2.ip)
    };
    for host in [0, 2] {
        lab.wait_for_dump(host, "b2 removed", CONVERGE, gone);
    }
    let h2 = lab.dump(1);
    assert!(gone(&h2) && !h2.endpoints.iter().any(|e| e.ip == b2.ip), "h2 still has b2: {h2:?}");
    let links = lab.host(1).ns.netlink(|nl| async move { nl.links().await.unwrap() });
    let alias = overlay_agent::plumb::alias(&lab.nodes[1].name, BLUE.vni, b2.ip);
    assert!(!links.iter().any(|l| l.alias.as_deref() == Some(alias.as_str())), "b2's veth ({alias}) still exists on h2: {links:?}");
    let r = ping(&b1.ns, b2.ip, 1, Duration::from_millis(500));
    assert_eq!(r.received, 0, "b2 still reachable after endpoint del");
    // The rest of the network is untouched.
    assert!(pings(b1, lab.container("b3"), 1));
}

#[test]
fn late_agent_learns_what_is_already_there() {
    require_root();
    let mut lab = Lab::new(Underlay::routed(), &[BLUE]);
    lab.start_agent(0);
    lab.start_agent(1);
    lab.add_container(0, "b1", BLUE, ip("10.0.10.11"));
    lab.add_container(1, "b2", BLUE, ip("10.0.10.12"));
    lab.wait_converged(CONVERGE);
    lab.start_agent(2);
    let (b1mac, b2mac) = (lab.container("b1").mac, lab.container("b2").mac);
    lab.wait_for_dump(2, "h3 knows b1 and b2", CONVERGE, |d| {
        [b1mac, b2mac].iter().all(|m| d.fdb.iter().any(|f| f.mac == *m && f.kind == "remote"))
    });
    lab.add_container(2, "b3", BLUE, ip("10.0.10.13"));
    lab.wait_converged(CONVERGE);
    assert!(pings(lab.container("b3"), lab.container("b1"), 2));
    assert!(pings(lab.container("b2"), lab.container("b3"), 2));
}

#[test]
fn bad_inputs_are_refused_and_change_nothing() {
    let lab = full_lab();
    let b2 = lab.container("b2");
    let spare = NetNs::new("spare");
    let snapshot = || {
        let links: Vec<String> = lab
            .host(0)
            .ns
            .netlink(|nl| async move { nl.links().await.unwrap() })
            .into_iter()
            .map(|l| l.name)
            .collect();
        let d = lab.dump(0);
        let list = lab.cli(0, &["endpoint", "list", "--json"]).stdout;
        (links, d.fdb, d.neighbours, d.endpoints, list)
    };
    let before = snapshot();
    let b2ip = b2.ip.to_string();
    let b2mac = b2.mac.to_string();
    let add = |extra: &[&str]| {
        let mut args = vec!["endpoint", "add"];
        args.extend_from_slice(extra);
        lab.cli(0, &args)
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--network", "green", "--netns", spare.name(), "--ip", "10.0.10.50"], "unknown network \"green\""),
        (vec!["--network", "blue", "--netns", spare.name(), "--ip", "10.0.20.50"], "is not inside network blue's subnet"),
        (vec!["--network", "blue", "--netns", spare.name(), "--ip", "10.0.10.0"], "network or broadcast address"),
        (vec!["--network", "blue", "--netns", spare.name(), "--ip", "10.0.10.255"], "network or broadcast address"),
        (vec!["--network", "blue", "--netns", spare.name(), "--ip", &b2ip], "already used in network blue (node h2)"),
        (vec!["--network", "blue", "--netns", spare.name(), "--ip", "10.0.10.50", "--mac", &b2mac], "already used in network blue (node h2)"),
        (vec!["--network", "blue", "--netns", spare.name(), "--ip", "10.0.10.50", "--mac", "01:00:5e:00:00:01"], "must be a unicast address"),
        (vec!["--network", "blue", "--netns", "ovt-no-such-netns", "--ip", "10.0.10.50"], "network namespace \"ovt-no-such-netns\" not found"),
        (vec!["--network", "blue", "--netns", spare.name(), "--ip", "10.0.10.50", "--ifname", "lo"], "interface lo already exists"),
        (vec!["--network", "blue", "--netns", spare.name(), "--ip", "10.0.10.50", "--mac", "zz"], "invalid MAC address"),
        (vec!["--network", "blue", "--netns", spare.name(), "--ip", "10.0.10.500"], "invalid value '10.0.10.500'"),
    ];
    for (args, expected) in &cases {
        let out = add(args);
        assert!(!out.success(), "accepted: {args:?}");
        assert!(out.stderr.contains(expected), "{args:?}: expected {expected:?} in {:?}", out.stderr);
    }
    let out = lab.cli(0, &["endpoint", "del", "--network", "blue", "--ip", "10.0.10.99"]);
    assert!(!out.success() && out.stderr.contains("no endpoint 10.0.10.99 in network blue"), "{out:?}");
    // Deleting another host's endpoint is refused too.
    let out = lab.cli(0, &["endpoint", "del", "--network", "blue", "--ip", &b2ip]);
    assert!(!out.success(), "deleted a remote endpoint: {out:?}");
    assert_eq!(snapshot(), before, "a refused request changed something");
    // The spare namespace is untouched: only its loopback.
    let links = spare.netlink(|nl| async move { nl.links().await.unwrap() });
    assert_eq!(links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["lo"]);
}

#[test]
fn bad_config_and_missing_agent_give_clear_errors_and_create_nothing() {
    require_root();
    let lab = Lab::new(Underlay::two_hosts(), &[BLUE]);
    let node = &lab.nodes[0];
    let good = std::fs::read_to_string(&node.config).unwrap();
    let run = |text: &str| {
        std::fs::write(&node.config, text).unwrap();
        lab.cli(0, &["run"])
    };
    let cases = [
        (good.replace("vni = 42", "vni = 0"), "`network[0].vni`"),
        (good.replace("subnet = \"10.0.10.0/24\"", "subnet = \"10.0.10.7/24\""), "`network[0].subnet`"),
        (good.replace("node_name", "nodename"), "unknown field `nodename`"),
        (good.replace("underlay_interface = \"ul0\"", "underlay_interface = \"nope0\""), "underlay interface \"nope0\" not found"),
        (format!("vtep_ip = \"224.0.0.1\"\n{good}"), "`vtep_ip`"),
        (good.replace("subnet = \"10.0.10.0/24\"", "subnet = \"10.0.10.0/24\"\nmtu = 1480"), "set network.mtu to at most 1450"),
    ];
    for (text, expected) in cases {
        let out = run(&text);
        assert!(!out.success(), "agent started with a bad config containing {expected}");
        assert!(out.stderr.contains(expected), "expected {expected:?} in {:?}", out.stderr);
        assert!(!node.bpffs_dir.exists(), "pins created for a bad config ({expected})");
        assert!(!node.state_dir.join("agent.sock").exists(), "socket left for a bad config ({expected})");
        let records = lab.store_records();
        assert!(records.is_empty(), "store records written for a bad config ({expected}): {records:?}");
    }
    std::fs::write(&node.config, good).unwrap();
    let out = lab.cli(0, &["status"]);
    assert!(!out.success() && out.stderr.contains("cannot reach the agent"), "{out:?}");
    let out = lab.cli(0, &["map", "dump"]);
    assert!(!out.success() && out.stderr.contains("no datapath found for node h1"), "{out:?}");
    let out = integration_tests::run_cli(None, &lab.binary, ["--config", "/nonexistent/agent.toml", "status"]);
    assert!(!out.success() && out.stderr.contains("cannot read config file /nonexistent/agent.toml"), "{out:?}");
}

/// `down` (SIGTERM leaves the datapath running for the next start: see restart.rs).
#[test]
fn down_leaves_nothing_behind() {
    let mut lab = full_lab();
    assert!(pings(lab.container("b1"), lab.container("b3"), 1));
    let names: Vec<String> = lab.containers.iter().map(|c| c.ns.name().to_string()).collect();
    assert!(!lab.store_records().is_empty(), "no store records to remove");
    for i in 0..lab.nodes.len() {
        let out = lab.down(i);
        assert!(out.stdout.contains("removed"), "{}", out.stdout);
        let node = &lab.nodes[i];
        assert!(!node.bpffs_dir.exists(), "{} left pins in {}", node.name, node.bpffs_dir.display());
        assert!(!node.state_dir.join("agent.sock").exists(), "{} left its socket", node.name);
        assert!(!node.state_dir.join("state.json").exists(), "{} left its state", node.name);
        let links = lab.host(i).ns.netlink(|nl| async move { nl.links().await.unwrap() });
        // Veths (ovl*), bridges (ovbr*), VXLAN devices (ovvx*): all gone.
        let ours: Vec<_> = links.iter().filter(|l| l.name.starts_with("ov")).collect();
        assert!(ours.is_empty(), "{} left links: {ours:?}", node.name);
        // Only the underlay and loopback remain, with no program attached.
        let out = lab.cli(i, &["map", "dump"]);
        assert!(!out.success(), "pins still readable after down on {}", node.name);
        // A second down finds nothing to do and succeeds.
        lab.down(i);
    }
    // Containers lost their interface with the veth: only loopback remains.
    for c in &lab.containers {
        let links = c.ns.netlink(|nl| async move { nl.links().await.unwrap() });
        assert_eq!(links.len(), 1, "{} still has {links:?}", c.name);
    }
    let records = lab.store_records();
    assert!(records.is_empty(), "records left in the store: {records:?}");
    let bpffs_root = lab.bpffs_root.clone();
    drop(lab);
    assert!(!bpffs_root.exists(), "the lab's bpffs directory survived");
    for name in names {
        assert!(!integration_tests::ns::netns_exists(&name), "namespace {name} survived");
    }
}

/// An L3 network (`mode = "l3"`): containers on two hosts reach each other through their
/// gateways, a third host that starts later gets its node subnet and the others' routes,
/// and bulk data crosses the routed underlay intact. (Also in the VM matrix.)
#[test]
fn l3_routed_pairs_and_a_late_host() {
    require_root();
    let mut lab = Lab::new(Underlay::routed(), &[ROUTED]);
    lab.start_agent(0);
    lab.start_agent(1);
    let a = lab.add_allocated(0, "la", ROUTED);
    let b = lab.add_allocated(1, "lb", ROUTED);
    let routes = |lab: &Lab, i: usize, n: usize| {
        lab.wait_for_dump(i, &format!("{n} remote routes"), Duration::from_secs(5), |d| {
            d.routes.iter().filter(|r| r.vni == ROUTED.vni && r.kind == "remote").count() == n
        });
    };
    routes(&lab, 0, 1);
    routes(&lab, 1, 1);
    assert!(pings(lab.container("la"), lab.container("lb"), 2), "{a} -> {b}");
    assert!(pings(lab.container("lb"), lab.container("la"), 2), "{b} -> {a}");
    // A host that joins later.
    lab.start_agent(2);
    let c = lab.add_allocated(2, "lc", ROUTED);
    for i in 0..3 {
        routes(&lab, i, 2);
    }
    for (x, y) in [("lc", "la"), ("lc", "lb"), ("la", "lc")] {
        assert!(pings(lab.container(x), lab.container(y), 2), "{x} -> {y}");
    }
    let t = tcp_transfer(&lab.container("lc").ns, c, &lab.container("la").ns, 16 << 20);
    assert!(t.is_complete(), "{t:?}");
    assert_eq!(t.sent_sha256, t.received_sha256, "data corrupted");
}
