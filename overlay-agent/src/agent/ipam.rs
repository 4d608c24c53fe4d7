//! Address claims for new endpoints: the address asked for, or the lowest free one of
//! the network. The store's transaction decides (see [`crate::store::ipam`]); the
//! agent's view of the network and the listed reservations only choose which address to
//! try, so a race with another host costs a retry with the next address, never a
//! duplicate.

use std::{collections::HashSet, net::Ipv4Addr};

use tracing::{debug, info};

use super::{Agent, requests::RequestError};
use crate::{
    api::AddressInfo,
    config::Network,
    mac::MacAddr,
    store::{
        ipam,
        registry::{self, ClaimError},
    },
};

/// How many addresses one allocation tries before it gives up (each one lost to a race
/// with another host, or found taken by a record this agent has not seen yet).
const MAX_TRIES: u32 = 64;

impl Agent {
    /// Claims `ip` (or, without one, the lowest free address) with `mac` (default:
    /// derived from the address) for an endpoint of this node, in the store.
    pub(super) async fn claim_address(
        &self,
        net: &Network,
        ip: Option<Ipv4Addr>,
        mac: Option<MacAddr>,
    ) -> Result<(Ipv4Addr, MacAddr), RequestError> {
        let (kv, keys, lease) = (self.kv.clone(), self.keys.clone(), self.lease);
        let claim = |ip: Ipv4Addr| {
            let mac = mac.unwrap_or_else(|| MacAddr::from_ipv4(ip));
            let rec = self.endpoint_record(&net.name, mac, net.udp_port);
            let (kv, keys) = (kv.clone(), keys.clone());
            async move {
                self.store_write(|| registry::publish_endpoint(&kv, &keys, net.vni, ip, &rec, lease)).await?;
                Ok((ip, mac))
            }
        };
        match ip {
            Some(ip) => claim(ip).await,
            None => self.first_free(net, mac.is_none(), claim).await,
        }
    }

    /// `address reserve`: `ip` (or the lowest free address) of `network`, for an
    /// endpoint of this node to come.
    pub(super) async fn reserve(&self, network: &str, ip: Option<Ipv4Addr>) -> Result<AddressInfo, RequestError> {
        let net = match ip {
            Some(ip) => self.check_new(network, ip, MacAddr::from_ipv4(ip))?,
            None => self.network_named(network)?,
        };
        self.store_ready()?;
        let ip = self.reserve_address(&net, ip).await?;
        info!(network, %ip, "address reserved");
        let pool = self.pool(&net);
        Ok(AddressInfo { network: net.name, ip, prefix_len: pool.prefix_len(), gateway: ipam::gateway(pool) })
    }

    /// `address release`: ends this node's reservation of `ip` (fine if there is none).
    pub(super) async fn release(&self, network: &str, ip: Ipv4Addr) -> Result<bool, RequestError> {
        let net = self.network_named(network)?;
        self.store_ready()?;
        let (kv, keys, lease) = (self.kv.clone(), self.keys.clone(), self.lease);
        let released = self.store_write(|| async { Ok(ipam::release_ip(&kv, &keys, net.vni, ip, lease).await?) }).await?;
        info!(network, %ip, released, "address released");
        Ok(released)
    }

    /// Reserves `ip` (or the lowest free address) in `net` for this node ahead of its
    /// endpoint, as an IPAM driver is asked to.
    async fn reserve_address(&self, net: &Network, ip: Option<Ipv4Addr>) -> Result<Ipv4Addr, RequestError> {
        let (kv, keys, lease, node) = (self.kv.clone(), self.keys.clone(), self.lease, self.config.node_name.clone());
        let reserve = |ip: Ipv4Addr| {
            let (kv, keys, node) = (kv.clone(), keys.clone(), node.clone());
            async move {
                self.store_write(|| ipam::reserve_ip(&kv, &keys, net.vni, ip, &net.name, &node, lease)).await?;
                Ok(ip)
            }
        };
        match ip {
            Some(ip) => reserve(ip).await,
            None => self.first_free(net, true, reserve).await,
        }
    }

    /// Tries `claim` on free-looking addresses, lowest first, until one succeeds. An
    /// address found taken moves on to the next (as does a taken MAC when the MAC follows
    /// the address: `mac_follows`); any other error ends the search.
    async fn first_free<T, F, Fut>(&self, net: &Network, mac_follows: bool, mut claim: F) -> Result<T, RequestError>
    where
        F: FnMut(Ipv4Addr) -> Fut,
        Fut: std::future::Future<Output = Result<T, RequestError>>,
    {
        let (kv, keys) = (self.kv.clone(), self.keys.clone());
        let reserved: HashSet<Ipv4Addr> =
            self.store_write(|| async { Ok(ipam::reserved(&kv, &keys, net.vni).await?) }).await?.into_iter().collect();
        let mut tries = 0;
        let pool = self.pool(net);
        for ip in ipam::candidates(pool) {
            if reserved.contains(&ip)
                || self.desired.holder(net.vni, ip, MacAddr::from_ipv4(ip)).is_some_and(|(same_ip, _)| same_ip || mac_follows)
            {
                continue;
            }
            tries += 1;
            match claim(ip).await {
                Ok(v) => return Ok(v),
                Err(RequestError::Claim(e @ ClaimError::IpTaken { .. })) => {
                    debug!(%ip, error = %e, "taken meanwhile; trying the next address")
                }
                Err(RequestError::Claim(e @ ClaimError::MacTaken { .. })) if mac_follows => {
                    debug!(%ip, error = %e, "its MAC is taken; trying the next address");
                }
                Err(e) => return Err(e),
            }
            if tries >= MAX_TRIES {
                return Err(RequestError::AllocationRaced { network: net.name.clone(), tries });
            }
        }
        Err(RequestError::SubnetFull { network: net.name.clone(), subnet: pool, capacity: ipam::capacity(pool) })
    }
}
