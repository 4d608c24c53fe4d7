//! Restarts and upgrades no container notices. Two hosts, one container each; a ping
//! every 10 ms from the container on h1 to the one on h2 and a long TCP connection
//! between them run across agent restarts on both hosts, one after the other: SIGTERM
//! and start, SIGKILL and start, an upgrade to a build with another map layout and
//! other programs (the upgrade-test variant) and back. Not one ping may be lost (only
//! the last 200 ms before the pinger stops are forgiven, as in flight), the connection
//! must carry every byte intact, and each restarted agent must have adopted the
//! datapath rather than rebuilt it (see [`integration_tests::adoption`]).
//!
//! Runs in the datapath mode of the suite (`OVERLAY_TEST_DATAPATH`); `cargo xtask test`
//! runs this file in eBPF and in kernel mode.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    LongConnection, Pinger,
    adoption::{HostSnapshot, Restart, assert_adopted},
    lab::{BLUE, Lab},
    ping, require_root,
    topo::Underlay,
    variant_binary,
};
use overlay_common::{Direction, Reason, maps::LAYOUT_VERSION};

/// Traffic before, between and after the restarts (what they are measured against).
const HOLD: Duration = Duration::from_millis(700);
/// How long an agent stays down: the datapath forwards alone meanwhile.
const DOWN: Duration = Duration::from_millis(300);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Containers `a` (h1) and `b` (h2), converged, with `a` reaching `b`.
fn lab() -> Lab {
    require_root();
    let mut lab = Lab::new(Underlay::two_hosts(), &[BLUE]);
    lab.start_all();
    lab.add_container(0, "a", BLUE, ip("10.0.10.11"));
    lab.add_container(1, "b", BLUE, ip("10.0.10.12"));
    lab.wait_converged(Duration::from_secs(5));
    let r = ping(&lab.container("a").ns, lab.container("b").ip, 1, Duration::from_secs(2));
    assert_eq!(r.received, 1, "a cannot reach b before any restart: {r:?}");
    lab
}

/// The pinger a → b and the long connection a → b.
struct Traffic {
    pinger: Pinger,
    stream: LongConnection,
    started: Instant,
}

impl Traffic {
    fn start(lab: &Lab) -> Traffic {
        let (a, b) = (lab.container("a"), lab.container("b"));
        let traffic = Traffic {
            pinger: Pinger::start(&a.ns, b.ip),
            stream: LongConnection::start(&b.ns, b.ip, &a.ns),
            started: Instant::now(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while traffic.pinger.replies() < 10 || traffic.stream.bytes_received() == 0 {
            assert!(Instant::now() < deadline, "no traffic flows a -> b before the restarts");
            thread::sleep(Duration::from_millis(10));
        }
        traffic
    }

    /// Lets the traffic run for `d`: the stretch of time a step is measured over, not a
    /// wait for anything.
    fn hold(d: Duration) {
        thread::sleep(d);
    }

    /// Stops both and asserts that nothing was lost.
    fn finish(self) {
        let pings = self.pinger.stop();
        let stream = self.stream.stop();
        eprintln!(
            "traffic over {:?}: pings: {pings}\nstream: {stream}",
            self.started.elapsed()
        );
        assert!(pings.sent > 100, "too few pings to mean anything: {pings}");
        assert!(
            pings.lost.is_empty() && pings.icmp_errors == 0,
            "pings lost across the restarts: {pings}"
        );
        assert!(
            stream.intact(),
            "the long TCP connection did not survive the restarts intact: {stream}"
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    Term,
    Kill,
}

/// Stops host `i`'s agent as `stop` says, leaves it down for [`DOWN`], starts `binary`
/// in its place and checks that it adopted the datapath across `restart`.
fn restart(lab: &mut Lab, i: usize, stop: Stop, binary: &Path, restart: Restart) {
    let before = HostSnapshot::take(lab, i);
    let started = Instant::now();
    match stop {
        Stop::Term => {
            let status = lab.stop_agent(i);
            assert!(status.success(), "SIGTERM: agent exited with {status}");
        }
        Stop::Kill => {
            let status = lab.kill_agent(i);
            assert!(!status.success(), "SIGKILL: agent exited with {status}");
        }
    }
    Traffic::hold(DOWN);
    lab.set_binary(i, binary);
    lab.start_agent(i);
    lab.wait_synced(i);
    eprintln!(
        "{}: {stop:?} and start of {} took {:?} (synced)",
        lab.nodes[i].name,
        binary.display(),
        started.elapsed()
    );
    let after = HostSnapshot::take(lab, i);
    assert_adopted(&before, &after, restart);
    let list = lab.cli(i, &["endpoint", "list", "--json"]);
    list.assert_success();
    for c in lab.containers.iter().filter(|c| c.host == i) {
        assert!(
            list.stdout.contains(&format!("\"{}\"", c.ip)),
            "{} not adopted after the restart: {}",
            c.name,
            list.stdout
        );
    }
}

/// Restarts every host, one after the other, with traffic running throughout.
fn restart_each(stop: Stop) {
    let mut lab = lab();
    let binary = lab.binary.clone();
    let traffic = Traffic::start(&lab);
    Traffic::hold(HOLD);
    for i in 0..2 {
        restart(&mut lab, i, stop, &binary, Restart::SameBuild);
        Traffic::hold(HOLD);
    }
    traffic.finish();
}

#[test]
fn sigterm_and_start_lose_no_packet_and_no_connection() {
    restart_each(Stop::Term);
}

#[test]
fn sigkill_and_start_lose_no_packet_and_no_connection() {
    restart_each(Stop::Kill);
}

/// The variant's marker counters of host `i` (from-container, from-underlay).
fn markers(lab: &Lab, i: usize) -> (u64, u64) {
    let d = lab.dump(i);
    (
        d.packets(Direction::FromContainer, Reason::UpgradeTestMarker),
        d.packets(Direction::FromUnderlay, Reason::UpgradeTestMarker),
    )
}

/// The one map layout directory of host `i`.
fn layout_dir(lab: &Lab, i: usize) -> String {
    let dirs = HostSnapshot::take(lab, i).ebpf.expect("eBPF datapath").layout_dirs;
    assert_eq!(dirs.len(), 1, "{}: map layout directories {dirs:?}", lab.nodes[i].name);
    dirs[0].clone()
}

#[test]
fn upgrade_to_another_build_and_back_loses_no_packet_and_no_connection() {
    let variant: PathBuf = variant_binary();
    let mut lab = lab();
    let normal = lab.binary.clone();
    let ebpf = lab.dump(0).datapath == "ebpf";
    let traffic = Traffic::start(&lab);
    Traffic::hold(HOLD);
    for i in 0..2 {
        restart(&mut lab, i, Stop::Term, &variant, Restart::OtherBuild);
        if ebpf {
            // The variant's programs run (they count every packet once more, as a
            // marker; the dump is read with the variant, which knows its layout)...
            let name = lab.nodes[i].name.clone();
            let (c0, u0) = markers(&lab, i);
            lab.wait_for_dump(
                i,
                "the variant's marker counters growing",
                Duration::from_secs(5),
                |d| {
                    d.packets(Direction::FromContainer, Reason::UpgradeTestMarker) > c0
                        && d.packets(Direction::FromUnderlay, Reason::UpgradeTestMarker) > u0
                },
            );
            // ... and the maps of the old layout are gone.
            let dir = layout_dir(&lab, i);
            assert_ne!(
                dir,
                format!("v{LAYOUT_VERSION}"),
                "{name}: the variant kept this build's map layout ({dir}): is {} built with --features upgrade-test-variant?",
                variant.display()
            );
        }
        Traffic::hold(HOLD);
    }
    for i in 0..2 {
        restart(&mut lab, i, Stop::Term, &normal, Restart::OtherBuild);
        if ebpf {
            assert_eq!(
                markers(&lab, i),
                (0, 0),
                "{}: the marker still counts after the downgrade",
                lab.nodes[i].name
            );
            assert_eq!(
                layout_dir(&lab, i),
                format!("v{LAYOUT_VERSION}"),
                "{}: not back on this build's layout",
                lab.nodes[i].name
            );
        }
        Traffic::hold(HOLD);
    }
    traffic.finish();
}
