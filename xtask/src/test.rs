//! `cargo xtask test`: setup, build (and the agent's upgrade-test variant for the upgrade
//! tests), unit tests, then the integration suite (even if the unit tests failed), with
//! leftovers of crashed runs removed before and after.
use std::{ffi::OsString, fs, io, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{build, disk, exec, setup, workspace};

/// Network namespaces the integration tests create are named `ovt…`.
const TEST_NETNS_PREFIX: &str = "ovt";
/// bpffs directories the integration tests pin into are `/sys/fs/bpf/overlay-test…`.
const BPFFS: &str = "/sys/fs/bpf";
const TEST_PIN_PREFIX: &str = "overlay-test";
/// etcd servers the integration tests start keep their data, logs and certificates in
/// `$TMPDIR/ovt-etcd-<pid>x<n>` (tests/src/etcd/mod.rs `DIR_PREFIX`).
const TEST_ETCD_DIR_PREFIX: &str = "ovt-etcd-";
/// `<parent>/ovt-lab-<pid>x<n>`: a test lab's configs, logs and `dir` store
/// (tests/src/lab.rs), in the temporary directory or, for `bench --preload`, `/dev/shm`.
const TEST_LAB_DIR_PREFIX: &str = "ovt-lab-";
/// Where test labs make their directories besides the temporary directory.
const SHM: &str = "/dev/shm";

const INTEGRATION_PACKAGE: &str = "integration-tests";
/// The suites that also run with kernel-mode agents (the rest runs once, in eBPF mode,
/// or picks its modes itself).
const KERNEL_SUITES: &[&str] = &["overlay", "restart", "etcd", "lifecycle", "docker", "cni", "l3", "gateway", "failure_modes", "hardening", "soak"];
/// Chooses the lab agents' datapath (tests/src/lab.rs `MODE_ENV`).
const MODE_ENV: &str = "OVERLAY_TEST_DATAPATH";
/// The agent binary of the lab (tests/src/agent.rs `AGENT_BIN_ENV`).
const AGENT_BIN_ENV: &str = "OVERLAY_AGENT_BIN";
/// The upgrade-test variant of the agent (tests/src/agent.rs `AGENT_VARIANT_BIN_ENV`).
const AGENT_VARIANT_BIN_ENV: &str = "OVERLAY_AGENT_VARIANT_BIN";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Passed to both `cargo test` runs after their `--`: a test name filter, `--nocapture`, ….
    #[arg(last = true)]
    pub test_args: Vec<OsString>,
}

pub fn execute(args: &Args) -> Result<()> {
    setup::run()?;
    disk::check_free_space(&workspace::target_dir())?;
    build::build(false)?;
    // A failed variant build fails its stage; the upgrade tests then fail too (never skip)
    // and say the variant is missing, and everything else still runs.
    let variant = build::build_variant();
    remove_leftovers("before the tests")?;

    let mut unit = workspace::cargo();
    // `--no-fail-fast`: run every test binary and report every failure, as CI wants.
    unit.args(["test", "--no-fail-fast", "--workspace"])
        .args([
            "--exclude",
            INTEGRATION_PACKAGE,
            "--exclude",
            "overlay-ebpf",
        ])
        .args(["--", "--test-threads=1"])
        .args(&args.test_args);
    let unit = exec::exec(&mut unit);

    // The whole suite with eBPF agents, then KERNEL_SUITES again with kernel-mode agents
    // (the interop tests set their modes themselves).
    let suite = |tests: &[&str], mode: &str| {
        let mut cmd = workspace::cargo();
        cmd.args(["test", "--no-fail-fast", "-p", INTEGRATION_PACKAGE])
            .args(tests.iter().flat_map(|t| ["--test", t]))
            .args(["--", "--test-threads=1"])
            .args(&args.test_args)
            .env(AGENT_BIN_ENV, workspace::debug_bin("overlay-agent"))
            .env(MODE_ENV, mode);
        if let Ok(bin) = &variant {
            cmd.env(AGENT_VARIANT_BIN_ENV, bin);
        }
        cmd
    };
    eprintln!("xtask: integration suite, eBPF datapath");
    let integration = exec::exec(&mut suite(&[], "ebpf"));
    eprintln!("xtask: the {} suites again, kernel VXLAN datapath", KERNEL_SUITES.join(", "));
    let kernel = exec::exec(&mut suite(KERNEL_SUITES, "kernel"));

    // Anything left now was left by the suite itself: remove it, and fail the run.
    let cleanup = match remove_leftovers("after the tests") {
        Ok(0) => Ok(()),
        Ok(n) => Err(anyhow::anyhow!(
            "the test suite left {n} namespace(s), pin(s), etcd or lab directories or agent/etcd process(es) behind (removed now)"
        )),
        Err(e) => Err(e),
    };

    let stages = [
        ("upgrade-test variant build", variant.map(drop)),
        ("unit tests", unit),
        ("integration tests (eBPF datapath)", integration),
        ("the kernel-datapath suites (KERNEL_SUITES)", kernel),
        ("cleanup after the tests", cleanup),
    ];
    let mut failed = 0;
    for (stage, result) in &stages {
        match result {
            Ok(()) => eprintln!("xtask: {stage}: ok"),
            Err(err) => {
                failed += 1;
                eprintln!("xtask: {stage}: FAILED: {err:#}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} stages failed", stages.len());
    }
    Ok(())
}

/// Deletes what crashed test runs leave behind: agents started by the tests (their
/// config lives in an `ovt-lab-*` directory), etcd servers started by the tests (their
/// data dir is in an `ovt-etcd-*` directory), `ovt*` network namespaces,
/// `/sys/fs/bpf/overlay-test*` pins, `$TMPDIR/ovt-etcd-*` directories and lab
/// directories (`$TMPDIR/ovt-lab-*`, `/dev/shm/ovt-lab-*`). Touches
/// nothing else. Returns how many it found.
fn remove_leftovers(when: &str) -> Result<usize> {
    let processes = test_processes();
    for (pid, kind) in &processes {
        eprintln!("xtask: killing leftover test {kind} pid {pid} ({when})");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid may have exited
        // since (ESRCH), which is fine.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let namespaces = test_namespaces(&exec::stdout(Command::new("ip").args(["netns", "list"]))?);
    let pins = test_pins(Path::new(BPFFS))?;
    // After the kills: a SIGKILLed etcd writes nothing more into its directory.
    let tmp = std::env::temp_dir();
    let mut dirs = test_dirs(&tmp, TEST_ETCD_DIR_PREFIX)?;
    dirs.extend(test_dirs(&tmp, TEST_LAB_DIR_PREFIX)?);
    dirs.extend(test_dirs(Path::new(SHM), TEST_LAB_DIR_PREFIX)?);
    let found = processes.len() + namespaces.len() + pins.len() + dirs.len();
    if namespaces.is_empty() && pins.is_empty() && dirs.is_empty() {
        eprintln!("xtask: no leftover test namespaces, bpffs pins, etcd or lab directories {when}");
        return Ok(found);
    }
    let mut errors = Vec::new();
    for name in namespaces {
        eprintln!("xtask: deleting leftover network namespace {name} ({when})");
        if let Err(err) = exec::exec(Command::new("ip").args(["netns", "del", &name])) {
            errors.push(err);
        }
    }
    for pin in pins {
        eprintln!(
            "xtask: deleting leftover bpffs pins {} ({when})",
            pin.display()
        );
        let removed = if pin.is_dir() {
            fs::remove_dir_all(&pin)
        } else {
            fs::remove_file(&pin)
        };
        if let Err(err) = removed.with_context(|| format!("removing {}", pin.display())) {
            errors.push(err);
        }
    }
    for dir in dirs {
        eprintln!(
            "xtask: deleting leftover test directory {} ({when})",
            dir.display()
        );
        if let Err(err) =
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))
        {
            errors.push(err);
        }
    }
    match errors.len() {
        0 => Ok(found),
        n => bail!(
            "{n} leftover(s) could not be removed: {}",
            errors
                .iter()
                .map(|e| format!("{e:#}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// Pids of the processes the tests started, with what they are ([`test_process_kind`]).
fn test_processes() -> Vec<(i32, &'static str)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some((pid, test_process_kind(&cmdline)?))
        })
        .collect()
}

/// What a process is, from its `/proc/<pid>/cmdline` (arguments separated by NULs), if
/// the tests started it: `"agent"` for an `overlay-agent` whose command line names a test
/// lab's config (`/ovt-lab-`), `"etcd"` for an `etcd` (the program itself, not etcdctl)
/// whose arguments name a test data dir (`/ovt-etcd-`), `"docker"` for a dockerd,
/// containerd or containerd shim whose arguments name a lab directory.
fn test_process_kind(cmdline: &[u8]) -> Option<&'static str> {
    let text = String::from_utf8_lossy(cmdline);
    if text.contains("overlay-agent") && text.contains("/ovt-lab-") {
        return Some("agent");
    }
    let mut args = text.split('\0');
    let program = args.next()?;
    let name = Path::new(program).file_name().and_then(|n| n.to_str()).unwrap_or("");
    if (name == "dockerd" || name.starts_with("containerd")) && text.contains("/ovt-lab-") {
        return Some("docker");
    }
    let is_etcd = Path::new(program)
        .file_name()
        .is_some_and(|name| name == "etcd");
    let etcd_dir = format!("/{TEST_ETCD_DIR_PREFIX}");
    (is_etcd && args.any(|arg| arg.contains(&etcd_dir))).then_some("etcd")
}

/// `<prefix>*` entries directly under `tmp` (the temporary directory, or `/dev/shm`).
fn test_dirs(tmp: &Path, prefix: &str) -> Result<Vec<std::path::PathBuf>> {
    let entries = match fs::read_dir(tmp) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("listing {}", tmp.display())),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", tmp.display()))?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(prefix)
        {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Names of `ovt*` namespaces in `ip netns list` output (`NAME` or `NAME (id: N)` per line).
fn test_namespaces(list: &str) -> Vec<String> {
    list.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(TEST_NETNS_PREFIX))
        .map(str::to_owned)
        .collect()
}

/// `overlay-test*` entries directly under the bpffs mount.
fn test_pins(bpffs: &Path) -> Result<Vec<std::path::PathBuf>> {
    let entries = match fs::read_dir(bpffs) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("listing {}", bpffs.display())),
    };
    let mut pins = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", bpffs.display()))?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(TEST_PIN_PREFIX)
        {
            pins.push(entry.path());
        }
    }
    pins.sort();
    Ok(pins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_from_ip_netns_list() {
        let list = "ovt-a1b2-host1 (id: 3)\nmyns (id: 0)\novt-a1b2-router\nnotovt\n";
        assert_eq!(test_namespaces(list), ["ovt-a1b2-host1", "ovt-a1b2-router"]);
        assert!(test_namespaces("").is_empty());
    }

    #[test]
    fn pins_by_prefix_only() {
        let dir = std::env::temp_dir().join(format!("xtask-pins-{}", std::process::id()));
        fs::create_dir_all(dir.join("overlay-test-1/maps")).unwrap();
        fs::create_dir_all(dir.join("overlay")).unwrap();
        fs::write(dir.join("overlay-test-2"), b"").unwrap();
        fs::write(dir.join("other-overlay-test"), b"").unwrap();
        let found = test_pins(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            found,
            [dir.join("overlay-test-1"), dir.join("overlay-test-2")]
        );
        assert!(test_pins(&dir).unwrap().is_empty());
    }

    #[test]
    fn test_processes_by_command_line() {
        let dockerd = b"/usr/sbin/dockerd\0--data-root\0/tmp/ovt-lab-5x0/docker0/data\0";
        assert_eq!(test_process_kind(dockerd), Some("docker"));
        let shim = b"/usr/bin/containerd-shim-runc-v2\0-namespace\0moby\0-address\0/tmp/ovt-lab-5x0/docker0/exec/containerd/containerd.sock\0";
        assert_eq!(test_process_kind(shim), Some("docker"));
        assert_eq!(test_process_kind(b"/usr/sbin/dockerd\0-H\0fd://\0"), None, "the machine's own dockerd");
        let etcd = b"/usr/bin/etcd\0--name=m0\0--data-dir=/tmp/ovt-etcd-123x0/m0\0--logger=zap\0";
        assert_eq!(test_process_kind(etcd), Some("etcd"));
        let etcd = b"etcd\0--data-dir\0/var/tmp/ovt-etcd-9x1/m2\0";
        assert_eq!(test_process_kind(etcd), Some("etcd"));
        // The machine's own etcd, a client of a test etcd, an unrelated program.
        assert_eq!(
            test_process_kind(b"/usr/bin/etcd\0--data-dir=/var/lib/etcd\0"),
            None
        );
        assert_eq!(
            test_process_kind(b"/usr/bin/etcdctl\0--cacert=/tmp/ovt-etcd-1x0/tls/ca.pem\0get\0"),
            None
        );
        assert_eq!(
            test_process_kind(b"/usr/bin/vim\0/tmp/ovt-etcd-1x0/m0.log\0"),
            None
        );
        let agent = b"/work/target/debug/overlay-agent\0run\0--config\0/tmp/ovt-lab-5/h1.toml\0";
        assert_eq!(test_process_kind(agent), Some("agent"));
        assert_eq!(test_process_kind(b""), None);
    }

    #[test]
    fn etcd_and_lab_dirs_by_prefix_only() {
        let dir = std::env::temp_dir().join(format!("xtask-etcd-dirs-{}", std::process::id()));
        fs::create_dir_all(dir.join("ovt-etcd-12x0/m0/member")).unwrap();
        fs::create_dir_all(dir.join("ovt-lab-12x0")).unwrap();
        fs::create_dir_all(dir.join("etcd")).unwrap();
        fs::write(dir.join("ovt-etcd-13x4"), b"").unwrap();
        let found = test_dirs(&dir, TEST_ETCD_DIR_PREFIX).unwrap();
        let labs = test_dirs(&dir, TEST_LAB_DIR_PREFIX).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            found,
            [dir.join("ovt-etcd-12x0"), dir.join("ovt-etcd-13x4")]
        );
        assert_eq!(labs, [dir.join("ovt-lab-12x0")]);
        assert!(test_dirs(&dir, TEST_ETCD_DIR_PREFIX).unwrap().is_empty());
    }
}
