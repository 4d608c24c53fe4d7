//! Self-tests of the etcd harness ([`integration_tests::etcd`]): hosts on the
//! underlay reach the members over the network, a 3-member cluster survives
//! losing its leader, TLS refuses untrusted clients, and nothing is left
//! behind. Run as root:
//! `cargo test -p integration-tests --test etcd_harness -- --test-threads=1`.

use std::{fs, os::unix::process::ExitStatusExt as _, path::Path, time::Instant};

use integration_tests::{
    EtcdCluster, EtcdOptions, Underlay,
    etcd::{ETCDCTL_BIN, member_ip},
    hang_guard,
    ns::netns_exists,
    ping, require_root, run_cli,
    topo::{H1_IP, H2_IP, ROUTER_IP_A},
};

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Pids of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let entries = fs::read_dir("/proc").expect("list /proc");
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

#[test_log::test]
fn switched_underlay() {
    require_root();
    let u = Underlay::switched();
    let (sw, bridge) = u.segment().expect("the switched underlay has a segment");
    assert_eq!(bridge, "br0");
    let br = sw.link(bridge);
    assert_eq!(sw.link("h1p").master, Some(br.index));
    assert_eq!(sw.link("h2p").master, Some(br.index));
    assert_eq!(u.segment_gateway(), None);
    assert_eq!(u.netns_names().len(), 3);
    assert!(u.netns_names().iter().all(|n| netns_exists(n)));

    let r = ping(&u.h1.ns, H2_IP, 2, TIMEOUT);
    assert_eq!((r.sent, r.received), (2, 2), "{r:?}");
    let r = ping(&u.h2.ns, H1_IP, 1, TIMEOUT);
    assert_eq!(r.received, 1, "{r:?}");

    let routed = Underlay::routed();
    let (r, bridge) = routed.segment().unwrap();
    assert_eq!((r.name(), bridge), (routed.router().name(), "br0"));
    assert_eq!(routed.segment_gateway(), Some(ROUTER_IP_A));
    assert!(Underlay::two_hosts().segment().is_none());
}

/// Hosts on both segments of the routed underlay write and read through the
/// member's address: agents there can use it as their store.
#[test_log::test]
fn single_member_reachable_across_the_underlay() {
    require_root();
    let u = Underlay::routed();
    let etcd = EtcdCluster::start(&u, EtcdOptions::default());
    assert_eq!(etcd.len(), 1);
    assert_eq!(etcd.endpoints(), ["http://198.51.100.250:2379"]);
    assert_eq!(etcd.member_ip(0), member_ip(0));
    assert!(etcd.tls().is_none());

    let h3 = &u.h3().ns;
    etcd.etcdctl_in(&u.h1.ns, &["put", "/ovt/from-h1", "one"])
        .assert_success();
    etcd.etcdctl_in(h3, &["put", "/ovt/from-h3", "three"])
        .assert_success();
    let got = etcd.etcdctl_in(h3, &["get", "--print-value-only", "/ovt/from-h1"]);
    assert_eq!(got.assert_success().stdout.trim(), "one");
    let got = etcd.etcdctl_in(&u.h2.ns, &["get", "--print-value-only", "/ovt/from-h3"]);
    assert_eq!(got.assert_success().stdout.trim(), "three");

    // The harness's own helpers see the same data.
    assert_eq!(
        etcd.get_prefix("/ovt/"),
        [
            ("/ovt/from-h1".to_owned(), "one".to_owned()),
            ("/ovt/from-h3".to_owned(), "three".to_owned())
        ]
    );
    etcd.put("/ovt/dash", "-v");
    assert_eq!(
        etcd.get_prefix("/ovt/dash"),
        [("/ovt/dash".to_owned(), "-v".to_owned())]
    );
    assert_eq!(etcd.del_prefix("/ovt/"), 3);
    assert!(etcd.get_prefix("/ovt/").is_empty());
}

/// The leader stops; the other two elect a new one quickly and keep
/// accepting writes; the old leader comes back and catches up.
#[test_log::test]
fn three_members_survive_losing_the_leader() {
    require_root();
    let u = Underlay::switched();
    let mut etcd = EtcdCluster::start(
        &u,
        EtcdOptions {
            members: 3,
            tls: false,
        },
    );
    assert_eq!(etcd.len(), 3);
    assert_eq!(etcd.endpoints().len(), 3);
    etcd.put("/ovt/before", "1");

    let old = etcd.leader();
    // etcd handles SIGTERM (a graceful stop that hands leadership over), then
    // re-raises it: dying of SIGTERM, not of the SIGKILL after the grace
    // period, is a clean stop.
    let status = etcd.stop(old);
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status}");
    assert!(!etcd.is_running(old));
    assert_eq!(etcd.pid(old), None);

    let since = Instant::now();
    let new = etcd.leader();
    let took = since.elapsed();
    assert_ne!(new, old);
    assert!(
        took < hang_guard(std::time::Duration::from_secs(5)),
        "new leader after {took:?}"
    );
    etcd.put("/ovt/during", "2");
    // Reads need a quorum too: two of three are enough.
    assert_eq!(etcd.get_prefix("/ovt/").len(), 2);

    etcd.restart(old);
    let leader = etcd.wait_healthy();
    assert!(leader < 3);
    assert!((0..3).all(|i| etcd.is_running(i)));
    // Served from the restarted member's own data: it caught up.
    let got = etcd.etcdctl_member(
        old,
        &[
            "get",
            "--consistency=s",
            "--print-value-only",
            "/ovt/during",
        ],
    );
    assert_eq!(got.assert_success().stdout.trim(), "2");

    // A follower's crash leaves a quorum.
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let status = etcd.kill(follower);
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    etcd.put("/ovt/after-kill", "3");
    assert_eq!(etcd.wait_healthy(), leader);
}

/// Only clients with a certificate of the cluster's CA get in.
#[test_log::test]
fn tls_requires_a_trusted_client_certificate() {
    require_root();
    let u = Underlay::switched();
    let etcd = EtcdCluster::start(
        &u,
        EtcdOptions {
            members: 1,
            tls: true,
        },
    );
    let tls = etcd.tls().expect("TLS files").clone();
    assert_eq!(etcd.endpoints(), ["https://198.51.100.250:2379"]);

    // With the client certificate, from a host.
    etcd.etcdctl_in(&u.h1.ns, &["put", "/ovt/k", "trusted"])
        .assert_success();
    assert_eq!(
        etcd.get_prefix("/ovt/"),
        [("/ovt/k".to_owned(), "trusted".to_owned())]
    );

    let endpoint = format!("--endpoints={}", etcd.endpoint(0));
    let try_put = |extra: &[String], value: &str| {
        let mut args = vec![
            endpoint.clone(),
            "--dial-timeout=1s".into(),
            "--command-timeout=2s".into(),
        ];
        args.extend_from_slice(extra);
        args.extend(["put".into(), "/ovt/k".into(), value.into()]);
        run_cli(Some(&u.h1.ns), Path::new(ETCDCTL_BIN), &args)
    };
    let flag = |name: &str, path: &Path| format!("--{name}={}", path.display());
    let no_cert = try_put(&[flag("cacert", &tls.ca_file)], "no-cert");
    assert!(
        !no_cert.success(),
        "put without a client certificate: {no_cert:?}"
    );
    let rogue = try_put(
        &[
            flag("cacert", &tls.ca_file),
            flag("cert", &tls.rogue_cert_file),
            flag("key", &tls.rogue_key_file),
        ],
        "rogue",
    );
    assert!(
        !rogue.success(),
        "put with the rogue certificate: {rogue:?}"
    );
    // And the client refuses a server its CA did not sign.
    let wrong_ca = try_put(
        &[
            flag("cacert", &tls.rogue_ca_file),
            flag("cert", &tls.cert_file),
            flag("key", &tls.key_file),
        ],
        "wrong-ca",
    );
    assert!(
        !wrong_ca.success(),
        "put trusting only the rogue CA: {wrong_ca:?}"
    );

    // The refusals were TLS handshakes from h1 that failed for the expected
    // reason, not a network problem: nothing was written, and the member
    // logged each one.
    assert_eq!(
        etcd.get_prefix("/ovt/"),
        [("/ovt/k".to_owned(), "trusted".to_owned())]
    );
    let log = etcd.log(0);
    let from_h1 = format!("\"remote-addr\":\"{H1_IP}:");
    for why in [
        "client didn't provide a certificate",
        "x509: certificate signed by unknown authority",
        // etcdctl hung up on a server certificate it could not verify.
        "remote error: tls: bad certificate",
    ] {
        assert!(
            log.lines().any(|l| l.contains("rejected connection")
                && l.contains(&from_h1)
                && l.contains(why)),
            "no rejected connection from h1 for {why:?} in the etcd log:\n{log}"
        );
    }
}

/// Dropping the cluster kills its members and removes their data.
#[test_log::test]
fn drop_leaves_nothing_behind() {
    require_root();
    let u = Underlay::switched();
    let etcd = EtcdCluster::start(
        &u,
        EtcdOptions {
            members: 1,
            tls: true,
        },
    );
    let dir = etcd.dir().to_owned();
    let data = etcd.data_dir(0).to_owned();
    let ns = etcd.member_ns(0).name().to_owned();
    let pid = etcd.pid(0).expect("member 0 runs");
    assert!(
        data.join("member").is_dir(),
        "etcd wrote no data into {}",
        data.display()
    );
    assert!(
        dir.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("ovt-etcd-")
    );
    let running = processes_mentioning(&data.display().to_string());
    assert_eq!(running, [pid]);

    drop(etcd);
    assert!(processes_mentioning(&dir.display().to_string()).is_empty());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "etcd pid {pid} survived"
    );
    assert!(!dir.exists(), "{} survived", dir.display());
    assert!(!netns_exists(&ns), "namespace {ns} survived");
    // The underlay is untouched: its hosts still talk.
    assert_eq!(ping(&u.h1.ns, H2_IP, 1, TIMEOUT).received, 1);
}
