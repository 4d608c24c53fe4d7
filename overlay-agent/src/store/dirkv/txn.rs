//! Transactions under the lock, undone step by step on failure.

use std::{
    collections::{HashMap, HashSet},
    fs::{self},
    io::{self, ErrorKind},
    path::{Path, PathBuf},
};


use super::super::{
    StoreError,
    kv::{Cond, KeyValue, LeaseId, Txn, TxnOutcome},
};

use super::*;

// Transactions

pub(super) fn holds(cond: &Cond, current: Option<&KeyValue>) -> bool {
    match (cond, current) {
        (Cond::Absent(_), current) => current.is_none(),
        (Cond::LeaseIs(_, lease), Some(kv)) => kv.lease == *lease,
        (Cond::ValueIs(_, value), Some(kv)) => kv.value == *value,
        (Cond::LeaseIs(..) | Cond::ValueIs(..), None) => false,
    }
}

pub(super) fn apply_txn(root: &Path, txn: Txn) -> Result<TxnOutcome, StoreError> {
    let cond_paths = txn.conds.iter().map(|c| key_path(root, c.key())).collect::<Result<Vec<_>, _>>()?;
    let puts = txn
        .puts
        .iter()
        .map(|(key, value, lease)| Ok((key_path(root, key)?, encode_record(*lease, value), *lease)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    let deletes = txn.deletes.iter().map(|key| key_path(root, key)).collect::<Result<Vec<_>, _>>()?;

    let _lock = lock(root)?;
    let mut leases = Leases::new(root, Held::Yes, OnCorrupt::Fail);
    for (cond, path) in txn.conds.iter().zip(&cond_paths) {
        let current = match read_record(path)? {
            Some(record) if leases.live(record.lease)? => {
                Some(KeyValue { key: cond.key().to_owned(), value: record.value, lease: record.lease })
            }
            Some(_) => {
                // Its lease ended: absent, and collected now.
                remove_opt(path)?;
                prune_dirs(root, path.parent());
                None
            }
            None => None,
        };
        if !holds(cond, current.as_ref()) {
            return Ok(TxnOutcome::Failed { cond: cond.clone(), current });
        }
    }
    for (_, _, lease) in &puts {
        if !leases.live(*lease)? {
            return Err(StoreError::LeaseNotFound { lease: *lease });
        }
    }
    let mut steps = Steps {
        root,
        before: Vec::new(),
        index: HashMap::with_capacity(puts.len() + deletes.len()),
        changed: Vec::new(),
        made_dirs: Vec::new(),
        temps: Vec::new(),
        renamed: 0,
    };
    match steps.apply(&puts, &deletes) {
        Ok(()) => {
            for path in &deletes {
                prune_dirs(root, path.parent());
            }
            Ok(TxnOutcome::Applied)
        }
        Err(e) => {
            let undo = steps.undo();
            Err(if undo.is_empty() { e } else { StoreError::Undo { source: Box::new(e), undo } })
        }
    }
}

/// A transaction's changes, recorded so that they can be undone.
pub(super) struct Steps<'a> {
    pub(super) root: &'a Path,
    /// Every path the transaction touches and what it held before (`None`: absent).
    pub(super) before: Vec<(PathBuf, Option<Vec<u8>>)>,
    /// Path → its index in `before` (a batch of thousands of keys must not search).
    pub(super) index: HashMap<PathBuf, usize>,
    /// Indexes into `before` of the paths changed so far.
    pub(super) changed: Vec<usize>,
    /// Directories created, outermost first.
    pub(super) made_dirs: Vec<PathBuf>,
    /// Temporary files written, in the order they are renamed into place.
    pub(super) temps: Vec<PathBuf>,
    /// How many of `temps` have been renamed (the rest are still temporary files).
    pub(super) renamed: usize,
}

impl Steps<'_> {
    pub(super) fn remember(&mut self, path: &Path) -> Result<usize, StoreError> {
        if let Some(&i) = self.index.get(path) {
            return Ok(i);
        }
        let before = read_opt(path)?;
        self.before.push((path.to_owned(), before));
        self.index.insert(path.to_owned(), self.before.len() - 1);
        Ok(self.before.len() - 1)
    }

    pub(super) fn make_dirs(&mut self, dir: &Path) -> Result<(), StoreError> {
        if dir.is_dir() {
            return Ok(());
        }
        let mut cur = self.root.to_owned();
        for component in dir.strip_prefix(self.root).unwrap_or(dir).components() {
            cur.push(component);
            match fs::create_dir(&cur) {
                Ok(()) => self.made_dirs.push(cur.clone()),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(source) => return Err(StoreError::Io { path: cur, source }),
            }
        }
        Ok(())
    }

    /// Prepares (directories, temporary files: nothing visible changes), then commits
    /// (renames, unlinks).
    pub(super) fn apply(&mut self, puts: &[(PathBuf, Vec<u8>, LeaseId)], deletes: &[PathBuf]) -> Result<(), StoreError> {
        let mut renames = Vec::with_capacity(puts.len());
        for (path, bytes, _) in puts {
            if let Some(dir) = path.parent() {
                self.make_dirs(dir)?;
            }
            if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                return Err(StoreError::Io { path: path.clone(), source: io::Error::from_raw_os_error(libc::EISDIR) });
            }
            let i = self.remember(path)?;
            self.temps.push(write_temp(path, bytes)?);
            renames.push((i, path));
        }
        let deletes = deletes.iter().map(|p| Ok((self.remember(p)?, p))).collect::<Result<Vec<_>, StoreError>>()?;
        for (n, (i, path)) in renames.into_iter().enumerate() {
            fs::rename(&self.temps[n], path).map_err(io_err(path))?;
            self.renamed = n + 1;
            self.changed.push(i);
        }
        for (i, path) in deletes {
            if remove_opt(path)? {
                self.changed.push(i);
            }
        }
        Ok(())
    }

    /// Undoes in reverse what [`Steps::apply`] did; every error is returned.
    pub(super) fn undo(self) -> Vec<StoreError> {
        let mut errors = Vec::new();
        let mut restored = HashSet::new();
        for &i in self.changed.iter().rev() {
            if !restored.insert(i) {
                continue;
            }
            let (path, before) = &self.before[i];
            let result = match before {
                Some(bytes) => write_atomic(path, bytes),
                None => remove_opt(path).map(drop),
            };
            errors.extend(result.err());
        }
        for tmp in &self.temps[self.renamed..] {
            errors.extend(remove_opt(tmp).err());
        }
        for dir in self.made_dirs.iter().rev() {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if is_absent(&e) => {}
                Err(source) => errors.push(StoreError::Io { path: dir.clone(), source }),
            }
        }
        errors
    }
}
