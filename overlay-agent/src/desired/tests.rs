use super::*;

const VNI: u32 = 42;

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 10, last)
}

fn vtep(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, last)
}

fn desired() -> Desired {
    let mut d = Desired::new("h1", BTreeMap::from([(VNI, 4789)]));
    d.take_dirty();
    d
}

fn node(name: &str, v: u8) -> Record {
    Record::Node(NodeRecord { node: name.into(), vtep: vtep(v), version: String::new() })
}

fn ep(node: &str, last: u8) -> Record {
    Record::Endpoint(
        VNI,
        ip(last),
        EndpointRecord { node: node.into(), network: "blue".into(), mac: MacAddr::from_ipv4(ip(last)), udp_port: 4789 },
    )
}

fn local(last: u8, ifindex: u32) -> LocalEndpoint {
    LocalEndpoint { vni: VNI, ip: ip(last), mac: MacAddr::from_ipv4(ip(last)), ifindex, ifname: format!("ovl{ifindex}") }
}

fn remote_at(v: u8) -> Option<FdbTarget> {
    Some(FdbTarget::Remote { vtep: vtep(v), udp_port: 4789 })
}

#[test]
fn an_endpoint_resolves_once_its_node_is_known_and_marks_only_its_entries() {
    let mut d = desired();
    d.put(ep("h2", 12));
    assert_eq!(d.neigh(VNI, ip(12)), None, "no node yet");
    assert!(d.take_dirty().is_empty());
    d.put(node("h2", 2));
    assert_eq!(d.neigh(VNI, ip(12)), Some(MacAddr::from_ipv4(ip(12))));
    assert_eq!(d.fdb(VNI, MacAddr::from_ipv4(ip(12))), remote_at(2));
    assert_eq!(d.flood_remote(VNI), BTreeSet::from([(vtep(2), 4789)]));
    let dirty = d.take_dirty();
    assert_eq!(dirty.neigh, HashSet::from([(VNI, ip(12))]));
    assert_eq!(dirty.fdb, HashSet::from([(VNI, MacAddr::from_ipv4(ip(12)))]));
    assert_eq!(dirty.flood, HashSet::from([VNI]));
    // The same record again changes nothing.
    d.put(ep("h2", 12));
    d.put(node("h2", 2));
    assert!(d.take_dirty().is_empty());
}

#[test]
fn a_node_that_moves_moves_its_endpoints_and_a_dead_node_takes_them_away() {
    let mut d = desired();
    d.snapshot(vec![node("h2", 2), ep("h2", 12), ep("h2", 13), node("h3", 3), ep("h3", 14)]);
    d.take_dirty();
    d.put(node("h2", 22));
    assert_eq!(d.fdb(VNI, MacAddr::from_ipv4(ip(13))), remote_at(22));
    let dirty = d.take_dirty();
    assert_eq!(dirty.fdb.len(), 2, "only h2's endpoints: {dirty:?}");
    assert_eq!(d.flood_remote(VNI), BTreeSet::from([(vtep(22), 4789), (vtep(3), 4789)]));
    d.delete(&RecordKey::Node("h2".into()));
    assert_eq!(d.neigh(VNI, ip(12)), None);
    assert_eq!(d.flood_remote(VNI), BTreeSet::from([(vtep(3), 4789)]));
    assert_eq!(d.all_fdb().count(), 1);
}

#[test]
fn a_recreated_container_with_a_new_mac_replaces_the_old_entries() {
    let mut d = desired();
    d.snapshot(vec![node("h2", 2), ep("h2", 12)]);
    d.take_dirty();
    let new_mac: MacAddr = "0a:00:00:00:00:12".parse().unwrap();
    d.put(Record::Endpoint(VNI, ip(12), EndpointRecord { node: "h2".into(), network: "blue".into(), mac: new_mac, udp_port: 4789 }));
    assert_eq!(d.neigh(VNI, ip(12)), Some(new_mac));
    assert_eq!(d.fdb(VNI, new_mac), remote_at(2));
    assert_eq!(d.fdb(VNI, MacAddr::from_ipv4(ip(12))), None, "the old MAC is gone");
    let dirty = d.take_dirty();
    assert!(dirty.fdb.contains(&(VNI, MacAddr::from_ipv4(ip(12)))) && dirty.fdb.contains(&(VNI, new_mac)));
}

#[test]
fn snapshot_removes_what_vanished_and_keeps_what_stayed() {
    let mut d = desired();
    d.snapshot(vec![node("h2", 2), ep("h2", 12), ep("h2", 13)]);
    d.take_dirty();
    d.snapshot(vec![node("h2", 2), ep("h2", 12)]);
    let dirty = d.take_dirty();
    assert_eq!(dirty.neigh, HashSet::from([(VNI, ip(13))]), "only the vanished endpoint");
    assert_eq!(d.neigh(VNI, ip(13)), None);
    assert!(d.neigh(VNI, ip(12)).is_some());
}

#[test]
fn local_wins_and_own_records_are_not_remote() {
    let mut d = desired();
    d.snapshot(vec![node("h1", 1), node("h2", 2), ep("h1", 11), ep("h2", 12)]);
    assert_eq!(d.neigh(VNI, ip(11)), None, "own record without a local container");
    d.add_local(local(11, 7));
    assert_eq!(d.fdb(VNI, MacAddr::from_ipv4(ip(11))), Some(FdbTarget::Local { ifindex: 7 }));
    assert_eq!(d.flood_local(VNI), vec![7]);
    assert_eq!(d.flood_remote(VNI), BTreeSet::from([(vtep(2), 4789)]), "own VTEP is never a flood target");
    // A stale remote claim of a local IP stays hidden while the container is here.
    d.put(ep("h2", 11));
    assert_eq!(d.fdb(VNI, MacAddr::from_ipv4(ip(11))), Some(FdbTarget::Local { ifindex: 7 }));
    d.remove_local(7);
    assert_eq!(d.fdb(VNI, MacAddr::from_ipv4(ip(11))), remote_at(2), "then the remote claim takes over");
}

#[test]
fn statics_apply_unless_a_node_publishes_the_same_ip() {
    let mut d = desired();
    let st = StaticRecord { network: "blue".into(), mac: MacAddr::from_ipv4(ip(99)), vtep: vtep(9), udp_port: 4789, declared_by: "h1".into() };
    d.put(Record::Static(VNI, ip(99), st));
    assert_eq!(d.fdb(VNI, MacAddr::from_ipv4(ip(99))), remote_at(9));
    d.snapshot(vec![node("h2", 2), ep("h2", 99), Record::Static(VNI, ip(99), d.static_at(VNI, ip(99)).unwrap().clone())]);
    assert_eq!(d.fdb(VNI, MacAddr::from_ipv4(ip(99))), remote_at(2));
    d.delete(&RecordKey::Endpoint(VNI, ip(99)));
    assert_eq!(d.fdb(VNI, MacAddr::from_ipv4(ip(99))), remote_at(9));
    d.delete(&RecordKey::Static(VNI, ip(99)));
    assert_eq!(d.all_fdb().count(), 0);
    assert!(d.flood_remote(VNI).is_empty());
}

#[test]
fn unserved_networks_produce_nothing() {
    let mut d = desired();
    d.put(node("h2", 2));
    d.put(Record::Endpoint(43, ip(12), EndpointRecord { node: "h2".into(), network: "red".into(), mac: MacAddr::from_ipv4(ip(12)), udp_port: 4789 }));
    assert_eq!(d.neigh(43, ip(12)), None);
    assert_eq!(d.all_neigh().count(), 0);
    assert!(d.take_dirty().is_empty());
}

#[test]
fn two_ips_claiming_one_mac_resolve_to_the_lowest_ip() {
    let mut d = desired();
    let mac = MacAddr::from_ipv4(ip(50));
    let rec = |node: &str| EndpointRecord { node: node.into(), network: "blue".into(), mac, udp_port: 4789 };
    d.snapshot(vec![node("h2", 2), node("h3", 3)]);
    d.put(Record::Endpoint(VNI, ip(60), rec("h3")));
    d.put(Record::Endpoint(VNI, ip(50), rec("h2")));
    assert_eq!(d.fdb(VNI, mac), remote_at(2));
    d.delete(&RecordKey::Endpoint(VNI, ip(50)));
    assert_eq!(d.fdb(VNI, mac), remote_at(3));
    d.delete(&RecordKey::Endpoint(VNI, ip(60)));
    assert_eq!(d.fdb(VNI, mac), None);
}

#[test]
fn all_dirty_covers_every_entry() {
    let mut d = desired();
    d.snapshot(vec![node("h2", 2), ep("h2", 12)]);
    d.add_local(local(11, 7));
    let all = d.all_dirty();
    assert_eq!(all.neigh.len(), 2);
    assert_eq!(all.fdb.len(), 2);
    assert_eq!(all.endpoints, HashSet::from([7]));
    assert_eq!(all.flood, HashSet::from([VNI]));
}

#[test]
fn an_untracked_snapshot_is_the_same_state_without_dirt() {
    let records = || vec![ep("h2", 12), node("h2", 2), ep("h3", 13), node("h3", 3), ep("h1", 11)];
    let (mut tracked, mut untracked) = (desired(), desired());
    tracked.snapshot(records());
    untracked.add_local(local(20, 9));
    untracked.snapshot_untracked(records());
    assert!(untracked.take_dirty().is_empty(), "nothing recorded, and earlier dirt dropped");
    let fdb = |d: &Desired| {
        let mut v: Vec<_> = d.all_fdb().filter(|(_, t)| matches!(t, FdbTarget::Remote { .. })).collect();
        v.sort_by_key(|((vni, mac), _)| (*vni, mac.0));
        v
    };
    assert_eq!(fdb(&untracked), fdb(&tracked));
    assert_eq!(untracked.flood_remote(VNI), tracked.flood_remote(VNI));
    assert_eq!(untracked.remote_count(VNI), 2, "h1 is this node: its record is not remote");
    // Changes after it are tracked again.
    untracked.delete(&RecordKey::Endpoint(VNI, ip(13)));
    let dirty = untracked.take_dirty();
    assert_eq!(dirty.neigh, HashSet::from([(VNI, ip(13))]));
    assert_eq!(dirty.flood, HashSet::from([VNI]), "h3's VTEP has no endpoint left");
}

fn subnet_rec(node: &str, mac: u8) -> SubnetRecord {
    SubnetRecord { node: node.into(), network: "routed".into(), mac: MacAddr([0x0e, 0, 0, 0, 0, mac]), udp_port: 4789 }
}

#[test]
fn an_l3_network_routes_node_subnets_and_holds_no_remote_container() {
    let mut d = desired();
    let own: Ipv4Net = "10.0.10.0/24".parse().unwrap();
    let router = Router { subnet: own, gateway: ip(1), mac: MacAddr([0x0e, 0, 0, 0, 0, 1]), l3: true };
    d.set_router(VNI, router);
    assert!(d.is_l3(VNI));
    // This host's router: the gateway answered with the router MAC, frames to it routed.
    assert_eq!(d.neigh(VNI, ip(1)), Some(router.mac));
    assert_eq!(d.fdb(VNI, router.mac), Some(FdbTarget::Router));
    d.take_dirty();
    // Another node's subnet becomes a route (and its node address a neighbour/FDB entry
    // for the kernel datapath) once its node is known; its containers add nothing.
    let far: Ipv4Net = "10.0.20.0/24".parse().unwrap();
    d.put(Record::Subnet(VNI, far, subnet_rec("h2", 2)));
    d.put(Record::Endpoint(
        VNI,
        Ipv4Addr::new(10, 0, 20, 5),
        EndpointRecord { node: "h2".into(), network: "routed".into(), mac: MacAddr([2, 0x42, 10, 0, 20, 5]), udp_port: 4789 },
    ));
    assert_eq!(d.route(VNI, far.network()), None, "no node yet");
    d.put(node("h2", 2));
    let (len, r) = d.route(VNI, far.network()).unwrap();
    assert_eq!((len, r.vtep, r.mac), (24, vtep(2), MacAddr([0x0e, 0, 0, 0, 0, 2])));
    assert_eq!(d.all_routes().count(), 1);
    assert_eq!(d.neigh(VNI, Ipv4Addr::new(10, 0, 20, 5)), None, "remote containers are not in the tables");
    assert_eq!(d.fdb(VNI, MacAddr([2, 0x42, 10, 0, 20, 5])), None);
    assert!(d.flood_remote(VNI).is_empty(), "broadcast stays on the host");
    let dirty = d.take_dirty();
    assert!(dirty.routes.contains(&(VNI, far.network())), "{dirty:?}");
    // The node moves: its route follows. It goes: the route goes.
    d.put(node("h2", 3));
    assert_eq!(d.route(VNI, far.network()).map(|(_, r)| r.vtep), Some(vtep(3)));
    d.delete(&RecordKey::Node("h2".into()));
    assert_eq!(d.route(VNI, far.network()), None);
    assert!(d.take_dirty().routes.contains(&(VNI, far.network())));
    // This node's own subnet record is never a route.
    d.put(node("h1", 1));
    d.put(Record::Subnet(VNI, own, subnet_rec("h1", 1)));
    assert_eq!(d.route(VNI, own.network()), None);
    // A static subnet (a host without an agent) routes without a node.
    let st = StaticSubnetRecord { network: "routed".into(), mac: MacAddr([0x0a, 0, 0, 0, 0, 9]), vtep: vtep(9), udp_port: 4789, declared_by: "h1".into() };
    d.put(Record::StaticSubnet(VNI, "10.0.99.0/24".parse().unwrap(), st));
    assert_eq!(d.route(VNI, Ipv4Addr::new(10, 0, 99, 0)).map(|(l, r)| (l, r.vtep)), Some((24, vtep(9))));
    d.snapshot(vec![node("h1", 1)]);
    assert_eq!(d.all_routes().count(), 0, "a snapshot without them removes them");
}

#[test]
fn a_network_accepts_vxlan_from_the_vteps_of_its_remotes_only() {
    let mut d = desired();
    assert!(d.vteps(VNI).is_empty());
    // A node without endpoints in the network sends it nothing.
    d.snapshot(vec![node("h2", 2), node("h3", 3), ep("h2", 12)]);
    assert_eq!(d.vteps(VNI), BTreeSet::from([vtep(2)]));
    // An agentless VTEP declared with `remote add`.
    let st = StaticRecord { network: "blue".into(), mac: MacAddr::from_ipv4(ip(99)), vtep: vtep(9), udp_port: 4789, declared_by: "h1".into() };
    d.take_dirty();
    d.put(Record::Static(VNI, ip(99), st));
    assert_eq!(d.vteps(VNI), BTreeSet::from([vtep(2), vtep(9)]));
    assert!(d.take_dirty().flood.contains(&VNI), "a change of VTEPs marks the network");
    // The node moves, then goes.
    d.put(node("h2", 22));
    assert_eq!(d.vteps(VNI), BTreeSet::from([vtep(22), vtep(9)]));
    d.delete(&RecordKey::Node("h2".into()));
    assert_eq!(d.vteps(VNI), BTreeSet::from([vtep(9)]));
    // Own containers are not remotes.
    d.add_local(local(20, 7));
    assert_eq!(d.vteps(VNI), BTreeSet::from([vtep(9)]));
    // An L3 network: the VTEPs of its node subnets, static ones included.
    let mut d = desired();
    d.set_router(VNI, Router { subnet: "10.0.10.0/24".parse().unwrap(), gateway: ip(1), mac: MacAddr([0x0e, 0, 0, 0, 0, 1]), l3: true });
    d.put(node("h2", 2));
    d.put(Record::Subnet(VNI, "10.0.20.0/24".parse().unwrap(), subnet_rec("h2", 2)));
    let st = StaticSubnetRecord { network: "routed".into(), mac: MacAddr([0x0a, 0, 0, 0, 0, 9]), vtep: vtep(9), udp_port: 4789, declared_by: "h1".into() };
    d.put(Record::StaticSubnet(VNI, "10.0.99.0/24".parse().unwrap(), st));
    assert_eq!(d.vteps(VNI), BTreeSet::from([vtep(2), vtep(9)]));
    assert!(d.vteps(43).is_empty(), "nothing for another network");
}
