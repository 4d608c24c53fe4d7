use super::*;

#[test]
fn member_ips() {
    assert_eq!(member_ip(0), Ipv4Addr::new(198, 51, 100, 250));
    assert_eq!(member_ip(2), Ipv4Addr::new(198, 51, 100, 252));
}

#[test]
fn pid_in_dir_name() {
    assert_eq!(embedded_pid("ovt-etcd-1234x7"), Some(1234));
    assert_eq!(embedded_pid("ovt-etcd-x7"), None);
    assert_eq!(embedded_pid("ovt-lab-1234x7"), None);
    assert_eq!(embedded_pid("ovt-etcd-12a4x7"), None);
}

/// Real etcd 3.4.23 output: one member answered, one was unreachable.
#[test]
fn status_json() {
    let json = r#"[{"Endpoint":"http://127.0.0.1:2379","Status":{"header":{"cluster_id":16645438370749438781,"member_id":11188960661303352088,"revision":1,"raft_term":2},"version":"3.4.23","dbSize":20480,"leader":11188960661303352088,"raftIndex":4,"raftTerm":2,"raftAppliedIndex":4,"dbSizeInUse":16384}}]"#;
    assert_eq!(
        parse_status(json).unwrap(),
        [EndpointStatus {
            endpoint: "http://127.0.0.1:2379".to_owned(),
            member_id: 11188960661303352088,
            leader: 11188960661303352088,
            db_size: 20480,
            db_size_in_use: 16384,
        }]
    );
    assert_eq!(parse_status("[]\n").unwrap(), []);
    assert!(parse_status("").is_err());
    assert!(parse_status(r#"[{"Endpoint":"x"}]"#).is_err());
}

/// Real etcd 3.4.23 output: `put a/1 -x`, `put a/2 ""`, then an empty range.
#[test]
fn get_json() {
    let json = r#"{"header":{"cluster_id":1,"member_id":2,"revision":3,"raft_term":2},"kvs":[{"key":"YS8x","create_revision":2,"mod_revision":2,"version":1,"value":"LXg="},{"key":"YS8y","create_revision":3,"mod_revision":3,"version":1}],"count":2}"#;
    assert_eq!(
        parse_get(json).unwrap(),
        [
            ("a/1".to_owned(), "-x".to_owned()),
            ("a/2".to_owned(), String::new())
        ]
    );
    let empty = r#"{"header":{"cluster_id":1,"member_id":2,"revision":2,"raft_term":2}}"#;
    assert_eq!(parse_get(empty).unwrap(), []);
    assert!(parse_get(r#"{"kvs":[{"key":"!!"}]}"#).is_err());
}

#[test]
fn stale_dirs_of_dead_processes_only() {
    let tmp = env::temp_dir().join(format!("ovt-etcd-unit-{}", std::process::id()));
    // A pid that cannot exist (above the kernel's maximum) and ours.
    let dead = tmp.join("ovt-etcd-4194305x0");
    let alive = tmp.join(format!("ovt-etcd-{}x0", std::process::id()));
    let other = tmp.join("ovt-lab-4194305x0");
    for dir in [&dead, &alive, &other] {
        fs::create_dir_all(dir.join("m0")).unwrap();
    }
    let removed = cleanup_stale_dirs(&tmp);
    let left = (alive.exists(), other.exists(), dead.exists());
    fs::remove_dir_all(&tmp).unwrap();
    assert_eq!(removed, ["ovt-etcd-4194305x0"]);
    assert_eq!(left, (true, true, false));
}

#[test]
fn tls_files_written() {
    let dir = env::temp_dir().join(format!("ovt-etcd-certs-{}", std::process::id()));
    let (files, servers) = write_tls_files(&dir, &[member_ip(0), member_ip(1)]);
    let read = |p: &Path| fs::read_to_string(p).unwrap();
    let pems = [
        read(&files.ca_file),
        read(&files.cert_file),
        read(&files.key_file),
        read(&files.rogue_cert_file),
        read(&servers[1].0),
    ];
    let key_mode = fs::metadata(&files.key_file).unwrap().permissions();
    fs::remove_dir_all(&dir).unwrap();
    assert!(pems[0].starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(pems[2].starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_ne!(pems[1], pems[3]);
    assert_eq!(servers.len(), 2);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(key_mode.mode() & 0o777, 0o600);
}
