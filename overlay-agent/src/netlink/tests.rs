//! Each test makes its own uniquely named namespace, works inside it through
//! [`block_on_in_netns`], reads the result back over netlink, and deletes the
//! namespace (also when it fails). They need root and fail without it (a skip must not pass).

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use rtnetlink::packet_route::{
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage},
};

use super::{
    LinkChange, Netlink, NetlinkError,
    netns::{block_on_in_netns, tests::TestNs},
};

fn root_only() {
    assert!(nix::unistd::geteuid().is_root(), "netlink tests need root: run them through `cargo xtask test`");
}

/// Runs `f` with a fresh [`Netlink`] inside a fresh namespace.
fn in_new_ns<F, Fut>(f: F)
where
    F: FnOnce(Netlink) -> Fut + Send,
    Fut: Future<Output = ()>,
{
    root_only();
    let ns = TestNs::new();
    block_on_in_netns(&ns.path, || async {
        let nl = Netlink::open().await.expect("open netlink");
        f(nl).await;
    })
    .expect("enter netns");
}

async fn index_of(nl: &Netlink, name: &str) -> u32 {
    nl.link_by_name(name)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no link {name}"))
        .index
}

async fn routes_v4(nl: &Netlink) -> Vec<RouteMessage> {
    let filter = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build();
    nl.handle()
        .route()
        .get(filter)
        .execute()
        .try_collect()
        .await
        .unwrap()
}

#[test]
fn lo_only_at_start() {
    in_new_ns(|nl| async move {
        let links = nl.links().await.unwrap();
        assert_eq!(links.len(), 1, "{links:?}");
        let lo = &links[0];
        assert_eq!(lo.name, "lo");
        assert!(!lo.up);
        assert_eq!(lo.kind, None);
        assert_eq!(nl.link_by_index(lo.index).await.unwrap().as_ref(), Some(lo));
        assert_eq!(nl.link_by_name("lo").await.unwrap().as_ref(), Some(lo));
        assert_eq!(nl.link_by_name("nope0").await.unwrap(), None);
        assert_eq!(nl.link_by_name("much-too-long-a-name").await.unwrap(), None);
        assert_eq!(nl.link_by_index(9999).await.unwrap(), None);
    });
}

#[test]
fn veth_create_exists_delete() {
    in_new_ns(|nl| async move {
        nl.create_veth("va0", "vb0").await.unwrap();
        let a = nl.link_by_name("va0").await.unwrap().unwrap();
        let b = nl.link_by_name("vb0").await.unwrap().unwrap();
        assert_eq!(a.kind.as_deref(), Some("veth"));
        assert_eq!(b.kind.as_deref(), Some("veth"));
        assert!(!a.up && !b.up);
        assert!(a.mac.is_some());
        assert_eq!(a.master, None);

        match nl.create_veth("va0", "vc0").await {
            Err(NetlinkError::Exists { name }) => assert_eq!(name, "va0"),
            other => panic!("expected Exists, got {other:?}"),
        }
        assert!(matches!(
            nl.create_veth("this-name-is-too-long", "x").await,
            Err(NetlinkError::InvalidName { .. })
        ));

        nl.delete_link(a.index).await.unwrap();
        // Deleting one end removes the pair; again is fine.
        assert_eq!(nl.link_by_name("vb0").await.unwrap(), None);
        nl.delete_link(a.index).await.unwrap();
        nl.delete_link_by_name("va0").await.unwrap();
        assert_eq!(nl.links().await.unwrap().len(), 1);
    });
}

#[test]
fn bridge_and_set_link() {
    in_new_ns(|nl| async move {
        nl.create_bridge("br0").await.unwrap();
        assert!(matches!(
            nl.create_bridge("br0").await,
            Err(NetlinkError::Exists { .. })
        ));
        let br = nl.link_by_name("br0").await.unwrap().unwrap();
        assert_eq!(br.kind.as_deref(), Some("bridge"));

        nl.create_veth("tmp0", "peer0").await.unwrap();
        let veth = index_of(&nl, "tmp0").await;
        nl.set_link(
            veth,
            LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();

        // Renaming an up link: set_link takes it down and back up.
        let mac = [0x02, 0x00, 0x00, 0xaa, 0xbb, 0xcc];
        nl.set_link(
            veth,
            LinkChange {
                name: Some("port0".into()),
                mac: Some(mac),
                mtu: Some(1450),
                master: Some(br.index),
                up: None,
                alias: Some("overlay-agent:test:42:10.0.0.1".into()),
            },
        )
        .await
        .unwrap();
        let got = nl.link_by_index(veth).await.unwrap().unwrap();
        assert_eq!(got.name, "port0");
        assert_eq!(got.mac, Some(mac));
        assert_eq!(got.mtu, 1450);
        assert_eq!(got.master, Some(br.index));
        assert_eq!(got.alias.as_deref(), Some("overlay-agent:test:42:10.0.0.1"));
        assert!(got.up);
        assert_eq!(nl.link_by_name("tmp0").await.unwrap(), None);

        // Detach and take down.
        nl.set_link(
            veth,
            LinkChange {
                master: Some(0),
                up: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let got = nl.link_by_index(veth).await.unwrap().unwrap();
        assert_eq!(got.master, None);
        assert!(!got.up);

        nl.delete_link_by_name("br0").await.unwrap();
        nl.delete_link_by_name("br0").await.unwrap();
        assert_eq!(nl.link_by_name("br0").await.unwrap(), None);
    });
}

#[test]
fn move_to_other_netns() {
    root_only();
    let a = TestNs::new();
    let b = TestNs::new();
    block_on_in_netns(&a.path, || async {
        let nl = Netlink::open().await.unwrap();
        nl.create_veth("mv0", "mv1").await.unwrap();
        let peer = index_of(&nl, "mv1").await;
        nl.move_link_to_netns(peer, &b.path).await.unwrap();
        assert_eq!(nl.link_by_name("mv1").await.unwrap(), None);
        assert!(matches!(
            nl.move_link_to_netns(peer, std::path::Path::new("/run/netns/ovu-missing"))
                .await,
            Err(NetlinkError::OpenNetns { .. })
        ));
    })
    .unwrap();
    block_on_in_netns(&b.path, || async {
        let nl = Netlink::open().await.unwrap();
        let moved = nl.link_by_name("mv1").await.unwrap().expect("mv1 in b");
        assert_eq!(moved.kind.as_deref(), Some("veth"));
        assert!(!moved.up);
    })
    .unwrap();
}

#[test]
fn addresses_routes_neighbours() {
    in_new_ns(|nl| async move {
        nl.create_veth("ul0", "ul1").await.unwrap();
        let ul0 = index_of(&nl, "ul0").await;
        let ul1 = index_of(&nl, "ul1").await;
        for index in [ul0, ul1] {
            nl.set_link(
                index,
                LinkChange {
                    up: Some(true),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        }
        assert_eq!(nl.first_ipv4(ul0).await.unwrap(), None);

        let ip = Ipv4Addr::new(198, 51, 100, 1);
        nl.add_address(ul0, ip, 24).await.unwrap();
        nl.add_address(ul0, ip, 24).await.unwrap(); // idempotent
        nl.add_address(ul0, Ipv4Addr::new(198, 51, 100, 9), 24)
            .await
            .unwrap();
        assert_eq!(
            nl.addresses(ul0).await.unwrap(),
            vec![(ip, 24), (Ipv4Addr::new(198, 51, 100, 9), 24)]
        );
        assert_eq!(nl.first_ipv4(ul0).await.unwrap(), Some(ip));
        assert_eq!(nl.addresses(ul1).await.unwrap(), vec![]);
        assert!(matches!(
            nl.add_address(ul0, ip, 33).await,
            Err(NetlinkError::InvalidPrefixLen { prefix_len: 33 })
        ));

        // Via a gateway, twice (idempotent), and a device route.
        let dst = Ipv4Addr::new(203, 0, 113, 0);
        let gw = Ipv4Addr::new(198, 51, 100, 254);
        nl.add_route(dst, 24, Some(gw), None).await.unwrap();
        nl.add_route(dst, 24, Some(gw), None).await.unwrap();
        let dev_dst = Ipv4Addr::new(10, 99, 0, 0);
        nl.add_route(dev_dst, 16, None, Some(ul0)).await.unwrap();
        assert!(matches!(
            nl.add_route(dst, 24, None, None).await,
            Err(NetlinkError::RouteWithoutNextHop { .. })
        ));
        let routes = routes_v4(&nl).await;
        let find = |want: Ipv4Addr, len: u8| {
            routes
                .iter()
                .find(|route| {
                    route.header.destination_prefix_length == len
                        && route
                            .attributes
                            .contains(&RouteAttribute::Destination(RouteAddress::Inet(want)))
                })
                .unwrap_or_else(|| panic!("no route to {want}/{len} in {routes:?}"))
        };
        let via = find(dst, 24);
        assert!(
            via.attributes
                .contains(&RouteAttribute::Gateway(RouteAddress::Inet(gw)))
        );
        assert!(via.attributes.contains(&RouteAttribute::Oif(ul0)));
        let dev = find(dev_dst, 16);
        assert!(dev.attributes.contains(&RouteAttribute::Oif(ul0)));

        // A permanent ARP entry; replacing it changes the MAC.
        let peer = Ipv4Addr::new(198, 51, 100, 2);
        nl.add_neighbour(ul0, peer, [0x02, 0, 0, 0, 0, 1])
            .await
            .unwrap();
        let mac = [0x02, 0, 0, 0, 0, 2];
        nl.add_neighbour(ul0, peer, mac).await.unwrap();
        let neighbours: Vec<_> = nl
            .handle()
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .unwrap();
        let entry = neighbours
            .iter()
            .find(|n| {
                n.attributes
                    .contains(&NeighbourAttribute::Destination(NeighbourAddress::Inet(
                        peer,
                    )))
            })
            .expect("neighbour entry");
        assert_eq!(entry.header.ifindex, ul0);
        assert_eq!(entry.header.state, NeighbourState::Permanent);
        assert!(
            entry
                .attributes
                .contains(&NeighbourAttribute::LinkLayerAddress(mac.to_vec()))
        );
    });
}
