use super::*;

#[test]
fn echo_request_checksums_to_zero() {
    let packet = echo_request(0x1234, 5, b"abcdefg");
    assert_eq!(&packet[..2], &[ICMP_ECHO_REQUEST, 0]);
    assert_eq!(&packet[4..8], &[0x12, 0x34, 0, 5]);
    assert_eq!(internet_checksum(&packet), 0);
}

#[test]
fn classify_reply_and_error() {
    let dst = Ipv4Addr::new(198, 51, 100, 2);
    let payload = echo_payload(3, 16);
    let mut reply = echo_request(77, 3, &payload);
    reply[0] = ICMP_ECHO_REPLY;
    reply[2..4].copy_from_slice(&[0, 0]);
    let checksum = internet_checksum(&reply);
    reply[2..4].copy_from_slice(&checksum.to_be_bytes());
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 198, 51, 100, 2, 198, 51, 100, 1,
    ];
    ip.extend_from_slice(&reply);
    assert!(matches!(
        classify(&ip, 77, dst, &payload),
        Received::Reply { seq: 3 }
    ));
    assert!(matches!(
        classify(&ip, 78, dst, &payload),
        Received::Unrelated
    ));
    assert!(matches!(
        classify(&ip, 77, dst, &payload[1..]),
        Received::Unrelated
    ));

    // Fragmentation needed from a router, quoting our request.
    let request = echo_request(77, 4, &payload);
    let mut quoted = vec![
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0, 198, 51, 100, 1, 198, 51, 100, 2,
    ];
    quoted.extend_from_slice(&request[..8]);
    let mut error = vec![
        0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 198, 51, 100, 254, 198, 51, 100, 1,
    ];
    error.extend_from_slice(&[ICMP_DEST_UNREACH, 4, 0, 0, 0, 0, 0x05, 0xaa]);
    error.extend_from_slice(&quoted);
    match classify(&error, 77, dst, &payload) {
        Received::Error(e) => assert_eq!(
            e,
            IcmpError {
                from: Ipv4Addr::new(198, 51, 100, 254),
                kind: ICMP_DEST_UNREACH,
                code: 4,
                next_hop_mtu: 1450,
                seq: 4
            }
        ),
        _ => panic!("not classified as an error"),
    }
}

#[test]
fn xorshift_is_deterministic() {
    let (mut a, mut b) = (XorShift::new(9), XorShift::new(9));
    let (mut x, mut y) = ([0u8; 13], [0u8; 13]);
    a.fill(&mut x);
    b.fill(&mut y);
    assert_eq!(x, y);
    assert_ne!(x, [0u8; 13]);
    let mut c = XorShift::new(10);
    c.fill(&mut y);
    assert_ne!(x, y);
}
