//! `cargo xtask bench`: the overlay measured side by side with the kernel VXLAN recipe
//! and with plain routing, on the same machine in the same run.
//!
//! Three setups of the reference topology (two hosts on a veth underlay, MTU 1500, one
//! container each):
//! - `ebpf`: agents in eBPF mode, containers plugged in with the CLI;
//! - `ebpf-l3`: the same with an L3 network (routed between the hosts' node subnets);
//! - `kernel`: agents in kernel mode (bridge + VXLAN device, the classic recipe);
//! - `direct`: no overlay; the hosts route the containers' subnets to each other (the
//!   floor an overlay can approach; container MTU 1500);
//! - `direct-1450`: the same with the overlay's container MTU (underlay − 50), a reference
//!   that separates what VXLAN's 50 bytes cost from what the datapath costs.
//!
//! `--preload N` fills the eBPF setup's maps first: N static remote endpoints of another
//! network ([`PRELOAD`]) both agents serve, in the store before the agents start, maps
//! sized for them; the containers, their network and every measurement stay the same,
//! so the figures compare with near-empty maps.
//!
//! The load generators are pinned, client on CPU 0 and server on CPU 1 (when there are
//! two): on this 2-CPU machine an unpinned iperf3 pair wanders between CPUs and the
//! same setup measured 16 to 28 Gbit/s from one run to the next.
//!
//! Tools: iperf3 (TCP 1 and 4 streams, 64 B UDP packet rate, a paced load for CPU cost),
//! sockperf (UDP ping-pong latency percentiles), and a Rust connect/close loop (TCP
//! connection rate). CPU cost is the whole machine's busy time from /proc/stat while a
//! paced TCP load runs, per GB delivered.

use std::{
    io::Read as _,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use overlay_agent::config::DatapathMode;
use serde_json::Value;

use crate::{
    NetNs,
    agent::{enter_netns, run_cli},
    lab::{BLUE, Lab, LabOptions, NetworkDef, ROUTED},
    topo::{H1_IP, H2_IP, Underlay, add_addr, add_route, enable_forwarding, link_veth},
};

/// Which datapath carries the containers' traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Ebpf,
    /// eBPF mode, an L3 network: routed between the hosts' node subnets.
    EbpfL3,
    Kernel,
    Direct,
    DirectOverlayMtu,
}

impl Setup {
    pub const ALL: [Setup; 5] = [Setup::Ebpf, Setup::EbpfL3, Setup::Kernel, Setup::Direct, Setup::DirectOverlayMtu];

    pub fn name(self) -> &'static str {
        match self {
            Setup::Ebpf => "ebpf",
            Setup::EbpfL3 => "ebpf-l3",
            Setup::Kernel => "kernel",
            Setup::Direct => "direct",
            Setup::DirectOverlayMtu => "direct-1450",
        }
    }
}

/// The containers' MTU in the overlays: the underlay's 1500 less VXLAN's 50 bytes.
pub const OVERLAY_MTU: u32 = 1450;

fn cpu_count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// CPUs for the load generators' client and server.
fn cpus() -> (usize, usize) {
    (0, if cpu_count() > 1 { 1 } else { 0 })
}

/// `program args...` pinned to `cpu` with taskset (util-linux).
fn pinned(cpu: usize, program: &str, args: &[&str]) -> Vec<String> {
    let mut v = vec!["-c".to_string(), cpu.to_string(), program.to_string()];
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

/// Pins the calling thread to `cpu`.
fn pin_thread(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _best_effort = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// A ready topology: a client and a server container, whatever connects them.
pub struct Topology {
    pub client: NetNs,
    pub server: NetNs,
    pub server_ip: Ipv4Addr,
    /// Keeps the lab (agents, hosts) or the plain hosts alive.
    _lab: Option<Lab>,
    _hosts: Option<Underlay>,
    /// For `endpoint add` timing: the lab and the server's name.
    pub add_to_first_packet: Option<Duration>,
    /// With `--preload`: how writing and loading the preloaded endpoints went.
    pub preloaded: Option<PreloadTiming>,
}

/// The network that holds preloaded endpoints (`--preload`): served by both agents
/// next to [`BLUE`], so the maps the measured traffic looks up hold the preloaded
/// entries while the containers' own network and addresses stay as without preload.
pub const PRELOAD: NetworkDef = NetworkDef { name: "preload", vni: 4242, subnet: "10.64.0.0/12", l3: None };
/// The most endpoints `--preload` takes (the agent's largest map, with room to spare).
pub const MAX_PRELOAD: usize = 800_000;
/// How long agents may take to load preloaded endpoints (debug builds, two at once).
const PRELOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// The VTEPs preloaded endpoints are declared behind (no host has them: the
/// measured traffic never goes there).
fn preload_vteps() -> Vec<Ipv4Addr> {
    (1..=16).map(|i| Ipv4Addr::new(203, 0, 113, i)).collect()
}

/// Builds `setup`. For the overlays, also measures how long after `endpoint add` of the
/// server container the first packet from the client gets through. `preload` (eBPF
/// setup only): that many static remote endpoints are in the store before the agents
/// start, so their maps hold them while everything is measured.
pub fn build(setup: Setup, preload: usize) -> Topology {
    match setup {
        Setup::Direct => direct(1500),
        Setup::DirectOverlayMtu => direct(OVERLAY_MTU),
        Setup::Ebpf => overlay(DatapathMode::Ebpf, preload),
        Setup::EbpfL3 => routed(),
        Setup::Kernel => overlay(DatapathMode::Kernel, 0),
    }
}

/// How preloading went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreloadTiming {
    pub endpoints: usize,
    /// Writing the static endpoints into the store.
    pub write: Duration,
    /// From starting the agents to both holding every endpoint.
    pub load: Duration,
}

/// A two-host eBPF lab whose store holds `preload` static endpoints of [`PRELOAD`]
/// before the agents start, with maps sized for them; and how long writing took.
fn preloaded_lab(preload: usize) -> (Lab, Duration) {
    assert!(preload <= MAX_PRELOAD, "--preload {preload}: at most {MAX_PRELOAD}");
    let capacity = preload + preload / 4 + 4_096;
    // On a tmpfs if there is one: 500,000 files (records and MAC claims) take minutes
    // to write and to remove on ext4, seconds there (and about 2 GB of memory).
    let shm = Path::new("/dev/shm");
    let options = LabOptions {
        datapath_extra: format!("neigh_capacity = {capacity}\nfdb_capacity = {capacity}\n"),
        start_timeout: PRELOAD_TIMEOUT,
        parent_dir: shm.is_dir().then(|| shm.to_owned()),
        ..LabOptions::default()
    };
    let lab = Lab::with_options(Underlay::two_hosts(), &[BLUE, PRELOAD], options);
    let started = Instant::now();
    crate::scale::sim::write_statics(lab.store_dir.clone(), PRELOAD.name, PRELOAD.vni, preload, &preload_vteps())
        .unwrap_or_else(|e| panic!("preloading {preload} endpoints: {e}"));
    (lab, started.elapsed())
}

/// Waits until every agent of `lab` has applied its first store list and its FDB map
/// holds at least `entries` entries (counting from `started`); returns how long that took.
fn wait_loaded(lab: &Lab, entries: u64, started: Instant) -> Duration {
    for i in 0..lab.nodes.len() {
        loop {
            let status = lab.status(i);
            let fdb = status["tables"]
                .as_array()
                .and_then(|t| t.iter().find(|t| t["name"] == overlay_common::maps::FDB))
                .and_then(|t| t["entries"].as_u64())
                .unwrap_or(0);
            if status["store"]["synced"] == true && fdb >= entries {
                break;
            }
            assert!(started.elapsed() < PRELOAD_TIMEOUT, "host {i}: {fdb} of {entries} FDB entries after {PRELOAD_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    started.elapsed()
}

fn overlay(mode: DatapathMode, preload: usize) -> Topology {
    let (mut lab, write) =
        if preload > 0 { preloaded_lab(preload) } else { (Lab::new(Underlay::two_hosts(), &[BLUE]), Duration::ZERO) };
    lab.set_mode(0, mode);
    lab.set_mode(1, mode);
    let starting = Instant::now();
    lab.start_all();
    let preloaded = (preload > 0).then(|| PreloadTiming { endpoints: preload, write, load: wait_loaded(&lab, preload as u64, starting) });
    let (cip, sip) = (Ipv4Addr::new(10, 0, 10, 10), Ipv4Addr::new(10, 0, 10, 11));
    lab.add_container(0, "bc", BLUE, cip);
    if preload > 0 {
        // A dump of every entry per poll would take seconds: look the containers up.
        lab.wait_converged_pinned(Duration::from_secs(5));
    } else {
        lab.wait_converged(Duration::from_secs(5));
    }
    // The server container appears while the client is already sending: time from
    // `endpoint add` to the first echo reply.
    let server = NetNs::new("bs");
    // What is measured is the overlay's convergence (store, maps, datapath), not the
    // client kernel's ARP retransmit timer (1 s): a request for a not-yet-known IP is
    // refused, and the kernel only asks again a second later. The new endpoint's MAC is
    // deterministic, so the client knows it up front.
    let client_ns = &lab.container("bc").ns;
    let index = client_ns.link("eth0").index;
    let mac = overlay_agent::mac::MacAddr::from_ipv4(sip).0;
    client_ns.netlink(|nl| async move { nl.add_neighbour(index, sip, mac).await.expect("static neighbour") });
    let stop = AtomicBool::new(false);
    let (first, start) = std::thread::scope(|scope| {
        let client = &lab.container("bc").ns;
        let pinger = scope.spawn(|| first_reply(client, sip, &stop));
        let start = Instant::now();
        let out = lab.cli(1, &["endpoint", "add", "--network", "blue", "--netns", server.name(), "--ip", &sip.to_string()]);
        out.assert_success();
        let first = pinger.join().expect("pinger thread");
        stop.store(true, Ordering::Relaxed);
        (first, start)
    });
    let add_to_first_packet = first.map(|t| t.saturating_duration_since(start));
    let client_idx = lab.containers.iter().position(|c| c.name == "bc").expect("client");
    let client = lab.containers.remove(client_idx).ns;
    Topology { client, server, server_ip: sip, _lab: Some(lab), _hosts: None, add_to_first_packet, preloaded }
}

/// The eBPF datapath with an L3 network: the client on host 0, the server on host 1,
/// routed between their node subnets (the client reaches the server through its
/// gateway, whose ARP answer comes from the map: no ARP timer in the way).
fn routed() -> Topology {
    let mut lab = Lab::new(Underlay::two_hosts(), &[ROUTED]);
    lab.set_mode(0, DatapathMode::Ebpf);
    lab.set_mode(1, DatapathMode::Ebpf);
    lab.start_all();
    lab.add_allocated(0, "rc", ROUTED);
    let subnet: ipnet::Ipv4Net = lab.status(1)["networks"][0]["node_subnet"].as_str().expect("host 1's node subnet").parse().expect("a subnet");
    lab.wait_for_dump(0, "a route to host 1's node subnet", Duration::from_secs(5), |d| d.routes.iter().any(|r| r.subnet == subnet));
    // Allocation starts at the node subnet's .2.
    let sip = Ipv4Addr::from(u32::from(subnet.network()) + 2);
    let server = NetNs::new("rs");
    let stop = AtomicBool::new(false);
    let (first, start) = std::thread::scope(|scope| {
        let client = &lab.container("rc").ns;
        let pinger = scope.spawn(|| first_reply(client, sip, &stop));
        let start = Instant::now();
        let out = lab.cli(1, &["endpoint", "add", "--network", ROUTED.name, "--netns", server.name(), "--ip", &sip.to_string()]);
        out.assert_success();
        let first = pinger.join().expect("pinger thread");
        stop.store(true, Ordering::Relaxed);
        (first, start)
    });
    let add_to_first_packet = first.map(|t| t.saturating_duration_since(start));
    let client_idx = lab.containers.iter().position(|c| c.name == "rc").expect("client");
    let client = lab.containers.remove(client_idx).ns;
    Topology { client, server, server_ip: sip, _lab: Some(lab), _hosts: None, add_to_first_packet, preloaded: None }
}

/// Pings `dst` from `ns`, 5 ms per attempt, until a reply (or 10 s).
fn first_reply(ns: &NetNs, dst: Ipv4Addr, stop: &AtomicBool) -> Option<Instant> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        if crate::ping(ns, dst, 1, Duration::from_millis(5)).received == 1 {
            return Some(Instant::now());
        }
    }
    None
}

fn direct(mtu: u32) -> Topology {
    let hosts = Underlay::two_hosts();
    let (client, server) = (NetNs::new("dc"), NetNs::new("ds"));
    for (host, c, gw, addr) in [
        (&hosts.h1, &client, "10.0.1.1/24", "10.0.1.10/24"),
        (&hosts.h2, &server, "10.0.2.1/24", "10.0.2.11/24"),
    ] {
        link_veth(&host.ns, "vc", c, "eth0", mtu);
        add_addr(&host.ns, "vc", gw);
        add_addr(c, "eth0", addr);
        add_route(c, "default", gw.split('/').next().unwrap().parse().unwrap());
        enable_forwarding(&host.ns);
    }
    add_route(&hosts.h1.ns, "10.0.2.0/24", H2_IP);
    add_route(&hosts.h2.ns, "10.0.1.0/24", H1_IP);
    Topology {
        client,
        server,
        server_ip: Ipv4Addr::new(10, 0, 2, 11),
        _lab: None,
        _hosts: Some(hosts),
        add_to_first_packet: None,
        preloaded: None,
    }
}

/// A background server process in `ns`, killed on drop.
struct Server(Child);

impl Server {
    fn start(ns: &NetNs, program: &str, args: &[&str]) -> Server {
        let mut cmd = Command::new("taskset");
        cmd.args(pinned(cpus().1, program, args)).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let _ns_file = enter_netns(&mut cmd, ns);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {program}: {e} (run `cargo xtask bench`, which installs it)"));
        // Let it bind.
        std::thread::sleep(Duration::from_millis(300));
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _already_gone = self.0.kill();
        let _reaped = self.0.wait();
    }
}

const IPERF3_PORT: &str = "5201";

/// A one-shot iperf3 server in `t`'s server namespace.
fn iperf3_server(t: &Topology) -> Server {
    Server::start(&t.server, "iperf3", &["-s", "-1", "-p", IPERF3_PORT])
}

/// Runs the iperf3 client (pinned) against the server [`iperf3_server`] started and
/// returns its JSON report.
fn iperf3_client(t: &Topology, args: &[&str]) -> Value {
    let ip = t.server_ip.to_string();
    let mut full = vec!["-c", &ip, "-p", IPERF3_PORT, "-J"];
    full.extend(args);
    let out = run_cli(Some(&t.client), Path::new("taskset"), pinned(cpus().0, "iperf3", &full));
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("iperf3 {full:?}: {e}: {}\n{}", out.stdout, out.stderr))
}

fn iperf3_json(t: &Topology, args: &[&str]) -> Value {
    let _server = iperf3_server(t);
    iperf3_client(t, args)
}

/// TCP throughput in Gbit/s with `streams` parallel streams.
pub fn tcp_gbps(t: &Topology, streams: u32, secs: u32) -> f64 {
    let j = iperf3_json(t, &["-t", &secs.to_string(), "-P", &streams.to_string()]);
    j["end"]["sum_received"]["bits_per_second"].as_f64().expect("iperf3 bits_per_second") / 1e9
}

/// 64-byte UDP datagrams received per second (sent as fast as one sender can).
pub fn udp64_pps(t: &Topology, secs: u32) -> f64 {
    let j = iperf3_json(t, &["-u", "-l", "64", "-b", "0", "-t", &secs.to_string()]);
    let sum = &j["end"]["sum"];
    let packets = sum["packets"].as_f64().unwrap_or(0.0);
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let seconds = sum["seconds"].as_f64().unwrap_or(f64::from(secs));
    (packets - lost) / seconds
}

/// UDP ping-pong (64 B) round-trip time percentiles (p50, p99) in microseconds.
pub fn rr_usec(t: &Topology, secs: u32) -> (f64, f64) {
    let ip = t.server_ip.to_string();
    let _server = Server::start(&t.server, "sockperf", &["server", "-i", &ip, "-p", "11111"]);
    let secs = secs.to_string();
    let args = ["ping-pong", "-i", &ip, "-p", "11111", "-m", "64", "-t", &secs, "--full-rtt"];
    let out = run_cli(Some(&t.client), Path::new("taskset"), pinned(cpus().0, "sockperf", &args));
    let pct = |p: &str| {
        out.stdout
            .lines()
            .find(|l| l.contains(&format!("percentile {p}")))
            .and_then(|l| l.rsplit('=').next()?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("sockperf output has no percentile {p}: {}\n{}", out.stdout, out.stderr))
    };
    (pct("50.000"), pct("99.000"))
}

/// TCP connections opened and closed per second (one client thread, one server thread).
///
/// The server closes first, so TIME_WAIT sits on the server side and never ties up the
/// client's ephemeral ports (at thousands of connections a second a 5 s run would
/// otherwise exhaust them, and every later `connect` would fail with EADDRNOTAVAIL).
pub fn connections_per_sec(t: &Topology, secs: u32) -> f64 {
    let addr = SocketAddr::from((t.server_ip, 5300));
    let stop = Arc::new(AtomicBool::new(false));
    let listener = t.server.run(|| TcpListener::bind(addr).expect("bind the connection-rate server"));
    let acceptor = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            pin_thread(cpus().1);
            // Blocking accept: the client's last connection, made after `stop` is set,
            // wakes it up for the final check.
            while !stop.load(Ordering::Relaxed) {
                if let Ok((s, _)) = listener.accept() {
                    drop(s);
                }
            }
        })
    };
    let (count, failures) = t.client.run(|| {
        pin_thread(cpus().0);
        let deadline = Instant::now() + Duration::from_secs(u64::from(secs));
        let (mut n, mut failed) = (0u64, 0u64);
        let mut buf = [0u8; 1];
        while Instant::now() < deadline {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(mut s) => {
                    // Wait for the server's FIN: the connection is complete both ways.
                    let _eof = s.read(&mut buf);
                    n += 1;
                }
                Err(_) => failed += 1,
            }
        }
        (n, failed)
    });
    stop.store(true, Ordering::Relaxed);
    let _wake = t.client.run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(1)));
    acceptor.join().expect("acceptor");
    assert!(
        failures <= count / 100,
        "connection rate: {failures} of {} connects failed: the measurement is not of the datapath",
        count + failures
    );
    count as f64 / f64::from(secs)
}

/// Idle time of the whole machine in seconds (all CPUs), from /proc/uptime.
///
/// The busy fields of /proc/stat come from tick sampling on kernels without
/// `VIRT_CPU_ACCOUNTING` (this machine's), and a paced load whose bursts fall between
/// ticks is mostly missed by it (seen here: 0.03 vs 0.58 CPU s/GB for two datapaths that
/// differ far less). Idle time on a tickless kernel is measured exactly at every
/// idle entry and exit, so busy = wall time × CPUs − idle is the honest figure.
fn idle_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/uptime").expect("/proc/uptime");
    s.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("/proc/uptime idle field")
}

/// CPU seconds (whole machine) per GB delivered, under a TCP load paced at `gbps`.
pub fn cpu_sec_per_gb(t: &Topology, gbps: u32, secs: u32) -> f64 {
    // Only the client's run is timed, not the server's start-up.
    let _server = iperf3_server(t);
    let (idle0, t0) = (idle_seconds(), Instant::now());
    let j = iperf3_client(t, &["-t", &secs.to_string(), "-b", &format!("{gbps}G")]);
    let (idle1, wall) = (idle_seconds(), t0.elapsed().as_secs_f64());
    let bytes = j["end"]["sum_received"]["bytes"].as_f64().expect("iperf3 bytes");
    let busy = (wall * cpu_count() as f64 - (idle1 - idle0)).max(0.0);
    busy / (bytes / 1e9)
}
