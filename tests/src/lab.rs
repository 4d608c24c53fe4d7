//! A whole overlay lab: an [`Underlay`], one agent per host (real `overlay-agent`
//! processes inside the host namespaces), containers (namespaces) plugged in with the
//! CLI, a shared `dir` store. Used by the integration tests and by `overlay-lab`
//! (`cargo xtask run`).
//!
//! Everything is removed on drop, also when a test fails: agents are stopped with
//! SIGTERM (then killed), leftover pins under the lab's own bpffs directory are
//! removed, and the namespaces' guards delete them.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::ExitStatus,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use overlay_agent::{config::DatapathMode, datapath::pinned::MapDump, mac::MacAddr};
use tracing::warn;

use crate::{
    NetNs,
    agent::{AgentProcess, CliOutput, agent_binary, run_cli},
    topo::{Host, Underlay},
};

/// A network every agent of the lab serves.
#[derive(Debug, Clone, Copy)]
pub struct NetworkDef {
    pub name: &'static str,
    pub vni: u32,
    pub subnet: &'static str,
    /// `Some(node_prefix_len)`: an L3 network (`mode = "l3"`), each host routing a
    /// node subnet of that length; `None`: L2.
    pub l3: Option<u8>,
}

pub const BLUE: NetworkDef = NetworkDef { name: "blue", vni: 42, subnet: "10.0.10.0/24", l3: None };
pub const RED: NetworkDef = NetworkDef { name: "red", vni: 43, subnet: "10.0.20.0/24", l3: None };
/// An L3 network: a /24 per host out of 10.50.0.0/16.
pub const ROUTED: NetworkDef = NetworkDef { name: "routed", vni: 50, subnet: "10.50.0.0/16", l3: Some(24) };
/// A second L3 network, for isolation.
pub const ROUTED2: NetworkDef = NetworkDef { name: "routed2", vni: 51, subnet: "10.51.0.0/16", l3: Some(24) };

/// Root of every lab's pins; `cargo xtask test` removes leftovers of crashed runs.
pub const BPFFS_ROOT_PREFIX: &str = "/sys/fs/bpf/overlay-test-";

/// Environment variable choosing the datapath mode of every lab agent (`ebpf` if
/// unset): `cargo xtask test` runs the suite once per mode.
pub const MODE_ENV: &str = "OVERLAY_TEST_DATAPATH";

/// The mode the suite runs in (see [`MODE_ENV`]).
pub fn suite_mode() -> DatapathMode {
    match std::env::var(MODE_ENV).as_deref() {
        Ok("kernel") => DatapathMode::Kernel,
        Ok("auto") => DatapathMode::Auto,
        Ok("ebpf") | Err(_) => DatapathMode::Ebpf,
        Ok(other) => panic!("{MODE_ENV}={other}: expected ebpf, kernel or auto"),
    }
}

/// The store the lab's agents share.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LabStore {
    /// A `dir` store in the lab's directory.
    #[default]
    Dir,
    /// An etcd cluster (see [`crate::etcd::EtcdCluster`]): its client URLs and, for a
    /// TLS cluster, the CA and client certificate files.
    Etcd { endpoints: Vec<String>, tls: Option<crate::etcd::TlsFiles> },
}

impl LabStore {
    /// The store of `cluster`.
    pub fn etcd(cluster: &crate::etcd::EtcdCluster) -> LabStore {
        LabStore::Etcd { endpoints: cluster.endpoints(), tls: cluster.tls().cloned() }
    }
}

/// How a lab's agents are configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabOptions {
    pub store: LabStore,
    /// `[store] lease_ttl_s`: short in tests that watch nodes die.
    pub lease_ttl_s: u64,
    /// Extra lines for each agent's `[datapath]` section.
    pub datapath_extra: String,
    /// How long [`Lab::start_agent`] waits for the agent to answer `status` (scaled by
    /// [`crate::hang_guard`]): the agent answers once its first store list is in its
    /// maps, which takes longer when the store holds many endpoints.
    pub start_timeout: Duration,
    /// Where the lab's directory (configs, logs, the `dir` store) is made; default the
    /// temporary directory. A tmpfs (`/dev/shm`) makes a store of hundreds of
    /// thousands of files quick to write and to remove.
    pub parent_dir: Option<PathBuf>,
    /// Serve the Docker plugin (`[docker] enabled`), its socket in `<node dir>/plugins`
    /// (see [`Lab::plugin_dir`]).
    pub docker: bool,
    /// `[metrics] listen` of every agent (each in its own namespace, so one address
    /// serves them all), e.g. `127.0.0.1:9464`.
    pub metrics_listen: Option<String>,
    /// Extra lines for every `[[network]]` section.
    pub network_extra: String,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            store: LabStore::Dir,
            lease_ttl_s: 60,
            datapath_extra: String::new(),
            start_timeout: Duration::from_secs(20),
            parent_dir: None,
            docker: false,
            metrics_listen: None,
            network_extra: String::new(),
        }
    }
}

/// One host of the lab and its agent.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub config: PathBuf,
    pub bpffs_dir: PathBuf,
    pub state_dir: PathBuf,
    pub mode: DatapathMode,
    /// Extra environment for the agent process.
    pub env: Vec<(String, String)>,
    /// The `overlay-agent` binary this node's agent and CLI calls run: the lab's
    /// unless [`Lab::set_binary`] says otherwise.
    pub binary: PathBuf,
    pub agent: Option<AgentProcess>,
}

/// A container: a namespace plugged into one network on one host.
#[derive(Debug)]
pub struct Container {
    pub name: String,
    pub ns: NetNs,
    pub host: usize,
    pub network: NetworkDef,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

#[derive(Debug)]
pub struct Lab {
    // Field order is drop order: agents first (they delete their veths and pins),
    // then the containers' namespaces, then the underlay.
    pub nodes: Vec<Node>,
    pub containers: Vec<Container>,
    pub underlay: Underlay,
    pub dir: PathBuf,
    pub store_dir: PathBuf,
    pub bpffs_root: PathBuf,
    pub networks: Vec<NetworkDef>,
    pub binary: PathBuf,
    pub options: LabOptions,
    keep_dir: bool,
}

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Writes one agent config per host of `underlay`, serving `networks`.
    /// Agents are not started: see [`Lab::start_agent`] / [`Lab::start_all`].
    pub fn new(underlay: Underlay, networks: &[NetworkDef]) -> Lab {
        Self::with_options(underlay, networks, LabOptions::default())
    }

    /// [`Lab::new`] with another store, lease TTL or datapath settings.
    pub fn with_options(underlay: Underlay, networks: &[NetworkDef], options: LabOptions) -> Lab {
        let id = format!("{}x{}", std::process::id(), LAB_COUNTER.fetch_add(1, Ordering::Relaxed));
        let parent = options.parent_dir.clone().unwrap_or_else(std::env::temp_dir);
        let dir = parent.join(format!("ovt-lab-{id}"));
        let store_dir = dir.join("store");
        std::fs::create_dir_all(&store_dir).unwrap_or_else(|e| panic!("creating {}: {e}", store_dir.display()));
        let bpffs_root = PathBuf::from(format!("{BPFFS_ROOT_PREFIX}{id}"));
        let mut lab = Lab {
            nodes: Vec::new(),
            containers: Vec::new(),
            underlay,
            dir,
            store_dir,
            bpffs_root,
            networks: networks.to_vec(),
            binary: agent_binary(),
            options,
            keep_dir: false,
        };
        let names: Vec<String> = lab.hosts().iter().map(|h| short_name(&h.ns)).collect();
        for name in names {
            let node = lab.write_config(&name, suite_mode());
            lab.nodes.push(node);
        }
        lab
    }

    /// Sets host `i`'s datapath mode (rewrites its config; takes effect at the next start).
    pub fn set_mode(&mut self, i: usize, mode: DatapathMode) {
        let name = self.nodes[i].name.clone();
        let fresh = self.write_config(&name, mode);
        self.nodes[i].config = fresh.config;
        self.nodes[i].mode = mode;
    }

    /// Makes host `i` run `binary` (another build of the agent, e.g. for an upgrade)
    /// for its agent and its CLI calls, from its next start on.
    pub fn set_binary(&mut self, i: usize, binary: &Path) {
        assert!(binary.is_file(), "{} is not a file", binary.display());
        self.nodes[i].binary = binary.to_owned();
    }

    /// The datapath host `i` was configured with.
    pub fn mode(&self, i: usize) -> DatapathMode {
        self.nodes[i].mode
    }

    fn write_config(&self, name: &str, mode: DatapathMode) -> Node {
        let node_dir = self.dir.join(name);
        std::fs::create_dir_all(&node_dir).expect("node dir");
        let bpffs_dir = self.bpffs_root.join(name);
        let state_dir = node_dir.join("state");
        let mut text = format!(
            "node_name = \"{name}\"\nunderlay_interface = \"{ul}\"\nstate_dir = \"{state}\"\nbpffs_dir = \"{bpf}\"\n\n",
            ul = crate::topo::UL_IF,
            state = state_dir.display(),
            bpf = bpffs_dir.display(),
        );
        for n in &self.networks {
            text += &format!("[[network]]\nname = \"{}\"\nvni = {}\nsubnet = \"{}\"\n", n.name, n.vni, n.subnet);
            if let Some(len) = n.l3 {
                text += &format!("mode = \"l3\"\nnode_prefix_len = {len}\n");
            }
            text += &self.options.network_extra;
            text += "\n";
        }
        let ttl = self.options.lease_ttl_s;
        match &self.options.store {
            LabStore::Dir => {
                text += &format!("[store]\nbackend = \"dir\"\npath = \"{}\"\nlease_ttl_s = {ttl}\n\n", self.store_dir.display());
            }
            LabStore::Etcd { endpoints, tls } => {
                let urls: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
                text += &format!("[store]\nbackend = \"etcd\"\nendpoints = [{}]\nlease_ttl_s = {ttl}\n", urls.join(", "));
                if let Some(t) = tls {
                    text += &format!(
                        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                        t.ca_file.display(),
                        t.cert_file.display(),
                        t.key_file.display()
                    );
                }
                text += "\n";
            }
        }
        text += &format!("[datapath]\nmode = \"{mode}\"\n{}\n", self.options.datapath_extra);
        if let Some(listen) = &self.options.metrics_listen {
            text += &format!("[metrics]\nlisten = \"{listen}\"\n");
        }
        if self.options.docker {
            text += &format!("[docker]\nenabled = true\nplugin_dir = \"{}\"\n", node_dir.join("plugins").display());
        }
        let config = node_dir.join("agent.toml");
        std::fs::write(&config, text).expect("writing agent config");
        Node { name: name.into(), config, bpffs_dir, state_dir, mode, env: Vec::new(), binary: self.binary.clone(), agent: None }
    }

    /// Where host `i`'s agent puts its Docker plugin socket: the lab's dockerd for that
    /// host sees this directory as its `/run/docker/plugins`.
    pub fn plugin_dir(&self, i: usize) -> PathBuf {
        self.dir.join(&self.nodes[i].name).join("plugins")
    }

    pub fn hosts(&self) -> Vec<&Host> {
        self.underlay.hosts()
    }

    pub fn host(&self, i: usize) -> &Host {
        self.hosts()[i]
    }

    /// Keep the lab's files (configs, logs, store) after drop.
    pub fn keep_files(&mut self) {
        self.keep_dir = true;
    }

    /// Starts host `i`'s agent and waits until it answers `status`.
    pub fn start_agent(&mut self, i: usize) {
        let node = &self.nodes[i];
        let mut agent = AgentProcess::spawn_with_env(&self.hosts()[i].ns, &node.binary, &node.config, &node.env);
        let (binary, cfg) = (node.binary.clone(), node.config.clone());
        agent.wait_until("the agent answers `status`", crate::hang_guard(self.options.start_timeout), || {
            run_cli(None, &binary, ["--config".as_ref(), cfg.as_os_str(), "status".as_ref()]).success()
        });
        self.nodes[i].agent = Some(agent);
    }

    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start_agent(i);
        }
    }

    /// SIGTERM, wait; returns the exit status. The datapath stays up.
    pub fn stop_agent(&mut self, i: usize) -> ExitStatus {
        let mut agent = self.nodes[i].agent.take().expect("agent not running");
        agent.stop()
    }

    /// SIGKILL, as a crash would; returns the exit status.
    pub fn kill_agent(&mut self, i: usize) -> ExitStatus {
        let mut agent = self.nodes[i].agent.take().expect("agent not running");
        agent.kill()
    }

    /// `overlay-agent down` on host `i`: the agent (if running) removes everything and
    /// exits. Panics unless it succeeds; returns its output.
    pub fn down(&mut self, i: usize) -> CliOutput {
        let out = self.cli(i, &["down"]);
        out.assert_success();
        if let Some(mut agent) = self.nodes[i].agent.take() {
            let deadline = Instant::now() + crate::hang_guard(Duration::from_secs(10));
            while agent.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let status = agent.stop();
            assert!(status.success(), "agent of {} exited with {status} after down; log:\n{}", self.nodes[i].name, agent.log());
        }
        out
    }

    /// The records in the lab's `dir` store: every key's file, without the store's own
    /// files (their names start with `.`).
    pub fn store_records(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for e in entries.flatten() {
                let path = e.path();
                if e.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.store_dir, &mut out);
        out.sort();
        out
    }

    /// `status --json` of host `i`.
    pub fn status(&self, i: usize) -> serde_json::Value {
        let out = self.cli(i, &["status", "--json"]);
        out.assert_success();
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("parsing status: {e}\n{}", out.stdout))
    }

    /// Runs `overlay-agent --config <host i's config> args...`.
    pub fn cli(&self, i: usize, args: &[&str]) -> CliOutput {
        let mut full = vec!["--config".to_string(), self.nodes[i].config.display().to_string()];
        full.extend(args.iter().map(|s| s.to_string()));
        run_cli(Some(&self.hosts()[i].ns), &self.nodes[i].binary, &full)
    }

    /// Waits until host `i`'s agent is registered with the store and has applied its
    /// first full list to the datapath (`status`: `store.registered`, `store.synced`).
    pub fn wait_synced(&mut self, i: usize) {
        let (binary, cfg) = (self.nodes[i].binary.clone(), self.nodes[i].config.clone());
        let ns = &self.underlay.hosts()[i].ns;
        let agent = self.nodes[i].agent.as_mut().expect("agent not running");
        agent.wait_until("registered and synced with the store", crate::hang_guard(Duration::from_secs(20)), || {
            let out = run_cli(Some(ns), &binary, ["--config".as_ref(), cfg.as_os_str(), "status".as_ref(), "--json".as_ref()]);
            let status: Option<serde_json::Value> = serde_json::from_str(&out.stdout).ok();
            status.is_some_and(|s| s["store"]["registered"] == true && s["store"]["synced"] == true)
        });
    }

    /// Creates a container namespace and plugs it into `network` on host `host` with
    /// `endpoint add`; returns its index in [`Lab::containers`].
    pub fn add_container(&mut self, host: usize, name: &str, network: NetworkDef, ip: Ipv4Addr) -> usize {
        let ns = NetNs::new(name);
        let out = self.cli(host, &["endpoint", "add", "--network", network.name, "--netns", ns.name(), "--ip", &ip.to_string()]);
        out.assert_success();
        self.containers.push(Container {
            name: name.into(),
            ns,
            host,
            network,
            ip,
            mac: MacAddr::from_ipv4(ip),
        });
        self.containers.len() - 1
    }

    /// `endpoint add` without `--ip` for `ns` on host `host`: the address and MAC the
    /// agent allocated, or the failed command.
    pub fn allocate(&self, host: usize, ns: &NetNs, network: NetworkDef) -> Result<(Ipv4Addr, MacAddr), CliOutput> {
        let out = self.cli(host, &["endpoint", "add", "--network", network.name, "--netns", ns.name(), "--json"]);
        if !out.success() {
            return Err(out);
        }
        let info: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("parsing {:?}: {e}", out.stdout));
        let field = |f: &str| info[f].as_str().unwrap_or_else(|| panic!("no {f} in {info}")).to_owned();
        Ok((field("ip").parse().expect("an IPv4 address"), field("mac").parse().expect("a MAC")))
    }

    /// [`Lab::allocate`] in a new namespace `name`, kept as a container of the lab.
    pub fn add_allocated(&mut self, host: usize, name: &str, network: NetworkDef) -> Ipv4Addr {
        let ns = NetNs::new(name);
        let (ip, mac) = match self.allocate(host, &ns, network) {
            Ok(v) => v,
            Err(out) => panic!("endpoint add without --ip on host {host} failed: {}{}", out.stdout, out.stderr),
        };
        self.containers.push(Container { name: name.into(), ns, host, network, ip, mac });
        ip
    }

    /// `endpoint list --json` of host `i`.
    pub fn endpoints(&self, i: usize) -> Vec<serde_json::Value> {
        let out = self.cli(i, &["endpoint", "list", "--json"]);
        out.assert_success();
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("parsing endpoint list: {e}\n{}", out.stdout))
    }

    pub fn container(&self, name: &str) -> &Container {
        self.containers.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no container {name}"))
    }

    /// `map dump --json` of host `i`, without the node names behind VTEPs: those come
    /// from the running agent's view of its peers (none while its store is unreachable,
    /// or before its first list after a restart), not from the datapath, and tests
    /// compare datapaths across restarts. `map dump`'s own test reads them.
    pub fn dump(&self, i: usize) -> MapDump {
        let out = self.cli(i, &["map", "dump", "--json"]);
        out.assert_success();
        let mut d: MapDump = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("parsing map dump: {e}\n{}", out.stdout));
        d.name_nodes(&std::collections::HashMap::new());
        d
    }

    /// Polls host `i`'s map dump until `pred` holds; returns how long it took.
    pub fn wait_for_dump(&self, i: usize, what: &str, timeout: Duration, pred: impl Fn(&MapDump) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            let d = self.dump(i);
            if pred(&d) {
                return start.elapsed();
            }
            if start.elapsed() > timeout {
                panic!("host {}: {what} not reached within {timeout:?}; last dump: {d:#?}", self.nodes[i].name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Lab {
    /// Waits until every host's FDB holds every container of the networks it serves
    /// (local or remote), i.e. the store has propagated everything.
    pub fn wait_converged(&self, timeout: Duration) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].agent.is_none() {
                continue;
            }
            let expected: Vec<(u32, MacAddr)> = self.containers.iter().map(|c| (c.network.vni, c.mac)).collect();
            self.wait_for_dump(i, "every container in the FDB", timeout, |d| {
                let unicast = d.fdb.iter().filter(|f| f.kind != "flood" && f.kind != "router");
                expected.iter().all(|(vni, mac)| d.fdb.iter().any(|f| f.vni == *vni && f.mac == *mac))
                    && unicast.count() == expected.len()
            });
        }
    }
}

impl Lab {
    /// Like [`Lab::wait_converged`] for eBPF-mode labs whose maps hold more than the
    /// containers (endpoints preloaded into the store): waits until every running
    /// host's pinned FDB map holds every container's MAC, looking each one up instead
    /// of dumping the whole map. Panics on timeout.
    pub fn wait_converged_pinned(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for node in self.nodes.iter().filter(|n| n.agent.is_some()) {
            let fdb = crate::pinned::PinnedFdb::open(&node.bpffs_dir)
                .unwrap_or_else(|e| panic!("host {}: {e}", node.name));
            for c in &self.containers {
                loop {
                    let found = fdb.get(c.network.vni, c.mac).unwrap_or_else(|e| panic!("host {}: {e}", node.name));
                    if found.is_some() {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "host {}: container {} ({}) not in the FDB within {timeout:?}",
                        node.name,
                        c.name,
                        c.mac
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

/// `ovt123x4-h1` → `h1`.
fn short_name(ns: &NetNs) -> String {
    ns.name().rsplit('-').next().unwrap_or(ns.name()).to_string()
}

/// Removes every pin and directory under `root` (a lab's own bpffs directory).
pub fn remove_bpffs_tree(root: &Path) {
    if !root.exists() {
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(root) {
        warn!(path = %root.display(), error = %e, "removing leftover pins");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut agent) = node.agent.take() {
                let status = agent.stop();
                if !status.success() && !std::thread::panicking() {
                    warn!(node = %node.name, ?status, log = %agent.log(), "agent exited with an error");
                }
            }
        }
        remove_bpffs_tree(&self.bpffs_root);
        if !self.keep_dir
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
        {
            warn!(dir = %self.dir.display(), error = %e, "removing the lab directory");
        }
    }
}
