//! etcdctl against the cluster (API v3, with the client certificate on a TLS
//! cluster), and parsing what `etcdctl -w json` prints.

use base64::Engine as _;

use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use super::{CLIENT_PORT, COMMAND_TIMEOUT, ETCDCTL_BIN, EtcdCluster};
use crate::{
    agent::{CliOutput, run_cli_with_env},
    ns::NetNs,
};

impl EtcdCluster {
    /// Runs `etcdctl <args>` (API v3) against every running member, from
    /// inside a running member's namespace, with the client certificate on a
    /// TLS cluster. Does not check the exit status.
    pub fn etcdctl(&self, args: &[&str]) -> CliOutput {
        self.etcdctl_with(self.any_running_ns(), &self.running(), args)
    }

    /// [`EtcdCluster::etcdctl`] from inside `ns` (a host of the underlay:
    /// the request crosses the underlay).
    pub fn etcdctl_in(&self, ns: &NetNs, args: &[&str]) -> CliOutput {
        self.etcdctl_with(ns, &self.running(), args)
    }

    /// [`EtcdCluster::etcdctl`] against member `i` alone, from its own
    /// namespace (with `get --consistency=s`, it answers from its own data).
    pub fn etcdctl_member(&self, i: usize, args: &[&str]) -> CliOutput {
        self.etcdctl_with(&self.member(i).ns, &[i], args)
    }

    /// The global etcdctl flags for this cluster: `--endpoints` (the running
    /// members), timeouts and, with TLS, `--cacert --cert --key`. For
    /// callers that run etcdctl themselves.
    pub fn etcdctl_flags(&self) -> Vec<String> {
        self.flags_for(&self.running())
    }

    /// `etcdctl endpoint status` of every running member (leader, database size).
    /// Panics unless every running member answers.
    pub fn endpoint_status(&self) -> Vec<EndpointStatus> {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        out.assert_success();
        parse_status(&out.stdout).unwrap_or_else(|e| panic!("{e}; etcdctl said:\n{}", out.stdout))
    }

    /// Hands leadership to member `to` (`etcdctl move-leader`) and waits until every
    /// running member agrees; panics if it does not happen.
    pub fn move_leader(&self, to: usize) {
        let target = self
            .endpoint_status()
            .into_iter()
            .find(|s| s.endpoint == self.endpoint(to))
            .unwrap_or_else(|| panic!("etcd member {to} is not running"));
        self.etcdctl(&["move-leader", &format!("{:x}", target.member_id)]).assert_success();
        let leader = self.wait_healthy();
        assert_eq!(leader, to, "leadership did not move to member {to}");
    }

    /// Puts `key` = `value`; panics if etcdctl fails.
    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl(&["put", "--", key, value]).assert_success();
    }

    /// Every key under `prefix` with its value, sorted by key (values are
    /// read as UTF-8, lossily). Panics if etcdctl fails.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.etcdctl(&["get", "--prefix", "-w", "json", "--", prefix]);
        out.assert_success();
        parse_get(&out.stdout).unwrap_or_else(|e| panic!("{e}; etcdctl said:\n{}", out.stdout))
    }

    /// Deletes every key under `prefix`; returns how many there were.
    /// Panics if etcdctl fails.
    pub fn del_prefix(&self, prefix: &str) -> u64 {
        let out = self.etcdctl(&["del", "--prefix", "--", prefix]);
        out.assert_success();
        out.stdout
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("etcdctl del printed {:?}: {e}", out.stdout))
    }

    pub(super) fn flags_for(&self, members: &[usize]) -> Vec<String> {
        let endpoints: Vec<String> = members.iter().map(|&i| self.endpoint(i)).collect();
        let timeout = crate::hang_guard(COMMAND_TIMEOUT);
        let mut flags = vec![
            format!("--endpoints={}", endpoints.join(",")),
            format!("--dial-timeout={}ms", (timeout / 2).as_millis()),
            format!("--command-timeout={}ms", timeout.as_millis()),
        ];
        if let Some(tls) = &self.tls {
            flags.push(format!("--cacert={}", tls.ca_file.display()));
            flags.push(format!("--cert={}", tls.cert_file.display()));
            flags.push(format!("--key={}", tls.key_file.display()));
        }
        flags
    }

    pub(super) fn etcdctl_with(&self, ns: &NetNs, members: &[usize], args: &[&str]) -> CliOutput {
        let mut all = self.flags_for(members);
        all.extend(args.iter().map(|a| (*a).to_owned()));
        run_cli_with_env(
            Some(ns),
            Path::new(ETCDCTL_BIN),
            &all,
            &[("ETCDCTL_API", "3")],
        )
    }

    /// One look at the running members' status: the leader's index, or why
    /// there is none they all agree on.
    pub(super) fn try_leader(&self) -> Result<usize, String> {
        let running = self.running();
        if running.is_empty() {
            return Err("no member is running".to_owned());
        }
        // Cheap check first: etcdctl waits its whole timeout for a closed port.
        for &i in &running {
            let m = &self.members[i];
            let addr = SocketAddr::from((m.ip, CLIENT_PORT));
            let listening = m
                .ns
                .run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok());
            if !listening {
                return Err(format!("{} does not listen on {addr} yet", m.name));
            }
        }
        let out = self.etcdctl_with(
            self.any_running_ns(),
            &running,
            &["endpoint", "status", "-w", "json"],
        );
        let statuses =
            parse_status(&out.stdout).map_err(|e| format!("{e}: {}{}", out.stdout, out.stderr))?;
        if statuses.len() != running.len() {
            return Err(format!(
                "only {} of {} members answered: {}",
                statuses.len(),
                running.len(),
                out.stderr
            ));
        }
        let leader = statuses[0].leader;
        if leader == 0 || statuses.iter().any(|s| s.leader != leader) {
            return Err(format!("no agreed leader: {statuses:?}"));
        }
        let leading = statuses
            .iter()
            .find(|s| s.member_id == leader)
            .ok_or_else(|| format!("leader {leader:x} is not a running member: {statuses:?}"))?;
        self.endpoints()
            .iter()
            .position(|e| *e == leading.endpoint)
            .ok_or_else(|| format!("unknown endpoint {}", leading.endpoint))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStatus {
    /// The URL etcdctl asked.
    pub endpoint: String,
    /// The answering member's id (`Status.header.member_id`).
    pub member_id: u64,
    /// The id of the member it follows (`Status.leader`; 0 for none).
    pub leader: u64,
    /// The size of its backend database file, bytes (`Status.dbSize`; 0 if absent).
    pub db_size: u64,
    /// The part of it holding live data, bytes (`Status.dbSizeInUse`; 0 if absent).
    pub db_size_in_use: u64,
}

/// Parses `etcdctl endpoint status -w json` (etcd 3.4: `[{"Endpoint": ...,
/// "Status": {"header": {"member_id": ...}, "leader": ...}}]`). Unreachable
/// endpoints are simply missing.
pub fn parse_status(json: &str) -> Result<Vec<EndpointStatus>, String> {
    let value: serde_json::Value = serde_json::from_str(json.trim())
        .map_err(|e| format!("endpoint status is not JSON: {e}"))?;
    let entries = value
        .as_array()
        .ok_or("endpoint status is not a JSON array")?;
    entries
        .iter()
        .map(|entry| {
            let endpoint = entry["Endpoint"].as_str().ok_or("no Endpoint")?.to_owned();
            let status = &entry["Status"];
            let member_id = status["header"]["member_id"]
                .as_u64()
                .ok_or("no Status.header.member_id")?;
            let leader = status["leader"].as_u64().unwrap_or(0);
            Ok(EndpointStatus {
                endpoint,
                member_id,
                leader,
                db_size: status["dbSize"].as_u64().unwrap_or(0),
                db_size_in_use: status["dbSizeInUse"].as_u64().unwrap_or(0),
            })
        })
        .collect()
}

/// Parses `etcdctl get -w json` into (key, value) pairs, in etcd's (key)
/// order. Keys and values are base64 there; an empty value is omitted.
pub fn parse_get(json: &str) -> Result<Vec<(String, String)>, String> {
    let value: serde_json::Value =
        serde_json::from_str(json.trim()).map_err(|e| format!("get output is not JSON: {e}"))?;
    let Some(kvs) = value.get("kvs") else {
        return Ok(Vec::new());
    };
    let decode = |field: &serde_json::Value| -> Result<String, String> {
        let text = field.as_str().unwrap_or("");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("bad base64 {text:?}: {e}"))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    kvs.as_array()
        .ok_or("kvs is not an array")?
        .iter()
        .map(|kv| Ok((decode(&kv["key"])?, decode(&kv["value"])?)))
        .collect()
}
