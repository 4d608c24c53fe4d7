//! Cluster-wide address allocation: `endpoint add` without `--ip` takes the lowest free
//! address of the network, decided by the store, so that hosts adding at the same time
//! never get the same one; addresses come back on `endpoint del` and when a node's lease
//! ends; a full subnet is a clear error. On etcd and on the `dir` store.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use integration_tests::{
    NetNs,
    etcd::{EtcdCluster, EtcdOptions},
    lab::{BLUE, Container, Lab, LabOptions, LabStore, NetworkDef},
    ping, require_root,
    topo::Underlay,
};
use overlay_agent::mac::MacAddr;

/// A network with room for five containers (.2 to .6; .1 is the gateway's).
const TINY: NetworkDef = NetworkDef { name: "tiny", vni: 44, subnet: "10.0.30.0/29", l3: None };
/// Endpoints each host adds in the race.
const PER_HOST: usize = 6;
const TTL: u64 = 4;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Three hosts add [`PER_HOST`] endpoints each, all at once; every address is distinct,
/// in the subnet and not the gateway's, and the containers reach each other.
fn race(lab: &mut Lab) {
    lab.start_all();
    let namespaces: Vec<Vec<NetNs>> = (0..3).map(|h| (0..PER_HOST).map(|i| NetNs::new(&format!("r{h}{i}"))).collect()).collect();
    let results: Vec<Vec<(Ipv4Addr, MacAddr)>> = std::thread::scope(|s| {
        let lab = &*lab;
        let threads: Vec<_> = namespaces
            .iter()
            .enumerate()
            .map(|(h, nss)| {
                s.spawn(move || {
                    nss.iter().map(|ns| lab.allocate(h, ns, BLUE).unwrap_or_else(|o| panic!("host {h}: {}", o.stderr))).collect::<Vec<_>>()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("an adding thread panicked")).collect()
    });
    let all: Vec<Ipv4Addr> = results.iter().flatten().map(|(ip, _)| *ip).collect();
    let distinct: BTreeSet<Ipv4Addr> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "two endpoints got one address: {all:?}");
    // The lowest free addresses, with no holes: .2 up (.1 is the gateway's).
    let expected: BTreeSet<Ipv4Addr> = (0..all.len() as u32).map(|i| Ipv4Addr::from(u32::from(ip("10.0.10.2")) + i)).collect();
    assert_eq!(distinct, expected);
    for (h, (nss, got)) in namespaces.into_iter().zip(results).enumerate() {
        for (i, (ns, (ip, mac))) in nss.into_iter().zip(got).enumerate() {
            lab.containers.push(Container { name: format!("r{h}{i}"), ns, host: h, network: BLUE, ip, mac });
        }
    }
    lab.wait_converged(Duration::from_secs(5));
    for (from, to) in [("r00", "r10"), ("r11", "r25"), ("r24", "r03")] {
        let r = ping(&lab.container(from).ns, lab.container(to).ip, 2, Duration::from_secs(2));
        assert_eq!(r.received, 2, "{from} -> {to}");
    }
}

/// A full subnet is refused with a message that says what to do, and a deleted
/// endpoint's address is the next one handed out.
fn full_subnet_and_reuse(lab: &mut Lab) {
    for i in 0..5 {
        lab.add_allocated(i % 3, &format!("t{i}"), TINY);
    }
    let x = NetNs::new("x");
    let out = lab.allocate(0, &x, TINY).expect_err("a sixth address in a /29");
    assert!(out.stderr.contains("no free address") && out.stderr.contains("10.0.30.0/29"), "{}", out.stderr);
    assert_eq!(x.netlink(|nl| async move { nl.links().await.unwrap() }).len(), 1, "a refused add plugged something");
    let freed = lab.container("t3").ip;
    let host = lab.container("t3").host;
    lab.cli(host, &["endpoint", "del", "--network", "tiny", "--ip", &freed.to_string()]).assert_success();
    let (again, _) = lab.allocate(0, &x, TINY).expect("the freed address");
    assert_eq!(again, freed);
    // An explicit address goes through the same claim: a taken one is refused.
    let y = NetNs::new("y");
    let out = lab.cli(1, &["endpoint", "add", "--network", "tiny", "--netns", y.name(), "--ip", &freed.to_string()]);
    assert!(!out.success() && out.stderr.contains("already used"), "{}", out.stderr);
}

#[test]
fn concurrent_allocations_on_etcd_never_collide() {
    require_root();
    let underlay = Underlay::routed();
    let etcd = EtcdCluster::start(&underlay, EtcdOptions::default());
    let options = LabOptions { store: LabStore::etcd(&etcd), lease_ttl_s: TTL, ..Default::default() };
    let mut lab = Lab::with_options(underlay, &[BLUE, TINY], options);
    race(&mut lab);
    full_subnet_and_reuse(&mut lab);
    // A node that dies gives its addresses back once its lease ends: h2's lowest
    // address is the next one allocated.
    let h2_lowest = lab.containers.iter().filter(|c| c.host == 1 && c.network.name == "blue").map(|c| c.ip).min().unwrap();
    let mac = lab.containers.iter().find(|c| c.ip == h2_lowest).unwrap().mac;
    lab.kill_agent(1);
    lab.wait_for_dump(0, "h2's endpoints gone", Duration::from_secs(TTL + 6), |d| !d.fdb.iter().any(|f| f.mac == mac));
    assert_eq!(lab.add_allocated(0, "after", BLUE), h2_lowest);
}

#[test]
fn concurrent_allocations_on_the_dir_store_never_collide() {
    require_root();
    let mut lab = Lab::new(Underlay::routed(), &[BLUE, TINY]);
    race(&mut lab);
    full_subnet_and_reuse(&mut lab);
}
