//! The embedded `dir` backend: one JSON file per node (`nodes/`) and per static
//! endpoint (`statics/`) in a directory shared by all agents on a machine (the lab, CI). Writers replace their file atomically
//! (write a temporary file, then rename), so readers never see half a record.
//! Readers poll the directory: simple, works across namespaces and needs no daemon.
//! A store's own writes show in its snapshot at once (read your writes), and a poll
//! that was reading the directory while one of them landed is thrown away: it may have
//! read the directory from before the write and would undo it for a poll interval.

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;
use tracing::{debug, warn};

use serde::{Serialize, de::DeserializeOwned};

use super::{Snapshot, Store, StoreError, StoreView};
use crate::model::{NodeRecord, StaticEndpoint};

/// How often peers' files are re-read. Convergence is bounded by this plus the
/// agent's reconcile time, well under the 2 s the overlay promises.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

pub struct DirStore {
    nodes_dir: PathBuf,
    statics_dir: PathBuf,
    tx: Arc<watch::Sender<Snapshot>>,
    /// Bumped (under the channel's lock) by every write of this store.
    writes: Arc<AtomicU64>,
    poller: tokio::task::JoinHandle<()>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

impl DirStore {
    /// Opens (creating if needed) the store at `path` and starts watching it.
    /// Must be called within a tokio runtime.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let nodes_dir = path.join("nodes");
        let statics_dir = path.join("statics");
        for dir in [&nodes_dir, &statics_dir] {
            tokio::fs::create_dir_all(dir).await.map_err(io_err(dir))?;
        }
        let first = read_view(&nodes_dir, &statics_dir).await?;
        let tx = Arc::new(watch::Sender::new(Arc::new(first)));
        let writes = Arc::new(AtomicU64::new(0));
        let (dir, sdir) = (nodes_dir.clone(), statics_dir.clone());
        let (poll_tx, poll_writes) = (tx.clone(), writes.clone());
        let poller = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(POLL_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let writes_before = poll_writes.load(Ordering::SeqCst);
                match read_view(&dir, &sdir).await {
                    Ok(snap) => {
                        offer(&poll_tx, &poll_writes, writes_before, snap);
                    }
                    Err(e) => warn!(error = %e, "cannot read the store; keeping the last snapshot"),
                }
            }
        });
        Ok(Self { nodes_dir, statics_dir, tx, writes, poller })
    }
}

/// Offers a view the poller read, having seen `writes_before` writes of this store when
/// it started reading. Taken (and `true` returned) unless a write landed since, as the
/// view may predate it (the next poll reads it), or nothing changed.
fn offer(tx: &watch::Sender<Snapshot>, writes: &AtomicU64, writes_before: u64, view: StoreView) -> bool {
    tx.send_if_modified(|cur| {
        if writes.load(Ordering::SeqCst) != writes_before || **cur == view {
            false
        } else {
            *cur = Arc::new(view);
            true
        }
    })
}

async fn read_view(nodes: &Path, statics: &Path) -> Result<StoreView, StoreError> {
    let nodes = read_all::<NodeRecord>(nodes).await?.into_iter().map(|r| (r.node.clone(), r)).collect();
    let statics = read_all::<StaticEndpoint>(statics).await?.into_iter().map(|s| (s.key(), s)).collect();
    Ok(StoreView { nodes, statics })
}

/// Atomically replaces `dir/<name>.json` with `value`.
async fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| StoreError::Encode { node: name.into(), source })?;
    let path = dir.join(format!("{name}.json"));
    let tmp = dir.join(format!(".{name}.json.tmp"));
    tokio::fs::write(&tmp, bytes).await.map_err(io_err(&tmp))?;
    tokio::fs::rename(&tmp, &path).await.map_err(io_err(&path))
}

async fn remove_json(dir: &Path, name: &str) -> Result<(), StoreError> {
    let path = dir.join(format!("{name}.json"));
    match tokio::fs::remove_file(&path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Io { path, source }),
    }
}

/// Reads one node's record without opening (watching) the store; `None` if absent
/// or unreadable. For `map dump` in kernel mode.
pub fn read_node(path: &Path, node: &str) -> Option<NodeRecord> {
    let bytes = std::fs::read(path.join("nodes").join(format!("{node}.json"))).ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl DirStore {
    /// Applies one of this store's own writes, which has reached the directory, to the
    /// snapshot.
    fn apply(&self, change: impl FnOnce(&mut StoreView)) {
        self.tx.send_if_modified(|cur| {
            self.writes.fetch_add(1, Ordering::SeqCst);
            let mut view = (**cur).clone();
            change(&mut view);
            if view == **cur {
                false
            } else {
                *cur = Arc::new(view);
                true
            }
        });
    }
}

impl Drop for DirStore {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

async fn read_all<T: DeserializeOwned>(dir: &Path) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    let mut entries = tokio::fs::read_dir(dir).await.map_err(io_err(dir))?;
    while let Some(entry) = entries.next_entry().await.map_err(io_err(dir))? {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue; // temporary files and strangers
        }
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            // Withdrawn between listing and reading.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        match serde_json::from_slice::<T>(&bytes) {
            Ok(rec) => out.push(rec),
            Err(e) => debug!(path = %path.display(), error = %e, "skipping an unreadable store record"),
        }
    }
    Ok(out)
}

impl Store for DirStore {
    fn describe(&self) -> String {
        format!("dir {}", self.nodes_dir.parent().unwrap_or(&self.nodes_dir).display())
    }

    async fn publish(&self, record: &NodeRecord) -> Result<(), StoreError> {
        write_json(&self.nodes_dir, &record.node, record).await?;
        self.apply(|v| {
            v.nodes.insert(record.node.clone(), record.clone());
        });
        Ok(())
    }

    async fn withdraw(&self, node: &str) -> Result<(), StoreError> {
        remove_json(&self.nodes_dir, node).await?;
        self.apply(|v| {
            v.nodes.remove(node);
        });
        Ok(())
    }

    async fn put_static(&self, endpoint: &StaticEndpoint) -> Result<(), StoreError> {
        write_json(&self.statics_dir, &endpoint.key(), endpoint).await?;
        self.apply(|v| {
            v.statics.insert(endpoint.key(), endpoint.clone());
        });
        Ok(())
    }

    async fn del_static(&self, key: &str) -> Result<(), StoreError> {
        remove_json(&self.statics_dir, key).await?;
        self.apply(|v| {
            v.statics.remove(key);
        });
        Ok(())
    }

    fn watch(&self) -> watch::Receiver<Snapshot> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{mac::MacAddr, model::EndpointRecord};

    fn record(node: &str, ip: [u8; 4]) -> NodeRecord {
        NodeRecord {
            node: node.into(),
            vtep: [198, 51, 100, 1].into(),
            endpoints: vec![EndpointRecord {
                network: "blue".into(),
                vni: 42,
                ip: ip.into(),
                mac: MacAddr::from_ipv4(ip.into()),
                udp_port: 4789,
            }],
        }
    }

    async fn wait_for(rx: &mut watch::Receiver<Snapshot>, pred: impl Fn(&Snapshot) -> bool) {
        tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                if pred(&rx.borrow_and_update()) {
                    return;
                }
                rx.changed().await.expect("store dropped");
            }
        })
        .await
        .expect("store did not converge within 3 s");
    }

    #[tokio::test]
    async fn own_writes_show_at_once_and_a_racing_poll_cannot_undo_them() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirStore::open(dir.path()).await.unwrap();
        let before_write = a.writes.load(Ordering::SeqCst);
        let stale = (**a.watch().borrow()).clone();
        a.publish(&record("a", [10, 0, 10, 1])).await.unwrap();
        assert_eq!(a.watch().borrow().nodes["a"], record("a", [10, 0, 10, 1]));
        // A poll that started reading before the write and finishes after it.
        assert!(!offer(&a.tx, &a.writes, before_write, stale.clone()));
        assert!(a.watch().borrow().nodes.contains_key("a"));
        // A poll that started after the write is taken.
        let mut other = stale;
        other.nodes.insert("b".into(), record("b", [10, 0, 10, 2]));
        assert!(offer(&a.tx, &a.writes, a.writes.load(Ordering::SeqCst), other));
        assert!(a.watch().borrow().nodes.contains_key("b"));
        a.withdraw("b").await.unwrap();
        assert!(!a.watch().borrow().nodes.contains_key("b"));
    }

    #[tokio::test]
    async fn two_stores_see_each_other_and_withdrawals() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirStore::open(dir.path()).await.unwrap();
        a.publish(&record("a", [10, 0, 10, 1])).await.unwrap();
        // A late opener learns what is already there.
        let b = DirStore::open(dir.path()).await.unwrap();
        assert_eq!(b.watch().borrow().nodes["a"], record("a", [10, 0, 10, 1]));
        b.publish(&record("b", [10, 0, 10, 2])).await.unwrap();
        let mut rx = a.watch();
        wait_for(&mut rx, |s| s.nodes.contains_key("b")).await;
        // Replacing a record is atomic and visible.
        b.publish(&record("b", [10, 0, 10, 3])).await.unwrap();
        wait_for(&mut rx, |s| s.nodes.get("b").is_some_and(|r| r.endpoints[0].ip == std::net::Ipv4Addr::new(10, 0, 10, 3))).await;
        b.withdraw("b").await.unwrap();
        b.withdraw("b").await.unwrap(); // idempotent
        wait_for(&mut rx, |s| !s.nodes.contains_key("b")).await;
        // Static endpoints live beside the node records.
        let st = crate::model::StaticEndpoint {
            network: "blue".into(),
            vni: 42,
            ip: [10, 0, 10, 9].into(),
            mac: MacAddr::from_ipv4([10, 0, 10, 9].into()),
            vtep: [203, 0, 113, 9].into(),
            udp_port: 4789,
            declared_by: "b".into(),
        };
        b.put_static(&st).await.unwrap();
        wait_for(&mut rx, |s| s.statics.get("blue_10.0.10.9") == Some(&st)).await;
        a.del_static(&st.key()).await.unwrap();
        a.del_static(&st.key()).await.unwrap(); // idempotent
        wait_for(&mut rx, |s| s.statics.is_empty()).await;
        assert!(std::fs::read_dir(dir.path().join("nodes")).unwrap().all(|e| {
            !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")
        }));
    }
}
