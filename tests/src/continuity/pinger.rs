//! [`Pinger`]: ICMP echo requests at a fixed rate, replies matched by sequence number.

use std::{
    fmt, io, mem,
    net::Ipv4Addr,
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tracing::debug;

use crate::{
    ns::NetNs,
    traffic::{Received, classify, cvt, echo_request, next_ping_id, sockaddr_in, socket, wait_readable},
};

/// How often [`Pinger::start`] sends a request.
pub const PING_INTERVAL: Duration = Duration::from_millis(10);
/// Requests sent this shortly before [`Pinger::stop`] may still be on their way: they
/// are reported as in flight when unanswered, never as lost.
pub const IN_FLIGHT: Duration = Duration::from_millis(200);
/// How long the pinger keeps reading replies after its last request.
const DRAIN: Duration = Duration::from_millis(300);
/// Longest wait between two looks at the stop flag.
const POLL: Duration = Duration::from_millis(20);
const PAYLOAD_LEN: usize = 56;

/// What a [`Pinger`] saw. Requests are numbered from 0 in sending order (the ICMP
/// sequence number is that number modulo 2^16).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PingReport {
    /// Requests tried, including any the kernel refused to send.
    pub sent: u64,
    /// Requests answered (each counted once).
    pub received: u64,
    /// Requests sent more than [`IN_FLIGHT`] before the stop that got no reply.
    pub lost: Vec<u64>,
    /// Unanswered requests of the last [`IN_FLIGHT`] (not lost).
    pub in_flight: u64,
    /// Requests the kernel refused (no route, ...): also in `lost` unless in flight.
    pub send_errors: u64,
    /// ICMP errors (unreachable, ...) about our requests.
    pub icmp_errors: u64,
    /// Replies to a request that was already answered.
    pub duplicates: u64,
    /// The longest time between two replies (or from the first request to the first
    /// reply): how long an outage lasted, had there been one.
    pub longest_silence: Duration,
    /// The slowest reply.
    pub max_rtt: Duration,
    /// From the first request to the stop.
    pub elapsed: Duration,
}

impl fmt::Display for PingReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sent, {} received, {} lost {:?}, {} in flight, {} send errors, {} ICMP errors, {} duplicates, \
             longest silence {:?}, max RTT {:?}, over {:?}",
            self.sent,
            self.received,
            self.lost.len(),
            self.lost,
            self.in_flight,
            self.send_errors,
            self.icmp_errors,
            self.duplicates,
            self.longest_silence,
            self.max_rtt,
            self.elapsed
        )
    }
}

/// Sends and replies, by request number.
#[derive(Debug, Default)]
struct Book {
    sent_at: Vec<Instant>,
    replied_at: Vec<Option<Instant>>,
    send_errors: u64,
    icmp_errors: u64,
    duplicates: u64,
}

impl Book {
    /// Records a request sent (or refused, `ok == false`) at `at`; returns its number.
    fn sent(&mut self, at: Instant, ok: bool) -> u64 {
        self.sent_at.push(at);
        self.replied_at.push(None);
        if !ok {
            self.send_errors += 1;
        }
        self.sent_at.len() as u64 - 1
    }

    /// The number of the latest request with ICMP sequence number `seq`.
    fn number_of(&self, seq: u16) -> Option<u64> {
        let last = (self.sent_at.len() as u64).checked_sub(1)?;
        let back = u64::from((last as u16).wrapping_sub(seq));
        last.checked_sub(back)
    }

    fn reply(&mut self, seq: u16, at: Instant) {
        let Some(n) = self.number_of(seq) else { return };
        let slot = &mut self.replied_at[n as usize];
        match slot {
            Some(_) => self.duplicates += 1,
            None => *slot = Some(at),
        }
    }

    /// The report for a pinger stopped at `stopped`.
    fn report(&self, stopped: Instant) -> PingReport {
        let mut r = PingReport {
            sent: self.sent_at.len() as u64,
            send_errors: self.send_errors,
            icmp_errors: self.icmp_errors,
            duplicates: self.duplicates,
            ..PingReport::default()
        };
        let Some(&first) = self.sent_at.first() else { return r };
        r.elapsed = stopped.saturating_duration_since(first);
        let mut replies = Vec::new();
        for (n, (&sent, replied)) in self.sent_at.iter().zip(&self.replied_at).enumerate() {
            match replied {
                Some(at) => {
                    r.received += 1;
                    r.max_rtt = r.max_rtt.max(at.saturating_duration_since(sent));
                    replies.push(*at);
                }
                None if stopped.saturating_duration_since(sent) <= IN_FLIGHT => r.in_flight += 1,
                None => r.lost.push(n as u64),
            }
        }
        replies.sort();
        let mut previous = first;
        for at in replies {
            r.longest_silence = r.longest_silence.max(at.saturating_duration_since(previous));
            previous = at;
        }
        r
    }
}

/// ICMP echo requests from a namespace to one address at a fixed rate, on a thread of
/// its own; replies are matched as they come (see the module docs).
#[derive(Debug)]
pub struct Pinger {
    stop: Arc<AtomicBool>,
    replies: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<(Book, Instant)>>,
    what: String,
}

impl Pinger {
    /// Starts pinging `dst` from `ns` every [`PING_INTERVAL`].
    pub fn start(ns: &NetNs, dst: Ipv4Addr) -> Pinger {
        Self::start_every(ns, dst, PING_INTERVAL)
    }

    /// [`Pinger::start`] at another rate.
    pub fn start_every(ns: &NetNs, dst: Ipv4Addr, interval: Duration) -> Pinger {
        let what = format!("ping {} -> {dst}", ns.name());
        let fd = ns
            .run(|| socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP))
            .unwrap_or_else(|e| panic!("raw ICMP socket in {}: {e}", ns.name()));
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(AtomicU64::new(0));
        let (thread_stop, thread_replies) = (Arc::clone(&stop), Arc::clone(&replies));
        let thread = thread::Builder::new()
            .name("pinger".into())
            .spawn(move || run(&fd, dst, interval, &thread_stop, &thread_replies))
            .expect("spawn the pinger thread");
        debug!(%what, ?interval, "pinger started");
        Pinger {
            stop,
            replies,
            thread: Some(thread),
            what,
        }
    }

    /// Replies so far.
    pub fn replies(&self) -> u64 {
        self.replies.load(Ordering::Relaxed)
    }

    /// Stops sending, reads the last replies for a moment and reports.
    pub fn stop(mut self) -> PingReport {
        let report = self.finish();
        debug!(what = %self.what, %report, "pinger stopped");
        report
    }

    fn finish(&mut self) -> PingReport {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => {
                let (book, stopped) = t.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                book.report(stopped)
            }
            None => PingReport::default(),
        }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::Relaxed);
            if t.join().is_err() && !thread::panicking() {
                panic!("the pinger thread of {} panicked", self.what);
            }
        }
    }
}

/// The pinger thread: returns the book and when it saw the stop request.
fn run(fd: &OwnedFd, dst: Ipv4Addr, interval: Duration, stop: &AtomicBool, replies: &AtomicU64) -> (Book, Instant) {
    let id = next_ping_id();
    let payload: Vec<u8> = (0..PAYLOAD_LEN).map(|i| (i as u8) ^ 0x5a).collect();
    let to = sockaddr_in(dst);
    let mut book = Book::default();
    let mut buf = vec![0u8; 65536];
    let mut next = Instant::now();
    let mut stopped: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if stopped.is_none() && stop.load(Ordering::Relaxed) {
            stopped = Some(now);
        }
        if let Some(at) = stopped
            && now >= at + DRAIN
        {
            return (book, at);
        }
        if stopped.is_none() && now >= next {
            let seq = book.sent_at.len() as u16;
            let ok = send(fd, &to, &echo_request(id, seq, &payload)).is_ok();
            book.sent(now, ok);
            next += interval;
            if next <= now {
                // Descheduled for longer than an interval: carry on from now, no burst.
                next = now + interval;
            }
        }
        let until = stopped.map_or(next, |at| at + DRAIN);
        match wait_readable(
            fd.as_raw_fd(),
            until.saturating_duration_since(Instant::now()).min(POLL),
        ) {
            Ok(_) => {}
            Err(e) => panic!("poll on the pinger's ICMP socket: {e}"),
        }
        // SAFETY: `buf` is writable for its length.
        while let Ok(n) = usize::try_from(unsafe {
            libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
        }) {
            match classify(&buf[..n], id, dst, &payload) {
                Received::Reply { seq } => {
                    book.reply(seq, Instant::now());
                    replies.fetch_add(1, Ordering::Relaxed);
                }
                Received::Error(_) => book.icmp_errors += 1,
                Received::Unrelated => {}
            }
        }
    }
}

fn send(fd: &OwnedFd, to: &libc::sockaddr_in, request: &[u8]) -> io::Result<()> {
    // SAFETY: `request` and `to` are live for the call.
    cvt(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            (to as *const libc::sockaddr_in).cast(),
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) as libc::c_int
    })
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A book with `n` requests 10 ms apart from `t0`.
    fn book(t0: Instant, n: u64) -> Book {
        let mut b = Book::default();
        for i in 0..n {
            b.sent(t0 + 10 * MS * i as u32, true);
        }
        b
    }

    #[test]
    fn sequence_numbers_map_to_the_latest_request() {
        let t0 = Instant::now();
        let b = book(t0, 70_000);
        assert_eq!(b.number_of(0), Some(65_536));
        assert_eq!(b.number_of(4_463), Some(4_463 + 65_536));
        assert_eq!(b.number_of(4_464), Some(4_464));
        let small = book(t0, 3);
        assert_eq!(small.number_of(2), Some(2));
        assert_eq!(small.number_of(7), None, "never sent");
        assert_eq!(Book::default().number_of(0), None);
    }

    #[test]
    fn lost_excludes_only_the_in_flight_tail() {
        let t0 = Instant::now();
        let mut b = book(t0, 100); // sent at 0, 10, ..., 990 ms
        for seq in 0..100u16 {
            if ![17, 18, 95, 99].contains(&seq) {
                b.reply(seq, t0 + 10 * MS * u32::from(seq) + MS);
            }
        }
        b.reply(3, t0 + 500 * MS);
        // Stopped 1 s after the first request: 800 ms and later are in flight.
        let r = b.report(t0 + 1000 * MS);
        assert_eq!(r.sent, 100);
        assert_eq!(r.received, 96);
        assert_eq!(r.lost, [17, 18]);
        assert_eq!(r.in_flight, 2);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.max_rtt, MS);
        // The replies to 16 and 19 are 30 ms apart.
        assert_eq!(r.longest_silence, 30 * MS);
        assert_eq!(r.elapsed, 1000 * MS);
    }

    #[test]
    fn refused_requests_are_lost() {
        let t0 = Instant::now();
        let mut b = Book::default();
        b.sent(t0, true);
        b.sent(t0 + 10 * MS, false);
        b.reply(0, t0 + MS);
        let r = b.report(t0 + 1000 * MS);
        assert_eq!((r.sent, r.received, r.send_errors), (2, 1, 1));
        assert_eq!(r.lost, [1]);
    }

    #[test]
    fn an_empty_pinger_reports_nothing() {
        assert_eq!(Book::default().report(Instant::now()), PingReport::default());
    }
}
