//! L3 routed networks (`mode = "l3"`, flannel's design, seeds/003): each host routes a
//! node subnet allocated from the store, containers reach other hosts' containers
//! through their gateway, hosts' tables grow with hosts rather than containers. Run
//! once per datapath by `cargo xtask test` (`OVERLAY_TEST_DATAPATH`).

use std::{net::Ipv4Addr, time::Duration};

use integration_tests::{
    Capture, NetNs,
    lab::{Lab, ROUTED, ROUTED2, suite_mode},
    ping, require_root, tcp_transfer,
    topo::{Underlay, add_route},
};
use ipnet::Ipv4Net;
use overlay_agent::config::DatapathMode;
use overlay_common::{Direction, Reason};

const CONVERGE: Duration = Duration::from_secs(5);

fn ebpf() -> bool {
    suite_mode() != DatapathMode::Kernel
}

/// Host `i`'s node subnet in network `name`, from `status`.
fn node_subnet(lab: &Lab, i: usize, name: &str) -> Ipv4Net {
    let s = lab.status(i);
    let net = s["networks"].as_array().unwrap().iter().find(|n| n["name"] == name).unwrap_or_else(|| panic!("{s}"));
    net["node_subnet"].as_str().unwrap_or_else(|| panic!("no node subnet: {net}")).parse().unwrap()
}

fn nth(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

/// Waits until host `i`'s datapath routes `count` remote node subnets of `vni`.
fn wait_routes(lab: &Lab, i: usize, vni: u32, count: usize) {
    lab.wait_for_dump(i, &format!("{count} routes of VNI {vni}"), CONVERGE, |d| {
        d.routes.iter().filter(|r| r.vni == vni && r.kind == "remote").count() == count
    });
}

fn pings(from: &NetNs, to: Ipv4Addr) -> bool {
    ping(from, to, 2, Duration::from_secs(2)).received == 2
}

/// The TTL of the echo requests from `src` that reached `dst`'s eth0 while `src` pinged it.
fn ttl_seen(src: &NetNs, src_ip: Ipv4Addr, dst: &NetNs, dst_ip: Ipv4Addr) -> u8 {
    let cap = Capture::start(dst, "eth0");
    assert!(pings(src, dst_ip), "{src_ip} -> {dst_ip}");
    let frames = cap.stop();
    let ttls: Vec<u8> = frames
        .iter()
        .filter_map(|f| f.decode().ok())
        .filter(|p| p.is_echo_request_from(src_ip))
        .filter_map(|p| p.ipv4().map(|ip| ip.ttl))
        .collect();
    assert!(!ttls.is_empty(), "the capture on {dst_ip}'s eth0 saw none of {src_ip}'s echo requests ({} frames)", frames.len());
    assert!(ttls.iter().all(|t| *t == ttls[0]), "TTLs differ: {ttls:?}");
    ttls[0]
}

#[test]
fn node_subnets_are_allocated_once_and_containers_are_routed_between_them() {
    require_root();
    let mut lab = Lab::new(Underlay::routed(), &[ROUTED]);
    lab.start_all();
    let subnets: Vec<Ipv4Net> = (0..3).map(|i| node_subnet(&lab, i, ROUTED.name)).collect();
    let cluster: Ipv4Net = ROUTED.subnet.parse().unwrap();
    for (i, s) in subnets.iter().enumerate() {
        assert!(cluster.contains(s) && s.prefix_len() == 24, "host {i}: {s}");
        assert_eq!(subnets.iter().filter(|o| *o == s).count(), 1, "allocated twice: {subnets:?}");
    }

    // Addresses come from the host's node subnet, from .2 (.0 is the node's address on
    // the overlay, .1 the gateway).
    let a1 = lab.add_allocated(0, "a1", ROUTED);
    let a2 = lab.add_allocated(0, "a2", ROUTED);
    let b1 = lab.add_allocated(1, "b1", ROUTED);
    let c1 = lab.add_allocated(2, "c1", ROUTED);
    assert_eq!((a1, a2, b1, c1), (nth(subnets[0], 2), nth(subnets[0], 3), nth(subnets[1], 2), nth(subnets[2], 2)));
    for i in 0..3 {
        wait_routes(&lab, i, ROUTED.vni, 2);
    }

    // Every host's status lists the three node subnets with their router MACs.
    let s = lab.status(0);
    let listed: Vec<&str> = s["subnets"].as_array().unwrap().iter().map(|x| x["subnet"].as_str().unwrap()).collect();
    assert_eq!(listed.len(), 3, "{s}");

    let (na1, na2, nb1, nc1) = (&lab.container("a1").ns, &lab.container("a2").ns, &lab.container("b1").ns, &lab.container("c1").ns);
    for (x, xip) in [(na1, a1), (na2, a2), (nb1, b1), (nc1, c1)] {
        for y in [a1, a2, b1, c1].into_iter().filter(|y| *y != xip) {
            assert!(pings(x, y), "{xip} -> {y}");
        }
    }
    // Two routers on the way between hosts (this one's and the other's), as through
    // seeds/003's Linux hosts; none on the same host (one L2 segment there).
    assert_eq!(ttl_seen(na1, a1, nb1, b1), 62, "a1 -> b1");
    assert_eq!(ttl_seen(nc1, c1, na2, a2), 62, "c1 -> a2");
    assert_eq!(ttl_seen(na1, a1, na2, a2), 64, "a1 -> a2 on one host");

    // Bulk data across the routed underlay, intact.
    let t = tcp_transfer(nc1, c1, na1, 64 << 20);
    assert!(t.is_complete(), "{t:?}");
    assert_eq!(t.sent_sha256, t.received_sha256, "data corrupted");

    // The tables grow with hosts: host 0 knows b1 and c1 only through their hosts'
    // subnets, no neighbour or FDB entry of theirs.
    let d = lab.dump(0);
    for far in [b1, c1] {
        assert!(!d.neighbours.iter().any(|n| n.ip == far), "{far} in host 0's neighbours: {d:#?}");
    }
    let far_macs = [lab.container("b1").mac, lab.container("c1").mac];
    assert!(!d.fdb.iter().any(|f| far_macs.contains(&f.mac)), "{d:#?}");
    let routed: Vec<Ipv4Net> = d.routes.iter().filter(|r| r.kind == "remote").map(|r| r.subnet).collect();
    assert!(routed.contains(&subnets[1]) && routed.contains(&subnets[2]), "{d:#?}");
    if ebpf() {
        assert!(d.packets(Direction::FromContainer, Reason::Encapsulated) > 0, "{d:#?}");
        assert!(d.packets(Direction::FromUnderlay, Reason::Decapsulated) > 0, "{d:#?}");
    }
}

#[test]
fn a_restarted_agent_keeps_its_node_subnet_and_a_host_gone_down_is_no_longer_routed() {
    require_root();
    let mut lab = Lab::new(Underlay::routed(), &[ROUTED]);
    lab.start_all();
    let before = node_subnet(&lab, 1, ROUTED.name);
    let a = lab.add_allocated(0, "a", ROUTED);
    let b = lab.add_allocated(1, "b", ROUTED);
    wait_routes(&lab, 0, ROUTED.vni, 2);
    assert!(pings(&lab.container("a").ns, b));

    // SIGTERM and start: the same subnet, traffic goes on.
    lab.stop_agent(1);
    lab.start_agent(1);
    assert_eq!(node_subnet(&lab, 1, ROUTED.name), before);
    assert!(pings(&lab.container("b").ns, a));

    // `down` on host 2 withdraws its subnet: the others stop routing it.
    let gone = node_subnet(&lab, 2, ROUTED.name);
    lab.down(2).assert_success();
    for i in [0, 1] {
        wait_routes(&lab, i, ROUTED.vni, 1);
        assert!(!lab.dump(i).routes.iter().any(|r| r.subnet == gone), "host {i} still routes {gone}");
    }
}

#[test]
fn containers_of_two_l3_networks_do_not_reach_each_other() {
    require_root();
    let mut lab = Lab::new(Underlay::two_hosts(), &[ROUTED, ROUTED2]);
    lab.start_all();
    let x = lab.add_allocated(0, "x", ROUTED2);
    let b = lab.add_allocated(1, "b", ROUTED);
    let y = lab.add_allocated(1, "y", ROUTED2);
    wait_routes(&lab, 0, ROUTED.vni, 1);
    wait_routes(&lab, 0, ROUTED2.vni, 1);
    let xs = &lab.container("x").ns;
    assert!(pings(xs, y), "x -> y within routed2");
    // x tries the other network through its own gateway.
    let gw = nth(node_subnet(&lab, 0, ROUTED2.name), 1);
    add_route(xs, ROUTED.subnet, gw);
    assert_eq!(ping(xs, b, 3, Duration::from_secs(1)).received, 0, "routed2 reached routed");
    if ebpf() {
        assert!(lab.dump(0).packets(Direction::FromContainer, Reason::NoRoute) >= 3);
    }
    let _ = x;
}

/// Host 1 without an agent, built with seeds/003's routed recipe over netlink: a VXLAN
/// device with the node's address as /32 and its own MAC, a bridge holding the gateway
/// address, a container behind it, and for the agent's host a route `SUBNET via
/// NODE-ADDRESS dev vxlan onlink` with the neighbour and FDB entries it needs.
struct RecipeHost {
    container: NetNs,
    ip: Ipv4Addr,
    subnet: Ipv4Net,
    mac: [u8; 6],
}

fn recipe_host(lab: &Lab, peer_subnet: Ipv4Net, peer_mac: [u8; 6], peer_vtep: Ipv4Addr) -> RecipeHost {
    use integration_tests::topo::{H2_IP, add_addr, link_veth};
    use overlay_agent::netlink::{LinkChange, VxlanSpec};
    let host = &lab.host(1).ns;
    let subnet: Ipv4Net = "10.50.9.0/24".parse().unwrap();
    let (node, gw, ip) = (nth(subnet, 0), nth(subnet, 1), nth(subnet, 2));
    let mac = [0x0a, 0x50, 0x09, 0x00, 0x00, 0x01];
    let container = NetNs::new("recipe");
    link_veth(host, "veth1", &container, "eth0", 1450);
    add_addr(&container, "eth0", &format!("{ip}/24"));
    add_route(&container, "0.0.0.0/0", gw);
    host.sysctl("net.ipv4.ip_forward", "1");
    host.netlink(|nl| async move {
        let ul = nl.link_by_name("ul0").await.unwrap().unwrap().index;
        // ip link add vxlan100 type vxlan id 50 dstport 4789 local H2 dev ul0
        nl.create_vxlan(&VxlanSpec {
            name: "vxlan100".into(),
            vni: 50,
            port: 4789,
            local: Some(H2_IP),
            underlay_index: Some(ul),
            learning: false,
            proxy: false,
            mtu: Some(1450),
        })
        .await
        .unwrap();
        let vx = nl.link_by_name("vxlan100").await.unwrap().unwrap().index;
        nl.set_link(vx, LinkChange { mac: Some(mac), up: Some(true), ..Default::default() }).await.unwrap();
        nl.add_address(vx, node, 32).await.unwrap();
        nl.create_bridge("br100").await.unwrap();
        let br = nl.link_by_name("br100").await.unwrap().unwrap().index;
        let veth = nl.link_by_name("veth1").await.unwrap().unwrap().index;
        nl.set_link(veth, LinkChange { master: Some(br), up: Some(true), ..Default::default() }).await.unwrap();
        nl.set_link(br, LinkChange { up: Some(true), ..Default::default() }).await.unwrap();
        nl.add_address(br, gw, 24).await.unwrap();
        // ip route add PEER via PEER-NODE dev vxlan100 onlink; ip neigh add PEER-NODE
        // lladdr PEER-MAC dev vxlan100; bridge fdb append PEER-MAC dst PEER-VTEP dev vxlan100
        let peer_node = peer_subnet.network();
        nl.route_replace_onlink(peer_node, peer_subnet.prefix_len(), peer_node, vx).await.unwrap();
        nl.neigh_replace(vx, peer_node, peer_mac).await.unwrap();
        nl.fdb_replace(vx, peer_mac, peer_vtep, None, None).await.unwrap();
    });
    RecipeHost { container, ip, subnet, mac }
}

#[test]
fn a_host_built_with_the_routed_recipe_joins_with_remote_add_subnet() {
    require_root();
    let mut lab = Lab::new(Underlay::two_hosts(), &[ROUTED]);
    lab.start_agent(0);
    let a = lab.add_allocated(0, "a", ROUTED);
    // What `status` tells the person configuring the other host: the node subnet and
    // the router MAC for their neighbour entry.
    let s = lab.status(0);
    let net = &s["networks"][0];
    let ours: Ipv4Net = net["node_subnet"].as_str().unwrap().parse().unwrap();
    let router_mac: overlay_agent::mac::MacAddr = net["router_mac"].as_str().unwrap().parse().unwrap();
    let plain = recipe_host(&lab, ours, router_mac.0, lab.host(0).ip);
    let mac = overlay_agent::mac::MacAddr(plain.mac).to_string();
    let (subnet, vtep) = (plain.subnet.to_string(), lab.host(1).ip.to_string());
    let add = ["remote", "add", "--network", "routed", "--subnet", &subnet, "--vtep", &vtep, "--mac", &mac];
    lab.cli(0, &add).assert_success();
    wait_routes(&lab, 0, ROUTED.vni, 1);

    let an = &lab.container("a").ns;
    assert!(pings(an, plain.ip), "agent container -> recipe host container");
    assert!(pings(&plain.container, a), "recipe host container -> agent container");
    assert_eq!(ttl_seen(an, a, &plain.container, plain.ip), 62);
    assert_eq!(ttl_seen(&plain.container, plain.ip, an, a), 62);
    for (server, sip, client) in [(&plain.container, plain.ip, an), (an, a, &plain.container)] {
        let t = tcp_transfer(server, sip, client, 16 << 20);
        assert!(t.is_complete() && t.sent_sha256 == t.received_sha256, "{t:?}");
    }

    // An overlapping declaration is refused, naming the holder.
    let overlap = lab.cli(0, &["remote", "add", "--network", "routed", "--subnet", "10.50.9.128/25", "--vtep", &vtep, "--mac", &mac]);
    assert!(!overlap.success() && overlap.stderr.contains("already routed by"), "{overlap:?}");
    // An L2-style declaration in an L3 network says what to do instead.
    let wrong = lab.cli(0, &["remote", "add", "--network", "routed", "--ip", "10.50.9.5", "--vtep", &vtep, "--mac", &mac]);
    assert!(!wrong.success() && wrong.stderr.contains("--subnet"), "{wrong:?}");

    lab.cli(0, &["remote", "del", "--network", "routed", "--subnet", &subnet]).assert_success();
    wait_routes(&lab, 0, ROUTED.vni, 0);
    assert_eq!(ping(an, plain.ip, 1, Duration::from_millis(500)).received, 0);
    let again = lab.cli(0, &["remote", "del", "--network", "routed", "--subnet", &subnet]);
    assert!(!again.success() && again.stderr.contains("no static subnet"), "{again:?}");
}

#[test]
fn ebpf_and_kernel_hosts_route_one_l3_network_together() {
    require_root();
    let mut lab = Lab::new(Underlay::routed(), &[ROUTED]);
    lab.set_mode(0, DatapathMode::Ebpf);
    lab.set_mode(1, DatapathMode::Kernel);
    lab.set_mode(2, DatapathMode::Ebpf);
    lab.start_all();
    let ips: Vec<Ipv4Addr> = (0..3).map(|i| lab.add_allocated(i, &format!("m{i}"), ROUTED)).collect();
    for i in 0..3 {
        wait_routes(&lab, i, ROUTED.vni, 2);
    }
    for i in 0..3 {
        for (j, dst) in ips.iter().enumerate().filter(|(j, _)| *j != i) {
            assert!(pings(&lab.container(&format!("m{i}")).ns, *dst), "m{i} -> m{j}");
        }
    }
    let (m0, m1) = (&lab.container("m0").ns, &lab.container("m1").ns);
    assert_eq!(ttl_seen(m0, ips[0], m1, ips[1]), 62, "eBPF host -> kernel host");
    assert_eq!(ttl_seen(m1, ips[1], m0, ips[0]), 62, "kernel host -> eBPF host");
    let t = tcp_transfer(m1, ips[1], m0, 16 << 20);
    assert!(t.is_complete() && t.sent_sha256 == t.received_sha256, "{t:?}");
}
