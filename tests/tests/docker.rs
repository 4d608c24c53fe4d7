//! Docker containers on the overlay: two dockerd (Debian's docker.io) standing for two
//! hosts, each in its lab host's namespace and served by that host's agent through the
//! Docker network and IPAM plugin. `docker network create -d overlay --ipam-driver
//! overlay -o network=blue blue` on each; `docker run --network blue` containers reach
//! each other over VXLAN with addresses from the cluster-wide IPAM; removing and
//! re-running containers and restarting dockerd work. Runs in the suite's datapath mode
//! (`cargo xtask test` runs it in both).

use std::{net::Ipv4Addr, path::Path, time::Duration};

use integration_tests::{
    NetNs,
    docker::{Dockerd, IMAGE},
    lab::{BLUE, Lab, LabOptions},
    require_root, tcp_transfer,
    topo::Underlay,
};
use overlay_agent::mac::MacAddr;

/// 64 MiB, in 1 MiB blocks.
const TRANSFER_MIB: u32 = 64;

/// A lab of two agents with the Docker plugin on, and a dockerd on each host with the
/// busybox image and the `blue` network. Declared after the lab, the daemons drop (and
/// remove their containers, which the agents must still answer for) first.
fn two_docker_hosts() -> (Lab, Vec<Dockerd>) {
    require_root();
    let mut lab = Lab::with_options(Underlay::routed(), &[BLUE], LabOptions { docker: true, ..Default::default() });
    lab.start_agent(0);
    lab.start_agent(1);
    let daemons: Vec<Dockerd> = (0..2)
        .map(|i| {
            let d = Dockerd::start(&lab.hosts()[i].ns, &lab.dir.join(format!("docker{i}")), &lab.plugin_dir(i));
            d.import_busybox();
            d.ok(&["network", "create", "-d", "overlay-agent", "--ipam-driver", "overlay-agent", "-o", "network=blue", "blue"]);
            d
        })
        .collect();
    (lab, daemons)
}

/// Runs a long-lived container `name` on `blue`; returns its address.
fn run(d: &Dockerd, name: &str) -> Ipv4Addr {
    d.ok(&["run", "-d", "--name", name, "--network", "blue", IMAGE, "sleep", "3600"]);
    let ip = d.ok(&["inspect", "-f", "{{.NetworkSettings.Networks.blue.IPAddress}}", name]);
    ip.parse().unwrap_or_else(|e| panic!("{name}'s address {ip:?}: {e}"))
}

/// The network namespace of a running container.
fn container_ns(d: &Dockerd, name: &str) -> NetNs {
    let pid = d.ok(&["inspect", "-f", "{{.State.Pid}}", name]);
    NetNs::borrow(name, Path::new(&format!("/proc/{pid}/ns/net")))
}

fn pings(d: &Dockerd, from: &str, to: Ipv4Addr) -> bool {
    d.docker(&["exec", from, "ping", "-c", "2", "-W", "2", &to.to_string()]).success()
}

fn local_endpoints(lab: &Lab, host: usize) -> Vec<serde_json::Value> {
    lab.endpoints(host).into_iter().filter(|e| e["kind"] == "local").collect()
}

#[test]
fn docker_containers_on_two_hosts_talk_over_the_overlay() {
    let (lab, d) = two_docker_hosts();
    let a = run(&d[0], "ca");
    let b = run(&d[1], "cb");
    assert_ne!(a, b);
    for ip in [a, b] {
        assert!(ip.octets()[..3] == [10, 0, 10] && ip.octets()[3] > 1, "{ip} is not a free address of blue");
    }
    // The agent plugged them: its endpoints, with Docker's endpoint as owner, the MAC
    // from the address, and the container's interface as Docker names it.
    let eps = local_endpoints(&lab, 0);
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(eps[0]["ip"], a.to_string());
    assert!(eps[0]["owner"].as_str().is_some_and(|o| o.starts_with("docker:")), "{eps:?}");
    let link = d[0].ok(&["exec", "ca", "ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains(&MacAddr::from_ipv4(a).to_string()) && link.contains("mtu 1450"), "{link}");
    assert!(pings(&d[0], "ca", b) && pings(&d[1], "cb", a));

    // 64 MiB from a to b over TCP, intact (the harness's checked transfer, run in the
    // containers' own namespaces).
    let size = (TRANSFER_MIB as usize) << 20;
    let r = tcp_transfer(&container_ns(&d[1], "cb"), b, &container_ns(&d[0], "ca"), size);
    assert!(r.is_complete() && r.bytes_received == size, "{r:?}");

    // `docker rm` withdraws the endpoint; a new container gets an address and works.
    d[1].ok(&["rm", "-f", "cb"]);
    assert!(local_endpoints(&lab, 1).is_empty(), "b's endpoint outlived its container");
    lab.wait_for_dump(0, "b withdrawn", Duration::from_secs(3), |m| !m.fdb.iter().any(|f| f.mac == MacAddr::from_ipv4(b)));
    let b2 = run(&d[1], "cb2");
    assert!(pings(&d[1], "cb2", a) && pings(&d[0], "ca", b2));
    // `docker network disconnect` withdraws it too; `connect` plugs it in again.
    d[1].ok(&["network", "disconnect", "blue", "cb2"]);
    assert!(local_endpoints(&lab, 1).is_empty(), "disconnect left the endpoint");
    lab.wait_for_dump(0, "cb2 withdrawn", Duration::from_secs(3), |m| !m.fdb.iter().any(|f| f.mac == MacAddr::from_ipv4(b2)));
    d[1].ok(&["network", "connect", "blue", "cb2"]);
    let again: Ipv4Addr = d[1].ok(&["inspect", "-f", "{{.NetworkSettings.Networks.blue.IPAddress}}", "cb2"]).parse().unwrap();
    assert_eq!(local_endpoints(&lab, 1).len(), 1);
    assert!(pings(&d[1], "cb2", a) && pings(&d[0], "ca", again));
}

#[test]
fn dockerd_restarts_and_agent_errors_reach_the_user() {
    let (mut lab, mut d) = two_docker_hosts();
    let a = run(&d[0], "ca");
    run(&d[1], "cb");
    // dockerd stops its containers (their endpoints go) and comes back with the network.
    d[1].restart();
    assert!(local_endpoints(&lab, 1).is_empty(), "the stopped container's endpoint stayed");
    let c = run(&d[1], "cc");
    assert!(pings(&d[1], "cc", a) && pings(&d[0], "ca", c));
    // The agent restarts (SIGTERM, start): the containers keep talking, and it still
    // serves dockerd for the containers it plugged before (Leave on `docker rm`).
    lab.stop_agent(1);
    assert!(pings(&d[0], "ca", c), "a stopped agent took the datapath down");
    lab.start_agent(1);
    assert!(pings(&d[1], "cc", a));
    d[1].ok(&["rm", "-f", "cc"]);
    assert!(local_endpoints(&lab, 1).is_empty(), "cc's endpoint outlived its container after the agent restart");
    let c = run(&d[1], "cd");
    assert!(pings(&d[1], "cd", a));
    // The agent's refusals are Docker errors with the agent's message.
    let out = d[0].docker(&["network", "create", "-d", "overlay-agent", "--ipam-driver", "overlay-agent", "-o", "network=green", "green"]);
    assert!(!out.success() && out.stderr.contains("serves no network \"green\""), "{}", out.stderr);
    // A Docker network given the overlay subnet explicitly takes fixed addresses from
    // the same IPAM: one already in use is refused.
    d[0].ok(&["network", "create", "-d", "overlay-agent", "--ipam-driver", "overlay-agent", "--subnet", "10.0.10.0/24", "blue-fixed"]);
    let out = d[0].docker(&["run", "-d", "--name", "dup", "--network", "blue-fixed", "--ip", &a.to_string(), IMAGE, "sleep", "60"]);
    assert!(!out.success() && out.stderr.contains("already used"), "{}", out.stderr);
    let free = "10.0.10.200";
    d[0].ok(&["run", "-d", "--name", "fixed", "--network", "blue-fixed", "--ip", free, IMAGE, "sleep", "60"]);
    assert!(pings(&d[0], "fixed", c));
}

