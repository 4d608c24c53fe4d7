//! The messages of Docker's legacy plugin protocol for network (`NetworkDriver.*`) and
//! IPAM (`IpamDriver.*`) drivers: JSON bodies with PascalCase fields, POSTed by dockerd
//! to `/<Interface>.<Method>` on the plugin's unix socket. Only the fields this driver
//! uses are spelled out; dockerd sends more, which are ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The content type dockerd sends and expects.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// What `Options` carries for the `-o key=value` of `docker network create`.
pub const GENERIC_OPTIONS: &str = "com.docker.network.generic";
/// An IPAM address request for a network's gateway (its `Options`' `RequestAddressType`).
pub const GATEWAY_REQUEST: &str = "com.docker.network.gateway";
/// The key of a pool's `Data` that gives the network's gateway.
pub const GATEWAY_DATA: &str = "com.docker.network.gateway";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamData {
    pub pool: String,
    pub gateway: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(deserialize_with = "nullable")]
    pub options: BTreeMap<String, serde_json::Value>,
    #[serde(rename = "IPv4Data", deserialize_with = "nullable")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", deserialize_with = "nullable")]
    pub ipv6_data: Vec<IpamData>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkRef {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointInterface {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(rename = "AddressIPv6", skip_serializing_if = "String::is_empty")]
    pub address_ipv6: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mac_address: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateEndpoint {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub interface: Option<EndpointInterface>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateEndpointResponse {
    /// Only what the driver adds (a MAC when dockerd gave none); dockerd refuses a
    /// response that repeats what it set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterface>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointRef {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Join {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub sandbox_key: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InterfaceName {
    /// The container end of the veth, in the host namespace: dockerd moves it.
    pub src_name: String,
    /// dockerd names it this prefix plus the next free number (`eth0`, `eth1`, ...).
    pub dst_prefix: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinResponse {
    pub interface_name: InterfaceName,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    /// No gateway here: dockerd must not attach the container to a gateway bridge of
    /// its own.
    pub disable_gateway_service: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestPool {
    pub pool: String,
    pub sub_pool: String,
    #[serde(deserialize_with = "nullable")]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "V6")]
    pub v6: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestPoolResponse {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub pool: String,
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PoolRef {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestAddress {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub address: String,
    #[serde(deserialize_with = "nullable")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestAddressResponse {
    /// CIDR notation: the address and the pool's prefix length.
    pub address: String,
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ReleaseAddress {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub address: String,
}

/// dockerd sends `null` for an empty map or list (Go's nil): the default.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An error, as dockerd shows it to the user.
#[derive(Debug, Serialize)]
pub struct ErrorResponse {
    #[serde(rename = "Err")]
    pub err: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_and_missing_fields_are_defaults() {
        let r: RequestAddress = serde_json::from_str(r#"{"PoolID":"blue","Address":"","Options":null}"#).unwrap();
        assert!(r.options.is_empty() && r.address.is_empty() && r.pool_id == "blue");
        let n: CreateNetwork = serde_json::from_str(r#"{"NetworkID":"n","IPv4Data":null}"#).unwrap();
        assert!(n.ipv4_data.is_empty() && n.options.is_empty());
    }
}
