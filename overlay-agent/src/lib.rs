//! The overlay agent: loads the eBPF datapath, plugs containers in, follows the
//! control plane. The `overlay-agent` binary is a thin CLI over this library.

pub mod netlink;
