//! Every default path the agent uses, in one place.

/// Default configuration file (`--config`, `OVERLAY_AGENT_CONFIG`).
pub const DEFAULT_CONFIG: &str = "/etc/overlay-agent/agent.toml";
/// Environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "OVERLAY_AGENT_CONFIG";
/// Parent of the default per-node state directory (`<this>/<node_name>`).
pub const DEFAULT_STATE_ROOT: &str = "/run/overlay-agent";
/// Parent of the default per-node pin directory (`<this>/<node_name>`).
pub const DEFAULT_BPFFS_ROOT: &str = "/sys/fs/bpf/overlay";
/// Where bpffs is normally mounted.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// The control socket, inside `state_dir`.
pub const SOCKET_NAME: &str = "agent.sock";
/// Pinned maps, inside `bpffs_dir` (then `v<layout version>/`).
pub const MAPS_SUBDIR: &str = "maps";
/// Pinned tcx links, inside `bpffs_dir`.
pub const LINKS_SUBDIR: &str = "links";
/// Named network namespaces (`ip netns`).
pub const NETNS_RUN_DIR: &str = "/run/netns";
