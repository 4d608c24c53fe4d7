//! The etcd control plane: agents on real etcd servers (in namespaces on the underlay),
//! the key layout, leases and node death, conflicts decided by transactions, outages,
//! a 3-member cluster losing members, TLS with client certificates.

use std::{net::Ipv4Addr, time::Duration};

use integration_tests::{
    etcd::{EtcdCluster, EtcdOptions},
    lab::{BLUE, Lab, LabOptions, LabStore},
    ping, require_root,
    topo::Underlay,
};

const CONVERGE: Duration = Duration::from_secs(3);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn etcd_lab(underlay: Underlay, cluster: &EtcdCluster, ttl: u64) -> Lab {
    Lab::with_options(underlay, &[BLUE], LabOptions { store: LabStore::etcd(cluster), lease_ttl_s: ttl, ..Default::default() })
}

#[test]
fn agents_on_etcd_reach_each_other_with_the_documented_key_layout() {
    require_root();
    let underlay = Underlay::routed();
    let etcd = EtcdCluster::start(&underlay, EtcdOptions::default());
    let mut lab = etcd_lab(underlay, &etcd, 10);
    lab.start_all();
    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    lab.add_container(1, "b", BLUE, ip("10.0.10.12"));
    lab.add_container(2, "c", BLUE, ip("10.0.10.13"));
    lab.wait_converged(CONVERGE);
    for x in &lab.containers {
        for y in &lab.containers {
            if x.name != y.name {
                let r = ping(&x.ns, y.ip, 2, Duration::from_secs(2));
                assert_eq!(r.received, 2, "{} -> {}", x.name, y.name);
            }
        }
    }
    let keys: Vec<String> = etcd.get_prefix("/overlay/v1/").into_iter().map(|(k, _)| k).collect();
    for expected in [
        "/overlay/v1/nodes/h1",
        "/overlay/v1/nodes/h3",
        "/overlay/v1/endpoints/42/10.0.10.12",
        "/overlay/v1/claims/mac/42/02:42:0a:00:0a:0d",
        "/overlay/v1/claims/vtep/198.51.100.1",
    ] {
        assert!(keys.iter().any(|k| k == expected), "{expected} missing from {keys:#?}");
    }
    let status = lab.status(0);
    assert_eq!(status["store"]["state"], "connected", "{status:#}");
    assert_eq!(status["store"]["registered"], true, "{status:#}");
}
