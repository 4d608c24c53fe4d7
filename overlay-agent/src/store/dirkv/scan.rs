//! Walking the tree: directories, their inotify watches, the records in them.

use std::{
    fs::{self, File},
    path::Path,
};

use inotify::{WatchDescriptor, WatchMask, Watches};
use tracing::{debug, warn};

use super::super::StoreError;

use super::*;

// Scanning

/// One directory as [`walk`] found it.
pub(super) struct ScannedDir {
    /// `""` for the root, else `/a/b`.
    pub(super) key: String,
    /// Its inotify watch, added before it was listed (when watching).
    pub(super) wd: Option<WatchDescriptor>,
    /// Its keys in range (names), with their records; bad files left out.
    pub(super) files: Vec<(String, Record)>,
}

pub(super) fn dir_mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::DELETE
        | WatchMask::ONLYDIR
        | WatchMask::DONT_FOLLOW
}

pub(super) fn leases_mask() -> WatchMask {
    WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::MOVED_FROM | WatchMask::DELETE | WatchMask::ONLYDIR
}

/// Visits `from` and every directory below it that may hold a key of `range`, with its
/// keys in range. With `watches`, each directory is watched before it is listed.
/// Directories that vanish meanwhile are skipped.
pub(super) fn walk(
    root: &Path,
    from: &str,
    range: &Range,
    mut watches: Option<&mut Watches>,
    visit: &mut dyn FnMut(ScannedDir) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut stack = vec![from.to_owned()];
    while let Some(key) = stack.pop() {
        let path = dir_path(root, &key);
        let wd = match watches.as_deref_mut() {
            Some(watches) => match watches.add(&path, dir_mask()) {
                Ok(wd) => Some(wd),
                Err(e) if is_absent(&e) => continue,
                Err(source) => return Err(StoreError::Inotify { path, source }),
            },
            None => None,
        };
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if is_absent(&e) => continue,
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&path))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                debug!(dir = %path.display(), name = ?name, "skipping a name that is not UTF-8");
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let file_type = match entry.file_type() {
                Ok(t) => t,
                Err(e) if is_absent(&e) => continue,
                Err(source) => return Err(StoreError::Io { path: entry.path(), source }),
            };
            let child = child_key(&key, name);
            if file_type.is_dir() {
                if range.holds_dir(&child) {
                    stack.push(child);
                }
            } else if file_type.is_file() && range.contains(&child) {
                names.push(name.to_owned());
            }
        }
        let dir = match File::open(&path) {
            Ok(dir) => dir,
            Err(e) if is_absent(&e) => continue,
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let files = read_records(&dir, &path, names);
        visit(ScannedDir { key, wd, files })?;
    }
    Ok(())
}

/// Reads the records `names` of the open directory `dir` (at `path`), on several
/// threads when there are many; files that went are left out, bad ones logged.
pub(super) fn read_records(dir: &File, path: &Path, names: Vec<String>) -> Vec<(String, Record)> {
    let read = |name: String| {
        let record =
            read_at(dir, &name).map_err(|source| StoreError::Io { path: path.join(&name), source }).and_then(|bytes| {
                decode_record(bytes)
                    .map_err(|problem| StoreError::Corrupt { path: path.join(&name), problem: problem.to_owned() })
            });
        match record {
            Ok(record) => Some((name, record)),
            Err(StoreError::Io { source, .. }) if is_absent(&source) => None,
            Err(error) => {
                warn!(%error, "leaving out a store file");
                None
            }
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(PARALLEL_READERS);
    if threads < 2 || names.len() < PARALLEL_READ_MIN {
        return names.into_iter().filter_map(read).collect();
    }
    let chunk = names.len().div_ceil(threads);
    let mut names = names;
    let mut chunks = Vec::with_capacity(threads);
    while names.len() > chunk {
        chunks.push(names.split_off(names.len() - chunk));
    }
    chunks.push(names);
    chunks.reverse();
    std::thread::scope(|scope| {
        let readers: Vec<_> = chunks
            .into_iter()
            .map(|chunk| scope.spawn(|| chunk.into_iter().filter_map(read).collect::<Vec<_>>()))
            .collect();
        readers
            .into_iter()
            .flat_map(|reader| reader.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    })
}
