//! Whether a restarted agent adopted its host's datapath or rebuilt it, seen from
//! outside the agent: [`HostSnapshot::take`] before and after the restart, then
//! [`assert_adopted`].
//!
//! A snapshot holds what containers depend on: the datapath's tables (`map dump`), the
//! ifindexes of the networks' devices and of the containers' interfaces, and in eBPF
//! mode the kernel objects themselves: the pinned maps' ids, the pinned tcx links' ids
//! with the program each runs, and every program on the TC ingress of the underlay and
//! of the containers' host-side veths (`BPF_PROG_QUERY`).

use std::{collections::BTreeMap, path::Path};

use aya::{
    maps::MapInfo,
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
    },
    util::KernelVersion,
};
use overlay_agent::{
    config::DatapathMode,
    datapath::{devices, pinned::MapDump},
    paths,
};

use crate::{lab::Lab, topo::UL_IF};

/// What a restart of host `host` must leave as it was (see the module docs).
#[derive(Debug, Clone)]
pub struct HostSnapshot {
    pub host: String,
    pub dump: MapDump,
    /// The networks' devices (`ovvx<VNI>`, and `ovbr<VNI>` in kernel mode) and the local
    /// containers' interfaces (`<container>:eth0`), by name.
    pub ifindexes: BTreeMap<String, u32>,
    /// `None` in kernel mode.
    pub ebpf: Option<EbpfObjects>,
}

/// The eBPF datapath's kernel objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfObjects {
    /// Entries of `<bpffs_dir>/maps`: one directory per map layout version.
    pub layout_dirs: Vec<String>,
    /// `<layout dir>/<pin>` → map id.
    pub maps: BTreeMap<String, u32>,
    /// Whether the kernel has tcx (6.6+); without it the links below are empty.
    pub tcx: bool,
    /// Link pin (`<ifindex>-<ifname>`) → (link id, id of the program it runs).
    pub links: BTreeMap<String, (u32, u32)>,
    /// Interface → (id, tag) of every program on its tcx ingress.
    pub ingress: BTreeMap<String, Vec<(u32, u64)>>,
}

/// What the restart between two snapshots was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// The same build again: the maps are the same kernel objects, the programs are
    /// new ones with the same instructions.
    SameBuild,
    /// A build with another map layout and other programs (the upgrade-test variant, or
    /// back): new maps with the same contents, programs with other instructions.
    OtherBuild,
}

impl HostSnapshot {
    /// Reads host `i` of `lab` (its agent may be running or not).
    pub fn take(lab: &Lab, i: usize) -> HostSnapshot {
        let host = lab.host(i);
        let dump = lab.dump(i);
        let mut names: Vec<String> = lab.networks.iter().map(|n| devices::vxlan_name(n.vni)).collect();
        if lab.mode(i) == DatapathMode::Kernel {
            names.extend(lab.networks.iter().map(|n| devices::bridge_name(n.vni)));
        }
        let mut ifindexes: BTreeMap<String, u32> =
            names.into_iter().map(|n| (n.clone(), host.ns.link(&n).index)).collect();
        for c in lab.containers.iter().filter(|c| c.host == i) {
            ifindexes.insert(format!("{}:eth0", c.name), c.ns.link("eth0").index);
        }
        let ebpf = (dump.datapath == "ebpf").then(|| {
            let veths: Vec<String> = dump
                .endpoints
                .iter()
                .map(|e| {
                    let index = e.ifindex;
                    let link = host.ns.netlink(|nl| async move { nl.link_by_index(index).await });
                    link.expect("looking up a host-side veth")
                        .unwrap_or_else(|| panic!("no interface #{}", e.ifindex))
                        .name
                })
                .collect();
            EbpfObjects::read(&lab.nodes[i].bpffs_dir, &host.ns, veths)
        });
        HostSnapshot {
            host: lab.nodes[i].name.clone(),
            dump,
            ifindexes,
            ebpf,
        }
    }
}

impl EbpfObjects {
    fn read(bpffs_dir: &Path, ns: &crate::NetNs, veths: Vec<String>) -> EbpfObjects {
        let maps_root = bpffs_dir.join(paths::MAPS_SUBDIR);
        let layout_dirs = entries(&maps_root);
        let mut maps = BTreeMap::new();
        for dir in &layout_dirs {
            for pin in entries(&maps_root.join(dir)) {
                let path = maps_root.join(dir).join(&pin);
                let info = MapInfo::from_pin(&path).unwrap_or_else(|e| panic!("map pin {}: {e}", path.display()));
                maps.insert(format!("{dir}/{pin}"), info.id());
            }
        }
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        let mut links = BTreeMap::new();
        let mut ingress = BTreeMap::new();
        if tcx {
            let links_dir = bpffs_dir.join(paths::LINKS_SUBDIR);
            for pin in entries(&links_dir) {
                let path = links_dir.join(&pin);
                let link = PinnedLink::from_pin(&path).unwrap_or_else(|e| panic!("link pin {}: {e}", path.display()));
                let info = FdLink::from(link)
                    .info()
                    .unwrap_or_else(|e| panic!("link pin {}: {e}", path.display()));
                links.insert(pin, (info.id(), info.program_id()));
            }
            for ifname in veths.into_iter().chain([UL_IF.to_owned()]) {
                let progs = ns.run(|| {
                    SchedClassifier::query_tcx(&ifname, TcAttachType::Ingress)
                        .map(|(_, progs)| progs.iter().map(|p| (p.id(), p.tag())).collect::<Vec<_>>())
                        .map_err(|e| e.to_string())
                });
                ingress.insert(
                    ifname.clone(),
                    progs.unwrap_or_else(|e| panic!("tcx programs on {ifname}: {e}")),
                );
            }
        } else {
            eprintln!("kernel without tcx (before 6.6): the programs' links and ids are not compared");
        }
        EbpfObjects {
            layout_dirs,
            maps,
            tcx,
            links,
            ingress,
        }
    }

    /// The one program on `ifname`'s ingress, which must be the one its pinned link runs.
    fn only_program(&self, host: &str, ifname: &str) -> (u32, u64) {
        let progs = &self.ingress[ifname];
        assert_eq!(
            progs.len(),
            1,
            "{host}: {ifname} has {} programs on its tcx ingress, not one: {progs:?}",
            progs.len()
        );
        let link = self
            .links
            .iter()
            .find(|(pin, _)| pin.split_once('-').is_some_and(|(_, name)| name == ifname));
        let (pin, (_, in_link)) =
            link.unwrap_or_else(|| panic!("{host}: no pinned link for {ifname}: {:?}", self.links));
        assert_eq!(
            progs[0].0, *in_link,
            "{host}: the program on {ifname} is not the one in its pinned link {pin}"
        );
        progs[0]
    }
}

/// Sorted names in `dir` (none if it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_owned()))
        .collect();
    names.sort();
    names
}

/// The tables a restart must not change (counters and the pin directory may).
fn tables(d: &MapDump) -> MapDump {
    MapDump {
        stats: Vec::new(),
        pin_dir: Default::default(),
        ..d.clone()
    }
}

/// Panics unless `after` is `before` adopted across `restart` (see [`Restart`]).
#[track_caller]
pub fn assert_adopted(before: &HostSnapshot, after: &HostSnapshot, restart: Restart) {
    let host = &before.host;
    assert_eq!(
        tables(&after.dump),
        tables(&before.dump),
        "{host}: the datapath's tables changed across the restart"
    );
    assert_eq!(
        after.ifindexes, before.ifindexes,
        "{host}: devices or container interfaces were recreated"
    );
    let (b, a) = match (&before.ebpf, &after.ebpf) {
        (None, None) => return,
        (Some(b), Some(a)) => (b, a),
        _ => panic!("{host}: the datapath mode changed across the restart"),
    };
    assert_eq!(
        a.layout_dirs.len(),
        1,
        "{host}: map layout directories after the restart: {:?}",
        a.layout_dirs
    );
    assert!(
        a.maps.keys().all(|m| !m.ends_with("_new")),
        "{host}: staged maps left: {:?}",
        a.maps
    );
    match restart {
        Restart::SameBuild => assert_eq!(a.maps, b.maps, "{host}: maps were replaced, not adopted"),
        Restart::OtherBuild => {
            assert_ne!(
                a.layout_dirs, b.layout_dirs,
                "{host}: the other build kept the map layout directory: is it another build (the upgrade-test variant)?"
            );
            let old: Vec<u32> = b.maps.values().copied().collect();
            assert!(
                a.maps.values().all(|id| !old.contains(id)),
                "{host}: maps of the old layout still in use: {:?} vs {:?}",
                a.maps,
                b.maps
            );
            assert_eq!(
                a.maps.len(),
                b.maps.len(),
                "{host}: not every map was made anew: {:?} vs {:?}",
                a.maps,
                b.maps
            );
        }
    }
    if !a.tcx {
        return;
    }
    let ids = |o: &EbpfObjects| {
        o.links
            .iter()
            .map(|(pin, (link, _))| (pin.clone(), *link))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        ids(a),
        ids(b),
        "{host}: tcx links were recreated, not reused (a moment without a program)"
    );
    assert_eq!(
        a.ingress.keys().collect::<Vec<_>>(),
        b.ingress.keys().collect::<Vec<_>>(),
        "{host}: other interfaces"
    );
    for ifname in a.ingress.keys() {
        let (old, new) = (b.only_program(host, ifname), a.only_program(host, ifname));
        assert_ne!(
            new.0, old.0,
            "{host}: the restarted agent did not swap its program into the link on {ifname}"
        );
        match restart {
            Restart::SameBuild => assert_eq!(
                new.1, old.1,
                "{host}: the same build runs other instructions on {ifname}"
            ),
            Restart::OtherBuild => assert_ne!(
                new.1, old.1,
                "{host}: the other build's program on {ifname} has the same instructions"
            ),
        }
    }
}
