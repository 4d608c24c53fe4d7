//! Validation of a parsed configuration: every field checked, defaults filled in, one
//! error naming the offending field.

use super::*;

/// Smallest MTU IPv4 requires of a link (RFC 791).
const MIN_MTU: u32 = 576;
const MAX_MTU: u32 = 65_535 - vxlan::OVERHEAD;

/// Names become parts of paths and of the store's keys: keep them boring.
fn check_name(field: &str, name: &str, max: usize) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > max {
        return Err(invalid(field, format!("must be 1 to {max} characters long")));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        || name.starts_with('.')
    {
        return Err(invalid(
            field,
            format!("{name:?} may contain only letters, digits, '-', '_' and '.' (not leading)"),
        ));
    }
    Ok(())
}

fn validate_store(raw: StoreConfig) -> Result<StoreSettings, ConfigError> {
    let (backend, prefix, ttl) = match raw {
        StoreConfig::Dir { path, prefix, lease_ttl_s } => {
            if path.as_os_str().is_empty() || path.is_relative() {
                return Err(invalid("store.path", "must be an absolute directory path"));
            }
            (Backend::Dir { path }, prefix, lease_ttl_s)
        }
        StoreConfig::Etcd { endpoints, prefix, lease_ttl_s, ca_file, cert_file, key_file } => {
            if endpoints.is_empty() {
                return Err(invalid("store.endpoints", "is empty: list the etcd client URLs, e.g. [\"http://198.51.100.250:2379\"]"));
            }
            let mut schemes = BTreeSet::new();
            for (i, e) in endpoints.iter().enumerate() {
                let scheme = e.split_once("://").map(|(s, _)| s);
                let host = e.split_once("://").map_or("", |(_, h)| h);
                match scheme {
                    Some(s @ ("http" | "https")) if !host.is_empty() && !host.contains(char::is_whitespace) => {
                        schemes.insert(s);
                    }
                    _ => {
                        return Err(invalid(
                            format!("store.endpoints[{i}]"),
                            format!("{e:?} is not an etcd client URL like http://198.51.100.250:2379 or https://..."),
                        ));
                    }
                }
            }
            if schemes.len() > 1 {
                return Err(invalid("store.endpoints", "mixes http:// and https:// URLs"));
            }
            let tls = match (ca_file, cert_file, key_file) {
                (None, None, None) => None,
                (Some(ca_file), Some(cert_file), Some(key_file)) => Some(EtcdTls { ca_file, cert_file, key_file }),
                (ca, cert, key) => {
                    let missing = [("store.ca_file", ca.is_none()), ("store.cert_file", cert.is_none()), ("store.key_file", key.is_none())]
                        .into_iter()
                        .find(|(_, m)| *m)
                        .map_or("store.ca_file", |(f, _)| f);
                    return Err(invalid(missing, "is missing: TLS needs ca_file, cert_file and key_file together"));
                }
            };
            if let Some(t) = &tls {
                for (field, path) in [("store.ca_file", &t.ca_file), ("store.cert_file", &t.cert_file), ("store.key_file", &t.key_file)] {
                    if path.is_relative() {
                        return Err(invalid(field, "must be an absolute path"));
                    }
                }
            }
            match (schemes.contains("https"), tls.is_some()) {
                (true, false) => return Err(invalid("store.ca_file", "is missing: https:// endpoints need ca_file, cert_file and key_file")),
                (false, true) => return Err(invalid("store.endpoints", "use https:// URLs with TLS files")),
                _ => {}
            }
            (Backend::Etcd(EtcdSettings { endpoints, tls }), prefix, lease_ttl_s)
        }
    };
    let prefix = prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
    if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') || prefix.contains(char::is_whitespace) || prefix.contains("//") {
        return Err(invalid("store.prefix", format!("{prefix:?} must look like /overlay/v1 (a leading '/', no trailing '/', no spaces)")));
    }
    let ttl = ttl.unwrap_or(DEFAULT_LEASE_TTL_S);
    if !(MIN_LEASE_TTL_S..=MAX_LEASE_TTL_S).contains(&ttl) {
        return Err(invalid("store.lease_ttl_s", format!("{ttl} is outside {MIN_LEASE_TTL_S}..={MAX_LEASE_TTL_S}")));
    }
    Ok(StoreSettings { backend, prefix, lease_ttl: std::time::Duration::from_secs(ttl) })
}

fn validate_datapath(d: &DatapathConfig) -> Result<(), ConfigError> {
    for (field, value, min, max) in [
        ("datapath.neigh_capacity", d.neigh_capacity, 16, limits::MAX_MAP_CAPACITY),
        ("datapath.fdb_capacity", d.fdb_capacity, 16, limits::MAX_MAP_CAPACITY),
        ("datapath.endpoint_capacity", d.endpoint_capacity, 16, limits::MAX_MAP_CAPACITY),
    ] {
        if !(min..=max).contains(&value) {
            return Err(invalid(field, format!("{value} is outside {min}..={max}")));
        }
    }
    if !(1..=3600).contains(&d.kernel_resync_s) {
        return Err(invalid("datapath.kernel_resync_s", format!("{} is outside 1..=3600", d.kernel_resync_s)));
    }
    Ok(())
}

impl RawConfig {
    pub fn validate(self) -> Result<Config, ConfigError> {
        check_name("node_name", &self.node_name, 63)?;
        // IFNAMSIZ is 16 including the terminating NUL.
        if self.underlay_interface.is_empty() || self.underlay_interface.len() > 15 {
            return Err(invalid("underlay_interface", "must be an interface name of 1 to 15 characters"));
        }
        if let Some(ip) = self.vtep_ip
            && (ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback())
        {
            return Err(invalid("vtep_ip", format!("{ip} is not a unicast address")));
        }
        if self.networks.is_empty() {
            return Err(invalid("network", "no [[network]] defined: the agent has nothing to serve"));
        }
        let mut names = BTreeSet::new();
        let mut vnis = BTreeSet::new();
        let mut ports = BTreeSet::new();
        let mut networks = Vec::with_capacity(self.networks.len());
        for (i, n) in self.networks.into_iter().enumerate() {
            let field = |f: &str| format!("network[{i}].{f}");
            check_name(&field("name"), &n.name, 32)?;
            if !names.insert(n.name.clone()) {
                return Err(invalid(field("name"), format!("{:?} is defined twice", n.name)));
            }
            if n.vni == 0 || n.vni > vxlan::MAX_VNI {
                return Err(invalid(field("vni"), format!("{} is outside 1..={}", n.vni, vxlan::MAX_VNI)));
            }
            if !vnis.insert(n.vni) {
                return Err(invalid(field("vni"), format!("{} is used by another network", n.vni)));
            }
            if n.subnet.prefix_len() > 30 {
                return Err(invalid(field("subnet"), format!("{} leaves no room for endpoints (use /30 or larger)", n.subnet)));
            }
            if n.subnet.network() != n.subnet.addr() {
                return Err(invalid(
                    field("subnet"),
                    format!("{} has host bits set; did you mean {}?", n.subnet, n.subnet.trunc()),
                ));
            }
            let udp_port = n.udp_port.unwrap_or(vxlan::DEFAULT_UDP_PORT);
            if udp_port == 0 {
                return Err(invalid(field("udp_port"), "must not be 0"));
            }
            ports.insert(udp_port);
            if let Some(mtu) = n.mtu
                && !(MIN_MTU..=MAX_MTU).contains(&mtu)
            {
                return Err(invalid(field("mtu"), format!("{mtu} is outside {MIN_MTU}..={MAX_MTU}")));
            }
            let node_prefix_len = n.node_prefix_len.unwrap_or(DEFAULT_NODE_PREFIX_LEN);
            if n.mode == NetworkMode::L2 && (n.node_prefix_len.is_some() || n.node_subnet.is_some()) {
                return Err(invalid(field("mode"), "node_prefix_len and node_subnet apply to mode = \"l3\" networks only"));
            }
            if n.mode == NetworkMode::L3 {
                if node_prefix_len <= n.subnet.prefix_len() || node_prefix_len > 30 {
                    return Err(invalid(
                        field("node_prefix_len"),
                        format!("{node_prefix_len} must be longer than the subnet's /{} and at most 30", n.subnet.prefix_len()),
                    ));
                }
                if let Some(ns) = n.node_subnet
                    && (ns.prefix_len() != node_prefix_len || !n.subnet.contains(&ns) || ns.network() != ns.addr())
                {
                    return Err(invalid(
                        field("node_subnet"),
                        format!("{ns} must be a /{node_prefix_len} inside {} without host bits", n.subnet),
                    ));
                }
            }
            let gateway = n.gateway.unwrap_or(true);
            if n.mode == NetworkMode::L3 && !gateway {
                return Err(invalid(field("gateway"), "an L3 network routes through its gateway; gateway = false applies to L2 networks"));
            }
            let masquerade = n.masquerade.unwrap_or(gateway);
            if masquerade && !gateway {
                return Err(invalid(field("masquerade"), "needs the gateway (gateway = true): the way out is through the host"));
            }
            networks.push(Network {
                name: n.name,
                vni: n.vni,
                subnet: n.subnet,
                udp_port,
                mtu: n.mtu,
                mode: n.mode,
                node_prefix_len,
                node_subnet: n.node_subnet,
                gateway,
                masquerade,
                known_vteps_only: n.known_vteps_only.unwrap_or(true),
            });
        }
        if ports.len() > limits::MAX_UDP_PORTS {
            return Err(invalid(
                "network[].udp_port",
                format!("{} distinct ports; at most {} are supported", ports.len(), limits::MAX_UDP_PORTS),
            ));
        }
        let store = validate_store(self.store.clone())?;
        validate_datapath(&self.datapath)?;
        self.docker.check().map_err(|(field, problem)| invalid(field, problem))?;
        let absolute = |field: &str, p: Option<PathBuf>, root: &str| -> Result<PathBuf, ConfigError> {
            match p {
                Some(p) if p.is_relative() => Err(invalid(field, "must be an absolute path")),
                Some(p) => Ok(p),
                None => Ok(Path::new(root).join(&self.node_name)),
            }
        };
        let state_dir = absolute("state_dir", self.state_dir.clone(), paths::DEFAULT_STATE_ROOT)?;
        let bpffs_dir = absolute("bpffs_dir", self.bpffs_dir.clone(), paths::DEFAULT_BPFFS_ROOT)?;
        if !bpffs_dir.starts_with(paths::BPFFS_MOUNT) {
            return Err(invalid(
                "bpffs_dir",
                format!("{} is not under {}, where bpffs is mounted", bpffs_dir.display(), paths::BPFFS_MOUNT),
            ));
        }
        Ok(Config {
            node_name: self.node_name,
            underlay_interface: self.underlay_interface,
            vtep_ip: self.vtep_ip,
            state_dir,
            bpffs_dir,
            networks,
            store,
            datapath: self.datapath,
            docker: self.docker,
            metrics: self.metrics,
            socket_group: self.socket_group,
        })
    }
}
