//! `overlay-agent trace`: opens a trace session on the running agent and prints the
//! datapath's verdicts as they happen (drops by default, everything with `--all`), read
//! from the programs' pinned ring buffer. The session, and with it the programs' extra
//! work, ends when this command exits, however it exits: the agent ends it when the
//! connection closes.

use std::{
    io::Write as _,
    net::Ipv4Addr,
    os::{fd::AsRawFd as _, unix::net::UnixStream},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Map, MapData, RingBuf};
use overlay_common::{Direction, Reason, TRACE_HEAD, TraceEvent};
use serde::Serialize;

use super::args::TraceArgs;
use crate::{
    api::{Request, Response, TraceInfo, TraceSpec, client},
    config::Config,
    datapath::pinned::verdict,
    mac::MacAddr,
};

/// One event as printed.
#[derive(Debug, Serialize)]
pub struct TraceLine {
    /// Monotonic clock (`CLOCK_MONOTONIC`, since boot), nanoseconds.
    pub ts_ns: u64,
    pub direction: &'static str,
    pub reason: &'static str,
    pub verdict: &'static str,
    pub ifindex: u32,
    pub ifname: Option<String>,
    /// The frame's length, as the program left it.
    pub len: u32,
    /// VXLAN: the VNI and the outer addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outer_src: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outer_dst: Option<Ipv4Addr>,
    /// The (inner) Ethernet frame.
    pub src_mac: Option<MacAddr>,
    pub dst_mac: Option<MacAddr>,
    pub ether_type: Option<String>,
    /// IPv4: addresses and protocol number; ARP: sender and target addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_ip: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_ip: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u8>,
}

fn ip_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    b.get(at..at + 4).map(|o| Ipv4Addr::new(o[0], o[1], o[2], o[3]))
}

fn mac_at(b: &[u8], at: usize) -> Option<MacAddr> {
    b.get(at..at + 6).map(|o| MacAddr([o[0], o[1], o[2], o[3], o[4], o[5]]))
}

/// Whether `head` is VXLAN (IPv4 without options, UDP to one of `ports`).
fn is_vxlan(head: &[u8], ports: &[u16]) -> bool {
    head.len() >= 50
        && head[12..14] == [0x08, 0x00]
        && head[14] == 0x45
        && head[23] == 17
        && ports.contains(&u16::from_be_bytes([head[36], head[37]]))
}

/// Decodes one event (`head`'s outer headers, if VXLAN, and the inner frame's).
pub fn decode(e: &TraceEvent, ports: &[u16]) -> TraceLine {
    let head = &e.head[..(e.head_len as usize).min(TRACE_HEAD)];
    let vxlan = is_vxlan(head, ports);
    let inner = if vxlan { &head[50..] } else { head };
    let ether_type = inner.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]]));
    let (src_ip, dst_ip, protocol) = match ether_type {
        Some(0x0800) => (ip_at(inner, 26), ip_at(inner, 30), inner.get(23).copied()),
        Some(0x0806) => (ip_at(inner, 28), ip_at(inner, 38), None),
        _ => (None, None, None),
    };
    let direction = Direction::ALL.into_iter().find(|d| *d as u32 == e.direction);
    let reason = Reason::from_code(e.reason);
    TraceLine {
        ts_ns: e.ts_ns,
        direction: direction.map_or("?", Direction::name),
        reason: reason.map_or("?", Reason::name),
        verdict: reason.map_or("?", verdict),
        ifindex: e.ifindex,
        ifname: nix::net::if_::if_indextoname(e.ifindex).ok().and_then(|n| n.into_string().ok()),
        len: e.len,
        vni: vxlan.then(|| u32::from_be_bytes([0, head[46], head[47], head[48]])),
        outer_src: if vxlan { ip_at(head, 26) } else { None },
        outer_dst: if vxlan { ip_at(head, 30) } else { None },
        src_mac: mac_at(inner, 6),
        dst_mac: mac_at(inner, 0),
        ether_type: ether_type.map(|t| format!("{t:#06x}")),
        src_ip,
        dst_ip,
        protocol,
    }
}

fn text(l: &TraceLine) -> String {
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut out = format!(
        "{:>14.6} {} {} ({}) on {}:",
        l.ts_ns as f64 / 1e9,
        l.direction,
        l.reason,
        l.verdict,
        dash(l.ifname.clone()).as_str()
    );
    if let (Some(vni), Some(src), Some(dst)) = (l.vni, l.outer_src, l.outer_dst) {
        out += &format!(" vxlan vni {vni} {src} > {dst} |");
    }
    out += &format!(" {} > {}", dash(l.src_mac.map(|m| m.to_string())), dash(l.dst_mac.map(|m| m.to_string())));
    out += &format!(" type {}", dash(l.ether_type.clone()));
    if let (Some(s), Some(d)) = (l.src_ip, l.dst_ip) {
        out += &format!(" {s} > {d}");
    }
    if let Some(p) = l.protocol {
        out += &format!(" proto {p}");
    }
    out += &format!(", {} bytes", l.len);
    out
}

/// Opens the session: the request on a connection kept open until this process ends.
fn open(config: &Config, spec: TraceSpec) -> Result<(UnixStream, TraceInfo)> {
    match client::session(&config.socket_path(), &Request::Trace(spec))? {
        (stream, Response::Trace(info)) => Ok((stream, info)),
        (_, Response::Error { message, .. }) => bail!("{message}"),
        (_, other) => bail!("unexpected reply from the agent: {other:?}"),
    }
}

pub fn execute(config: &Config, args: TraceArgs) -> Result<()> {
    let endpoint = match (&args.network, args.ip) {
        (Some(n), Some(ip)) => Some((n.clone(), ip)),
        (None, None) => None,
        _ => bail!("--network and --ip go together: they name the endpoint to trace"),
    };
    let (_session, info) = open(config, TraceSpec { all: args.all, endpoint })?;
    let data = MapData::from_pin(&info.ring).with_context(|| format!("opening the trace ring buffer {}", info.ring.display()))?;
    let mut ring = RingBuf::try_from(Map::from_map_data(data)?).context("the trace map is not a ring buffer")?;
    if !args.json {
        eprintln!("tracing {} (Ctrl-C to stop)", if args.all { "every verdict" } else { "drops" });
    }
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    loop {
        let mut pfd = libc::pollfd { fd: ring.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&raw mut pfd, 1, 200) };
        while let Some(item) = ring.next() {
            if item.len() < size_of::<TraceEvent>() {
                continue;
            }
            // SAFETY: the programs write whole TraceEvents; read_unaligned copes with the
            // ring's 8-byte alignment being all the struct needs anyway.
            let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<TraceEvent>()) };
            drop(item);
            // Left in the ring by an earlier session (written before it was switched off).
            if event.ts_ns < info.since_ns {
                continue;
            }
            let line = decode(&event, &info.udp_ports);
            // The programs filter the container side by veth; the underlay side is
            // filtered here by the endpoint's address.
            if let (Some(ip), Some(_)) = (args.ip, info.ifindex)
                && line.direction == Direction::FromUnderlay.name()
                && line.src_ip != Some(ip)
                && line.dst_ip != Some(ip)
            {
                continue;
            }
            let mut out = stdout.lock();
            if args.json {
                writeln!(out, "{}", serde_json::to_string(&line)?)?;
            } else {
                writeln!(out, "{}", text(&line))?;
            }
            out.flush()?;
            printed += 1;
            if args.count.is_some_and(|n| printed >= n) {
                return Ok(());
            }
        }
    }
}
