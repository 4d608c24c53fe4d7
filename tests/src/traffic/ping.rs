//! ICMP echo over a raw socket, as `ping` does.

use super::*;

/// Settings of [`ping_with`].
#[derive(Debug, Clone)]
pub struct PingOptions {
    /// Echo requests to send, one after the other.
    pub count: u32,
    /// How long each request waits for its reply.
    pub timeout: Duration,
    /// Bytes of ICMP payload (the IP packet is 28 bytes more).
    pub payload_len: usize,
    /// Set DF (`IP_PMTUDISC_DO`): too big a packet then fails to send, or
    /// draws an ICMP "fragmentation needed" from a router.
    pub dont_fragment: bool,
    /// Send from this address of the namespace (bind), instead of the route's source.
    pub source: Option<Ipv4Addr>,
}

impl Default for PingOptions {
    fn default() -> Self {
        PingOptions {
            count: 3,
            timeout: Duration::from_secs(1),
            payload_len: 56,
            dont_fragment: false,
            source: None,
        }
    }
}

/// An ICMP error that answered one of our echo requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpError {
    pub from: Ipv4Addr,
    pub kind: u8,
    pub code: u8,
    /// For "fragmentation needed" (3/4): the next-hop MTU.
    pub next_hop_mtu: u16,
    pub seq: u16,
}

/// What [`ping`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PingResult {
    /// Requests tried (including those that failed to send).
    pub sent: u32,
    /// Replies from the destination with our id, seq and payload.
    pub received: u32,
    /// Requests the kernel refused to send (e.g. EMSGSIZE with DF).
    pub send_errors: u32,
    /// Round-trip times of the replies.
    pub rtts: Vec<Duration>,
    /// ICMP errors about our requests (unreachable, fragmentation needed...).
    pub icmp_errors: Vec<IcmpError>,
}

impl PingResult {
    /// Every request was answered.
    pub fn all_received(&self) -> bool {
        self.sent > 0 && self.received == self.sent
    }
}

static PING_ID: AtomicU16 = AtomicU16::new(0);

pub(crate) fn next_ping_id() -> u16 {
    // Raw ICMP sockets see every ICMP packet of the namespace, so concurrent
    // pings tell theirs apart by id.
    (std::process::id() as u16)
        .wrapping_mul(31)
        .wrapping_add(PING_ID.fetch_add(1, Ordering::Relaxed))
}

pub(super) fn echo_payload(seq: u16, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_add(seq as u8).wrapping_mul(7))
        .collect()
}

/// An ICMP echo request with a correct checksum.
pub fn echo_request(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(8 + payload.len());
    packet.extend_from_slice(&[ICMP_ECHO_REQUEST, 0, 0, 0]);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(payload);
    let checksum = internet_checksum(&packet);
    packet[2..4].copy_from_slice(&checksum.to_be_bytes());
    packet
}

pub(crate) enum Received {
    Reply { seq: u16 },
    Error(IcmpError),
    Unrelated,
}

/// Classifies what a raw ICMP socket read (an IPv4 packet) means for the echo
/// `id` to `dst` carrying `payload`.
pub(crate) fn classify(buf: &[u8], id: u16, dst: Ipv4Addr, payload: &[u8]) -> Received {
    let Some(ihl) = buf.first().map(|b| usize::from(b & 0x0f) * 4) else {
        return Received::Unrelated;
    };
    if buf.len() < ihl + 8 || ihl < 20 {
        return Received::Unrelated;
    }
    let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
    let icmp = &buf[ihl..];
    let u16_at = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    match icmp[0] {
        ICMP_ECHO_REPLY
            if src == dst
                && u16_at(icmp, 4) == id
                && &icmp[8..] == payload
                && internet_checksum(icmp) == 0 =>
        {
            Received::Reply {
                seq: u16_at(icmp, 6),
            }
        }
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED => {
            // The error quotes our IP header and the first 8 bytes of our ICMP.
            let quoted = &icmp[8..];
            let Some(qihl) = quoted.first().map(|b| usize::from(b & 0x0f) * 4) else {
                return Received::Unrelated;
            };
            if quoted.len() < qihl + 8 || qihl < 20 {
                return Received::Unrelated;
            }
            let qdst = Ipv4Addr::new(quoted[16], quoted[17], quoted[18], quoted[19]);
            let qicmp = &quoted[qihl..];
            if quoted[9] != 1
                || qdst != dst
                || qicmp[0] != ICMP_ECHO_REQUEST
                || u16_at(qicmp, 4) != id
            {
                return Received::Unrelated;
            }
            Received::Error(IcmpError {
                from: src,
                kind: icmp[0],
                code: icmp[1],
                next_hop_mtu: u16_at(icmp, 6),
                seq: u16_at(qicmp, 6),
            })
        }
        _ => Received::Unrelated,
    }
}

/// Sends `count` ICMP echo requests from `ns` to `dst`, one at a time, each
/// waiting up to `timeout` for its reply.
pub fn ping(ns: &NetNs, dst: Ipv4Addr, count: u32, timeout: Duration) -> PingResult {
    ping_with(
        ns,
        dst,
        &PingOptions {
            count,
            timeout,
            ..PingOptions::default()
        },
    )
}

/// [`ping`] with every setting.
pub fn ping_with(ns: &NetNs, dst: Ipv4Addr, options: &PingOptions) -> PingResult {
    let (dont_fragment, source) = (options.dont_fragment, options.source);
    let fd = ns
        .run(|| -> io::Result<OwnedFd> {
            let fd = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)?;
            if let Some(src) = source {
                let addr = sockaddr_in(src);
                // SAFETY: `addr` is live for the call and its size is passed.
                cvt(unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        (&addr as *const libc::sockaddr_in).cast(),
                        mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                })?;
            }
            if dont_fragment {
                setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    &libc::IP_PMTUDISC_DO,
                )?;
            }
            Ok(fd)
        })
        .unwrap_or_else(|e| panic!("raw ICMP socket in {}: {e}", ns.name()));
    let id = next_ping_id();
    let mut result = PingResult::default();
    let mut buf = vec![0u8; 65536];
    let to = sockaddr_in(dst);
    for seq in 0..options.count {
        let seq = seq as u16;
        let payload = echo_payload(seq, options.payload_len);
        let request = echo_request(id, seq, &payload);
        result.sent += 1;
        let started = Instant::now();
        // SAFETY: `request` and `to` are live for the call.
        let sent = cvt(unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ) as libc::c_int
        });
        if let Err(error) = sent {
            warn!(ns = ns.name(), %dst, seq, %error, "echo request not sent");
            result.send_errors += 1;
            continue;
        }
        let deadline = started + options.timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                debug!(ns = ns.name(), %dst, seq, "no echo reply");
                break;
            }
            match wait_readable(fd.as_raw_fd(), deadline - now) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(error) => panic!("poll on the ICMP socket: {error}"),
            }
            // SAFETY: `buf` is writable for its length.
            let n = unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                continue; // EAGAIN or EINTR
            };
            match classify(&buf[..n], id, dst, &payload) {
                Received::Reply { seq: got } if got == seq => {
                    result.received += 1;
                    result.rtts.push(started.elapsed());
                    break;
                }
                Received::Error(error) if error.seq == seq => {
                    result.icmp_errors.push(error);
                    break;
                }
                // Late replies to earlier requests, other pings, our own
                // requests to a local address...
                _ => {}
            }
        }
    }
    debug!(ns = ns.name(), %dst, ?result, "ping done");
    result
}
