//! `cargo xtask run`: the reference lab. Two hosts h1 (198.51.100.1) and h2
//! (198.51.100.2) on one underlay link, container c1 10.0.10.10 on h1 and c2
//! 10.0.10.11 on h2 in network `blue` (VNI 42, UDP 4789), one agent per host. Shows c1
//! pinging c2, each host's `map dump` and `status`, then removes everything.
//! `--keep` leaves the lab up until Ctrl-C (or SIGTERM) and prints how to explore it.
//! `--store etcd` puts the hosts on a switch with an etcd server (198.51.100.250, in its
//! own namespace) instead of the default `dir` store. `--runtime docker` runs a dockerd
//! in each host's namespace, served by that host's agent through the Docker plugin, and
//! makes c1 and c2 with `docker run --network blue` (addresses from the overlay's IPAM).

use std::{
    net::Ipv4Addr,
    path::Path,
    process::ExitCode,
    time::Duration,
};

use integration_tests::{
    agent::run_cli,
    docker::{Dockerd, IMAGE},
    etcd::{EtcdCluster, EtcdOptions},
    lab::{BLUE, Lab, LabOptions, LabStore},
    topo::Underlay,
};
use integration_tests::interrupt;
use overlay_agent::mac::MacAddr;

fn say(msg: &str) {
    println!("\n\x1b[1m==> {msg}\x1b[0m");
}

fn show(title: &str, out: &integration_tests::CliOutput) {
    say(title);
    print!("{}", out.stdout);
    if !out.stderr.trim().is_empty() {
        eprint!("{}", out.stderr);
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "usage: overlay-lab [--keep] [--store dir|etcd] [--runtime endpoint|docker]\n  --keep            leave the lab up until Ctrl-C and print commands to explore it\n  --store etcd      agents on an etcd server in the lab (default: a dir store)\n  --runtime docker  containers made by `docker run` (a dockerd per host) instead of `endpoint add`"
        );
        return ExitCode::SUCCESS;
    }
    let keep = args.iter().any(|a| a == "--keep");
    let etcd = match args.iter().position(|a| a == "--store").map(|i| args.get(i + 1).map(String::as_str)) {
        None | Some(Some("dir")) => false,
        Some(Some("etcd")) => true,
        Some(other) => {
            eprintln!("error: --store takes dir or etcd, not {other:?}");
            return ExitCode::FAILURE;
        }
    };
    let docker = match args.iter().position(|a| a == "--runtime").map(|i| args.get(i + 1).map(String::as_str)) {
        None | Some(Some("endpoint")) => false,
        Some(Some("docker")) => true,
        Some(other) => {
            eprintln!("error: --runtime takes endpoint or docker, not {other:?}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C or SIGTERM: finish the current step, then tear everything down (the Lab's
    // guards do it on drop). Handlers are reset to default in the children at exec.
    if let Err(e) = interrupt::install() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    match run(keep, etcd, docker) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn interrupted() -> Result<(), String> {
    if interrupt::requested() { Err("interrupted; lab removed".into()) } else { Ok(()) }
}

fn run(keep: bool, etcd: bool, docker: bool) -> Result<(), String> {
    let (mut lab, _etcd) = if etcd {
        say("building the underlay: h1 198.51.100.1/24 and h2 198.51.100.2/24 on a switch, etcd at 198.51.100.250 (network namespaces)");
        let underlay = Underlay::switched();
        let cluster = EtcdCluster::start(&underlay, EtcdOptions::default());
        let opts = LabOptions { store: LabStore::etcd(&cluster), docker, ..Default::default() };
        println!("  etcd = netns {}, {}", cluster.member_ns(0).name(), cluster.endpoint(0));
        (Lab::with_options(underlay, &[BLUE], opts), Some(cluster))
    } else {
        say("building the underlay: h1 198.51.100.1/24 <-> h2 198.51.100.2/24 (network namespaces)");
        (Lab::with_options(Underlay::two_hosts(), &[BLUE], LabOptions { docker, ..Default::default() }), None)
    };
    // What users get by default: eBPF where it runs, the kernel datapath otherwise.
    for i in 0..lab.nodes.len() {
        lab.set_mode(i, overlay_agent::config::DatapathMode::Auto);
    }
    for (i, node) in lab.nodes.iter().enumerate() {
        println!("  {} = netns {}, config {}", node.name, lab.host(i).ns.name(), node.config.display());
    }
    interrupted()?;
    say("starting one overlay-agent per host");
    lab.start_all();
    interrupted()?;
    let daemons = if docker { start_docker(&lab)? } else { Vec::new() };
    interrupted()?;
    let (c1_ip, c2_ip) = if docker { docker_containers(&lab, &daemons)? } else { endpoint_containers(&mut lab) };
    // Each host learns the other's container through the store.
    if docker {
        let macs = [MacAddr::from_ipv4(c1_ip), MacAddr::from_ipv4(c2_ip)];
        for i in 0..lab.nodes.len() {
            lab.wait_for_dump(i, "both containers in the FDB", Duration::from_secs(5), |d| {
                macs.iter().all(|m| d.fdb.iter().any(|f| f.mac == *m))
            });
        }
    } else {
        lab.wait_converged(Duration::from_secs(5));
    }
    interrupted()?;

    let target = c2_ip.to_string();
    let ping = if docker {
        daemons[0].docker(&["exec", "c1", "ping", "-c", "3", "-W", "2", &target])
    } else {
        run_cli(Some(&lab.container("c1").ns), Path::new("ping"), ["-c", "3", "-i", "0.2", "-W", "2", &target])
    };
    show("c1 pings c2 across the overlay (ARP answered in eBPF, VXLAN on the underlay)", &ping);
    if !ping.success() {
        return Err(format!("c1 could not ping c2 (ping exited {}); agent logs are in {}", ping.status, lab.dir.display()));
    }
    for i in 0..lab.nodes.len() {
        show(&format!("{}: overlay-agent map dump", lab.nodes[i].name), &lab.cli(i, &["map", "dump"]));
        show(&format!("{}: overlay-agent status", lab.nodes[i].name), &lab.cli(i, &["status"]));
    }

    if keep {
        say("the lab stays up; explore it from another terminal:");
        let agent = lab.binary.display().to_string();
        for (i, node) in lab.nodes.iter().enumerate() {
            println!("  {agent} --config {} map dump        # {} maps", node.config.display(), node.name);
            println!("  {agent} --config {} endpoint list", node.config.display());
            println!("  ip netns exec {} ip -d link show ul0", lab.host(i).ns.name());
        }
        for c in &lab.containers {
            println!("  ip netns exec {} ping {}   # from {}", c.ns.name(), if c.name == "c1" { c2_ip } else { c1_ip }, c.name);
        }
        for (i, d) in daemons.iter().enumerate() {
            let (me, other) = if i == 0 { ("c1", c2_ip) } else { ("c2", c1_ip) };
            println!("  {} -H unix://{} exec {me} ping {other}   # from {me}", integration_tests::docker::DOCKER, d.socket.display());
        }
        println!(
            "  ip netns exec {} tcpdump -ni ul0 udp port 4789   # VXLAN on the underlay",
            lab.host(1).ns.name()
        );
        println!("  agent logs and configs: {}", lab.dir.display());
        say(&format!("to tear it down: press Ctrl-C here, or `kill {}`", std::process::id()));
        interrupt::wait();
    }
    if docker {
        say("removing the containers and stopping dockerd (the agents withdraw the endpoints as Docker asks)");
        drop(daemons);
    }
    say("tearing down: `overlay-agent down` on each host (removes veths, pins, devices and store records), then the namespaces");
    for i in 0..lab.nodes.len() {
        lab.down(i);
    }
    drop(lab);
    println!("done: nothing left behind");
    Ok(())
}

/// c1 (10.0.10.10) on h1 and c2 (10.0.10.11) on h2 with `endpoint add`.
fn endpoint_containers(lab: &mut Lab) -> (Ipv4Addr, Ipv4Addr) {
    let (c1_ip, c2_ip) = (Ipv4Addr::new(10, 0, 10, 10), Ipv4Addr::new(10, 0, 10, 11));
    say("plugging c1 (10.0.10.10) into h1 and c2 (10.0.10.11) into h2 with `overlay-agent endpoint add`");
    lab.add_container(0, "c1", BLUE, c1_ip);
    lab.add_container(1, "c2", BLUE, c2_ip);
    for c in &lab.containers {
        println!(
            "  overlay-agent --config {} endpoint add --network blue --netns {} --ip {}",
            lab.nodes[c.host].config.display(),
            c.ns.name(),
            c.ip
        );
    }
    (c1_ip, c2_ip)
}

/// A dockerd per host with the busybox image and the `blue` network.
fn start_docker(lab: &Lab) -> Result<Vec<Dockerd>, String> {
    say("starting a dockerd in each host's namespace, served by its agent's Docker plugin");
    let mut daemons = Vec::new();
    for i in 0..lab.nodes.len() {
        let d = Dockerd::start(&lab.host(i).ns, &lab.dir.join(format!("docker{i}")), &lab.plugin_dir(i));
        d.import_busybox();
        let args = ["network", "create", "-d", "overlay-agent", "--ipam-driver", "overlay-agent", "-o", "network=blue", "blue"];
        let out = d.docker(&args);
        if !out.success() {
            return Err(format!("docker network create on {}: {}", lab.nodes[i].name, out.stderr));
        }
        println!("  {}: docker -H unix://{} {}", lab.nodes[i].name, d.socket.display(), args.join(" "));
        daemons.push(d);
    }
    Ok(daemons)
}

/// c1 on h1 and c2 on h2 with `docker run --network blue`; their addresses.
fn docker_containers(lab: &Lab, daemons: &[Dockerd]) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    say("running c1 on h1 and c2 on h2 with `docker run --network blue` (addresses from the overlay's IPAM)");
    let mut ips = Vec::new();
    for (i, (d, name)) in daemons.iter().zip(["c1", "c2"]).enumerate() {
        let out = d.docker(&["run", "-d", "--name", name, "--network", "blue", IMAGE, "sleep", "3600"]);
        if !out.success() {
            return Err(format!("docker run {name}: {}", out.stderr));
        }
        let ip = d.docker(&["inspect", "-f", "{{.NetworkSettings.Networks.blue.IPAddress}}", name]).stdout.trim().to_owned();
        println!("  {}: docker run -d --name {name} --network blue {IMAGE} sleep 3600   -> {ip}", lab.nodes[i].name);
        ips.push(ip.parse::<Ipv4Addr>().map_err(|e| format!("{name}'s address {ip:?}: {e}"))?);
    }
    Ok((ips[0], ips[1]))
}
