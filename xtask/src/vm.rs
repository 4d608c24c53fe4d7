//! `cargo xtask vm-test`: the integration suite on other kernels, each booted in a QEMU
//! VM with virtme-ng over a read-only view of this machine's root filesystem, so the
//! test binaries built here run unmodified inside.
//!
//! Kernels are Debian's own packages (bullseye 5.10, bookworm 6.1, trixie 6.12, the
//! newest in trixie-backports), fetched with `apt-get download` through a private sources
//! list and cached under `~/.cache/overlay-vm`. Results come back through a directory
//! the guest may write; the matrix goes to the terminal and `target/vm-test/matrix.json`.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{build, exec, setup, workspace};

/// virtme-ng release known to boot Debian's kernels here.
const VIRTME_NG: &str = "virtme-ng==1.42";
/// What virtme-ng needs on the host.
const APT_PACKAGES: &[&str] = &["qemu-system-x86", "udev", "busybox-static", "kmod", "iproute2", "util-linux"];
const MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";
/// A sensible subset for emulated CPUs: ping across hosts, the 64 MiB transfer (GSO and
/// decapsulation on old kernels), endpoint removal, an L3 network (routing, a late host).
const DEFAULT_TESTS: &[&str] = &["same_network_pairs", "large_tcp_transfers", "endpoint_del", "l3_routed_pairs"];
/// From the restart suite: adoption after SIGTERM, and the upgrade to a build with other
/// programs and another map layout and back. On kernels before 6.6 these are the only
/// tests of restarting over the netlink (clsact + cls_bpf) attachment: the filter
/// replaced on the same handle and priority, the pinned maps adopted.
const DEFAULT_RESTART_TESTS: &[&str] = &["sigterm_and_start", "upgrade_to_another_build"];

/// The kernels of the matrix, oldest first: (name, Debian suite).
const KERNELS: [(&str, &str); 4] = [("5.10", "bullseye"), ("6.1", "bookworm"), ("6.12", "trixie"), ("newest", "trixie-backports")];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Comma-separated kernels: 5.10, 6.1, 6.12, newest (trixie-backports); or `all`, or
    /// `ci` (the oldest and the newest).
    #[arg(long, default_value = "all")]
    pub kernel: String,
    /// Datapath mode of the agents in the guest.
    #[arg(long, default_value = "auto", value_parser = ["auto", "ebpf", "kernel"])]
    pub mode: String,
    /// Test name filters for the overlay suite (default: a subset sized for emulation).
    #[arg(long, value_delimiter = ',')]
    pub tests: Vec<String>,
    /// Test name filters for the restart suite (default: SIGTERM and the upgrade);
    /// `none` skips it.
    #[arg(long, value_delimiter = ',')]
    pub restart_tests: Vec<String>,
    /// Kill a VM after this many seconds.
    #[arg(long, default_value_t = 1200)]
    pub timeout: u64,
    /// Use KVM (it hangs on some hosts; TCG emulation is the default).
    #[arg(long)]
    pub kvm: bool,
}

fn cache_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("overlay-vm"))
}

fn selected(arg: &str) -> Result<Vec<(&'static str, &'static str)>> {
    let names: Vec<&str> = match arg {
        "all" => KERNELS.iter().map(|k| k.0).collect(),
        "ci" => vec![KERNELS[0].0, KERNELS[3].0],
        list => list.split(',').map(str::trim).collect(),
    };
    names
        .iter()
        .map(|n| {
            let n = match *n {
                "oldest" => "5.10",
                "7" | "7.0" | "7.x" | "backports" => "newest",
                other => other,
            };
            KERNELS.iter().copied().find(|k| k.0 == n).ok_or_else(|| {
                anyhow!("unknown kernel {n:?}: choose from 5.10, 6.1, 6.12, newest (or all, ci)")
            })
        })
        .collect()
}

/// apt options that use a private sources list and state, leaving the system's alone.
fn apt_opts(cache: &Path) -> Vec<String> {
    vec![
        format!("-o=Dir::Etc::sourcelist={}", cache.join("sources.list").display()),
        "-o=Dir::Etc::sourceparts=-".into(),
        format!("-o=Dir::State::Lists={}", cache.join("lists").display()),
        format!("-o=Dir::Cache={}", cache.join("apt-cache").display()),
        "-o=APT::Get::List-Cleanup=0".into(),
    ]
}

fn apt_update(cache: &Path) -> Result<()> {
    fs::create_dir_all(cache.join("lists/partial"))?;
    fs::create_dir_all(cache.join("apt-cache/archives/partial"))?;
    let key = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]";
    let mut sources = String::new();
    for (_, suite) in KERNELS {
        writeln!(sources, "deb {key} {MIRROR} {suite} main")?;
    }
    writeln!(sources, "deb {key} {SECURITY_MIRROR} bullseye-security main")?;
    fs::write(cache.join("sources.list"), sources)?;
    eprintln!("xtask: refreshing the kernel package lists ({})", KERNELS.map(|k| k.1).join(", "));
    exec::exec(setup::apt_get().args(apt_opts(cache)).arg("update"))
}

/// The concrete kernel packages the suite's `linux-image-amd64` points at: the image
/// (and, for split packages, its binary and modules packages).
fn packages_for(cache: &Path, suite: &str) -> Result<(String, Vec<String>)> {
    let show = exec::stdout(Command::new("apt-cache").args(apt_opts(cache)).args(["show", &format!("linux-image-amd64/{suite}")]))?;
    let depends = show.lines().find(|l| l.starts_with("Depends:")).ok_or_else(|| anyhow!("no Depends in linux-image-amd64/{suite}"))?;
    let image = depends
        .trim_start_matches("Depends:")
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap_or_default())
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .ok_or_else(|| anyhow!("no kernel image in {depends}"))?
        .to_string();
    let version = image.trim_start_matches("linux-image-").to_string();
    let mut pkgs = vec![image.clone()];
    let deps = exec::stdout(Command::new("apt-cache").args(apt_opts(cache)).args(["depends", &image]))?;
    for split in [format!("linux-binary-{version}"), format!("linux-modules-{version}")] {
        if deps.contains(&split) {
            pkgs.push(split);
        }
    }
    Ok((version, pkgs))
}

/// Downloads, extracts and depmods one kernel; returns (version, vmlinuz). Cached.
fn fetch_kernel(cache: &Path, suite: &str) -> Result<(String, PathBuf)> {
    let (version, pkgs) = packages_for(cache, suite)?;
    let root = cache.join("kernels").join(&version);
    let vmlinuz = [root.join(format!("boot/vmlinuz-{version}")), root.join(format!("usr/lib/modules/{version}/vmlinuz"))];
    if let Some(found) = vmlinuz.iter().find(|p| p.exists()) {
        eprintln!("xtask: kernel {version} ({suite}) cached");
        return Ok((version, found.clone()));
    }
    let debs = cache.join("debs");
    fs::create_dir_all(&debs)?;
    eprintln!("xtask: downloading kernel {version} ({suite}): {}", pkgs.join(" "));
    exec::exec(setup::apt_get().current_dir(&debs).args(apt_opts(cache)).arg("download").args(&pkgs))?;
    let staging = cache.join("kernels").join(format!(".{version}.partial"));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    for entry in fs::read_dir(&debs)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if pkgs.iter().any(|p| name.starts_with(&format!("{p}_"))) {
            exec::exec(Command::new("dpkg-deb").arg("-x").arg(&path).arg(&staging))?;
        }
    }
    // Newer packages install under /usr/lib/modules; depmod and virtme look in /lib.
    if !staging.join("lib").exists() && staging.join("usr/lib/modules").exists() {
        std::os::unix::fs::symlink("usr/lib", staging.join("lib"))?;
    }
    exec::exec(Command::new("depmod").args(["-a", "-b"]).arg(&staging).arg(&version))?;
    fs::rename(&staging, &root)?;
    let found = vmlinuz.iter().find(|p| p.exists()).ok_or_else(|| anyhow!("no vmlinuz in the {version} packages"))?;
    Ok((version, found.clone()))
}

/// virtme-ng in a venv of its own; returns the `vng` path.
fn ensure_vng(cache: &Path) -> Result<PathBuf> {
    let venv = cache.join("venv");
    let vng = venv.join("bin/vng");
    if let Ok(out) = Command::new(&vng).arg("--version").output()
        && String::from_utf8_lossy(&out.stdout).contains("1.42")
    {
        eprintln!("xtask: virtme-ng 1.42 present");
        return Ok(vng);
    }
    eprintln!("xtask: installing {VIRTME_NG} into {}", venv.display());
    exec::exec(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    exec::exec(Command::new(venv.join("bin/pip")).args(["install", "--quiet", VIRTME_NG]))?;
    Ok(vng)
}

/// The executable of integration test file `name` (`overlay`, `restart`), built for the
/// host (the guest runs it as is).
fn test_binary(name: &str) -> Result<PathBuf> {
    let out = exec::stdout(workspace::cargo().args(["test", "-p", "integration-tests", "--test", name, "--no-run", "--message-format=json"]))?;
    let tag = format!("\"name\":\"{name}\"");
    out.lines()
        .filter(|l| l.contains("\"executable\":\"") && l.contains(&tag))
        .find_map(|l| l.split("\"executable\":\"").nth(1)?.split('"').next().map(PathBuf::from))
        .ok_or_else(|| anyhow!("cargo did not report the {name} test executable"))
}

const GUEST_SCRIPT: &str = r#"#!/bin/sh
# Runs inside the VM. $1 output dir, $2 datapath mode, $3 overlay test binary, $4 agent,
# $5.. overlay filters. $RESTART_TESTS (restart test binary), $VARIANT (the upgrade-test
# build of the agent) and $RESTART_FILTERS (empty: skip) for the restart suite.
out=$1; mode=$2; tests=$3; agent=$4; shift 4
{
  mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
  mkdir -p /run/netns
  for m in veth vxlan bridge sch_ingress cls_bpf dummy; do modprobe $m 2>/dev/null; done
  echo "kernel $(uname -r)"
  # Which datapath does `auto` choose on this kernel, and why: one agent on a dummy underlay.
  ip netns add vmprobe && ip -n vmprobe link add ul0 type dummy \
    && ip -n vmprobe addr add 198.51.100.1/24 dev ul0 && ip -n vmprobe link set ul0 up
  cat > /tmp/vmprobe.toml <<CFG
node_name = "vmprobe"
underlay_interface = "ul0"
state_dir = "/tmp/vmprobe-state"
bpffs_dir = "/sys/fs/bpf/overlay-test-vmprobe"
[[network]]
name = "blue"
vni = 42
subnet = "10.0.10.0/24"
[store]
backend = "dir"
path = "/tmp/vmprobe-store"
[datapath]
mode = "auto"
CFG
  nsenter --net=/run/netns/vmprobe "$agent" --config /tmp/vmprobe.toml run > "$out/probe-agent.log" 2>&1 &
  pid=$!
  i=0
  while [ $i -lt 300 ]; do
    "$agent" --config /tmp/vmprobe.toml status --json > "$out/status.json" 2>/dev/null && break
    sleep 1; i=$((i+1))
  done
  # `down` removes what the probe made (SIGTERM would leave its datapath running).
  "$agent" --config /tmp/vmprobe.toml down > /dev/null 2>&1 || kill -TERM $pid
  wait $pid; ip netns del vmprobe
  start=$(date +%s)
  OVERLAY_AGENT_BIN="$agent" OVERLAY_TEST_DATAPATH="$mode" OVERLAY_TEST_SLOW="${OVERLAY_TEST_SLOW:-1}" \
    "$tests" --test-threads=1 "$@"
  rc=$?
  if [ -n "$RESTART_FILTERS" ]; then
    echo "restart suite: $RESTART_FILTERS"
    # shellcheck disable=SC2086 # the filters are words
    OVERLAY_AGENT_BIN="$agent" OVERLAY_AGENT_VARIANT_BIN="$VARIANT" OVERLAY_TEST_DATAPATH="$mode" \
      OVERLAY_TEST_SLOW="${OVERLAY_TEST_SLOW:-1}" "$RESTART_TESTS" --test-threads=1 $(echo "$RESTART_FILTERS" | tr , ' ')
    restart_rc=$?
    [ $rc -eq 0 ] && rc=$restart_rc
  fi
  echo $rc > "$out/rc"
  echo "tests took $(( $(date +%s) - start ))s"
  dmesg > "$out/dmesg" 2>&1
} > "$out/log" 2>&1
"#;

#[derive(Debug, serde::Serialize)]
struct Outcome {
    kernel: String,
    version: String,
    mode: String,
    result: String,
    datapath: String,
    reason: String,
    seconds: u64,
    log: PathBuf,
}

/// The part of the probe agent's `status --json` the matrix reports.
#[derive(Debug, PartialEq, Eq, serde::Deserialize)]
struct ProbeDatapath {
    mode: String,
    detail: String,
}

/// The `datapath` object of the probe agent's `status --json`, if it is there.
fn probe_datapath(json: &str) -> Option<ProbeDatapath> {
    #[derive(serde::Deserialize)]
    struct Status {
        datapath: ProbeDatapath,
    }
    serde_json::from_str::<Status>(json).ok().map(|s| s.datapath)
}

/// What every guest runs: private copies of the binaries (see [`execute`]) and the test
/// name filters of each suite (an empty `restart_filters` skips the restart suite).
struct Guest {
    script: PathBuf,
    overlay_tests: PathBuf,
    restart_tests: PathBuf,
    agent: PathBuf,
    variant: PathBuf,
    filters: Vec<String>,
    restart_filters: Vec<String>,
}

fn run_kernel(vng: &Path, name: &str, version: &str, vmlinuz: &Path, args: &Args, guest: &Guest, work: &Path) -> Result<Outcome> {
    let out = work.join(format!("{version}-{}", args.mode));
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    // Emulation is many times slower: give the harness's hang guards room.
    let slow = if args.kvm { 1 } else { 10 };
    // Restart filters travel comma-separated (one word through vng's shell).
    let exec_line = format!(
        "env OVERLAY_TEST_SLOW={slow} RESTART_TESTS={} VARIANT={} RESTART_FILTERS={} {} {} {} {} {} {}",
        guest.restart_tests.display(),
        guest.variant.display(),
        guest.restart_filters.join(","),
        guest.script.display(),
        out.display(),
        args.mode,
        guest.overlay_tests.display(),
        guest.agent.display(),
        guest.filters.join(" ")
    );
    let mut cmd = Command::new(vng);
    // vng runs its helpers (virtme-run) through PATH.
    let venv_bin = vng.parent().unwrap_or(Path::new("."));
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{}:{path}", venv_bin.display()));
    cmd.arg("--run").arg(vmlinuz).args(["--memory", "2G", "--cpus", "2"]).arg("--rwdir").arg(&out).args(["--exec", &exec_line]);
    if !args.kvm {
        cmd.arg("--disable-kvm");
    }
    cmd.stdin(Stdio::null()).stdout(fs::File::create(out.join("vng.log"))?).stderr(fs::File::create(out.join("vng.err"))?);
    eprintln!(
        "xtask: booting {version} ({}) for the {} tests and the restart suite's {} in {} mode",
        if args.kvm { "KVM" } else { "TCG" },
        guest.filters.join(", "),
        if guest.restart_filters.is_empty() { "none".to_owned() } else { guest.restart_filters.join(", ") },
        args.mode
    );
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {}", exec::command_line(&cmd)))?;
    let limit = Duration::from_secs(args.timeout);
    let timed_out = loop {
        if child.try_wait()?.is_some() {
            break false;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let probe = probe_datapath(&fs::read_to_string(out.join("status.json")).unwrap_or_default());
    let rc = fs::read_to_string(out.join("rc")).ok().and_then(|s| s.trim().parse::<i32>().ok());
    let result = match (timed_out, rc) {
        (true, _) => format!("timed out after {}s", args.timeout),
        (false, Some(0)) => "passed".into(),
        (false, Some(rc)) => format!("failed (exit {rc})"),
        (false, None) => "failed (no result: the guest did not finish)".into(),
    };
    Ok(Outcome {
        kernel: name.into(),
        version: version.into(),
        mode: args.mode.clone(),
        result,
        datapath: probe.as_ref().map_or_else(|| "?".into(), |p| p.mode.clone()),
        reason: probe.map_or_else(|| "(no status)".into(), |p| p.detail),
        seconds: start.elapsed().as_secs(),
        log: out.join("log"),
    })
}

/// A VM that ended without the guest script ever writing its log (QEMU or virtme-ng
/// failed before the guest ran anything).
fn never_started(o: &Outcome) -> bool {
    o.result.starts_with("failed") && !o.log.exists()
}

pub fn execute(args: &Args) -> Result<()> {
    let kernels = selected(&args.kernel)?;
    setup::run()?;
    setup::ensure_apt(APT_PACKAGES)?;
    build::build(false)?;
    // The guest runs the binaries over 9p from this machine's filesystem: give it private
    // copies, so a rebuild during a (long, emulated) run cannot change them under it.
    let work = workspace::target_dir().join("vm-test");
    let bin = work.join(format!("bin-{}", std::process::id()));
    fs::create_dir_all(&bin)?;
    let guest = Guest {
        script: work.join("guest.sh"),
        overlay_tests: bin.join("overlay-tests"),
        restart_tests: bin.join("restart-tests"),
        agent: bin.join("overlay-agent"),
        variant: bin.join("overlay-agent-variant"),
        filters: if args.tests.is_empty() { DEFAULT_TESTS.iter().map(|s| s.to_string()).collect() } else { args.tests.clone() },
        restart_filters: match args.restart_tests.as_slice() {
            [] => DEFAULT_RESTART_TESTS.iter().map(|s| s.to_string()).collect(),
            [none] if none == "none" => Vec::new(),
            some => some.to_vec(),
        },
    };
    fs::copy(test_binary("overlay")?, &guest.overlay_tests).context("copying the overlay test binary")?;
    fs::copy(workspace::debug_bin("overlay-agent"), &guest.agent).context("copying the agent")?;
    if !guest.restart_filters.is_empty() {
        fs::copy(test_binary("restart")?, &guest.restart_tests).context("copying the restart test binary")?;
        // The restart suite's upgrade test switches to this build and back.
        fs::copy(build::build_variant()?, &guest.variant).context("copying the upgrade-test variant")?;
    }
    let cache = cache_dir()?;
    fs::create_dir_all(&cache)?;
    let vng = ensure_vng(&cache)?;
    apt_update(&cache)?;
    fs::write(&guest.script, GUEST_SCRIPT)?;
    fs::set_permissions(&guest.script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;

    let mut outcomes = Vec::new();
    for (name, suite) in kernels {
        let (version, vmlinuz) = fetch_kernel(&cache, suite)?;
        let mut o = run_kernel(&vng, name, &version, &vmlinuz, args, &guest, &work)?;
        if never_started(&o) {
            // Seen once on this machine: QEMU gone within seconds, nothing logged by vng
            // or the guest. That is the emulator, not the kernel under test: one retry.
            eprintln!("xtask: {version}: the VM exited after {}s without running the guest script; booting it once more", o.seconds);
            o = run_kernel(&vng, name, &version, &vmlinuz, args, &guest, &work)?;
        }
        eprintln!("xtask: {version}: {} ({} datapath; {}s)", o.result, o.datapath, o.seconds);
        outcomes.push(o);
    }

    let mut table = String::from("\nkernel                   mode    result                          auto/used datapath  time   why\n");
    for o in &outcomes {
        writeln!(table, "{:<24} {:<7} {:<31} {:<19} {:>4}s  {}", o.version, o.mode, o.result, o.datapath, o.seconds, o.reason)?;
    }
    println!("{table}");
    let json = serde_json::to_string_pretty(&outcomes)?;
    let matrix = work.join("matrix.json");
    fs::write(&matrix, json)?;
    println!("matrix written to {}", matrix.display());
    let failed: Vec<_> = outcomes.iter().filter(|o| o.result != "passed").map(|o| format!("{} ({})", o.version, o.log.display())).collect();
    println!("vm-test: {} passed, {} failed", outcomes.len() - failed.len(), failed.len());
    let _ = fs::remove_dir_all(&bin);
    if !failed.is_empty() {
        bail!("kernels that did not pass: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{ProbeDatapath, probe_datapath};

    #[test]
    fn reads_the_datapath_of_status_json() {
        // The shape of `overlay-agent status --json` (fields trimmed), with an escaped quote.
        let status = r#"{"node":"vmprobe","underlay_mtu":1500,"datapath":{"mode":"ebpf","detail":"tcx attach, flags \"L2_ETH\" yes"},"networks":[{"vni":42}],"peers":[]}"#;
        assert_eq!(
            probe_datapath(status),
            Some(ProbeDatapath { mode: "ebpf".into(), detail: r#"tcx attach, flags "L2_ETH" yes"#.into() })
        );
        assert_eq!(probe_datapath(r#"{"node":"vm"}"#), None);
        assert_eq!(probe_datapath("not json"), None);
    }
}
