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
mod tests {
    use super::*;

    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
    const BCAST: [u8; 6] = [0xff; 6];

    fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&dst);
        frame.extend_from_slice(&src);
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
        let total = u16::try_from(20 + payload.len()).unwrap();
        let mut header = vec![0x45, 0];
        header.extend_from_slice(&total.to_be_bytes());
        header.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, protocol, 0, 0]);
        header.extend_from_slice(&src.octets());
        header.extend_from_slice(&dst.octets());
        let checksum = internet_checksum(&header);
        header[10..12].copy_from_slice(&checksum.to_be_bytes());
        header.extend_from_slice(payload);
        header
    }

    fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let len = u16::try_from(8 + payload.len()).unwrap();
        let mut datagram = Vec::new();
        datagram.extend_from_slice(&src_port.to_be_bytes());
        datagram.extend_from_slice(&dst_port.to_be_bytes());
        datagram.extend_from_slice(&len.to_be_bytes());
        datagram.extend_from_slice(&[0, 0]);
        datagram.extend_from_slice(payload);
        datagram
    }

    fn vxlan(vni: u32, inner: &[u8]) -> Vec<u8> {
        let mut packet = vec![VXLAN_FLAG_VNI, 0, 0, 0];
        packet.extend_from_slice(&vni.to_be_bytes()[1..]);
        packet.push(0);
        packet.extend_from_slice(inner);
        packet
    }

    fn arp(op: u16, sender: ([u8; 6], Ipv4Addr), target: ([u8; 6], Ipv4Addr)) -> Vec<u8> {
        let mut packet = vec![0, 1, 0x08, 0x00, 6, 4];
        packet.extend_from_slice(&op.to_be_bytes());
        packet.extend_from_slice(&sender.0);
        packet.extend_from_slice(&sender.1.octets());
        packet.extend_from_slice(&target.0);
        packet.extend_from_slice(&target.1.octets());
        packet
    }

    fn echo_request(id: u16, seq: u16) -> Vec<u8> {
        let mut icmp = vec![ICMP_ECHO_REQUEST, 0, 0, 0];
        icmp.extend_from_slice(&id.to_be_bytes());
        icmp.extend_from_slice(&seq.to_be_bytes());
        icmp.extend_from_slice(b"payload!");
        let checksum = internet_checksum(&icmp);
        icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
        icmp
    }

    const H1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const H2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    const C1: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
    const C2: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);

    #[test]
    fn checksum_known_vectors() {
        // RFC 1071's example words sum to 0xddf2; the checksum is its complement.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        // Odd length: the last byte is padded with zero.
        assert_eq!(internet_checksum(&[0xff]), !0xff00);
        // A header with its checksum filled in sums to zero.
        let header = ipv4(H1, H2, IPPROTO_ICMP, &[]);
        assert_eq!(internet_checksum(&header), 0);
    }

    #[test]
    fn plain_arp_request() {
        let frame = eth(
            BCAST,
            MAC_A,
            ETH_P_ARP,
            &arp(ARP_REQUEST, (MAC_A, H1), ([0; 6], H2)),
        );
        let packet = decode(&frame).unwrap();
        assert_eq!(
            packet.eth,
            Ethernet {
                dst: BCAST,
                src: MAC_A,
                ethertype: ETH_P_ARP
            }
        );
        assert_eq!(
            packet.arp(),
            Some(&Arp {
                op: ARP_REQUEST,
                sender_mac: MAC_A,
                sender_ip: H1,
                target_mac: [0; 6],
                target_ip: H2
            })
        );
        assert_eq!(packet.ipv4(), None);
        assert_eq!(packet.inner(), None);
        assert_eq!(packet.len, 42);
    }

    #[test]
    fn icmp_echo() {
        let frame = eth(
            MAC_B,
            MAC_A,
            ETH_P_IP,
            &ipv4(H1, H2, IPPROTO_ICMP, &echo_request(0x4242, 7)),
        );
        let packet = decode(&frame).unwrap();
        let ip = packet.ipv4().unwrap();
        assert_eq!(
            (ip.src, ip.dst, ip.protocol, ip.ttl),
            (H1, H2, IPPROTO_ICMP, 64)
        );
        assert!(ip.checksum_ok);
        assert!(ip.dont_fragment);
        assert_eq!(ip.total_len, 36);
        assert_eq!(
            packet.icmp(),
            Some(&Icmp {
                kind: ICMP_ECHO_REQUEST,
                code: 0,
                id: 0x4242,
                seq: 7
            })
        );
        assert!(packet.is_echo_request_from(H1));
        assert!(!packet.is_echo_request_from(H2));
    }

    #[test]
    fn vxlan_with_inner_arp() {
        let inner = eth(
            BCAST,
            MAC_A,
            ETH_P_ARP,
            &arp(ARP_REQUEST, (MAC_A, C1), ([0; 6], C2)),
        );
        let outer = eth(
            MAC_B,
            MAC_A,
            ETH_P_IP,
            &ipv4(
                H1,
                H2,
                IPPROTO_UDP,
                &udp(49152, VXLAN_PORT, &vxlan(0x00abcdef, &inner)),
            ),
        );
        let packet = decode(&outer).unwrap();
        assert_eq!(packet.len, 14 + 20 + 8 + 8 + 42);
        let udp = packet.udp().unwrap();
        assert_eq!(
            (udp.src_port, udp.dst_port, udp.len),
            (49152, VXLAN_PORT, 8 + 8 + 42)
        );
        assert_eq!(
            packet.vxlan(),
            Some(&Vxlan {
                flags: VXLAN_FLAG_VNI,
                vni: 0xabcdef
            })
        );
        let inner = packet.inner().unwrap();
        assert_eq!(
            inner.eth,
            Ethernet {
                dst: BCAST,
                src: MAC_A,
                ethertype: ETH_P_ARP
            }
        );
        assert_eq!(inner.arp().unwrap().target_ip, C2);
        assert_eq!(packet.innermost(), inner);
        // Not an ARP itself.
        assert_eq!(packet.arp(), None);
    }

    #[test]
    fn vxlan_with_inner_icmp() {
        let inner = eth(
            MAC_B,
            MAC_A,
            ETH_P_IP,
            &ipv4(C1, C2, IPPROTO_ICMP, &echo_request(1, 2)),
        );
        let outer = eth(
            MAC_B,
            MAC_A,
            ETH_P_IP,
            &ipv4(
                H1,
                H2,
                IPPROTO_UDP,
                &udp(50000, VXLAN_PORT, &vxlan(42, &inner)),
            ),
        );
        let packet = decode(&outer).unwrap();
        assert_eq!(packet.vxlan().unwrap().vni, 42);
        assert!(packet.inner().unwrap().is_echo_request_from(C1));
        // On another port it is plain UDP.
        let plain = decode_with(&outer, 8472).unwrap();
        assert_eq!(plain.vxlan(), None);
        assert_eq!(plain.udp().unwrap().dst_port, VXLAN_PORT);
    }

    #[test]
    fn errors() {
        assert_eq!(
            decode(&[0; 10]),
            Err(DecodeError::Truncated {
                layer: "ethernet",
                need: 14,
                have: 10
            })
        );
        let short_ip = eth(MAC_B, MAC_A, ETH_P_IP, &[0x45, 0, 0]);
        assert!(matches!(
            decode(&short_ip),
            Err(DecodeError::Truncated { layer: "ipv4", .. })
        ));
        let v6 = eth(MAC_B, MAC_A, ETH_P_IP, &[0x60; 40]);
        assert_eq!(decode(&v6), Err(DecodeError::NotIpv4 { version: 6 }));
        let truncated_vxlan = eth(
            MAC_B,
            MAC_A,
            ETH_P_IP,
            &ipv4(
                H1,
                H2,
                IPPROTO_UDP,
                &udp(1, VXLAN_PORT, &[VXLAN_FLAG_VNI, 0, 0]),
            ),
        );
        assert!(matches!(
            decode(&truncated_vxlan),
            Err(DecodeError::Truncated { layer: "vxlan", .. })
        ));
        let mut bad_checksum = eth(MAC_B, MAC_A, ETH_P_IP, &ipv4(H1, H2, 200, &[]));
        bad_checksum[14 + 8] = 1; // TTL changed, checksum not updated
        assert!(!decode(&bad_checksum).unwrap().ipv4().unwrap().checksum_ok);
        // Unknown ethertypes are not errors.
        assert_eq!(
            decode(&eth(MAC_B, MAC_A, 0x86dd, &[])).unwrap().network,
            Network::Other
        );
    }
}
