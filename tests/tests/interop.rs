//! Datapath modes and interoperability: mixed eBPF/kernel clusters, a plain Linux host
//! configured with the classic recipe (no agent) declared with `remote add`, automatic
//! mode selection and its fallback, broadcast replication, and mode switches that
//! leave nothing behind.

use std::{
    net::{Ipv4Addr, UdpSocket},
    time::Duration,
};

use integration_tests::{
    NetNs,
    lab::{BLUE, Container, Lab, RED},
    ping, require_root, tcp_transfer,
    plain::plain_linux_host,
    topo::{H2_IP, Underlay},
};
use overlay_agent::{
    config::DatapathMode,
    datapath::ebpf::SIMULATE_MISSING_ENV,
};

const CONVERGE: Duration = Duration::from_secs(2);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn pings(from: &Container, to: Ipv4Addr) -> bool {
    let r = ping(&from.ns, to, 2, Duration::from_secs(2));
    r.received == 2
}

fn transfer_ok(server: &NetNs, server_ip: Ipv4Addr, client: &NetNs) {
    let t = tcp_transfer(server, server_ip, client, 16 << 20);
    assert!(t.is_complete(), "{t:?}");
    assert_eq!(t.sent_sha256, t.received_sha256, "data corrupted");
}

fn status_json(lab: &Lab, i: usize) -> serde_json::Value {
    let out = lab.cli(i, &["status", "--json"]);
    out.assert_success();
    serde_json::from_str(&out.stdout).unwrap()
}

#[test]
fn mixed_ebpf_and_kernel_hosts_reach_each_other() {
    require_root();
    let mut lab = Lab::new(Underlay::routed(), &[BLUE]);
    lab.set_mode(0, DatapathMode::Ebpf);
    lab.set_mode(1, DatapathMode::Kernel);
    lab.set_mode(2, DatapathMode::Ebpf);
    lab.start_all();
    for (i, expected) in ["ebpf", "kernel", "ebpf"].iter().enumerate() {
        assert_eq!(status_json(&lab, i)["datapath"]["mode"], *expected, "host {i}");
    }
    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    lab.add_container(1, "b", BLUE, ip("10.0.10.12"));
    lab.add_container(2, "c", BLUE, ip("10.0.10.13"));
    lab.wait_converged(CONVERGE);
    for x in &lab.containers {
        for y in &lab.containers {
            if x.name != y.name {
                assert!(pings(x, y.ip), "{} -> {}", x.name, y.name);
            }
        }
    }
    let (a, b, c) = (lab.container("a"), lab.container("b"), lab.container("c"));
    transfer_ok(&b.ns, b.ip, &a.ns);
    transfer_ok(&c.ns, c.ip, &b.ns);
    transfer_ok(&a.ns, a.ip, &c.ns);
    // The kernel host's tables, as map dump shows them, hold the other two.
    let d = lab.dump(1);
    assert_eq!(d.datapath, "kernel");
    for other in [a, c] {
        assert!(d.fdb.iter().any(|f| f.mac == other.mac && f.kind == "remote"), "{d:#?}");
        assert!(d.neighbours.iter().any(|n| n.ip == other.ip && n.mac == other.mac), "{d:#?}");
    }
    assert_eq!(d.flood[0].remote_vteps.len(), 2, "one flood entry per remote VTEP: {d:#?}");
}

fn plain_host_interop(mode: DatapathMode) {
    require_root();
    let mut lab = Lab::new(Underlay::two_hosts(), &[BLUE]);
    lab.set_mode(0, mode);
    lab.start_agent(0);
    lab.add_container(0, "c1", BLUE, ip("10.0.10.10"));
    let (c1ip, c1mac, vtep1) = (lab.container("c1").ip, lab.container("c1").mac, lab.host(0).ip);
    let plain = plain_linux_host(&lab, c1ip, c1mac, vtep1);
    let out = lab.cli(0, &[
        "remote", "add", "--network", "blue", "--ip", &plain.ip.to_string(), "--mac", &plain.mac.to_string(), "--vtep", &H2_IP.to_string(),
    ]);
    out.assert_success();
    let list = lab.cli(0, &["endpoint", "list", "--json"]);
    assert!(list.stdout.contains("\"kind\": \"static\""), "{}", list.stdout);
    let d = lab.dump(0);
    assert!(d.fdb.iter().any(|f| f.mac == plain.mac && f.vtep == Some(H2_IP)), "{d:#?}");
    let c1 = lab.container("c1");
    assert!(pings(c1, plain.ip), "agent container -> plain host container ({mode})");
    let back = ping(&plain.container, c1.ip, 2, Duration::from_secs(2));
    assert_eq!(back.received, 2, "plain host container -> agent container ({mode}): {back:?}");
    transfer_ok(&plain.container, plain.ip, &c1.ns);
    transfer_ok(&c1.ns, c1.ip, &plain.container);
    // remote del takes it out again.
    lab.cli(0, &["remote", "del", "--network", "blue", "--ip", &plain.ip.to_string()]).assert_success();
    lab.wait_for_dump(0, "static entry removed", CONVERGE, |d| !d.fdb.iter().any(|f| f.mac == plain.mac));
    assert_eq!(ping(&c1.ns, plain.ip, 1, Duration::from_millis(500)).received, 0);
    let again = lab.cli(0, &["remote", "del", "--network", "blue", "--ip", &plain.ip.to_string()]);
    assert!(!again.success() && again.stderr.contains("no static endpoint"), "{again:?}");
}

#[test]
fn plain_linux_vxlan_host_interoperates_with_ebpf_mode() {
    plain_host_interop(DatapathMode::Ebpf);
}

#[test]
fn plain_linux_vxlan_host_interoperates_with_kernel_mode() {
    plain_host_interop(DatapathMode::Kernel);
}

#[test]
fn auto_picks_ebpf_here_and_falls_back_with_the_reason() {
    require_root();
    let mut lab = Lab::new(Underlay::two_hosts(), &[BLUE]);
    lab.set_mode(0, DatapathMode::Auto);
    lab.set_mode(1, DatapathMode::Auto);
    lab.nodes[1].env.push((SIMULATE_MISSING_ENV.into(), "bpf_redirect_peer".into()));
    lab.start_all();
    let s0 = status_json(&lab, 0);
    assert_eq!(s0["datapath"]["mode"], "ebpf", "{s0}");
    let s1 = status_json(&lab, 1);
    assert_eq!(s1["datapath"]["mode"], "kernel", "{s1}");
    let reason = s1["datapath"]["detail"].as_str().unwrap();
    assert!(reason.contains("lacks bpf_redirect_peer (Linux 5.10+)"), "{reason}");
    let log = lab.nodes[1].agent.as_ref().unwrap().log();
    assert!(
        log.contains("lacks bpf_redirect_peer") && log.contains("using kernel VXLAN fallback (datapath.mode=kernel to silence)"),
        "{log}"
    );
    // And the overlay works across the two.
    lab.add_container(0, "x", BLUE, ip("10.0.10.11"));
    lab.add_container(1, "y", BLUE, ip("10.0.10.12"));
    lab.wait_converged(CONVERGE);
    assert!(pings(lab.container("x"), lab.container("y").ip));
    assert!(pings(lab.container("y"), lab.container("x").ip));
}

#[test]
fn auto_falls_back_on_a_real_load_failure_and_leaves_no_ebpf_residue() {
    require_root();
    let mut lab = Lab::new(Underlay::two_hosts(), &[BLUE]);
    lab.set_mode(0, DatapathMode::Auto);
    lab.set_mode(1, DatapathMode::Auto);
    lab.start_agent(1);
    // Root without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (dropped from the bounding
    // set, so the exec'd agent never has them): the kernel refuses every bpf() call
    // that creates maps or loads programs. No hook: a real failure.
    let (binary, config) = (lab.nodes[0].binary.clone(), lab.nodes[0].config.clone());
    let mut agent = integration_tests::AgentProcess::spawn_wrapped(
        &lab.host(0).ns,
        &["setpriv", "--bounding-set", "-bpf,-perfmon,-sys_admin", "--inh-caps", "-all"],
        &binary,
        &config,
    );
    agent.wait_until("the agent answers `status`", integration_tests::hang_guard(Duration::from_secs(20)), || {
        integration_tests::run_cli(None, &binary, ["--config".as_ref(), config.as_os_str(), "status".as_ref()]).success()
    });
    let s = status_json(&lab, 0);
    assert_eq!(s["datapath"]["mode"], "kernel", "{s}");
    let reason = s["datapath"]["detail"].as_str().unwrap();
    assert!(
        reason.contains("the kernel refused") && reason.contains("Operation not permitted") && reason.contains("needs CAP_BPF"),
        "the kernel's refusal and what to do about it: {reason}"
    );
    let log = agent.log();
    assert!(log.contains("using kernel VXLAN fallback (datapath.mode=kernel to silence)"), "{log}");
    // Nothing of the failed eBPF start is left: no pins, no program on the underlay.
    assert!(!lab.nodes[0].bpffs_dir.exists(), "pins left at {}", lab.nodes[0].bpffs_dir.display());
    let d = lab.dump(0);
    assert_eq!(d.datapath, "kernel");
    // The kernel datapath stands in its place: the network's bridge and VXLAN device.
    let links = lab.host(0).ns.netlink(|nl| async move { nl.links().await.unwrap() });
    for dev in ["ovbr42", "ovvx42"] {
        assert!(links.iter().any(|l| l.name == dev), "no {dev}: {links:?}");
    }
    lab.nodes[0].agent = Some(agent);
}

#[test]
fn forced_ebpf_that_cannot_run_is_a_clear_error_and_leaves_nothing() {
    require_root();
    let mut lab = Lab::new(Underlay::two_hosts(), &[BLUE]);
    lab.set_mode(0, DatapathMode::Ebpf);
    let config = lab.nodes[0].config.clone();
    let out = integration_tests::agent::run_cli_with_env(
        Some(&lab.host(0).ns),
        &lab.binary,
        ["--config", config.to_str().unwrap(), "run"],
        &[(SIMULATE_MISSING_ENV, "bpf_redirect_neigh")],
    );
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("datapath.mode=ebpf, but the eBPF datapath cannot run here")
            && out.stderr.contains("lacks bpf_redirect_neigh"),
        "{}",
        out.stderr
    );
    assert!(!lab.nodes[0].bpffs_dir.exists());
    let links = lab.host(0).ns.netlink(|nl| async move { nl.links().await.unwrap() });
    assert_eq!(links.iter().filter(|l| l.name.starts_with("ov")).count(), 0, "{links:?}");
}

/// Links an agent made (veths, bridges, VXLAN devices): all named `ov*`.
fn agent_links(lab: &Lab, i: usize) -> Vec<String> {
    let links = lab.host(i).ns.netlink(|nl| async move { nl.links().await.unwrap() });
    links.into_iter().map(|l| l.name).filter(|n| n.starts_with("ov")).collect()
}

#[test]
fn switching_modes_keeps_endpoints_and_leaves_no_residue_of_the_other_mode() {
    require_root();
    let mut lab = Lab::new(Underlay::two_hosts(), &[BLUE, RED]);
    lab.start_agent(1);
    lab.add_container(1, "peer", BLUE, ip("10.0.10.12"));
    let c = NetNs::new("sw");
    for (n, mode) in [DatapathMode::Ebpf, DatapathMode::Kernel, DatapathMode::Ebpf].into_iter().enumerate() {
        lab.set_mode(0, mode);
        lab.start_agent(0);
        // A mode switch rebuilds the datapath: traffic flows once the first sync is in.
        lab.wait_synced(0);
        assert_eq!(status_json(&lab, 0)["datapath"]["mode"], mode.to_string());
        if n == 0 {
            lab.cli(0, &["endpoint", "add", "--network", "blue", "--netns", c.name(), "--ip", "10.0.10.11"]).assert_success();
        }
        lab.wait_for_dump(1, "peer learns the endpoint", CONVERGE, |d| d.fdb.iter().any(|f| f.vtep == Some(lab.host(0).ip)));
        let r = ping(&c, ip("10.0.10.12"), 2, Duration::from_secs(2));
        assert_eq!(r.received, 2, "{mode}: {r:?}");
        let links = agent_links(&lab, 0);
        match mode {
            // eBPF mode has no bridges; kernel mode no pins.
            DatapathMode::Kernel => assert!(!lab.nodes[0].bpffs_dir.exists(), "kernel mode kept eBPF pins"),
            _ => assert!(!links.iter().any(|l| l.starts_with("ovbr")), "eBPF mode kept bridges: {links:?}"),
        }
        // The container's veth is the same one all along.
        assert_eq!(links.iter().filter(|l| l.starts_with("ovl")).count(), 1, "{links:?}");
        assert!(lab.stop_agent(0).success(), "{mode}");
    }
    // A crash (SIGKILL) of an eBPF agent, then a start in kernel mode: the pins go, the
    // endpoint stays (now on the bridge).
    lab.start_agent(0);
    lab.kill_agent(0);
    assert!(lab.nodes[0].bpffs_dir.exists(), "the killed agent's pins should still be there");
    lab.set_mode(0, DatapathMode::Kernel);
    lab.start_agent(0);
    lab.wait_synced(0);
    assert!(!lab.nodes[0].bpffs_dir.exists(), "kernel mode kept the crashed eBPF agent's pins");
    let r = ping(&c, ip("10.0.10.12"), 2, Duration::from_secs(2));
    assert_eq!(r.received, 2, "after the crash, in kernel mode: {r:?}");
    let links = agent_links(&lab, 0);
    assert_eq!(links.iter().filter(|l| l.starts_with("ovbr") || l.starts_with("ovvx")).count(), 4, "one bridge and one VXLAN device per network: {links:?}");
    lab.down(0);
    assert!(agent_links(&lab, 0).is_empty(), "down left {:?}", agent_links(&lab, 0));
}

fn broadcast_reaches_exactly_its_network(mode: DatapathMode) {
    require_root();
    let mut lab = Lab::new(Underlay::routed(), &[BLUE, RED]);
    for i in 0..3 {
        lab.set_mode(i, mode);
    }
    lab.start_all();
    for (name, host, net, addr) in [
        ("s", 0, BLUE, "10.0.10.11"),
        ("l", 0, BLUE, "10.0.10.21"),
        ("r2", 1, BLUE, "10.0.10.12"),
        ("r3", 2, BLUE, "10.0.10.13"),
        ("o1", 0, RED, "10.0.20.11"),
        ("o2", 1, RED, "10.0.20.12"),
    ] {
        lab.add_container(host, name, net, ip(addr));
    }
    lab.wait_converged(CONVERGE);
    const PORT: u16 = 5999;
    let receivers: Vec<_> = lab
        .containers
        .iter()
        .filter(|c| c.name != "s")
        .map(|c| {
            let sock = c.ns.run(|| {
                let s = UdpSocket::bind(("0.0.0.0", PORT)).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
                s
            });
            (c.name.clone(), c.network.name, sock)
        })
        .collect();
    lab.container("s").ns.run(|| {
        let s = UdpSocket::bind(("10.0.10.11", 0)).unwrap();
        s.set_broadcast(true).unwrap();
        s.send_to(b"hello blue", ("10.0.10.255", PORT)).unwrap();
    });
    for (name, network, sock) in receivers {
        let mut buf = [0u8; 64];
        let got = sock.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec());
        if network == "blue" {
            assert_eq!(got.as_deref(), Some(&b"hello blue"[..]), "{mode}: {name} missed the broadcast");
        } else {
            assert_eq!(got, None, "{mode}: {name} in another network got the broadcast");
        }
    }
}

#[test]
fn broadcast_reaches_exactly_its_network_in_ebpf_mode() {
    broadcast_reaches_exactly_its_network(DatapathMode::Ebpf);
}

#[test]
fn broadcast_reaches_exactly_its_network_in_kernel_mode() {
    broadcast_reaches_exactly_its_network(DatapathMode::Kernel);
}
