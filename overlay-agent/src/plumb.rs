//! Plugs a container into the host: a veth pair whose host end stays in the agent's
//! namespace and whose other end becomes the container's interface (name, MAC,
//! address, MTU, up). Every step either completes or is undone: a failed plug leaves
//! nothing behind. For a runtime that moves and addresses the container end itself
//! (Docker's network plugin protocol), the other end is handed off instead: left in
//! the host namespace with its MAC and MTU set, for the runtime to take.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use tracing::{debug, warn};

use crate::{
    mac::MacAddr,
    netlink::{
        LinkChange, Netlink, NetlinkError,
        netns::{self, NetnsError},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum PlumbError {
    #[error("network namespace {netns:?} not found at {path} (create it first, e.g. `ip netns add {netns}`)")]
    NoNetns { netns: String, path: PathBuf },
    #[error("interface {ifname} already exists in network namespace {netns:?}; pick another with --ifname")]
    IfnameTaken { ifname: String, netns: String },
    #[error("invalid interface name {ifname:?}: 1 to 15 characters, no '/' or whitespace")]
    BadIfname { ifname: String },
    #[error("in network namespace {netns:?}: {source}")]
    Netns {
        netns: String,
        #[source]
        source: NetnsError,
    },
    #[error("{step}: {source}")]
    Netlink {
        step: &'static str,
        #[source]
        source: NetlinkError,
    },
    #[error("the namespace worker thread failed: {source}")]
    Worker {
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("the new link {name} vanished while it was being set up")]
    Vanished { name: String },
    #[error("no free host-side veth name for {ip} in VNI {vni} after {attempts} tries (links with those names belong to others)")]
    NoFreeName { vni: u32, ip: Ipv4Addr, attempts: u32 },
}

/// What to plug in.
#[derive(Debug, Clone)]
pub struct PlugSpec {
    /// The agent's node name: marks the host-side veth as this node's (its alias).
    pub node: String,
    pub network: String,
    pub vni: u32,
    pub netns: String,
    pub ifname: String,
    /// Leave the container end in the host namespace for the runtime to move, name
    /// and address (`netns` and `ifname` are then only recorded).
    pub handoff: bool,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    /// The container's default route: the network's gateway, if it has one.
    pub gateway: Option<Ipv4Addr>,
    pub mac: MacAddr,
    /// The container's MTU (underlay − 50).
    pub mtu: u32,
    /// The host side's MTU: the underlay's. On 5.10/5.11, `bpf_skb_adjust_room` refuses
    /// to grow a non-GSO packet past the MTU of the device it is on (+14), so a host
    /// veth at the container's MTU would make every full-size frame fail encapsulation.
    pub host_mtu: u32,
}

/// The result: the host-side veth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugged {
    pub host_ifindex: u32,
    pub host_ifname: String,
    /// For a hand-off: the container end's name in the host namespace.
    pub handed_off: Option<String>,
}

/// How many names [`plug`] tries for one endpoint before giving up (each collision
/// with a live link moves to the next).
const NAME_ATTEMPTS: u32 = 16;

/// The `attempt`-th candidate host-side veth name of endpoint (vni, ip): derived, so a
/// leftover is recognisable, but never trusted alone: [`plug`] checks the alias of a
/// link with that name before touching it. 15 bytes max.
pub fn host_ifname(vni: u32, ip: Ipv4Addr, attempt: u32) -> String {
    format!("ovl{:08x}", fnv1a(vni, ip, attempt))
}

fn temp_peer_name(vni: u32, ip: Ipv4Addr, attempt: u32) -> String {
    format!("ovp{:08x}", fnv1a(vni, ip, attempt))
}

fn fnv1a(vni: u32, ip: Ipv4Addr, attempt: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in vni.to_be_bytes().into_iter().chain(ip.octets()).chain(attempt.to_be_bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The alias (`ip link ... alias`) that marks a host-side veth as node `node`'s
/// endpoint (vni, ip): orphan sweeps and name collisions are decided by it.
pub fn alias(node: &str, vni: u32, ip: Ipv4Addr) -> String {
    format!("{ALIAS_PREFIX}{node}:{vni}:{ip}")
}

pub const ALIAS_PREFIX: &str = "overlay-agent:";

/// The node and endpoint an alias names, if it is one of ours.
pub fn parse_alias(alias: &str) -> Option<(&str, u32, Ipv4Addr)> {
    let rest = alias.strip_prefix(ALIAS_PREFIX)?;
    let (rest, ip) = rest.rsplit_once(':')?;
    let (node, vni) = rest.rsplit_once(':')?;
    Some((node, vni.parse().ok()?, ip.parse().ok()?))
}

pub fn check_ifname(ifname: &str) -> Result<(), PlumbError> {
    if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ':']) || ifname.contains(char::is_whitespace) {
        return Err(PlumbError::BadIfname { ifname: ifname.into() });
    }
    Ok(())
}

fn nl(step: &'static str) -> impl FnOnce(NetlinkError) -> PlumbError {
    move |source| PlumbError::Netlink { step, source }
}

/// Runs `f` with a netlink connection inside the namespace at `path`, on its own thread.
async fn in_netns<T, F, Fut>(netns: &str, path: &Path, f: F) -> Result<T, PlumbError>
where
    T: Send + 'static,
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, PlumbError>>,
{
    let path = path.to_owned();
    let res = tokio::task::spawn_blocking(move || {
        netns::block_on_in_netns(&path, || async move {
            let handle = Netlink::open().await.map_err(nl("opening netlink in the container namespace"))?;
            f(handle).await
        })
    })
    .await
    .map_err(|source| PlumbError::Worker { source })?;
    res.map_err(|source| PlumbError::Netns { netns: netns.into(), source })?
}

/// Checks everything that can be checked before changing anything.
pub async fn preflight(netns: &str, ifname: &str) -> Result<PathBuf, PlumbError> {
    check_ifname(ifname)?;
    let path = netns::netns_path(netns);
    if !path.exists() {
        return Err(PlumbError::NoNetns { netns: netns.to_owned(), path });
    }
    let name = ifname.to_owned();
    let taken = in_netns(netns, &path, move |h| async move {
        Ok(h.link_by_name(&name).await.map_err(nl("looking up the container interface"))?.is_some())
    })
    .await?;
    if taken {
        return Err(PlumbError::IfnameTaken { ifname: ifname.to_owned(), netns: netns.to_owned() });
    }
    Ok(path)
}

/// Picks the host-side and temporary peer names: the first candidate pair not used by a
/// live link, or used by this very endpoint's leftover (same alias), which is removed.
/// A link with another alias (another endpoint, another node's, a stranger's) is never
/// touched.
async fn free_names(host: &Netlink, spec: &PlugSpec) -> Result<(String, String), PlumbError> {
    let mine = alias(&spec.node, spec.vni, spec.ip);
    'attempts: for attempt in 0..NAME_ATTEMPTS {
        let names = (host_ifname(spec.vni, spec.ip, attempt), temp_peer_name(spec.vni, spec.ip, attempt));
        for name in [&names.0, &names.1] {
            match host.link_by_name(name).await.map_err(nl("looking up links"))? {
                None => {}
                Some(l) if l.alias.as_deref() == Some(mine.as_str()) => {
                    warn!(link = %name, "removing this endpoint's veth left behind by a previous agent run");
                    host.delete_link(l.index).await.map_err(nl("removing a stale veth"))?;
                }
                Some(l) => {
                    debug!(link = %name, alias = ?l.alias, attempt, "name taken by another link; trying the next");
                    continue 'attempts;
                }
            }
        }
        return Ok(names);
    }
    Err(PlumbError::NoFreeName { vni: spec.vni, ip: spec.ip, attempts: NAME_ATTEMPTS })
}

/// Creates and configures the veth pair. On error, whatever was created is removed.
pub async fn plug(host: &Netlink, spec: &PlugSpec) -> Result<Plugged, PlumbError> {
    let path = if spec.handoff { None } else { Some(preflight(&spec.netns, &spec.ifname).await?) };
    let (host_name, peer_name) = free_names(host, spec).await?;
    host.create_veth(&host_name, &peer_name).await.map_err(nl("creating the veth pair"))?;
    match configure(host, spec, path.as_deref(), &host_name, &peer_name).await {
        Ok(p) => Ok(p),
        Err(e) => {
            // Deleting one end of a veth deletes both, wherever the peer went.
            if let Err(undo) = host.delete_link_by_name(&host_name).await {
                warn!(link = %host_name, error = %undo, "undoing a failed plug");
            }
            Err(e)
        }
    }
}

async fn configure(
    host: &Netlink,
    spec: &PlugSpec,
    path: Option<&Path>,
    host_name: &str,
    peer_name: &str,
) -> Result<Plugged, PlumbError> {
    let host_link = host
        .link_by_name(host_name)
        .await
        .map_err(nl("looking up the new veth"))?
        .ok_or_else(|| PlumbError::Vanished { name: host_name.into() })?;
    let peer = host
        .link_by_name(peer_name)
        .await
        .map_err(nl("looking up the new veth peer"))?
        .ok_or_else(|| PlumbError::Vanished { name: peer_name.into() })?;
    let Some(path) = path else {
        // A hand-off: the runtime moves, names, addresses and brings up this end.
        host.set_link(peer.index, LinkChange { mac: Some(spec.mac.0), mtu: Some(spec.mtu), ..Default::default() })
            .await
            .map_err(nl("setting the container end's MAC and MTU"))?;
        bring_up_host_end(host, spec, host_link.index).await?;
        debug!(host = host_name, ifindex = host_link.index, peer = peer_name, "veth ready for the runtime");
        return Ok(Plugged { host_ifindex: host_link.index, host_ifname: host_name.into(), handed_off: Some(peer_name.into()) });
    };
    host.move_link_to_netns(peer.index, path).await.map_err(nl("moving the veth into the container namespace"))?;

    let (peer_name, spec2) = (peer_name.to_owned(), spec.clone());
    in_netns(&spec.netns, path, move |h| async move {
        let link = h
            .link_by_name(&peer_name)
            .await
            .map_err(nl("looking up the veth in the container namespace"))?
            .ok_or(PlumbError::Vanished { name: peer_name.clone() })?;
        h.set_link(
            link.index,
            LinkChange { name: Some(spec2.ifname.clone()), mac: Some(spec2.mac.0), mtu: Some(spec2.mtu), ..Default::default() },
        )
        .await
        .map_err(nl("naming the container interface"))?;
        h.add_address(link.index, spec2.ip, spec2.prefix_len).await.map_err(nl("adding the container address"))?;
        h.set_link(link.index, LinkChange { up: Some(true), ..Default::default() })
            .await
            .map_err(nl("bringing the container interface up"))?;
        if let Some(gw) = spec2.gateway {
            h.add_route(Ipv4Addr::UNSPECIFIED, 0, Some(gw), Some(link.index))
                .await
                .map_err(nl("adding the container's default route"))?;
        }
        Ok(())
    })
    .await?;

    bring_up_host_end(host, spec, host_link.index).await?;
    debug!(host = host_name, ifindex = host_link.index, netns = %spec.netns, "veth plugged");
    Ok(Plugged { host_ifindex: host_link.index, host_ifname: host_name.into(), handed_off: None })
}

/// The host end: the underlay's MTU, this node's alias (which marks it as ours), up.
async fn bring_up_host_end(host: &Netlink, spec: &PlugSpec, index: u32) -> Result<(), PlumbError> {
    let change = LinkChange {
        mtu: Some(spec.host_mtu),
        up: Some(true),
        alias: Some(alias(&spec.node, spec.vni, spec.ip)),
        ..Default::default()
    };
    host.set_link(index, change).await.map_err(nl("bringing the host-side veth up"))
}

/// This node's host-side veths, as their aliases say: (ifindex, name, vni, ip).
pub async fn own_veths(host: &Netlink, node: &str) -> Result<Vec<(u32, String, u32, Ipv4Addr)>, PlumbError> {
    let mut out = Vec::new();
    for link in host.links().await.map_err(nl("listing links"))? {
        if link.kind.as_deref() != Some("veth") {
            continue;
        }
        if let Some((n, vni, ip)) = link.alias.as_deref().and_then(parse_alias)
            && n == node
        {
            out.push((link.index, link.name.clone(), vni, ip));
        }
    }
    Ok(out)
}

/// Deletes this node's host-side veths that are not in `keep` (by ifindex): endpoints a
/// crashed agent plugged but never recorded. Never touches another node's or a
/// stranger's link. Returns how many it removed.
pub async fn remove_orphans(host: &Netlink, node: &str, keep: &std::collections::BTreeSet<u32>) -> Result<usize, PlumbError> {
    let mut removed = 0;
    for (index, name, vni, ip) in own_veths(host, node).await? {
        if !keep.contains(&index) {
            warn!(link = %name, vni, %ip, "removing a veth this node plugged but no longer knows");
            host.delete_link(index).await.map_err(nl("removing an orphaned veth"))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes the veth pair (both ends); fine if it is already gone.
pub async fn unplug(host: &Netlink, host_ifindex: u32) -> Result<(), PlumbError> {
    host.delete_link(host_ifindex).await.map_err(nl("deleting the veth pair"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_short_stable_and_distinct() {
        let ip = Ipv4Addr::new(10, 0, 10, 10);
        let a = host_ifname(42, ip, 0);
        assert_eq!(a.len(), 11);
        assert_eq!(a, host_ifname(42, ip, 0));
        assert_ne!(a, host_ifname(43, ip, 0));
        assert_ne!(a, host_ifname(42, Ipv4Addr::new(10, 0, 10, 11), 0));
        assert_ne!(a, host_ifname(42, ip, 1), "another attempt, another name");
        assert_ne!(a[3..], temp_peer_name(42, Ipv4Addr::new(10, 0, 10, 11), 0)[3..]);
    }

    #[test]
    fn aliases_round_trip() {
        let ip = Ipv4Addr::new(10, 0, 10, 10);
        assert_eq!(parse_alias(&alias("h-1:x", 42, ip)), Some(("h-1:x", 42, ip)));
        for other in ["", "overlay-agent:h1", "overlay-agent:h1:x:10.0.0.1", "something else"] {
            assert_eq!(parse_alias(other), None, "{other}");
        }
    }

    #[test]
    fn rejects_bad_ifnames() {
        for bad in ["", "a/b", "has space", "sixteen-chars-xx"] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
        check_ifname("eth0").unwrap();
    }
}
