use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A uniquely named namespace, deleted on drop (also while panicking).
pub(crate) struct TestNs {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
}

impl TestNs {
    pub(crate) fn new() -> Self {
        let name = format!(
            "ovu{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = create_named_netns(&name).expect("create netns");
        Self { name, path }
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let result = delete_named_netns(&self.name);
        if thread::panicking() {
            if let Err(error) = result {
                tracing::error!(name = %self.name, %error, "deleting test netns");
            }
        } else {
            result.expect("delete test netns");
        }
    }
}

pub(crate) fn root_only() {
    assert!(nix::unistd::geteuid().is_root(), "netns tests need root: run them through `cargo xtask test`");
}

#[test]
fn path_of_name_and_path() {
    assert_eq!(netns_path("foo"), PathBuf::from("/run/netns/foo"));
    assert_eq!(
        netns_path("/proc/1/ns/net"),
        PathBuf::from("/proc/1/ns/net")
    );
    assert_eq!(netns_path("./x"), PathBuf::from("./x"));
}

#[test]
fn sysctl_keys() {
    assert_eq!(
        sysctl_path("net.ipv4.ip_forward").unwrap(),
        PathBuf::from("/proc/sys/net/ipv4/ip_forward")
    );
    for bad in ["", "net..ipv4", "net/../x", ".net", "net."] {
        assert!(
            matches!(sysctl_path(bad), Err(NetnsError::InvalidSysctlKey { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn invalid_names() {
    for bad in ["", ".", "..", "a/b", "a\0b"] {
        assert!(
            matches!(create_named_netns(bad), Err(NetnsError::InvalidName { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn create_enter_delete() {
    root_only();
    let ns = TestNs::new();
    assert!(ns.path.exists());
    assert!(!is_root_netns(&ns.path).unwrap());

    // Creating it again is an error, naming the path.
    match create_named_netns(&ns.name) {
        Err(NetnsError::Exists { path }) => assert_eq!(path, ns.path),
        other => panic!("expected Exists, got {other:?}"),
    }

    // A thread that entered it sees it as its own namespace, and only lo.
    let (same, links) = run_in_netns(&ns.path, || {
        let ns_id = ns_identity(&ns.path).unwrap();
        let own = ns_identity(Path::new(THREAD_NETNS)).unwrap();
        // /proc/thread-self/net shows the namespace of this thread.
        let links: Vec<String> = fs::read_to_string("/proc/thread-self/net/dev")
            .unwrap()
            .lines()
            .skip(2)
            .filter_map(|line| line.split(':').next())
            .map(|name| name.trim().to_owned())
            .collect();
        (ns_id == own, links)
    })
    .unwrap();
    assert!(same);
    assert_eq!(links, ["lo"]);
    // ...and the caller's thread did not move.
    assert_ne!(
        ns_identity(Path::new(THREAD_NETNS)).unwrap(),
        ns_identity(&ns.path).unwrap()
    );

    let name = ns.name.clone();
    drop(ns);
    assert!(!netns_path(&name).exists());
    // Idempotent.
    delete_named_netns(&name).unwrap();
}

#[test]
fn block_on_runs_async() {
    root_only();
    let ns = TestNs::new();
    let value = block_on_in_netns(&ns.path, || async {
        tokio::task::yield_now().await;
        42
    })
    .unwrap();
    assert_eq!(value, 42);
}

#[test]
#[should_panic(expected = "boom inside")]
fn panic_propagates() {
    root_only();
    let ns = TestNs::new();
    run_in_netns(&ns.path, || panic!("boom inside")).unwrap();
}

#[test]
fn open_missing_namespace() {
    let missing = Path::new("/run/netns/ovu-does-not-exist");
    assert!(matches!(
        run_in_netns(missing, || ()),
        Err(NetnsError::Open { .. })
    ));
}

#[test]
fn sysctl_only_inside() {
    root_only();
    let root_before = fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();

    // Never the root namespace, by any path.
    let mut refused = 0;
    for root in ["/proc/1/ns/net", "/proc/2/ns/net", "/proc/self/ns/net"] {
        if is_root_netns(Path::new(root)).unwrap_or(false) {
            assert!(matches!(
                write_sysctl_in_netns(Path::new(root), "net.ipv4.ip_forward", "1"),
                Err(NetnsError::RootNamespace { .. })
            ));
            refused += 1;
        }
    }
    assert!(refused > 0, "no path to the root namespace was recognised");

    let ns = TestNs::new();
    let read = || {
        run_in_netns(&ns.path, || {
            fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap()
        })
        .unwrap()
    };
    // A new namespace may inherit the root's IPv4 settings
    // (net.core.devconf_inherit_init_net), so set both values.
    for value in ["1", "0", "1"] {
        write_sysctl_in_netns(&ns.path, "net.ipv4.ip_forward", value).unwrap();
        assert_eq!(read().trim(), value);
    }
    assert_eq!(
        fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        root_before
    );
}
