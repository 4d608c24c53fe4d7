//! A small decoder for captured frames: Ethernet -> ARP | IPv4 -> UDP | TCP |
//! ICMP, and UDP to the VXLAN port -> VXLAN -> the inner frame, decoded the
//! same way.
//!
//! Lengths come from the buffer, not from the headers, so GSO super-packets
//! (one capture record for many wire packets) decode too.

use std::{fmt, net::Ipv4Addr};

/// IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// The "I" flag: the VNI is valid (RFC 7348).
pub const VXLAN_FLAG_VNI: u8 = 0x08;
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;

const ETH_LEN: usize = 14;
const IPV4_MIN_LEN: usize = 20;
const UDP_LEN: usize = 8;
const TCP_MIN_LEN: usize = 20;
const ICMP_LEN: usize = 8;
const VXLAN_LEN: usize = 8;
const ARP_IPV4_LEN: usize = 28;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// `layer` needs `need` bytes, only `have` are left.
    Truncated {
        layer: &'static str,
        need: usize,
        have: usize,
    },
    /// An IPv4 ethertype with another IP version in the header.
    NotIpv4 { version: u8 },
    /// IHL below 5.
    BadIhl { ihl: u8 },
    /// An ARP packet that is not Ethernet/IPv4.
    UnsupportedArp {
        htype: u16,
        ptype: u16,
        hlen: u8,
        plen: u8,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { layer, need, have } => {
                write!(f, "{layer}: need {need} bytes, have {have}")
            }
            Self::NotIpv4 { version } => write!(f, "IP version {version} under ethertype IPv4"),
            Self::BadIhl { ihl } => write!(f, "IPv4 IHL {ihl}"),
            Self::UnsupportedArp {
                htype,
                ptype,
                hlen,
                plen,
            } => {
                write!(
                    f,
                    "ARP htype {htype} ptype {ptype:#06x} hlen {hlen} plen {plen}"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

fn need(layer: &'static str, buf: &[u8], len: usize) -> Result<(), DecodeError> {
    if buf.len() < len {
        return Err(DecodeError::Truncated {
            layer,
            need: len,
            have: buf.len(),
        });
    }
    Ok(())
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

fn mac_at(buf: &[u8], at: usize) -> [u8; 6] {
    let mut mac = [0; 6];
    mac.copy_from_slice(&buf[at..at + 6]);
    mac
}

fn ip_at(buf: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(buf[at], buf[at + 1], buf[at + 2], buf[at + 3])
}

/// The Internet checksum (RFC 1071) of `data`: 0 over a header that carries a
/// correct one.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(u16::from_be_bytes([*last, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Formats a MAC as `02:00:00:00:00:01`.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ethernet {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub op: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_mac: [u8; 6],
    pub target_ip: Ipv4Addr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4 {
    pub header_len: usize,
    pub tos: u8,
    pub total_len: u16,
    pub id: u16,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// In 8-byte units.
    pub fragment_offset: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub checksum: u16,
    /// Whether the header checksum verifies.
    pub checksum_ok: bool,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp {
    pub src_port: u16,
    pub dst_port: u16,
    pub len: u16,
    pub checksum: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    /// FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10.
    pub flags: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmp {
    pub kind: u8,
    pub code: u8,
    /// Echo identifier (meaningful for echo request/reply only).
    pub id: u16,
    /// Echo sequence number (meaningful for echo request/reply only).
    pub seq: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vxlan {
    pub flags: u8,
    pub vni: u32,
}

/// What follows the Ethernet header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    Arp(Arp),
    Ipv4 { header: Ipv4, transport: Transport },
    Other,
}

/// What follows the IPv4 header. Non-first fragments are `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Udp {
        header: Udp,
        vxlan: Option<Box<VxlanPayload>>,
    },
    Tcp(Tcp),
    Icmp(Icmp),
    Other,
}

/// A VXLAN header and the frame it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPayload {
    pub header: Vxlan,
    pub inner: Packet,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub eth: Ethernet,
    pub network: Network,
    /// Bytes in the frame (including the Ethernet header).
    pub len: usize,
}

impl Packet {
    pub fn arp(&self) -> Option<&Arp> {
        match &self.network {
            Network::Arp(arp) => Some(arp),
            _ => None,
        }
    }

    pub fn ipv4(&self) -> Option<&Ipv4> {
        match &self.network {
            Network::Ipv4 { header, .. } => Some(header),
            _ => None,
        }
    }

    pub fn transport(&self) -> Option<&Transport> {
        match &self.network {
            Network::Ipv4 { transport, .. } => Some(transport),
            _ => None,
        }
    }

    pub fn udp(&self) -> Option<&Udp> {
        match self.transport()? {
            Transport::Udp { header, .. } => Some(header),
            _ => None,
        }
    }

    pub fn tcp(&self) -> Option<&Tcp> {
        match self.transport()? {
            Transport::Tcp(tcp) => Some(tcp),
            _ => None,
        }
    }

    pub fn icmp(&self) -> Option<&Icmp> {
        match self.transport()? {
            Transport::Icmp(icmp) => Some(icmp),
            _ => None,
        }
    }

    /// The VXLAN header, if this is a VXLAN packet.
    pub fn vxlan(&self) -> Option<&Vxlan> {
        self.vxlan_payload().map(|v| &v.header)
    }

    /// The frame inside VXLAN, if this is a VXLAN packet.
    pub fn inner(&self) -> Option<&Packet> {
        self.vxlan_payload().map(|v| &v.inner)
    }

    /// The innermost frame: `self` unless it is VXLAN.
    pub fn innermost(&self) -> &Packet {
        match self.inner() {
            Some(inner) => inner.innermost(),
            None => self,
        }
    }

    fn vxlan_payload(&self) -> Option<&VxlanPayload> {
        match self.transport()? {
            Transport::Udp {
                vxlan: Some(payload),
                ..
            } => Some(payload),
            _ => None,
        }
    }

    /// Whether this (not looking inside VXLAN) is an ICMP echo request from
    /// `src`.
    pub fn is_echo_request_from(&self, src: Ipv4Addr) -> bool {
        self.ipv4().is_some_and(|ip| ip.src == src)
            && self
                .icmp()
                .is_some_and(|icmp| icmp.kind == ICMP_ECHO_REQUEST)
    }
}

/// Decodes a frame, taking UDP to port [`VXLAN_PORT`] as VXLAN.
pub fn decode(frame: &[u8]) -> Result<Packet, DecodeError> {
    decode_with(frame, VXLAN_PORT)
}

/// Decodes a frame, taking UDP to `vxlan_port` as VXLAN.
pub fn decode_with(frame: &[u8], vxlan_port: u16) -> Result<Packet, DecodeError> {
    need("ethernet", frame, ETH_LEN)?;
    let eth = Ethernet {
        dst: mac_at(frame, 0),
        src: mac_at(frame, 6),
        ethertype: u16_at(frame, 12),
    };
    let rest = &frame[ETH_LEN..];
    let network = match eth.ethertype {
        ETH_P_ARP => Network::Arp(decode_arp(rest)?),
        ETH_P_IP => decode_ipv4(rest, vxlan_port)?,
        _ => Network::Other,
    };
    Ok(Packet {
        eth,
        network,
        len: frame.len(),
    })
}

fn decode_arp(buf: &[u8]) -> Result<Arp, DecodeError> {
    need("arp", buf, 8)?;
    let (htype, ptype, hlen, plen) = (u16_at(buf, 0), u16_at(buf, 2), buf[4], buf[5]);
    if htype != 1 || ptype != ETH_P_IP || hlen != 6 || plen != 4 {
        return Err(DecodeError::UnsupportedArp {
            htype,
            ptype,
            hlen,
            plen,
        });
    }
    need("arp", buf, ARP_IPV4_LEN)?;
    Ok(Arp {
        op: u16_at(buf, 6),
        sender_mac: mac_at(buf, 8),
        sender_ip: ip_at(buf, 14),
        target_mac: mac_at(buf, 18),
        target_ip: ip_at(buf, 24),
    })
}

fn decode_ipv4(buf: &[u8], vxlan_port: u16) -> Result<Network, DecodeError> {
    need("ipv4", buf, IPV4_MIN_LEN)?;
    let version = buf[0] >> 4;
    if version != 4 {
        return Err(DecodeError::NotIpv4 { version });
    }
    let ihl = buf[0] & 0x0f;
    if ihl < 5 {
        return Err(DecodeError::BadIhl { ihl });
    }
    let header_len = usize::from(ihl) * 4;
    need("ipv4 options", buf, header_len)?;
    let frag = u16_at(buf, 6);
    let header = Ipv4 {
        header_len,
        tos: buf[1],
        total_len: u16_at(buf, 2),
        id: u16_at(buf, 4),
        dont_fragment: frag & 0x4000 != 0,
        more_fragments: frag & 0x2000 != 0,
        fragment_offset: frag & 0x1fff,
        ttl: buf[8],
        protocol: buf[9],
        checksum: u16_at(buf, 10),
        checksum_ok: internet_checksum(&buf[..header_len]) == 0,
        src: ip_at(buf, 12),
        dst: ip_at(buf, 16),
    };
    let payload = &buf[header_len..];
    let transport = if header.fragment_offset != 0 {
        Transport::Other
    } else {
        match header.protocol {
            IPPROTO_UDP => decode_udp(payload, vxlan_port)?,
            IPPROTO_TCP => {
                need("tcp", payload, TCP_MIN_LEN)?;
                Transport::Tcp(Tcp {
                    src_port: u16_at(payload, 0),
                    dst_port: u16_at(payload, 2),
                    seq: u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]),
                    ack: u32::from_be_bytes([payload[8], payload[9], payload[10], payload[11]]),
                    flags: payload[13],
                })
            }
            IPPROTO_ICMP => {
                need("icmp", payload, ICMP_LEN)?;
                Transport::Icmp(Icmp {
                    kind: payload[0],
                    code: payload[1],
                    id: u16_at(payload, 4),
                    seq: u16_at(payload, 6),
                })
            }
            _ => Transport::Other,
        }
    };
    Ok(Network::Ipv4 { header, transport })
}

fn decode_udp(buf: &[u8], vxlan_port: u16) -> Result<Transport, DecodeError> {
    need("udp", buf, UDP_LEN)?;
    let header = Udp {
        src_port: u16_at(buf, 0),
        dst_port: u16_at(buf, 2),
        len: u16_at(buf, 4),
        checksum: u16_at(buf, 6),
    };
    let vxlan = if header.dst_port == vxlan_port {
        let payload = &buf[UDP_LEN..];
        need("vxlan", payload, VXLAN_LEN)?;
        let vni = u32::from_be_bytes([0, payload[4], payload[5], payload[6]]);
        let inner = decode_with(&payload[VXLAN_LEN..], vxlan_port)?;
        Some(Box::new(VxlanPayload {
            header: Vxlan {
                flags: payload[0],
                vni,
            },
            inner,
        }))
    } else {
        None
    };
    Ok(Transport::Udp { header, vxlan })
}

#[cfg(test)]
mod tests;
