//! Parsing what `etcdctl -w json` prints.

use base64::Engine as _;

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
