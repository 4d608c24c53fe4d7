//! VXLAN devices, their bridge FDB entries and IPv4 neighbour entries: the netlink
//! side of the classic recipe (`ip link add ... type vxlan`, `bridge fdb add|append`,
//! `ip neigh replace`).

use std::net::{IpAddr, Ipv4Addr};

use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    LinkMessageBuilder, LinkVxlan,
    packet_core::{NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo as NlLinkInfo},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState},
        route::RouteType,
    },
};
use tracing::debug;

use super::{Netlink, NetlinkError, errno_of, idempotent, request_error, validate_ifname};

/// A VXLAN device to create (see [`Netlink::create_vxlan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Option<Ipv4Addr>,
    pub underlay_index: Option<u32>,
    pub learning: bool,
    /// Answer ARP requests from the device's neighbour table instead of sending them.
    pub proxy: bool,
    pub mtu: Option<u32>,
}

/// A VXLAN device's settings as the kernel reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub port: u16,
    pub local: Option<Ipv4Addr>,
    pub underlay_index: Option<u32>,
    pub learning: bool,
    pub proxy: bool,
}

/// One bridge FDB entry of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: Option<Ipv4Addr>,
    /// `None`: the device's own VNI (the kernel omits it then).
    pub vni: Option<u32>,
    /// `None`: the device's own port (the kernel omits it then).
    pub port: Option<u16>,
    /// `self`: the entry lives in the device's own table (not its master bridge's).
    pub is_self: bool,
    pub permanent: bool,
}

/// One IPv4 neighbour entry of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighEntry {
    pub ip: Ipv4Addr,
    pub mac: Option<[u8; 6]>,
    pub permanent: bool,
}

/// A bridge-family neighbour (FDB) message for `mac` on device `index`.
fn bridge_fdb(index: u32, mac: [u8; 6], state: NeighbourState, flags: NeighbourFlags) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.state = state;
    m.header.flags = flags;
    m.header.kind = RouteType::Unspec;
    m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m
}

/// A permanent `self` FDB message for `mac` → `dst` on device `index`.
fn fdb_message(index: u32, mac: [u8; 6], dst: Option<Ipv4Addr>, vni: Option<u32>, port: Option<u16>) -> NeighbourMessage {
    let mut m = bridge_fdb(index, mac, NeighbourState::Permanent, NeighbourFlags::Own);
    if let Some(dst) = dst {
        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
    }
    if let Some(vni) = vni {
        m.attributes.push(NeighbourAttribute::Vni(vni));
    }
    if let Some(port) = port {
        m.attributes.push(NeighbourAttribute::Port(port));
    }
    m
}

impl Netlink {
    /// Creates a VXLAN device, down. [`NetlinkError::Exists`] if the name is taken.
    pub async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<(), NetlinkError> {
        validate_ifname(&spec.name)?;
        let mut b: LinkMessageBuilder<LinkVxlan> = LinkVxlan::new(&spec.name, spec.vni)
            .port(spec.port)
            .learning(spec.learning)
            .proxy(spec.proxy);
        if let Some(local) = spec.local {
            b = b.local(local);
        }
        if let Some(dev) = spec.underlay_index {
            b = b.dev(dev);
        }
        if let Some(mtu) = spec.mtu {
            b = b.mtu(mtu);
        }
        self.add_link(&spec.name, b.build(), "create vxlan").await
    }

    /// The VXLAN settings of link `index`; `None` if it is not a VXLAN device.
    pub async fn vxlan_info(&self, index: u32) -> Result<Option<VxlanInfo>, NetlinkError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let msg = match links.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => return Ok(None),
            Err(e) => return Err(request_error("get link", format!("#{index}"))(e)),
        };
        let data = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                NlLinkInfo::Data(InfoData::Vxlan(v)) => Some(v.clone()),
                _ => None,
            }),
            _ => None,
        });
        let Some(data) = data else { return Ok(None) };
        let mut info = VxlanInfo { vni: 0, port: 0, local: None, underlay_index: None, learning: false, proxy: false };
        for a in data {
            match a {
                InfoVxlan::Id(v) => info.vni = v,
                InfoVxlan::Port(p) => info.port = p,
                InfoVxlan::Local(ip) => info.local = Some(ip),
                InfoVxlan::Link(l) => info.underlay_index = Some(l),
                InfoVxlan::Learning(b) => info.learning = b,
                InfoVxlan::Proxy(b) => info.proxy = b,
                _ => {}
            }
        }
        Ok(Some(info))
    }

    async fn send_neigh(&self, msg: RouteNetlinkMessage, flags: u16, op: &'static str, target: String) -> Result<(), rtnetlink::Error> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle.clone();
        let mut response = handle.request(req)?;
        while let Some(m) = response.next().await {
            if let NetlinkPayload::Error(e) = m.payload {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
        debug!(op, target, "neighbour request done");
        Ok(())
    }

    /// `bridge fdb replace MAC dev DEV self dst DST [vni VNI] [port PORT]`: a unicast
    /// entry, created or replaced.
    pub async fn fdb_replace(
        &self,
        index: u32,
        mac: [u8; 6],
        dst: Ipv4Addr,
        vni: Option<u32>,
        port: Option<u16>,
    ) -> Result<(), NetlinkError> {
        let target = format!("{} dst {dst} on #{index}", super::super::mac::MacAddr(mac));
        let msg = RouteNetlinkMessage::NewNeighbour(fdb_message(index, mac, Some(dst), vni, port));
        self.send_neigh(msg, NLM_F_CREATE | NLM_F_REPLACE, "fdb replace", target.clone())
            .await
            .map_err(request_error("fdb replace", target))
    }

    /// `bridge fdb replace MAC dev PORT master static sticky`: the bridge that `index` is
    /// a port of sends frames for `mac` out of that port, whatever it learnt before, and
    /// does not move the entry when it sees the MAC elsewhere (sticky, 5.5+); the entry
    /// goes with the port.
    pub async fn bridge_fdb_static(&self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let target = format!("{} on bridge port #{index}", super::super::mac::MacAddr(mac));
        let msg = RouteNetlinkMessage::NewNeighbour(bridge_fdb(index, mac, NeighbourState::Noarp, NeighbourFlags::Controller | NeighbourFlags::Sticky));
        self.send_neigh(msg, NLM_F_CREATE | NLM_F_REPLACE, "bridge fdb replace", target.clone())
            .await
            .map_err(request_error("bridge fdb replace", target))
    }

    /// `bridge fdb append MAC dev DEV self dst DST ...`: one more destination for `mac`
    /// (the all-zeros MAC: one per remote VTEP). Appending an existing one is fine.
    pub async fn fdb_append(
        &self,
        index: u32,
        mac: [u8; 6],
        dst: Ipv4Addr,
        vni: Option<u32>,
        port: Option<u16>,
    ) -> Result<(), NetlinkError> {
        let target = format!("{} dst {dst} on #{index}", super::super::mac::MacAddr(mac));
        let msg = RouteNetlinkMessage::NewNeighbour(fdb_message(index, mac, Some(dst), vni, port));
        let result = self.send_neigh(msg, NLM_F_CREATE | NLM_F_APPEND, "fdb append", target.clone()).await;
        idempotent(result, &[libc::EEXIST], "fdb append", target).map(drop)
    }

    /// `bridge fdb del MAC dev DEV self [dst DST] [vni VNI] [port PORT]`; absent is fine.
    /// The kernel matches the destination on address, VNI and port (absent: the
    /// device's own), so pass what the entry was created with.
    pub async fn fdb_del(
        &self,
        index: u32,
        mac: [u8; 6],
        dst: Option<Ipv4Addr>,
        vni: Option<u32>,
        port: Option<u16>,
    ) -> Result<(), NetlinkError> {
        let target = format!("{} on #{index}", super::super::mac::MacAddr(mac));
        let msg = RouteNetlinkMessage::DelNeighbour(fdb_message(index, mac, dst, vni, port));
        let result = self.send_neigh(msg, 0, "fdb del", target.clone()).await;
        idempotent(result, &[libc::ENOENT, libc::ENODEV], "fdb del", target).map(drop)
    }

    /// Every neighbour message of `family` that belongs to device `index` (the kernel
    /// dumps all devices' entries; they are filtered here).
    async fn neigh_dump(&self, family: AddressFamily, index: u32, op: &'static str) -> Result<Vec<NeighbourMessage>, NetlinkError> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .map_err(request_error(op, format!("#{index}")))?;
        Ok(msgs.into_iter().filter(|m| m.header.ifindex == index).collect())
    }

    /// The FDB entries of device `index`.
    pub async fn fdb_entries(&self, index: u32) -> Result<Vec<FdbEntry>, NetlinkError> {
        Ok(self
            .neigh_dump(AddressFamily::Bridge, index, "fdb dump")
            .await?
            .into_iter()
            .filter_map(|m| {
                let mut e = FdbEntry {
                    mac: [0; 6],
                    dst: None,
                    vni: None,
                    port: None,
                    is_self: m.header.flags.contains(NeighbourFlags::Own),
                    permanent: m.header.state == NeighbourState::Permanent,
                };
                let mut has_mac = false;
                for a in m.attributes {
                    match a {
                        NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                            e.mac.copy_from_slice(&l);
                            has_mac = true;
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => e.dst = Some(ip),
                        // Bridge-family messages carry NDA_DST as raw bytes.
                        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                            e.dst = Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
                        }
                        NeighbourAttribute::Vni(v) => e.vni = Some(v),
                        NeighbourAttribute::Port(p) => e.port = Some(p),
                        _ => {}
                    }
                }
                has_mac.then_some(e)
            })
            .collect())
    }

    /// `ip neigh replace IP lladdr MAC dev DEV nud permanent`.
    pub async fn neigh_replace(&self, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .replace()
            .execute()
            .await
            .map_err(request_error("neigh replace", format!("{ip} on #{index}")))
    }

    /// `ip neigh del IP dev DEV`; absent is fine.
    pub async fn neigh_del(&self, index: u32, ip: Ipv4Addr) -> Result<(), NetlinkError> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = index;
        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        let result = self.handle.neighbours().del(m).execute().await;
        idempotent(result, &[libc::ENOENT, libc::ENODEV], "neigh del", format!("{ip} on #{index}")).map(drop)
    }

    /// The IPv4 neighbour entries of device `index`.
    pub async fn neighbours(&self, index: u32) -> Result<Vec<NeighEntry>, NetlinkError> {
        Ok(self
            .neigh_dump(AddressFamily::Inet, index, "neigh dump")
            .await?
            .into_iter()
            .filter_map(|m| {
                let permanent = m.header.state == NeighbourState::Permanent;
                let mut ip = None;
                let mut mac = None;
                for a in m.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => ip = Some(v),
                        NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                            let mut b = [0; 6];
                            b.copy_from_slice(&l);
                            mac = Some(b);
                        }
                        _ => {}
                    }
                }
                ip.map(|ip| NeighEntry { ip, mac, permanent })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{
        LinkChange,
        netns::{block_on_in_netns, tests::{TestNs, root_only}},
    };

    const MAC: [u8; 6] = [0x02, 0x42, 10, 0, 10, 11];
    const ZERO: [u8; 6] = [0; 6];

    fn in_ns<F, Fut>(f: F)
    where
        F: FnOnce(Netlink) -> Fut + Send,
        Fut: std::future::Future<Output = ()>,
    {
        root_only();
        let ns = TestNs::new();
        block_on_in_netns(&ns.path, || async {
            f(Netlink::open().await.unwrap()).await;
        })
        .unwrap();
    }

    /// An underlay (a veth end with an address) and a VXLAN device on it.
    async fn setup(nl: &Netlink) -> (u32, u32) {
        nl.create_veth("ul0", "ul0p").await.unwrap();
        let ul = nl.link_by_name("ul0").await.unwrap().unwrap().index;
        nl.add_address(ul, Ipv4Addr::new(198, 51, 100, 1), 24).await.unwrap();
        let spec = VxlanSpec {
            name: "vx42".into(),
            vni: 42,
            port: 4789,
            local: Some(Ipv4Addr::new(198, 51, 100, 1)),
            underlay_index: Some(ul),
            learning: false,
            proxy: true,
            mtu: Some(1450),
        };
        nl.create_vxlan(&spec).await.unwrap();
        assert!(matches!(nl.create_vxlan(&spec).await, Err(NetlinkError::Exists { .. })));
        let vx = nl.link_by_name("vx42").await.unwrap().unwrap();
        assert_eq!(vx.mtu, 1450);
        nl.set_link(vx.index, LinkChange { up: Some(true), ..Default::default() }).await.unwrap();
        (ul, vx.index)
    }

    #[test]
    fn vxlan_device_reads_back() {
        in_ns(|nl| async move {
            let (ul, vx) = setup(&nl).await;
            let info = nl.vxlan_info(vx).await.unwrap().unwrap();
            assert_eq!(
                info,
                VxlanInfo {
                    vni: 42,
                    port: 4789,
                    local: Some(Ipv4Addr::new(198, 51, 100, 1)),
                    underlay_index: Some(ul),
                    learning: false,
                    proxy: true
                }
            );
            assert_eq!(nl.vxlan_info(ul).await.unwrap(), None, "a veth is not a VXLAN device");
        });
    }

    #[test]
    fn fdb_entries_replace_append_and_delete() {
        in_ns(|nl| async move {
            let (_, vx) = setup(&nl).await;
            let (v2, v3) = (Ipv4Addr::new(198, 51, 100, 2), Ipv4Addr::new(198, 51, 100, 3));
            nl.fdb_replace(vx, MAC, v2, Some(42), Some(4789)).await.unwrap();
            nl.fdb_replace(vx, MAC, v3, Some(42), Some(8472)).await.unwrap();
            for dst in [v2, v3, v2] {
                nl.fdb_append(vx, ZERO, dst, Some(42), Some(4789)).await.unwrap();
            }
            let entries = nl.fdb_entries(vx).await.unwrap();
            let unicast: Vec<_> = entries.iter().filter(|e| e.mac == MAC).collect();
            assert_eq!(unicast.len(), 1, "replace keeps one entry: {entries:?}");
            let u = unicast[0];
            // VNI 42 is the device's own, so the kernel leaves it out; port 8472 is not.
            assert_eq!((u.dst, u.vni, u.port, u.is_self, u.permanent), (Some(v3), None, Some(8472), true, true));
            let mut zeros: Vec<_> = entries.iter().filter(|e| e.mac == ZERO).map(|e| e.dst).collect();
            zeros.sort();
            assert_eq!(zeros, [Some(v2), Some(v3)], "append is idempotent per destination");
            nl.fdb_del(vx, ZERO, Some(v2), Some(42), Some(4789)).await.unwrap();
            nl.fdb_del(vx, ZERO, Some(v2), Some(42), Some(4789)).await.unwrap();
            nl.fdb_del(vx, MAC, Some(v3), Some(42), Some(8472)).await.unwrap();
            let left = nl.fdb_entries(vx).await.unwrap();
            assert!(!left.iter().any(|e| e.mac == MAC), "{left:?}");
            assert_eq!(left.iter().filter(|e| e.mac == ZERO).map(|e| e.dst).collect::<Vec<_>>(), [Some(v3)]);
        });
    }

    #[test]
    fn neighbours_replace_and_delete() {
        in_ns(|nl| async move {
            let (_, vx) = setup(&nl).await;
            let ip = Ipv4Addr::new(10, 0, 10, 11);
            nl.neigh_replace(vx, ip, [2, 0, 0, 0, 0, 1]).await.unwrap();
            nl.neigh_replace(vx, ip, MAC).await.unwrap();
            let n = nl.neighbours(vx).await.unwrap();
            assert_eq!(n, [NeighEntry { ip, mac: Some(MAC), permanent: true }]);
            nl.neigh_del(vx, ip).await.unwrap();
            nl.neigh_del(vx, ip).await.unwrap();
            assert!(nl.neighbours(vx).await.unwrap().is_empty());
        });
    }
}
