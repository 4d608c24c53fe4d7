//! Traffic inside namespaces, in pure Rust (no `ping`, `iperf` or `tcpdump`
//! binaries, which are slow to start in small VMs): ICMP echo over a raw
//! socket, a TCP transfer with SHA-256 on both ends, and an `AF_PACKET`
//! capture.
//!
//! Every socket is created on a thread inside the namespace (see
//! [`NetNs::run`]) and stays bound to it afterwards, so the rest of the work
//! runs on ordinary threads.

use std::{
    io::{self, Read, Write},
    mem,
    net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU16, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use crate::{ns::NetNs, packet::internet_checksum};

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(crate) fn socket(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success we own the new descriptor.
    let fd = cvt(unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the given size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Waits until `fd` is readable or `timeout` passes; Ok(false) on timeout.
pub(crate) fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd.
    match unsafe { libc::poll(&mut pollfd, 1, ms) } {
        -1 => {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(error)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

pub(crate) fn sockaddr_in(ip: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    }
}

// ---------------------------------------------------------------------------
// ping

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

fn echo_payload(seq: u16, len: usize) -> Vec<u8> {
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

// ---------------------------------------------------------------------------
// TCP transfer

/// Settings of [`tcp_transfer_with`].
#[derive(Debug, Clone)]
pub struct TransferOptions {
    /// Bound on the whole transfer, connection included.
    pub timeout: Duration,
    /// Seed of the pseudo-random data.
    pub seed: u64,
    /// Server port; 0 picks a free one.
    pub port: u16,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            timeout: crate::hang_guard(Duration::from_secs(30)),
            seed: 0x5eed_f00d_da7a,
            port: 0,
        }
    }
}

/// What [`tcp_transfer`] did. Connection and I/O failures are reported, not
/// panicked on, so a test may expect them.
#[derive(Debug)]
pub struct TransferResult {
    /// Bytes the client wrote.
    pub bytes_sent: usize,
    pub sent_sha256: [u8; 32],
    pub bytes_received: usize,
    pub received_sha256: [u8; 32],
    pub client_error: Option<io::Error>,
    pub server_error: Option<io::Error>,
    pub elapsed: Duration,
}

impl TransferResult {
    /// Everything arrived intact.
    pub fn is_complete(&self) -> bool {
        self.client_error.is_none()
            && self.server_error.is_none()
            && self.bytes_received == self.bytes_sent
            && self.sent_sha256 == self.received_sha256
    }
}

/// xorshift64*: deterministic bytes and choices for a given seed, without a
/// dependency.
#[derive(Debug, Clone)]
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// Sends `bytes` of pseudo-random data over TCP from `client_ns` to
/// `server_ip` (an address of `server_ns`) and hashes it on both ends.
/// Bounded by 30 s; compare the digests.
pub fn tcp_transfer(
    server_ns: &NetNs,
    server_ip: Ipv4Addr,
    client_ns: &NetNs,
    bytes: usize,
) -> TransferResult {
    tcp_transfer_with(
        server_ns,
        server_ip,
        client_ns,
        bytes,
        &TransferOptions::default(),
    )
}

/// [`tcp_transfer`] with every setting.
pub fn tcp_transfer_with(
    server_ns: &NetNs,
    server_ip: Ipv4Addr,
    client_ns: &NetNs,
    bytes: usize,
    options: &TransferOptions,
) -> TransferResult {
    let started = Instant::now();
    let deadline = started + options.timeout;
    let bind_to = SocketAddrV4::new(server_ip, options.port);
    let listener = server_ns
        .run(|| TcpListener::bind(bind_to))
        .unwrap_or_else(|e| panic!("listening on {bind_to} in {}: {e}", server_ns.name()));
    let server_addr = listener.local_addr().expect("listener address");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");

    let (server, client) = thread::scope(|scope| {
        let server = scope.spawn(|| serve_one(&listener, deadline));
        let client =
            scope.spawn(|| client_ns.run(|| send_all(server_addr, bytes, options.seed, deadline)));
        (
            server
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p)),
            client
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p)),
        )
    });
    let result = TransferResult {
        bytes_sent: client.0,
        sent_sha256: client.1,
        bytes_received: server.0,
        received_sha256: server.1,
        client_error: client.2,
        server_error: server.2,
        elapsed: started.elapsed(),
    };
    debug!(
        server = server_ns.name(),
        client = client_ns.name(),
        bytes_sent = result.bytes_sent,
        bytes_received = result.bytes_received,
        elapsed = ?result.elapsed,
        client_error = ?result.client_error,
        server_error = ?result.server_error,
        "tcp transfer done"
    );
    result
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "transfer deadline passed",
        ))
    } else {
        Ok(left)
    }
}

/// Accepts one connection and reads it to EOF: (bytes, digest, error).
fn serve_one(listener: &TcpListener, deadline: Instant) -> (usize, [u8; 32], Option<io::Error>) {
    let mut hasher = Sha256::new();
    let mut received = 0;
    let result = (|| -> io::Result<()> {
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_readable(
                        listener.as_raw_fd(),
                        remaining(deadline)?.min(Duration::from_millis(100)),
                    )?;
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_nonblocking(false)?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            stream.set_read_timeout(Some(remaining(deadline)?))?;
            match stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    received += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    })();
    (received, hasher.finalize().into(), result.err())
}

/// Connects and writes `bytes` of data, then half-closes: (bytes, digest, error).
fn send_all(
    to: SocketAddr,
    bytes: usize,
    seed: u64,
    deadline: Instant,
) -> (usize, [u8; 32], Option<io::Error>) {
    let mut hasher = Sha256::new();
    let mut sent = 0;
    let result = (|| -> io::Result<()> {
        let mut stream = TcpStream::connect_timeout(&to, remaining(deadline)?)?;
        let mut rng = XorShift::new(seed);
        let mut buf = vec![0u8; 64 * 1024];
        while sent < bytes {
            let n = buf.len().min(bytes - sent);
            rng.fill(&mut buf[..n]);
            stream.set_write_timeout(Some(remaining(deadline)?))?;
            stream.write_all(&buf[..n])?;
            hasher.update(&buf[..n]);
            sent += n;
        }
        stream.shutdown(Shutdown::Write)?;
        // Wait for the server to close, so its reads are done when we return.
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        let mut rest = [0u8; 64];
        while stream.read(&mut rest)? > 0 {}
        Ok(())
    })();
    (sent, hasher.finalize().into(), result.err())
}

// ---------------------------------------------------------------------------
// capture

/// Which way a captured frame went, from `sockaddr_ll.sll_pkttype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received by the interface (to this host, broadcast, multicast or
    /// another host).
    Incoming,
    /// Sent by the interface (`PACKET_OUTGOING`).
    Outgoing,
}

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame from the Ethernet header on; GSO super-packets come whole.
    pub data: Vec<u8>,
    pub direction: Direction,
    /// `sll_pkttype`: PACKET_HOST 0, BROADCAST 1, MULTICAST 2, OTHERHOST 3,
    /// OUTGOING 4.
    pub pkttype: u8,
    /// Length on the wire when larger than the capture buffer.
    pub truncated_from: Option<usize>,
}

impl Frame {
    /// Decodes the frame (see [`crate::packet::decode`]).
    pub fn decode(&self) -> Result<crate::packet::Packet, crate::packet::DecodeError> {
        crate::packet::decode(&self.data)
    }
}

/// Big enough for a 64 KiB GSO packet plus headers.
const CAPTURE_BUF: usize = 256 * 1024;
/// So a burst (a TCP transfer) is not dropped before the thread reads it.
const CAPTURE_RCVBUF: libc::c_int = 32 * 1024 * 1024;
/// How long a stop may wait for the capture thread to notice.
const CAPTURE_POLL: Duration = Duration::from_millis(50);

/// An `AF_PACKET` capture of one interface of a namespace, collecting frames
/// on a background thread until [`Capture::stop`].
#[derive(Debug)]
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<Vec<Frame>, String>>>,
    what: String,
}

impl Capture {
    /// Starts capturing every frame in and out of `ifname` in `ns`. Frames
    /// are queued from the moment this returns.
    pub fn start(ns: &NetNs, ifname: &str) -> Capture {
        let what = format!("{}:{ifname}", ns.name());
        let fd = ns
            .run(|| packet_socket(ifname))
            .unwrap_or_else(|e| panic!("packet socket on {what}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name(format!("capture-{ifname}"))
            .spawn(move || capture_loop(&fd, &thread_stop))
            .expect("spawn capture thread");
        debug!(%what, "capture started");
        Capture {
            stop,
            thread: Some(thread),
            what,
        }
    }

    /// Stops and returns every frame seen since [`Capture::start`], in order.
    ///
    /// Panics if the capture failed (a poll or receive error) or the kernel dropped
    /// frames for it: a test that looks for a frame, or for its absence, cannot trust
    /// an incomplete capture, so it fails instead of passing on what it did not see.
    pub fn stop(mut self) -> Vec<Frame> {
        self.finish()
    }

    fn finish(&mut self) -> Vec<Frame> {
        self.stop.store(true, Ordering::Relaxed);
        let frames = match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
                .unwrap_or_else(|e| panic!("the capture on {} is incomplete: {e}", self.what)),
            None => Vec::new(),
        };
        debug!(what = %self.what, frames = frames.len(), "capture stopped");
        frames
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(thread) = self.thread.take()
                && thread.join().is_err()
                && !thread::panicking()
            {
                panic!("capture thread of {} panicked", self.what);
            }
        }
    }
}

/// An `AF_PACKET` socket bound to `ifname` of the calling thread's namespace.
fn packet_socket(ifname: &str) -> io::Result<OwnedFd> {
    let name =
        std::ffi::CString::new(ifname).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    // Protocol 0: no frames until bound, so none from other interfaces slip in.
    let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
    let raw = fd.as_raw_fd();
    // SOCK_RAW packet sockets can be big; FORCE ignores rmem_max (we are root).
    if setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &CAPTURE_RCVBUF).is_err() {
        setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, &CAPTURE_RCVBUF)?;
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = ifindex as libc::c_int;
    // SAFETY: `addr` is a live sockaddr_ll of the given size.
    cvt(unsafe {
        libc::bind(
            raw,
            (&addr as *const libc::sockaddr_ll).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

fn capture_loop(fd: &OwnedFd, stop: &AtomicBool) -> Result<Vec<Frame>, String> {
    let mut frames = Vec::new();
    let mut buf = vec![0u8; CAPTURE_BUF];
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if !stopping {
            wait_readable(fd.as_raw_fd(), CAPTURE_POLL).map_err(|e| format!("poll failed after {} frames: {e}", frames.len()))?;
        }
        // Read what is queued; once stopping, drain and quit.
        loop {
            match recv_frame(fd.as_raw_fd(), &mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return Err(format!("receive failed after {} frames: {e}", frames.len())),
            }
        }
        if stopping {
            break;
        }
    }
    match drops(fd.as_raw_fd()) {
        Ok(0) => Ok(frames),
        Ok(n) => Err(format!("the kernel dropped {n} frames for it ({} captured)", frames.len())),
        Err(e) => Err(format!("reading its drop count: {e}")),
    }
}

/// One queued frame, or None if nothing is queued.
fn recv_frame(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<Frame>> {
    // SAFETY: sockaddr_ll is plain data.
    let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
    let mut from_len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `buf` and `from` are writable for the lengths given.
    let n = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            (&mut from as *mut libc::sockaddr_ll).cast(),
            &mut from_len,
        )
    };
    let Ok(len) = usize::try_from(n) else {
        let error = io::Error::last_os_error();
        return match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(error),
        };
    };
    let kept = len.min(buf.len());
    Ok(Some(Frame {
        data: buf[..kept].to_vec(),
        direction: if from.sll_pkttype == libc::PACKET_OUTGOING {
            Direction::Outgoing
        } else {
            Direction::Incoming
        },
        pkttype: from.sll_pkttype,
        truncated_from: (len > kept).then_some(len),
    }))
}

/// Frames the kernel dropped for this socket (its receive buffer was full).
fn drops(fd: RawFd) -> io::Result<u32> {
    let mut stats = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: `stats` is writable for `len` bytes.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut stats as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    })?;
    Ok(stats.tp_drops)
}

#[cfg(test)]
mod tests {
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
}
