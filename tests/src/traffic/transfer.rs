//! A TCP transfer with SHA-256 of what was sent and what arrived.

use super::*;

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

    pub(super) fn fill(&mut self, buf: &mut [u8]) {
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
