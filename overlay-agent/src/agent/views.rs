//! What the API shows: endpoints (local, remote, static) and `status`.

use std::net::Ipv4Addr;

use super::{Agent, Local, requests::rfc3339};
use crate::{
    api::{EndpointInfo, EndpointKind, NetworkInfo, PeerInfo, StatusInfo, StoreInfo},
    datapath::Datapath,
    records::StaticRecord,
    store::kv::{Connection, Kv as _},
};

impl Agent {
    pub(super) fn local_info(&self, l: &Local) -> EndpointInfo {
        let r = &l.record;
        EndpointInfo {
            network: r.network.clone(),
            vni: r.vni,
            ip: r.ip,
            mac: r.mac,
            node: self.config.node_name.clone(),
            vtep: self.vtep,
            kind: EndpointKind::Local,
            netns: Some(r.netns.clone()),
            ifname: Some(r.ifname.clone()),
            host_ifname: Some(r.host_ifname.clone()),
            owner: r.owner.clone(),
            handed_off: None,
            unpublished: l.unpublished.clone(),
            publish: r.publish.clone(),
        }
    }

    pub(super) fn list(&self) -> Vec<EndpointInfo> {
        let mut out: Vec<_> = self.local.values().map(|l| self.local_info(l)).collect();
        for (vni, ip, node, network, mac) in self.desired.published() {
            if node == self.config.node_name {
                continue;
            }
            out.push(EndpointInfo {
                network: network.to_owned(),
                vni,
                ip,
                mac,
                node: node.to_owned(),
                vtep: self.desired.node_vtep(node).unwrap_or(Ipv4Addr::UNSPECIFIED),
                kind: EndpointKind::Remote,
                netns: None,
                ifname: None,
                host_ifname: None,
                owner: None,
                handed_off: None,
                unpublished: None,
                publish: Vec::new(),
            });
        }
        out.extend(self.desired.statics().map(|(vni, ip, st)| static_info(vni, ip, st)));
        out.sort_by(|a, b| (a.vni, a.ip, &a.node).cmp(&(b.vni, b.ip, &b.node)));
        out
    }

    pub(super) fn status(&self) -> StatusInfo {
        let (state, since) = match *self.conn.borrow() {
            Connection::Connecting => ("connecting".to_string(), None),
            Connection::Connected => ("connected".to_string(), None),
            Connection::Disconnected { since } => ("disconnected".to_string(), Some(rfc3339(since))),
        };
        StatusInfo {
            node: self.config.node_name.clone(),
            vtep: self.vtep,
            underlay_interface: self.config.underlay_interface.clone(),
            underlay_mtu: self.underlay_mtu,
            datapath: self.datapath.status(),
            tables: self.datapath.usage(),
            static_endpoints: self.desired.statics().count(),
            store: StoreInfo {
                backend: self.kv.describe(),
                member: self.kv.member(),
                watch_member: self.kv.watch_member(),
                state,
                disconnected_since: since,
                lease: (self.lease != 0).then(|| format!("{:x}", self.lease)),
                lease_ttl_secs: self.config.store.lease_ttl.as_secs(),
                registered: self.registered,
                synced: self.synced,
                pending_withdrawals: self.pending_withdrawals.len(),
                initial_sync_ms: self.initial_sync.map(|d| d.as_millis() as u64),
            },
            networks: self
                .config
                .networks
                .iter()
                .map(|n| NetworkInfo {
                    name: n.name.clone(),
                    vni: n.vni,
                    subnet: n.subnet,
                    udp_port: n.udp_port,
                    mtu: n.effective_mtu(self.underlay_mtu),
                    local_endpoints: self.local.keys().filter(|(vni, _)| *vni == n.vni).count(),
                    remote_endpoints: self.desired.remote_count(n.vni),
                    mode: n.mode,
                    node_subnet: self.desired.router(n.vni).filter(|r| r.l3).map(|r| r.subnet),
                    gateway: self.desired.router(n.vni).map(|r| r.gateway),
                    router_mac: self.desired.router(n.vni).map(|r| r.mac),
                })
                .collect(),
            subnets: self.subnet_infos(),
            peers: self
                .desired
                .peers()
                .into_iter()
                .map(|(node, vtep, endpoints)| PeerInfo { node, vtep, endpoints })
                .collect(),
            uptime_secs: self.started.elapsed().as_secs(),
        }
    }
}

pub(super) fn static_info(vni: u32, ip: Ipv4Addr, st: &StaticRecord) -> EndpointInfo {
    EndpointInfo {
        network: st.network.clone(),
        vni,
        ip,
        mac: st.mac,
        node: format!("static (declared by {})", st.declared_by),
        vtep: st.vtep,
        kind: EndpointKind::Static,
        netns: None,
        ifname: None,
        host_ifname: None,
        owner: None,
        handed_off: None,
        unpublished: None,
        publish: Vec::new(),
    }
}
