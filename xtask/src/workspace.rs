//! Where things are: the workspace, its target directory, cargo's home and binaries.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

/// The workspace root (the parent of this crate's directory).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in a subdirectory of the workspace")
}

/// `$CARGO_TARGET_DIR` (relative to the workspace root, where we run cargo) or `<root>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
}

/// A binary of the dev profile, as `cargo xtask build` (without `--release`) leaves it.
pub fn debug_bin(name: &str) -> PathBuf {
    target_dir().join("debug").join(name)
}

/// Where the upgrade-test variant of the agent is built (see [`crate::build::build_variant`]):
/// a target directory of its own, so that building it neither replaces the normal
/// `target/debug/overlay-agent` nor makes the normal build recompile anything.
pub fn variant_target_dir() -> PathBuf {
    target_dir().join("variant")
}

/// `$CARGO_HOME`, or `$HOME/.cargo` as rustup sets it up.
pub fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither CARGO_HOME nor HOME is set; cannot find cargo's bin directory")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// Where `cargo install` puts binaries (bpf-linker), which aya-build needs on `PATH`.
pub fn cargo_bin_dir() -> Result<PathBuf> {
    Ok(cargo_home()?.join("bin"))
}

/// Puts cargo's bin directory first on this process's `PATH` (so every child, including
/// aya-build inside the agent's build script, finds bpf-linker), unless it is already there.
///
/// # Safety
/// Must be called before the process starts threads (it calls `env::set_var`).
pub unsafe fn put_cargo_bin_on_path() -> Result<()> {
    let bin = cargo_bin_dir()?;
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|dir| dir == bin) {
        return Ok(());
    }
    let joined = env::join_paths(std::iter::once(bin).chain(env::split_paths(&path)))
        .context("cannot add cargo's bin directory to PATH")?;
    // SAFETY: the caller guarantees no other thread exists yet.
    unsafe { env::set_var("PATH", joined) };
    Ok(())
}

/// `cargo` (the one running xtask, as `$CARGO` says) in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}
