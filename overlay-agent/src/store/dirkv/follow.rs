//! Following a range: the first snapshot, then inotify events, lease expiry, relists.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fs::{self},
    io::{self, ErrorKind},
    path::Path,
    sync::Arc,
    time::Duration,
};

use futures::{FutureExt, StreamExt};
use inotify::{EventMask, EventOwned, Inotify, WatchDescriptor, Watches};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::super::{
    StoreError,
    backoff::Backoff,
    kv::{KeyValue, LeaseId, NO_LEASE, WatchEvent},
};

use super::*;

// Watching

/// What the watcher reported for a key: enough to tell a change, not the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Seen {
    pub(super) fingerprint: u64,
    pub(super) lease: LeaseId,
}

#[derive(Default)]
pub(super) struct DirState {
    pub(super) wd: Option<WatchDescriptor>,
    /// Reported keys in this directory, by name.
    pub(super) files: HashMap<Box<str>, Seen>,
}

/// Whether the watch goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    Stop,
}

/// Keys of dead leases, to collect in the background (per lease: the keys known).
#[derive(Default)]
pub(super) struct GcPlan(HashMap<LeaseId, Vec<String>>);

impl GcPlan {
    pub(super) fn lease(&mut self, lease: LeaseId) -> &mut Vec<String> {
        self.0.entry(lease).or_default()
    }

    pub(super) fn spawn(self, root: &Arc<Path>) {
        for (lease, keys) in self.0 {
            let root = root.clone();
            // Detached: the watch goes on while it runs; it logs its own failure.
            drop(tokio::task::spawn_blocking(move || {
                if let Err(error) = gc_lease(&root, lease, &keys, Gc::IfDead) {
                    warn!(lease = format_args!("{lease:x}"), %error, "cannot collect the keys of an ended lease");
                }
            }));
        }
    }
}

/// What the files named by a batch of events hold now.
#[derive(Default)]
pub(super) struct Changes {
    pub(super) leases: HashMap<LeaseId, LeaseState>,
    /// (directory key, name, record or absent)
    pub(super) files: Vec<(String, String, Option<Record>)>,
    /// Directories rescanned (outermost), and what they hold now.
    pub(super) subtrees: Vec<String>,
    pub(super) scanned: Vec<ScannedDir>,
}

/// A full listing, for a snapshot.
pub(super) struct Listing {
    pub(super) leases_wd: WatchDescriptor,
    pub(super) dirs: Vec<ScannedDir>,
    pub(super) leases: HashMap<LeaseId, LeaseState>,
}

/// A follower's state rebuilt from a [`Listing`], and the snapshot to send.
pub(super) struct Fresh {
    pub(super) leases_wd: i32,
    pub(super) wds: HashMap<i32, String>,
    pub(super) dirs: HashMap<String, DirState>,
    pub(super) leases: HashMap<LeaseId, u64>,
    pub(super) snapshot: Vec<KeyValue>,
    pub(super) gc: GcPlan,
}

impl Fresh {
    pub(super) fn new(listing: Listing) -> Self {
        let mut fresh = Fresh {
            leases_wd: listing.leases_wd.get_watch_descriptor_id(),
            wds: HashMap::new(),
            dirs: HashMap::with_capacity(listing.dirs.len()),
            leases: HashMap::new(),
            snapshot: Vec::with_capacity(listing.dirs.iter().map(|d| d.files.len()).sum()),
            gc: GcPlan::default(),
        };
        for (&lease, &state) in &listing.leases {
            match state {
                LeaseState::Alive { expires_ms } => {
                    fresh.leases.insert(lease, expires_ms);
                }
                LeaseState::Dead => {
                    fresh.gc.lease(lease);
                }
                LeaseState::Unreadable => {}
            }
        }
        for dir in listing.dirs {
            let mut state = DirState { wd: dir.wd, files: HashMap::with_capacity(dir.files.len()) };
            if let Some(wd) = &state.wd {
                fresh.wds.insert(wd.get_watch_descriptor_id(), dir.key.clone());
            }
            for (name, record) in dir.files {
                let key = child_key(&dir.key, &name);
                if record.lease == NO_LEASE || fresh.leases.contains_key(&record.lease) {
                    state.files.insert(name.into(), Seen { fingerprint: fingerprint(&record), lease: record.lease });
                    fresh.snapshot.push(KeyValue { key, value: record.value, lease: record.lease });
                } else if listing.leases.get(&record.lease) == Some(&LeaseState::Dead) {
                    fresh.gc.lease(record.lease).push(key);
                }
            }
            fresh.dirs.insert(dir.key, state);
        }
        fresh.snapshot.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        fresh
    }
}

/// Follows `range` until the receiver is dropped, starting over (with a new snapshot)
/// after a failure.
pub(super) async fn follow(root: Arc<Path>, range: Arc<Range>, tx: mpsc::Sender<WatchEvent>) {
    let mut backoff = Backoff::new();
    loop {
        match follow_once(&root, &range, &tx, &mut backoff).await {
            Ok(()) => return,
            Err(error) => warn!(root = %root.display(), %error, "following the store directory failed; starting over"),
        }
        tokio::select! {
            () = tx.closed() => return,
            () = backoff.wait() => {}
        }
    }
}

/// Ok when the receiver is gone.
pub(super) async fn follow_once(
    root: &Arc<Path>,
    range: &Arc<Range>,
    tx: &mpsc::Sender<WatchEvent>,
    backoff: &mut Backoff,
) -> Result<(), StoreError> {
    let inotify_err = |source| StoreError::Inotify { path: root.to_path_buf(), source };
    let mut stream =
        Inotify::init().map_err(inotify_err)?.into_event_stream(vec![0u8; EVENT_BUFFER]).map_err(inotify_err)?;
    let mut follower = Follower {
        root: root.clone(),
        range: range.clone(),
        watches: stream.watches(),
        leases_wd: None,
        wds: HashMap::new(),
        dirs: HashMap::new(),
        leases: HashMap::new(),
    };
    if follower.relist(tx).await? == Flow::Stop {
        return Ok(());
    }
    backoff.reset();
    let event = |e: Option<io::Result<EventOwned>>| match e {
        Some(Ok(event)) => Ok(event),
        Some(Err(source)) => Err(inotify_err(source)),
        None => Err(inotify_err(io::Error::new(ErrorKind::UnexpectedEof, "the inotify event stream ended"))),
    };
    loop {
        let next_expiry = follower.leases.values().min().copied();
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(next_expiry.unwrap_or(0).saturating_sub(now_ms()).saturating_add(1));
        let flow = tokio::select! {
            () = tx.closed() => Flow::Stop,
            e = stream.next() => {
                let mut batch = vec![event(e)?];
                while batch.len() < MAX_BATCH {
                    match stream.next().now_or_never() {
                        Some(e) => batch.push(event(e)?),
                        None => break,
                    }
                }
                follower.on_events(batch, tx).await?
            }
            () = tokio::time::sleep_until(deadline), if next_expiry.is_some() => follower.on_timer(tx).await?,
        };
        if flow == Flow::Stop {
            return Ok(());
        }
    }
}

pub(super) struct Follower {
    pub(super) root: Arc<Path>,
    pub(super) range: Arc<Range>,
    pub(super) watches: Watches,
    pub(super) leases_wd: Option<i32>,
    /// Watch descriptor id → directory key.
    pub(super) wds: HashMap<i32, String>,
    /// Directory key → what was reported there.
    pub(super) dirs: HashMap<String, DirState>,
    /// Live leases → expiry (unix ms). Every reported key's lease is here.
    pub(super) leases: HashMap<LeaseId, u64>,
}

impl Follower {
    /// Lists everything and sends a snapshot, replacing all that was reported.
    pub(super) async fn relist(&mut self, tx: &mpsc::Sender<WatchEvent>) -> Result<Flow, StoreError> {
        let (root, range, mut watches) = (self.root.clone(), self.range.clone(), self.watches.clone());
        // The old state is dropped, and the new one built, off the runtime's thread too:
        // both are as large as the range.
        let old = std::mem::take(&mut self.dirs);
        let started = std::time::Instant::now();
        let fresh = blocking(&self.root, move || {
            drop(old);
            Ok(Fresh::new(list_all(&root, &range, &mut watches)?))
        })
        .await?;
        self.leases_wd = Some(fresh.leases_wd);
        self.wds = fresh.wds;
        self.dirs = fresh.dirs;
        self.leases = fresh.leases;
        fresh.gc.spawn(&self.root);
        debug!(keys = fresh.snapshot.len(), ms = started.elapsed().as_millis() as u64, "store listed");
        Ok(send(tx, vec![WatchEvent::Snapshot(fresh.snapshot)]).await)
    }

    pub(super) async fn on_events(&mut self, batch: Vec<EventOwned>, tx: &mpsc::Sender<WatchEvent>) -> Result<Flow, StoreError> {
        let mut files = BTreeSet::new();
        let mut subtrees = BTreeSet::new();
        let mut leases = BTreeSet::new();
        for event in batch {
            if event.mask.contains(EventMask::Q_OVERFLOW) {
                debug!(root = %self.root.display(), "inotify queue overflow: relisting");
                return self.relist(tx).await;
            }
            let wd = event.wd.get_watch_descriptor_id();
            let name = event.name.as_deref().and_then(|n| n.to_str()).filter(|n| !n.starts_with('.'));
            if Some(wd) == self.leases_wd {
                if event.mask.contains(EventMask::IGNORED) {
                    warn!(root = %self.root.display(), "the lease directory was removed; lease changes go unnoticed");
                    self.leases_wd = None;
                }
                leases.extend(name.and_then(parse_hex));
                continue;
            }
            if event.mask.contains(EventMask::IGNORED) {
                // The directory went (or was moved away): see what its path holds now.
                if let Some(dir) = self.wds.remove(&wd) {
                    if let Some(state) = self.dirs.get_mut(&dir) {
                        state.wd = None;
                    }
                    subtrees.insert(dir);
                }
                continue;
            }
            let (Some(dir), Some(name)) = (self.wds.get(&wd), name) else { continue };
            let key = child_key(dir, name);
            if event.mask.contains(EventMask::ISDIR) {
                if self.range.holds_dir(&key) {
                    subtrees.insert(key);
                }
            } else if !event.mask.contains(EventMask::CREATE) && self.range.contains(&key) {
                // A file's CREATE is followed by its CLOSE_WRITE; ours arrive by rename.
                files.insert((dir.clone(), name.to_owned()));
            }
        }
        if files.is_empty() && subtrees.is_empty() && leases.is_empty() {
            return Ok(Flow::Continue);
        }
        let subtrees = outermost(subtrees);
        let (root, range, mut watches) = (self.root.clone(), self.range.clone(), self.watches.clone());
        let changes = blocking(&self.root, move || {
            let mut lease_states = Leases::new(&root, Held::No, OnCorrupt::Skip);
            let mut read = Vec::with_capacity(files.len());
            for (dir, name) in files {
                let record = read_record_lenient(&dir_path(&root, &dir).join(&name));
                if let Some(r) = &record {
                    lease_states.live(r.lease)?;
                }
                read.push((dir, name, record));
            }
            let mut scanned = Vec::new();
            for subtree in &subtrees {
                walk(&root, subtree, &range, Some(&mut watches), &mut |dir| {
                    for (_, record) in &dir.files {
                        lease_states.live(record.lease)?;
                    }
                    scanned.push(dir);
                    Ok(())
                })?;
            }
            for lease in leases {
                lease_states.state(lease)?;
            }
            Ok(Changes { leases: lease_states.seen, files: read, subtrees, scanned })
        })
        .await?;
        let mut out = Vec::new();
        let mut gc = GcPlan::default();
        self.apply(changes, &mut out, &mut gc);
        gc.spawn(&self.root);
        Ok(send(tx, out).await)
    }

    /// The earliest lease expiry came: ask each expired lease's file (under the lock if
    /// it is still there), then delete the keys of those that ended.
    pub(super) async fn on_timer(&mut self, tx: &mpsc::Sender<WatchEvent>) -> Result<Flow, StoreError> {
        let now = now_ms();
        let due: Vec<LeaseId> = self.leases.iter().filter(|&(_, &exp)| exp <= now).map(|(&id, _)| id).collect();
        if due.is_empty() {
            return Ok(Flow::Continue);
        }
        let root = self.root.clone();
        let leases = blocking(&self.root, move || {
            let mut states = Leases::new(&root, Held::No, OnCorrupt::Skip);
            for lease in due {
                states.state(lease)?;
            }
            Ok(states.seen)
        })
        .await?;
        let mut out = Vec::new();
        let mut gc = GcPlan::default();
        self.apply(Changes { leases, ..Changes::default() }, &mut out, &mut gc);
        gc.spawn(&self.root);
        Ok(send(tx, out).await)
    }

    pub(super) fn apply(&mut self, changes: Changes, out: &mut Vec<WatchEvent>, gc: &mut GcPlan) {
        for (&lease, &state) in &changes.leases {
            self.set_lease(lease, state, out, gc);
        }
        for (dir, name, record) in changes.files {
            if let Some(state) = self.dirs.get_mut(&dir) {
                update(&mut state.files, &dir, &name, record, &self.leases, &changes.leases, out, gc);
            }
        }
        // Directories gone from the rescanned subtrees.
        let found: HashSet<&str> = changes.scanned.iter().map(|d| d.key.as_str()).collect();
        let kept_wds: HashSet<i32> = changes
            .scanned
            .iter()
            .filter_map(|d| d.wd.as_ref())
            .map(WatchDescriptor::get_watch_descriptor_id)
            .collect();
        let subtrees: HashSet<&str> = changes.subtrees.iter().map(String::as_str).collect();
        let gone: Vec<String> =
            self.dirs.keys().filter(|k| !found.contains(k.as_str()) && under_any(k, &subtrees)).cloned().collect();
        for dir in gone {
            self.forget_dir(&dir, &kept_wds, out);
        }
        for scanned in changes.scanned {
            if let Some(wd) = &scanned.wd {
                self.wds.insert(wd.get_watch_descriptor_id(), scanned.key.clone());
            }
            let state = self.dirs.entry(scanned.key.clone()).or_default();
            if scanned.wd.is_some() {
                state.wd = scanned.wd;
            }
            let present: HashSet<&str> = scanned.files.iter().map(|(n, _)| n.as_str()).collect();
            state.files.retain(|name, _| {
                let keep = present.contains(&**name);
                if !keep {
                    out.push(WatchEvent::Delete(child_key(&scanned.key, name)));
                }
                keep
            });
            for (name, record) in scanned.files {
                update(&mut state.files, &scanned.key, &name, Some(record), &self.leases, &changes.leases, out, gc);
            }
        }
    }

    pub(super) fn set_lease(&mut self, lease: LeaseId, state: LeaseState, out: &mut Vec<WatchEvent>, gc: &mut GcPlan) {
        if let LeaseState::Alive { expires_ms } = state {
            self.leases.insert(lease, expires_ms);
            return;
        }
        // Every reported key's lease is in the table: none to delete if it was not.
        if self.leases.remove(&lease).is_none() {
            return;
        }
        let mut keys = Vec::new();
        for (dir, state) in &mut self.dirs {
            state.files.retain(|name, seen| {
                let keep = seen.lease != lease;
                if !keep {
                    keys.push(child_key(dir, name));
                }
                keep
            });
        }
        out.extend(keys.iter().cloned().map(WatchEvent::Delete));
        if state == LeaseState::Dead {
            gc.lease(lease).extend(keys);
        }
    }

    /// Deletes what was reported under a directory that is gone.
    pub(super) fn forget_dir(&mut self, dir: &str, kept_wds: &HashSet<i32>, out: &mut Vec<WatchEvent>) {
        let Some(state) = self.dirs.remove(dir) else { return };
        out.extend(state.files.keys().map(|name| WatchEvent::Delete(child_key(dir, name))));
        if let Some(wd) = state.wd {
            let id = wd.get_watch_descriptor_id();
            if !kept_wds.contains(&id) {
                if self.wds.get(&id).is_some_and(|d| d == dir) {
                    self.wds.remove(&id);
                }
                // Gone with its directory already, unless it was moved away.
                if let Err(error) = self.watches.remove(wd) {
                    debug!(dir, %error, "removing the watch of a directory that went");
                }
            }
        }
    }
}

/// Brings one reported key up to date with what its file holds now.
#[expect(clippy::too_many_arguments, reason = "the follower's parts, borrowed separately")]
pub(super) fn update(
    files: &mut HashMap<Box<str>, Seen>,
    dir: &str,
    name: &str,
    record: Option<Record>,
    alive: &HashMap<LeaseId, u64>,
    states: &HashMap<LeaseId, LeaseState>,
    out: &mut Vec<WatchEvent>,
    gc: &mut GcPlan,
) {
    let live = match record {
        Some(r) if r.lease == NO_LEASE || alive.contains_key(&r.lease) => Some(r),
        Some(r) => {
            if states.get(&r.lease) == Some(&LeaseState::Dead) {
                gc.lease(r.lease).push(child_key(dir, name));
            }
            None
        }
        None => None,
    };
    match live {
        Some(record) => {
            let seen = Seen { fingerprint: fingerprint(&record), lease: record.lease };
            match files.get_mut(name) {
                Some(old) if *old == seen => return,
                Some(old) => *old = seen,
                None => {
                    files.insert(name.into(), seen);
                }
            }
            out.push(WatchEvent::Put(KeyValue { key: child_key(dir, name), value: record.value, lease: record.lease }));
        }
        None => {
            if files.remove(name).is_some() {
                out.push(WatchEvent::Delete(child_key(dir, name)));
            }
        }
    }
}

/// Whether directory key `k` is one of `dirs` or below one of them.
pub(super) fn under_any(k: &str, dirs: &HashSet<&str>) -> bool {
    dirs.contains("") || dirs.contains(k) || k.match_indices('/').any(|(i, _)| i > 0 && dirs.contains(&k[..i]))
}

/// The directories of `set` that are not below another one of them, sorted.
pub(super) fn outermost(set: BTreeSet<String>) -> Vec<String> {
    let mut dirs: Vec<String> = set.into_iter().collect();
    // An ancestor is shorter than what is below it.
    dirs.sort_by_key(String::len);
    let mut kept: Vec<String> = Vec::new();
    let mut kept_set: HashSet<String> = HashSet::new();
    for dir in dirs {
        let below = kept_set.contains("") || dir.match_indices('/').any(|(i, _)| i > 0 && kept_set.contains(&dir[..i]));
        if !below {
            kept_set.insert(dir.clone());
            kept.push(dir);
        }
    }
    kept.sort_unstable();
    kept
}

pub(super) async fn send(tx: &mpsc::Sender<WatchEvent>, events: Vec<WatchEvent>) -> Flow {
    for event in events {
        if tx.send(event).await.is_err() {
            return Flow::Stop;
        }
    }
    Flow::Continue
}

/// Watches `.leases/` and every directory of the range, then reads them all.
pub(super) fn list_all(root: &Path, range: &Range, watches: &mut Watches) -> Result<Listing, StoreError> {
    let leases_dir = root.join(LEASES_DIR);
    fs::create_dir_all(&leases_dir).map_err(io_err(&leases_dir))?;
    let leases_wd = watches
        .add(&leases_dir, leases_mask())
        .map_err(|source| StoreError::Inotify { path: leases_dir.clone(), source })?;
    let mut states = Leases::new(root, Held::No, OnCorrupt::Skip);
    let mut dirs = Vec::new();
    walk(root, "", range, Some(watches), &mut |dir| {
        for (_, record) in &dir.files {
            states.live(record.lease)?;
        }
        dirs.push(dir);
        Ok(())
    })?;
    // Every lease, for its expiry (and to collect the dead ones).
    for entry in fs::read_dir(&leases_dir).map_err(io_err(&leases_dir))? {
        let entry = entry.map_err(io_err(&leases_dir))?;
        if let Some(lease) = entry.file_name().to_str().filter(|n| !n.starts_with('.')).and_then(parse_hex) {
            states.state(lease)?;
        }
    }
    Ok(Listing { leases_wd, dirs, leases: states.seen })
}
