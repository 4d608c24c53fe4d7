//! [`LongConnection`]: one TCP connection carrying a numbered byte stream (see
//! [`super::numbered`]) in small, paced writes; the server checks every byte as it
//! arrives.

use std::{
    fmt,
    io::{self, Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tracing::debug;

use super::numbered::{Checker, Mismatch, fill};
use crate::{ns::NetNs, traffic::wait_readable};

/// Longest wait between two looks at the stop flags.
const POLL: Duration = Duration::from_millis(50);

/// Settings of [`LongConnection::start_with`].
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Bytes per write.
    pub chunk: usize,
    /// Time between two writes.
    pub interval: Duration,
    /// Nothing arriving (or a write blocked) for this long is a failure.
    pub stall_timeout: Duration,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            chunk: 256,
            interval: Duration::from_millis(5),
            stall_timeout: crate::hang_guard(Duration::from_secs(10)),
        }
    }
}

/// Which end of the connection saw an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// What went wrong with a [`LongConnection`].
#[derive(Debug)]
pub enum StreamError {
    /// The server never got the connection.
    Accept(io::Error),
    /// The connection was reset (or the pipe broke).
    Reset { side: Side, source: io::Error },
    /// Nothing moved for `after`.
    Timeout { side: Side, after: Duration },
    /// Bytes went missing: at `offset` the stream went on with the byte sent at
    /// `offset + missing`.
    Gap { offset: u64, missing: u64 },
    /// The byte at `offset` is not the one sent there.
    Corrupt { offset: u64, expected: u8, got: u8 },
    /// No other error, but the server got another number of bytes than the client sent.
    Short { sent: u64, received: u64 },
    /// Any other I/O error.
    Io { side: Side, source: io::Error },
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Accept(e) => write!(f, "the server never accepted the connection: {e}"),
            StreamError::Reset { side, source } => write!(f, "connection reset ({side:?} side): {source}"),
            StreamError::Timeout { side, after } => write!(f, "nothing moved for {after:?} ({side:?} side)"),
            StreamError::Gap { offset, missing } => write!(f, "{missing} bytes missing at offset {offset}"),
            StreamError::Corrupt { offset, expected, got } => {
                write!(f, "corrupt byte at offset {offset}: {got:#04x}, sent {expected:#04x}")
            }
            StreamError::Short { sent, received } => write!(f, "{sent} bytes sent, {received} received"),
            StreamError::Io { side, source } => write!(f, "I/O error ({side:?} side): {source}"),
        }
    }
}

fn io_error(side: Side, e: io::Error, timeout: Duration) -> StreamError {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
            StreamError::Reset { side, source: e }
        }
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => StreamError::Timeout { side, after: timeout },
        _ => StreamError::Io { side, source: e },
    }
}

impl From<Mismatch> for StreamError {
    fn from(m: Mismatch) -> Self {
        match m {
            Mismatch::Gap { offset, missing } => StreamError::Gap { offset, missing },
            Mismatch::Corrupt { offset, expected, got } => StreamError::Corrupt { offset, expected, got },
        }
    }
}

/// What a [`LongConnection`] saw.
#[derive(Debug, Default)]
pub struct StreamReport {
    pub bytes_sent: u64,
    /// Bytes the server got and checked (up to the first error).
    pub bytes_received: u64,
    pub errors: Vec<StreamError>,
    /// The longest time between two reads that returned data on the server.
    pub longest_stall: Duration,
    pub elapsed: Duration,
}

impl StreamReport {
    /// Everything sent arrived, in order and intact, and nothing failed.
    pub fn intact(&self) -> bool {
        self.errors.is_empty() && self.bytes_sent > 0 && self.bytes_received == self.bytes_sent
    }
}

impl fmt::Display for StreamReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes sent, {} received, longest stall {:?}, over {:?}",
            self.bytes_sent, self.bytes_received, self.longest_stall, self.elapsed
        )?;
        for e in &self.errors {
            write!(f, "; {e}")?;
        }
        Ok(())
    }
}

struct ClientEnd {
    sent: u64,
    error: Option<StreamError>,
}

struct ServerEnd {
    received: u64,
    error: Option<StreamError>,
    longest_stall: Duration,
}

/// Flags shared with the threads.
#[derive(Debug, Default)]
struct Flags {
    /// The client stops writing, shuts down its side and waits for the server to close.
    stop: AtomicBool,
    /// Both ends give up at once (a test failing).
    abort: AtomicBool,
    received: AtomicU64,
}

/// A TCP connection between two namespaces carrying a checked byte stream (see the
/// module docs) until [`LongConnection::stop`].
#[derive(Debug)]
pub struct LongConnection {
    flags: Arc<Flags>,
    client: Option<thread::JoinHandle<ClientEnd>>,
    server: Option<thread::JoinHandle<ServerEnd>>,
    started: Instant,
    what: String,
}

impl LongConnection {
    /// Listens on `server_ip` (an address of `server_ns`), connects from `client_ns`
    /// and starts the stream with the default [`StreamOptions`].
    pub fn start(server_ns: &NetNs, server_ip: Ipv4Addr, client_ns: &NetNs) -> LongConnection {
        Self::start_with(server_ns, server_ip, client_ns, &StreamOptions::default())
    }

    /// [`LongConnection::start`] with other settings.
    pub fn start_with(
        server_ns: &NetNs,
        server_ip: Ipv4Addr,
        client_ns: &NetNs,
        options: &StreamOptions,
    ) -> LongConnection {
        let bind_to = SocketAddrV4::new(server_ip, 0);
        let listener = server_ns
            .run(|| TcpListener::bind(bind_to))
            .unwrap_or_else(|e| panic!("listening on {bind_to} in {}: {e}", server_ns.name()));
        let addr = listener.local_addr().expect("listener address");
        let timeout = options.stall_timeout;
        let client = client_ns
            .run(|| TcpStream::connect_timeout(&addr, timeout))
            .unwrap_or_else(|e| panic!("connecting to {addr} from {}: {e}", client_ns.name()));
        Self::over(listener, client, options)
    }

    /// Runs the stream over `client`, connected to `listener` (sockets made by the
    /// caller, in whichever namespaces).
    pub fn over(listener: TcpListener, client: TcpStream, options: &StreamOptions) -> LongConnection {
        let what = format!("{:?} -> {:?}", client.local_addr().ok(), client.peer_addr().ok());
        let flags = Arc::new(Flags::default());
        let (server_flags, client_flags) = (Arc::clone(&flags), Arc::clone(&flags));
        let (server_options, client_options) = (options.clone(), options.clone());
        let server = thread::Builder::new()
            .name("stream-server".into())
            .spawn(move || serve(&listener, &server_options, &server_flags))
            .expect("spawn the stream server");
        let client = thread::Builder::new()
            .name("stream-client".into())
            .spawn(move || send(client, &client_options, &client_flags))
            .expect("spawn the stream client");
        debug!(%what, "long connection started");
        LongConnection {
            flags,
            client: Some(client),
            server: Some(server),
            started: Instant::now(),
            what,
        }
    }

    /// Bytes the server has received and checked so far.
    pub fn bytes_received(&self) -> u64 {
        self.flags.received.load(Ordering::Relaxed)
    }

    /// Stops writing, lets the server read everything and reports.
    pub fn stop(mut self) -> StreamReport {
        self.flags.stop.store(true, Ordering::Relaxed);
        let client = join(self.client.take().expect("client thread"));
        let server = join(self.server.take().expect("server thread"));
        let mut report = StreamReport {
            bytes_sent: client.sent,
            bytes_received: server.received,
            errors: client.error.into_iter().chain(server.error).collect(),
            longest_stall: server.longest_stall,
            elapsed: self.started.elapsed(),
        };
        if report.errors.is_empty() && report.bytes_sent != report.bytes_received {
            report.errors.push(StreamError::Short {
                sent: report.bytes_sent,
                received: report.bytes_received,
            });
        }
        debug!(what = %self.what, %report, "long connection stopped");
        report
    }
}

impl Drop for LongConnection {
    fn drop(&mut self) {
        self.flags.abort.store(true, Ordering::Relaxed);
        self.flags.stop.store(true, Ordering::Relaxed);
        let client = self.client.take().map(thread::JoinHandle::join);
        let server = self.server.take().map(thread::JoinHandle::join);
        let panicked = client.is_some_and(|r| r.is_err()) || server.is_some_and(|r| r.is_err());
        if panicked && !thread::panicking() {
            panic!("a thread of the long connection {} panicked", self.what);
        }
    }
}

fn join<T>(t: thread::JoinHandle<T>) -> T {
    t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// The server: accepts one connection and checks what arrives until EOF.
fn serve(listener: &TcpListener, options: &StreamOptions, flags: &Flags) -> ServerEnd {
    let mut end = ServerEnd {
        received: 0,
        error: None,
        longest_stall: Duration::ZERO,
    };
    let stream = match accept(listener, options.stall_timeout, flags) {
        Ok(Some(s)) => s,
        Ok(None) => return end,
        Err(e) => {
            end.error = Some(StreamError::Accept(e));
            return end;
        }
    };
    end.error = read_checked(stream, options.stall_timeout, flags, &mut end).err();
    end
}

/// The accepted connection; `None` when aborted first.
fn accept(listener: &TcpListener, timeout: Duration, flags: &Flags) -> io::Result<Option<TcpStream>> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(Some(stream));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if flags.abort.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {timeout:?}"),
            ));
        }
        wait_readable(listener.as_raw_fd(), POLL)?;
    }
}

fn read_checked(
    mut stream: TcpStream,
    timeout: Duration,
    flags: &Flags,
    end: &mut ServerEnd,
) -> Result<(), StreamError> {
    let io = |e| io_error(Side::Server, e, timeout);
    stream.set_read_timeout(Some(POLL)).map_err(io)?;
    let mut checker = Checker::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_data = Instant::now();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                end.longest_stall = end.longest_stall.max(last_data.elapsed());
                last_data = Instant::now();
                checker.feed(&buf[..n])?;
                end.received = checker.offset;
                flags.received.store(checker.offset, Ordering::Relaxed);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if flags.abort.load(Ordering::Relaxed) {
                    return Ok(());
                }
                if last_data.elapsed() >= timeout {
                    return Err(StreamError::Timeout {
                        side: Side::Server,
                        after: timeout,
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
}

/// The client: writes the stream until told to stop, then closes its side and waits
/// for the server to close.
fn send(mut stream: TcpStream, options: &StreamOptions, flags: &Flags) -> ClientEnd {
    let timeout = options.stall_timeout;
    let mut end = ClientEnd { sent: 0, error: None };
    let io = |e| io_error(Side::Client, e, timeout);
    let result = (|| -> Result<(), StreamError> {
        stream.set_nodelay(true).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let mut buf = vec![0u8; options.chunk];
        let mut next = Instant::now();
        while !flags.stop.load(Ordering::Relaxed) {
            fill(end.sent, &mut buf);
            stream.write_all(&buf).map_err(io)?;
            end.sent += buf.len() as u64;
            next += options.interval;
            let now = Instant::now();
            match next.checked_duration_since(now) {
                Some(pause) => thread::sleep(pause),
                None => next = now,
            }
        }
        stream.shutdown(Shutdown::Write).map_err(io)?;
        stream.set_read_timeout(Some(POLL)).map_err(io)?;
        let deadline = Instant::now() + timeout;
        let mut rest = [0u8; 64];
        loop {
            match stream.read(&mut rest) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if flags.abort.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        return Err(StreamError::Timeout {
                            side: Side::Client,
                            after: timeout,
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
    })();
    end.error = result.err();
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(from: u64, to: u64) -> Vec<u8> {
        let mut v = vec![0u8; (to - from) as usize];
        fill(from, &mut v);
        v
    }

    fn loopback_pair() -> (TcpListener, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener, client)
    }

    #[test]
    fn a_connection_runs_and_stops_intact() {
        let (listener, client) = loopback_pair();
        let options = StreamOptions {
            chunk: 100,
            interval: Duration::from_millis(2),
            ..StreamOptions::default()
        };
        let conn = LongConnection::over(listener, client, &options);
        let deadline = Instant::now() + Duration::from_secs(10);
        while conn.bytes_received() < 2_000 {
            assert!(Instant::now() < deadline, "no data flows over loopback");
            thread::sleep(Duration::from_millis(5));
        }
        let report = conn.stop();
        assert!(report.intact(), "{report}");
        assert!(
            report.bytes_sent >= 2_000 && report.bytes_sent.is_multiple_of(100),
            "{report}"
        );
    }

    #[test]
    fn the_server_reports_a_reset() {
        let (listener, mut client) = loopback_pair();
        client.write_all(&stream(0, 1000)).unwrap();
        // SO_LINGER 0: closing sends a RST instead of a FIN.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        crate::traffic::setsockopt(client.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &linger).unwrap();
        let options = StreamOptions::default();
        let flags = Flags::default();
        let server = thread::scope(|s| {
            let server = s.spawn(|| serve(&listener, &options, &flags));
            while flags.received.load(Ordering::Relaxed) < 1000 {
                thread::sleep(Duration::from_millis(5));
            }
            drop(client);
            server.join().unwrap()
        });
        assert_eq!(server.received, 1000);
        assert!(
            matches!(server.error, Some(StreamError::Reset { side: Side::Server, .. })),
            "{:?}",
            server.error.map(|e| e.to_string())
        );
    }

    #[test]
    fn a_silent_peer_times_out() {
        let (listener, client) = loopback_pair();
        let options = StreamOptions {
            stall_timeout: Duration::from_millis(200),
            ..StreamOptions::default()
        };
        let flags = Flags::default();
        let server = serve(&listener, &options, &flags);
        drop(client);
        assert!(matches!(
            server.error,
            Some(StreamError::Timeout { side: Side::Server, .. })
        ));
    }
}
