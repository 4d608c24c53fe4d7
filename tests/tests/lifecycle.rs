//! Node and endpoint lifecycle on the `dir` store (the etcd side is in `etcd.rs`), the
//! cases users of other overlays keep hitting (a node back under its name with a new
//! address, a container re-created with a new MAC), the agent started with `ip netns
//! exec`, the kernel tables repaired after a device goes down and up, host-side veth
//! names that collide, and full maps.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use integration_tests::{
    AgentProcess, NetNs,
    agent::run_cli_ip_netns_exec,
    etcd::{EtcdCluster, EtcdOptions},
    lab::{BLUE, Lab, LabOptions, LabStore},
    ping, require_root,
    topo::{H2_IP, Underlay},
};
use overlay_agent::{
    config::DatapathMode,
    datapath::pinned::MapDump,
    mac::MacAddr,
    netlink::{LinkChange, Netlink},
};

const CONVERGE: Duration = Duration::from_secs(3);
const TTL: u64 = 3;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn knows(d: &MapDump, mac: MacAddr) -> bool {
    d.fdb.iter().any(|f| f.mac == mac && f.kind == "remote")
}

fn pings(lab: &Lab, from: &str, to: &str) -> bool {
    let (f, t) = (lab.container(from), lab.container(to));
    // The container's own ARP cache may hold an address's old MAC: forget it first.
    let index = f.ns.link("eth0").index;
    let to_ip = t.ip;
    f.ns.netlink(|nl| async move { nl.neigh_del(index, to_ip).await.expect("flushing the container's ARP entry") });
    ping(&f.ns, t.ip, 2, Duration::from_secs(2)).received == 2
}

/// Two hosts (a on h1, b on h2) on the given store.
fn two(store: LabStore) -> Lab {
    require_root();
    let mut lab = Lab::with_options(Underlay::two_hosts(), &[BLUE], LabOptions { store, lease_ttl_s: TTL, ..Default::default() });
    lab.start_all();
    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    lab.add_container(1, "b", BLUE, ip("10.0.10.12"));
    lab.wait_converged(CONVERGE);
    lab
}

#[test]
fn a_dead_node_vanishes_within_ttl_on_the_dir_store_too() {
    let mut lab = two(LabStore::Dir);
    let b_mac = lab.container("b").mac;
    lab.kill_agent(1);
    let killed = Instant::now();
    lab.wait_for_dump(0, "h2's endpoint gone", Duration::from_secs(TTL + 6), |d| !knows(d, b_mac));
    let took = killed.elapsed();
    assert!(took <= Duration::from_secs(TTL + 2), "took {took:?} with a lease TTL of {TTL} s");
}

fn set_h2_address(lab: &Lab, old: Ipv4Addr, new: Ipv4Addr) {
    let index = lab.host(1).link().index;
    // The old one first: deleting a primary address takes its subnet's secondaries along.
    lab.host(1).ns.netlink(|nl| async move {
        nl.del_address(index, old, 24).await.expect("removing the old address");
        nl.add_address(index, new, 24).await.expect("adding the new address");
    });
}

/// A container re-created with the same IP and a new MAC; a node back under its name
/// with a new VTEP after `down`; a node whose underlay address changes across a restart.
fn stale_cases(mut lab: Lab) {
    let new_ip = ip("198.51.100.22");
    // 1. b is re-created with another MAC.
    lab.cli(1, &["endpoint", "del", "--network", "blue", "--ip", "10.0.10.12"]).assert_success();
    let new_mac: MacAddr = "0a:00:00:00:0a:0c".parse().unwrap();
    let b_ns = &lab.container("b").ns;
    lab.cli(1, &["endpoint", "add", "--network", "blue", "--netns", b_ns.name(), "--ip", "10.0.10.12", "--mac", &new_mac.to_string()])
        .assert_success();
    let old_mac = lab.container("b").mac;
    lab.wait_for_dump(0, "b's new MAC only", CONVERGE, |d| {
        knows(d, new_mac) && !knows(d, old_mac) && d.neighbours.iter().any(|n| n.ip == ip("10.0.10.12") && n.mac == new_mac)
    });
    assert!(pings(&lab, "a", "b"));

    // 2. h2's underlay address changes across a restart: its endpoints follow.
    assert!(lab.stop_agent(1).success());
    set_h2_address(&lab, H2_IP, new_ip);
    lab.start_agent(1);
    lab.wait_for_dump(0, "b behind the new VTEP", Duration::from_secs(TTL + 3), |d| {
        d.fdb.iter().any(|f| f.mac == new_mac && f.vtep == Some(new_ip)) && !d.fdb.iter().any(|f| f.vtep == Some(H2_IP))
    });
    assert!(pings(&lab, "a", "b"));
    if lab.mode(0) == DatapathMode::Kernel {
        let d = lab.dump(0);
        assert_eq!(d.flood[0].remote_vteps, vec![new_ip], "{d:#?}");
    }

    // 3. h2 goes (`down`) and comes back under its name with yet another address.
    lab.down(1);
    lab.wait_for_dump(0, "h2 gone", CONVERGE, |d| !knows(d, new_mac));
    set_h2_address(&lab, new_ip, H2_IP);
    lab.start_agent(1);
    let c = NetNs::new("c");
    lab.cli(1, &["endpoint", "add", "--network", "blue", "--netns", c.name(), "--ip", "10.0.10.13"]).assert_success();
    let c_mac = MacAddr::from_ipv4(ip("10.0.10.13"));
    lab.wait_for_dump(0, "c behind h2's first address", CONVERGE, |d| {
        d.fdb.iter().any(|f| f.mac == c_mac && f.vtep == Some(H2_IP)) && !d.fdb.iter().any(|f| f.vtep == Some(new_ip))
    });
    let r = ping(&lab.container("a").ns, ip("10.0.10.13"), 2, Duration::from_secs(2));
    assert_eq!(r.received, 2);
}

#[test]
fn no_stale_state_on_the_dir_store() {
    stale_cases(two(LabStore::Dir));
}

#[test]
fn no_stale_state_on_etcd() {
    require_root();
    let underlay = Underlay::switched();
    let etcd = EtcdCluster::start(&underlay, EtcdOptions::default());
    let mut lab = Lab::with_options(underlay, &[BLUE], LabOptions { store: LabStore::etcd(&etcd), lease_ttl_s: TTL, ..Default::default() });
    lab.start_all();
    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    lab.add_container(1, "b", BLUE, ip("10.0.10.12"));
    lab.wait_converged(CONVERGE);
    stale_cases(lab);
}

#[test]
fn ip_netns_exec_pins_on_the_host_bpffs_and_other_shells_see_them() {
    require_root();
    // Pins exist in eBPF mode only: this test runs it whatever the suite's mode.
    let mut lab = Lab::new(Underlay::two_hosts(), &[BLUE]);
    lab.set_mode(0, DatapathMode::Ebpf);
    lab.start_agent(1);
    let spawn = |lab: &mut Lab| {
        let mut agent = AgentProcess::spawn_ip_netns_exec(&lab.host(0).ns, &lab.binary, &lab.nodes[0].config);
        let (bin, cfg) = (lab.binary.clone(), lab.nodes[0].config.clone());
        agent.wait_until("the agent answers", integration_tests::hang_guard(Duration::from_secs(20)), || {
            integration_tests::run_cli(None, &bin, ["--config".as_ref(), cfg.as_os_str(), "status".as_ref()]).success()
        });
        lab.nodes[0].agent = Some(agent);
    };
    spawn(&mut lab);
    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    lab.add_container(1, "b", BLUE, ip("10.0.10.12"));
    lab.wait_converged(CONVERGE);
    // The pins are on the host's bpffs, where this test process sees them...
    assert!(lab.nodes[0].bpffs_dir.join("maps").exists(), "no pins on the host's bpffs");
    // ...and `map dump` from another `ip netns exec` shell finds them.
    let cfg = lab.nodes[0].config.clone();
    let out = run_cli_ip_netns_exec(&lab.host(0).ns, &lab.binary, ["--config".as_ref(), cfg.as_os_str(), "map".as_ref(), "dump".as_ref()]);
    out.assert_success();
    assert!(out.stdout.contains("10.0.10.12"), "{}", out.stdout);
    // The pins outlive the agent; a restart through ip netns exec adopts them.
    assert!(lab.stop_agent(0).success());
    let out = run_cli_ip_netns_exec(&lab.host(0).ns, &lab.binary, ["--config".as_ref(), cfg.as_os_str(), "map".as_ref(), "dump".as_ref()]);
    out.assert_success();
    assert!(pings(&lab, "a", "b"), "traffic stopped with the agent");
    spawn(&mut lab);
    assert!(pings(&lab, "a", "b"));
    // `down` from yet another shell removes everything, pins included.
    let out = run_cli_ip_netns_exec(&lab.host(0).ns, &lab.binary, ["--config".as_ref(), cfg.as_os_str(), "down".as_ref()]);
    out.assert_success();
    let mut agent = lab.nodes[0].agent.take().expect("the agent");
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!agent.is_running(), "the agent did not exit after down");
    assert!(agent.stop().success(), "{}", agent.log());
    assert!(!lab.nodes[0].bpffs_dir.exists(), "down left pins on the host's bpffs");
}

#[test]
fn kernel_mode_repairs_entries_a_device_lost_going_down_and_up() {
    require_root();
    let opts = LabOptions { datapath_extra: "kernel_resync_s = 1".into(), ..Default::default() };
    let mut lab = Lab::with_options(Underlay::two_hosts(), &[BLUE], opts);
    lab.set_mode(0, DatapathMode::Kernel);
    lab.start_all();
    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    lab.add_container(1, "b", BLUE, ip("10.0.10.12"));
    lab.wait_converged(CONVERGE);
    let b = (lab.container("b").ip, lab.container("b").mac);
    let vx = lab.host(0).ns.link("ovvx42").index;
    lab.host(0).ns.netlink(|nl: Netlink| async move {
        nl.set_link(vx, LinkChange { up: Some(false), ..Default::default() }).await.unwrap();
        nl.set_link(vx, LinkChange { up: Some(true), ..Default::default() }).await.unwrap();
    });
    // Going down flushed the device's neighbour entries; the agent puts them back.
    lab.wait_for_dump(0, "b's neighbour entry restored", Duration::from_secs(5), |d| d.neighbours.iter().any(|n| n.ip == b.0 && n.mac == b.1));
    assert!(pings(&lab, "a", "b"));
}

#[test]
fn a_taken_host_side_name_is_skipped_and_other_nodes_veths_are_never_swept() {
    require_root();
    let mut lab = Lab::new(Underlay::two_hosts(), &[BLUE]);
    lab.start_agent(0);
    let target = ip("10.0.10.11");
    let first = overlay_agent::plumb::host_ifname(BLUE.vni, target, 0);
    // A stranger holds the first candidate name; another node's endpoint the second.
    let second = overlay_agent::plumb::host_ifname(BLUE.vni, target, 1);
    let other = overlay_agent::plumb::alias("elsewhere", BLUE.vni, target);
    let (f, s) = (first.clone(), second.clone());
    lab.host(0).ns.netlink(|nl| async move {
        nl.create_veth(&f, "strangerp").await.unwrap();
        nl.create_veth(&s, "otherp").await.unwrap();
        let idx = nl.link_by_name(&s).await.unwrap().unwrap().index;
        nl.set_link(idx, LinkChange { alias: Some(other), ..Default::default() }).await.unwrap();
    });
    lab.add_container(0, "a", BLUE, target);
    let out = lab.cli(0, &["endpoint", "list", "--json"]);
    let third = overlay_agent::plumb::host_ifname(BLUE.vni, target, 2);
    assert!(out.stdout.contains(&third), "expected the third candidate name {third}: {}", out.stdout);
    // A restart sweeps this node's orphans only: the stranger and the other node's veth stay.
    assert!(lab.stop_agent(0).success());
    lab.start_agent(0);
    let links: Vec<String> =
        lab.host(0).ns.netlink(|nl| async move { nl.links().await.unwrap() }).into_iter().map(|l| l.name).collect();
    for name in [&first, &second, &third] {
        assert!(links.contains(name), "{name} was removed: {links:?}");
    }
}

#[test]
fn a_full_map_is_a_clear_error_and_shows_in_status() {
    require_root();
    // The kernel's tables have no fixed capacity: this test runs eBPF mode whatever the
    // suite's mode.
    let opts = LabOptions { datapath_extra: "fdb_capacity = 16\nneigh_capacity = 16".into(), ..Default::default() };
    let mut lab = Lab::with_options(Underlay::two_hosts(), &[BLUE], opts);
    lab.set_mode(0, DatapathMode::Ebpf);
    lab.start_all();
    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    // 20 static endpoints: 14 fit beside a and the gateway's router MAC.
    for i in 0..20u8 {
        let addr = format!("10.0.10.{}", 100 + i);
        let mac = MacAddr::from_ipv4(ip(&addr)).to_string();
        lab.cli(1, &["remote", "add", "--network", "blue", "--ip", &addr, "--mac", &mac, "--vtep", "203.0.113.9"]).assert_success();
    }
    let deadline = Instant::now() + CONVERGE;
    let status = loop {
        let s = lab.status(0);
        let fdb = s["tables"].as_array().unwrap().iter().find(|t| t["name"] == "OVL_FDB").unwrap().clone();
        if fdb["not_installed"] == 6 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let fdb = status["tables"].as_array().unwrap().iter().find(|t| t["name"] == "OVL_FDB").unwrap();
    assert_eq!((fdb["entries"].as_u64(), fdb["capacity"].as_u64(), fdb["not_installed"].as_u64()), (Some(16), Some(16), Some(6)), "{status:#}");
    let x = NetNs::new("x");
    let out = lab.cli(0, &["endpoint", "add", "--network", "blue", "--netns", x.name(), "--ip", "10.0.10.12"]);
    assert!(!out.success());
    assert!(out.stderr.contains("is full") && out.stderr.contains("_capacity and restart"), "{}", out.stderr);
    // Room frees up: the entries that did not fit get in.
    for i in 0..6u8 {
        lab.cli(1, &["remote", "del", "--network", "blue", "--ip", &format!("10.0.10.{}", 100 + i)]).assert_success();
    }
    lab.wait_for_dump(0, "the waiting entries installed", CONVERGE, |d| {
        (114..120u8).all(|i| d.fdb.iter().any(|f| f.mac == MacAddr::from_ipv4(Ipv4Addr::new(10, 0, 10, i))))
    });
}
