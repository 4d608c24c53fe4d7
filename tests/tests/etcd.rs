//! The etcd control plane: agents on real etcd servers (in namespaces on the underlay),
//! the key layout, leases and node death, conflicts decided by transactions, outages,
//! a 3-member cluster losing members, TLS with client certificates. Runs in the suite's
//! datapath mode (`cargo xtask test` runs it in both).

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use integration_tests::{
    NetNs,
    etcd::{EtcdCluster, EtcdOptions},
    lab::{BLUE, Lab, LabOptions, LabStore},
    ping, require_root,
    topo::{H1_IP, Underlay},
};
use overlay_agent::{datapath::pinned::MapDump, mac::MacAddr};

const CONVERGE: Duration = Duration::from_secs(3);
/// Lease TTL of the agents in these tests.
const TTL: u64 = 4;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn etcd_lab(underlay: Underlay, cluster: &EtcdCluster, ttl: u64) -> Lab {
    Lab::with_options(underlay, &[BLUE], LabOptions { store: LabStore::etcd(cluster), lease_ttl_s: ttl, ..Default::default() })
}

fn knows(d: &MapDump, mac: MacAddr) -> bool {
    d.fdb.iter().any(|f| f.mac == mac && f.kind == "remote")
}

fn pings(lab: &Lab, from: &str, to: &str) -> bool {
    let r = ping(&lab.container(from).ns, lab.container(to).ip, 2, Duration::from_secs(2));
    r.received == 2
}

/// Three hosts on etcd with one container each (a on h1, b on h2, c on h3).
fn three_hosts(cluster_opts: EtcdOptions) -> (EtcdCluster, Lab) {
    require_root();
    let underlay = Underlay::routed();
    let etcd = EtcdCluster::start(&underlay, cluster_opts);
    let mut lab = etcd_lab(underlay, &etcd, TTL);
    lab.start_all();
    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    lab.add_container(1, "b", BLUE, ip("10.0.10.12"));
    lab.add_container(2, "c", BLUE, ip("10.0.10.13"));
    lab.wait_converged(CONVERGE);
    (etcd, lab)
}

#[test]
fn agents_on_etcd_reach_each_other_with_the_documented_key_layout() {
    let (etcd, lab) = three_hosts(EtcdOptions::default());
    for (x, y) in [("a", "b"), ("b", "c"), ("c", "a")] {
        assert!(pings(&lab, x, y), "{x} -> {y}");
    }
    let kvs = etcd.get_prefix("/overlay/v1/");
    let keys: Vec<&str> = kvs.iter().map(|(k, _)| k.as_str()).collect();
    for expected in [
        "/overlay/v1/nodes/h1",
        "/overlay/v1/nodes/h3",
        "/overlay/v1/endpoints/42/10.0.10.12",
        "/overlay/v1/claims/mac/42/02:42:0a:00:0a:0d",
        "/overlay/v1/claims/vtep/198.51.100.1",
    ] {
        assert!(keys.contains(&expected), "{expected} missing from {keys:#?}");
    }
    let value = &kvs.iter().find(|(k, _)| k == "/overlay/v1/endpoints/42/10.0.10.12").unwrap().1;
    let record: serde_json::Value = serde_json::from_str(value).unwrap();
    assert_eq!(record["node"], "h2");
    assert_eq!(record["mac"], "02:42:0a:00:0a:0c");
    let status = lab.status(0);
    assert_eq!(status["store"]["state"], "connected", "{status:#}");
    assert_eq!(status["store"]["registered"], true, "{status:#}");
    assert_eq!(status["store"]["lease_ttl_secs"], TTL, "{status:#}");
}

#[test]
fn a_dead_node_vanishes_within_ttl_and_down_removes_a_node_at_once() {
    let (_etcd, mut lab) = three_hosts(EtcdOptions::default());
    let (b_mac, c_mac) = (lab.container("b").mac, lab.container("c").mac);
    // h2 crashes and never comes back.
    lab.kill_agent(1);
    let killed = Instant::now();
    let took = lab.wait_for_dump(0, "h2's endpoint gone", Duration::from_secs(TTL + 6), |d| !knows(d, b_mac));
    let since_kill = killed.elapsed();
    assert!(since_kill <= Duration::from_secs(TTL + 2), "h2's endpoint took {since_kill:?} (poll {took:?}) to vanish, lease TTL {TTL} s");
    lab.wait_for_dump(2, "h2's endpoint gone on h3", Duration::from_secs(2), |d| !knows(d, b_mac));
    assert!(lab.dump(0).flood.iter().all(|f| !f.remote_vteps.contains(&ip("198.51.100.2"))));
    // `down` revokes the lease: peers drop the node without waiting for the TTL.
    lab.down(2);
    let took = lab.wait_for_dump(0, "h3's endpoint gone", Duration::from_secs(TTL), |d| !knows(d, c_mac));
    assert!(took < Duration::from_secs(TTL / 2), "down took {took:?} to reach h1: the lease was not revoked");
}

#[test]
fn a_graceful_restart_within_the_ttl_is_invisible_to_peers() {
    let (_etcd, mut lab) = three_hosts(EtcdOptions::default());
    let b_mac = lab.container("b").mac;
    assert!(lab.stop_agent(1).success());
    // Watch h1's view through more than the TTL: the entry never goes away.
    let until = Instant::now() + Duration::from_secs(TTL / 2);
    while Instant::now() < until {
        assert!(knows(&lab.dump(0), b_mac), "h1 dropped h2's endpoint while h2's agent restarted");
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.start_agent(1);
    let until = Instant::now() + Duration::from_secs(TTL + 2);
    while Instant::now() < until {
        assert!(knows(&lab.dump(0), b_mac), "h1 dropped h2's endpoint after h2's agent came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(pings(&lab, "a", "b"));
}

#[test]
fn conflicts_are_decided_by_the_store_and_change_nothing() {
    let (etcd, mut lab) = three_hosts(EtcdOptions::default());
    let before = etcd.get_prefix("/overlay/v1/");
    // An IP already used by another node.
    let x = NetNs::new("x");
    let out = lab.cli(2, &["endpoint", "add", "--network", "blue", "--netns", x.name(), "--ip", "10.0.10.12"]);
    assert!(!out.success());
    assert!(out.stderr.contains("10.0.10.12") && out.stderr.contains("h2"), "{}", out.stderr);
    // A MAC already used by another node.
    let mac = lab.container("a").mac.to_string();
    let out = lab.cli(2, &["endpoint", "add", "--network", "blue", "--netns", x.name(), "--ip", "10.0.10.99", "--mac", &mac]);
    assert!(!out.success());
    assert!(out.stderr.contains(&mac), "{}", out.stderr);
    let links = x.netlink(|nl| async move { nl.links().await.unwrap() });
    assert_eq!(links.len(), 1, "a refused add plugged something: {links:?}");
    assert_eq!(etcd.get_prefix("/overlay/v1/"), before, "a refused add changed the store");

    // A node name held by another live agent, from another host (another VTEP).
    let h3 = lab.nodes[2].config.clone();
    let clash = h3.with_file_name("clash.toml");
    let text = std::fs::read_to_string(&h3).unwrap().replace("node_name = \"h3\"", "node_name = \"h1\"").replace("/h3", "/clash");
    std::fs::write(&clash, text).unwrap();
    assert!(lab.stop_agent(2).success());
    let out = integration_tests::run_cli(Some(&lab.host(2).ns), &lab.binary, ["--config".as_ref(), clash.as_os_str(), "run".as_ref()]);
    assert!(!out.success(), "a second agent took node name h1");
    assert!(out.stderr.contains("node name \"h1\" is held by another live agent"), "{}", out.stderr);
    // A VTEP address claimed by another live node.
    let vtep = h3.with_file_name("vtep.toml");
    let text = std::fs::read_to_string(&h3).unwrap().replace("node_name = \"h3\"", &format!("node_name = \"h9\"\nvtep_ip = \"{H1_IP}\"")).replace("/h3", "/vtep");
    std::fs::write(&vtep, text).unwrap();
    let out = integration_tests::run_cli(Some(&lab.host(2).ns), &lab.binary, ["--config".as_ref(), vtep.as_os_str(), "run".as_ref()]);
    assert!(!out.success(), "a second node took h1's VTEP");
    assert!(out.stderr.contains("198.51.100.1 is already claimed by live node h1"), "{}", out.stderr);
    let links = lab.host(2).ns.netlink(|nl| async move { nl.links().await.unwrap() });
    assert!(!links.iter().any(|l| l.name.starts_with("ovvx") && l.index == 0), "{links:?}");
    let after: Vec<_> = etcd.get_prefix("/overlay/v1/nodes/").into_iter().map(|(k, _)| k).collect();
    assert!(!after.iter().any(|k| k.ends_with("/h9")), "the refused node was registered: {after:?}");
}

#[test]
fn concurrent_adds_of_one_ip_on_two_hosts_give_it_to_exactly_one() {
    let (_etcd, lab) = three_hosts(EtcdOptions::default());
    let (x, y) = (NetNs::new("x"), NetNs::new("y"));
    let results = std::thread::scope(|s| {
        let tx = s.spawn(|| lab.cli(0, &["endpoint", "add", "--network", "blue", "--netns", x.name(), "--ip", "10.0.10.50"]));
        let ty = s.spawn(|| lab.cli(1, &["endpoint", "add", "--network", "blue", "--netns", y.name(), "--ip", "10.0.10.50"]));
        [tx.join().unwrap(), ty.join().unwrap()]
    });
    let won = results.iter().filter(|r| r.success()).count();
    assert_eq!(won, 1, "{results:#?}");
    let loser = results.iter().find(|r| !r.success()).unwrap();
    assert!(loser.stderr.contains("10.0.10.50 is already used"), "{}", loser.stderr);
}

#[test]
fn an_etcd_outage_keeps_forwarding_refuses_adds_and_resyncs_on_reconnect() {
    let (mut etcd, lab) = three_hosts(EtcdOptions::default());
    let c_mac = lab.container("c").mac;
    etcd.stop(0);
    // Forwarding goes on with what the hosts know.
    assert!(pings(&lab, "a", "b") && pings(&lab, "b", "c"));
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let s = lab.status(0);
        if s["store"]["state"] == "disconnected" || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["store"]["state"], "disconnected", "{status:#}");
    assert!(status["store"]["disconnected_since"].as_str().is_some_and(|s| s.ends_with('Z')), "{status:#}");
    // Adding needs the store: refused, clearly, and nothing plugged.
    let x = NetNs::new("x");
    let out = lab.cli(0, &["endpoint", "add", "--network", "blue", "--netns", x.name(), "--ip", "10.0.10.60"]);
    assert!(!out.success());
    assert!(out.stderr.contains("is unreachable since"), "{}", out.stderr);
    assert_eq!(x.netlink(|nl| async move { nl.links().await.unwrap() }).len(), 1);
    // Deleting goes ahead locally and is withdrawn once the store is back.
    lab.cli(2, &["endpoint", "del", "--network", "blue", "--ip", "10.0.10.13"]).assert_success();
    assert_eq!(lab.status(2)["store"]["pending_withdrawals"], 1);
    assert!(knows(&lab.dump(0), c_mac), "h1 cannot know of the delete yet");
    etcd.restart(0);
    etcd.wait_healthy();
    lab.wait_for_dump(0, "c withdrawn after the outage", Duration::from_secs(15), |d| !knows(d, c_mac));
    lab.wait_for_dump(1, "c withdrawn after the outage", Duration::from_secs(5), |d| !knows(d, c_mac));
    let status = lab.status(2);
    assert_eq!(status["store"]["state"], "connected", "{status:#}");
    assert_eq!(status["store"]["pending_withdrawals"], 0, "{status:#}");
    // And adding works again.
    let out = lab.cli(0, &["endpoint", "add", "--network", "blue", "--netns", x.name(), "--ip", "10.0.10.60"]);
    out.assert_success();
}

#[test]
fn a_node_cut_off_from_etcd_past_its_ttl_re_registers_when_it_is_back() {
    let (etcd, lab) = three_hosts(EtcdOptions::default());
    let b_mac = lab.container("b").mac;
    // h2 loses its route to etcd (the underlay between hosts stays up).
    let member = etcd.member_ip(0);
    lab.host(1).ns.netlink(|nl| async move { nl.add_blackhole_route(member, 32).await.expect("blackhole route") });
    lab.wait_for_dump(0, "h2 expired on h1", Duration::from_secs(TTL + 8), |d| !knows(d, b_mac));
    // Its containers keep their local state; the datapath between hosts is fine.
    lab.host(1).ns.netlink(|nl| async move { nl.del_blackhole_route(member, 32).await.expect("removing the blackhole route") });
    lab.wait_for_dump(0, "h2 re-registered", Duration::from_secs(15), |d| knows(d, b_mac));
    assert!(pings(&lab, "a", "b"));
    assert_eq!(lab.status(1)["store"]["registered"], true);
}

#[test]
fn a_three_member_cluster_losing_its_leader_or_a_follower_does_not_interrupt_agents() {
    require_root();
    let underlay = Underlay::routed();
    let mut etcd = EtcdCluster::start(&underlay, EtcdOptions { members: 3, tls: false });
    let mut lab = etcd_lab(underlay, &etcd, TTL);
    lab.start_all();
    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    lab.add_container(1, "b", BLUE, ip("10.0.10.12"));
    lab.wait_converged(CONVERGE);
    let leader = etcd.leader();
    etcd.stop(leader);
    // Writes go on: a new endpoint reaches the other host.
    lab.add_container(2, "c", BLUE, ip("10.0.10.13"));
    lab.wait_converged(CONVERGE);
    assert!(pings(&lab, "a", "c") && pings(&lab, "c", "b"));
    // The old leader comes back; then a follower goes: the one h1's watch runs on
    // (leadership moves away from it first if needed), so that the watch has to move on.
    etcd.restart(leader);
    etcd.wait_healthy();
    let store_field = |host: usize, field: &str| lab.status(host)["store"][field].as_str().map(str::to_owned);
    let index_of = |url: Option<String>| (0..3).find(|i| Some(etcd.endpoint(*i)) == url);
    let mut follower = None;
    for _ in 0..3 {
        let watched = index_of(store_field(0, "watch_member")).expect("h1's status names the member its watch runs on");
        if watched != etcd.leader() {
            follower = Some(watched);
            break;
        }
        etcd.move_leader((watched + 1) % 3);
    }
    let follower = follower.expect("h1's watch followed the leader through three moves");
    etcd.stop(follower);
    let out = lab.cli(1, &["endpoint", "del", "--network", "blue", "--ip", "10.0.10.12"]);
    out.assert_success();
    let b_mac = MacAddr::from_ipv4(ip("10.0.10.12"));
    lab.wait_for_dump(0, "b withdrawn", CONVERGE, |d| !knows(d, b_mac));
    lab.wait_for_dump(2, "b withdrawn", CONVERGE, |d| !knows(d, b_mac));
    // Those that used the stopped member went on with another (at their next request:
    // a lease renewal comes every third of the TTL); stopping members never cost a node
    // its lease.
    let stopped = Some(etcd.endpoint(follower));
    let deadline = Instant::now() + Duration::from_secs(TTL + 2);
    for i in 0..3 {
        while [store_field(i, "member"), store_field(i, "watch_member")].contains(&stopped) {
            assert!(Instant::now() < deadline, "host {i} still uses the stopped member: {:#}", lab.status(i));
            std::thread::sleep(Duration::from_millis(100));
        }
        let s = lab.status(i);
        assert_eq!(s["store"]["registered"], true, "host {i}: {s:#}");
    }
    assert!(pings(&lab, "a", "c"));
}

#[test]
fn tls_with_client_certificates() {
    let (etcd, mut lab) = three_hosts(EtcdOptions { members: 1, tls: true });
    assert!(etcd.endpoint(0).starts_with("https://"));
    assert!(pings(&lab, "a", "c"));
    assert_eq!(lab.status(0)["store"]["state"], "connected");
    // h3 again, with a client certificate the cluster does not trust: it runs, but it
    // never gets into the store.
    lab.down(2);
    let tls = etcd.tls().unwrap();
    let cfg = lab.nodes[2].config.clone();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&tls.cert_file.display().to_string(), &tls.rogue_cert_file.display().to_string())
        .replace(&tls.key_file.display().to_string(), &tls.rogue_key_file.display().to_string());
    std::fs::write(&cfg, text).unwrap();
    lab.start_agent(2);
    std::thread::sleep(Duration::from_secs(2));
    let status = lab.status(2);
    assert_eq!(status["store"]["registered"], false, "{status:#}");
    assert_ne!(status["store"]["state"], "connected", "{status:#}");
    let x = NetNs::new("x");
    let out = lab.cli(2, &["endpoint", "add", "--network", "blue", "--netns", x.name(), "--ip", "10.0.10.70"]);
    assert!(!out.success(), "an add without the store succeeded");
    assert!(etcd.get_prefix("/overlay/v1/nodes/h3").is_empty(), "h3 registered with an untrusted certificate");
}

#[test]
fn a_watch_that_falls_behind_a_compaction_relists_and_leaves_nothing_stale() {
    require_root();
    let underlay = Underlay::routed();
    let etcd = EtcdCluster::start(&underlay, EtcdOptions::default());
    // A TTL long enough that the short cut below does not end h2's lease.
    let mut lab = etcd_lab(underlay, &etcd, 30);
    lab.start_all();
    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    lab.add_container(1, "b", BLUE, ip("10.0.10.12"));
    lab.add_container(0, "gone", BLUE, ip("10.0.10.21"));
    lab.wait_converged(CONVERGE);
    let gone_mac = lab.container("gone").mac;
    // h2 loses etcd; meanwhile h1 deletes one endpoint and adds another, and etcd
    // compacts its history past what h2 saw.
    let member = etcd.member_ip(0);
    lab.host(1).ns.netlink(|nl| async move { nl.add_blackhole_route(member, 32).await.expect("blackhole route") });
    // Until h2 notices (its watch stream breaks), so that it has to resume the watch.
    let deadline = Instant::now() + Duration::from_secs(20);
    while lab.status(1)["store"]["state"] != "disconnected" {
        assert!(Instant::now() < deadline, "h2 never noticed it lost etcd");
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.cli(0, &["endpoint", "del", "--network", "blue", "--ip", "10.0.10.21"]).assert_success();
    lab.add_container(0, "new", BLUE, ip("10.0.10.22"));
    let new_mac = lab.container("new").mac;
    let status = etcd.etcdctl(&["endpoint", "status", "-w", "json"]);
    let revision = status.stdout.split("\"revision\":").nth(1).and_then(|r| r.split([',', '}']).next()).expect("revision").to_string();
    etcd.etcdctl(&["compact", revision.trim()]).assert_success();
    lab.host(1).ns.netlink(|nl| async move { nl.del_blackhole_route(member, 32).await.expect("removing the blackhole route") });
    lab.wait_for_dump(1, "h2 caught up", Duration::from_secs(20), |d| knows(d, new_mac) && !knows(d, gone_mac));
    assert!(lab.nodes[1].agent.as_ref().unwrap().log().contains("relisting"), "h2 did not relist after the compaction");
    assert!(pings(&lab, "b", "new"));
}

#[test]
fn a_restart_while_etcd_is_down_keeps_every_entry_until_the_store_is_back() {
    let (mut etcd, mut lab) = three_hosts(EtcdOptions::default());
    let before = lab.dump(0);
    etcd.stop(0);
    assert!(lab.stop_agent(0).success());
    lab.start_agent(0);
    // No store: the adopted datapath stays as it was, nothing is removed.
    std::thread::sleep(Duration::from_secs(1));
    let during = lab.dump(0);
    assert_eq!(before.fdb, during.fdb, "entries changed before the first full list");
    assert_eq!(before.neighbours, during.neighbours);
    assert!(pings(&lab, "a", "b") && pings(&lab, "a", "c"));
    assert_ne!(lab.status(0)["store"]["synced"], true);
    etcd.restart(0);
    etcd.wait_healthy();
    let deadline = Instant::now() + Duration::from_secs(15);
    while lab.status(0)["store"]["synced"] != true {
        assert!(Instant::now() < deadline, "h1 never synced after etcd came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(lab.dump(0).fdb, before.fdb);
    assert!(pings(&lab, "a", "c"));
}
