//! Prometheus metrics (`[metrics] listen`): the exposition passes Debian's `promtool
//! check metrics`, and the values follow what happens: datapath counters with traffic
//! (eBPF), endpoint operations, table fill levels, the store connection, the mode.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use integration_tests::{
    NetNs,
    lab::{BLUE, Lab, LabOptions},
    ping, require_root,
    topo::Underlay,
};
use overlay_agent::config::DatapathMode;

const LISTEN: &str = "127.0.0.1:9464";
const CONVERGE: Duration = Duration::from_secs(2);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// `GET /metrics` from inside the host's namespace (the agent listens on its loopback).
fn scrape(host: &NetNs) -> String {
    let response = host.run(|| -> std::io::Result<String> {
        let mut s = TcpStream::connect(LISTEN)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    });
    let response = response.unwrap_or_else(|e| panic!("scraping {LISTEN} in {}: {e}", host.name()));
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not HTTP: {response}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// `promtool check metrics` on the exposition: exits non-zero on format errors and
/// lint problems (names, units, HELP texts).
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian `prometheus`, installed by `cargo xtask setup`)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[track_caller]
fn must(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

fn lab(mode: DatapathMode) -> Lab {
    let options = LabOptions { metrics_listen: Some(LISTEN.into()), ..Default::default() };
    let mut lab = Lab::with_options(Underlay::two_hosts(), &[BLUE], options);
    for i in 0..2 {
        lab.set_mode(i, mode);
    }
    lab.start_all();
    lab
}

#[test]
fn metrics_are_valid_and_follow_the_traffic_in_ebpf_mode() {
    require_root();
    let mut lab = lab(DatapathMode::Ebpf);
    let before = scrape(&lab.host(0).ns);
    promtool_check(&before);
    assert_eq!(must(&before, "overlay_datapath_info{mode=\"ebpf\",node=\"h1\"}"), 1.0);
    assert_eq!(must(&before, "overlay_store_connected"), 1.0);
    assert_eq!(must(&before, "overlay_local_endpoints"), 0.0);
    let encap = "overlay_datapath_packets_total{direction=\"from-container\",reason=\"encapsulated\",verdict=\"forwarded\"}";
    let decap = "overlay_datapath_packets_total{direction=\"from-underlay\",reason=\"decapsulated\",verdict=\"forwarded\"}";
    let spoofed = "overlay_datapath_packets_total{direction=\"from-container\",reason=\"source-ip-mismatch\",verdict=\"dropped\"}";
    // Every reason is there from the start, at zero.
    assert_eq!(must(&before, encap), 0.0);
    assert_eq!(must(&before, spoofed), 0.0);
    assert!(must(&before, "process_resident_memory_bytes") > 0.0);

    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    lab.add_container(1, "b", BLUE, ip("10.0.10.12"));
    lab.wait_converged(CONVERGE);
    let (a, b) = (lab.container("a"), lab.container("b"));
    assert_eq!(ping(&a.ns, b.ip, 5, Duration::from_secs(2)).received, 5);

    let h0 = scrape(&lab.host(0).ns);
    promtool_check(&h0);
    assert!(must(&h0, encap) >= 5.0, "5 echo requests encapsulated on h1");
    assert!(must(&h0, decap) >= 5.0, "5 echo replies decapsulated on h1");
    let bytes = "overlay_datapath_bytes_total{direction=\"from-container\",reason=\"encapsulated\",verdict=\"forwarded\"}";
    assert!(must(&h0, bytes) >= 5.0 * 98.0, "at least 5 x 98-byte frames");
    assert_eq!(must(&h0, "overlay_endpoint_operations_total{op=\"add\",result=\"ok\"}"), 1.0);
    assert_eq!(must(&h0, "overlay_endpoint_operation_duration_seconds_count{op=\"add\"}"), 1.0);
    assert_eq!(must(&h0, "overlay_local_endpoints"), 1.0);
    assert!(must(&h0, "overlay_map_entries{map=\"OVL_FDB\"}") >= 2.0, "own and b's MAC");
    assert!(must(&h0, "overlay_map_capacity{map=\"OVL_FDB\"}") >= 1024.0);
    assert!(must(&h0, "overlay_store_apply_duration_seconds_count") >= 1.0, "store events applied");
    assert_eq!(value(&h0, "overlay_store_errors_total{op=\"register\"}"), None, "no store error happened");

    // A refused request counts as an error.
    let out = lab.cli(0, &["endpoint", "add", "--network", "blue", "--netns", a.ns.name(), "--ip", "10.0.10.12", "--ifname", "eth1"]);
    assert!(!out.success(), "b's address is taken: {out:?}");
    let after = scrape(&lab.host(0).ns);
    assert_eq!(must(&after, "overlay_endpoint_operations_total{op=\"add\",result=\"error\"}"), 1.0);
}

#[test]
fn metrics_in_kernel_mode_have_no_datapath_counters() {
    require_root();
    let mut lab = lab(DatapathMode::Kernel);
    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    let text = scrape(&lab.host(0).ns);
    promtool_check(&text);
    assert_eq!(must(&text, "overlay_datapath_info{mode=\"kernel\",node=\"h1\"}"), 1.0);
    assert_eq!(must(&text, "overlay_local_endpoints"), 1.0);
    assert!(!text.contains("overlay_datapath_packets_total"), "per-reason counters exist only in eBPF mode");
}

#[test]
fn a_taken_metrics_address_stops_the_start_with_the_reason() {
    require_root();
    let lab = Lab::with_options(Underlay::two_hosts(), &[BLUE], LabOptions { metrics_listen: Some(LISTEN.into()), ..Default::default() });
    // Something else holds the port in h1's namespace.
    let _holder = lab.host(0).ns.run(|| std::net::TcpListener::bind(LISTEN)).unwrap();
    let config = lab.nodes[0].config.clone();
    let out = integration_tests::agent::run_cli_with_env(
        Some(&lab.host(0).ns),
        &lab.binary,
        ["--config", config.to_str().unwrap(), "run"],
        &[],
    );
    assert!(!out.success(), "{out:?}");
    // Checked before anything changed on the host.
    assert!(!lab.nodes[0].bpffs_dir.exists());
    let links = lab.host(0).ns.netlink(|nl| async move { nl.links().await.unwrap() });
    assert_eq!(links.iter().filter(|l| l.name.starts_with("ov")).count(), 0, "{links:?}");
    assert!(out.stderr.contains("cannot serve metrics on 127.0.0.1:9464"), "{}", out.stderr);
    assert!(out.stderr.contains("[metrics] listen"), "{}", out.stderr);
}
