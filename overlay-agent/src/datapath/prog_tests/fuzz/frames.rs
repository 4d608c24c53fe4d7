//! The frames: templates of what each side sends, mutations, and the random numbers.

use super::*;

pub(super) struct Template {
    pub(super) name: &'static str,
    pub(super) frame: Vec<u8>,
}

pub(super) fn template(name: &'static str, frame: Vec<u8>) -> Template {
    Template { name, frame }
}

/// frame_a_to_b's UDP packet from A, to `ip` at `mac`.
pub(super) fn a_to(mac: [u8; 6], ip: [u8; 4]) -> Vec<u8> {
    let mut f = frame_a_to_b(64);
    f[0..6].copy_from_slice(&mac);
    f[30..34].copy_from_slice(&ip);
    fix_ip_checksum(&mut f, ETH_END);
    f
}

pub(super) fn with_type(mut f: Vec<u8>, ether_type: [u8; 2]) -> Vec<u8> {
    f[12..14].copy_from_slice(&ether_type);
    f
}

/// A → `dst` through host 1's router, with TTL `ttl`.
pub(super) fn routed_frame(dst: [u8; 4], ttl: u8) -> Vec<u8> {
    let mut f = a_to(ROUTER_1, dst);
    f[22] = ttl;
    fix_ip_checksum(&mut f, ETH_END);
    f
}

pub(super) fn container_templates() -> Vec<Template> {
    let mut arp_reply = arp_request(MAC_A, IP_A, IP_B);
    arp_reply[21] = 2;
    let mut spoofed_ip = frame_a_to_b(64);
    spoofed_ip[26..30].copy_from_slice(&IP_C);
    let mut spoofed_mac = frame_a_to_b(64);
    spoofed_mac[6..12].copy_from_slice(&MAC_C);
    vec![
        template("ARP request for B", arp_request(MAC_A, IP_A, IP_B)),
        template("ARP probe for the gateway", arp_request(MAC_A, [0; 4], GATEWAY)),
        template("ARP request for its own address", arp_request(MAC_A, IP_A, IP_A)),
        template("ARP request for another network's container", arp_request(MAC_A, IP_A, IP_X)),
        template("ARP reply", arp_reply),
        template("IPv4 to remote B", frame_a_to_b(64)),
        template("IPv4 to remote B, full MTU", frame_a_to_b(1450 - 28)),
        template("IPv4 to local C", a_to(MAC_C, IP_C)),
        template("IPv4 broadcast", a_to([0xff; 6], [10, 0, 255, 255])),
        template("IPv4 to an unknown MAC", a_to(MAC_UNKNOWN, IP_B)),
        template("IPv4 to an FDB entry of unknown kind", a_to(MAC_ODD, IP_B)),
        template("IPv4 from a spoofed address", spoofed_ip),
        template("IPv4 from a spoofed MAC", spoofed_mac),
        template("IPv6 to remote B", with_type(frame_a_to_b(64), ETH_IPV6)),
        template("IPv6 multicast", with_type(a_to([0x33, 0x33, 0, 0, 0, 1], IP_B), ETH_IPV6)),
        template("another protocol to remote B", with_type(frame_a_to_b(64), [0x88, 0xb5])),
        template("routed to a remote subnet", routed_frame(FAR, 64)),
        template("routed to local C", routed_frame(IP_C, 64)),
        template("routed to the gateway", routed_frame(GATEWAY, 64)),
        template("routed outside", routed_frame(OUTSIDE, 64)),
        template("routed to no subnet", routed_frame(UNROUTED, 64)),
        template("routed to remote B (not routable)", routed_frame(IP_B, 64)),
        template("routed with TTL 1", routed_frame(FAR, 1)),
    ]
}

/// VXLAN frames host 1 sends (its container program encapsulates them), and edits of them.
pub(super) fn underlay_templates(p: &Progs) -> Vec<Template> {
    let wire = |frame: &[u8]| {
        let (ret, out) = p.run(programs::FROM_CONTAINER, frame);
        assert_eq!(ret, TC_ACT_REDIRECT, "host 1 encapsulates the template");
        out
    };
    let a_to_b = wire(&frame_a_to_b(64));
    let edit = |at: usize, bytes: &[u8]| {
        let mut f = a_to_b.clone();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        fix_outer(&mut f);
        f
    };
    let mut inner_arp = a_to_b[..VXLAN_END].to_vec();
    let mut arp = arp_request(MAC_A, IP_A, IP_B);
    arp[0..6].copy_from_slice(&MAC_B);
    inner_arp.extend(arp);
    fix_outer(&mut inner_arp);
    let mut short_inner = a_to_b[..VXLAN_END + 20].to_vec();
    fix_outer(&mut short_inner);
    vec![
        template("VXLAN A to B", a_to_b.clone()),
        template("VXLAN A to B, full MTU", wire(&frame_a_to_b(1450 - 28))),
        // Built by hand: no container may send IPv6 any more, but other VTEPs may carry it.
        template("VXLAN A to B, IPv6 inside", edit(VXLAN_END + 12, &ETH_IPV6)),
        template("VXLAN routed to FAR", wire(&routed_frame(FAR, 64))),
        template("VXLAN routed to FAR, TTL 1 left", wire(&routed_frame(FAR, 2))),
        template("VXLAN from VTEP 3", edit(26, &VTEP_3)),
        template("VXLAN from an unknown VTEP", edit(26, &VTEP_UNKNOWN)),
        template("VXLAN to another VTEP", edit(30, &VTEP_1)),
        template("VXLAN of network 43", edit(46, &[0, 0, OTHER_VNI as u8])),
        template("VXLAN of an unknown VNI", edit(46, &[0, 0, 99])),
        template("VXLAN without the I flag", edit(42, &[0])),
        template("VXLAN fragment (MF)", edit(20, &[0x20, 0])),
        template("VXLAN fragment (offset)", edit(20, &[0, 0xb9])),
        template("VXLAN with IP options", with_ip_options(&a_to_b)),
        template("TCP to the VTEP", edit(23, &[6])),
        template("UDP to another port", edit(36, &53u16.to_be_bytes())),
        template("VXLAN, inner broadcast", edit(50, &[0xff; 6])),
        template("VXLAN to A, remote here", edit(50, &MAC_A)),
        template("VXLAN to an unknown MAC", edit(50, &MAC_UNKNOWN)),
        template("VXLAN carrying ARP", inner_arp),
        template("VXLAN with a 20-byte inner frame", short_inner),
        template("ARP on the underlay", arp_request(MAC_A, VTEP_1, VTEP_2)),
    ]
}

/// `wire` with four bytes of IP options (NOP NOP NOP EOL), lengths and checksum right.
pub(super) fn with_ip_options(wire: &[u8]) -> Vec<u8> {
    let mut f = wire[..IP_END].to_vec();
    f[ETH_END] = 0x46;
    f.extend([1, 1, 1, 0]);
    f.extend(&wire[IP_END..]);
    let ip_len = (f.len() - ETH_END) as u16;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[42..44].copy_from_slice(&(ip_len - 24).to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = ipv4_checksum(&f[ETH_END..IP_END + 4]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// Sets the checksum of the 20-byte IPv4 header at `at`.
pub(super) fn fix_ip_checksum(f: &mut [u8], at: usize) {
    f[at + 10..at + 12].copy_from_slice(&[0, 0]);
    let c = ipv4_checksum(&f[at..at + 20]);
    f[at + 10..at + 12].copy_from_slice(&c.to_be_bytes());
}

/// Makes the outer IPv4 total length, UDP length and checksum agree with the frame, as far
/// as it reaches: what a sender that means it would send.
pub(super) fn fix_outer(f: &mut [u8]) {
    if f.len() >= UDP_END {
        let ip_len = (f.len() - ETH_END) as u16;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    }
    fix_outer_checksum(f);
}

pub(super) fn fix_outer_checksum(f: &mut [u8]) {
    if f.len() >= IP_END {
        fix_ip_checksum(f, ETH_END);
    }
}

/// One frame to send, and how it was made.
pub(super) fn generate(rng: &mut Rng, t: &Target) -> (String, Vec<u8>) {
    if rng.chance(7) {
        let limit = if rng.chance(2) { MAX_LEN } else { SHORT_LEN };
        let len = rng.below(limit + 1);
        return ("random bytes".to_string(), rng.bytes(len));
    }
    let template = &t.templates[rng.below(t.templates.len())];
    let mut frame = template.frame.clone();
    let mut origin = template.name.to_string();
    let mutations = if rng.chance(10) { 0 } else { 1 + rng.below(4) };
    for _ in 0..mutations {
        let what = mutate(rng, &mut frame, t);
        write!(origin, "; {what}").unwrap();
    }
    if t.refix_outer && mutations > 0 {
        match rng.below(4) {
            0 | 1 => {
                fix_outer(&mut frame);
                origin.push_str("; outer lengths and checksum fixed");
            }
            2 => {
                fix_outer_checksum(&mut frame);
                origin.push_str("; outer checksum fixed");
            }
            _ => {}
        }
    }
    (origin, frame)
}

pub(super) fn mutate(rng: &mut Rng, f: &mut Vec<u8>, t: &Target) -> String {
    match rng.below(8) {
        0 if !f.is_empty() => {
            let (at, bit) = (position(rng, f.len()), rng.below(8));
            f[at] ^= 1 << bit;
            format!("bit {bit} of byte {at} flipped")
        }
        1 if !f.is_empty() => {
            let at = position(rng, f.len());
            f[at] = rng.byte();
            format!("byte {at} random")
        }
        2..=4 => overwrite_field(rng, f, t.fields),
        5 => {
            let len = rng.pick(t.lengths);
            resize(rng, f, len);
            format!("resized to {len}")
        }
        6 => {
            let len = rng.below(MAX_LEN + 1);
            resize(rng, f, len);
            format!("resized to {len}")
        }
        _ => {
            let keep = rng.below(f.len().min(80) + 1);
            let len = keep + rng.below(200);
            f.truncate(keep);
            resize(rng, f, len);
            format!("random after byte {keep}, {len} bytes")
        }
    }
}

/// Mostly in the headers, where the checks look.
pub(super) fn position(rng: &mut Rng, len: usize) -> usize {
    if rng.chance(4) { rng.below(len) } else { rng.below(len.min(96)) }
}

pub(super) fn overwrite_field(rng: &mut Rng, f: &mut [u8], fields: &[(usize, Kind)]) -> String {
    let (at, kind) = rng.pick(fields);
    let value = value(rng, kind);
    match f.get_mut(at..at + value.len()) {
        Some(field) => {
            field.copy_from_slice(&value);
            format!("bytes {at}.. set to {}", hex(&value))
        }
        None => format!("field at {at} beyond the end"),
    }
}

/// A value for a field of `kind`: one in four random, the others from the dictionaries.
pub(super) fn value(rng: &mut Rng, kind: Kind) -> Vec<u8> {
    let width = match kind {
        Kind::Mac => 6,
        Kind::Ip => 4,
        Kind::Vni => 3,
        Kind::Byte => 1,
        Kind::EtherType | Kind::Word | Kind::Port => 2,
    };
    if rng.chance(4) {
        return rng.bytes(width);
    }
    match kind {
        Kind::Mac => rng.pick(&MACS).to_vec(),
        Kind::Ip => rng.pick(&IPS).to_vec(),
        Kind::EtherType => rng.pick(&ETHER_TYPES).to_be_bytes().to_vec(),
        Kind::Byte => vec![rng.pick(&BYTES)],
        Kind::Word => rng.pick(&WORDS).to_be_bytes().to_vec(),
        Kind::Port => rng.pick(&PORTS).to_be_bytes().to_vec(),
        Kind::Vni => rng.pick(&VNIS).to_be_bytes()[1..].to_vec(),
    }
}

/// Truncates `f` to `len` bytes or extends it with random ones.
pub(super) fn resize(rng: &mut Rng, f: &mut Vec<u8>, len: usize) {
    if len <= f.len() {
        f.truncate(len);
    } else {
        let extra = rng.bytes(len - f.len());
        f.extend(extra);
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        write!(s, "{b:02x}").unwrap();
        s
    })
}

/// SplitMix64 (Steele, Lea, Flood: "Fast splittable pseudorandom number generators"): small,
/// and the same sequence for a seed on every machine.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in 0..n for n far below 2^64.
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(super) fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    pub(super) fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    pub(super) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    pub(super) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

pub(super) fn seed() -> u64 {
    let Ok(text) = std::env::var("OVERLAY_FUZZ_SEED") else { return DEFAULT_SEED };
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.unwrap_or_else(|e| panic!("OVERLAY_FUZZ_SEED={text}: {e}"))
}
