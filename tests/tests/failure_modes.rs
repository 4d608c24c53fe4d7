//! Failure modes users of other overlays run into, in the lab's datapath mode (`cargo
//! xtask test` runs this suite in eBPF and in kernel mode): the MTU boundary (a
//! don't-fragment packet of exactly the container MTU crosses, one byte more is refused
//! with "message too long"; underlays of MTU 9000 and 1450 give containers 50 bytes
//! less), checksum offload switched off on the underlay and the veths (TCP still
//! intact), and GRO on the receiving side (segments arrive aggregated).

use std::{net::Ipv4Addr, process::Command, time::Duration};

use integration_tests::{
    Capture, NetNs,
    lab::{BLUE, Lab},
    packet::{Network, Transport},
    require_root, tcp_transfer,
    topo::{UL_IF, Underlay},
    traffic::{Direction, PingOptions, ping_with},
};

const CONVERGE: Duration = Duration::from_secs(2);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Two hosts on an underlay of `mtu`, a container on each, converged.
fn pair(mtu: u32) -> Lab {
    let mut lab = Lab::new(Underlay::builder().mtu(mtu).two_hosts(), &[BLUE]);
    lab.start_all();
    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    lab.add_container(1, "b", BLUE, ip("10.0.10.12"));
    lab.wait_converged(CONVERGE);
    lab
}

fn df_ping(from: &NetNs, to: Ipv4Addr, payload_len: usize) -> integration_tests::PingResult {
    ping_with(
        from,
        to,
        &PingOptions { count: 2, timeout: Duration::from_secs(2), payload_len, dont_fragment: true, ..Default::default() },
    )
}

#[test]
fn the_mtu_boundary_holds_for_jumbo_and_small_underlays() {
    require_root();
    for underlay_mtu in [9000u32, 1450] {
        let lab = pair(underlay_mtu);
        let (a, b) = (lab.container("a"), lab.container("b"));
        let mtu = underlay_mtu - 50;
        assert_eq!(a.ns.link("eth0").mtu, mtu, "container MTU on an underlay of {underlay_mtu}");
        assert_eq!(b.ns.link("eth0").mtu, mtu);
        // ICMP echo: 20 bytes of IP header and 8 of ICMP around the payload.
        let exact = (mtu - 28) as usize;
        let r = df_ping(&a.ns, b.ip, exact);
        assert!(r.all_received(), "a packet of exactly {mtu} bytes with DF set (underlay {underlay_mtu}): {r:?}");
        let r = df_ping(&b.ns, a.ip, exact);
        assert!(r.all_received(), "and back: {r:?}");
        // One byte more: refused at the sender ("message too long", what `ping -M do`
        // reports as frag needed), never silently lost on the way.
        let r = df_ping(&a.ns, b.ip, exact + 1);
        assert_eq!((r.received, r.send_errors), (0, 2), "{mtu} + 1 bytes with DF (underlay {underlay_mtu}): {r:?}");
    }
}

/// `ethtool -K IFACE FEATURE on|off` in `ns`.
fn ethtool_feature(ns: &NetNs, iface: &str, feature: &str, state: &str) {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args(["ethtool", "-K", iface, feature, state])
        .output()
        .expect("nsenter + ethtool (util-linux, ethtool)");
    assert!(
        out.status.success(),
        "ethtool -K {iface} {feature} {state} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn feature_off(ns: &NetNs, iface: &str, feature: &str) {
    ethtool_feature(ns, iface, feature, "off");
}

#[test]
fn tcp_stays_intact_with_checksum_offload_off() {
    require_root();
    let lab = pair(1500);
    // Off on both underlay ends, both containers' interfaces and their host-side veths:
    // every checksum is then computed in software on the way out.
    for i in 0..2 {
        let host = &lab.host(i).ns;
        feature_off(host, UL_IF, "tx");
        let veths = host.netlink(|nl| async move { nl.links().await.unwrap() });
        for v in veths.iter().filter(|l| l.name.starts_with("ovl")) {
            feature_off(host, &v.name, "tx");
        }
    }
    let (a, b) = (lab.container("a"), lab.container("b"));
    feature_off(&a.ns, "eth0", "tx");
    feature_off(&b.ns, "eth0", "tx");
    for (server, client) in [(b, a), (a, b)] {
        let t = tcp_transfer(&server.ns, server.ip, &client.ns, 32 << 20);
        assert!(t.is_complete(), "{t:?}");
        assert_eq!(t.sent_sha256, t.received_sha256, "data corrupted");
    }
}

#[test]
fn gro_still_aggregates_on_the_receiving_side() {
    require_root();
    let lab = pair(1500);
    let (a, b) = (lab.container("a"), lab.container("b"));
    // A veth underlay would carry the sender's GSO super-packets whole, and the receiver
    // would see large frames with or without GRO. So the sending host segments in
    // software (no GSO/TSO on its underlay: MTU-sized VXLAN packets on the wire), and
    // the receiving host's underlay runs GRO (a veth does with NAPI, `gro on`, 5.13+):
    // large frames at b can only come from GRO merging VXLAN packets before the datapath.
    for feature in ["tso", "gso"] {
        feature_off(&lab.host(0).ns, UL_IF, feature);
    }
    ethtool_feature(&lab.host(1).ns, UL_IF, "gro", "on");
    let capture = Capture::start(&b.ns, "eth0");
    let bytes = 4 << 20;
    let t = tcp_transfer(&b.ns, b.ip, &a.ns, bytes);
    let frames = capture.stop();
    assert!(t.is_complete(), "{t:?}");
    // The TCP data b received: incoming TCP frames to b longer than a bare header
    // (GRO aggregates come whole; the capture keeps up to 256 KiB of each).
    let data: Vec<usize> = frames
        .iter()
        .filter(|f| f.direction == Direction::Incoming)
        .filter_map(|f| {
            let p = f.decode().ok()?;
            match p.network {
                Network::Ipv4 { header, transport: Transport::Tcp(_) } if header.dst == b.ip && header.total_len != 52 => {
                    Some(f.truncated_from.unwrap_or(f.data.len()))
                }
                _ => None,
            }
        })
        .collect();
    let mtu = b.ns.link("eth0").mtu as usize;
    let largest = data.iter().copied().max().unwrap_or(0);
    // Without GRO every frame is at most MTU + 14 and 4 MiB take about 2,900 of them.
    let unaggregated = bytes / (mtu - 52);
    assert!(largest > 2 * mtu, "no aggregated frame arrived (largest {largest} bytes, MTU {mtu})");
    assert!(
        data.len() * 2 < unaggregated,
        "{} data frames for {bytes} bytes: GRO aggregates less than 2 segments per frame (without: about {unaggregated})",
        data.len()
    );
}
