//! rtnetlink operations (links, addresses, routes, neighbours) and
//! network-namespace helpers ([`netns`]).
//!
//! A [`Netlink`] talks to the network namespace of the thread that opened it:
//! to work inside another namespace, open it from a thread that entered that
//! namespace, e.g. inside [`netns::block_on_in_netns`].

pub mod netns;

use std::{
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use futures::TryStreamExt;
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth,
    packet_route::link::{self, LinkAttribute, LinkFlags, LinkMessage},
};
use tracing::debug;

pub use netns::NetnsError;

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
pub const MAX_IFNAME_LEN: usize = 15;

/// Errors of the netlink operations.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink route socket")]
    Connect {
        #[source]
        source: io::Error,
    },
    /// A link of that name already exists (EEXIST on creation).
    #[error("link {name} already exists")]
    Exists { name: String },
    /// The name is empty, longer than [`MAX_IFNAME_LEN`] or contains `/`,
    /// whitespace or NUL.
    #[error("invalid interface name {name:?}")]
    InvalidName { name: String },
    #[error("invalid IPv4 prefix length {prefix_len}")]
    InvalidPrefixLen { prefix_len: u8 },
    /// A route needs a gateway, an output interface or both.
    #[error("route to {dst}/{prefix_len} has neither a gateway nor an output interface")]
    RouteWithoutNextHop { dst: Ipv4Addr, prefix_len: u8 },
    #[error("opening network namespace {path}")]
    OpenNetns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The kernel (or rtnetlink) refused a request; `op` says which and
    /// `target` what it was about. (Boxed: an rtnetlink error can hold a whole
    /// netlink message, which would make every `Result` here large.)
    #[error("netlink {op} {target}")]
    Request {
        op: &'static str,
        target: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
}

impl NetlinkError {
    /// The errno the kernel answered with, if this is a refused request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Request { source, .. } => errno_of(source),
            _ => None,
        }
    }
}

/// The positive errno of a kernel NACK.
fn errno_of(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| code.get().abs()),
        _ => None,
    }
}

fn request_error(
    op: &'static str,
    target: impl ToString,
) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    move |source| NetlinkError::Request {
        op,
        target: target.to_string(),
        source: Box::new(source),
    }
}

/// The idempotent half of a change request: `Ok(true)` if the kernel made the change,
/// `Ok(false)` if it refused with one of `already` (the errnos that mean "already so":
/// EEXIST for an add, ENOENT/ENODEV for a delete), the request's error otherwise.
fn idempotent(
    result: Result<(), rtnetlink::Error>,
    already: &[i32],
    op: &'static str,
    target: impl ToString,
) -> Result<bool, NetlinkError> {
    match result {
        Ok(()) => Ok(true),
        Err(source) if errno_of(&source).is_some_and(|errno| already.contains(&errno)) => Ok(false),
        Err(source) => Err(request_error(op, target)(source)),
    }
}

fn validate_ifname(name: &str) -> Result<(), NetlinkError> {
    if name.is_empty()
        || name.len() > MAX_IFNAME_LEN
        || name.contains(|c: char| c == '/' || c == '\0' || c.is_whitespace())
    {
        return Err(NetlinkError::InvalidName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn validate_prefix_len(prefix_len: u8) -> Result<(), NetlinkError> {
    if prefix_len > 32 {
        return Err(NetlinkError::InvalidPrefixLen { prefix_len });
    }
    Ok(())
}

/// What the agent and the tests need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// The hardware address, when it is an Ethernet one.
    pub mac: Option<[u8; 6]>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Index of the bridge (or other controller) it is a port of.
    pub master: Option<u32>,
    /// `IFLA_INFO_KIND`: "veth", "bridge", "vxlan"...; `None` for e.g. `lo`.
    pub kind: Option<String>,
    /// `IFLA_IFALIAS` (`ip link set dev X alias ...`): the agent marks what it owns.
    pub alias: Option<String>,
}

impl LinkInfo {
    fn from_message(message: &LinkMessage) -> Self {
        let mut info = LinkInfo {
            index: message.header.index,
            name: String::new(),
            mtu: 0,
            mac: None,
            up: message.header.flags.contains(LinkFlags::Up),
            master: None,
            kind: None,
            alias: None,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => info.name.clone_from(name),
                LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
                LinkAttribute::Address(address) => {
                    info.mac = <[u8; 6]>::try_from(address.as_slice()).ok()
                }
                LinkAttribute::Controller(index) if *index != 0 => info.master = Some(*index),
                LinkAttribute::IfAlias(alias) if !alias.is_empty() => info.alias = Some(alias.clone()),
                LinkAttribute::LinkInfo(infos) => {
                    for item in infos {
                        if let link::LinkInfo::Kind(kind) = item {
                            info.kind = Some(kind.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        info
    }
}

/// Changes to one link for [`Netlink::set_link`]; `None` leaves a property
/// as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkChange {
    pub name: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: Option<bool>,
    /// `Some(bridge index)` to enslave, `Some(0)` to detach (`nomaster`).
    pub master: Option<u32>,
    /// `IFLA_IFALIAS`.
    pub alias: Option<String>,
}

/// An rtnetlink connection bound to the network namespace of the thread that
/// opened it (the socket is created there; later `setns` calls by any thread
/// do not move it).
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace. Its
    /// connection task is `tokio::spawn`ed on the current runtime, so this
    /// must be called inside one, and the `Netlink` works as long as that
    /// runtime runs.
    pub async fn open() -> Result<Netlink, NetlinkError> {
        let (connection, handle, _messages) =
            rtnetlink::new_connection().map_err(|source| NetlinkError::Connect { source })?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// The underlying rtnetlink handle, for requests this type does not wrap.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    async fn get_one(
        &self,
        request: rtnetlink::LinkGetRequest,
        target: String,
    ) -> Result<Option<LinkInfo>, NetlinkError> {
        match request.execute().try_next().await {
            Ok(Some(message)) => Ok(Some(LinkInfo::from_message(&message))),
            Ok(None) => Ok(None),
            Err(source) if errno_of(&source) == Some(libc::ENODEV) => Ok(None),
            Err(source) => Err(request_error("get link", target)(source)),
        }
    }

    /// The link called `name`, or `None` if there is none (a name the kernel
    /// could not hold is `None` too).
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        if validate_ifname(name).is_err() {
            return Ok(None);
        }
        self.get_one(self.handle.link().get().match_name(name), name.to_owned())
            .await
    }

    /// The link with ifindex `index`, or `None` if there is none.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, NetlinkError> {
        self.get_one(
            self.handle.link().get().match_index(index),
            format!("#{index}"),
        )
        .await
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<LinkInfo>, NetlinkError> {
        self.handle
            .link()
            .get()
            .execute()
            .map_ok(|message| LinkInfo::from_message(&message))
            .try_collect()
            .await
            .map_err(request_error("dump links", "all"))
    }

    async fn add_link(
        &self,
        name: &str,
        message: LinkMessage,
        op: &'static str,
    ) -> Result<(), NetlinkError> {
        match self.handle.link().add(message).execute().await {
            Ok(()) => {
                debug!(name, op, "created link");
                Ok(())
            }
            Err(source) if errno_of(&source) == Some(libc::EEXIST) => Err(NetlinkError::Exists {
                name: name.to_owned(),
            }),
            Err(source) => Err(request_error(op, name)(source)),
        }
    }

    /// Creates a veth pair `name` <-> `peer_name`, both down, in this
    /// namespace. [`NetlinkError::Exists`] if either name is taken.
    pub async fn create_veth(&self, name: &str, peer_name: &str) -> Result<(), NetlinkError> {
        validate_ifname(name)?;
        validate_ifname(peer_name)?;
        self.add_link(name, LinkVeth::new(name, peer_name).build(), "create veth")
            .await
    }

    /// Creates a bridge `name`, down. [`NetlinkError::Exists`] if the name
    /// is taken.
    pub async fn create_bridge(&self, name: &str) -> Result<(), NetlinkError> {
        validate_ifname(name)?;
        let message = LinkMessageBuilder::<LinkBridge>::new(name).build();
        self.add_link(name, message, "create bridge").await
    }

    /// Deletes link `index` (for a veth, both ends). Idempotent: Ok if no
    /// such link exists.
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        let result = self.handle.link().del(index).execute().await;
        if idempotent(result, &[libc::ENODEV], "delete link", format!("#{index}"))? {
            debug!(index, "deleted link");
        }
        Ok(())
    }

    /// Deletes the link called `name`. Idempotent: Ok if there is none.
    pub async fn delete_link_by_name(&self, name: &str) -> Result<(), NetlinkError> {
        match self.link_by_name(name).await? {
            Some(link) => self.delete_link(link.index).await,
            None => Ok(()),
        }
    }

    /// Moves link `index` into the network namespace whose file is `ns` (see
    /// [`netns::netns_path`]). It arrives there down, keeping its name unless
    /// that is taken (then the kernel refuses with EEXIST).
    pub async fn move_link_to_netns(&self, index: u32, ns: &Path) -> Result<(), NetlinkError> {
        let file = File::open(ns).map_err(|source| NetlinkError::OpenNetns {
            path: ns.to_owned(),
            source,
        })?;
        let message = LinkUnspec::new_with_index(index)
            .setns_by_fd(file.as_raw_fd())
            .build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(request_error(
                "move link",
                format!("#{index} to {}", ns.display()),
            ))?;
        debug!(index, ns = %ns.display(), "moved link");
        Ok(())
    }

    /// Applies `change` to link `index`:
    /// 1. with a new name: the link is first set down (the kernel renames only
    ///    down links) and is set up again afterwards if it was up and
    ///    `change.up` does not say otherwise;
    /// 2. name, MAC, MTU and master in one request;
    /// 3. up/down last, so a link comes up with its final settings.
    pub async fn set_link(&self, index: u32, change: LinkChange) -> Result<(), NetlinkError> {
        let target = format!("#{index}");
        let mut up = change.up;
        if let Some(name) = &change.name {
            validate_ifname(name)?;
            let current = self.link_by_index(index).await?;
            if let Some(current) = current.filter(|link| link.up && link.name != *name) {
                self.handle
                    .link()
                    .set(LinkUnspec::new_with_index(index).down().build())
                    .execute()
                    .await
                    .map_err(request_error("set link down", &target))?;
                up = up.or(Some(current.up));
            }
        }

        let mut builder = LinkUnspec::new_with_index(index);
        let mut attributes = false;
        if let Some(name) = &change.name {
            builder = builder.name(name.clone());
            attributes = true;
        }
        if let Some(mac) = change.mac {
            builder = builder.address(mac.to_vec());
            attributes = true;
        }
        if let Some(mtu) = change.mtu {
            builder = builder.mtu(mtu);
            attributes = true;
        }
        if let Some(master) = change.master {
            builder = builder.controller(master);
            attributes = true;
        }
        if let Some(alias) = &change.alias {
            builder = builder.alias(alias.clone());
            attributes = true;
        }
        if attributes {
            self.handle
                .link()
                .set(builder.build())
                .execute()
                .await
                .map_err(request_error("set link", &target))?;
        }

        if let Some(up) = up {
            let builder = LinkUnspec::new_with_index(index);
            let builder = if up { builder.up() } else { builder.down() };
            self.handle
                .link()
                .set(builder.build())
                .execute()
                .await
                .map_err(request_error(
                    if up { "set link up" } else { "set link down" },
                    &target,
                ))?;
        }
        debug!(index, ?change, "changed link");
        Ok(())
    }

    /// Adds (or replaces) a permanent ARP entry `address` -> `mac` on link
    /// `index`, like `ip neigh replace ADDRESS lladdr MAC dev IF nud permanent`.
    pub async fn add_neighbour(
        &self,
        index: u32,
        address: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(address))
            .link_layer_address(&mac)
            .replace()
            .execute()
            .await
            .map_err(request_error(
                "add neighbour",
                format!("{address} on #{index}"),
            ))?;
        debug!(index, %address, "added neighbour");
        Ok(())
    }

    /// `tc qdisc del dev #index clsact` (with every filter on it); fine if there is none.
    pub async fn delete_clsact(&self, index: u32) -> Result<(), NetlinkError> {
        let mut req = self.handle.qdisc().del(index as i32);
        let msg = req.message_mut();
        // TC_H_CLSACT (= TC_H_INGRESS) as parent, handle ffff:0, as tc(8) sends it.
        msg.header.parent = 0xffff_fff1.into();
        msg.header.handle = 0xffff_0000.into();
        msg.attributes.push(rtnetlink::packet_route::tc::TcAttribute::Kind("clsact".into()));
        idempotent(req.execute().await, &[libc::ENOENT, libc::EINVAL, libc::ENODEV], "delete clsact qdisc", format!("#{index}"))
            .map(drop)
    }
}

mod addresses;
mod routes;
pub mod vxlan;
pub use vxlan::{FdbEntry, NeighEntry, VxlanInfo, VxlanSpec};

#[cfg(test)]
mod tests;
