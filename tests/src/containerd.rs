//! containerd for the CNI tests: Debian's containerd and `ctr`, one daemon per lab host
//! inside that host's namespace (cgroup v2 mounted on its private `/sys/fs/cgroup`, as
//! for dockerd; root, state and socket in the lab directory; the CRI plugin off).
//! `ctr run --cni` is the runtime that calls the CNI plugin: it reads its network
//! config from `/etc/cni/net.d` and finds plugins in `/opt/cni/bin`, so every `ctr`
//! call runs in a private mount namespace where an overlay on `/etc` adds the lab's
//! `net.d` and the lab's `opt` directory is bind-mounted on `/opt`; nothing outside
//! the namespace changes. Containers run from a busybox root filesystem (`--rootfs`);
//! `--cpu-shares 0`, because this machine's cgroup v2 hierarchy has no cpu controller.
//!
//! Dropping a [`Containerd`] kills and removes its containers, stops it (SIGTERM, then
//! SIGKILL) and kills whatever it left (shims) by its unique directory.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use tracing::warn;

use crate::{
    agent::CliOutput,
    daemon::{Daemon, kill_processes_naming, output},
    docker::busybox_rootfs,
    ns::NetNs,
};

pub const CONTAINERD: &str = "/usr/bin/containerd";
pub const CTR: &str = "/usr/bin/ctr";

#[derive(Debug)]
pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    daemon: Daemon,
}

impl Containerd {
    /// Starts containerd in `ns` with everything under `dir`, and waits until it answers.
    pub fn start(ns: &NetNs, dir: &Path) -> Containerd {
        assert!(Path::new(CONTAINERD).is_file(), "{CONTAINERD} is missing: `cargo xtask setup` installs containerd (with docker.io)");
        for sub in ["etc-up/cni/net.d", "etc-work", "opt/cni/bin"] {
            fs::create_dir_all(dir.join(sub)).unwrap_or_else(|e| panic!("creating {}: {e}", dir.join(sub).display()));
        }
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        let d = dir.display();
        fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n[grpc]\n  address = \"{}\"\n",
                socket.display()
            ),
        )
        .expect("containerd config");
        let script = format!("mount -t cgroup2 none /sys/fs/cgroup && exec {CONTAINERD} --config {}", config.display());
        let daemon = Daemon::spawn("containerd", ns.name(), &script, &dir.join("containerd.log"));
        let mut c = Containerd { dir: dir.to_owned(), socket, daemon };
        let (ns, dir, socket) = (c.daemon.ns.clone(), c.dir.clone(), c.socket.clone());
        c.daemon.wait_answering(|| ctr(&ns, &dir, &socket, &["version"]).success());
        c
    }

    /// Installs a CNI plugin binary and the network config list `ctr --cni` uses.
    pub fn install_cni(&self, plugin: &Path, conflist: &serde_json::Value) {
        let name = plugin.file_name().expect("plugin file name");
        fs::copy(plugin, self.dir.join("opt/cni/bin").join(name)).expect("installing the CNI plugin");
        fs::write(self.dir.join("etc-up/cni/net.d/10-overlay.conflist"), conflist.to_string()).expect("writing the CNI config");
    }

    /// A fresh busybox root filesystem for one container.
    pub fn rootfs(&self, name: &str) -> PathBuf {
        busybox_rootfs(&self.dir.join("rootfs").join(name))
    }

    /// `ctr --address <this daemon> args...`, in the host's namespace with the lab's CNI
    /// config and plugins in place.
    pub fn ctr(&self, args: &[&str]) -> CliOutput {
        ctr(&self.daemon.ns, &self.dir, &self.socket, args)
    }

    fn remove_containers(&self) {
        let tasks = self.ctr(&["task", "ls", "-q"]).stdout;
        for id in tasks.split_whitespace() {
            let _killed = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        }
        for id in tasks.split_whitespace() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.ctr(&["task", "rm", id]).success() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(100));
            }
        }
        for id in self.ctr(&["container", "ls", "-q"]).stdout.split_whitespace() {
            let out = self.ctr(&["container", "rm", id]);
            if !out.success() {
                warn!(container = id, stderr = %out.stderr, "removing a test container");
            }
        }
    }
}

fn ctr(ns: &str, dir: &Path, socket: &Path, args: &[&str]) -> CliOutput {
    let d = dir.display();
    let script = format!(
        "mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/etc-up,workdir={d}/etc-work /etc && \
         mount --bind {d}/opt /opt && exec {CTR} --address {} \"$@\"",
        socket.display()
    );
    output(Command::new("ip").args(["netns", "exec", ns, "sh", "-c", &script, "sh"]).args(args))
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_containers();
        self.daemon.stop(Duration::from_secs(10));
        kill_processes_naming(&self.dir);
        self.daemon.report_if_panicking();
    }
}
