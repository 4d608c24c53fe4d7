use super::*;

const GOOD: &str = r#"
node_name = "h1"
underlay_interface = "ul0"

[[network]]
name = "blue"
vni = 42
subnet = "10.0.10.0/24"

[store]
backend = "dir"
path = "/tmp/store"
"#;

#[test]
fn fills_defaults() {
    let c = Config::parse(GOOD).unwrap();
    assert_eq!(c.state_dir, Path::new("/run/overlay-agent/h1"));
    assert_eq!(c.bpffs_dir, Path::new("/sys/fs/bpf/overlay/h1"));
    assert_eq!(c.networks[0].udp_port, 4789);
    assert_eq!(c.networks[0].effective_mtu(1500), 1450);
    assert_eq!(c.vtep_ip, None);
    assert_eq!(c.datapath.mode, DatapathMode::Auto);
    assert!(c.networks[0].known_vteps_only, "VXLAN only from known VTEPs by default");
    let open = Config::parse(&GOOD.replace("subnet = \"10.0.10.0/24\"", "subnet = \"10.0.10.0/24\"\nknown_vteps_only = false")).unwrap();
    assert!(!open.networks[0].known_vteps_only);
    let k = Config::parse(&format!("{GOOD}\n[datapath]\nmode = \"kernel\"\n")).unwrap();
    assert_eq!(k.datapath.mode, DatapathMode::Kernel);
    assert!(err_of(&format!("{GOOD}\n[datapath]\nmode = \"xdp\"\n")).contains("unknown variant `xdp`"));
}

/// The error with its causes, as the CLI prints it.
fn err_of(text: &str) -> String {
    crate::with_causes(&Config::parse(text).unwrap_err())
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (GOOD.replace("vni = 42", "vni = 0"), "network[0].vni"),
        (GOOD.replace("vni = 42", "vni = 16777216"), "network[0].vni"),
        (GOOD.replace("10.0.10.0/24", "10.0.10.5/24"), "network[0].subnet"),
        (GOOD.replace("10.0.10.0/24", "10.0.10.0/31"), "network[0].subnet"),
        (GOOD.replace("node_name = \"h1\"", "node_name = \"h 1\""), "node_name"),
        (GOOD.replace("/tmp/store", "relative/store"), "store.path"),
        (GOOD.replace("ul0", "an-interface-name-too-long"), "underlay_interface"),
        (format!("vtep_ip = \"0.0.0.0\"\n{GOOD}"), "vtep_ip"),
        (format!("bpffs_dir = \"/tmp/pins\"\n{GOOD}"), "bpffs_dir"),
        (
            format!("{GOOD}\n[[network]]\nname = \"blue\"\nvni = 43\nsubnet = \"10.0.20.0/24\"\n"),
            "network[1].name",
        ),
        (
            format!("{GOOD}\n[[network]]\nname = \"red\"\nvni = 42\nsubnet = \"10.0.20.0/24\"\n"),
            "network[1].vni",
        ),
        (GOOD.replace("subnet = \"10.0.10.0/24\"", "subnet = \"10.0.10.0/24\"\nmtu = 100"), "network[0].mtu"),
        // L3 networks.
        (GOOD.replace("subnet = \"10.0.10.0/24\"", "subnet = \"10.0.10.0/24\"\nnode_prefix_len = 26"), "network[0].mode"),
        (GOOD.replace("subnet = \"10.0.10.0/24\"", "subnet = \"10.0.0.0/16\"\nmode = \"l3\"\nnode_prefix_len = 16"), "network[0].node_prefix_len"),
        (
            GOOD.replace("subnet = \"10.0.10.0/24\"", "subnet = \"10.0.0.0/16\"\nmode = \"l3\"\nnode_subnet = \"10.1.0.0/24\""),
            "network[0].node_subnet",
        ),
        (GOOD.replace("subnet = \"10.0.10.0/24\"", "subnet = \"10.0.0.0/16\"\nmode = \"l3\"\ngateway = false"), "network[0].gateway"),
        (GOOD.replace("subnet = \"10.0.10.0/24\"", "subnet = \"10.0.10.0/24\"\ngateway = false\nmasquerade = true"), "network[0].masquerade"),
    ];
    for (text, field) in cases {
        let e = err_of(&text);
        assert!(e.contains(&format!("`{field}`")), "expected field {field} in: {e}");
    }
}

const ETCD: &str = r#"
node_name = "h1"
underlay_interface = "ul0"

[[network]]
name = "blue"
vni = 42
subnet = "10.0.10.0/24"

[store]
backend = "etcd"
endpoints = ["https://198.51.100.250:2379", "https://198.51.100.251:2379"]
lease_ttl_s = 5
ca_file = "/etc/overlay/ca.pem"
cert_file = "/etc/overlay/client.pem"
key_file = "/etc/overlay/client-key.pem"
"#;

#[test]
fn etcd_store() {
    let c = Config::parse(ETCD).unwrap();
    assert_eq!(c.store.prefix, "/overlay/v1");
    assert_eq!(c.store.lease_ttl, std::time::Duration::from_secs(5));
    let Backend::Etcd(e) = &c.store.backend else { panic!("{:?}", c.store) };
    assert_eq!(e.endpoints.len(), 2);
    assert_eq!(e.tls.as_ref().unwrap().cert_file, Path::new("/etc/overlay/client.pem"));
    let d = Config::parse(GOOD).unwrap();
    assert_eq!(d.store.lease_ttl, std::time::Duration::from_secs(DEFAULT_LEASE_TTL_S));
    let cases = [
        (ETCD.replace("lease_ttl_s = 5", "lease_ttl_s = 1"), "store.lease_ttl_s"),
        (ETCD.replace("https://198.51.100.251:2379", "198.51.100.251:2379"), "store.endpoints[1]"),
        (ETCD.replace("https://198.51.100.251", "http://198.51.100.251"), "store.endpoints"),
        (ETCD.replace("cert_file = \"/etc/overlay/client.pem\"\n", ""), "store.cert_file"),
        (ETCD.replace("https", "http"), "store.endpoints"),
        (ETCD.replace("lease_ttl_s = 5", "prefix = \"overlay/\""), "store.prefix"),
        (ETCD.replace("lease_ttl_s = 5", "endpoint = \"x\""), "endpoint"),
        (ETCD.replace("\"https://198.51.100.250:2379\", \"https://198.51.100.251:2379\"", ""), "store.endpoints"),
        (format!("{GOOD}\n[datapath]\nfdb_capacity = 0\n"), "datapath.fdb_capacity"),
    ];
    for (text, field) in cases {
        let e = err_of(&text);
        assert!(e.contains(field), "expected {field} in: {e}");
    }
    let k = Config::parse(&format!("{GOOD}\n[datapath]\nneigh_capacity = 300000\n")).unwrap();
    assert_eq!((k.datapath.neigh_capacity, k.datapath.fdb_capacity), (300_000, limits::DEFAULT_FDB));
}

#[test]
fn rejects_missing_and_unknown_fields() {
    assert!(err_of(&GOOD.replace("underlay_interface = \"ul0\"", "")).contains("underlay_interface"));
    assert!(err_of(&format!("colour = \"red\"\n{GOOD}")).contains("colour"));
    let no_net = "node_name = \"h1\"\nunderlay_interface = \"ul0\"\n[store]\nbackend = \"dir\"\npath = \"/s\"\n";
    assert!(err_of(no_net).contains("`network`"));
    assert!(err_of(&GOOD.replace("backend = \"dir\"", "backend = \"zookeeper\"")).contains("zookeeper"));
}
