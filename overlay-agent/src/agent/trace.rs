//! Trace sessions (`overlay-agent trace`): the eBPF programs copy verdicts into their
//! pinned ring buffer only while a session is open. One session at a time; it ends when
//! its client's connection closes (the control server sends [`Request::TraceStop`]), and
//! when the agent stops, so an abandoned session costs nothing.
//!
//! [`Request::TraceStop`]: crate::api::Request::TraceStop

use overlay_common::{TRACE_ALL, TRACE_DROPS};
use tracing::{info, warn};

use super::{Agent, requests::RequestError};
use crate::{
    api::{TraceInfo, TraceSpec},
    datapath::AnyDatapath,
};

impl Agent {
    pub(super) fn start_trace(&mut self, spec: TraceSpec) -> Result<TraceInfo, RequestError> {
        if self.tracing {
            return Err(RequestError::TraceBusy);
        }
        let ifindex = match &spec.endpoint {
            Some((network, ip)) => {
                let net = self.network_named(network)?;
                let local = self.local.get(&(net.vni, *ip)).ok_or(RequestError::NoSuchEndpoint { ip: *ip, network: network.clone() })?;
                Some(local.record.host_ifindex)
            }
            None => None,
        };
        let AnyDatapath::Ebpf(dp) = &mut self.datapath else {
            return Err(RequestError::TraceNeedsEbpf);
        };
        let flags = if spec.all { TRACE_ALL } else { TRACE_DROPS };
        // The programs stamp events with bpf_ktime_get_ns, CLOCK_MONOTONIC.
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a plain syscall writing into `now`; CLOCK_MONOTONIC always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let since_ns = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
        let ring = dp.set_trace(flags, ifindex.unwrap_or(0)).map_err(crate::datapath::DatapathError::from)?;
        self.tracing = true;
        info!(all = spec.all, endpoint = ?spec.endpoint, "trace session started");
        let mut udp_ports: Vec<u16> = self.config.networks.iter().map(|n| n.udp_port).collect();
        udp_ports.sort_unstable();
        udp_ports.dedup();
        Ok(TraceInfo { ring, ifindex, udp_ports, since_ns })
    }

    /// Ends the session, if one is open (tracing off in the programs).
    pub(super) fn stop_trace(&mut self) {
        if !std::mem::take(&mut self.tracing) {
            return;
        }
        if let AnyDatapath::Ebpf(dp) = &mut self.datapath {
            match dp.set_trace(0, 0) {
                Ok(_) => info!("trace session ended"),
                Err(e) => warn!(error = %e, "switching tracing off"),
            }
        }
    }
}
