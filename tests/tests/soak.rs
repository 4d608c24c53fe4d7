//! Churn soak: endpoints added and removed without pause on three hosts while three
//! stable pairs exchange pings. Afterwards: no stable ping lost, and nothing left behind
//! or growing: the hosts' veths, the datapath's entries, the pins, the agents' open
//! descriptors, and their resident memory stays flat.
//!
//! `cargo xtask test` runs it for `OVERLAY_SOAK_SECS` seconds (default 120, the CI
//! form); `cargo xtask soak --duration 30m` runs it longer.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use integration_tests::{
    NetNs, Pinger,
    lab::{BLUE, Lab},
    ping, require_root,
    topo::Underlay,
};

const CONVERGE: Duration = Duration::from_secs(2);
/// Soak length, seconds.
const SECS_ENV: &str = "OVERLAY_SOAK_SECS";
const DEFAULT_SECS: u64 = 120;
/// Memory may grow by this much over the run (allocator slack, one-off caches), beyond
/// which it is a leak.
const RSS_SLACK_KIB: u64 = 8 * 1024;

/// What must not change on a host across the churn.
#[derive(Debug, PartialEq, Eq)]
struct Footprint {
    veths: usize,
    endpoints: usize,
    neighbours: usize,
    fdb: usize,
    pins: usize,
    fds: usize,
}

fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.filter_map(Result::ok)
        .map(|e| if e.file_type().is_ok_and(|t| t.is_dir()) { count_files(&e.path()) } else { 1 })
        .sum()
}

fn footprint(lab: &Lab, i: usize) -> Footprint {
    let pid = lab.nodes[i].agent.as_ref().and_then(|a| a.pid()).expect("agent running");
    // Descriptors first: `map dump` below opens a control connection that the agent
    // closes a moment after the CLI has gone.
    let fds = count_files(Path::new(&format!("/proc/{pid}/fd")));
    let links = lab.host(i).ns.netlink(|nl| async move { nl.links().await.unwrap() });
    let d = lab.dump(i);
    Footprint {
        veths: links.iter().filter(|l| l.name.starts_with("ovl")).count(),
        endpoints: d.endpoints.len(),
        neighbours: d.neighbours.len(),
        fdb: d.fdb.len(),
        pins: count_files(&lab.nodes[i].bpffs_dir),
        fds,
    }
}

fn rss_kib(lab: &Lab, i: usize) -> u64 {
    let pid = lab.nodes[i].agent.as_ref().and_then(|a| a.pid()).expect("agent running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[test]
fn churn_loses_no_stable_packet_and_leaks_nothing() {
    require_root();
    let secs = std::env::var(SECS_ENV).ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SECS);
    let mut lab = Lab::new(Underlay::routed(), &[BLUE]);
    lab.start_all();
    for (i, ip) in ["10.0.10.201", "10.0.10.202", "10.0.10.203"].iter().enumerate() {
        lab.add_container(i, &format!("s{i}"), BLUE, ip.parse().unwrap());
    }
    lab.wait_converged(CONVERGE);
    let pingers: Vec<Pinger> = (0..3).map(|i| Pinger::start(&lab.containers[i].ns, lab.containers[(i + 1) % 3].ip)).collect();

    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let warm_until = started + Duration::from_secs(secs / 5);
    let before: Vec<Footprint> = (0..3).map(|i| footprint(&lab, i)).collect();
    let mut rss_warm: Option<Vec<u64>> = None;
    let mut churned = 0u64;
    let mut host = 0;
    while Instant::now() < deadline {
        let ns = NetNs::new("churn");
        let (ip, mac) = lab.allocate(host, &ns, BLUE).unwrap_or_else(|out| panic!("endpoint add on host {host}: {out:?}"));
        // It works from another host before it goes.
        let peer = (host + 1) % 3;
        let r = ping(&lab.containers[peer].ns, ip, 1, Duration::from_secs(3));
        if r.received != 1 {
            let d = lab.dump(peer);
            let entries: Vec<_> = d.fdb.iter().filter(|f| f.mac == mac).collect();
            panic!("churned endpoint {ip} ({mac}) on host {host} unreachable from host {peer} ({r:?}); host {peer}'s FDB for it: {entries:?}");
        }
        lab.cli(host, &["endpoint", "del", "--network", BLUE.name, "--ip", &ip.to_string()]).assert_success();
        drop(ns);
        churned += 1;
        host = (host + 1) % 3;
        if rss_warm.is_none() && Instant::now() >= warm_until {
            rss_warm = Some((0..3).map(|i| rss_kib(&lab, i)).collect());
        }
    }
    let reports: Vec<_> = pingers.into_iter().map(Pinger::stop).collect();
    // Removals reach the other hosts within the convergence bound.
    std::thread::sleep(CONVERGE);
    let after: Vec<Footprint> = (0..3).map(|i| footprint(&lab, i)).collect();
    let rss_end: Vec<u64> = (0..3).map(|i| rss_kib(&lab, i)).collect();
    let rss_warm = rss_warm.unwrap_or_else(|| rss_end.clone());
    let summary: BTreeMap<&str, String> = BTreeMap::from([
        ("seconds", secs.to_string()),
        ("endpoints added and removed", churned.to_string()),
        ("agent RSS after warm-up (KiB)", format!("{rss_warm:?}")),
        ("agent RSS at the end (KiB)", format!("{rss_end:?}")),
    ]);
    eprintln!("soak: {summary:?}");

    for (i, r) in reports.iter().enumerate() {
        assert!(r.lost.is_empty() && r.send_errors == 0, "stable pair {i} lost pings during the churn: {r}");
        assert!(r.received > 0, "stable pair {i} exchanged nothing: {r}");
    }
    assert!(churned >= secs / 4, "only {churned} endpoints churned in {secs} s");
    for i in 0..3 {
        assert_eq!(after[i], before[i], "host {i}: something was left behind or grew");
        assert!(
            rss_end[i] <= rss_warm[i] + RSS_SLACK_KIB,
            "host {i}: the agent's memory grew from {} KiB to {} KiB",
            rss_warm[i],
            rss_end[i]
        );
    }
}
