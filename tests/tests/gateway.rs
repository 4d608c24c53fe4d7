//! Containers and the world beyond their host: every network's gateway (L2: one anycast
//! address on every host; L3: the node subnet's first), source NAT to the host's
//! address on the way out, ports published at the host's address, isolation between
//! networks through the gateway, and nothing left after `down`. Run once per datapath
//! by `cargo xtask test`.
//!
//! The routed underlay's third host (203.0.113.3, behind the router) runs no agent: it
//! stands for the outside world.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    process::Command,
    time::Duration,
};

use integration_tests::{
    Capture, NetNs,
    lab::{BLUE, Lab, NetworkDef, RED, ROUTED, suite_mode},
    ping, require_root, tcp_transfer,
    topo::{H1_IP, H2_IP, H3_IP, Underlay},
};
use overlay_agent::config::DatapathMode;
use overlay_common::{Direction, Reason};

const OUTSIDE: usize = 2;

fn pings(from: &NetNs, to: Ipv4Addr) -> bool {
    ping(from, to, 2, Duration::from_secs(2)).received == 2
}

fn gateway_of(lab: &Lab, host: usize, net: NetworkDef) -> Ipv4Addr {
    let s = lab.status(host);
    let n = s["networks"].as_array().unwrap().iter().find(|n| n["name"] == net.name).unwrap_or_else(|| panic!("{s}"));
    n["gateway"].as_str().unwrap_or_else(|| panic!("no gateway: {n}")).parse().unwrap()
}

fn nft_tables(ns: &NetNs) -> String {
    let out = ns.run(|| Command::new("nft").args(["list", "tables"]).output()).expect("running nft");
    assert!(out.status.success(), "nft list tables: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One TCP exchange: a server on `server_ns` port `port` answers with the peer address it
/// saw; the client in `client_ns` connects to `to`.
fn tcp_hello(server_ns: &NetNs, port: u16, client_ns: &NetNs, to: SocketAddrV4) -> Result<String, std::io::Error> {
    let listener = server_ns.run(|| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))).expect("listening");
    listener.set_nonblocking(true).expect("non-blocking listener");
    std::thread::scope(|s| {
        // Gives up after a few seconds (when the client cannot reach it).
        let server = s.spawn(|| {
            let deadline = std::time::Instant::now() + Duration::from_secs(4);
            let (mut c, peer) = loop {
                match listener.accept() {
                    Ok(x) => break x,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(e),
                }
            };
            c.set_nonblocking(false)?;
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf)?;
            c.write_all(format!("{peer}").as_bytes())
        });
        let answer = client_ns.run(|| -> Result<String, std::io::Error> {
            let mut c = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))?;
            c.set_read_timeout(Some(Duration::from_secs(3)))?;
            c.write_all(b"hello")?;
            let mut out = String::new();
            c.read_to_string(&mut out)?;
            Ok(out)
        });
        if answer.is_ok() {
            server.join().expect("server thread").expect("server side");
        }
        answer
    })
}

/// One UDP exchange through a published port: the container echoes the datagram.
fn udp_echo(server_ns: &NetNs, port: u16, client_ns: &NetNs, to: SocketAddrV4) -> Option<Vec<u8>> {
    let server = server_ns.run(|| UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))).expect("binding");
    server.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let client = client_ns.run(|| UdpSocket::bind("0.0.0.0:0")).expect("binding");
    client.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    client.send_to(b"ping over udp", to).unwrap();
    let mut buf = [0u8; 64];
    let (n, peer) = server.recv_from(&mut buf).ok()?;
    server.send_to(&buf[..n], peer).unwrap();
    let (n, _) = client.recv_from(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

fn world_and_back(net: NetworkDef) {
    require_root();
    let mut lab = Lab::new(Underlay::routed(), &[net, RED]);
    lab.start_agent(0);
    lab.start_agent(1);

    // The gateway answers on the container's own host.
    let c = lab.add_allocated(0, "c", net);
    let r = lab.add_allocated(0, "r", RED);
    let world = &lab.host(OUTSIDE).ns;
    let gw = gateway_of(&lab, 0, net);
    assert!(pings(&lab.container("c").ns, gw), "{} -> its gateway {gw}", net.name);

    // Out to the world: the world sees the host's address, never the container's.
    let cap = Capture::start(world, "ul0");
    assert!(pings(&lab.container("c").ns, H3_IP), "{} -> the outside world", net.name);
    let frames = cap.stop();
    let sources: Vec<Ipv4Addr> =
        frames.iter().filter_map(|f| f.decode().ok()).filter(|p| p.icmp().is_some()).filter_map(|p| p.ipv4().map(|ip| ip.src)).collect();
    assert!(sources.contains(&H1_IP), "the outside saw no echo request from the host's address: {sources:?}");
    assert!(!sources.contains(&c), "the container's address leaked to the outside: {sources:?}");
    let t = tcp_transfer(world, H3_IP, &lab.container("c").ns, 16 << 20);
    assert!(t.is_complete() && t.sent_sha256 == t.received_sha256, "{t:?}");

    // A port published on the other host, reached from the world at that host's address;
    // the container sees the real client.
    let ns = NetNs::new("pub");
    let out = lab.cli(1, &["endpoint", "add", "--network", net.name, "--netns", ns.name(), "--publish", "8080:80/tcp", "-p", "5353:53/udp", "--json"]);
    out.assert_success();
    let info: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let p: Ipv4Addr = info["ip"].as_str().unwrap().parse().unwrap();
    assert_eq!(info["publish"].as_array().map(Vec::len), Some(2), "{info}");
    let seen = tcp_hello(&ns, 80, world, SocketAddrV4::new(H2_IP, 8080)).expect("TCP to the published port");
    assert!(seen.starts_with(&format!("{H3_IP}:")), "the container saw {seen}");
    assert_eq!(udp_echo(&ns, 53, world, SocketAddrV4::new(H2_IP, 5353)).as_deref(), Some(&b"ping over udp"[..]));
    // And from a container on another host, through its gateway and the underlay.
    let seen = tcp_hello(&ns, 80, &lab.container("c").ns, SocketAddrV4::new(H2_IP, 8080)).expect("TCP from a container");
    assert!(seen.starts_with(&format!("{H1_IP}:")), "masqueraded client expected, the container saw {seen}");
    // A host port is published once.
    let spare = NetNs::new("spare");
    let taken = lab.cli(1, &["endpoint", "add", "--network", net.name, "--netns", spare.name(), "--publish", "8080:81/tcp"]);
    assert!(!taken.success() && taken.stderr.contains("already published by"), "{taken:?}");
    let bad = lab.cli(1, &["endpoint", "add", "--network", net.name, "--netns", spare.name(), "--publish", "8080"]);
    assert!(!bad.success() && bad.stderr.contains("HOST_PORT:CONTAINER_PORT"), "{bad:?}");
    // Removed with the endpoint.
    lab.cli(1, &["endpoint", "del", "--network", net.name, "--ip", &p.to_string()]).assert_success();
    assert!(tcp_hello(&ns, 80, world, SocketAddrV4::new(H2_IP, 8080)).is_err(), "the published port outlived its endpoint");

    // Isolation: a container of another network, through its own gateway, does not
    // reach this one.
    assert!(r != c);
    assert!(pings(&lab.container("r").ns, H3_IP), "red -> the outside world");
    assert_eq!(ping(&lab.container("r").ns, c, 3, Duration::from_secs(1)).received, 0, "red reached {}", net.name);
    if suite_mode() != DatapathMode::Kernel {
        let d = lab.dump(0);
        assert!(d.packets(Direction::FromContainer, Reason::NoRoute) >= 3, "{d:#?}");
        assert!(d.packets(Direction::FromContainer, Reason::PassToHost) > 0, "{d:#?}");
    }

    // `down` leaves no table behind.
    assert!(nft_tables(&lab.host(0).ns).contains("overlay_agent"), "no table while running");
    lab.down(0).assert_success();
    assert!(!nft_tables(&lab.host(0).ns).contains("overlay_agent"), "table left after down");
}

#[test]
fn l2_network_containers_reach_the_world_and_publish_ports() {
    world_and_back(BLUE);
}

#[test]
fn l3_network_containers_reach_the_world_and_publish_ports() {
    world_and_back(ROUTED);
}
