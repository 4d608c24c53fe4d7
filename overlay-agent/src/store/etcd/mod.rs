//! The `etcd` backend of [`Kv`]: etcd v3 through the `etcd-client` crate (tonic gRPC),
//! one member at a time with failover to the next ([`members`]): a member going away
//! costs a retried read (at once, on the next member) or a transaction the caller
//! retries, and a watch resumes on the next member.
//!
//! Following a range is list-then-watch: a paginated list at one revision, then a watch
//! from the next revision, so nothing between the two is missed and nothing polls. A
//! broken watch resumes from the last revision seen; a compacted one (or a watch that
//! cannot resume) relists and sends a fresh [`WatchEvent::Snapshot`], from which the
//! receiver computes the adds and deletes it missed. Every request and watch feeds the
//! connection state that `status` shows; each change of state is logged once.

mod members;

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, PutOptions,
    TlsOptions, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::{
    StoreError,
    backoff::Backoff,
    kv::{Cond, Connection, KeyValue, Kv, LeaseId, NO_LEASE, Txn, TxnOutcome, WatchEvent},
};

/// Keys per page when listing: large pages, because etcd 3.4 walks the rest of the
/// range in its index for every page (measured here, 250,000 endpoint records:
/// 6.7 s with pages of 1,000; `cargo xtask scale` on a busy 2-CPU machine: 1.65 s with
/// 20,000, 1.14 s with 50,000, 1.03 s with 125,000, 0.97 s in one page).
const PAGE: i64 = 50_000;
/// A page of 50,000 records is about 8 MB; tonic's default limit is 4 MB.
const MAX_MESSAGE: usize = 64 << 20;
/// Per-request deadline: long enough for a leader election (about 1 s with etcd's
/// defaults), short enough that a dead member is given up on quickly.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 keep-alive: notices a member that vanished without closing the connection.
const KEEPALIVE: Duration = Duration::from_secs(2);

/// How to reach etcd (the `[store]` section with `backend = "etcd"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub tls: Option<EtcdTls>,
}

/// Client-certificate TLS: the CA that signed the servers' certificates, and this
/// client's certificate and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Clone)]
pub struct EtcdKv {
    members: members::Members,
    endpoints: String,
    conn: Arc<watch::Sender<Connection>>,
}

fn read_pem(path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::Io { path: path.to_owned(), source })
}

impl EtcdKv {
    /// Sets up the client. Connections are made lazily: an unreachable etcd is not an
    /// error here (the agent starts and keeps forwarding with what it knows); it shows as
    /// `disconnected` until a request gets through.
    pub async fn connect(s: &EtcdSettings) -> Result<Self, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(KEEPALIVE, KEEPALIVE)
            .with_keep_alive_while_idle(true)
            // A member cut off from the quorum refuses requests instead of serving stale
            // reads, and cancels its watches, which then resume on another member.
            .with_require_leader(true);
        if let Some(tls) = &s.tls {
            let ca = Certificate::from_pem(read_pem(&tls.ca_file)?);
            let identity = Identity::from_pem(read_pem(&tls.cert_file)?, read_pem(&tls.key_file)?);
            options = options.with_tls(TlsOptions::new().ca_certificate(ca).identity(identity));
        }
        let members = members::Members::connect(&s.endpoints, &options).await?;
        let (tx, _) = watch::channel(Connection::Connecting);
        Ok(Self { members, endpoints: s.endpoints.join(","), conn: Arc::new(tx) })
    }

    /// Runs a request that is safe to repeat (a read, a lease grant, renewal or
    /// revocation) on the member in use, and on the next ones while it fails in a way
    /// that another member may not (down, unreachable, without a leader).
    async fn on_any<T, F, Fut>(&self, op: &'static str, mut request: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut tries = self.members.len();
        loop {
            let (i, client) = self.members.pick();
            tries -= 1;
            match request(client).await {
                Err(source) if tries > 0 => {
                    let e = StoreError::Etcd { op, source };
                    if !e.is_transient() {
                        return Err(e);
                    }
                    self.members.failed(i, &e);
                }
                res => return self.track(i, op, res),
            }
        }
    }

    /// Runs a request once, on the member in use: a transaction, since repeating one
    /// whose answer was lost could apply it twice (its caller retries, knowing what
    /// it wrote).
    async fn on_pinned<T, F, Fut>(&self, op: &'static str, request: F) -> Result<T, StoreError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let (i, client) = self.members.pick();
        let res = request(client).await;
        self.track(i, op, res)
    }

    /// Records how a request to member `i` went: a failure hands over to the next
    /// member; each change of connection state is logged once.
    fn track<T>(&self, i: usize, op: &'static str, res: Result<T, etcd_client::Error>) -> Result<T, StoreError> {
        match res {
            Ok(v) => {
                self.conn.send_if_modified(|c| {
                    if *c != Connection::Connected {
                        info!(endpoints = %self.endpoints, "store: connected to etcd");
                        *c = Connection::Connected;
                        true
                    } else {
                        false
                    }
                });
                Ok(v)
            }
            Err(source) => {
                let e = StoreError::Etcd { op, source };
                self.members.failed(i, &e);
                if e.is_transient() {
                    self.disconnected(&e);
                }
                Err(e)
            }
        }
    }

    fn disconnected(&self, e: &StoreError) {
        self.conn.send_if_modified(|c| {
            if !matches!(c, Connection::Disconnected { .. }) {
                warn!(endpoints = %self.endpoints, error = %e, "store: etcd unreachable; forwarding goes on with the last known state, retrying");
                *c = Connection::Disconnected { since: SystemTime::now() };
                true
            } else {
                false
            }
        });
    }

    /// A paginated list of `[start, end)` at one revision; returns that revision.
    async fn list_range(&self, start: &str, end: &str) -> Result<(i64, Vec<KeyValue>), StoreError> {
        self.on_any("listing", |client| list_pages(client, start, end)).await
    }
}

/// The pages of one list, all from one member.
async fn list_pages(client: Client, start: &str, end: &str) -> Result<(i64, Vec<KeyValue>), etcd_client::Error> {
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let mut from = start.as_bytes().to_vec();
    let mut revision = 0;
    let mut out = Vec::new();
    loop {
        let mut opts = GetOptions::new().with_range(end).with_limit(PAGE);
        if revision != 0 {
            opts = opts.with_revision(revision);
        }
        let mut resp = kv.get(from.clone(), Some(opts)).await?;
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        let more = resp.more();
        let kvs = resp.take_kvs();
        if let Some(last) = kvs.last() {
            from = last.key().to_vec();
            from.push(0);
        }
        out.extend(kvs.into_iter().filter_map(convert));
        if !more {
            return Ok((revision, out));
        }
    }
}

fn convert(kv: etcd_client::KeyValue) -> Option<KeyValue> {
    let lease = kv.lease();
    let (key, value) = kv.into_key_value();
    match String::from_utf8(key) {
        Ok(key) => Some(KeyValue { key, value, lease }),
        Err(e) => {
            debug!(error = %e, "ignoring a key that is not UTF-8");
            None
        }
    }
}

fn compare(cond: &Cond) -> Compare {
    match cond {
        Cond::Absent(k) => Compare::create_revision(k.as_str(), CompareOp::Equal, 0),
        Cond::LeaseIs(k, lease) => Compare::lease(k.as_str(), CompareOp::Equal, *lease),
        Cond::ValueIs(k, v) => Compare::value(k.as_str(), CompareOp::Equal, v.clone()),
    }
}

/// Whether `cond` holds for `current` (evaluated here only to say which one failed).
fn holds(cond: &Cond, current: Option<&KeyValue>) -> bool {
    match (cond, current) {
        (Cond::Absent(_), cur) => cur.is_none(),
        (Cond::LeaseIs(_, lease), Some(kv)) => kv.lease == *lease,
        (Cond::ValueIs(_, v), Some(kv)) => kv.value == *v,
        (_, None) => false,
    }
}

impl Kv for EtcdKv {
    fn describe(&self) -> String {
        format!("etcd {}", self.endpoints)
    }

    fn member(&self) -> Option<String> {
        Some(self.members.current().to_owned())
    }

    fn watch_member(&self) -> Option<String> {
        self.members.watched().map(str::to_owned)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let compares: Vec<_> = txn.conds.iter().map(compare).collect();
        let mut ops: Vec<_> = txn
            .puts
            .iter()
            .map(|(k, v, lease)| {
                let opts = (*lease != NO_LEASE).then(|| PutOptions::new().with_lease(*lease));
                TxnOp::put(k.as_str(), v.clone(), opts)
            })
            .collect();
        ops.extend(txn.deletes.iter().map(|k| TxnOp::delete(k.as_str(), None)));
        // When a condition fails, read every compared key to say which and why.
        let reads: Vec<_> = txn.conds.iter().map(|c| TxnOp::get(c.key(), None)).collect();
        let request = etcd_client::Txn::new().when(compares).and_then(ops).or_else(reads);
        let resp = self.on_pinned("transaction", |c| async move { c.kv_client().txn(request).await }).await?;
        if resp.succeeded() {
            return Ok(TxnOutcome::Applied);
        }
        let currents = resp.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().cloned().and_then(convert),
            _ => None,
        });
        for (cond, current) in txn.conds.iter().zip(currents) {
            if !holds(cond, current.as_ref()) {
                return Ok(TxnOutcome::Failed { cond: cond.clone(), current });
            }
        }
        // Every condition holds now: the key changed between the two reads. The caller
        // sees a conflict on the first key and may retry.
        let cond = txn.conds.first().cloned().unwrap_or(Cond::Absent(String::new()));
        Ok(TxnOutcome::Failed { cond, current: None })
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut resp = self.on_any("reading", |c| async move { c.kv_client().get(key, None).await }).await?;
        Ok(resp.take_kvs().into_iter().next().and_then(convert))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let end = prefix_end(prefix);
        Ok(self.list_range(prefix, &end).await?.1)
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let secs = ttl.as_secs().max(1) as i64;
        let resp = self.on_any("granting a lease", |c| async move { c.lease_client().grant(secs, None).await }).await?;
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<bool, StoreError> {
        self.on_any("renewing the lease", |c| async move {
            // Opening the keep-alive stream sends one renewal and waits for its answer
            // (bounded here: a stream on a dead connection would wait forever).
            let renewed = tokio::time::timeout(REQUEST_TIMEOUT, c.lease_client().keep_alive(lease))
                .await
                .unwrap_or(Err(etcd_client::Error::IoError(std::io::ErrorKind::TimedOut.into())));
            match renewed {
                Ok(_keeper) => Ok(true),
                // etcd answers TTL 0 for a lease it no longer has; the client calls that
                // "lease not found". The store answered: it is reachable.
                Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("lease not found") => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.on_any("revoking the lease", |c| async move {
            match c.lease_client().revoke(lease).await {
                Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("lease not found") => Ok(()),
                res => res.map(drop),
            }
        })
        .await
    }

    fn watch(&self, start: String, end: String) -> mpsc::Receiver<WatchEvent> {
        let (tx, rx) = mpsc::channel(1024);
        let this = self.clone();
        tokio::spawn(async move { this.follow(start, end, tx).await });
        rx
    }

    fn connection(&self) -> watch::Receiver<Connection> {
        self.conn.subscribe()
    }
}

/// The end of the range of keys starting with `prefix` (etcd's `prefix + 1`).
pub fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    "\0".into()
}

/// Why a watch stopped.
enum WatchEnd {
    /// The receiver is gone: stop.
    Closed,
    /// The revision to resume from was compacted away: relist.
    Compacted,
    /// The stream broke: resume from the last revision seen.
    Broken(StoreError),
}

impl EtcdKv {
    async fn follow(self, start: String, end: String, tx: mpsc::Sender<WatchEvent>) {
        let mut backoff = Backoff::new();
        'relist: loop {
            let listing = std::time::Instant::now();
            let (revision, kvs) = match self.list_range(&start, &end).await {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "listing the store; retrying");
                    backoff.wait().await;
                    continue;
                }
            };
            debug!(revision, keys = kvs.len(), ms = listing.elapsed().as_millis() as u64, "store listed");
            if tx.send(WatchEvent::Snapshot(kvs)).await.is_err() {
                return;
            }
            let mut next = revision + 1;
            loop {
                match self.watch_from(&start, &end, &mut next, &tx, &mut backoff).await {
                    WatchEnd::Closed => return,
                    WatchEnd::Compacted => {
                        info!(revision = next, "store: the watch fell behind a compaction; relisting");
                        continue 'relist;
                    }
                    WatchEnd::Broken(e) => {
                        debug!(error = %e, revision = next, "store: watch broken; resuming");
                        backoff.wait().await;
                    }
                }
            }
        }
    }

    async fn watch_from(
        &self,
        start: &str,
        end: &str,
        next: &mut i64,
        tx: &mpsc::Sender<WatchEvent>,
        backoff: &mut Backoff,
    ) -> WatchEnd {
        let opts = WatchOptions::new().with_range(end).with_start_revision(*next).with_progress_notify();
        let (member, client) = self.members.pick();
        let mut client = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
        let mut stream = match self.track(member, "watching", client.watch(start, Some(opts)).await) {
            Ok(s) => s,
            Err(e) => return WatchEnd::Broken(e),
        };
        self.members.watching(member);
        loop {
            let resp = match self.track(member, "watching", stream.message().await) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    // The member closed the stream (it is stopping): resume elsewhere.
                    let e = StoreError::Unanswered { op: "watching" };
                    self.members.failed(member, &e);
                    return WatchEnd::Broken(e);
                }
                Err(e) => return WatchEnd::Broken(e),
            };
            if resp.compact_revision() > 0 {
                return WatchEnd::Compacted;
            }
            if resp.canceled() {
                // With `require_leader`, a member that lost its leader cancels its watches.
                // (No backoff reset: a member that cancels every watch it accepts is
                // retried at the growing interval, not every 100 ms.)
                let e = StoreError::WatchCanceled { reason: resp.cancel_reason().to_owned() };
                self.members.failed(member, &e);
                return WatchEnd::Broken(e);
            }
            backoff.reset();
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                *next = kv.mod_revision() + 1;
                let change = match event.event_type() {
                    EventType::Put => convert(kv.clone()).map(WatchEvent::Put),
                    EventType::Delete => String::from_utf8(kv.key().to_vec()).ok().map(WatchEvent::Delete),
                };
                if let Some(change) = change
                    && tx.send(change).await.is_err()
                {
                    return WatchEnd::Closed;
                }
            }
            // A progress notification: every event in range up to this revision has been
            // sent. (Not the "created" response: its header is the store's revision, and
            // the events since `next` are still to come.)
            if resp.events().is_empty()
                && !resp.created()
                && let Some(h) = resp.header()
            {
                *next = (*next).max(h.revision() + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("/overlay/v1/"), "/overlay/v10");
        assert_eq!(prefix_end("a"), "b");
    }

    #[test]
    fn which_condition_failed() {
        let kv = KeyValue { key: "k".into(), value: b"v".to_vec(), lease: 7 };
        assert!(holds(&Cond::Absent("k".into()), None));
        assert!(!holds(&Cond::Absent("k".into()), Some(&kv)));
        assert!(holds(&Cond::LeaseIs("k".into(), 7), Some(&kv)));
        assert!(!holds(&Cond::LeaseIs("k".into(), 8), Some(&kv)));
        assert!(!holds(&Cond::LeaseIs("k".into(), 7), None));
        assert!(holds(&Cond::ValueIs("k".into(), b"v".to_vec()), Some(&kv)));
        assert!(!holds(&Cond::ValueIs("k".into(), b"w".to_vec()), Some(&kv)));
    }
}
