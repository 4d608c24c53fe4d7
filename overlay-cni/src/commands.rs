//! ADD, DEL, CHECK, STATUS and GC, each through the local agent's control socket: the
//! container is plugged by the agent exactly as `endpoint add` would, and found again
//! by its owner tag `cni:<container id>/<ifname>`.

use std::{net::Ipv4Addr, path::PathBuf};

use overlay_agent::{
    api::{EndpointInfo, EndpointKind, EndpointSpec, ErrorKind, Request, Response, client},
    config::Config,
    netlink::{Netlink, netns},
};

use crate::{
    delegate::Ipam,
    spec::{AddResult, CniError, NetConf, code},
};

/// What the runtime said in the environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub cni_path: Vec<PathBuf>,
}

impl Env {
    pub fn from_process() -> Env {
        let var = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        Env {
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            cni_path: var("CNI_PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default(),
        }
    }

    fn need<'a>(&self, value: &'a Option<String>, name: &str) -> Result<&'a str, CniError> {
        value.as_deref().ok_or_else(|| CniError::new(code::INVALID_ENV, format!("{name} is not set")))
    }

    fn owner(&self) -> Result<String, CniError> {
        let id = self.need(&self.container_id, "CNI_CONTAINERID")?;
        let ifname = self.need(&self.ifname, "CNI_IFNAME")?;
        Ok(format!("cni:{id}/{ifname}"))
    }
}

/// The plugin's view of one call: the config, the agent's config, the environment.
pub struct Call<'a> {
    pub conf: &'a NetConf,
    pub raw: &'a [u8],
    pub env: &'a Env,
    agent: Config,
}

impl<'a> Call<'a> {
    pub fn new(conf: &'a NetConf, raw: &'a [u8], env: &'a Env) -> Result<Call<'a>, CniError> {
        let path = conf.agent_config.clone().unwrap_or_else(|| PathBuf::from(overlay_agent::paths::DEFAULT_CONFIG));
        let agent = Config::load(&path).map_err(|e| CniError::new(code::INVALID_CONFIG, format!("agentConfig: {}", overlay_agent::with_causes(&e))))?;
        if agent.network(conf.network()).is_none() {
            let served: Vec<&str> = agent.networks.iter().map(|n| n.name.as_str()).collect();
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("the agent ({}) serves no network {:?}; it serves: {}", path.display(), conf.network(), served.join(", ")),
            ));
        }
        Ok(Call { conf, raw, env, agent })
    }

    /// One request to the agent; an unreachable agent is "try again later".
    fn agent(&self, request: &Request) -> Result<Response, CniError> {
        match client::call(&self.agent.socket_path(), request) {
            Ok(Response::Error { message, kind: Some(ErrorKind::NotFound) }) => Err(CniError::new(code::UNKNOWN_CONTAINER, message)),
            Ok(Response::Error { message, .. }) => Err(CniError::new(code::AGENT, message)),
            Ok(r) => Ok(r),
            Err(e @ client::ClientError::Connect { .. }) => Err(CniError::new(code::TRY_AGAIN_LATER, e.to_string())),
            Err(e) => Err(CniError::new(code::IO, e.to_string())),
        }
    }

    fn ipam(&self) -> Result<Option<Ipam>, CniError> {
        self.conf.ipam_type().map(|t| Ipam::new(t, &self.env.cni_path, self.raw, &self.conf.cni_version)).transpose()
    }

    /// This attachment's endpoint, if the agent has it.
    fn find(&self) -> Result<Option<EndpointInfo>, CniError> {
        let owner = self.env.owner()?;
        match self.agent(&Request::EndpointList)? {
            Response::Endpoints { endpoints } => Ok(endpoints.into_iter().find(|e| e.owner.as_deref() == Some(owner.as_str()))),
            other => Err(unexpected(&other)),
        }
    }

    pub fn add(&self) -> Result<serde_json::Value, CniError> {
        let netns = self.env.need(&self.env.netns, "CNI_NETNS")?.to_owned();
        let ifname = self.env.need(&self.env.ifname, "CNI_IFNAME")?.to_owned();
        let owner = self.env.owner()?;
        let ipam = self.ipam()?;
        let ip = ipam.as_ref().map(Ipam::add).transpose()?;
        let spec = EndpointSpec {
            publish: Vec::new(),
            network: self.conf.network().to_owned(),
            netns: netns.clone(),
            ip,
            mac: None,
            ifname: Some(ifname.clone()),
            handoff: false,
            owner: Some(owner),
        };
        let added = match self.agent(&Request::EndpointAdd(spec)) {
            Ok(Response::Endpoint(info)) => info,
            Ok(other) => Err(unexpected(&other))?,
            Err(e) => {
                // Give the delegated address back; the agent changed nothing.
                if let Some(ipam) = &ipam
                    && let Err(undo) = ipam.del()
                {
                    return Err(e.with_details(format!("and releasing the IPAM address failed: {}", undo.msg)));
                }
                return Err(e);
            }
        };
        let net = self.agent.network(self.conf.network()).expect("checked in Call::new");
        let result = AddResult {
            ifname,
            mac: added.mac.to_string(),
            sandbox: netns,
            ip: added.ip,
            prefix_len: net.subnet.prefix_len(),
            gateway: None,
        };
        Ok(result.to_json(&self.conf.cni_version))
    }

    /// Idempotent: an attachment the agent does not have is already deleted.
    pub fn del(&self) -> Result<(), CniError> {
        if let Some(ep) = self.find()? {
            match self.agent(&Request::EndpointDel { network: ep.network.clone(), ip: ep.ip }) {
                Ok(_) => {}
                // Gone meanwhile: deleted all the same.
                Err(e) if e.code == code::UNKNOWN_CONTAINER => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(ipam) = self.ipam()? {
            ipam.del()?;
        }
        Ok(())
    }

    /// The container's interface has the endpoint's MAC and address and is up, and the
    /// datapath holds the endpoint.
    pub fn check(&self) -> Result<(), CniError> {
        let netns = self.env.need(&self.env.netns, "CNI_NETNS")?.to_owned();
        let ifname = self.env.need(&self.env.ifname, "CNI_IFNAME")?.to_owned();
        let ep = self.find()?.ok_or_else(|| {
            CniError::new(code::UNKNOWN_CONTAINER, format!("the agent has no endpoint for {}", self.env.owner().unwrap_or_default()))
        })?;
        let failed = |what: String| CniError::new(code::CHECK_FAILED, what);
        let (mac, ip) = (ep.mac, ep.ip);
        let name = ifname.clone();
        let seen = netns::block_on_in_netns(&netns::netns_path(&netns), move || async move {
            let nl = Netlink::open().await?;
            let Some(link) = nl.link_by_name(&name).await? else { return Ok(None) };
            let addrs = nl.addresses(link.index).await?;
            Ok::<_, overlay_agent::netlink::NetlinkError>(Some((link.mac, link.up, addrs)))
        })
        .map_err(|e| failed(format!("entering {netns}: {e}")))?
        .map_err(|e| failed(format!("reading {ifname} in {netns}: {e}")))?;
        let Some((link_mac, up, addrs)) = seen else {
            return Err(failed(format!("{ifname} is missing in {netns}")));
        };
        if link_mac != Some(mac.0) {
            return Err(failed(format!("{ifname} has MAC {:?}, the endpoint {mac}", link_mac.map(overlay_agent::mac::MacAddr))));
        }
        if !up {
            return Err(failed(format!("{ifname} is down")));
        }
        if !addrs.iter().any(|(a, _)| *a == ip) {
            return Err(failed(format!("{ifname} lacks the endpoint's address {ip} (has {addrs:?})")));
        }
        self.check_datapath(ep.vni, ip, mac)?;
        if let Some(ipam) = self.ipam()? {
            ipam.check()?;
        }
        Ok(())
    }

    fn check_datapath(&self, vni: u32, ip: Ipv4Addr, mac: overlay_agent::mac::MacAddr) -> Result<(), CniError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CniError::new(code::IO, format!("starting a runtime: {e}")))?;
        let dump = rt
            .block_on(overlay_agent::datapath::inspect::dump(&self.agent))
            .map_err(|e| CniError::new(code::CHECK_FAILED, format!("reading the datapath: {e}")))?;
        let delivered = dump.fdb.iter().any(|f| f.vni == vni && f.mac == mac && f.kind == "local");
        let known = dump.datapath == "kernel" || dump.endpoints.iter().any(|e| e.vni == vni && e.ip == ip && e.mac == mac);
        if !(delivered && known) {
            return Err(CniError::new(
                code::CHECK_FAILED,
                format!("the {} datapath does not deliver {ip} ({mac}) in VNI {vni} to its container", dump.datapath),
            ));
        }
        Ok(())
    }

    /// Ready for ADD: the agent answers, is registered with the store and synced.
    pub fn status(&self) -> Result<(), CniError> {
        let s = match self.agent(&Request::Status) {
            Ok(Response::Status(s)) => s,
            Ok(other) => return Err(unexpected(&other)),
            Err(e) => return Err(CniError::new(code::NOT_AVAILABLE, e.msg)),
        };
        if !(s.store.registered && s.store.synced) {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                format!("the agent is not in sync with its store ({}: {})", s.store.backend, s.store.state),
            ));
        }
        Ok(())
    }

    /// Deletes this network's CNI attachments that the runtime no longer lists.
    pub fn gc(&self) -> Result<Vec<String>, CniError> {
        let valid = self.conf.valid_attachments.as_ref().ok_or_else(|| {
            CniError::new(code::INVALID_CONFIG, "GC needs cni.dev/valid-attachments in the network config")
        })?;
        let keep: Vec<String> = valid.iter().map(|a| format!("cni:{}/{}", a.container_id, a.ifname)).collect();
        let endpoints = match self.agent(&Request::EndpointList)? {
            Response::Endpoints { endpoints } => endpoints,
            other => return Err(unexpected(&other)),
        };
        let mut removed = Vec::new();
        for ep in endpoints {
            let Some(owner) = ep.owner.as_deref() else { continue };
            if ep.kind != EndpointKind::Local || ep.network != self.conf.network() || !owner.starts_with("cni:") || keep.iter().any(|k| k == owner) {
                continue;
            }
            match self.agent(&Request::EndpointDel { network: ep.network.clone(), ip: ep.ip }) {
                Ok(_) => removed.push(owner.to_owned()),
                Err(e) if e.code == code::UNKNOWN_CONTAINER => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }
}

fn unexpected(r: &Response) -> CniError {
    CniError::new(code::IO, format!("unexpected answer from the agent: {r:?}"))
}
