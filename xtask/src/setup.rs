//! `cargo xtask setup`: installs what the build and the tests need, and does nothing but say
//! so when everything is already there.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{exec, workspace};

/// Debian packages: the eBPF toolchain (Debian's rustc with library sources and the LLVM that
/// bpf-linker links against), what linking bpf-linker needs, and the tools the tests and the
/// lab call.
const APT_PACKAGES: &[&str] = &[
    // `/usr/bin/rustc` 1.96 (LLVM 22) with `rust-src`, for `-Z build-std=core`.
    DEBIAN_RUST_PACKAGES[0],
    DEBIAN_RUST_PACKAGES[1],
    DEBIAN_RUST_PACKAGES[2],
    // bpf-linker's `llvm-22` feature links libLLVM-22 dynamically.
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    // `cc` links every Rust binary and bpf-linker's build script adds `-lstdc++`. A machine
    // with rustup usually has them; listed so one without them gets them.
    "gcc",
    "libstdc++-12-dev",
    // Used by the tests and the lab.
    "iproute2",
    "iputils-ping",
    "bpftool",
    "tcpdump",
    "iperf3",
    "ethtool",
    "util-linux",
    // The control plane: `protoc` and the well-known `.proto` files for the `etcd-client`
    // crate's build script, and the etcd server and `etcdctl` the tests start and query.
    "protobuf-compiler",
    "libprotobuf-dev",
    "etcd-server",
    "etcd-client",
    // Container runtimes the tests drive: dockerd and its client (the Docker plugin
    // tests), a static busybox for the images they import offline.
    "docker.io",
    "busybox-static",
    // host-local, the IPAM plugin the CNI tests delegate to.
    "containernetworking-plugins",
    // `nft`: the agent's own nftables table (kernel-mode L3 networks' isolation).
    "nftables",
    // `promtool`, which checks the agent's /metrics output in a test (the Prometheus
    // server it comes with is not started: service starts are off while installing).
    "prometheus",
];

/// Debian's Rust toolchain, which builds the eBPF crate.
const DEBIAN_RUST_PACKAGES: [&str; 3] = ["rustc-web", "cargo-web", "rust-web-src"];

/// bpf-linker 0.13 is the release whose `llvm-22` feature matches Debian's LLVM 22.
const BPF_LINKER_VERSION: (u64, u64) = (0, 13);
const BPF_LINKER_LLVM_PREFIX: &str = "/usr/lib/llvm-22";

const BPFFS: &str = "/sys/fs/bpf";

/// Where build.rs finds the eBPF compiler (`OVERLAY_EBPF_TOOLCHAIN`, default `/usr`).
const EBPF_TOOLCHAIN: &str = "/usr";
/// The oldest rustc that builds overlay-ebpf.
const EBPF_RUSTC_MIN: (u64, u64) = (1, 96);

/// Runs every step; each checks first and acts only if something is missing.
pub fn run() -> Result<()> {
    check_root()?;
    let mut changed = false;
    changed |= apt_packages()?;
    changed |= bpf_linker()?;
    changed |= bpffs()?;
    ebpf_toolchain()?;
    if changed {
        eprintln!("xtask: setup done");
    } else {
        eprintln!("xtask: setup: everything already present, nothing to do");
    }
    Ok(())
}

fn check_root() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = effective_uid(&status).context("no Uid line in /proc/self/status")?;
    if euid != 0 {
        bail!(
            "xtask must run as root (effective uid is {euid}): it installs Debian packages, mounts \
             bpffs, and the tests create network namespaces and load eBPF programs; \
             run it again from a root shell (e.g. after `sudo -i`) with rustup's cargo on PATH"
        );
    }
    Ok(())
}

/// The effective uid from `/proc/self/status` (`Uid: real effective saved fs`).
fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Installs the missing apt packages, and upgrades Debian's Rust when it is too old for the
/// eBPF crate (bookworm's own rustc-web is 1.85; bookworm-security has 1.96). Returns whether
/// it ran apt-get.
fn apt_packages() -> Result<bool> {
    let mut missing = Vec::new();
    for &package in APT_PACKAGES {
        if !dpkg_installed(package)? {
            missing.push(package);
        }
    }
    let mut upgrade: Vec<&str> = Vec::new();
    if !missing.contains(&"rustc-web")
        && ebpf_toolchain_dir() == Path::new(EBPF_TOOLCHAIN)
        && let Some(version) = reported_version(&ebpf_toolchain_dir().join("bin/rustc"))
        && !version_at_least(&version, EBPF_RUSTC_MIN)
    {
        upgrade.extend(
            DEBIAN_RUST_PACKAGES
                .iter()
                .copied()
                .filter(|p| !missing.contains(p)),
        );
        eprintln!(
            "xtask: upgrading apt packages ({EBPF_TOOLCHAIN}/bin/rustc is {version}, the eBPF \
             crate needs ≥ {}.{}): {}",
            EBPF_RUSTC_MIN.0,
            EBPF_RUSTC_MIN.1,
            upgrade.join(" ")
        );
    }
    if !missing.is_empty() {
        eprintln!("xtask: installing apt packages: {}", missing.join(" "));
    } else if upgrade.is_empty() {
        eprintln!("xtask: apt packages present: {}", APT_PACKAGES.join(" "));
        return Ok(false);
    }
    exec::exec(apt_get().arg("update"))?;
    let _no_starts = NoServiceStarts::install()?;
    exec::exec(
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .args(&upgrade),
    )?;
    Ok(true)
}

/// Installs whichever of `packages` are missing (for subcommands with needs of their own).
pub fn ensure_apt(packages: &[&str]) -> Result<()> {
    let mut missing = Vec::new();
    for &package in packages {
        if !dpkg_installed(package)? {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        eprintln!("xtask: apt packages present: {}", packages.join(" "));
        return Ok(());
    }
    eprintln!("xtask: installing apt packages: {}", missing.join(" "));
    exec::exec(apt_get().arg("update"))?;
    let _no_starts = NoServiceStarts::install()?;
    exec::exec(apt_get().args(["install", "-y", "--no-install-recommends"]).args(&missing))
}

/// Debian's way of telling package scripts not to start services: a
/// `/usr/sbin/policy-rc.d` that exits 101, in place while apt installs. Without it, on
/// a machine without one, installing docker.io, containerd or etcd-server would start
/// dockerd, containerd and etcd in the root namespace (dockerd would add its docker0
/// bridge and iptables rules to the machine's own network). The tests start their own,
/// in namespaces. An existing policy-rc.d is the machine's and is left alone.
struct NoServiceStarts {
    written: Option<PathBuf>,
}

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

impl NoServiceStarts {
    fn install() -> Result<NoServiceStarts> {
        Self::install_at(Path::new(POLICY_RC_D))
    }

    fn install_at(path: &Path) -> Result<NoServiceStarts> {
        if path.exists() {
            return Ok(NoServiceStarts { written: None });
        }
        eprintln!("xtask: writing {} (exit 101) while apt installs, so that no package starts a service", path.display());
        fs::write(path, "#!/bin/sh\n# Written by `cargo xtask setup` for the duration of its apt-get install.\nexit 101\n")
            .with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
        Ok(NoServiceStarts { written: Some(path.to_owned()) })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = &self.written
            && let Err(e) = fs::remove_file(path)
        {
            eprintln!("xtask: warning: removing {}: {e}; remove it by hand", path.display());
        }
    }
}

pub fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

fn dpkg_installed(package: &str) -> Result<bool> {
    // Unknown packages make dpkg-query exit 1; that just means "not installed".
    let output = exec::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}\\n", package]))?;
    Ok(output.status.success() && status_installed(&String::from_utf8_lossy(&output.stdout)))
}

/// Whether `dpkg-query -f '${Status}\n'` output (one line per architecture) says installed.
fn status_installed(status: &str) -> bool {
    status
        .lines()
        .any(|line| line.trim() == "install ok installed")
}

/// Installs bpf-linker 0.13 (linked against LLVM 22) into cargo's bin directory unless it's
/// there. Returns whether it installed it.
fn bpf_linker() -> Result<bool> {
    let cargo_home = workspace::cargo_home()?;
    let binary = cargo_home.join("bin").join("bpf-linker");
    let (major, minor) = BPF_LINKER_VERSION;
    let found = reported_version(&binary);
    if let Some(version) = &found
        && version_at_least(version, BPF_LINKER_VERSION)
        && !version_at_least(version, (major, minor + 1))
    {
        eprintln!("xtask: bpf-linker {version} present");
        return Ok(false);
    }
    let was = found.map_or_else(|| "not installed".to_owned(), |v| format!("found {v}"));
    eprintln!(
        "xtask: installing bpf-linker {major}.{minor} with LLVM 22 into {} ({was}; takes a few minutes)",
        cargo_home.display()
    );
    let llvm_bin = Path::new(BPF_LINKER_LLVM_PREFIX).join("bin");
    let path = env::join_paths(
        std::iter::once(llvm_bin).chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )
    .context("building PATH for the bpf-linker build")?;
    // `--locked` builds with the lock file bpf-linker 0.13.0 publishes (checked: it builds).
    // `--force` because we only get here when the binary is missing, the wrong version or
    // broken, and cargo would keep a broken binary it believes is current.
    exec::exec(
        workspace::cargo()
            .args(["install", "bpf-linker", "--locked", "--force"])
            .args(["--version", &format!("^{major}.{minor}")])
            .args(["--no-default-features", "--features", "llvm-22"])
            .arg("--root")
            .arg(&cargo_home)
            .env("LLVM_PREFIX", BPF_LINKER_LLVM_PREFIX)
            // /usr/bin/llvm-config may belong to another LLVM; put LLVM 22's first.
            .env("PATH", path),
    )?;
    let version = reported_version(&binary)
        .with_context(|| format!("`{} --version` fails after installing it", binary.display()))?;
    eprintln!("xtask: bpf-linker {version} installed");
    Ok(true)
}

/// The version `BINARY --version` reports (`bpf-linker 0.13.0`, `rustc 1.96.0 (…)`), or None
/// if it doesn't run.
fn reported_version(binary: &Path) -> Option<String> {
    let output = Command::new(binary).arg("--version").output().ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
}

/// Whether `version` (`1.96.0`, `0.13.0-rc1`) is at least `major.minor`.
fn version_at_least(version: &str, (major, minor): (u64, u64)) -> bool {
    let mut parts = version.split(['.', '-', '+']).map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(have_major)), Some(Ok(have_minor))) => (have_major, have_minor) >= (major, minor),
        _ => false,
    }
}

/// Mounts bpffs at /sys/fs/bpf unless it's there. Returns whether it mounted it.
fn bpffs() -> Result<bool> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    if fstype_at(&mountinfo, BPFFS) == Some("bpf") {
        eprintln!("xtask: bpffs mounted at {BPFFS}");
        return Ok(false);
    }
    eprintln!("xtask: mounting bpffs at {BPFFS}");
    exec::exec(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    Ok(true)
}

/// The filesystem type of the topmost mount at `mount_point` in `/proc/*/mountinfo` text
/// (`id parent maj:min root mount-point options [optional...] - fstype source super-options`).
fn fstype_at<'a>(mountinfo: &'a str, mount_point: &str) -> Option<&'a str> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let point = before.split(' ').nth(4)?;
            let fstype = after.split(' ').next()?;
            (point == mount_point).then_some(fstype)
        })
        .next_back()
}

/// Where build.rs takes the eBPF compiler from.
fn ebpf_toolchain_dir() -> PathBuf {
    env::var_os("OVERLAY_EBPF_TOOLCHAIN")
        .filter(|t| !t.is_empty())
        .map_or_else(|| PathBuf::from(EBPF_TOOLCHAIN), PathBuf::from)
}

/// Checks the compiler the agent's build.rs uses for the eBPF crate.
fn ebpf_toolchain() -> Result<()> {
    let toolchain = ebpf_toolchain_dir();
    let rustc = toolchain.join("bin/rustc");
    let library = toolchain.join("lib/rustlib/src/rust/library");
    let (major, minor) = EBPF_RUSTC_MIN;
    let hint = "Debian 12 ships it in rustc-web from bookworm-security: make sure \
                `bookworm-security` is in the apt sources, then run `apt-get update && \
                apt-get install rustc-web cargo-web rust-web-src`";
    let Some(version) = reported_version(&rustc) else {
        bail!(
            "`{} --version` does not run; the eBPF crate needs it at ≥ {major}.{minor}; {hint}",
            rustc.display()
        );
    };
    if !version_at_least(&version, EBPF_RUSTC_MIN) {
        bail!(
            "{} is {version}, the eBPF crate needs ≥ {major}.{minor}; {hint}",
            rustc.display(),
        );
    }
    if !library.is_dir() {
        bail!(
            "{} is missing: `-Z build-std=core` needs the library sources of {}; \
             apt-get install rust-web-src",
            library.display(),
            rustc.display()
        );
    }
    eprintln!(
        "xtask: eBPF toolchain present: {} ({version}) with library sources",
        rustc.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn service_starts_are_blocked_only_while_installing_and_a_machines_policy_is_kept() {
        let dir = std::env::temp_dir().join(format!("xtask-policy-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy-rc.d");
        {
            let _guard = NoServiceStarts::install_at(&path).unwrap();
            let status = Command::new(&path).status().unwrap();
            assert_eq!(status.code(), Some(101), "package scripts must be told not to start services");
        }
        assert!(!path.exists(), "the guard left its policy-rc.d behind");
        fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        drop(NoServiceStarts::install_at(&path).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), "#!/bin/sh\nexit 0\n", "the machine's own policy was touched");
        fs::remove_dir_all(&dir).unwrap();
    }

    use super::*;

    #[test]
    fn effective_uid_is_second_field() {
        let status = "Name:\tcat\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Name:\tcat\n"), None);
    }

    #[test]
    fn dpkg_status() {
        assert!(status_installed("install ok installed\n"));
        assert!(status_installed(
            "deinstall ok config-files\ninstall ok installed\n"
        ));
        assert!(!status_installed("deinstall ok config-files\n"));
        assert!(!status_installed("install ok half-installed\n"));
        assert!(!status_installed(""));
    }

    #[test]
    fn versions() {
        assert!(version_at_least("1.96.0", (1, 96)));
        assert!(version_at_least("1.100.1", (1, 96)));
        assert!(version_at_least("2.0.0", (1, 96)));
        assert!(!version_at_least("1.95.0", (1, 96)));
        assert!(version_at_least("0.13.0-rc1", (0, 13)));
        assert!(!version_at_least("0.14.0", (0, 14 + 1)));
        assert!(!version_at_least("garbage", (0, 13)));
    }

    #[test]
    fn bpffs_in_mountinfo() {
        let mountinfo = "\
22 1 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw
31 22 0:27 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:10 - bpf bpf rw,mode=700
";
        assert_eq!(fstype_at(mountinfo, "/sys/fs/bpf"), Some("bpf"));
        assert_eq!(fstype_at(mountinfo, "/sys"), Some("sysfs"));
        assert_eq!(fstype_at(mountinfo, "/sys/fs"), None);
        // A later (upper) mount hides the bpffs.
        let covered = format!("{mountinfo}40 31 0:30 / /sys/fs/bpf rw - tmpfs tmpfs rw\n");
        assert_eq!(fstype_at(&covered, "/sys/fs/bpf"), Some("tmpfs"));
    }
}
