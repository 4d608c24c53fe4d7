//! Docker's network and IPAM plugin, served by the agent (`[docker] enabled = true`):
//! dockerd finds it through its socket, `<plugin_dir>/<plugin_name>.sock` (default
//! `/run/docker/plugins/overlay-agent.sock`), and `docker network create -d
//! overlay-agent --ipam-driver overlay-agent -o network=blue blue` makes a Docker network
//! of the agent's network `blue`. (Not `overlay`: dockerd's own overlay driver has that
//! name, and a plugin of the same name is never asked.)
//!
//! The socket stays when the agent stops with SIGTERM (dockerd retries a plugin that
//! does not answer for a while, and the next agent start binds it again); `down`
//! removes it with the driver's state.

pub mod driver;
pub mod protocol;
pub mod state;

use std::{path::PathBuf, sync::Arc};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::{net::UnixListener, sync::oneshot};
use tracing::{debug, warn};

use driver::{Driver, DriverError};
use protocol::{CONTENT_TYPE, ErrorResponse};

/// `[docker]` in the agent's config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// Serve the plugin (default off: a host without Docker needs no socket).
    #[serde(default)]
    pub enabled: bool,
    /// The driver's name in `docker network create -d NAME --ipam-driver NAME`; not
    /// `overlay`, which is dockerd's own driver.
    #[serde(default = "default_plugin_name")]
    pub plugin_name: String,
    /// Where dockerd looks for plugin sockets.
    #[serde(default = "default_plugin_dir")]
    pub plugin_dir: PathBuf,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig { enabled: false, plugin_name: default_plugin_name(), plugin_dir: default_plugin_dir() }
    }
}

fn default_plugin_name() -> String {
    "overlay-agent".into()
}

fn default_plugin_dir() -> PathBuf {
    PathBuf::from("/run/docker/plugins")
}

impl DockerConfig {
    /// The plugin's socket.
    pub fn socket_path(&self) -> PathBuf {
        self.plugin_dir.join(format!("{}.sock", self.plugin_name))
    }

    /// `Err((field, problem))` for a value dockerd could not use.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let name_ok = !self.plugin_name.is_empty()
            && self.plugin_name.len() <= 64
            && self.plugin_name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !self.plugin_name.starts_with('.');
        if self.plugin_name == "overlay" {
            return Err(("docker.plugin_name", "\"overlay\" is dockerd's own overlay driver, which shadows a plugin of that name; keep the default \"overlay-agent\"".into()));
        }
        if !name_ok {
            return Err(("docker.plugin_name", format!("{:?} must be 1 to 64 letters, digits, '-', '_' or '.'", self.plugin_name)));
        }
        if self.plugin_dir.is_relative() {
            return Err(("docker.plugin_dir", "must be an absolute path".into()));
        }
        Ok(())
    }
}

/// Serves dockerd's calls on `listener` until `stop` fires.
pub async fn serve(listener: UnixListener, driver: Driver, stop: oneshot::Receiver<()>) {
    let app = Router::new().route("/{call}", post(dispatch)).with_state(Arc::new(driver));
    let served = axum::serve(listener, app).with_graceful_shutdown(async {
        // A dropped sender stops the server too.
        let _stopped = stop.await;
    });
    if let Err(e) = served.await {
        warn!(error = %e, "the Docker plugin server ended");
    }
}

/// One call: `/<Interface>.<Method>` with a JSON body.
async fn dispatch(State(driver): State<Arc<Driver>>, Path(call): Path<String>, body: Bytes) -> Response {
    debug!(call, body = %String::from_utf8_lossy(&body), "Docker plugin call");
    let d = &*driver;
    let result = match call.as_str() {
        "Plugin.Activate" => Ok(serde_json::json!({ "Implements": ["NetworkDriver", "IpamDriver"] })),
        "NetworkDriver.GetCapabilities" => Ok(serde_json::json!({ "Scope": "local", "ConnectivityScope": "global" })),
        "NetworkDriver.CreateNetwork" => run(&body, |r| d.create_network(r)).await,
        "NetworkDriver.DeleteNetwork" => run(&body, |r| d.delete_network(r)).await,
        "NetworkDriver.CreateEndpoint" => run(&body, |r| d.create_endpoint(r)).await,
        "NetworkDriver.DeleteEndpoint" => run(&body, |r| d.delete_endpoint(r)).await,
        "NetworkDriver.EndpointOperInfo" => Ok(serde_json::json!({ "Value": {} })),
        "NetworkDriver.Join" => run(&body, |r| d.join(r)).await,
        "NetworkDriver.Leave" => run(&body, |r| d.leave(r)).await,
        "NetworkDriver.DiscoverNew"
        | "NetworkDriver.DiscoverDelete"
        | "NetworkDriver.ProgramExternalConnectivity"
        | "NetworkDriver.RevokeExternalConnectivity" => Ok(serde_json::json!({})),
        "IpamDriver.GetCapabilities" => Ok(serde_json::json!({ "RequiresMACAddress": false, "RequiresRequestReplay": false })),
        "IpamDriver.GetDefaultAddressSpaces" => {
            Ok(serde_json::json!({ "LocalDefaultAddressSpace": "overlay", "GlobalDefaultAddressSpace": "overlay" }))
        }
        "IpamDriver.RequestPool" => run(&body, |r| async { d.request_pool(r) }).await,
        "IpamDriver.ReleasePool" => Ok(serde_json::json!({})),
        "IpamDriver.RequestAddress" => run(&body, |r| d.request_address(r)).await,
        "IpamDriver.ReleaseAddress" => run(&body, |r| d.release_address(r)).await,
        other => Err(DriverError::Invalid(format!("{other} is not implemented by the overlay plugin"))),
    };
    match result {
        Ok(value) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], value.to_string()).into_response(),
        Err(e) => {
            warn!(call, error = %e, "Docker plugin call refused");
            let body = serde_json::to_string(&ErrorResponse { err: e.to_string() }).expect("always serializes");
            (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
        }
    }
}

/// Parses the body as `Req`, runs `f`, and turns its answer into JSON.
async fn run<Req, Resp, F, Fut>(body: &[u8], f: F) -> Result<serde_json::Value, DriverError>
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: std::future::Future<Output = Result<Resp, DriverError>>,
{
    // dockerd sends an empty body for some calls; `{}` gives every field its default.
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    let req = serde_json::from_slice(body).map_err(|e| DriverError::Invalid(format!("malformed request: {e}")))?;
    let resp = f(req).await?;
    Ok(serde_json::to_value(resp).expect("responses always serialize"))
}
