//! Plugs a container into the host: a veth pair whose host end stays in the agent's
//! namespace and whose other end becomes the container's interface (name, MAC,
//! address, MTU, up). Every step either completes or is undone: a failed plug leaves
//! nothing behind.

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
}

/// What to plug in.
#[derive(Debug, Clone)]
pub struct PlugSpec {
    pub network: String,
    pub netns: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
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
}

/// Host-side veth names are derived from (network, IP), so a leftover from a crash is
/// recognisable and a name never collides between two live endpoints. 15 bytes max.
pub fn host_ifname(network: &str, ip: Ipv4Addr) -> String {
    format!("ovl{:08x}", fnv1a(network, ip))
}

fn temp_peer_name(network: &str, ip: Ipv4Addr) -> String {
    format!("ovp{:08x}", fnv1a(network, ip))
}

fn fnv1a(network: &str, ip: Ipv4Addr) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in network.bytes().chain([0]).chain(ip.octets()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
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
pub async fn preflight(spec: &PlugSpec) -> Result<PathBuf, PlumbError> {
    check_ifname(&spec.ifname)?;
    let path = netns::netns_path(&spec.netns);
    if !path.exists() {
        return Err(PlumbError::NoNetns { netns: spec.netns.clone(), path });
    }
    let ifname = spec.ifname.clone();
    let taken = in_netns(&spec.netns, &path, move |h| async move {
        Ok(h.link_by_name(&ifname).await.map_err(nl("looking up the container interface"))?.is_some())
    })
    .await?;
    if taken {
        return Err(PlumbError::IfnameTaken { ifname: spec.ifname.clone(), netns: spec.netns.clone() });
    }
    Ok(path)
}

/// Creates and configures the veth pair. On error, whatever was created is removed.
pub async fn plug(host: &Netlink, spec: &PlugSpec) -> Result<Plugged, PlumbError> {
    let path = preflight(spec).await?;
    let host_name = host_ifname(&spec.network, spec.ip);
    let peer_name = temp_peer_name(&spec.network, spec.ip);
    for stale in [&host_name, &peer_name] {
        if host.link_by_name(stale).await.map_err(nl("looking up links"))?.is_some() {
            warn!(link = %stale, "removing a veth left behind by a previous agent run");
            host.delete_link_by_name(stale).await.map_err(nl("removing a stale veth"))?;
        }
    }
    host.create_veth(&host_name, &peer_name).await.map_err(nl("creating the veth pair"))?;
    match configure(host, spec, &path, &host_name, &peer_name).await {
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
    path: &Path,
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
        Ok(())
    })
    .await?;

    host.set_link(host_link.index, LinkChange { mtu: Some(spec.host_mtu), up: Some(true), ..Default::default() })
        .await
        .map_err(nl("bringing the host-side veth up"))?;
    debug!(host = host_name, ifindex = host_link.index, netns = %spec.netns, "veth plugged");
    Ok(Plugged { host_ifindex: host_link.index, host_ifname: host_name.into() })
}

/// Whether `name` is a host-side veth name [`host_ifname`] produces.
pub fn is_host_ifname(name: &str) -> bool {
    name.len() == 11
        && name.starts_with("ovl")
        && name[3..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Deletes host-side veths a previous (crashed) agent left: endpoints do not survive
/// an agent restart, so any veth with our naming is an orphan at start-up.
pub async fn remove_orphans(host: &Netlink) -> Result<usize, PlumbError> {
    let mut removed = 0;
    for link in host.links().await.map_err(nl("listing links"))? {
        if is_host_ifname(&link.name) && link.kind.as_deref() == Some("veth") {
            warn!(link = %link.name, "removing a veth left behind by a previous agent run");
            host.delete_link(link.index).await.map_err(nl("removing an orphaned veth"))?;
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
        let a = host_ifname("blue", Ipv4Addr::new(10, 0, 10, 10));
        assert_eq!(a.len(), 11);
        assert_eq!(a, host_ifname("blue", Ipv4Addr::new(10, 0, 10, 10)));
        assert_ne!(a, host_ifname("red", Ipv4Addr::new(10, 0, 10, 10)));
        assert_ne!(a, host_ifname("blue", Ipv4Addr::new(10, 0, 10, 11)));
        assert_ne!(a[3..], temp_peer_name("blue", Ipv4Addr::new(10, 0, 10, 11))[3..]);
    }

    #[test]
    fn recognises_its_own_host_ifnames() {
        assert!(is_host_ifname(&host_ifname("blue", Ipv4Addr::new(10, 0, 10, 10))));
        for other in ["eth0", "ovl", "ovlzzzzzzzz", "ovl0000000000", "ovp0000abcd", "ovbr42"] {
            assert!(!is_host_ifname(other), "{other}");
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
