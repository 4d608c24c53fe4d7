//! What operators look at. Prometheus metrics (`[metrics] listen`): the exposition
//! passes Debian's `promtool check metrics`, and the values follow what happens
//! (datapath counters with traffic in eBPF mode, endpoint operations, table fill levels,
//! the store connection, the mode). `map dump`: one table, one network, node names,
//! per-CPU stats. JSON logs. The control socket: root's only, and malformed, oversized
//! and stalled requests answered or cut off without blocking anyone else.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use integration_tests::{
    NetNs,
    lab::{BLUE, Lab, LabOptions, RED},
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

#[test]
fn map_dump_shows_one_table_of_one_network_with_node_names() {
    require_root();
    let mut lab = Lab::new(Underlay::two_hosts(), &[BLUE, RED]);
    for i in 0..2 {
        lab.set_mode(i, DatapathMode::Ebpf);
    }
    lab.start_all();
    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    lab.add_container(1, "b", BLUE, ip("10.0.10.12"));
    lab.add_container(1, "r", RED, ip("10.0.20.12"));
    lab.add_container(0, "s", RED, ip("10.0.20.11"));
    lab.wait_converged(CONVERGE);
    let b_mac = lab.container("b").mac.to_string();
    let json = |args: &[&str]| -> serde_json::Value {
        let out = lab.cli(0, args);
        out.assert_success();
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
    };

    let fdb = json(&["map", "dump", "fdb", "--network", "blue", "--json"]);
    let rows = fdb.as_array().expect("one table: an array of rows");
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r["vni"] == BLUE.vni), "only blue's entries: {fdb:#}");
    let b = rows.iter().find(|r| r["mac"] == b_mac.as_str()).unwrap_or_else(|| panic!("no entry for b: {fdb:#}"));
    assert_eq!(b["kind"], "remote");
    assert_eq!(b["node"], "h2", "the node behind the VTEP, named: {b:#}");

    let vteps = json(&["map", "dump", "vteps", "--json"]);
    let vteps = vteps.as_array().unwrap();
    assert_eq!(vteps.len(), 2, "h2's VTEP for both networks: {vteps:?}");
    assert!(vteps.iter().all(|v| v["node"] == "h2" && v["vtep"] == lab.host(1).ip.to_string()), "{vteps:?}");

    assert_eq!(ping(&lab.container("a").ns, lab.container("b").ip, 3, Duration::from_secs(2)).received, 3);
    let stats = json(&["map", "dump", "stats", "--per-cpu", "--json"]);
    let cpus = std::thread::available_parallelism().unwrap().get();
    for row in stats.as_array().unwrap() {
        let per_cpu: Vec<u64> = row["per_cpu_packets"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(per_cpu.len(), cpus, "{row}");
        assert_eq!(per_cpu.iter().sum::<u64>(), row["packets"].as_u64().unwrap(), "{row}");
    }
    let plain = json(&["map", "dump", "stats", "--json"]);
    assert!(plain.as_array().unwrap().iter().all(|r| r.get("per_cpu_packets").is_none()), "per CPU only when asked");

    // The text form: the table asked for, with the node column.
    let text = lab.cli(0, &["map", "dump", "fdb", "--network", "red"]);
    text.assert_success();
    assert!(text.stdout.contains("NODE") && text.stdout.contains("h2"), "{}", text.stdout);
    assert!(!text.stdout.contains("neighbours"), "only the FDB: {}", text.stdout);
    assert!(!text.stdout.contains(&b_mac), "blue's entries filtered out: {}", text.stdout);
    let bad = lab.cli(0, &["map", "dump", "neigh", "--network", "green"]);
    assert!(!bad.success() && bad.stderr.contains("no network \"green\"") && bad.stderr.contains("blue, red"), "{bad:?}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    require_root();
    let mut lab = Lab::new(Underlay::two_hosts(), &[BLUE]);
    lab.nodes[0].env.push(("OVERLAY_AGENT_LOG_FORMAT".into(), "json".into()));
    lab.start_agent(0);
    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    lab.stop_agent(0);
    let log = std::fs::read_to_string(lab.nodes[0].config.with_extension("log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object ({e}): {l}")))
        .collect();
    for l in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(l.get(field).is_some(), "no {field} in {l}");
        }
    }
    let running = lines.iter().find(|l| l["message"] == "overlay agent running").expect("the start line");
    assert_eq!(running["node"], "h1", "fields are keys of the object: {running}");
    assert!(lines.iter().any(|l| l["message"] == "endpoint added" && l["ip"] == "10.0.10.11"), "{log}");
}

/// One request line on an open control connection, and the reply line.
fn exchange(stream: &mut std::os::unix::net::UnixStream, line: &[u8]) -> String {
    use std::io::BufRead as _;
    stream.write_all(line).unwrap();
    let mut reply = String::new();
    std::io::BufReader::new(stream.try_clone().unwrap()).read_line(&mut reply).unwrap();
    reply
}

#[test]
fn the_control_socket_is_roots_and_survives_bad_clients() {
    use std::os::unix::{fs::PermissionsExt as _, net::UnixStream};
    require_root();
    let mut lab = Lab::new(Underlay::two_hosts(), &[BLUE]);
    lab.start_agent(0);
    let socket = lab.nodes[0].state_dir.join("agent.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode {mode:o}");

    // Another user cannot use it, and is told why.
    let config = lab.nodes[0].config.clone();
    let binary = lab.binary.clone();
    let out = integration_tests::agent::run_cli_with_env(
        Some(&lab.host(0).ns),
        std::path::Path::new("setpriv"),
        [
            "--reuid=65534".as_ref(),
            "--regid=65534".as_ref(),
            "--clear-groups".as_ref(),
            binary.as_os_str(),
            "--config".as_ref(),
            config.as_os_str(),
            "status".as_ref(),
        ],
        &[],
    );
    assert!(!out.success(), "{out:?}");
    assert!(out.stderr.contains("permission denied on the agent's control socket"), "{}", out.stderr);

    // Malformed: an error, and the connection still serves the next request.
    let mut conn = UnixStream::connect(&socket).unwrap();
    let reply = exchange(&mut conn, b"{\"no such request\": 1}\n");
    assert!(reply.contains("malformed request"), "{reply}");
    let mut status = serde_json::to_vec(&overlay_agent::api::Request::Status).unwrap();
    status.push(b'\n');
    let reply = exchange(&mut conn, &status);
    assert!(reply.contains("\"node\":\"h1\""), "{reply}");

    // Oversized: an error, then the connection is closed.
    let mut big = UnixStream::connect(&socket).unwrap();
    let reply = exchange(&mut big, &vec![b'x'; 200 * 1024]);
    assert!(reply.contains("request larger than 64 KiB"), "{reply}");
    let mut rest = String::new();
    assert_eq!(big.read_to_string(&mut rest).unwrap_or(0), 0, "closed after the error: {rest}");

    // Stalled: half a request holds nobody up, and is cut off.
    let mut slow = UnixStream::connect(&socket).unwrap();
    slow.write_all(b"{\"Sta").unwrap();
    let started = std::time::Instant::now();
    lab.cli(0, &["status"]).assert_success();
    assert!(started.elapsed() < Duration::from_secs(5), "status waited for the stalled client");
    slow.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reply = String::new();
    slow.read_to_string(&mut reply).unwrap();
    assert!(reply.contains("request incomplete after 10 s"), "{reply}");
    // The agent is still fine.
    lab.cli(0, &["status"]).assert_success();
}

/// `overlay-agent trace ARGS` on host `i` on a thread of its own (it runs until its
/// `--count` events): join the handle for its output.
fn trace_in_background(lab: &Lab, i: usize, args: &[&str]) -> std::thread::JoinHandle<integration_tests::CliOutput> {
    let (binary, config) = (lab.nodes[i].binary.clone(), lab.nodes[i].config.clone());
    let ns_path = lab.host(i).ns.path().to_owned();
    let mut full: Vec<String> = vec!["--config".into(), config.display().to_string(), "trace".into()];
    full.extend(args.iter().map(|s| s.to_string()));
    std::thread::spawn(move || {
        let ns = NetNs::borrow("trace", &ns_path);
        integration_tests::run_cli(Some(&ns), &binary, &full)
    })
}

/// Waits until host `i`'s datapath config says `trace` is `want` ("off", "drops", "all").
fn wait_trace(lab: &Lab, i: usize, want: &str) {
    lab.wait_for_dump(i, &format!("trace {want}"), Duration::from_secs(5), |d| d.config.as_ref().is_some_and(|c| c.trace == want));
}

fn events(out: &integration_tests::CliOutput) -> Vec<serde_json::Value> {
    out.assert_success();
    out.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

#[test]
fn trace_shows_verdicts_live_and_stops_with_its_client() {
    require_root();
    let mut lab = lab(DatapathMode::Ebpf);
    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    lab.add_container(1, "b", BLUE, ip("10.0.10.12"));
    lab.wait_converged(CONVERGE);
    let (a_ip, a_mac, b_ip) = (lab.container("a").ip, lab.container("a").mac, lab.container("b").ip);
    wait_trace(&lab, 0, "off");

    // Drops (the default): three pings from an address that is not a's.
    let session = trace_in_background(&lab, 0, &["--json", "--count", "3"]);
    wait_trace(&lab, 0, "drops");
    let busy = lab.cli(0, &["trace", "--count", "1"]);
    assert!(!busy.success() && busy.stderr.contains("a trace session is already open"), "{busy:?}");
    integration_tests::topo::add_addr(&lab.container("a").ns, "eth0", "10.0.10.99/24");
    let opts = integration_tests::traffic::PingOptions {
        count: 3,
        timeout: Duration::from_millis(300),
        source: Some(ip("10.0.10.99")),
        ..Default::default()
    };
    integration_tests::traffic::ping_with(&lab.container("a").ns, b_ip, &opts);
    let drops = events(&session.join().unwrap());
    assert_eq!(drops.len(), 3, "{drops:?}");
    for e in &drops {
        assert_eq!((e["direction"].as_str(), e["reason"].as_str(), e["verdict"].as_str()), (Some("from-container"), Some("source-ip-mismatch"), Some("dropped")), "{e}");
        assert_eq!((e["src_ip"].as_str(), e["dst_ip"].as_str()), (Some("10.0.10.99"), Some(b_ip.to_string().as_str())), "{e}");
        assert_eq!(e["src_mac"], a_mac.to_string(), "{e}");
        assert!(e["ifname"].as_str().is_some_and(|n| n.starts_with("ovl")), "the container's host-side veth: {e}");
    }
    // The client is gone: tracing is off again, and no second client is refused.
    wait_trace(&lab, 0, "off");

    // a's neighbour entry for b may have failed on the refused ARP from 10.0.10.99
    // (Linux sends ARP from the packet's source): resolved again before the next trace.
    integration_tests::topo::del_addr(&lab.container("a").ns, "eth0", "10.0.10.99/24");
    ping(&lab.container("a").ns, b_ip, 3, Duration::from_secs(2));
    // Everything of one endpoint: its pings leave encapsulated and the replies come back.
    let session = trace_in_background(&lab, 0, &["--all", "--network", "blue", "--ip", "10.0.10.11", "--json", "--count", "4"]);
    wait_trace(&lab, 0, "all");
    assert_eq!(ping(&lab.container("a").ns, b_ip, 2, Duration::from_secs(2)).received, 2);
    let all = events(&session.join().unwrap());
    let encap = all.iter().find(|e| e["reason"] == "encapsulated").unwrap_or_else(|| panic!("{all:?}"));
    assert_eq!(encap["vni"], BLUE.vni, "{encap}");
    assert_eq!(encap["outer_src"], lab.host(0).ip.to_string(), "{encap}");
    assert_eq!(encap["outer_dst"], lab.host(1).ip.to_string(), "{encap}");
    assert_eq!((encap["src_ip"].as_str(), encap["protocol"].as_u64()), (Some(a_ip.to_string().as_str()), Some(1)), "{encap}");
    let decap = all.iter().find(|e| e["reason"] == "decapsulated").unwrap_or_else(|| panic!("{all:?}"));
    assert_eq!((decap["direction"].as_str(), decap["dst_ip"].as_str()), (Some("from-underlay"), Some(a_ip.to_string().as_str())), "{decap}");
    wait_trace(&lab, 0, "off");
}

#[test]
fn trace_needs_the_ebpf_datapath() {
    require_root();
    let mut lab = lab(DatapathMode::Kernel);
    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    let out = lab.cli(0, &["trace", "--count", "1"]);
    assert!(!out.success() && out.stderr.contains("trace needs the eBPF datapath"), "{out:?}");
}
