//! Types shared by the eBPF datapath (`overlay-ebpf`) and the agent (`overlay-agent`).
//!
//! Everything that crosses the kernel/user boundary lives here and only here: map
//! key/value layouts, map and program names, limits, and the reason codes the datapath
//! counts. Every map type is `#[repr(C)]`, has explicit padding (which userspace must
//! zero: the kernel hashes keys byte for byte), and uses no `bool`/`Option`.
//! IPv4 addresses and MACs are byte arrays in wire order, so no field has a hidden
//! byte order; the few integers kept in network order carry a `_be` suffix.
#![no_std]

pub mod reason;

pub use reason::{Direction, Reason};

/// Map names. The eBPF statics carry the same names; the agent pins each map under
/// `<bpffs_dir>/maps/<NAME>`. Kernel object names are limited to 15 bytes.
pub mod maps {
    pub const NEIGH: &str = "OVL_NEIGH";
    pub const FDB: &str = "OVL_FDB";
    pub const ENDPOINTS: &str = "OVL_ENDPOINTS";
    pub const NETWORKS: &str = "OVL_NETWORKS";
    pub const CONFIG: &str = "OVL_CONFIG";
    pub const STATS: &str = "OVL_STATS";
    pub const PROBE: &str = "OVL_PROBE";
    pub const FLOOD: &str = "OVL_FLOOD";
    pub const ROUTES: &str = "OVL_ROUTES";
    pub const VTEPS: &str = "OVL_VTEPS";
    pub const TRACE: &str = "OVL_TRACE";
    /// Every map the agent pins, in dump order.
    pub const ALL: [&str; 10] = [NEIGH, FDB, ENDPOINTS, NETWORKS, FLOOD, ROUTES, VTEPS, CONFIG, STATS, TRACE];
    /// The layout of every map's key and value, and what they mean. Pins live under
    /// `maps/v<LAYOUT_VERSION>/`: bump this whenever a map type below changes, so that
    /// an upgraded agent builds new maps (filled before its programs take over) instead
    /// of reading the old ones with the new layout. A test pins the sizes.
    pub const LAYOUT_VERSION: u32 = if cfg!(feature = "upgrade-test-variant") { LAYOUT + 1 } else { LAYOUT };
    /// The layout version of this source tree (what to bump). [`LAYOUT_VERSION`] is one
    /// more in the `upgrade-test-variant` build, which exists only so that the tests can
    /// upgrade to (and downgrade from) a build with another layout.
    const LAYOUT: u32 = 2;
}

/// Program (function) names in the eBPF object.
pub mod programs {
    /// TC ingress of the host-side veth: frames a container sends.
    pub const FROM_CONTAINER: &str = "ovl_from_container";
    /// TC ingress of the underlay interface: VXLAN packets from other hosts.
    pub const FROM_UNDERLAY: &str = "ovl_from_underlay";
    /// Feature probe run with `BPF_PROG_TEST_RUN` at start-up (never attached).
    pub const PROBE_ADJUST_ROOM: &str = "ovl_probe_adjust_room";
}

/// Map sizes.
pub mod limits {
    pub const MAX_NETWORKS: u32 = 256;
    /// Sizes compiled into the object; the agent sets the real ones at load time from
    /// `[datapath] *_capacity` (defaults below).
    pub const MAX_NEIGH: u32 = 65_536;
    pub const MAX_FDB: u32 = 65_536;
    pub const MAX_LOCAL_ENDPOINTS: u32 = 4_096;
    /// Node subnets (routes of L3 networks) across all networks: they grow with hosts,
    /// not containers.
    pub const MAX_ROUTES: u32 = 16_384;
    /// (network, remote VTEP) pairs VXLAN is accepted from: hosts times networks.
    pub const MAX_VTEPS: u32 = 65_536;
    /// The trace ring buffer: about 1,700 events.
    pub const TRACE_BYTES: u32 = 256 * 1024;
    /// Defaults of `[datapath] neigh_capacity`, `fdb_capacity`, `endpoint_capacity`.
    pub const DEFAULT_NEIGH: u32 = 65_536;
    pub const DEFAULT_FDB: u32 = 65_536;
    pub const DEFAULT_LOCAL_ENDPOINTS: u32 = 4_096;
    /// The largest capacity the agent accepts for one map (about 100 MB of kernel
    /// memory for the FDB).
    pub const MAX_MAP_CAPACITY: u32 = 1 << 20;
    /// Distinct VXLAN UDP ports across all networks of one agent.
    pub const MAX_UDP_PORTS: usize = 8;
    /// Local endpoints of one network on one host that receive broadcast/multicast
    /// copies; the agent refuses more endpoints in a network than this.
    pub const MAX_FLOOD_PORTS: usize = 64;
}

/// VXLAN wire constants (RFC 7348).
pub mod vxlan {
    pub const DEFAULT_UDP_PORT: u16 = 4789;
    /// Outer Ethernet (14) + IPv4 (20) + UDP (8) + VXLAN (8).
    pub const OVERHEAD: u32 = 50;
    /// The I flag: the VNI field is valid.
    pub const FLAG_VNI_VALID: u8 = 0x08;
    pub const MAX_VNI: u32 = (1 << 24) - 1;
    /// Outer UDP source ports are drawn from this range (RFC 7348 section 5
    /// recommends the dynamic range) using a hash of the inner flow, as the
    /// kernel's `udp_flow_src_port` does, so ECMP spreads flows.
    pub const SRC_PORT_MIN: u16 = 49_152;
    pub const SRC_PORT_MAX: u16 = 65_535;
}

/// `bpf_skb_adjust_room` flags from the kernel's uapi `linux/bpf.h`. The agent probes
/// which of them the running kernel accepts and stores the result in [`DatapathConfig`].
pub mod adjust_room {
    pub const FIXED_GSO: u64 = 1 << 0;
    pub const ENCAP_L3_IPV4: u64 = 1 << 1;
    pub const ENCAP_L4_UDP: u64 = 1 << 4;
    pub const NO_CSUM_RESET: u64 = 1 << 5;
    pub const ENCAP_L2_ETH: u64 = 1 << 6;
    pub const fn encap_l2(len: u64) -> u64 {
        (len & 0xff) << 56
    }
    /// What every supported kernel accepts for VXLAN encapsulation (5.2+).
    pub const ENCAP_BASE: u64 = FIXED_GSO | ENCAP_L3_IPV4 | ENCAP_L4_UDP | encap_l2(14);
    /// What every supported kernel accepts for decapsulation (5.2+).
    pub const DECAP_BASE: u64 = FIXED_GSO;
}

/// Neighbour map key: which MAC answers ARP for `ip` in network `vni`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NeighKey {
    pub vni: u32,
    pub ip: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NeighValue {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// FDB key: where frames for `mac` in network `vni` go.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbKey {
    pub vni: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

impl FdbKey {
    pub const fn new(vni: u32, mac: [u8; 6]) -> Self {
        Self { vni, mac, _pad: [0; 2] }
    }
}

/// [`FdbValue::kind`]: a container on this host, reached through `ifindex`.
pub const FDB_LOCAL: u32 = 1;
/// [`FdbValue::kind`]: a container behind the VTEP `vtep`, reached over VXLAN.
pub const FDB_REMOTE: u32 = 2;
/// [`FdbValue::kind`]: this host's router MAC in an L3 network (the containers' gateway,
/// and the inner destination other hosts send routed frames to): the frame is routed by
/// its IPv4 destination (`OVL_ROUTES`, then the local endpoints).
pub const FDB_ROUTER: u32 = 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FdbValue {
    /// [`FDB_LOCAL`] or [`FDB_REMOTE`].
    pub kind: u32,
    /// Local: the host-side veth of the container.
    pub ifindex: u32,
    /// Remote: the VTEP's IPv4 address.
    pub vtep: [u8; 4],
    /// Remote: the VXLAN UDP destination port, network byte order.
    pub udp_port_be: u16,
    pub _pad: [u8; 2],
}

/// A container plugged into this host, keyed by the ifindex of its host-side veth
/// (`u32` key), so the program on that veth knows the sender's network and identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointValue {
    pub vni: u32,
    pub ip: [u8; 4],
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// The data of an `OVL_ROUTES` key (an LPM trie): the prefix length counts from the first
/// bit of `vni_be`, so a route for `ip/len` in network `vni` has prefix length `32 + len`
/// and never matches another network.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    /// The VNI, network byte order (so the trie's bit order is the VNI's).
    pub vni_be: [u8; 4],
    pub ip: [u8; 4],
}

impl RouteKey {
    /// Bits of the VNI in front of the address: add to the subnet's prefix length.
    pub const VNI_BITS: u32 = 32;
}

/// [`RouteValue::kind`]: a node subnet of another host, reached over VXLAN.
pub const ROUTE_REMOTE: u32 = 1;
/// [`RouteValue::kind`]: handed to this host's own stack (its gateway address, and the
/// default route of a network whose gateway leads out): the host routes it further.
pub const ROUTE_HOST: u32 = 2;
/// [`RouteValue::kind`]: an overlay range with no route (addresses of the network no
/// node holds, and every other network: isolation); dropped.
pub const ROUTE_BLOCKED: u32 = 3;

/// Where routed frames to a prefix go. For [`ROUTE_REMOTE`], the node's VTEP and the
/// MAC its routed frames must carry as inner destination (that node's router MAC, which
/// a plain Linux host has as its VXLAN device's address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteValue {
    pub kind: u32,
    pub vtep: [u8; 4],
    pub mac: [u8; 6],
    /// The VXLAN UDP destination port, network byte order.
    pub udp_port_be: u16,
}

/// A network this host serves, keyed by VNI (`u32` key).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetworkValue {
    pub udp_port_be: u16,
    /// The containers' MTU: a decapsulated frame may be this plus an Ethernet and a VLAN
    /// header long (what the kernel's `is_skb_forwardable` lets into a veth).
    pub mtu: u16,
    /// [`NETWORK_ANY_VTEP`].
    pub flags: u16,
    pub _pad: [u8; 2],
}

/// [`NetworkValue::flags`]: VXLAN of this network is accepted from any source, not only
/// from the VTEPs in `OVL_VTEPS` (`known_vteps_only = false`).
pub const NETWORK_ANY_VTEP: u16 = 1 << 0;

/// `OVL_VTEPS` key: VXLAN of network `vni` is accepted from the VTEP `ip` (the value is
/// unused). The agent fills it with the VTEPs of the nodes, static endpoints and static
/// subnets of each network.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VtepKey {
    pub vni: u32,
    pub ip: [u8; 4],
}

/// Broadcast/multicast (BUM) replication for one network on this host, keyed by VNI
/// (`u32` key) in `OVL_FLOOD`. Local copies go to every endpoint's host-side veth
/// (except the sender's); remote copies are handed to the network's kernel VXLAN
/// device, whose all-zero-MAC FDB entries replicate them head-end to every remote VTEP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FloodValue {
    /// The network's kernel VXLAN device; 0 = no remote copies.
    pub vxlan_ifindex: u32,
    /// Number of valid entries in `ifindex`.
    pub n_ports: u32,
    /// Host-side veths of the network's local endpoints.
    pub ifindex: [u32; limits::MAX_FLOOD_PORTS],
}

impl FloodValue {
    pub const fn empty() -> Self {
        Self { vxlan_ifindex: 0, n_ports: 0, ifindex: [0; limits::MAX_FLOOD_PORTS] }
    }
}

/// Host-wide datapath settings, the single entry (index 0) of the `OVL_CONFIG` array.
/// `vtep` all zero means "not configured yet": the programs pass everything.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DatapathConfig {
    /// This host's VTEP address (outer source IP).
    pub vtep: [u8; 4],
    /// The underlay interface encapsulated frames leave through.
    pub underlay_ifindex: u32,
    /// `bpf_skb_adjust_room` flags for encapsulation, as probed on this kernel.
    pub encap_flags: u64,
    /// `bpf_skb_adjust_room` flags for decapsulation, as probed on this kernel.
    pub decap_flags: u64,
    pub src_port_min: u16,
    pub src_port_max: u16,
    /// Number of valid entries in `udp_ports_be`.
    pub n_udp_ports: u32,
    /// VXLAN UDP ports in use by the networks, network byte order.
    pub udp_ports_be: [u16; limits::MAX_UDP_PORTS],
    /// [`FEATURE_CSUM_LEVEL`] and friends.
    pub features: u32,
    /// [`TRACE_DROPS`] / [`TRACE_ALL`]: which verdicts go to `OVL_TRACE` (0: none, the
    /// programs then do nothing more than read this word).
    pub trace: u32,
    /// With `trace`: only frames from the container behind this host-side veth (0: all).
    pub trace_ifindex: u32,
    pub _pad: [u8; 4],
}

/// [`DatapathConfig::trace`]: drops go to the trace ring buffer.
pub const TRACE_DROPS: u32 = 1 << 0;
/// [`DatapathConfig::trace`]: every verdict goes to the trace ring buffer.
pub const TRACE_ALL: u32 = 1 << 1;
/// Bytes of each traced frame copied into its [`TraceEvent`]: the outer headers of a
/// VXLAN frame (50), the inner Ethernet, IPv4 and transport headers, with room to spare.
pub const TRACE_HEAD: usize = 128;

/// One traced verdict, as the programs write it into `OVL_TRACE` (a ring buffer).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// `bpf_ktime_get_ns` (monotonic, since boot).
    pub ts_ns: u64,
    /// The device the program ran on (a container's host-side veth, or the underlay).
    pub ifindex: u32,
    /// The frame's length when the verdict was taken.
    pub len: u32,
    /// [`Direction`] and [`Reason`] codes.
    pub direction: u32,
    pub reason: u32,
    /// Valid bytes in `head` (the frame may be shorter than [`TRACE_HEAD`]).
    pub head_len: u32,
    pub _pad: [u8; 4],
    /// The frame's first bytes, as the program left it (encapsulated after
    /// `encapsulated`, the inner frame after `decapsulated`).
    pub head: [u8; TRACE_HEAD],
}

/// `bpf_csum_level` is available (5.7+): after decap with `NO_CSUM_RESET`, the
/// checksum verdict of the outer packet is moved down one level to the inner one.
pub const FEATURE_CSUM_LEVEL: u32 = 1 << 0;

impl DatapathConfig {
    pub const fn zeroed() -> Self {
        Self {
            vtep: [0; 4],
            underlay_ifindex: 0,
            encap_flags: 0,
            decap_flags: 0,
            src_port_min: 0,
            src_port_max: 0,
            n_udp_ports: 0,
            udp_ports_be: [0; limits::MAX_UDP_PORTS],
            features: 0,
            trace: 0,
            trace_ifindex: 0,
            _pad: [0; 4],
        }
    }
}

/// Per-CPU counter, one per (direction, reason): index [`stats_index`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StatsValue {
    pub packets: u64,
    pub bytes: u64,
}

/// Reason codes per direction in the stats array.
pub const REASON_SLOTS: u32 = 64;
/// Size of the stats array.
pub const STATS_ENTRIES: u32 = REASON_SLOTS * Direction::COUNT;

/// Index of (direction, reason) in the stats array.
#[inline(always)]
pub const fn stats_index(dir: Direction, reason: Reason) -> u32 {
    dir as u32 * REASON_SLOTS + reason as u32
}

/// Input and output of the `adjust_room` probe program (`OVL_PROBE`, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProbeArgs {
    /// Bytes to add (positive) or remove (negative).
    pub len_diff: i32,
    /// 1: also call `bpf_csum_level(BPF_CSUM_LEVEL_QUERY)` after adjusting.
    pub csum_level: u32,
    pub flags: u64,
    /// Written by the program: the helper's return value.
    pub ret: i64,
    /// Written by the program: `bpf_csum_level`'s return value (if asked).
    pub csum_ret: i64,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], made only of integers and byte arrays,
    // with explicit padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for NeighKey {}
    unsafe impl aya::Pod for NeighValue {}
    unsafe impl aya::Pod for FdbKey {}
    unsafe impl aya::Pod for FdbValue {}
    unsafe impl aya::Pod for EndpointValue {}
    unsafe impl aya::Pod for NetworkValue {}
    unsafe impl aya::Pod for DatapathConfig {}
    unsafe impl aya::Pod for StatsValue {}
    unsafe impl aya::Pod for ProbeArgs {}
    unsafe impl aya::Pod for FloodValue {}
    unsafe impl aya::Pod for RouteKey {}
    unsafe impl aya::Pod for RouteValue {}
    unsafe impl aya::Pod for VtepKey {}
    unsafe impl aya::Pod for TraceEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<NeighKey>(), 8);
        assert_eq!(size_of::<NeighValue>(), 8);
        assert_eq!(size_of::<FdbKey>(), 12);
        assert_eq!(size_of::<FdbValue>(), 16);
        assert_eq!(size_of::<EndpointValue>(), 16);
        assert_eq!(size_of::<NetworkValue>(), 8);
        assert_eq!(size_of::<DatapathConfig>(), 4 + 4 + 8 + 8 + 2 + 2 + 4 + 16 + 4 + 4 + 4 + 4);
        assert_eq!(size_of::<TraceEvent>(), 8 + 4 * 6 + TRACE_HEAD);
        assert_eq!(size_of::<StatsValue>(), 16);
        assert_eq!(size_of::<ProbeArgs>(), 32);
        assert_eq!(size_of::<FloodValue>(), 8 + 4 * limits::MAX_FLOOD_PORTS);
        assert_eq!(size_of::<RouteKey>(), 8);
        assert_eq!(size_of::<RouteValue>(), 16);
        assert_eq!(size_of::<VtepKey>(), 8);
    }

    #[test]
    fn map_names_fit_kernel_object_names() {
        for name in maps::ALL.iter().chain([maps::PROBE].iter()) {
            assert!(name.len() <= 15, "{name} is longer than BPF_OBJ_NAME_LEN - 1");
        }
    }

    #[test]
    fn encap_l2_encodes_length_in_top_byte() {
        assert_eq!(adjust_room::encap_l2(14), 14u64 << 56);
        assert_eq!(adjust_room::ENCAP_BASE & 0xff, 0b1_0011);
    }
}
