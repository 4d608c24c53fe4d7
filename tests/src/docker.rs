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
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::Duration,
};

use tracing::warn;

use crate::{
    agent::CliOutput,
    daemon::{Daemon, kill_processes_naming, output},
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
    daemon: Option<Daemon>,
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
            daemon: None,
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
        let mut daemon = Daemon::spawn("dockerd", &self.ns, &script, &self.dir.join("dockerd.log"));
        let socket = self.socket.clone();
        daemon.wait_answering(|| docker(&socket, &["version", "--format", "{{.Server.Version}}"]).success());
        self.daemon = Some(daemon);
    }

    /// `docker -H <this daemon> args...`.
    pub fn docker(&self, args: &[&str]) -> CliOutput {
        docker(&self.socket, args)
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
        self.daemon.as_mut()?.stop(Duration::from_secs(20))
    }

    /// Stops and starts dockerd again with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

fn docker(socket: &Path, args: &[&str]) -> CliOutput {
    output(Command::new(DOCKER).arg("-H").arg(format!("unix://{}", socket.display())).args(args))
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

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.daemon.as_ref().is_some_and(|_| self.docker(&["version"]).success()) {
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
        }
        self.stop();
        kill_processes_naming(&self.dir);
        if let Some(d) = &self.daemon {
            d.report_if_panicking();
        }
    }
}
