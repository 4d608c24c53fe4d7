//! An `AF_PACKET` capture of one interface, on its own thread.

use super::*;

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
