//! The host side of the networks' gateways: the agent's nftables table (isolation in
//! kernel mode, source NAT for traffic to the outside, published ports, and in kernel
//! mode the containers' anti-spoofing rules and the underlay's VTEP filter), rewritten as
//! a whole from the config, the local endpoints and the known VTEPs whenever one of them
//! changes it (and only then: the last table written is remembered).

use std::collections::BTreeSet;

use tracing::error;

use super::{Agent, requests::RequestError};
use crate::{
    datapath::AnyDatapath,
    firewall::{self, Dnat, FirewallError, Guard, PortMapping, Ruleset, VtepFilter},
};

impl Agent {
    /// The table as the config and the local endpoints want it now.
    pub(super) fn firewall_rules(&self) -> Ruleset {
        let nets = &self.config.networks;
        let kernel = matches!(self.datapath, AnyDatapath::Kernel(_));
        Ruleset {
            isolate: if kernel && nets.len() > 1 { nets.iter().map(|n| n.vni).collect() } else { Vec::new() },
            overlay: nets.iter().map(|n| n.subnet).collect(),
            masquerade: nets.iter().filter(|n| n.masquerade).map(|n| n.subnet).collect(),
            publish: self
                .local
                .values()
                .flat_map(|l| {
                    l.record.publish.iter().map(|p| Dnat {
                        proto: p.proto,
                        host_ip: self.vtep,
                        host_port: p.host_port,
                        ip: l.record.ip,
                        port: p.port,
                    })
                })
                .collect(),
            anycast: if kernel {
                nets.iter().filter_map(|n| self.desired.router(n.vni).filter(|r| !r.l3).map(|r| (n.vni, r.mac))).collect()
            } else {
                Vec::new()
            },
            // The eBPF programs check sources themselves. The datapath's local endpoints
            // (not `self.local`, which takes a new one only once it is attached), and
            // those whose veth is being deleted: every rewrite while one is being added
            // or removed keeps its rules.
            guards: if kernel {
                self.desired
                    .local()
                    .values()
                    .map(|ep| Guard { ifname: ep.ifname.clone(), ip: ep.ip, mac: ep.mac })
                    .chain(self.unplugging.iter().cloned())
                    .collect()
            } else {
                Vec::new()
            },
            vteps: match &self.datapath {
                // The eBPF programs check sources themselves (`OVL_VTEPS`).
                AnyDatapath::Ebpf(_) => Vec::new(),
                // What the store says and what the kernel sends to now: a VTEP is let in
                // before its entries are installed and kept until they are removed, and
                // before the first store list after a restart the adopted entries hold.
                AnyDatapath::Kernel(k) => nets
                    .iter()
                    .filter(|n| n.known_vteps_only)
                    .map(|n| {
                        let mut sources = k.vteps(n.vni);
                        sources.extend(self.desired.vteps(n.vni));
                        VtepFilter { vni: n.vni, udp_port: n.udp_port, sources }
                    })
                    .collect(),
            },
        }
    }

    /// Whether adding or removing a local endpoint changes the table (kernel mode's
    /// anti-spoofing rules, or its published ports).
    pub(super) fn firewall_follows(&self, publish: &[PortMapping]) -> bool {
        !publish.is_empty() || matches!(self.datapath, AnyDatapath::Kernel(_))
    }

    /// Writes the table (or removes it when empty).
    pub(super) fn sync_firewall(&self) -> Result<(), FirewallError> {
        self.write_firewall(self.firewall_rules())
    }

    /// Kernel mode: rewrites the table when the known VTEPs changed it, around each
    /// change of the datapath (before: a new VTEP is let in before anything is sent to
    /// it; after: a removed one is shut out). A failure is logged: the next change
    /// retries (the table is rewritten as a whole).
    pub(super) fn follow_vteps(&self) {
        if matches!(self.datapath, AnyDatapath::Kernel(_))
            && let Err(e) = self.sync_firewall()
        {
            error!(error = %e, "updating the underlay's VTEP filter; retried at the next change");
        }
    }

    /// Applies `rules` unless they are what was written last.
    fn write_firewall(&self, rules: Ruleset) -> Result<(), FirewallError> {
        let mut last = self.firewall_written.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.as_ref() == Some(&rules) {
            return Ok(());
        }
        // Unknown until it succeeds: a failed write may have left anything.
        *last = None;
        firewall::apply(&rules)?;
        *last = Some(rules);
        Ok(())
    }

    /// Refuses mappings whose host port (and protocol) a local endpoint already
    /// publishes, or that repeat one.
    pub(super) fn check_ports(&self, publish: &[PortMapping]) -> Result<(), RequestError> {
        let mut seen = BTreeSet::new();
        for m in publish {
            let holder = self.local.values().find(|l| l.record.publish.iter().any(|p| p.host_port == m.host_port && p.proto == m.proto));
            if let Some(l) = holder {
                return Err(RequestError::PortTaken { mapping: *m, holder: l.record.ip });
            }
            if !seen.insert((m.host_port, m.proto)) {
                return Err(RequestError::PortRepeated { mapping: *m });
            }
        }
        Ok(())
    }
}
