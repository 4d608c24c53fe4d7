//! Errors of the eBPF datapath, and which kernel lacks what.

use std::path::PathBuf;

use aya::programs::tc::TcError;

use crate::datapath::{devices::DeviceError, probe::ProbeError};

/// The helpers the programs call, and the first mainline kernel that has each.
pub(super) const HELPERS: [(&str, &str); 9] = [
    ("bpf_redirect_peer", "5.10"),
    ("bpf_redirect_neigh", "5.10"),
    ("bpf_csum_level", "5.7"),
    ("bpf_skb_adjust_room", "4.13"),
    ("bpf_skb_change_type", "4.8"),
    ("bpf_get_hash_recalc", "4.8"),
    ("bpf_clone_redirect", "4.2"),
    ("bpf_skb_store_bytes", "4.1"),
    ("bpf_redirect", "4.4"),
];

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(
        "this overlay-agent was built without its eBPF datapath (AYA_BUILD_SKIP); \
         rebuild it with `cargo xtask build`"
    )]
    NotBuilt,
    #[error("bpffs at {path}: {source} (mount it with `mount -t bpf bpf {path}`)")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object: {source}")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF object has no program or map named {name}")]
    Missing { name: &'static str },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("adding the clsact qdisc to {interface}: {source}")]
    Clsact {
        interface: String,
        #[source]
        source: TcError,
    },
    #[error("attaching {program} to {interface}: {source}")]
    Attach {
        program: &'static str,
        interface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("more than {max} distinct VXLAN UDP ports")]
    TooManyPorts { max: usize },
    #[error("kernel {kernel} lacks {helper} (Linux {since}+){simulated}", simulated = if *simulated { " [simulated]" } else { "" })]
    MissingHelper { helper: String, since: &'static str, kernel: String, simulated: bool },
    #[error("setting up the broadcast VXLAN devices: {0}")]
    Devices(#[from] DeviceError),
    #[error("parsing the eBPF object: {source}")]
    Parse {
        #[source]
        source: Box<aya_obj::ParseError>,
    },
    #[error("pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("detaching the program from {interface}: {source}")]
    Detach {
        interface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "no bpffs on the host: this process runs in a private mount namespace (`ip netns exec` gives one, \
         pid {pid}'s has no bpffs at /sys/fs/bpf either), where pins would die with the agent; \
         mount it on the host (`mount -t bpf bpf /sys/fs/bpf`) and start again"
    )]
    NoHostBpffs { pid: i32 },
    #[error("{interface}: {source}")]
    Netlink {
        interface: String,
        #[source]
        source: crate::netlink::NetlinkError,
    },
    #[error(
        "the kernel refused: {detail}; the eBPF datapath needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN \
         (or CAP_SYS_ADMIN), which root has unless the service or container takes them away \
         (or a security module such as SELinux or lockdown refuses bpf())"
    )]
    NotPermitted { detail: String },
}

/// Whether `e` or one of its causes is the kernel's EPERM.
fn is_eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error) == Some(libc::EPERM) {
            return true;
        }
        cur = err.source();
    }
    false
}

impl EbpfError {
    /// Refines a verifier rejection into the helper the kernel lacks, and a refusal
    /// (EPERM) into what the agent lacks, when that is why.
    pub(super) fn refine(self, kernel: &str) -> EbpfError {
        if is_eperm(&self) {
            return EbpfError::NotPermitted { detail: crate::with_causes(&self) };
        }
        if let EbpfError::Program { source: aya::programs::ProgramError::LoadError { verifier_log, .. }, .. } = &self {
            let log = verifier_log.to_string();
            if let Some(rest) = log.split("unknown func ").nth(1) {
                let name = rest.split(['#', ' ', '\n']).next().unwrap_or_default();
                if let Some((helper, since)) = HELPERS.iter().find(|(h, _)| *h == name) {
                    return EbpfError::MissingHelper {
                        helper: (*helper).into(),
                        since,
                        kernel: kernel.into(),
                        simulated: false,
                    };
                }
            }
        }
        self
    }
}

