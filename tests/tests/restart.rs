//! Restarts and upgrades no container notices.

use std::{net::Ipv4Addr, time::Duration};

use integration_tests::{
    lab::{BLUE, Lab},
    ping, require_root,
    topo::Underlay,
};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn sigterm_leaves_the_datapath_and_a_restart_adopts_it() {
    require_root();
    let mut lab = Lab::new(Underlay::two_hosts(), &[BLUE]);
    lab.start_all();
    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    lab.add_container(1, "b", BLUE, ip("10.0.10.12"));
    lab.wait_converged(Duration::from_secs(3));
    let before = lab.dump(0);
    let status = lab.stop_agent(0);
    assert!(status.success(), "{status}");
    let r = ping(&lab.container("a").ns, lab.container("b").ip, 3, Duration::from_secs(1));
    assert_eq!(r.received, 3, "traffic stopped with the agent");
    lab.start_agent(0);
    let r = ping(&lab.container("a").ns, lab.container("b").ip, 3, Duration::from_secs(1));
    assert_eq!(r.received, 3);
    let after = lab.dump(0);
    assert_eq!(before.fdb, after.fdb);
    assert_eq!(before.endpoints, after.endpoints);
    let list = lab.cli(0, &["endpoint", "list", "--json"]);
    assert!(list.stdout.contains("10.0.10.11"), "{}", list.stdout);
}
