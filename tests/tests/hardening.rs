//! What the datapath refuses on real interfaces: a container sending from an address or
//! MAC that is not its own, or anything but IPv4 and ARP (both datapaths: the eBPF
//! programs, or the agent's bridge-family nftables rules in kernel mode), and VXLAN from
//! a host on the underlay that the store does not list for the network, until it is
//! declared with `remote add` (the eBPF programs' `OVL_VTEPS`, or the agent's input-hook
//! nftables rules in kernel mode). The
//! crafted-frame versions of each check, with every counter, are the prog tests
//! (overlay-agent's `datapath::prog_tests::hardening`).

use std::{net::Ipv4Addr, time::Duration};

use integration_tests::{
    Capture, NetNs,
    lab::{BLUE, Lab, LabOptions},
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

/// Sends `frame` as it is out of `ifname` of `ns` (a packet socket: any source, any type).
fn send_raw(ns: &NetNs, ifname: &str, frame: &[u8]) {
    let ifname = ifname.to_owned();
    let frame = frame.to_vec();
    ns.run(move || {
        let c = std::ffi::CString::new(ifname.clone()).unwrap();
        // SAFETY: plain syscalls on a descriptor this closure owns; the buffers live across them.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(c.as_ptr()) as i32;
            addr.sll_halen = 6;
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            assert_eq!(sent, frame.len() as isize, "sending on {ifname}: {err}");
        }
    });
}

/// An 802.1Q-tagged IPv4/UDP frame `src_mac` → `dst_mac` claiming `src_ip`.
fn tagged_udp(src_mac: MacAddr, dst_mac: MacAddr, src_ip: Ipv4Addr, dst_ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac.0);
    f.extend_from_slice(&src_mac.0);
    f.extend_from_slice(&[0x81, 0x00, 0x00, 0x07, 0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 36, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&src_ip.octets());
    ip.extend_from_slice(&dst_ip.octets());
    let sum = integration_tests::packet::internet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 16, 0, 0, b's', b'p', b'o', b'o', b'f', b'e', b'd', b'!']);
    f
}

/// Whether any frame that arrived carries IPv4 from `src` (802.1Q-tagged or not).
fn seen_from(frames: &[integration_tests::Frame], src: Ipv4Addr) -> bool {
    fn src_at(f: &[u8]) -> Option<&[u8]> {
        match (f.get(12..14), f.get(16..18)) {
            (Some([0x08, 0x00]), _) => f.get(26..30),
            (Some([0x81, 0x00]), Some([0x08, 0x00])) => f.get(30..34),
            _ => None,
        }
    }
    frames
        .iter()
        .filter(|f| f.direction == integration_tests::Direction::Incoming)
        .any(|f| src_at(&f.data) == Some(&src.octets()[..]))
}

#[test]
fn a_container_cannot_send_from_an_address_or_mac_not_its_own() {
    require_root();
    let mut lab = Lab::new(Underlay::two_hosts(), &[BLUE]);
    lab.start_all();
    let ebpf = lab.mode(0) != DatapathMode::Kernel;
    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    lab.add_container(1, "b", BLUE, ip("10.0.10.12"));
    lab.add_container(0, "c", BLUE, ip("10.0.10.13"));
    lab.wait_converged(CONVERGE);
    let (a, b, c) = (lab.container("a"), lab.container("b"), lab.container("c"));
    assert_eq!(ping(&a.ns, b.ip, 2, Duration::from_secs(2)).received, 2, "a -> b before anything");
    let spoofed_ip = ip("10.0.10.99");
    // Watched where it would arrive: b on the other host, c on the same one.
    let (cap_b, cap_c) = (Capture::start(&b.ns, "eth0"), Capture::start(&c.ns, "eth0"));

    // A second address added by hand inside the container: what it sends from there
    // never reaches anyone.
    add_addr(&a.ns, "eth0", "10.0.10.99/24");
    for to in [b.ip, c.ip] {
        let opts = PingOptions { count: 2, timeout: Duration::from_millis(300), source: Some(spoofed_ip), ..Default::default() };
        assert_eq!(ping_with(&a.ns, to, &opts).received, 0);
    }
    // Nor does IPv4 inside an 802.1Q tag, past any IPv4-only check, nor a tagged frame
    // from its own address (tags are not carried at all).
    for (mac, to) in [(b.mac, b.ip), (c.mac, c.ip)] {
        send_raw(&a.ns, "eth0", &tagged_udp(a.mac, mac, spoofed_ip, to));
        send_raw(&a.ns, "eth0", &tagged_udp(a.mac, mac, a.ip, to));
    }
    // Its own address still works, through the same captures.
    assert_eq!(ping(&a.ns, b.ip, 2, Duration::from_secs(2)).received, 2);
    assert_eq!(ping(&a.ns, c.ip, 2, Duration::from_secs(2)).received, 2);
    let (frames_b, frames_c) = (cap_b.stop(), cap_c.stop());
    assert!(seen_from(&frames_b, a.ip) && seen_from(&frames_c, a.ip), "the captures saw a's own pings");
    let tagged = |frames: &[integration_tests::Frame]| frames.iter().any(|f| f.data.windows(8).any(|w| w == b"spoofed!"));
    assert!(!tagged(&frames_b) && !tagged(&frames_c), "an 802.1Q-tagged frame got through");
    assert!(!seen_from(&frames_b, spoofed_ip), "a frame from the spoofed address reached b");
    assert!(!seen_from(&frames_c, spoofed_ip), "a frame from the spoofed address reached c");
    if ebpf {
        let d = lab.dump(0);
        assert!(d.packets(Direction::FromContainer, Reason::SourceIpMismatch) >= 4, "{:#?}", d.stats);
        assert!(d.packets(Direction::FromContainer, Reason::UnsupportedProtocol) >= 4, "{:#?}", d.stats);
    }

    // Another MAC on its interface: nothing gets out (ARP is refused too).
    let other = MacAddr([0x02, 0x42, 0x0a, 0x00, 0x0a, 0x63]);
    let before = lab.dump(0).packets(Direction::FromContainer, Reason::SourceMacMismatch);
    let cap_c = Capture::start(&c.ns, "eth0");
    set_link(&a.ns, "eth0", LinkChange { mac: Some(other.0), ..Default::default() });
    assert_eq!(ping(&a.ns, b.ip, 2, Duration::from_millis(500)).received, 0);
    assert_eq!(ping(&a.ns, c.ip, 2, Duration::from_millis(500)).received, 0);
    let frames_c = cap_c.stop();
    assert!(!frames_c.iter().any(|f| f.data[6..12] == other.0), "a frame from the other MAC reached c");
    if ebpf {
        assert!(lab.dump(0).packets(Direction::FromContainer, Reason::SourceMacMismatch) > before);
    }
    set_link(&a.ns, "eth0", LinkChange { mac: Some(a.mac.0), ..Default::default() });
    assert_eq!(ping(&a.ns, b.ip, 2, Duration::from_secs(2)).received, 2, "its own MAC again");
}

#[test]
fn vxlan_from_a_host_the_store_does_not_know_is_not_decapsulated() {
    require_root();
    let mut lab = Lab::new(Underlay::two_hosts(), &[BLUE]);
    let ebpf = lab.mode(0) != DatapathMode::Kernel;
    lab.start_agent(0);
    lab.add_container(0, "c1", BLUE, ip("10.0.10.10"));
    let (c1ip, c1mac, vtep1) = (lab.container("c1").ip, lab.container("c1").mac, lab.host(0).ip);
    // A plain Linux VTEP on the underlay that knows c1 and sends to it, but that nobody
    // declared: its frames carry a valid VNI, a valid inner MAC, our VTEP address.
    let stranger = plain_linux_host(&lab, c1ip, c1mac, vtep1);
    // Refused: nothing reaches c1 (in kernel mode its answer would have nowhere to go
    // either, so the capture, not the ping, is what shows the frames were dropped).
    let refused = |lab: &Lab, what: &str| {
        let cap = Capture::start(&lab.container("c1").ns, "eth0");
        let denied = ping(&stranger.container, c1ip, 3, Duration::from_millis(500));
        assert_eq!(denied.received, 0, "{what}: {denied:?}");
        assert!(!seen_from(&cap.stop(), stranger.ip), "{what}: the stranger's pings reached c1");
    };
    refused(&lab, "undeclared");
    if ebpf {
        let d = lab.dump(0);
        assert!(d.packets(Direction::FromUnderlay, Reason::UnknownVtep) >= 3, "{:#?}", d.stats);
        assert_eq!(d.packets(Direction::FromUnderlay, Reason::Decapsulated), 0, "{:#?}", d.stats);
        assert!(!d.vteps.iter().any(|v| v.vtep == H2_IP), "{:#?}", d.vteps);
    }

    // Declared: accepted from then on, both ways.
    lab.cli(0, &[
        "remote", "add", "--network", "blue", "--ip", &stranger.ip.to_string(), "--mac", &stranger.mac.to_string(), "--vtep", &H2_IP.to_string(),
    ])
    .assert_success();
    if ebpf {
        lab.wait_for_dump(0, "the declared VTEP accepted", CONVERGE, |d| d.vteps.iter().any(|v| v.vni == BLUE.vni && v.vtep == H2_IP));
    }
    assert_eq!(ping(&stranger.container, c1ip, 2, Duration::from_secs(2)).received, 2);
    assert_eq!(ping(&lab.container("c1").ns, stranger.ip, 2, Duration::from_secs(2)).received, 2);
    // Removed again: refused again.
    lab.cli(0, &["remote", "del", "--network", "blue", "--ip", &stranger.ip.to_string()]).assert_success();
    if ebpf {
        lab.wait_for_dump(0, "the VTEP no longer accepted", CONVERGE, |d| !d.vteps.iter().any(|v| v.vtep == H2_IP));
    }
    let before = lab.dump(0).packets(Direction::FromUnderlay, Reason::UnknownVtep);
    refused(&lab, "declared and removed again");
    if ebpf {
        assert!(lab.dump(0).packets(Direction::FromUnderlay, Reason::UnknownVtep) > before);
    }
}

#[test]
fn known_vteps_only_false_takes_vxlan_from_any_host() {
    require_root();
    let options = LabOptions { network_extra: "known_vteps_only = false\n".into(), ..Default::default() };
    let mut lab = Lab::with_options(Underlay::two_hosts(), &[BLUE], options);
    lab.start_agent(0);
    lab.add_container(0, "c1", BLUE, ip("10.0.10.10"));
    let (c1ip, c1mac, vtep1) = (lab.container("c1").ip, lab.container("c1").mac, lab.host(0).ip);
    let stranger = plain_linux_host(&lab, c1ip, c1mac, vtep1);
    let cap = Capture::start(&lab.container("c1").ns, "eth0");
    ping(&stranger.container, c1ip, 2, Duration::from_millis(500));
    assert!(seen_from(&cap.stop(), stranger.ip), "the stranger's pings did not reach c1 with known_vteps_only = false");
}
