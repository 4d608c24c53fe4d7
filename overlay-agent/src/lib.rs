//! The overlay agent: loads the eBPF datapath, plugs containers in, follows the
//! control plane. The `overlay-agent` binary is a thin CLI over this library.

pub mod agent;
pub mod api;
pub mod bpffs;
pub mod cli;
pub mod config;
pub mod datapath;
pub mod desired;
pub mod docker;
pub mod firewall;
pub mod mac;
pub mod metrics;
pub mod netlink;
pub mod paths;
pub mod plumb;
pub mod records;
pub mod state;
pub mod store;
