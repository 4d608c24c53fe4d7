//! Leases: grant, keep-alive, expiry and garbage collection.

use std::{
    collections::HashMap,
    fs::File,
    io::Read,
    path::Path,
    time::Duration,
};

use tracing::{debug, warn};

use super::super::{
    StoreError,
    kv::{LeaseId, NO_LEASE},
};

use super::*;

// Leases

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LeaseState {
    Alive {
        expires_ms: u64,
    },
    /// Expired or gone: it never comes back.
    Dead,
    /// Its file is corrupt (only with [`OnCorrupt::Skip`]): its keys are left out, not
    /// collected.
    Unreadable,
}

/// Whether the caller holds the store's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Held {
    Yes,
    No,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnCorrupt {
    Fail,
    /// Log and report [`LeaseState::Unreadable`].
    Skip,
}

/// Lease states read once per operation.
pub(super) struct Leases<'a> {
    pub(super) root: &'a Path,
    pub(super) held: Held,
    pub(super) on_corrupt: OnCorrupt,
    pub(super) seen: HashMap<LeaseId, LeaseState>,
}

impl<'a> Leases<'a> {
    pub(super) fn new(root: &'a Path, held: Held, on_corrupt: OnCorrupt) -> Self {
        Self { root, held, on_corrupt, seen: HashMap::new() }
    }

    /// Whether a key attached to `lease` is live.
    pub(super) fn live(&mut self, lease: LeaseId) -> Result<bool, StoreError> {
        Ok(lease == NO_LEASE || matches!(self.state(lease)?, LeaseState::Alive { .. }))
    }

    pub(super) fn state(&mut self, lease: LeaseId) -> Result<LeaseState, StoreError> {
        if let Some(state) = self.seen.get(&lease) {
            return Ok(*state);
        }
        let state = self.read(lease)?;
        self.seen.insert(lease, state);
        Ok(state)
    }

    pub(super) fn read(&self, lease: LeaseId) -> Result<LeaseState, StoreError> {
        let path = lease_path(self.root, lease);
        let state = |file: Option<LeaseFile>| match file {
            Some(f) if f.expires_ms > now_ms() => LeaseState::Alive { expires_ms: f.expires_ms },
            _ => LeaseState::Dead,
        };
        let first = match read_lease(&path) {
            Ok(file) => file,
            Err(error @ StoreError::Corrupt { .. }) if self.on_corrupt == OnCorrupt::Skip => {
                warn!(%error, "leaving out the keys of an unreadable lease");
                return Ok(LeaseState::Unreadable);
            }
            Err(e) => return Err(e),
        };
        match (first, self.held) {
            // Expired but still there: a keep-alive may be renewing it right now.
            // Decide under the lock, as keep_alive does.
            (Some(_), Held::No) if state(first) == LeaseState::Dead => {
                let _lock = lock(self.root)?;
                Self { root: self.root, held: Held::Yes, on_corrupt: self.on_corrupt, seen: HashMap::new() }.read(lease)
            }
            _ => Ok(state(first)),
        }
    }
}

pub(super) fn random_lease() -> Result<LeaseId, StoreError> {
    const URANDOM: &str = "/dev/urandom";
    let mut bytes = [0u8; 8];
    File::open(URANDOM).and_then(|mut f| f.read_exact(&mut bytes)).map_err(io_err(Path::new(URANDOM)))?;
    Ok((u64::from_ne_bytes(bytes) >> 1) as LeaseId)
}

pub(super) fn grant_lease(root: &Path, ttl: Duration) -> Result<LeaseId, StoreError> {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    let _lock = lock(root)?;
    loop {
        let lease = random_lease()?;
        let path = lease_path(root, lease);
        if lease == NO_LEASE || path.symlink_metadata().is_ok() {
            continue;
        }
        write_atomic(&path, &encode_lease(LeaseFile { ttl_ms, expires_ms: now_ms().saturating_add(ttl_ms) }))?;
        return Ok(lease);
    }
}

pub(super) fn keep_lease_alive(root: &Path, lease: LeaseId) -> Result<bool, StoreError> {
    let path = lease_path(root, lease);
    {
        let _lock = lock(root)?;
        match read_lease(&path)? {
            Some(file) if file.expires_ms > now_ms() => {
                let renewed = LeaseFile { expires_ms: now_ms().saturating_add(file.ttl_ms), ..file };
                write_atomic(&path, &encode_lease(renewed))?;
                return Ok(true);
            }
            Some(_) => {
                remove_opt(&path)?;
            }
            None => {}
        }
    }
    collect_lease_keys(root, lease)?;
    Ok(false)
}

/// How [`gc_lease`] goes about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gc {
    /// Only if the lease is dead; scan the tree only if this call removed its file.
    IfDead,
    /// Whatever its state; always scan the tree.
    Revoke,
}

/// Removes a dead (or revoked) lease's file and keys: `known` under the lock at once,
/// the rest after a scan of the tree. Idempotent; agents may race to do it.
pub(super) fn gc_lease(root: &Path, lease: LeaseId, known: &[String], how: Gc) -> Result<LeaseState, StoreError> {
    let removed = {
        let _lock = lock(root)?;
        let path = lease_path(root, lease);
        let file = match read_lease(&path) {
            Err(StoreError::Corrupt { .. }) if how == Gc::Revoke => Some(LeaseFile { ttl_ms: 0, expires_ms: 0 }),
            other => other?,
        };
        let removed = match file {
            Some(f) if how == Gc::IfDead && f.expires_ms > now_ms() => {
                return Ok(LeaseState::Alive { expires_ms: f.expires_ms });
            }
            Some(_) => remove_opt(&path)?,
            None => false,
        };
        for key in known {
            collect_key(root, key, lease)?;
        }
        removed
    };
    if removed || how == Gc::Revoke {
        collect_lease_keys(root, lease)?;
    }
    Ok(LeaseState::Dead)
}

/// Finds every key of `lease` (a dead one: no key can be attached to it any more) and
/// removes them under the lock.
pub(super) fn collect_lease_keys(root: &Path, lease: LeaseId) -> Result<(), StoreError> {
    let mut keys = Vec::new();
    walk(root, "", &Range::new("", "\0"), None, &mut |dir| {
        keys.extend(dir.files.iter().filter(|(_, r)| r.lease == lease).map(|(name, _)| child_key(&dir.key, name)));
        Ok(())
    })?;
    if !keys.is_empty() {
        let _lock = lock(root)?;
        for key in &keys {
            collect_key(root, key, lease)?;
        }
    }
    Ok(())
}

/// Removes `key` if it is still attached to the dead `lease`. The caller holds the lock.
pub(super) fn collect_key(root: &Path, key: &str, lease: LeaseId) -> Result<(), StoreError> {
    let path = key_path(root, key)?;
    match read_record(&path) {
        Ok(Some(record)) if record.lease == lease => {
            remove_opt(&path)?;
            prune_dirs(root, path.parent());
        }
        Ok(_) => {}
        Err(error @ StoreError::Corrupt { .. }) => debug!(%error, "not collecting a corrupt file"),
        Err(e) => return Err(e),
    }
    Ok(())
}
