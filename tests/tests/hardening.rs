//! What the eBPF datapath refuses on real interfaces: a container sending from an
//! address or MAC that is not its own, and VXLAN from a host on the underlay that the
//! store does not list for the network (until it is declared with `remote add`). The
//! crafted-frame versions of each check, with every counter, are the prog tests
//! (overlay-agent's `datapath::prog_tests::hardening`).

use std::{net::Ipv4Addr, time::Duration};

use integration_tests::{
    lab::{BLUE, Lab},
    ping, require_root,
    plain::plain_linux_host,
    topo::{H2_IP, Underlay, add_addr, set_link},
    traffic::{PingOptions, ping_with},
};
use overlay_agent::{config::DatapathMode, mac::MacAddr, netlink::LinkChange};
use overlay_common::{Direction, Reason};

const CONVERGE: Duration = Duration::from_secs(2);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn a_container_cannot_send_from_an_address_or_mac_not_its_own() {
    require_root();
    let mut lab = Lab::new(Underlay::two_hosts(), &[BLUE]);
    for i in 0..2 {
        lab.set_mode(i, DatapathMode::Ebpf);
    }
    lab.start_all();
    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    lab.add_container(1, "b", BLUE, ip("10.0.10.12"));
    lab.wait_converged(CONVERGE);
    let (a, b) = (lab.container("a"), lab.container("b"));
    assert_eq!(ping(&a.ns, b.ip, 2, Duration::from_secs(2)).received, 2, "a -> b before anything");

    // A second address added by hand inside the container: what it sends from there is
    // dropped on its own host, counted, and never reaches b.
    add_addr(&a.ns, "eth0", "10.0.10.99/24");
    let spoofed = ping_with(
        &a.ns,
        b.ip,
        &PingOptions { count: 3, timeout: Duration::from_millis(500), source: Some(ip("10.0.10.99")), ..Default::default() },
    );
    assert_eq!(spoofed.received, 0, "{spoofed:?}");
    assert!(lab.dump(0).packets(Direction::FromContainer, Reason::SourceIpMismatch) >= 3, "{:#?}", lab.dump(0).stats);
    // Its own address still works.
    assert_eq!(ping(&a.ns, b.ip, 2, Duration::from_secs(2)).received, 2);

    // Another MAC on its interface: nothing gets out (ARP is refused too), counted.
    let before = lab.dump(0).packets(Direction::FromContainer, Reason::SourceMacMismatch);
    let other = MacAddr([0x02, 0x42, 0x0a, 0x00, 0x0a, 0x63]);
    set_link(&a.ns, "eth0", LinkChange { mac: Some(other.0), ..Default::default() });
    assert_eq!(ping(&a.ns, b.ip, 3, Duration::from_millis(500)).received, 0);
    assert!(lab.dump(0).packets(Direction::FromContainer, Reason::SourceMacMismatch) > before);
    set_link(&a.ns, "eth0", LinkChange { mac: Some(a.mac.0), ..Default::default() });
    assert_eq!(ping(&a.ns, b.ip, 2, Duration::from_secs(2)).received, 2, "its own MAC again");
}

#[test]
fn vxlan_from_a_host_the_store_does_not_know_is_not_decapsulated() {
    require_root();
    let mut lab = Lab::new(Underlay::two_hosts(), &[BLUE]);
    lab.set_mode(0, DatapathMode::Ebpf);
    lab.start_agent(0);
    lab.add_container(0, "c1", BLUE, ip("10.0.10.10"));
    let (c1ip, c1mac, vtep1) = (lab.container("c1").ip, lab.container("c1").mac, lab.host(0).ip);
    // A plain Linux VTEP on the underlay that knows c1 and sends to it, but that nobody
    // declared: its frames carry a valid VNI, a valid inner MAC, our VTEP address.
    let stranger = plain_linux_host(&lab, c1ip, c1mac, vtep1);
    let denied = ping(&stranger.container, c1ip, 3, Duration::from_millis(500));
    assert_eq!(denied.received, 0, "{denied:?}");
    let d = lab.dump(0);
    assert!(d.packets(Direction::FromUnderlay, Reason::UnknownVtep) >= 3, "{:#?}", d.stats);
    assert_eq!(d.packets(Direction::FromUnderlay, Reason::Decapsulated), 0, "{:#?}", d.stats);
    assert!(!d.vteps.iter().any(|v| v.vtep == H2_IP), "{:#?}", d.vteps);

    // Declared: accepted from then on, both ways.
    lab.cli(0, &[
        "remote", "add", "--network", "blue", "--ip", &stranger.ip.to_string(), "--mac", &stranger.mac.to_string(), "--vtep", &H2_IP.to_string(),
    ])
    .assert_success();
    lab.wait_for_dump(0, "the declared VTEP accepted", CONVERGE, |d| d.vteps.iter().any(|v| v.vni == BLUE.vni && v.vtep == H2_IP));
    assert_eq!(ping(&stranger.container, c1ip, 2, Duration::from_secs(2)).received, 2);
    assert_eq!(ping(&lab.container("c1").ns, stranger.ip, 2, Duration::from_secs(2)).received, 2);
    // Removed again: refused again.
    lab.cli(0, &["remote", "del", "--network", "blue", "--ip", &stranger.ip.to_string()]).assert_success();
    lab.wait_for_dump(0, "the VTEP no longer accepted", CONVERGE, |d| !d.vteps.iter().any(|v| v.vtep == H2_IP));
    let before = lab.dump(0).packets(Direction::FromUnderlay, Reason::UnknownVtep);
    assert_eq!(ping(&stranger.container, c1ip, 2, Duration::from_millis(500)).received, 0);
    assert!(lab.dump(0).packets(Direction::FromUnderlay, Reason::UnknownVtep) > before);
}
