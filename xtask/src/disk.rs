//! Free space for the build: a fresh `cargo xtask test` fills about 20 GiB of the target
//! directory (the debug build, the eBPF build inside it, the upgrade-test variant), and a
//! build that runs out of space dies deep inside rustc with a backtrace that names none of
//! that. Checked first, so the message says what to free.
use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path};

use anyhow::{Context as _, Result, bail};

const GIB: u64 = 1 << 30;
/// Below this the build of a fresh clone fails: refuse to start.
const REFUSE_BELOW: u64 = 8 * GIB;
/// Below this a fresh clone's build may fail: warn.
const WARN_BELOW: u64 = 20 * GIB;

/// Checks the free space of the file system that holds `target` (or its nearest existing
/// ancestor, before the first build).
pub fn check_free_space(target: &Path) -> Result<()> {
    let free = free_bytes(target)?;
    if free < REFUSE_BELOW {
        bail!(
            "only {:.1} GiB free on the file system of {} (a fresh build needs about 20 GiB): free space \
             first, for example `cargo clean` in old checkouts or worktrees, or remove old clones under /tmp",
            free as f64 / GIB as f64,
            target.display()
        );
    }
    if free < WARN_BELOW {
        eprintln!(
            "xtask: warning: {:.1} GiB free on the file system of {}; a fresh build needs about 20 GiB",
            free as f64 / GIB as f64,
            target.display()
        );
    }
    Ok(())
}

/// `target`, or its nearest ancestor that exists (before the first build).
fn nearest_existing(target: &Path) -> Option<&Path> {
    target.ancestors().find(|dir| dir.exists())
}

fn free_bytes(target: &Path) -> Result<u64> {
    let existing =
        nearest_existing(target).with_context(|| format!("no existing directory above {}", target.display()))?;
    let path = CString::new(existing.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", existing.display()))?;
    // SAFETY: an all-zero statvfs is a valid value for the kernel to overwrite.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", existing.display()));
    }
    // f_bavail: blocks available to unprivileged users, which is what cargo runs as in
    // general; root may use the reserve too, but a build that needs it is already in trouble.
    Ok(stat.f_bavail * stat.f_frsize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_not_yet_created_is_measured_on_its_nearest_existing_ancestor() {
        let target = Path::new("/tmp/does-not-exist-yet/target");
        assert_eq!(nearest_existing(target), Some(Path::new("/tmp")));
        // The file system's free space (it moves with other writers, so only its sign).
        assert!(free_bytes(target).unwrap() > 0);
    }
}
