//! `cargo xtask test`: setup, build, unit tests, then the integration suite (even if the unit
//! tests failed), with leftovers of crashed runs removed before and after.
use std::{ffi::OsString, fs, io, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{build, exec, setup, workspace};

/// Network namespaces the integration tests create are named `ovt…`.
const TEST_NETNS_PREFIX: &str = "ovt";
/// bpffs directories the integration tests pin into are `/sys/fs/bpf/overlay-test…`.
const BPFFS: &str = "/sys/fs/bpf";
const TEST_PIN_PREFIX: &str = "overlay-test";

const INTEGRATION_PACKAGE: &str = "integration-tests";
/// Chooses the lab agents' datapath (tests/src/lab.rs `MODE_ENV`).
const MODE_ENV: &str = "OVERLAY_TEST_DATAPATH";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Passed to both `cargo test` runs after their `--`: a test name filter, `--nocapture`, ….
    #[arg(last = true)]
    pub test_args: Vec<OsString>,
}

pub fn execute(args: &Args) -> Result<()> {
    setup::run()?;
    build::build(false)?;
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

    // The whole suite with eBPF agents, then the overlay suite again with kernel-mode
    // agents (the interop tests set their modes themselves).
    let mut integration = workspace::cargo();
    integration
        .args(["test", "--no-fail-fast", "-p", INTEGRATION_PACKAGE])
        .args(["--", "--test-threads=1"])
        .args(&args.test_args)
        .env("OVERLAY_AGENT_BIN", workspace::debug_bin("overlay-agent"))
        .env(MODE_ENV, "ebpf");
    eprintln!("xtask: integration suite, eBPF datapath");
    let integration = exec::exec(&mut integration);
    let mut kernel = workspace::cargo();
    kernel
        .args(["test", "--no-fail-fast", "-p", INTEGRATION_PACKAGE, "--test", "overlay"])
        .args(["--", "--test-threads=1"])
        .args(&args.test_args)
        .env("OVERLAY_AGENT_BIN", workspace::debug_bin("overlay-agent"))
        .env(MODE_ENV, "kernel");
    eprintln!("xtask: overlay suite again, kernel VXLAN datapath");
    let kernel = exec::exec(&mut kernel);

    // Anything left now was left by the suite itself: remove it, and fail the run.
    let cleanup = match remove_leftovers("after the tests") {
        Ok(0) => Ok(()),
        Ok(n) => Err(anyhow::anyhow!(
            "the test suite left {n} namespace(s), pin(s) or agent process(es) behind (removed now)"
        )),
        Err(e) => Err(e),
    };

    let stages = [
        ("unit tests", unit),
        ("integration tests (eBPF datapath)", integration),
        ("overlay tests (kernel datapath)", kernel),
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
/// config lives in an `ovt-lab-*` directory), `ovt*` network namespaces and
/// `/sys/fs/bpf/overlay-test*` pins. Touches nothing else. Returns how many it found.
fn remove_leftovers(when: &str) -> Result<usize> {
    let agents = test_agents();
    for pid in &agents {
        eprintln!("xtask: killing leftover test agent pid {pid} ({when})");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid may have exited
        // since (ESRCH), which is fine.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let namespaces = test_namespaces(&exec::stdout(Command::new("ip").args(["netns", "list"]))?);
    let pins = test_pins(Path::new(BPFFS))?;
    let found = agents.len() + namespaces.len() + pins.len();
    if namespaces.is_empty() && pins.is_empty() {
        eprintln!("xtask: no leftover test namespaces or bpffs pins {when}");
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

/// Pids of `overlay-agent` processes whose command line names a test lab's config.
fn test_agents() -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("overlay-agent") && c.contains("/ovt-lab-")
            })
        })
        .collect()
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
}
