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
