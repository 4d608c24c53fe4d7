//! IPv4 addresses of links: `ip addr add/del/show`.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressMessage},
};
use tracing::debug;

use super::{Netlink, NetlinkError, idempotent, request_error, validate_prefix_len};

impl Netlink {
    /// Adds `address/prefix_len` to link `index`. Idempotent: Ok if it is
    /// already there.
    pub async fn add_address(
        &self,
        index: u32,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        self.add_address_flagged(index, address, prefix_len, false).await
    }

    /// Adds `address/prefix_len` to link `index` without the prefix route the kernel
    /// would add to `main` (`noprefixroute`). Idempotent.
    pub async fn add_address_noprefixroute(&self, index: u32, address: Ipv4Addr, prefix_len: u8) -> Result<(), NetlinkError> {
        self.add_address_flagged(index, address, prefix_len, true).await
    }

    async fn add_address_flagged(&self, index: u32, address: Ipv4Addr, prefix_len: u8, noprefixroute: bool) -> Result<(), NetlinkError> {
        validate_prefix_len(prefix_len)?;
        let mut req = self.handle.address().add(index, IpAddr::V4(address), prefix_len);
        if noprefixroute {
            req.message_mut().attributes.push(AddressAttribute::Flags(rtnetlink::packet_route::address::AddressFlags::Noprefixroute));
        }
        let result = req.execute().await;
        let target = format!("{address}/{prefix_len}{} on #{index}", if noprefixroute { " noprefixroute" } else { "" });
        if idempotent(result, &[libc::EEXIST], "add address", target)? {
            debug!(index, %address, prefix_len, noprefixroute, "added address");
        }
        Ok(())
    }

    /// The kernel's IPv4 address messages of link `index`.
    async fn address_messages(&self, index: u32) -> Result<Vec<AddressMessage>, NetlinkError> {
        let mut request = self.handle.address().get().set_link_index_filter(index);
        request.message_mut().header.family = AddressFamily::Inet;
        request.execute().try_collect().await.map_err(request_error("dump addresses", format!("of #{index}")))
    }

    /// Removes `address/prefix_len` from link `index`; fine if it is not there.
    pub async fn del_address(&self, index: u32, address: Ipv4Addr, prefix_len: u8) -> Result<(), NetlinkError> {
        validate_prefix_len(prefix_len)?;
        for m in self.address_messages(index).await? {
            let matches = m.header.prefix_len == prefix_len
                && m.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(ip)) if *ip == address));
            if matches {
                let result = self.handle.address().del(m).execute().await;
                idempotent(result, &[libc::EADDRNOTAVAIL, libc::ENOENT], "delete address", format!("{address}/{prefix_len} on #{index}"))?;
                debug!(index, %address, prefix_len, "deleted address");
            }
        }
        Ok(())
    }

    /// The IPv4 addresses of link `index`, with their prefix lengths, in the
    /// kernel's order (primary first).
    pub async fn addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        Ok(self
            .address_messages(index)
            .await?
            .iter()
            .filter(|message| message.header.family == AddressFamily::Inet)
            .filter_map(|message| {
                // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the
                // peer's on point-to-point links.
                let mut local = None;
                let mut address = None;
                for attribute in &message.attributes {
                    match attribute {
                        AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
                        AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
                        _ => {}
                    }
                }
                local.or(address).map(|ip| (ip, message.header.prefix_len))
            })
            .collect())
    }

    /// The first (primary) IPv4 address of link `index`.
    pub async fn first_ipv4(&self, index: u32) -> Result<Option<Ipv4Addr>, NetlinkError> {
        Ok(self.addresses(index).await?.first().map(|(ip, _)| *ip))
    }
}
