//! What the harness's container-runtime daemons (dockerd, containerd) share: each runs
//! as `sh -c SCRIPT` under `ip netns exec` (so its mounts stay in a private mount
//! namespace), logs to a file, dies with the test thread that started it, is waited for
//! until it answers, and is stopped with SIGTERM, then SIGKILL. What such a daemon
//! leaves (shims) is found and killed by its unique directory.

use std::{
    fs::{self, OpenOptions},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use tracing::warn;

use crate::agent::{CliOutput, die_with_parent, terminate};

#[derive(Debug)]
pub struct Daemon {
    what: &'static str,
    pub ns: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Starts `script` in namespace `ns`, its output appended to `log`.
    pub fn spawn(what: &'static str, ns: &str, script: &str, log: &Path) -> Daemon {
        let out = OpenOptions::new().create(true).append(true).open(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns, "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out);
        die_with_parent(&mut command);
        let child = command.spawn().unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        Daemon { what, ns: ns.to_owned(), log: log.to_owned(), child: Some(child) }
    }

    /// Waits until `answers` says it does (up to 30 s, scaled by the hang guard);
    /// panics with the log if it exits or never answers.
    pub fn wait_answering(&mut self, mut answers: impl FnMut() -> bool) {
        let deadline = Instant::now() + crate::hang_guard(Duration::from_secs(30));
        while !answers() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("{} exited ({status}):\n{}", self.what, self.log());
            }
            assert!(Instant::now() < deadline, "{} did not answer within 30 s:\n{}", self.what, self.log());
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it (SIGTERM, up to `grace`, then SIGKILL); `None` if already stopped.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        Some(terminate(&mut child, crate::hang_guard(grace), self.what))
    }

    /// Prints the log when the test is failing.
    pub fn report_if_panicking(&self) {
        if thread::panicking() {
            eprintln!("---- {} log ({}, in {}) ----\n{}---- end of {} log ----", self.what, self.log.display(), self.ns, self.log(), self.what);
        }
    }
}

/// Runs a client command to completion.
pub fn output(command: &mut Command) -> CliOutput {
    let out = command.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    CliOutput::from(out)
}

impl From<Output> for CliOutput {
    fn from(out: Output) -> Self {
        CliOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Kills every process whose command line names `dir` (what a test daemon left:
/// containerd, shims); returns how many.
pub fn kill_processes_naming(dir: &Path) -> usize {
    let needle = dir.display().to_string();
    let mut killed = 0;
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            warn!(pid, "killing a process a test daemon left behind");
            let _gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            killed += 1;
        }
    }
    killed
}
