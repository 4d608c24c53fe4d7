//! The network and IPAM driver: each Docker call becomes one request to the agent's
//! main loop (the same requests the CLI sends), so a Docker container is plugged,
//! published and removed exactly as `endpoint add/del` would.
//!
//! Addresses come from the cluster-wide IPAM: `RequestAddress` reserves one in the store
//! under this node's lease; `Join` publishes the endpoint on it (the store lets only the
//! reserving node do that); `ReleaseAddress` ends the reservation. The veth's container
//! end is handed to dockerd, which moves it into the container, names it `ethN` and
//! sets the address, as it does for its own drivers.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use ipnet::Ipv4Net;
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::{info, warn};

use super::{
    protocol::*,
    state::{DockerEndpoint, DockerState, DockerStateError},
};
use crate::{
    api::{EndpointSpec, ErrorKind, Request, Response, server::Call},
    config::Network,
    mac::MacAddr,
};

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The agent refused (its message says why and what to do).
    #[error("{message}")]
    Agent { message: String, kind: Option<ErrorKind> },
    #[error("{0}")]
    Invalid(String),
    #[error("the overlay agent is shutting down; retry when it is back")]
    ShuttingDown,
    #[error("saving the Docker driver's state: {0}")]
    State(#[from] DockerStateError),
}

impl DriverError {
    fn unexpected(message: impl Into<String>) -> DriverError {
        DriverError::Agent { message: message.into(), kind: None }
    }
}

fn invalid(msg: impl Into<String>) -> DriverError {
    DriverError::Invalid(msg.into())
}

pub struct Driver {
    networks: Vec<Network>,
    plugin: String,
    state_dir: PathBuf,
    calls: mpsc::Sender<Call>,
    state: Mutex<DockerState>,
}

impl Driver {
    pub fn new(networks: Vec<Network>, plugin: String, state_dir: PathBuf, calls: mpsc::Sender<Call>, state: DockerState) -> Self {
        Driver { networks, plugin, state_dir, calls, state: Mutex::new(state) }
    }

    /// Sends one request to the agent's main loop and waits for its answer.
    async fn call(&self, request: Request) -> Result<Response, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.calls.send(Call { request, reply }).await.map_err(|_| DriverError::ShuttingDown)?;
        match rx.await.map_err(|_| DriverError::ShuttingDown)? {
            Response::Error { message, kind } => Err(DriverError::Agent { message, kind }),
            other => Ok(other),
        }
    }

    fn served(&self) -> String {
        self.networks.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
    }

    fn network(&self, name: &str) -> Result<&Network, DriverError> {
        self.networks
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| invalid(format!("the overlay agent serves no network {name:?} (it serves: {})", self.served())))
    }

    /// Which agent network a Docker network (or IPAM pool) is: named by an option, found
    /// by its subnet, or the only one the agent serves.
    fn pick(&self, named: Option<&str>, pool: &str, how: &str) -> Result<&Network, DriverError> {
        if let Some(name) = named {
            return self.network(name);
        }
        if !pool.is_empty() {
            let pool: Ipv4Net = pool.parse().map_err(|_| invalid(format!("{pool:?} is not an IPv4 subnet")))?;
            return self.networks.iter().find(|n| n.subnet == pool).ok_or_else(|| {
                invalid(format!("no network of the overlay agent has the subnet {pool} (it serves: {})", self.subnets()))
            });
        }
        match self.networks.as_slice() {
            [only] => Ok(only),
            _ => Err(invalid(format!("say which overlay network this is with {how} network=NAME (the agent serves: {})", self.served()))),
        }
    }

    fn subnets(&self) -> String {
        self.networks.iter().map(|n| format!("{} {}", n.name, n.subnet)).collect::<Vec<_>>().join(", ")
    }

    async fn save(&self, state: &DockerState) -> Result<(), DriverError> {
        state.save(&self.state_dir).map_err(DriverError::from)
    }

    // --- NetworkDriver ---

    pub async fn create_network(&self, r: CreateNetwork) -> Result<serde_json::Value, DriverError> {
        if r.ipv6_data.iter().any(|d| !d.pool.is_empty()) {
            return Err(invalid("IPv6 is not supported by the overlay: create the network without --ipv6"));
        }
        let named = r.options.get(GENERIC_OPTIONS).and_then(|g| g.get("network")).and_then(|v| v.as_str());
        let pool = r.ipv4_data.first().map(|d| d.pool.as_str()).unwrap_or("");
        let net = self.pick(named, pool, "-o")?;
        if !pool.is_empty() && pool.parse::<Ipv4Net>().ok() != Some(net.subnet) {
            return Err(invalid(format!(
                "the Docker network's subnet {pool} is not overlay network {}'s {}: create it with --ipam-driver {} \
                 (which hands out the overlay's addresses) or --subnet {}",
                net.name, net.subnet, self.plugin, net.subnet
            )));
        }
        let mut state = self.state.lock().await;
        state.networks.insert(r.network_id.clone(), net.name.clone());
        self.save(&state).await?;
        info!(docker_network = %short(&r.network_id), network = %net.name, "Docker network created");
        Ok(serde_json::json!({}))
    }

    pub async fn delete_network(&self, r: NetworkRef) -> Result<serde_json::Value, DriverError> {
        let mut state = self.state.lock().await;
        if let Some(name) = state.networks.remove(&r.network_id) {
            self.save(&state).await?;
            info!(docker_network = %short(&r.network_id), network = %name, "Docker network deleted");
        }
        Ok(serde_json::json!({}))
    }

    fn network_of(&self, state: &DockerState, docker_id: &str) -> Result<Network, DriverError> {
        let name = state.networks.get(docker_id).ok_or_else(|| {
            invalid(format!(
                "Docker network {} is unknown to the overlay agent (its state_dir was lost?): remove it and create it again",
                short(docker_id)
            ))
        })?;
        self.network(name).cloned()
    }

    pub async fn create_endpoint(&self, r: CreateEndpoint) -> Result<CreateEndpointResponse, DriverError> {
        let mut state = self.state.lock().await;
        let net = self.network_of(&state, &r.network_id)?;
        let iface = r.interface.unwrap_or_default();
        if iface.address.is_empty() {
            return Err(invalid("the endpoint has no IPv4 address: create the network with --ipam-driver for the overlay"));
        }
        let ip = address_of(&iface.address)?;
        if !net.subnet.contains(&ip) {
            return Err(invalid(format!("{ip} is not in overlay network {}'s subnet {}", net.name, net.subnet)));
        }
        let (mac, answer) = match iface.mac_address.as_str() {
            "" => {
                let mac = MacAddr::from_ipv4(ip);
                (mac, Some(EndpointInterface { mac_address: mac.to_string(), ..Default::default() }))
            }
            given => (given.parse().map_err(|_| invalid(format!("{given:?} is not a MAC address")))?, None),
        };
        state.endpoints.insert(r.endpoint_id.clone(), DockerEndpoint { network_id: r.network_id, ip, mac });
        self.save(&state).await?;
        Ok(CreateEndpointResponse { interface: answer })
    }

    pub async fn delete_endpoint(&self, r: EndpointRef) -> Result<serde_json::Value, DriverError> {
        let mut state = self.state.lock().await;
        if state.endpoints.remove(&r.endpoint_id).is_some() {
            self.save(&state).await?;
        }
        Ok(serde_json::json!({}))
    }

    pub async fn join(&self, r: Join) -> Result<JoinResponse, DriverError> {
        let (net, ep) = {
            let state = self.state.lock().await;
            let net = self.network_of(&state, &r.network_id)?;
            let ep = state.endpoints.get(&r.endpoint_id).cloned().ok_or_else(|| {
                invalid(format!("endpoint {} is unknown to the overlay agent: remove the container and run it again", short(&r.endpoint_id)))
            })?;
            (net, ep)
        };
        let spec = EndpointSpec {
            network: net.name.clone(),
            netns: r.sandbox_key,
            ip: Some(ep.ip),
            mac: Some(ep.mac),
            ifname: None,
            handoff: true,
            owner: Some(format!("docker:{}", r.endpoint_id)),
            // Docker publishes ports itself (`docker run -p`).
            publish: Vec::new(),
        };
        let info = match self.call(Request::EndpointAdd(spec)).await? {
            Response::Endpoint(info) => info,
            other => return Err(DriverError::unexpected(format!("unexpected answer from the agent: {other:?}"))),
        };
        let src_name = info.handed_off.ok_or_else(|| DriverError::unexpected("the agent kept the container end of the veth"))?;
        // The network's anycast gateway (the agent answers for it on every host) is the
        // container's default route; dockerd adds no gateway bridge of its own.
        let gateway = crate::agent::l2_gateway(&net).map_or_else(String::new, |r| r.gateway.to_string());
        Ok(JoinResponse { interface_name: InterfaceName { src_name, dst_prefix: "eth".into() }, gateway, disable_gateway_service: true })
    }

    pub async fn leave(&self, r: EndpointRef) -> Result<serde_json::Value, DriverError> {
        let (net, ep) = {
            let state = self.state.lock().await;
            let Some(ep) = state.endpoints.get(&r.endpoint_id).cloned() else {
                warn!(endpoint = %short(&r.endpoint_id), "Leave for an endpoint the driver does not know; nothing to do");
                return Ok(serde_json::json!({}));
            };
            (self.network_of(&state, &r.network_id)?, ep)
        };
        match self.call(Request::EndpointDel { network: net.name.clone(), ip: ep.ip }).await {
            Ok(_) => {}
            // Already gone (removed with `endpoint del`, or its veth vanished): done.
            Err(DriverError::Agent { kind: Some(ErrorKind::NotFound), .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(serde_json::json!({}))
    }

    // --- IpamDriver ---

    pub fn request_pool(&self, r: RequestPool) -> Result<RequestPoolResponse, DriverError> {
        if r.v6 {
            return Err(invalid("IPv6 is not supported by the overlay: create the network without --ipv6"));
        }
        if !r.sub_pool.is_empty() {
            return Err(invalid("--ip-range is not supported by the overlay IPAM: addresses come from the whole subnet"));
        }
        let net = self.pick(r.options.get("network").map(String::as_str), &r.pool, "--ipam-opt")?;
        let mut data = BTreeMap::new();
        if let Some(gw) = crate::store::ipam::gateway(net.subnet) {
            data.insert(GATEWAY_DATA.to_owned(), format!("{gw}/{}", net.subnet.prefix_len()));
        }
        Ok(RequestPoolResponse { pool_id: net.name.clone(), pool: net.subnet.to_string(), data })
    }

    pub async fn request_address(&self, r: RequestAddress) -> Result<RequestAddressResponse, DriverError> {
        let net = self.network(&r.pool_id)?.clone();
        let prefix = net.subnet.prefix_len();
        let gateway = crate::store::ipam::gateway(net.subnet);
        let asked = match r.address.as_str() {
            "" => None,
            a => Some(a.parse::<Ipv4Addr>().map_err(|_| invalid(format!("{a:?} is not an IPv4 address")))?),
        };
        if r.options.get("RequestAddressType").map(String::as_str) == Some(GATEWAY_REQUEST) {
            // The gateway is the network's, the same on every host: nothing to reserve.
            return match (asked, gateway) {
                (Some(a), Some(g)) if a != g => Err(invalid(format!("overlay network {}'s gateway is {g}, not {a}", net.name))),
                (_, Some(g)) => Ok(RequestAddressResponse { address: format!("{g}/{prefix}"), data: BTreeMap::new() }),
                (_, None) => Err(invalid(format!("overlay network {} ({}) has no room for a gateway", net.name, net.subnet))),
            };
        }
        match self.call(Request::AddressReserve { network: net.name.clone(), ip: asked }).await? {
            Response::Address(a) => Ok(RequestAddressResponse { address: format!("{}/{}", a.ip, a.prefix_len), data: BTreeMap::new() }),
            other => Err(DriverError::unexpected(format!("unexpected answer from the agent: {other:?}"))),
        }
    }

    pub async fn release_address(&self, r: ReleaseAddress) -> Result<serde_json::Value, DriverError> {
        let net = self.network(&r.pool_id)?.clone();
        let ip = address_of(&r.address)?;
        if Some(ip) != crate::store::ipam::gateway(net.subnet) {
            self.call(Request::AddressRelease { network: net.name.clone(), ip }).await?;
        }
        Ok(serde_json::json!({}))
    }
}

/// The address of dockerd's `a.b.c.d/len` (or `a.b.c.d`).
fn address_of(text: &str) -> Result<Ipv4Addr, DriverError> {
    text.split('/').next().and_then(|a| a.parse().ok()).ok_or_else(|| invalid(format!("{text:?} is not an IPv4 address")))
}

/// Docker's IDs are 64 hex digits; logs show the 12 that `docker` shows.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
