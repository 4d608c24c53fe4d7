//! Self-tests of the harness: the underlays carry traffic, the traffic tools
//! see it, children land in the right namespace, and nothing is left behind.
//! Run as root: `cargo test -p integration-tests -- --test-threads=1`.

use std::{collections::BTreeSet, fs, os::unix::fs::PermissionsExt, path::Path, time::Duration};

use integration_tests::{
    AgentProcess, Capture, Direction, NetNs, Underlay,
    ns::netns_exists,
    packet::{ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST},
    require_root, run_cli,
    topo::{H1_IP, H2_IP, H3_IP, ROUTER_IP_A, ROUTER_IP_B},
    traffic::{PingOptions, TransferOptions, ping, ping_with, tcp_transfer, tcp_transfer_with},
};
use overlay_agent::netlink::{Netlink, netns::block_on_in_netns};

const TIMEOUT: Duration = Duration::from_secs(2);

/// Names of the links of the test process's own (root) namespace.
fn root_links() -> BTreeSet<String> {
    // On a helper thread entering the namespace this process started in.
    block_on_in_netns(Path::new("/proc/self/ns/net"), || async {
        let nl = Netlink::open().await.unwrap();
        nl.links()
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect()
    })
    .unwrap()
}

#[test_log::test]
fn two_hosts_ping() {
    require_root();
    let u = Underlay::two_hosts();
    assert_eq!(u.h1.link().mtu, 1500);
    assert!(u.h1.link().up);
    assert!(u.h2.ns.link("lo").up);

    let r = ping(&u.h1.ns, H2_IP, 3, TIMEOUT);
    assert_eq!((r.sent, r.received, r.send_errors), (3, 3, 0), "{r:?}");
    let r = ping(&u.h2.ns, H1_IP, 2, TIMEOUT);
    assert_eq!((r.sent, r.received), (2, 2), "{r:?}");

    // Nothing answers outside the segment, and lo works.
    let r = ping(&u.h1.ns, H3_IP, 1, Duration::from_millis(300));
    assert_eq!(r.received, 0, "{r:?}");
    let r = ping(&u.h1.ns, H1_IP, 1, TIMEOUT);
    assert_eq!(r.received, 1, "{r:?}");
}

#[test_log::test]
fn mtu_and_dont_fragment() {
    require_root();
    let u = Underlay::builder().mtu(1400).two_hosts();
    assert_eq!(u.h2.link().mtu, 1400);
    // 1372 + 8 ICMP + 20 IP = 1400: fits.
    let fits = PingOptions {
        count: 1,
        payload_len: 1372,
        dont_fragment: true,
        ..PingOptions::default()
    };
    let r = ping_with(&u.h1.ns, H2_IP, &fits);
    assert_eq!((r.sent, r.received), (1, 1), "{r:?}");
    // One byte more with DF: the kernel refuses to send it.
    let too_big = PingOptions {
        payload_len: 1373,
        ..fits
    };
    let r = ping_with(&u.h1.ns, H2_IP, &too_big);
    assert_eq!((r.sent, r.received, r.send_errors), (1, 0, 1), "{r:?}");
}

#[test_log::test]
fn routed_pings() {
    require_root();
    let u = Underlay::routed();
    let h3 = u.h3();
    for (from, to) in [
        (&u.h1.ns, H3_IP),
        (&h3.ns, H2_IP),
        (&u.h1.ns, H2_IP),
        (&u.h2.ns, ROUTER_IP_A),
        (&h3.ns, ROUTER_IP_B),
    ] {
        let r = ping(from, to, 2, TIMEOUT);
        assert!(r.all_received(), "{} -> {to}: {r:?}", from.name());
    }
    let bridge = u.router().link("br0");
    assert_eq!(bridge.kind.as_deref(), Some("bridge"));
    assert_eq!(u.router().link("h1p").master, Some(bridge.index));
    assert_eq!(u.router().link("h2p").master, Some(bridge.index));
    assert_eq!(u.router().link("h3p").master, None);
}

#[test_log::test]
fn tcp_8_mib() {
    require_root();
    let u = Underlay::two_hosts();
    let bytes = 8 * 1024 * 1024;
    let r = tcp_transfer(&u.h2.ns, H2_IP, &u.h1.ns, bytes);
    assert!(r.client_error.is_none(), "{r:?}");
    assert!(r.server_error.is_none(), "{r:?}");
    assert_eq!(r.bytes_sent, bytes);
    assert_eq!(r.bytes_received, bytes);
    assert_eq!(r.received_sha256, r.sent_sha256);
    assert!(r.is_complete());
}

#[test_log::test]
fn tcp_routed_and_unreachable() {
    require_root();
    let u = Underlay::routed();
    let r = tcp_transfer(&u.h3().ns, H3_IP, &u.h1.ns, 1024 * 1024);
    assert!(r.is_complete(), "{r:?}");

    // A client with no route to the server: reported, not panicked on, and
    // bounded by the timeout.
    let lonely = NetNs::new("lonely");
    let options = TransferOptions {
        timeout: Duration::from_secs(1),
        ..TransferOptions::default()
    };
    let r = tcp_transfer_with(&u.h2.ns, H2_IP, &lonely, 1024, &options);
    assert!(!r.is_complete());
    assert!(r.client_error.is_some(), "{r:?}");
    assert_eq!(
        r.server_error.as_ref().map(std::io::Error::kind),
        Some(std::io::ErrorKind::TimedOut),
        "{r:?}"
    );
    assert_eq!(r.bytes_received, 0);
    assert!(r.elapsed < Duration::from_secs(5), "{r:?}");
}

#[test_log::test]
fn capture_sees_echo() {
    require_root();
    let u = Underlay::two_hosts();
    let capture = Capture::start(&u.h2.ns, "ul0");
    let r = ping(&u.h1.ns, H2_IP, 3, TIMEOUT);
    assert!(r.all_received(), "{r:?}");
    let frames = capture.stop();

    let decoded: Vec<_> = frames
        .iter()
        .map(|f| (f.direction, f.decode().expect("decodable")))
        .collect();
    let requests = decoded
        .iter()
        .filter(|(dir, p)| *dir == Direction::Incoming && p.is_echo_request_from(H1_IP))
        .count();
    let replies = decoded
        .iter()
        .filter(|(dir, p)| {
            *dir == Direction::Outgoing
                && p.ipv4()
                    .is_some_and(|ip| ip.src == H2_IP && ip.dst == H1_IP)
                && p.icmp().is_some_and(|icmp| icmp.kind == ICMP_ECHO_REPLY)
        })
        .count();
    assert_eq!((requests, replies), (3, 3), "{decoded:#?}");
    let h1_mac = u.h1.mac();
    for (_, p) in decoded
        .iter()
        .filter(|(_, p)| p.icmp().is_some_and(|i| i.kind == ICMP_ECHO_REQUEST))
    {
        assert_eq!(p.eth.src, h1_mac);
        assert_eq!(p.eth.dst, u.h2.mac());
        assert!(p.ipv4().unwrap().checksum_ok);
    }
    // Only frames of ul0 (nothing from lo, whose frames have zero MACs), and
    // nothing but the pings and ARP: the namespaces have no IPv6 chatter.
    assert!(
        decoded.iter().all(|(_, p)| p.eth.src != [0; 6]),
        "{decoded:#?}"
    );
    assert!(
        decoded
            .iter()
            .all(|(_, p)| p.icmp().is_some() || p.arp().is_some()),
        "{decoded:#?}"
    );
    assert_eq!(
        decoded.iter().filter(|(_, p)| p.icmp().is_some()).count(),
        6,
        "{decoded:#?}"
    );
}

#[test_log::test]
fn capture_sees_gso_super_packets_whole() {
    require_root();
    let u = Underlay::two_hosts();
    let capture = Capture::start(&u.h1.ns, "ul0");
    let r = tcp_transfer(&u.h2.ns, H2_IP, &u.h1.ns, 2 * 1024 * 1024);
    assert!(r.is_complete(), "{r:?}");
    let frames = capture.stop();
    assert!(frames.iter().all(|f| f.truncated_from.is_none()));
    let largest = frames
        .iter()
        .filter(|f| f.direction == Direction::Outgoing)
        .map(|f| f.data.len())
        .max();
    // veth does TSO, so the sender's tap sees packets bigger than the MTU.
    assert!(
        largest.unwrap_or(0) > 1514,
        "largest outgoing frame: {largest:?}"
    );
}

/// A stand-in for the agent: prints its arguments and its namespace's links,
/// then sleeps until SIGTERM.
const FAKE_AGENT: &str = "#!/bin/sh\necho \"args: $*\"\ncat /proc/net/dev\nexec sleep 60\n";

#[test_log::test]
fn child_processes_run_in_the_namespace() {
    require_root();
    let ns = NetNs::new("cli");
    let out = run_cli(
        Some(&ns),
        Path::new("/bin/sh"),
        ["-c", "cat /proc/net/dev; echo err >&2"],
    );
    out.assert_success();
    let links: Vec<&str> = out
        .stdout
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(links, ["lo"], "{out:?}");
    assert_eq!(out.stderr, "err\n");
    let out = run_cli(None, Path::new("/bin/sh"), ["-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));

    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("fake-agent");
    fs::write(&binary, FAKE_AGENT).unwrap();
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("agent.toml");
    fs::write(&config, "").unwrap();
    let mut agent = AgentProcess::spawn(&ns, &binary, &config);
    assert_eq!(agent.log_path(), dir.path().join("agent.log"));
    agent.wait_until("the fake agent's output", Duration::from_secs(10), || {
        fs::read_to_string(dir.path().join("agent.log")).is_ok_and(|log| log.contains("lo:"))
    });
    assert!(agent.is_running());
    let status = agent.stop();
    assert!(!status.success(), "killed by SIGTERM: {status:?}");
    assert!(!agent.is_running());
    let log = agent.log();
    assert!(
        log.contains(&format!("args: run --config {}", config.display())),
        "{log}"
    );
    assert!(!log.contains("eth0"), "{log}");
}

#[test_log::test]
fn nothing_is_left_behind() {
    require_root();
    let before = root_links();
    let u = Underlay::routed();
    let names = u.netns_names();
    assert_eq!(names.len(), 4);
    assert!(names.iter().all(|n| netns_exists(n)));
    drop(u);
    for name in &names {
        assert!(!netns_exists(name), "{name} left behind");
    }

    // Also when the test panics half-way.
    let mut names = Vec::new();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let u = Underlay::two_hosts();
        names = u.netns_names();
        panic!("deliberate");
    }));
    assert!(panicked.is_err());
    assert_eq!(names.len(), 2);
    for name in &names {
        assert!(!netns_exists(name), "{name} left behind after a panic");
    }

    // The machine's own namespace never changed.
    assert_eq!(root_links(), before);
}

#[test_log::test]
fn stale_namespaces_are_cleaned_up() {
    require_root();
    let live = NetNs::new("live");
    // A pid that just exited stands for a killed test process.
    let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let stale = format!("{}{dead_pid}x0-stale", integration_tests::ns::PREFIX);
    overlay_agent::netlink::netns::create_named_netns(&stale).unwrap();
    assert!(netns_exists(&stale));

    let removed = integration_tests::ns::cleanup_stale(integration_tests::ns::PREFIX);
    assert_eq!(removed, std::slice::from_ref(&stale));
    assert!(!netns_exists(&stale));
    assert!(
        netns_exists(live.name()),
        "a live process's namespace was deleted"
    );
}
