//! The host side of the networks' gateways: the agent's nftables table (isolation in
//! kernel mode, source NAT for traffic to the outside, published ports), rewritten as
//! a whole from the config and the local endpoints whenever one of them changes it.

use std::collections::BTreeSet;

use super::{Agent, requests::RequestError};
use crate::{
    datapath::AnyDatapath,
    firewall::{self, Dnat, FirewallError, Guard, PortMapping, Ruleset},
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
            // The eBPF programs check sources themselves.
            guards: if kernel {
                self.local
                    .values()
                    .map(|l| Guard { ifname: l.record.host_ifname.clone(), ip: l.record.ip, mac: l.record.mac })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Whether adding or removing a local endpoint changes the table (kernel mode's
    /// anti-spoofing rules, or its published ports).
    pub(super) fn firewall_follows(&self, publish: &[PortMapping]) -> bool {
        !publish.is_empty() || matches!(self.datapath, AnyDatapath::Kernel(_))
    }

    /// Kernel mode: the table with `ep`'s anti-spoofing rules added, before `ep` is
    /// attached (the rules match its veth by name, which exists once plugged).
    pub(super) fn guard_before_attach(&self, ep: &crate::datapath::LocalEndpoint) -> Result<(), FirewallError> {
        if !matches!(self.datapath, AnyDatapath::Kernel(_)) {
            return Ok(());
        }
        let mut rules = self.firewall_rules();
        rules.guards.push(Guard { ifname: ep.ifname.clone(), ip: ep.ip, mac: ep.mac });
        firewall::apply(&rules)
    }

    /// Writes the table (or removes it when empty).
    pub(super) fn sync_firewall(&self) -> Result<(), FirewallError> {
        firewall::apply(&self.firewall_rules())
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
