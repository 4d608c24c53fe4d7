//! Why the datapath did what it did with a packet. Every packet a program sees is
//! counted under exactly one reason (the upgrade-test variant also counts it under
//! [`Reason::UpgradeTestMarker`]). Codes are stable: a retired code keeps its slot
//! (write `// 7: retired, was ...`) so that old dumps and dashboards stay readable.

/// Where the packet came from (the program that saw it).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// TC ingress of a container's host-side veth: the container sent it.
    FromContainer = 0,
    /// TC ingress of the underlay interface.
    FromUnderlay = 1,
}

impl Direction {
    pub const COUNT: u32 = 2;
    pub const ALL: [Direction; 2] = [Direction::FromContainer, Direction::FromUnderlay];

    pub const fn name(self) -> &'static str {
        match self {
            Direction::FromContainer => "from-container",
            Direction::FromUnderlay => "from-underlay",
        }
    }
}

/// What happened to a packet. [`Reason::kind`] tells forwarded, passed and dropped apart.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    // --- forwarded by the datapath (1..=15)
    /// Encapsulated in VXLAN and sent to a remote VTEP.
    Encapsulated = 1,
    /// Delivered to another container on this host without leaving it.
    LocalDelivered = 2,
    /// ARP request answered from the neighbour map.
    ArpReplied = 3,
    /// VXLAN packet decapsulated and delivered into a local container.
    Decapsulated = 4,
    /// Broadcast/multicast replicated to the network's other local endpoints and (from
    /// a container) to every remote VTEP through the network's VXLAN device.
    Flooded = 5,
    /// Routed (L3 network) to another container on this host: Ethernet header rewritten
    /// as a router does, TTL decremented. Routed frames to another host count as
    /// [`Reason::Encapsulated`], routed frames from another host as [`Reason::Decapsulated`].
    Routed = 6,
    /// Not a verdict, and never counted by a normal build: the upgrade-test variant of
    /// the programs (overlay-ebpf's `upgrade-test-variant` feature) counts every packet
    /// here as well as under its real reason, so a test can see which build's programs
    /// run. No program ever returns it as an outcome.
    UpgradeTestMarker = 15,

    // --- handed to the kernel stack unchanged (16..=31)
    /// Not VXLAN for this VTEP (other underlay traffic): none of our business.
    PassNotOverlay = 16,
    /// VXLAN-port UDP that is an IP fragment: left to the kernel (reassembly is not
    /// done in eBPF).
    PassFragment = 17,
    /// Outer IPv4 header with options: left to the kernel.
    PassIpOptions = 18,
    /// The datapath has no configuration yet (agent starting).
    PassNotConfigured = 19,
    /// Routed to the host itself: its gateway address, or a destination outside every
    /// overlay network (the host routes it on, with source NAT when configured).
    PassToHost = 20,

    // --- dropped (32..=63)
    /// Headers shorter than they claim or than the protocol needs (also VXLAN whose
    /// inner frame is too short for an IPv4 header or ARP).
    Malformed = 32,
    /// Frame from a veth that is not a registered endpoint.
    UnknownEndpoint = 33,
    /// Source MAC differs from the endpoint's MAC (spoofing or misconfiguration).
    SourceMacMismatch = 34,
    /// ARP request for an IP with no neighbour entry in the sender's network.
    ArpUnknownTarget = 35,
    /// ARP that is not an Ethernet/IPv4 request (replies, gratuitous, other hw types).
    ArpNotRequest = 36,
    /// ARP request for the sender's own IP (duplicate address detection): not answered.
    ArpOwnAddress = 37,
    /// Broadcast or multicast frame in a network with nowhere to flood it to.
    BroadcastUnsupported = 38,
    /// Unicast to a MAC with no FDB entry in the network.
    UnknownDestination = 39,
    /// VXLAN for a VNI this host does not serve.
    UnknownVni = 40,
    /// VXLAN header without the I flag.
    VxlanBadFlags = 41,
    /// `bpf_skb_adjust_room` failed.
    AdjustRoomFailed = 42,
    /// The redirect helper refused the packet.
    RedirectFailed = 43,
    /// Writing into the packet failed (`bpf_skb_store_bytes`/`load_bytes`); a failed
    /// pull is [`Reason::PullFailed`].
    StoreFailed = 44,
    /// VXLAN to our port whose VNI is served but whose inner destination is a remote
    /// endpoint (we never forward VXLAN to VXLAN).
    NotLocalDestination = 45,
    /// A frame to the router MAC (L3 network) that is not IPv4 (from another host), or
    /// is an IPv4 packet with options or shorter than its header.
    RouteNotIpv4 = 46,
    /// Routed to an address with no route: an overlay address that no node subnet of
    /// the network holds and no local endpoint has, an address of another overlay
    /// network (isolation), or anything else when the network has no gateway to the
    /// host.
    NoRoute = 47,
    /// Routed with TTL 1 or 0: a router must not forward it (RFC 791, RFC 1812 5.3.1).
    TtlExceeded = 48,
    /// `bpf_skb_pull_data` failed (out of memory): the headers could not be made
    /// readable.
    PullFailed = 49,
    /// An IPv4 packet (or ARP sender address) from a container whose source address is
    /// not the endpoint's own (spoofing or misconfiguration).
    SourceIpMismatch = 50,
    /// VXLAN for us whose outer IPv4 header checksum is wrong (TC ingress runs before
    /// the kernel's own IP checks, so the datapath checks what it decapsulates).
    OuterBadChecksum = 51,
    /// VXLAN for us whose outer IPv4 total length or UDP length disagrees with the
    /// packet's length (truncated, or trailing bytes).
    OuterBadLength = 52,
    /// VXLAN from a source that is not a VTEP the store knows for that network (on by
    /// default; `known_vteps_only = false` in a network's config turns it off).
    UnknownVtep = 53,
    /// A decapsulated frame longer than the network's MTU allows (the container's
    /// interface would drop it anyway, uncounted).
    Oversized = 54,
    /// Not a verdict: one copy of a flooded frame that `bpf_clone_redirect` could not
    /// send (its veth went away between the agent's update and the packet). Counted per
    /// lost copy, besides the frame's own `flooded`.
    FloodCopyFailed = 55,
    /// A frame from a container that is neither IPv4 nor ARP (IPv6, 802.1Q-tagged,
    /// anything else): the overlay carries IPv4, and anti-spoofing checks the sources of
    /// IPv4 and ARP, so nothing else may leave a container.
    UnsupportedProtocol = 56,
}

/// How a reason ended for the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasonKind {
    Forwarded,
    Passed,
    Dropped,
}

impl Reason {
    pub const ALL: [Reason; 37] = [
        Reason::Encapsulated,
        Reason::LocalDelivered,
        Reason::ArpReplied,
        Reason::Decapsulated,
        Reason::Flooded,
        Reason::Routed,
        Reason::UpgradeTestMarker,
        Reason::PassNotOverlay,
        Reason::PassFragment,
        Reason::PassIpOptions,
        Reason::PassNotConfigured,
        Reason::PassToHost,
        Reason::Malformed,
        Reason::UnknownEndpoint,
        Reason::SourceMacMismatch,
        Reason::ArpUnknownTarget,
        Reason::ArpNotRequest,
        Reason::ArpOwnAddress,
        Reason::BroadcastUnsupported,
        Reason::UnknownDestination,
        Reason::UnknownVni,
        Reason::VxlanBadFlags,
        Reason::AdjustRoomFailed,
        Reason::RedirectFailed,
        Reason::StoreFailed,
        Reason::NotLocalDestination,
        Reason::RouteNotIpv4,
        Reason::NoRoute,
        Reason::TtlExceeded,
        Reason::PullFailed,
        Reason::SourceIpMismatch,
        Reason::OuterBadChecksum,
        Reason::OuterBadLength,
        Reason::UnknownVtep,
        Reason::Oversized,
        Reason::FloodCopyFailed,
        Reason::UnsupportedProtocol,
    ];

    /// Whether a packet's one count can be under this reason (every reason but the
    /// upgrade-test marker and the per-copy `flood-copy-failed`).
    pub const fn is_verdict(self) -> bool {
        !matches!(self, Reason::UpgradeTestMarker | Reason::FloodCopyFailed)
    }

    pub const fn kind(self) -> ReasonKind {
        match self as u32 {
            0..=15 => ReasonKind::Forwarded,
            16..=31 => ReasonKind::Passed,
            _ => ReasonKind::Dropped,
        }
    }

    pub const fn from_code(code: u32) -> Option<Reason> {
        Some(match code {
            1 => Reason::Encapsulated,
            2 => Reason::LocalDelivered,
            3 => Reason::ArpReplied,
            4 => Reason::Decapsulated,
            5 => Reason::Flooded,
            6 => Reason::Routed,
            15 => Reason::UpgradeTestMarker,
            16 => Reason::PassNotOverlay,
            17 => Reason::PassFragment,
            18 => Reason::PassIpOptions,
            19 => Reason::PassNotConfigured,
            20 => Reason::PassToHost,
            32 => Reason::Malformed,
            33 => Reason::UnknownEndpoint,
            34 => Reason::SourceMacMismatch,
            35 => Reason::ArpUnknownTarget,
            36 => Reason::ArpNotRequest,
            37 => Reason::ArpOwnAddress,
            38 => Reason::BroadcastUnsupported,
            39 => Reason::UnknownDestination,
            40 => Reason::UnknownVni,
            41 => Reason::VxlanBadFlags,
            42 => Reason::AdjustRoomFailed,
            43 => Reason::RedirectFailed,
            44 => Reason::StoreFailed,
            45 => Reason::NotLocalDestination,
            46 => Reason::RouteNotIpv4,
            47 => Reason::NoRoute,
            48 => Reason::TtlExceeded,
            49 => Reason::PullFailed,
            50 => Reason::SourceIpMismatch,
            51 => Reason::OuterBadChecksum,
            52 => Reason::OuterBadLength,
            53 => Reason::UnknownVtep,
            54 => Reason::Oversized,
            55 => Reason::FloodCopyFailed,
            56 => Reason::UnsupportedProtocol,
            _ => return None,
        })
    }

    /// Stable kebab-case name, used by `map dump`, metrics and tests.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Encapsulated => "encapsulated",
            Reason::LocalDelivered => "local-delivered",
            Reason::ArpReplied => "arp-replied",
            Reason::Decapsulated => "decapsulated",
            Reason::Flooded => "flooded",
            Reason::Routed => "routed",
            Reason::UpgradeTestMarker => "upgrade-test-marker",
            Reason::PassNotOverlay => "pass-not-overlay",
            Reason::PassFragment => "pass-fragment",
            Reason::PassIpOptions => "pass-ip-options",
            Reason::PassNotConfigured => "pass-not-configured",
            Reason::PassToHost => "pass-to-host",
            Reason::Malformed => "malformed",
            Reason::UnknownEndpoint => "unknown-endpoint",
            Reason::SourceMacMismatch => "source-mac-mismatch",
            Reason::ArpUnknownTarget => "arp-unknown-target",
            Reason::ArpNotRequest => "arp-not-request",
            Reason::ArpOwnAddress => "arp-own-address",
            Reason::BroadcastUnsupported => "broadcast-unsupported",
            Reason::UnknownDestination => "unknown-destination",
            Reason::UnknownVni => "unknown-vni",
            Reason::VxlanBadFlags => "vxlan-bad-flags",
            Reason::AdjustRoomFailed => "adjust-room-failed",
            Reason::RedirectFailed => "redirect-failed",
            Reason::StoreFailed => "store-failed",
            Reason::NotLocalDestination => "not-local-destination",
            Reason::RouteNotIpv4 => "route-not-ipv4",
            Reason::NoRoute => "no-route",
            Reason::TtlExceeded => "ttl-exceeded",
            Reason::PullFailed => "pull-failed",
            Reason::SourceIpMismatch => "source-ip-mismatch",
            Reason::OuterBadChecksum => "outer-bad-checksum",
            Reason::OuterBadLength => "outer-bad-length",
            Reason::UnknownVtep => "unknown-vtep",
            Reason::Oversized => "oversized",
            Reason::FloodCopyFailed => "flood-copy-failed",
            Reason::UnsupportedProtocol => "unsupported-protocol",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_fit_the_stats_slots() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r as u32), Some(r), "{}", r.name());
            assert!((r as u32) < crate::REASON_SLOTS);
        }
        // Every code from_code knows is listed in ALL (no reason left out of dumps).
        let known = (0..crate::REASON_SLOTS).filter_map(Reason::from_code).count();
        assert_eq!(known, Reason::ALL.len());
    }

    #[test]
    fn kinds_follow_code_ranges() {
        assert_eq!(Reason::Decapsulated.kind(), ReasonKind::Forwarded);
        assert_eq!(Reason::PassFragment.kind(), ReasonKind::Passed);
        assert_eq!(Reason::UnknownVni.kind(), ReasonKind::Dropped);
    }
}

#[cfg(test)]
mod readme {
    extern crate std;
    use std::format;

    use super::Reason;

    /// The README's drop-reason table (Operations) lists every reason, so an operator
    /// reading a `map dump` row finds what it means.
    #[test]
    fn the_readme_lists_every_reason() {
        let readme = include_str!("../../README.md");
        for r in Reason::ALL {
            if r == Reason::UpgradeTestMarker {
                continue;
            }
            let row = format!("| `{}` | {} |", r.name(), r as u32);
            assert!(readme.contains(&row), "README.md's reason table has no row starting {row}");
        }
    }
}
