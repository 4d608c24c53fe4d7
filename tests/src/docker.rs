//! dockerd for the tests: Debian's `docker.io`, one daemon per lab host, inside that
//! host's network namespace (as `../shared/RUNTIMES.md` found it runs here): a private
//! mount namespace (`ip netns exec`) with cgroup v2 mounted on its own `/sys/fs/cgroup`,
//! a tmpfs on its own `/run`, and the lab host's plugin directory bind-mounted on its
//! `/run/docker/plugins`, so that each daemon finds its own host's agent under the
//! default plugin name and nothing outside the namespace changes. Bridge, iptables and
//! ip6tables are off; storage is `vfs`; data root, exec root and socket are in the lab
//! directory. Images are made offline: a busybox root filesystem, `docker import`ed.
//!
//! Dropping a [`Dockerd`] removes its containers, stops it (SIGTERM, then SIGKILL) and
//! kills whatever it left (containerd shims) by its unique directory; the log is
//! printed when the test is failing.

use std::{
    fs::{self, OpenOptions},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use tracing::warn;

use crate::{
    agent::{CliOutput, die_with_parent, terminate},
    ns::NetNs,
};

pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// Debian's client, the daemon's version (another `docker` may come first in PATH).
pub const DOCKER: &str = "/usr/bin/docker";
pub const BUSYBOX: &str = "/usr/bin/busybox";
/// The image [`Dockerd::import_busybox`] makes.
pub const IMAGE: &str = "ovt-busybox:1";
/// Applets the image links to busybox.
const APPLETS: &[&str] = &["sh", "ping", "ip", "sleep", "cat", "nc", "md5sum", "dd", "head", "wc", "ifconfig", "true"];

#[derive(Debug)]
pub struct Dockerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    plugin_dir: PathBuf,
    ns: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Dockerd {
    /// Starts dockerd in `ns` with everything under `dir`, its plugins from
    /// `plugin_dir`, and waits until it answers.
    pub fn start(ns: &NetNs, dir: &Path, plugin_dir: &Path) -> Dockerd {
        assert!(Path::new(DOCKERD).is_file(), "{DOCKERD} is missing: `cargo xtask setup` installs docker.io");
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        fs::create_dir_all(plugin_dir).unwrap_or_else(|e| panic!("creating {}: {e}", plugin_dir.display()));
        let mut d = Dockerd {
            dir: dir.to_owned(),
            socket: dir.join("docker.sock"),
            plugin_dir: plugin_dir.to_owned(),
            ns: ns.name().to_owned(),
            log: dir.join("dockerd.log"),
            child: None,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let d = self.dir.display();
        let script = format!(
            "mount -t cgroup2 none /sys/fs/cgroup && mount -t tmpfs tmpfs /run && mkdir -p /run/docker/plugins && \
             mount --bind {plugins} /run/docker/plugins && exec {DOCKERD} --data-root {d}/data --exec-root {d}/exec \
             -H unix://{sock} --pidfile {d}/dockerd.pid --bridge=none --iptables=false --ip6tables=false \
             --storage-driver=vfs --shutdown-timeout=5",
            plugins = self.plugin_dir.display(),
            sock = self.socket.display(),
        );
        let log = OpenOptions::new().create(true).append(true).open(&self.log).expect("dockerd log");
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.ns, "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        die_with_parent(&mut command);
        self.child = Some(command.spawn().expect("spawning dockerd"));
        let deadline = Instant::now() + crate::hang_guard(Duration::from_secs(30));
        while !self.docker(&["version", "--format", "{{.Server.Version}}"]).success() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("dockerd exited ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "dockerd did not answer within 30 s:\n{}", self.log());
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `docker -H <this daemon> args...`.
    pub fn docker(&self, args: &[&str]) -> CliOutput {
        let out = Command::new(DOCKER)
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {DOCKER}: {e}"));
        CliOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `docker args...`, which must succeed; its trimmed output.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        out.assert_success();
        out.stdout.trim().to_owned()
    }

    /// Makes [`IMAGE`]: a root filesystem of Debian's static busybox, imported.
    pub fn import_busybox(&self) {
        let root = busybox_rootfs(&self.dir.join("rootfs"));
        let tar = self.dir.join("rootfs.tar");
        let status = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status().expect("tar");
        assert!(status.success(), "tar of the busybox root failed");
        self.ok(&["import", &tar.display().to_string(), IMAGE]);
    }

    /// Stops dockerd (SIGTERM; it stops its containers first), then SIGKILL.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        Some(terminate(&mut child, crate::hang_guard(Duration::from_secs(20)), "dockerd"))
    }

    /// Stops and starts dockerd again with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

/// A root filesystem at `root` with Debian's static busybox and its applets, and `/tmp`;
/// returns `root`.
pub fn busybox_rootfs(root: &Path) -> PathBuf {
    fs::create_dir_all(root.join("bin")).expect("rootfs");
    fs::create_dir_all(root.join("tmp")).expect("rootfs /tmp");
    fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap_or_else(|e| panic!("copying {BUSYBOX} (busybox-static): {e}"));
    for applet in APPLETS {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).expect("applet link");
        }
    }
    root.to_owned()
}

/// Kills every process whose command line names `dir` (what a daemon of the tests
/// left: containerd, shims); returns how many.
pub(crate) fn kill_processes_naming(dir: &Path) -> usize {
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

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let ids = self.docker(&["ps", "-aq"]).stdout;
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let out = self.docker(&args);
                if !out.success() {
                    warn!(stderr = %out.stderr, "removing the test's containers");
                }
            }
            self.stop();
        }
        kill_processes_naming(&self.dir);
        if thread::panicking() {
            eprintln!("---- dockerd log ({}, in {}) ----\n{}---- end of dockerd log ----", self.log.display(), self.ns, self.log());
        }
    }
}
