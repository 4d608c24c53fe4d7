//! A plain Linux VXLAN host without an agent, built with the classic recipe over
//! netlink: what `remote add` declares, and a stranger on the underlay when it is not
//! declared.

use std::net::Ipv4Addr;

use overlay_agent::{
    mac::MacAddr,
    netlink::{LinkChange, VxlanSpec},
};

use crate::{
    NetNs,
    lab::Lab,
    topo::{H2_IP, add_addr, link_veth, set_link},
};

/// h2 is a plain Linux host built with the classic recipe (bridge, `vxlan id 42
/// dstport 4789`, static neighbour and FDB entries), no agent.
pub struct PlainHost {
    pub container: NetNs,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

pub fn plain_linux_host(lab: &Lab, peer_ip: Ipv4Addr, peer_mac: MacAddr, peer_vtep: Ipv4Addr) -> PlainHost {
    let host = &lab.host(1).ns;
    let container = NetNs::new("plain");
    let (ip, mac) = (Ipv4Addr::new(10, 0, 10, 99), MacAddr([0x0a, 0x42, 0x35, 0x1e, 0xc2, 0xe4]));
    // veth into the container, MTU 1450 as the recipe says.
    link_veth(host, "veth1", &container, "eth0", 1450);
    set_link(&container, "eth0", LinkChange { mac: Some(mac.0), ..Default::default() });
    add_addr(&container, "eth0", &format!("{ip}/24"));
    host.netlink(|nl| async move {
        nl.create_bridge("br0").await.unwrap();
        let br = nl.link_by_name("br0").await.unwrap().unwrap().index;
        let ul = nl.link_by_name("ul0").await.unwrap().unwrap().index;
        nl.create_vxlan(&VxlanSpec {
            name: "vxlan1".into(),
            vni: 42,
            port: 4789,
            local: Some(H2_IP),
            underlay_index: Some(ul),
            learning: true,
            proxy: true,
            mtu: None,
        })
        .await
        .unwrap();
        let vx = nl.link_by_name("vxlan1").await.unwrap().unwrap().index;
        let veth = nl.link_by_name("veth1").await.unwrap().unwrap().index;
        for idx in [vx, veth] {
            nl.set_link(idx, LinkChange { master: Some(br), up: Some(true), ..Default::default() }).await.unwrap();
        }
        nl.set_link(br, LinkChange { up: Some(true), ..Default::default() }).await.unwrap();
        // ip neigh add PEER lladdr MAC dev vxlan1; bridge fdb add MAC dev vxlan1 self dst VTEP vni 42 port 4789
        nl.neigh_replace(vx, peer_ip, peer_mac.0).await.unwrap();
        nl.fdb_replace(vx, peer_mac.0, peer_vtep, Some(42), Some(4789)).await.unwrap();
        nl.fdb_append(vx, [0; 6], peer_vtep, Some(42), Some(4789)).await.unwrap();
    });
    PlainHost { container, ip, mac }
}

