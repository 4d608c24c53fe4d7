//! Running the `overlay-agent` binary inside a namespace: the daemon
//! ([`AgentProcess`]) and one-shot CLI calls ([`run_cli`]).
//!
//! The child enters the namespace with `setns` in `pre_exec`, between fork
//! and exec. Unlike `ip netns exec`, this does not remount `/sys`, so
//! `/sys/fs/bpf` (and the agent's pins) stay visible; `/sys/class/net` then
//! shows the root namespace's links, so the agent must use netlink for those.

use std::{
    env,
    fs::{self, File, OpenOptions},
    io::{self, Read},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tracing::{debug, info, warn};

use crate::ns::NetNs;

/// Environment variable naming the agent binary, overriding the search.
pub const AGENT_BIN_ENV: &str = "OVERLAY_AGENT_BIN";
/// How long [`AgentProcess::stop`] waits after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`run_cli`] lets a command run before killing it.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// The `overlay-agent` binary: `$OVERLAY_AGENT_BIN` if set, else
/// `target/<profile>/overlay-agent` of the build this test executable belongs
/// to (found from the test executable's path, `target/<profile>/deps/...`,
/// also with a `--target <triple>` level). Panics, saying how to build it, if
/// there is none.
pub fn agent_binary() -> PathBuf {
    if let Some(path) = env::var_os(AGENT_BIN_ENV) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{AGENT_BIN_ENV}={} is not a file",
            path.display()
        );
        return path;
    }
    let exe = env::current_exe().expect("path of the test executable");
    // target/debug/deps/harness-1234 -> target/debug/overlay-agent first,
    // then any profile directory further up.
    for dir in exe.ancestors().skip(1) {
        let candidate = dir.join("overlay-agent");
        if candidate.is_file() {
            return candidate;
        }
        if dir.file_name().is_some_and(|n| n == "target") {
            for profile in ["debug", "release"] {
                let candidate = dir.join(profile).join("overlay-agent");
                if candidate.is_file() {
                    return candidate;
                }
            }
            break;
        }
    }
    panic!(
        "no overlay-agent binary near {}: build it (cargo build -p overlay-agent) or set {AGENT_BIN_ENV}",
        exe.display()
    );
}

/// The `overlay-cni` plugin built with the agent: next to [`agent_binary`]. Panics,
/// saying how to build it, if it is not there.
pub fn cni_binary() -> PathBuf {
    let path = agent_binary().with_file_name("overlay-cni");
    assert!(path.is_file(), "no {}: build it (cargo build -p overlay-cni)", path.display());
    path
}

/// Environment variable naming the upgrade-test variant of the agent (built with
/// overlay-agent's `upgrade-test-variant` feature); `cargo xtask test` sets it.
pub const AGENT_VARIANT_BIN_ENV: &str = "OVERLAY_AGENT_VARIANT_BIN";

/// The upgrade-test variant of `overlay-agent` (`$OVERLAY_AGENT_VARIANT_BIN`). Panics,
/// saying how to build it, if it is not set: the upgrade tests fail rather than skip.
/// Never searched for, so a stale build is never picked up by accident.
pub fn variant_binary() -> PathBuf {
    let Some(path) = env::var_os(AGENT_VARIANT_BIN_ENV) else {
        panic!(
            "{AGENT_VARIANT_BIN_ENV} is not set: the upgrade tests need the upgrade-test variant of the agent. \
             `cargo xtask test` builds it and sets it; by hand: \
             `cargo build -p overlay-agent --bin overlay-agent --features upgrade-test-variant --target-dir target/variant` \
             and {AGENT_VARIANT_BIN_ENV}=$PWD/target/variant/debug/overlay-agent"
        );
    };
    let path = PathBuf::from(path);
    assert!(path.is_file(), "{AGENT_VARIANT_BIN_ENV}={} is not a file", path.display());
    path
}

/// Makes `command` enter the network namespace of `ns` before exec. The
/// returned file must stay open until the command is spawned.
pub fn enter_netns(command: &mut Command, ns: &NetNs) -> File {
    let file =
        File::open(ns.path()).unwrap_or_else(|e| panic!("opening {}: {e}", ns.path().display()));
    let fd = file.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls are allowed:
    // setns(2) is a plain syscall and errno is read without allocating. The fd
    // is O_CLOEXEC, so the program does not inherit it.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    file
}

/// The agent's log file next to its config (`FILE.log`), opened for stdout and stderr.
fn log_files(config: &Path) -> (PathBuf, File, File) {
    let log_path = config.with_extension("log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", log_path.display()));
    let log_err = log.try_clone().expect("clone log file");
    (log_path, log, log_err)
}

/// `PR_SET_PDEATHSIG(SIGKILL)` for the child: it dies with the thread that spawned it.
pub(crate) fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A running agent daemon (`overlay-agent run --config FILE`), its output in
/// `FILE` with the extension `.log`. Dropping it kills the agent if it still
/// runs and, when the test is failing, prints its log.
#[derive(Debug)]
pub struct AgentProcess {
    child: Option<Child>,
    status: Option<ExitStatus>,
    log_path: PathBuf,
    ns_name: String,
}

impl AgentProcess {
    /// Starts `binary run --config config` inside `ns`.
    ///
    /// The agent gets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies if the test
    /// process does. That signal follows the *thread* that spawned it: spawn
    /// from the thread that keeps the `AgentProcess`, not from a short-lived
    /// helper thread.
    pub fn spawn(ns: &NetNs, binary: &Path, config: &Path) -> AgentProcess {
        Self::spawn_with_env(ns, binary, config, &[])
    }

    /// Starts the agent as a person would from a shell: `ip netns exec NS binary run
    /// --config FILE`. Unlike [`AgentProcess::spawn`], `ip netns exec` gives the agent a
    /// private mount namespace with a fresh `/sys` (no bpffs there).
    pub fn spawn_ip_netns_exec(ns: &NetNs, binary: &Path, config: &Path) -> AgentProcess {
        let (log_path, log, log_err) = log_files(config);
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns.name()])
            .arg(binary)
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        die_with_parent(&mut command);
        let child = command.spawn().unwrap_or_else(|e| panic!("ip netns exec {} {}: {e}", ns.name(), binary.display()));
        info!(pid = child.id(), ns = ns.name(), "agent started through ip netns exec");
        AgentProcess { child: Some(child), status: None, log_path, ns_name: ns.name().to_owned() }
    }

    /// [`AgentProcess::spawn`] under `wrapper` (a command that runs the rest of its
    /// arguments, e.g. `setpriv --bounding-set -bpf ...` to take capabilities away).
    pub fn spawn_wrapped(ns: &NetNs, wrapper: &[&str], binary: &Path, config: &Path) -> AgentProcess {
        let (log_path, log, log_err) = log_files(config);
        let mut command = Command::new(wrapper[0]);
        command
            .args(&wrapper[1..])
            .arg(binary)
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let _ns_file = enter_netns(&mut command, ns);
        die_with_parent(&mut command);
        let child = command.spawn().unwrap_or_else(|e| panic!("starting {wrapper:?} {} in {}: {e}", binary.display(), ns.name()));
        info!(pid = child.id(), ns = ns.name(), ?wrapper, "agent started under a wrapper");
        AgentProcess { child: Some(child), status: None, log_path, ns_name: ns.name().to_owned() }
    }

    /// [`AgentProcess::spawn`] with extra environment variables.
    pub fn spawn_with_env(ns: &NetNs, binary: &Path, config: &Path, env: &[(String, String)]) -> AgentProcess {
        let (log_path, log, log_err) = log_files(config);
        let mut command = Command::new(binary);
        command
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .envs(env.iter().map(|(k, v)| (k, v)));
        let _ns_file = enter_netns(&mut command, ns);
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} in {}: {e}", binary.display(), ns.name()));
        info!(pid = child.id(), ns = ns.name(), config = %config.display(), "agent started");
        AgentProcess {
            child: Some(child),
            status: None,
            log_path,
            ns_name: ns.name().to_owned(),
        }
    }

    /// The agent's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where its stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Its exit status, if it has exited (without waiting).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(child) = self.child.as_mut()
        {
            self.status = child.try_wait().expect("waitpid on the agent");
        }
        self.status
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Waits until `what` holds or `timeout` passes (polling every 50 ms);
    /// panics, with the log, if the agent exits meanwhile or time runs out.
    pub fn wait_until(&mut self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if check() {
                return;
            }
            if let Some(status) = self.try_wait() {
                panic!(
                    "agent in {} exited ({status}) while waiting for {what}; log:\n{}",
                    self.ns_name,
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; agent log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits up to [`STOP_TIMEOUT`], then SIGKILLs; returns
    /// how it exited. Calling it again returns the same status.
    pub fn stop(&mut self) -> ExitStatus {
        let grace = crate::hang_guard(STOP_TIMEOUT);
        self.stop_within(grace)
    }

    /// [`AgentProcess::stop`] with another grace period.
    pub fn stop_within(&mut self, grace: Duration) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        let child = self.child.as_mut().expect("agent child");
        let status = terminate(child, grace, "the agent");
        debug!(pid = child.id(), %status, "agent stopped");
        self.status = Some(status);
        status
    }

    /// SIGKILL, as a crash would: the agent gets no chance to clean up.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        let child = self.child.as_mut().expect("agent child");
        child.kill().expect("SIGKILL to the agent");
        let status = child.wait().expect("waitpid on the agent");
        self.status = Some(status);
        status
    }
}

/// SIGTERM to `child` (`what` names it in the logs), then waits up to `grace` for it
/// to exit, then SIGKILLs it; returns how it exited.
pub(crate) fn terminate(child: &mut Child, grace: Duration, what: &str) -> ExitStatus {
    let pid = Pid::from_raw(child.id() as i32);
    if let Err(e) = kill(pid, Signal::SIGTERM) {
        warn!(%pid, error = %e, "SIGTERM to {what}");
    }
    let deadline = Instant::now() + grace;
    loop {
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("waitpid on {what}: {e}")) {
            return status;
        }
        if Instant::now() >= deadline {
            warn!(%pid, ?grace, "{what} ignored SIGTERM; killing it");
            return kill_and_reap(child, what);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILLs `child` and reaps it; returns how it exited.
pub(crate) fn kill_and_reap(child: &mut Child, what: &str) -> ExitStatus {
    if let Err(e) = child.kill() {
        warn!(pid = child.id(), error = %e, "SIGKILL to {what}");
    }
    child.wait().unwrap_or_else(|e| panic!("waitpid on {what}: {e}"))
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && self.status.is_none()
        {
            match child.try_wait() {
                Ok(Some(_)) => {}
                _ => {
                    if let Err(e) = child.kill() {
                        warn!(error = %e, "killing the agent");
                    }
                    if let Err(e) = child.wait() {
                        warn!(error = %e, "reaping the agent");
                    }
                }
            }
        }
        if thread::panicking() {
            eprintln!(
                "---- agent log ({}, in {}) ----\n{}---- end of agent log ----",
                self.log_path.display(),
                self.ns_name,
                self.log()
            );
        }
    }
}

/// What a CLI call printed and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics, showing both outputs, unless the command succeeded.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.success(),
            "command failed ({}):\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `ip netns exec NS binary args...` to completion, as a person would from
/// another shell (a private mount namespace with its own `/sys`).
pub fn run_cli_ip_netns_exec<I, S>(ns: &NetNs, binary: &Path, args: I) -> CliOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut full: Vec<std::ffi::OsString> = vec!["netns".into(), "exec".into(), ns.name().into(), binary.into()];
    full.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
    run_cli(None, Path::new("ip"), full)
}

/// Runs `binary args...` to completion, inside `ns` if given (else in the
/// test's own namespace), killing it after [`CLI_TIMEOUT`].
pub fn run_cli<I, S>(ns: Option<&NetNs>, binary: &Path, args: I) -> CliOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run_cli_with_env(ns, binary, args, &[])
}

/// [`run_cli`] with extra environment variables.
pub fn run_cli_with_env<I, S>(ns: Option<&NetNs>, binary: &Path, args: I, env: &[(&str, &str)]) -> CliOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = Command::new(binary);
    command
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let _ns_file = ns.map(|ns| enter_netns(&mut command, ns));
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", binary.display()));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (status, stdout, stderr) = thread::scope(|scope| {
        let out = scope.spawn(move || read_all(&mut stdout));
        let err = scope.spawn(move || read_all(&mut stderr));
        let deadline = Instant::now() + crate::hang_guard(CLI_TIMEOUT);
        let status = loop {
            if let Some(status) = child.try_wait().expect("waitpid") {
                break status;
            }
            if Instant::now() >= deadline {
                warn!(binary = %binary.display(), "CLI call timed out; killing it");
                if let Err(e) = child.kill() {
                    warn!(error = %e, "killing the CLI call");
                }
                break child.wait().expect("waitpid");
            }
            thread::sleep(Duration::from_millis(10));
        };
        (
            status,
            out.join().expect("stdout reader"),
            err.join().expect("stderr reader"),
        )
    });
    let output = CliOutput {
        status,
        stdout,
        stderr,
    };
    debug!(binary = %binary.display(), ?output, "CLI call done");
    output
}

fn read_all(from: &mut impl Read) -> String {
    let mut bytes = Vec::new();
    if let Err(e) = from.read_to_end(&mut bytes) {
        warn!(error = %e, "reading CLI output");
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
