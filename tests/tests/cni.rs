//! The `overlay-cni` plugin, driven exactly as the CNI spec says a runtime drives it
//! (environment variables, the network config on stdin, the result or an error object
//! on stdout): ADD in 1.1.0, 1.0.0 and 0.4.0 shapes, containers plugged by CNI on two
//! hosts reaching each other, CHECK passing and then catching a broken interface,
//! idempotent DEL, GC, STATUS, delegated IPAM (Debian's host-local), and the errors
//! (unknown network, agent down, bad version, missing variables, a taken interface
//! name); and a real runtime, containerd's `ctr run --cni`, plugging containers on two
//! hosts that reach each other. Runs in the suite's datapath mode.

use std::{
    io::Write as _,
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::Duration,
};

use integration_tests::{
    NetNs, cni_binary,
    containerd::Containerd,
    lab::{BLUE, Lab},
    ping, require_root,
    topo::Underlay,
};

/// Where Debian's containernetworking-plugins are.
const CNI_PATH: &str = "/usr/lib/cni";

struct Out {
    ok: bool,
    json: serde_json::Value,
    stderr: String,
}

/// Runs the plugin in host `host`'s namespace with `CNI_COMMAND=command`, `env` and
/// `conf` on stdin.
fn cni(lab: &Lab, host: usize, command: &str, conf: &serde_json::Value, env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(cni_binary());
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", CNI_PATH)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let _ns = integration_tests::agent::enter_netns(&mut cmd, &lab.hosts()[host].ns);
    let mut child = cmd.spawn().expect("running overlay-cni");
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().expect("overlay-cni output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = if text.trim().is_empty() { serde_json::Value::Null } else { serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout {text:?}: {e}")) };
    Out { ok: out.status.success(), json, stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

fn conf(lab: &Lab, host: usize, version: &str) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": version,
        "name": "blue-cni",
        "type": "overlay-cni",
        "network": "blue",
        "agentConfig": lab.nodes[host].config,
    })
}

/// The environment of an attachment of `ns` as `ifname`.
fn env<'a>(id: &'a str, ns: &'a NetNs, ifname: &'a str) -> [(&'a str, &'a str); 3] {
    [("CNI_CONTAINERID", id), ("CNI_NETNS", ns.path().to_str().unwrap()), ("CNI_IFNAME", ifname)]
}

fn added_ip(out: &Out) -> Ipv4Addr {
    assert!(out.ok, "ADD failed: {} {}", out.json, out.stderr);
    let addr = out.json["ips"][0]["address"].as_str().unwrap_or_else(|| panic!("no address in {}", out.json));
    addr.split('/').next().unwrap().parse().unwrap()
}

fn error_code(out: &Out) -> u64 {
    assert!(!out.ok, "succeeded: {}", out.json);
    out.json["code"].as_u64().unwrap_or_else(|| panic!("no error code in {}", out.json))
}

fn lab() -> Lab {
    require_root();
    let mut lab = Lab::new(Underlay::routed(), &[BLUE]);
    lab.start_agent(0);
    lab.start_agent(1);
    lab
}

#[test]
fn add_check_del_across_two_hosts_in_every_result_version() {
    let lab = lab();
    let (a, b, c) = (NetNs::new("a"), NetNs::new("b"), NetNs::new("c"));
    let add_a = cni(&lab, 0, "ADD", &conf(&lab, 0, "1.1.0"), &env("ctr-a", &a, "eth0"));
    let ip_a = added_ip(&add_a);
    assert_eq!(add_a.json["cniVersion"], "1.1.0");
    assert_eq!(add_a.json["interfaces"][0]["name"], "eth0");
    assert_eq!(add_a.json["interfaces"][0]["sandbox"], a.path().to_str().unwrap());
    assert!(add_a.json["ips"][0].get("version").is_none());
    let add_b = cni(&lab, 1, "ADD", &conf(&lab, 1, "1.0.0"), &env("ctr-b", &b, "eth0"));
    let ip_b = added_ip(&add_b);
    let add_c = cni(&lab, 1, "ADD", &conf(&lab, 1, "0.4.0"), &env("ctr-c", &c, "net1"));
    let ip_c = added_ip(&add_c);
    assert_eq!(add_c.json["ips"][0]["version"], "4");
    assert_eq!(add_c.json["interfaces"][0]["name"], "net1");
    assert!(ip_a != ip_b && ip_b != ip_c && ip_a != ip_c);
    // The containers reach each other across hosts: the same datapath as endpoint add.
    let mut reached = false;
    for _ in 0..20 {
        reached = ping(&a, ip_b, 1, Duration::from_secs(1)).received == 1;
        if reached {
            break;
        }
    }
    assert!(reached, "a cannot reach b");
    assert_eq!(ping(&c, ip_a, 2, Duration::from_secs(2)).received, 2);

    // CHECK passes, then catches an interface that was broken behind the plugin's back.
    let check = cni(&lab, 0, "CHECK", &conf(&lab, 0, "1.1.0"), &env("ctr-a", &a, "eth0"));
    assert!(check.ok, "{} {}", check.json, check.stderr);
    a.netlink(|nl| async move {
        let l = nl.link_by_name("eth0").await.unwrap().unwrap();
        nl.set_link(l.index, overlay_agent::netlink::LinkChange { up: Some(false), ..Default::default() }).await.unwrap();
    });
    let check = cni(&lab, 0, "CHECK", &conf(&lab, 0, "1.1.0"), &env("ctr-a", &a, "eth0"));
    assert_eq!(error_code(&check), 101);
    assert!(check.json["msg"].as_str().unwrap().contains("eth0 is down"), "{}", check.json);
    // CHECK of an attachment that does not exist.
    let check = cni(&lab, 0, "CHECK", &conf(&lab, 0, "1.1.0"), &env("nobody", &a, "eth0"));
    assert_eq!(error_code(&check), 3);

    // DEL removes it everywhere; again, and for an unknown container, it succeeds.
    let del = cni(&lab, 1, "DEL", &conf(&lab, 1, "1.0.0"), &env("ctr-b", &b, "eth0"));
    assert!(del.ok && del.json.is_null(), "{} {}", del.json, del.stderr);
    assert!(!b.netlink(|nl| async move { nl.link_by_name("eth0").await.unwrap().is_some() }), "DEL left eth0");
    let b_mac = overlay_agent::mac::MacAddr::from_ipv4(ip_b);
    lab.wait_for_dump(0, "b withdrawn", Duration::from_secs(3), |d| !d.fdb.iter().any(|f| f.mac == b_mac));
    for id in ["ctr-b", "never-added"] {
        let del = cni(&lab, 1, "DEL", &conf(&lab, 1, "1.0.0"), &env(id, &b, "eth0"));
        assert!(del.ok, "DEL of {id} again: {}", del.json);
    }
    // DEL needs no CNI_NETNS (the namespace may be gone).
    let del = cni(&lab, 1, "DEL", &conf(&lab, 1, "1.1.0"), &[("CNI_CONTAINERID", "ctr-c"), ("CNI_IFNAME", "net1")]);
    assert!(del.ok, "{}", del.json);
    let out = lab.cli(1, &["endpoint", "list", "--json"]);
    assert!(!out.stdout.contains(&ip_c.to_string()), "c's endpoint outlived its DEL: {}", out.stdout);
}

#[test]
fn version_status_gc_and_errors() {
    let mut lab = lab();
    let a = NetNs::new("a");
    // VERSION.
    let v = cni(&lab, 0, "VERSION", &serde_json::json!({"cniVersion": "1.1.0"}), &[]);
    assert!(v.ok);
    let versions: Vec<&str> = v.json["supportedVersions"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    for needed in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(versions.contains(&needed), "{versions:?}");
    }
    // STATUS while the agent runs and is in sync.
    let s = cni(&lab, 0, "STATUS", &conf(&lab, 0, "1.1.0"), &[]);
    assert!(s.ok, "{}", s.json);
    // Errors, each a CNI error object with the right code and a message that helps.
    let bad = cni(&lab, 0, "ADD", &conf(&lab, 0, "0.2.0"), &env("x", &a, "eth0"));
    assert_eq!(error_code(&bad), 1);
    let mut other = conf(&lab, 0, "1.1.0");
    other["network"] = "green".into();
    let bad = cni(&lab, 0, "ADD", &other, &env("x", &a, "eth0"));
    assert_eq!(error_code(&bad), 7);
    assert!(bad.json["msg"].as_str().unwrap().contains("serves no network \"green\""), "{}", bad.json);
    let bad = cni(&lab, 0, "ADD", &conf(&lab, 0, "1.1.0"), &[("CNI_CONTAINERID", "x"), ("CNI_IFNAME", "eth0")]);
    assert_eq!(error_code(&bad), 4);
    assert_eq!(bad.json["msg"], "CNI_NETNS is not set");
    // The agent's own refusal: an interface name already in the container.
    let bad = cni(&lab, 0, "ADD", &conf(&lab, 0, "1.1.0"), &env("x", &a, "lo"));
    assert_eq!(error_code(&bad), 100);
    assert!(bad.json["msg"].as_str().unwrap().contains("already exists"), "{}", bad.json);
    assert_eq!(a.netlink(|nl| async move { nl.links().await.unwrap() }).len(), 1, "a refused ADD changed the namespace");

    // GC: of three attachments the runtime still lists one; the other two go.
    let (g1, g2, g3) = (NetNs::new("g1"), NetNs::new("g2"), NetNs::new("g3"));
    for (id, ns) in [("g1", &g1), ("g2", &g2), ("g3", &g3)] {
        added_ip(&cni(&lab, 0, "ADD", &conf(&lab, 0, "1.1.0"), &env(id, ns, "eth0")));
    }
    let mut gc = conf(&lab, 0, "1.1.0");
    gc["cni.dev/valid-attachments"] = serde_json::json!([{"containerID": "g2", "ifname": "eth0"}]);
    let out = cni(&lab, 0, "GC", &gc, &[]);
    assert!(out.ok, "{} {}", out.json, out.stderr);
    let owners: Vec<String> = lab.endpoints(0).iter().filter_map(|e| e["owner"].as_str().map(str::to_owned)).collect();
    assert_eq!(owners, vec!["cni:g2/eth0".to_string()]);
    // GC and STATUS are 1.1.0 verbs.
    assert_eq!(error_code(&cni(&lab, 0, "GC", &conf(&lab, 0, "1.0.0"), &[])), 1);

    // The agent down: ADD says try again later, STATUS says not available.
    lab.stop_agent(0);
    let down = cni(&lab, 0, "ADD", &conf(&lab, 0, "1.1.0"), &env("y", &a, "eth0"));
    assert_eq!(error_code(&down), 11);
    assert!(down.json["msg"].as_str().unwrap().contains("cannot reach the agent"), "{}", down.json);
    assert_eq!(error_code(&cni(&lab, 0, "STATUS", &conf(&lab, 0, "1.1.0"), &[])), 50);
    lab.start_agent(0);
    assert!(cni(&lab, 0, "STATUS", &conf(&lab, 0, "1.1.0"), &[]).ok);
}

#[test]
fn a_delegated_ipam_plugin_gives_the_address() {
    let lab = lab();
    let a = NetNs::new("a");
    let mut c = conf(&lab, 0, "1.1.0");
    c["ipam"] = serde_json::json!({
        "type": "host-local",
        "ranges": [[{"subnet": "10.0.10.0/24", "rangeStart": "10.0.10.100", "rangeEnd": "10.0.10.110"}]],
        "dataDir": lab.dir.join("host-local"),
    });
    let add = cni(&lab, 0, "ADD", &c, &env("ctr-a", &a, "eth0"));
    assert_eq!(added_ip(&add), "10.0.10.100".parse::<Ipv4Addr>().unwrap());
    let lease = lab.dir.join("host-local/blue-cni/10.0.10.100");
    assert!(lease.exists(), "host-local recorded no lease at {}", lease.display());
    // The address is claimed in the store like any other: the agent refuses it elsewhere.
    let x = NetNs::new("x");
    let out = lab.cli(1, &["endpoint", "add", "--network", "blue", "--netns", x.name(), "--ip", "10.0.10.100"]);
    assert!(!out.success() && out.stderr.contains("already used"), "{}", out.stderr);
    // DEL gives it back to host-local too.
    let del = cni(&lab, 0, "DEL", &c, &env("ctr-a", &a, "eth0"));
    assert!(del.ok, "{} {}", del.json, del.stderr);
    assert!(!lease.exists(), "host-local still holds the address after DEL");
}

/// The CNI endpoints (owner `cni:...`) of host `host`'s agent: (owner, ip).
fn cni_endpoints(lab: &Lab, host: usize) -> Vec<(String, String)> {
    lab.endpoints(host)
        .iter()
        .filter_map(|e| Some((e["owner"].as_str()?.strip_prefix("cni:")?.to_owned(), e["ip"].as_str()?.to_owned())))
        .collect()
}

#[test]
fn containerd_plugs_containers_on_two_hosts_through_the_plugin() {
    let lab = lab();
    let runtimes: Vec<Containerd> = (0..2)
        .map(|i| {
            let c = Containerd::start(&lab.hosts()[i].ns, &lab.dir.join(format!("containerd{i}")));
            let conflist = serde_json::json!({
                "cniVersion": "1.0.0",
                "name": "blue",
                "plugins": [{"type": "overlay-cni", "network": "blue", "agentConfig": lab.nodes[i].config}],
            });
            c.install_cni(&cni_binary(), &conflist);
            c
        })
        .collect();
    // On h1, a long-lived container: ctr calls ADD with the task's namespace.
    let rootfs = runtimes[0].rootfs("srv");
    let out = runtimes[0].ctr(&["run", "-d", "--cni", "--cpu-shares", "0", "--rootfs", rootfs.to_str().unwrap(), "srv", "/bin/sleep", "3600"]);
    out.assert_success();
    let eps = cni_endpoints(&lab, 0);
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(eps[0].0, "default-srv/eth0");
    let srv_ip = eps[0].1.clone();
    // On h2, a container that pings it and exits: ADD before, DEL after (ctr --rm).
    let rootfs = runtimes[1].rootfs("cli");
    let out = runtimes[1].ctr(&["run", "--rm", "--cni", "--cpu-shares", "0", "--rootfs", rootfs.to_str().unwrap(), "cli", "/bin/ping", "-c", "5", "-W", "2", &srv_ip]);
    let received = out
        .stdout
        .lines()
        .find_map(|l| l.split(", ").find_map(|p| p.strip_suffix(" packets received")))
        .and_then(|n| n.trim().parse::<u32>().ok());
    assert!(received.is_some_and(|n| n >= 4), "ping from h2's container to {srv_ip}: {}{}", out.stdout, out.stderr);
    assert!(cni_endpoints(&lab, 1).is_empty(), "ctr's DEL left the endpoint on h2: {:?}", cni_endpoints(&lab, 1));
}

#[test]
fn an_agent_restart_keeps_cni_containers_and_serves_them_afterwards() {
    let mut lab = lab();
    let (a, b) = (NetNs::new("a"), NetNs::new("b"));
    let ip_a = added_ip(&cni(&lab, 0, "ADD", &conf(&lab, 0, "1.1.0"), &env("ctr-a", &a, "eth0")));
    let ip_b = added_ip(&cni(&lab, 1, "ADD", &conf(&lab, 1, "1.1.0"), &env("ctr-b", &b, "eth0")));
    let b_mac = overlay_agent::mac::MacAddr::from_ipv4(ip_b);
    lab.wait_for_dump(0, "b known", Duration::from_secs(3), |d| d.fdb.iter().any(|f| f.mac == b_mac));
    // SIGTERM: the datapath stays, the containers keep talking; ADD meanwhile is "try again later".
    lab.stop_agent(0);
    assert_eq!(ping(&a, ip_b, 2, Duration::from_secs(2)).received, 2, "a stopped agent took the datapath down");
    let c = NetNs::new("c");
    assert_eq!(error_code(&cni(&lab, 0, "ADD", &conf(&lab, 0, "1.1.0"), &env("ctr-c", &c, "eth0"))), 11);
    // The next start adopts the attachment: CHECK passes, DEL removes it.
    lab.start_agent(0);
    let check = cni(&lab, 0, "CHECK", &conf(&lab, 0, "1.1.0"), &env("ctr-a", &a, "eth0"));
    assert!(check.ok, "{} {}", check.json, check.stderr);
    assert_eq!(ping(&b, ip_a, 2, Duration::from_secs(2)).received, 2);
    let del = cni(&lab, 0, "DEL", &conf(&lab, 0, "1.1.0"), &env("ctr-a", &a, "eth0"));
    assert!(del.ok, "{} {}", del.json, del.stderr);
    assert!(!a.netlink(|nl| async move { nl.link_by_name("eth0").await.unwrap().is_some() }), "DEL after the restart left eth0");
}
