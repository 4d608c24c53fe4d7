//! Command-line arguments (clap).

use std::{net::Ipv4Addr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::{config::DatapathMode, mac::MacAddr, paths};

#[derive(Debug, Parser)]
#[command(name = "overlay-agent", version, about = "eBPF-accelerated VXLAN overlay for containers: the per-host agent")]
pub struct Cli {
    /// Agent configuration file (TOML); every subcommand finds the agent's socket and pins from it.
    #[arg(long, global = true, env = paths::CONFIG_ENV, default_value = paths::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Log level or filter (`error`, `warn`, `info`, `debug`, `trace`, or a `RUST_LOG`
    /// style filter such as `info,overlay_agent::store=debug`); default: `RUST_LOG`, else
    /// `info` for `run` and `warn` for the other commands.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, env = "OVERLAY_AGENT_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, message, fields), for log
    /// collectors.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (daemon) until SIGTERM/SIGINT, which leave the datapath running.
    Run(RunArgs),
    /// Plug containers in and out, list endpoints.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Declare endpoints behind VTEPs that run no agent (plain Linux VXLAN hosts, hardware VTEPs).
    #[command(subcommand)]
    Remote(RemoteCommand),
    /// Inspect the datapath's maps.
    #[command(subcommand)]
    Map(MapCommand),
    /// Show the running agent's state: node, datapath mode, store, networks, peers.
    Status(OutputArgs),
    /// Watch the eBPF datapath's verdicts live: drops (default) or everything, with the
    /// interface, VNI, outer and inner addresses. Costs nothing while nobody traces.
    Trace(TraceArgs),
    /// Remove everything this node made (datapath, veths, devices, pins, store records
    /// and lease) and stop the agent; works with the agent stopped too.
    Down(OutputArgs),
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Create a veth into a container's network namespace and publish the endpoint.
    Add(EndpointAddArgs),
    /// Remove an endpoint of this host (deletes its veth, withdraws it from peers).
    Del(EndpointDelArgs),
    /// List local and remote endpoints.
    List(OutputArgs),
}

#[derive(Debug, Args)]
pub struct EndpointAddArgs {
    /// Network name from the config.
    #[arg(long)]
    pub network: String,
    /// Container network namespace: a name under /run/netns or a path like /proc/PID/ns/net.
    #[arg(long)]
    pub netns: String,
    /// The container's IPv4 address (inside the network's subnet); default: the lowest
    /// free address of the network, allocated cluster-wide (never the subnet's first
    /// address, kept for the gateway).
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    /// The container's MAC; default 02:42 followed by the IPv4 bytes.
    #[arg(long)]
    pub mac: Option<MacAddr>,
    /// Interface name inside the container.
    #[arg(long, default_value = "eth0")]
    pub ifname: String,
    /// Make a container port reachable at a port of the host's underlay address, as
    /// `docker run -p` does: HOST_PORT:CONTAINER_PORT[/tcp|/udp] (repeatable).
    #[arg(long = "publish", short = 'p')]
    pub publish: Vec<crate::firewall::PortMapping>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct EndpointDelArgs {
    #[arg(long)]
    pub network: String,
    #[arg(long)]
    pub ip: Ipv4Addr,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Datapath mode, overriding `[datapath] mode` of the config.
    #[arg(long, value_enum)]
    pub datapath: Option<DatapathMode>,
}

#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Add a static endpoint (L2 network, --ip) or a host's subnet (L3 network, --subnet)
    /// behind a VTEP without an agent: every agent serving the network forwards to it.
    Add(RemoteAddArgs),
    /// Remove a static endpoint (--ip) or subnet (--subnet).
    Del(RemoteDelArgs),
}

#[derive(Debug, Args)]
pub struct RemoteDelArgs {
    #[arg(long)]
    pub network: String,
    #[arg(long, required_unless_present = "subnet", conflicts_with = "subnet")]
    pub ip: Option<Ipv4Addr>,
    #[arg(long)]
    pub subnet: Option<ipnet::Ipv4Net>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct RemoteAddArgs {
    /// Network name from the config.
    #[arg(long)]
    pub network: String,
    /// The endpoint's IPv4 address (inside the network's subnet; L2 networks).
    #[arg(long, required_unless_present = "subnet", conflicts_with = "subnet")]
    pub ip: Option<Ipv4Addr>,
    /// The subnet the host routes (L3 networks), e.g. 10.244.9.0/24.
    #[arg(long)]
    pub subnet: Option<ipnet::Ipv4Net>,
    /// The endpoint's MAC, or with --subnet the MAC of the host's VXLAN device.
    #[arg(long)]
    pub mac: MacAddr,
    /// The VTEP (underlay address) it sits behind.
    #[arg(long)]
    pub vtep: Ipv4Addr,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum MapCommand {
    /// Print the pinned maps (neighbours, FDB, endpoints, networks, stats); works with the daemon down.
    Dump(MapDumpArgs),
}

/// Which table `map dump` prints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MapTable {
    #[default]
    All,
    Config,
    Networks,
    Endpoints,
    Neigh,
    Fdb,
    Flood,
    Routes,
    Vteps,
    Stats,
}

#[derive(Debug, Args, Clone)]
pub struct MapDumpArgs {
    /// One table only (default: all).
    #[arg(value_enum, default_value_t = MapTable::All)]
    pub table: MapTable,
    /// Only the entries of this network (a name from the config).
    #[arg(long)]
    pub network: Option<String>,
    /// Stats: packets per CPU too.
    #[arg(long)]
    pub per_cpu: bool,
    /// Machine-readable JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone, Copy)]
pub struct OutputArgs {
    /// Machine-readable JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct TraceArgs {
    /// Every verdict (forwarded and passed too), not only drops.
    #[arg(long)]
    pub all: bool,
    /// With --ip: only this local endpoint's frames (network name).
    #[arg(long)]
    pub network: Option<String>,
    /// With --network: only this local endpoint's frames (its IP).
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}
