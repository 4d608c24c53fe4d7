//! The store side of the agent: the node's lease and registration, its published
//! endpoints, and applying what the store's watch reports to [`Desired`] and the
//! datapath.
//!
//! Registration is idempotent and retried until it holds: a lease (kept from the last
//! run when it is still alive, so a restart is invisible), the node record and VTEP
//! claim, every local endpoint published, every pending withdrawal done, and nothing
//! else of this node's left in the store. It runs at start, when the store comes back,
//! when the lease ends, and after every full list.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::{Agent, SessionEvent};
use crate::{
    datapath::Datapath,
    records::{EndpointRecord, NodeRecord},
    store::{
        AnyKv, StoreError,
        backoff::Backoff,
        kv::{Kv, LeaseId, NO_LEASE, WatchEvent},
        registry::{self, ClaimError, Registered},
        sync::Change,
    },
};

/// Store events applied to the datapath in one go at most.
pub const MAX_BATCH: usize = 4096;

/// Renews the lease at a third of its TTL; tells the main loop when it has ended.
/// Failures (an unreachable store) are retried with backoff; the lease only ends when
/// the store says so.
pub async fn keep_lease(kv: AnyKv, mut lease: watch::Receiver<LeaseId>, ttl: Duration, events: mpsc::Sender<SessionEvent>) {
    let period = ttl / 3;
    let mut backoff = Backoff::new();
    let mut wait = period;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // A new lease: renew it on schedule from now.
            changed = lease.changed() => {
                if changed.is_err() {
                    return;
                }
                wait = period;
                continue;
            }
        }
        let id = *lease.borrow();
        if id == NO_LEASE {
            wait = period;
            continue;
        }
        match kv.keep_alive(id).await {
            Ok(true) => {
                backoff.reset();
                wait = period;
            }
            Ok(false) => {
                if events.send(SessionEvent::Expired(id)).await.is_err() {
                    return;
                }
                wait = period;
            }
            Err(e) => {
                debug!(error = %e, "renewing the lease; retrying");
                wait = backoff.next_delay().min(period);
            }
        }
    }
}

/// Paces retries of store work that failed (the store unreachable, a conflict).
pub struct Retry {
    backoff: Backoff,
    next: tokio::time::Instant,
}

impl Retry {
    pub fn new() -> Self {
        Self { backoff: Backoff::new(), next: tokio::time::Instant::now() }
    }

    pub async fn tick(&mut self) {
        tokio::time::sleep_until(self.next).await;
        self.next = tokio::time::Instant::now() + self.backoff.next_delay();
    }

    /// After the work succeeded: the next failure is retried quickly again.
    pub fn reset(&mut self) {
        self.backoff.reset();
    }
}

impl Agent {
    fn node_record(&self) -> NodeRecord {
        NodeRecord { node: self.config.node_name.clone(), vtep: self.vtep, version: env!("CARGO_PKG_VERSION").into() }
    }

    pub(super) fn endpoint_record(&self, network: &str, mac: crate::mac::MacAddr, udp_port: u16) -> EndpointRecord {
        EndpointRecord { node: self.config.node_name.clone(), network: network.to_owned(), mac, udp_port }
    }

    fn set_lease(&mut self, lease: LeaseId) {
        if self.lease != lease {
            self.lease = lease;
            self.lease_tx.send_replace(lease);
            self.save_state();
        }
    }

    /// Makes the store hold this node as it is (see the module docs). Failures are
    /// retried later; each distinct failure is logged once.
    pub(super) async fn register(&mut self) {
        match self.try_register().await {
            Ok(()) => self.register_error = None,
            Err(e) => {
                self.metrics.store_error("register");
                let text = e.to_string();
                if self.register_error.as_deref() != Some(text.as_str()) {
                    match &e {
                        RegisterError::Store(s) if s.is_transient() => warn!(error = %e, "registering with the store; will retry"),
                        _ => error!(error = %e, "registering with the store; will retry"),
                    }
                    self.register_error = Some(text);
                }
            }
        }
    }

    async fn try_register(&mut self) -> Result<(), RegisterError> {
        if self.lease != NO_LEASE && !self.registered && !self.kv.keep_alive(self.lease).await? {
            info!(lease = format!("{:x}", self.lease), "the previous lease has ended; registering anew");
            self.set_lease(NO_LEASE);
        }
        if self.lease == NO_LEASE {
            let lease = self.kv.grant(self.config.store.lease_ttl).await?;
            self.set_lease(lease);
        }
        match registry::register_node(&self.kv, &self.keys, &self.node_record(), self.lease).await? {
            Registered::Fresh => {}
            Registered::Adopted(old) => {
                info!(lease = format!("{old:x}"), "adopting this node's lease from an earlier run");
                let granted = self.lease;
                self.set_lease(old);
                if let Err(e) = self.kv.revoke(granted).await {
                    warn!(error = %e, "revoking the unused new lease");
                }
            }
        }
        self.publish_subnets().await?;
        let keys: Vec<_> = self.local.keys().copied().collect();
        for key in keys {
            let Some(l) = self.local.get(&key) else { continue };
            let rec = self.endpoint_record(&l.record.network, l.record.mac, self.udp_port(l.record.vni));
            let outcome = registry::publish_endpoint(&self.kv, &self.keys, key.0, key.1, &rec, self.lease).await;
            let unpublished = match outcome {
                Ok(()) => None,
                Err(ClaimError::Store(e)) => return Err(e.into()),
                Err(conflict) => {
                    error!(ip = %key.1, error = %conflict, "a local endpoint cannot be published; it stays plugged in but unreachable from other hosts");
                    Some(conflict.to_string())
                }
            };
            if let Some(l) = self.local.get_mut(&key) {
                l.unpublished = unpublished;
            }
        }
        while let Some(&(vni, ip)) = self.pending_withdrawals.first() {
            registry::withdraw_endpoint(&self.kv, &self.keys, vni, ip, self.lease).await?;
            self.pending_withdrawals.remove(0);
            self.save_state();
        }
        if !self.registered {
            info!(lease = format!("{:x}", self.lease), endpoints = self.local.len(), "registered with the store");
        }
        self.registered = true;
        self.withdraw_strays().await?;
        Ok(())
    }

    fn udp_port(&self, vni: u32) -> u16 {
        self.config.network_by_vni(vni).map_or(overlay_common::vxlan::DEFAULT_UDP_PORT, |n| n.udp_port)
    }

    /// Withdraws what the store holds as this node's but no local container is (a
    /// crash between publishing and recording, a veth gone while the agent was down).
    async fn withdraw_strays(&mut self) -> Result<(), StoreError> {
        if !self.synced {
            return Ok(());
        }
        let own = self.desired.own_published();
        for ((vni, ip), mac) in own {
            let ours_here = self.local.get(&(vni, ip)).is_some_and(|l| l.record.mac == mac);
            if !ours_here {
                info!(vni, %ip, "withdrawing an endpoint this node published but no longer has");
                registry::withdraw_endpoint(&self.kv, &self.keys, vni, ip, self.lease).await?;
            }
        }
        Ok(())
    }

    /// The lease ended: everything published under it is gone from the store. Register
    /// again (a new lease, the node, every endpoint).
    pub(super) async fn on_lease_expired(&mut self, lease: LeaseId) {
        if lease != self.lease {
            return;
        }
        warn!(lease = format!("{lease:x}"), "the store ended this node's lease (unreachable for longer than its TTL?); registering again");
        self.registered = false;
        self.set_lease(NO_LEASE);
        self.register().await;
    }

    /// Applies a batch of store events to [`Desired`] and the datapath. A full list
    /// (the first, or after a relist) is compared with the datapath as a whole. Returns
    /// whether the datapath took every change (failures are logged here).
    pub(super) async fn apply_store_events(&mut self, batch: Vec<WatchEvent>) -> bool {
        let mut full = false;
        let started = std::time::Instant::now();
        let mut decoded = std::time::Duration::ZERO;
        let events = batch.len();
        for event in batch {
            let decoding = std::time::Instant::now();
            let change = self.decoder.decode(event);
            decoded += decoding.elapsed();
            match change {
                Some(Change::Snapshot(records)) => {
                    debug!(records = records.len(), "full store list");
                    // The datapath is compared as a whole below: no need to track changes.
                    self.desired.snapshot_untracked(records);
                    full = true;
                }
                Some(Change::Put(r)) => self.desired.put(r),
                Some(Change::Delete(k)) => self.desired.delete(&k),
                None => {}
            }
        }
        if full {
            // Everything is known now: compare the datapath as a whole.
            self.desired.take_dirty();
            let desired_done = started.elapsed();
            self.follow_vteps();
            let resynced = self.datapath.resync(&self.desired).await;
            self.follow_vteps();
            match resynced {
                Ok(applied) => {
                    let first = !self.synced;
                    self.synced = true;
                    if first {
                        self.initial_sync = Some(self.watch_started.elapsed());
                    }
                    info!(
                        changed = applied.changed,
                        not_installed = applied.full,
                        ms = started.elapsed().as_millis() as u64,
                        decode_ms = decoded.as_millis() as u64,
                        desired_ms = (desired_done - decoded).as_millis() as u64,
                        datapath_ms = (started.elapsed() - desired_done).as_millis() as u64,
                        first,
                        "datapath in sync with the store"
                    );
                    if first || !self.registered {
                        self.register().await;
                    } else if let Err(e) = self.withdraw_strays().await {
                        debug!(error = %e, "withdrawing stray records; will retry");
                        self.registered = false;
                    }
                }
                Err(e) => {
                    error!(error = %e, "applying the store's state to the datapath");
                    return false;
                }
            }
            return true;
        }
        if let Err(e) = self.flush().await {
            error!(error = %e, events, "applying store changes to the datapath");
            return false;
        }
        true
    }
}

/// Registers the node before the agent touches the datapath, so that a name or VTEP
/// held by another live agent stops the start with a clear error and changes nothing.
/// Returns the lease to use: `saved` if it is still alive, a new one, or the lease of
/// this host's earlier run. `Ok(None)`: the store is unreachable (registration is
/// retried from the main loop).
pub(super) async fn register_early(
    kv: &AnyKv,
    keys: &crate::store::keys::Keys,
    record: &NodeRecord,
    saved: LeaseId,
    ttl: Duration,
) -> Result<Option<LeaseId>, ClaimError> {
    let attempt = async {
        let mut lease = saved;
        if lease != NO_LEASE && !kv.keep_alive(lease).await? {
            lease = NO_LEASE;
        }
        let granted = lease == NO_LEASE;
        if granted {
            lease = kv.grant(ttl).await?;
        }
        match registry::register_node(kv, keys, record, lease).await {
            Ok(Registered::Fresh) => Ok(lease),
            Ok(Registered::Adopted(old)) => {
                if granted {
                    kv.revoke(lease).await?;
                }
                Ok(old)
            }
            Err(e) => {
                if granted && let Err(undo) = kv.revoke(lease).await {
                    warn!(error = %undo, "undo: revoking the new lease");
                }
                Err(e)
            }
        }
    };
    match tokio::time::timeout(EARLY_TIMEOUT, attempt).await {
        Ok(Ok(lease)) => Ok(Some(lease)),
        Ok(Err(ClaimError::Store(e))) if e.is_transient() => {
            warn!(error = %e, "the store is unreachable at start; forwarding goes on with what this host knows, registering once it is back");
            Ok(None)
        }
        Ok(Err(e)) => Err(e),
        Err(_elapsed) => {
            warn!("the store did not answer at start; forwarding goes on with what this host knows, registering once it is back");
            Ok(None)
        }
    }
}

/// How long the start waits for the store before going on without it.
const EARLY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
enum RegisterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Claim(#[from] ClaimError),
}
