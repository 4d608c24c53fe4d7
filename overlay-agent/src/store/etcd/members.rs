//! Failover between etcd members: one client per configured endpoint, and the member
//! that requests go to ("pinned") until one fails, as etcd's own Go client did up to
//! 3.3.
//!
//! Why not the `etcd-client` crate's single client balanced over every endpoint: tower's
//! power-of-two-choices balancer rates each member by its requests in flight, so a
//! member that is down (its requests fail at once) looks the least loaded next to one
//! carrying a watch stream, and it kept being picked: here a write retried against a
//! stopped leader for 10 s, and a watch resumed against a stopped follower until its
//! backoff outgrew the test's bound. The crate leaves failover to its users
//! (etcdv3/etcd-client#12, #39).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use etcd_client::{Client, ConnectOptions};
use tracing::{debug, info};

use crate::store::StoreError;

struct Member {
    url: String,
    client: Client,
}

/// Every configured member's client, the index of the one in use, and that of the one
/// the watch stream runs on (it stays there while it works, even when other requests
/// moved on).
#[derive(Clone)]
pub(super) struct Members {
    members: Arc<[Member]>,
    pinned: Arc<AtomicUsize>,
    watching: Arc<AtomicUsize>,
}

/// `watching` before the first watch.
const NONE: usize = usize::MAX;

impl Members {
    /// One lazily connecting client per endpoint: nothing is reached here.
    pub(super) async fn connect(endpoints: &[String], options: &ConnectOptions) -> Result<Self, StoreError> {
        let mut members = Vec::with_capacity(endpoints.len());
        for url in endpoints {
            let client = Client::connect([url], Some(options.clone()))
                .await
                .map_err(|source| StoreError::Etcd { op: "configuring the client", source })?;
            members.push(Member { url: url.clone(), client });
        }
        if members.is_empty() {
            return Err(StoreError::Etcd {
                op: "configuring the client",
                source: etcd_client::Error::InvalidArgs("no etcd endpoints".into()),
            });
        }
        // Agents start on different members, spreading the watches over the cluster.
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let first = nanos as usize % members.len();
        Ok(Self { members: members.into(), pinned: Arc::new(AtomicUsize::new(first)), watching: Arc::new(AtomicUsize::new(NONE)) })
    }

    pub(super) fn len(&self) -> usize {
        self.members.len()
    }

    /// The member requests go to now: its index (for [`Members::failed`]) and client.
    pub(super) fn pick(&self) -> (usize, Client) {
        let i = self.pinned.load(Ordering::Relaxed);
        (i, self.members[i].client.clone())
    }

    /// The URL of the member requests go to now.
    pub(super) fn current(&self) -> &str {
        &self.members[self.pinned.load(Ordering::Relaxed)].url
    }

    /// The watch stream runs on member `i` now.
    pub(super) fn watching(&self, i: usize) {
        self.watching.store(i, Ordering::Relaxed);
    }

    /// The URL of the member the watch stream runs on, once there is one.
    pub(super) fn watched(&self) -> Option<&str> {
        self.members.get(self.watching.load(Ordering::Relaxed)).map(|m| m.url.as_str())
    }

    /// A request to member `i` failed with `e`: when retrying may help elsewhere (the
    /// member is down, unreachable or without a leader), the next member takes over.
    /// Only a failure of the pinned member moves the pin, so that several requests
    /// failing together on one member move it once, not past a healthy one.
    pub(super) fn failed(&self, i: usize, e: &StoreError) {
        if !e.is_transient() || self.members.len() < 2 {
            return;
        }
        let next = (i + 1) % self.members.len();
        if self.pinned.compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            info!(
                failed = %self.members[i].url,
                next = %self.members[next].url,
                error = %e,
                "store: an etcd member failed; using the next one"
            );
        } else {
            debug!(failed = %self.members[i].url, error = %e, "store: an etcd member failed; another already took over");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> StoreError {
        StoreError::Etcd { op: "reading", source: etcd_client::Error::GRpcStatus(tonic::Status::unavailable("down")) }
    }

    #[tokio::test]
    async fn a_failing_member_hands_over_to_the_next_once() {
        let urls: Vec<String> = ["http://192.0.2.1:2379", "http://192.0.2.2:2379", "http://192.0.2.3:2379"]
            .map(String::from)
            .into();
        let m = Members::connect(&urls, &ConnectOptions::new()).await.unwrap();
        let first = m.pick().0;
        let next = (first + 1) % 3;
        // Two requests that both went to the first member fail: the pin moves once.
        m.failed(first, &unavailable());
        m.failed(first, &unavailable());
        assert_eq!(m.pick().0, next);
        assert_eq!(m.current(), urls[next]);
        // A refusal (not transient) does not move it.
        let refused = StoreError::Etcd {
            op: "reading",
            source: etcd_client::Error::GRpcStatus(tonic::Status::invalid_argument("bad")),
        };
        m.failed(next, &refused);
        assert_eq!(m.pick().0, next);
        m.failed(next, &unavailable());
        m.failed((next + 1) % 3, &unavailable());
        assert_eq!(m.pick().0, first, "it wraps around");
        assert_eq!(m.watched(), None);
        m.watching(2);
        assert_eq!(m.watched(), Some(urls[2].as_str()));
    }
}
