
use super::*;
use crate::store::kv::*;
use std::collections::{BTreeSet, HashSet};

    const SECOND: Duration = Duration::from_secs(1);

    fn put(key: &str, value: &str, lease: LeaseId) -> Txn {
        Txn::default().put(key.into(), value.into(), lease)
    }

    fn pair(key: &str, value: &str, lease: LeaseId) -> KeyValue {
        KeyValue { key: key.into(), value: value.into(), lease }
    }

    async fn store() -> (tempfile::TempDir, DirKv) {
        let dir = tempfile::tempdir().unwrap();
        let kv = DirKv::open(dir.path()).await.unwrap();
        (dir, kv)
    }

    async fn next(rx: &mut mpsc::Receiver<WatchEvent>, within: Duration) -> WatchEvent {
        tokio::time::timeout(within, rx.recv()).await.expect("an event in time").expect("the watch runs")
    }

    async fn quiet(rx: &mut mpsc::Receiver<WatchEvent>, for_: Duration) {
        if let Ok(event) = tokio::time::timeout(for_, rx.recv()).await {
            panic!("unexpected event {event:?}");
        }
    }

    async fn snapshot(rx: &mut mpsc::Receiver<WatchEvent>) -> Vec<KeyValue> {
        match next(rx, SECOND).await {
            WatchEvent::Snapshot(kvs) => kvs,
            other => panic!("expected a snapshot, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn file_formats_are_readable_and_round_trip() {
        let (dir, kv) = store().await;
        let lease = kv.grant(Duration::from_secs(10)).await.unwrap();
        assert!(lease > 0);
        assert_eq!(kv.txn(put("/o/nodes/h1", "{\"a\":1}\nline 2", lease)).await.unwrap(), TxnOutcome::Applied);
        let file = fs::read_to_string(dir.path().join("o/nodes/h1")).unwrap();
        assert_eq!(file, format!("lease {lease:x}\n{{\"a\":1}}\nline 2"));
        let lease_file = fs::read_to_string(dir.path().join(LEASES_DIR).join(format!("{lease:x}"))).unwrap();
        let parsed = decode_lease(lease_file.as_bytes()).unwrap();
        assert_eq!(parsed.ttl_ms, 10_000);
        assert!(parsed.expires_ms > now_ms() + 9_000, "{lease_file}");
        assert!(lease_file.starts_with("ttl_ms 10000\nexpires_ms "), "{lease_file}");
        assert_eq!(kv.get("/o/nodes/h1").await.unwrap(), Some(kv_owned("/o/nodes/h1", b"{\"a\":1}\nline 2", lease)));
        assert_eq!(decode_record(b"lease 0\n".to_vec()), Ok(Record { lease: NO_LEASE, value: vec![] }));
        assert!(decode_record(b"no header".to_vec()).is_err());
        assert_eq!(kv.describe(), format!("dir {}", dir.path().display()));
        assert_eq!(*kv.connection().borrow(), Connection::Connected);
    }

    fn kv_owned(key: &str, value: &[u8], lease: LeaseId) -> KeyValue {
        KeyValue { key: key.into(), value: value.to_vec(), lease }
    }

    #[tokio::test]
    async fn invalid_keys_are_refused() {
        let (dir, kv) = store().await;
        for key in ["", "a/b", "/", "/a//b", "/a/", "/a/../b", "/a/.b", "/.leases/x", "/..", "/a\0b"] {
            match kv.txn(put(key, "v", NO_LEASE)).await {
                Err(StoreError::InvalidKey { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key:?}: {other:?}"),
            }
            assert!(matches!(kv.get(key).await, Err(StoreError::InvalidKey { .. })), "{key:?}");
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "only .lock and .leases");
    }

    #[tokio::test]
    async fn txn_conditions() {
        let (dir, kv) = store().await;
        let lease = kv.grant(Duration::from_secs(10)).await.unwrap();
        assert_eq!(kv.txn(put("/p/a", "1", lease)).await.unwrap(), TxnOutcome::Applied);

        // Absent on an existing key: Failed with the current value, nothing changed.
        let txn = Txn::default()
            .when(Cond::Absent("/p/b".into()))
            .when(Cond::Absent("/p/a".into()))
            .put("/p/a".into(), "2".into(), NO_LEASE)
            .put("/p/c".into(), "3".into(), NO_LEASE)
            .delete("/p/b".into());
        assert_eq!(
            kv.txn(txn).await.unwrap(),
            TxnOutcome::Failed { cond: Cond::Absent("/p/a".into()), current: Some(pair("/p/a", "1", lease)) }
        );
        assert_eq!(kv.get("/p/a").await.unwrap(), Some(pair("/p/a", "1", lease)));
        assert_eq!(kv.get("/p/c").await.unwrap(), None);
        assert!(!dir.path().join("p/c").exists());

        // LeaseIs.
        let wrong = Txn::default().when(Cond::LeaseIs("/p/a".into(), lease + 1)).delete("/p/a".into());
        assert_eq!(
            kv.txn(wrong).await.unwrap(),
            TxnOutcome::Failed {
                cond: Cond::LeaseIs("/p/a".into(), lease + 1),
                current: Some(pair("/p/a", "1", lease))
            }
        );
        let absent = Txn::default().when(Cond::LeaseIs("/p/zz".into(), lease));
        assert_eq!(
            kv.txn(absent).await.unwrap(),
            TxnOutcome::Failed { cond: Cond::LeaseIs("/p/zz".into(), lease), current: None }
        );
        let right = Txn::default().when(Cond::LeaseIs("/p/a".into(), lease)).put("/p/a".into(), "4".into(), lease);
        assert_eq!(kv.txn(right).await.unwrap(), TxnOutcome::Applied);
        assert_eq!(kv.get("/p/a").await.unwrap(), Some(pair("/p/a", "4", lease)));

        // ValueIs.
        let wrong = Txn::default().when(Cond::ValueIs("/p/a".into(), b"1".to_vec())).delete("/p/a".into());
        assert!(matches!(kv.txn(wrong).await.unwrap(), TxnOutcome::Failed { .. }));
        assert!(kv.get("/p/a").await.unwrap().is_some());
        let right = Txn::default().when(Cond::ValueIs("/p/a".into(), b"4".to_vec())).delete("/p/a".into());
        assert_eq!(kv.txn(right).await.unwrap(), TxnOutcome::Applied);
        assert_eq!(kv.get("/p/a").await.unwrap(), None);
        assert!(!dir.path().join("p").exists(), "the emptied directory is removed");

        // Several puts (and a delete of an absent key) apply together.
        let many = Txn::default()
            .when(Cond::Absent("/p/x/1".into()))
            .put("/p/x/1".into(), "a".into(), NO_LEASE)
            .put("/p/y/deep/2".into(), "b".into(), lease)
            .put("/p/3".into(), "c".into(), NO_LEASE)
            .delete("/p/never".into());
        assert_eq!(kv.txn(many).await.unwrap(), TxnOutcome::Applied);
        assert_eq!(
            kv.list("/p/").await.unwrap(),
            vec![pair("/p/3", "c", NO_LEASE), pair("/p/x/1", "a", NO_LEASE), pair("/p/y/deep/2", "b", lease)]
        );
        assert_eq!(kv.list("/p/x").await.unwrap(), vec![pair("/p/x/1", "a", NO_LEASE)]);

        // A put with a lease that does not exist fails and changes nothing.
        match kv.txn(put("/p/q", "v", 12345)).await {
            Err(StoreError::LeaseNotFound { lease: 12345 }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(kv.get("/p/q").await.unwrap(), None);

        // A key cannot also be a directory: refused, nothing changed.
        let clash =
            Txn::default().put("/p/z".into(), "1".into(), NO_LEASE).put("/p/3/sub".into(), "2".into(), NO_LEASE);
        assert!(matches!(kv.txn(clash).await, Err(StoreError::Io { .. })));
        assert_eq!(kv.get("/p/z").await.unwrap(), None);
        assert_eq!(kv.get("/p/3").await.unwrap(), Some(pair("/p/3", "c", NO_LEASE)));
    }

    #[tokio::test]
    async fn racing_absent_txns_apply_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirKv::open(dir.path()).await.unwrap();
        let b = DirKv::open(dir.path()).await.unwrap();
        for round in 0..20 {
            let key = format!("/claims/ip/{round}");
            let attempt = |kv: DirKv, who: &'static str| {
                let key = key.clone();
                tokio::spawn(async move {
                    kv.txn(Txn::default().when(Cond::Absent(key.clone())).put(key, who.into(), NO_LEASE)).await.unwrap()
                })
            };
            let (ra, rb) = (attempt(a.clone(), "a"), attempt(b.clone(), "b"));
            let (ra, rb) = (ra.await.unwrap(), rb.await.unwrap());
            let applied = [&ra, &rb].iter().filter(|o| ***o == TxnOutcome::Applied).count();
            assert_eq!(applied, 1, "round {round}: {ra:?} {rb:?}");
            let winner = if ra == TxnOutcome::Applied { "a" } else { "b" };
            let loser = if ra == TxnOutcome::Applied { rb } else { ra };
            assert_eq!(
                loser,
                TxnOutcome::Failed { cond: Cond::Absent(key.clone()), current: Some(pair(&key, winner, NO_LEASE)) }
            );
        }
    }

    #[tokio::test]
    async fn two_stores_see_each_other_through_watch() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirKv::open(dir.path()).await.unwrap();
        let b = DirKv::open(dir.path()).await.unwrap();
        a.txn(put("/o/nodes/h1", "one", NO_LEASE)).await.unwrap();
        let mut rx = b.watch("/o/".into(), "/o0".into());
        assert_eq!(snapshot(&mut rx).await, vec![pair("/o/nodes/h1", "one", NO_LEASE)]);
        a.txn(put("/o/nodes/h2", "two", NO_LEASE)).await.unwrap();
        assert_eq!(next(&mut rx, SECOND).await, WatchEvent::Put(pair("/o/nodes/h2", "two", NO_LEASE)));
        // The same value again: no event; a new one: Put.
        a.txn(put("/o/nodes/h2", "two", NO_LEASE)).await.unwrap();
        a.txn(put("/o/nodes/h2", "three", NO_LEASE)).await.unwrap();
        assert_eq!(next(&mut rx, SECOND).await, WatchEvent::Put(pair("/o/nodes/h2", "three", NO_LEASE)));
        a.txn(Txn::default().delete("/o/nodes/h1".into())).await.unwrap();
        assert_eq!(next(&mut rx, SECOND).await, WatchEvent::Delete("/o/nodes/h1".into()));
        // Deleting an absent key: fine, and nothing to report.
        a.txn(Txn::default().delete("/o/nodes/h1".into())).await.unwrap();
        quiet(&mut rx, Duration::from_millis(300)).await;
    }

    #[tokio::test]
    async fn watch_follows_new_directories_and_only_its_range() {
        let (dir, kv) = store().await;
        let mut rx = kv.watch("/p/b".into(), "/p/d".into());
        assert_eq!(snapshot(&mut rx).await, vec![]);
        // Outside the range, before and after it, and a prefix-sibling.
        kv.txn(put("/p/a/x", "no", NO_LEASE)).await.unwrap();
        kv.txn(put("/p/d/x", "no", NO_LEASE)).await.unwrap();
        kv.txn(put("/q/c", "no", NO_LEASE)).await.unwrap();
        // Inside, in directories created now (several levels at once).
        kv.txn(put("/p/c/endpoints/43/10.0.0.1", "yes", NO_LEASE)).await.unwrap();
        assert_eq!(next(&mut rx, SECOND).await, WatchEvent::Put(pair("/p/c/endpoints/43/10.0.0.1", "yes", NO_LEASE)));
        kv.txn(put("/p/b", "edge", NO_LEASE)).await.unwrap();
        assert_eq!(next(&mut rx, SECOND).await, WatchEvent::Put(pair("/p/b", "edge", NO_LEASE)));
        // A directory made by hand, with a file written into it right away.
        fs::create_dir_all(dir.path().join("p/c/endpoints/44")).unwrap();
        fs::write(dir.path().join("p/c/endpoints/44/10.0.0.2"), "lease 0\nhand").unwrap();
        assert_eq!(next(&mut rx, SECOND).await, WatchEvent::Put(pair("/p/c/endpoints/44/10.0.0.2", "hand", NO_LEASE)));
        // Temporary and hidden files never show up, in list or watch.
        fs::write(dir.path().join("p/c/endpoints/44/.10.0.0.3.1.2.tmp"), "lease 0\ntmp").unwrap();
        fs::write(dir.path().join("p/c/.hidden"), "lease 0\nhidden").unwrap();
        // The directory's last key goes: Delete, and the directory is removed.
        kv.txn(Txn::default().delete("/p/c/endpoints/43/10.0.0.1".into())).await.unwrap();
        assert_eq!(next(&mut rx, SECOND).await, WatchEvent::Delete("/p/c/endpoints/43/10.0.0.1".into()));
        assert!(!dir.path().join("p/c/endpoints/43").exists());
        // Recreated: followed again.
        kv.txn(put("/p/c/endpoints/43/10.0.0.9", "again", NO_LEASE)).await.unwrap();
        assert_eq!(next(&mut rx, SECOND).await, WatchEvent::Put(pair("/p/c/endpoints/43/10.0.0.9", "again", NO_LEASE)));
        quiet(&mut rx, Duration::from_millis(300)).await;
        let listed: Vec<String> = kv.list("/").await.unwrap().into_iter().map(|kv| kv.key).collect();
        assert_eq!(
            listed,
            ["/p/a/x", "/p/b", "/p/c/endpoints/43/10.0.0.9", "/p/c/endpoints/44/10.0.0.2", "/p/d/x", "/q/c"]
        );
        // A relist (new watch) sees the same, without the temporary files.
        let mut again = kv.watch("/p/b".into(), "/p/d".into());
        let keys: Vec<String> = snapshot(&mut again).await.into_iter().map(|kv| kv.key).collect();
        assert_eq!(keys, ["/p/b", "/p/c/endpoints/43/10.0.0.9", "/p/c/endpoints/44/10.0.0.2"]);
    }

    #[tokio::test]
    async fn leased_keys_go_when_keep_alives_stop() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirKv::open(dir.path()).await.unwrap();
        let b = DirKv::open(dir.path()).await.unwrap();
        let ttl = SECOND;
        let kept = a.grant(ttl).await.unwrap();
        let dropped = a.grant(ttl).await.unwrap();
        a.txn(put("/o/kept", "k", kept).put("/o/dropped".into(), "d".into(), dropped)).await.unwrap();
        let mut rx = b.watch("/o/".into(), "/o0".into());
        assert_eq!(snapshot(&mut rx).await, vec![pair("/o/dropped", "d", dropped), pair("/o/kept", "k", kept)]);
        let keeper = {
            let a = a.clone();
            tokio::spawn(async move {
                loop {
                    assert!(a.keep_alive(kept).await.unwrap());
                    tokio::time::sleep(ttl / 4).await;
                }
            })
        };
        let start = tokio::time::Instant::now();
        assert_eq!(next(&mut rx, ttl + SECOND).await, WatchEvent::Delete("/o/dropped".into()));
        assert!(start.elapsed() >= ttl - Duration::from_millis(300), "{:?}", start.elapsed());
        // Collected: the file (and the lease's) go soon after.
        let file = dir.path().join("o/dropped");
        for _ in 0..50 {
            if !file.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!file.exists());
        assert!(!lease_path(dir.path(), dropped).exists());
        // The kept lease's key stays through several TTLs.
        quiet(&mut rx, ttl * 2).await;
        assert_eq!(a.get("/o/kept").await.unwrap(), Some(pair("/o/kept", "k", kept)));
        assert_eq!(a.get("/o/dropped").await.unwrap(), None);
        keeper.abort();
    }

    #[tokio::test]
    async fn keep_alive_of_an_expired_lease_is_false_and_collects() {
        let (dir, kv) = store().await;
        let lease = kv.grant(SECOND).await.unwrap();
        assert!(kv.keep_alive(lease).await.unwrap());
        kv.txn(put("/o/a", "1", lease).put("/o/b/c".into(), "2".into(), lease)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // Expired: absent for readers and conditions even before anything collects it.
        assert_eq!(kv.get("/o/a").await.unwrap(), None);
        assert_eq!(kv.list("/o/").await.unwrap(), vec![]);
        assert!(!kv.keep_alive(lease).await.unwrap());
        assert!(!dir.path().join("o").exists(), "keys and directories collected");
        assert!(!lease_path(dir.path(), lease).exists());
        assert!(!kv.keep_alive(lease).await.unwrap());
        // A put on the dead lease is refused.
        assert!(matches!(kv.txn(put("/o/a", "1", lease)).await, Err(StoreError::LeaseNotFound { .. })));
    }

    #[tokio::test]
    async fn expired_key_counts_as_absent_in_a_txn_and_is_collected() {
        let (dir, kv) = store().await;
        let lease = kv.grant(Duration::from_millis(300)).await.unwrap();
        kv.txn(put("/o/a", "old", lease)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(dir.path().join("o/a").exists());
        let txn = Txn::default().when(Cond::Absent("/o/a".into())).put("/o/a".into(), "new".into(), NO_LEASE);
        assert_eq!(kv.txn(txn).await.unwrap(), TxnOutcome::Applied);
        assert_eq!(kv.get("/o/a").await.unwrap(), Some(pair("/o/a", "new", NO_LEASE)));
    }

    #[tokio::test]
    async fn expired_keys_are_never_reported_and_the_watch_collects_them() {
        let (dir, kv) = store().await;
        let lease = kv.grant(Duration::from_millis(300)).await.unwrap();
        kv.txn(put("/o/a", "1", lease).put("/o/b".into(), "2".into(), NO_LEASE)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut rx = kv.watch("/o/".into(), "/o0".into());
        assert_eq!(snapshot(&mut rx).await, vec![pair("/o/b", "2", NO_LEASE)]);
        let (file, lease_file) = (dir.path().join("o/a"), lease_path(dir.path(), lease));
        for _ in 0..50 {
            if !file.exists() && !lease_file.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!file.exists() && !lease_file.exists());
        quiet(&mut rx, Duration::from_millis(200)).await;
    }

    #[tokio::test]
    async fn revoke_deletes_at_once() {
        let (dir, kv) = store().await;
        let lease = kv.grant(Duration::from_secs(60)).await.unwrap();
        kv.txn(put("/o/a", "1", lease).put("/o/b".into(), "2".into(), NO_LEASE)).await.unwrap();
        let mut rx = kv.watch("/o/".into(), "/o0".into());
        assert_eq!(snapshot(&mut rx).await.len(), 2);
        kv.revoke(lease).await.unwrap();
        assert_eq!(kv.get("/o/a").await.unwrap(), None);
        assert!(!dir.path().join("o/a").exists());
        assert!(!lease_path(dir.path(), lease).exists());
        assert_eq!(kv.get("/o/b").await.unwrap(), Some(pair("/o/b", "2", NO_LEASE)));
        assert_eq!(next(&mut rx, SECOND).await, WatchEvent::Delete("/o/a".into()));
        quiet(&mut rx, Duration::from_millis(200)).await;
        kv.revoke(lease).await.unwrap();
        assert!(!kv.keep_alive(lease).await.unwrap());
    }

    #[tokio::test]
    async fn overflow_relists() {
        let (dir, kv) = store().await;
        let max: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events").unwrap().trim().parse().unwrap();
        if max > 100_000 {
            eprintln!("max_queued_events is {max}: skipping");
            return;
        }
        kv.txn(put("/o/0", "0", NO_LEASE)).await.unwrap();
        let mut rx = kv.watch("/o/".into(), "/o0".into());
        assert_eq!(snapshot(&mut rx).await.len(), 1);
        // Written without yielding: the watch cannot drain its queue (2 events a file).
        let n = max / 2 + 100;
        for i in 1..n {
            fs::write(dir.path().join(format!("o/{i}")), format!("lease 0\n{i}")).unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await.unwrap().unwrap() {
                WatchEvent::Snapshot(kvs) => {
                    assert_eq!(kvs.len(), n);
                    break;
                }
                WatchEvent::Put(_) => {}
                other => panic!("{other:?}"),
            }
        }
        kv.txn(put("/o/after", "1", NO_LEASE)).await.unwrap();
        loop {
            match next(&mut rx, SECOND).await {
                WatchEvent::Put(kv) if kv.key == "/o/after" => break,
                WatchEvent::Put(_) => {}
                other => panic!("{other:?}"),
            }
        }
    }

    /// This process's inotify descriptors.
    fn inotify_fds() -> HashSet<String> {
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                let target = fs::read_link(e.path()).ok()?;
                target.to_string_lossy().contains("inotify").then(|| e.file_name().to_string_lossy().into_owned())
            })
            .collect()
    }

    #[tokio::test]
    async fn watch_ends_when_the_receiver_is_dropped() {
        let (_dir, kv) = store().await;
        let before = inotify_fds();
        let mut rx = kv.watch("/".into(), "\0".into());
        assert_eq!(snapshot(&mut rx).await, vec![]);
        let ours: HashSet<String> = inotify_fds().difference(&before).cloned().collect();
        assert_eq!(ours.len(), 1, "one inotify instance per watch");
        drop(rx);
        // The task notices at once, idle as it is, and closes its inotify instance.
        let mut closed = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if inotify_fds().is_disjoint(&ours) {
                closed = true;
                break;
            }
        }
        assert!(closed, "the watch task still runs");
        // Writes go on without a watcher.
        kv.txn(put("/k/1", "v", NO_LEASE)).await.unwrap();
        assert_eq!(kv.list("/k/").await.unwrap().len(), 1);
    }

    #[test]
    fn ranges() {
        let r = Range::new("/p/b", "/p/d");
        assert!(r.contains("/p/b") && r.contains("/p/c/x") && !r.contains("/p/d") && !r.contains("/p/a"));
        assert!(r.holds_dir("") && r.holds_dir("/p") && r.holds_dir("/p/c") && r.holds_dir("/p/b"));
        assert!(!r.holds_dir("/p/d") && !r.holds_dir("/p/a") && !r.holds_dir("/q"));
        let p = Range::prefix("/o/");
        assert!(p.contains("/o/x") && !p.contains("/o") && !p.contains("/o0"));
        assert_eq!(Range::prefix("").end, None);
        let one = Range::new("/a", "");
        assert!(one.contains("/a") && !one.contains("/a/b") && !one.contains("/b"));
        assert!(Range::new("/a", "\0").contains("/zzz"));
        let set = |dirs: &[&str]| dirs.iter().map(|d| d.to_string()).collect::<BTreeSet<String>>();
        assert_eq!(outermost(set(&["/a", "/a-c", "/a/b", "/a/b/c", "/b"])), ["/a", "/a-c", "/b"]);
        assert_eq!(outermost(set(&["/a/b", "", "/c"])), [""]);
        let subtrees: HashSet<&str> = ["/a", "/c/d"].into();
        assert!(under_any("/a", &subtrees) && under_any("/a/x/y", &subtrees) && under_any("/c/d/e", &subtrees));
        assert!(!under_any("/ab", &subtrees) && !under_any("/c", &subtrees) && !under_any("", &subtrees));
    }

    #[tokio::test]
    async fn a_large_directory_is_read_whole_by_several_threads() {
        let (dir, kv) = store().await;
        let d = dir.path().join("o/endpoints/42");
        fs::create_dir_all(&d).unwrap();
        let n = PARALLEL_READ_MIN + 1_000;
        for i in 0..n {
            fs::write(d.join(format!("k{i:05}")), encode_record(NO_LEASE, format!("v{i}").as_bytes())).unwrap();
        }
        fs::write(d.join("bad"), b"no header").unwrap();
        let listed = kv.list("/o/").await.unwrap();
        assert_eq!(listed.len(), n, "every key once, the corrupt file left out");
        for (i, kv) in listed.iter().enumerate() {
            assert_eq!((kv.key.as_str(), kv.value.as_slice()), (format!("/o/endpoints/42/k{i:05}").as_str(), format!("v{i}").as_bytes()));
        }
    }
