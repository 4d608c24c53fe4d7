//! `cargo xtask bench`: the overlay measured side by side with the kernel VXLAN recipe
//! and with plain routing, on the same machine in the same run.
//!
//! Three setups of the reference topology (two hosts on a veth underlay, MTU 1500, one
//! container each):
//! - `ebpf`: agents in eBPF mode, containers plugged in with the CLI;
//! - `kernel`: agents in kernel mode (bridge + VXLAN device, the classic recipe);
//! - `direct`: no overlay; the hosts route the containers' subnets to each other (the
//!   floor an overlay can approach; container MTU 1500).
//!
//! Tools: iperf3 (TCP 1 and 4 streams, 64 B UDP packet rate, a paced load for CPU cost),
//! sockperf (UDP ping-pong latency percentiles), and a Rust connect/close loop (TCP
//! connection rate). CPU cost is the whole machine's busy time from /proc/stat while a
//! paced TCP load runs, per GB delivered.

use std::{
    fs::File,
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
    lab::{BLUE, Lab},
    topo::{H1_IP, H2_IP, Underlay, add_addr, add_route, enable_forwarding, link_veth},
};

/// Which datapath carries the containers' traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Ebpf,
    Kernel,
    Direct,
}

impl Setup {
    pub const ALL: [Setup; 3] = [Setup::Ebpf, Setup::Kernel, Setup::Direct];

    pub fn name(self) -> &'static str {
        match self {
            Setup::Ebpf => "ebpf",
            Setup::Kernel => "kernel",
            Setup::Direct => "direct",
        }
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
}

/// Builds `setup`. For the overlays, also measures how long after `endpoint add` of the
/// server container the first packet from the client gets through.
pub fn build(setup: Setup) -> Topology {
    match setup {
        Setup::Direct => direct(),
        Setup::Ebpf => overlay(DatapathMode::Ebpf),
        Setup::Kernel => overlay(DatapathMode::Kernel),
    }
}

fn overlay(mode: DatapathMode) -> Topology {
    let mut lab = Lab::new(Underlay::two_hosts(), &[BLUE]);
    lab.set_mode(0, mode);
    lab.set_mode(1, mode);
    lab.start_all();
    let (cip, sip) = (Ipv4Addr::new(10, 0, 10, 10), Ipv4Addr::new(10, 0, 10, 11));
    lab.add_container(0, "bc", BLUE, cip);
    lab.wait_converged(Duration::from_secs(5));
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
    Topology { client, server, server_ip: sip, _lab: Some(lab), _hosts: None, add_to_first_packet }
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

fn direct() -> Topology {
    let hosts = Underlay::two_hosts();
    let (client, server) = (NetNs::new("dc"), NetNs::new("ds"));
    for (host, c, gw, addr) in [
        (&hosts.h1, &client, "10.0.1.1/24", "10.0.1.10/24"),
        (&hosts.h2, &server, "10.0.2.1/24", "10.0.2.11/24"),
    ] {
        link_veth(&host.ns, "vc", c, "eth0", 1500);
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
    }
}

/// A background server process in `ns`, killed on drop.
struct Server(Child);

impl Server {
    fn start(ns: &NetNs, program: &str, args: &[&str]) -> Server {
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
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

fn iperf3_json(t: &Topology, args: &[&str]) -> Value {
    let _server = Server::start(&t.server, "iperf3", &["-s", "-1", "-p", "5201"]);
    let mut full = vec!["-c".to_string(), t.server_ip.to_string(), "-p".into(), "5201".into(), "-J".into()];
    full.extend(args.iter().map(|s| s.to_string()));
    let out = run_cli(Some(&t.client), Path::new("iperf3"), &full);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("iperf3 {args:?}: {e}: {}\n{}", out.stdout, out.stderr))
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
    let out = run_cli(
        Some(&t.client),
        Path::new("sockperf"),
        ["ping-pong", "-i", &ip, "-p", "11111", "-m", "64", "-t", &secs.to_string(), "--full-rtt"],
    );
    let pct = |p: &str| {
        out.stdout
            .lines()
            .find(|l| l.contains(&format!("percentile {p}")))
            .and_then(|l| l.rsplit('=').next()?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("sockperf output has no percentile {p}: {}\n{}", out.stdout, out.stderr))
    };
    (pct("50.000"), pct("99.000"))
}

/// TCP connections opened and closed per second (one client thread).
pub fn connections_per_sec(t: &Topology, secs: u32) -> f64 {
    let addr = SocketAddr::from((t.server_ip, 5300));
    let stop = Arc::new(AtomicBool::new(false));
    let listener = t.server.run(|| TcpListener::bind(addr).expect("bind the connection-rate server"));
    let acceptor = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            listener.set_nonblocking(true).expect("nonblocking listener");
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => drop(s),
                    Err(_) => std::thread::sleep(Duration::from_micros(50)),
                }
            }
        })
    };
    let count = t.client.run(|| {
        let deadline = Instant::now() + Duration::from_secs(u64::from(secs));
        let mut n = 0u64;
        while Instant::now() < deadline {
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                drop(s);
                n += 1;
            }
        }
        n
    });
    stop.store(true, Ordering::Relaxed);
    acceptor.join().expect("acceptor");
    count as f64 / f64::from(secs)
}

/// Busy and total jiffies of the whole machine.
fn cpu_jiffies() -> (u64, u64) {
    let mut s = String::new();
    File::open("/proc/stat").and_then(|mut f| f.read_to_string(&mut s)).expect("/proc/stat");
    let v: Vec<u64> = s.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU seconds (whole machine) per GB delivered, under a TCP load paced at `gbps`.
pub fn cpu_sec_per_gb(t: &Topology, gbps: u32, secs: u32) -> f64 {
    let hz = 100.0; // USER_HZ
    let (b0, _) = cpu_jiffies();
    let j = iperf3_json(t, &["-t", &secs.to_string(), "-b", &format!("{gbps}G")]);
    let (b1, _) = cpu_jiffies();
    let bytes = j["end"]["sum_received"]["bytes"].as_f64().expect("iperf3 bytes");
    ((b1 - b0) as f64 / hz) / (bytes / 1e9)
}
