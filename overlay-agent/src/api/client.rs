//! The CLI side of the control API (blocking: the CLI needs no async runtime).

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{Request, Response};

/// Endpoint operations create namespaces' links through netlink: allow them time.
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the agent at {path}: {source}; is `overlay-agent run --config FILE` running with this config?"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "permission denied on the agent's control socket {path}: it is root's (or the config's socket_group's); \
         run this as root or as a member of that group"
    )]
    Denied { path: PathBuf },
    #[error("talking to the agent at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent at {path} sent a malformed reply: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the agent at {path} closed the connection without replying")]
    NoReply { path: PathBuf },
}

pub fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    session(socket, request).map(|(_, response)| response)
}

/// [`call`], keeping the connection: a trace session lasts as long as it stays open.
pub fn session(socket: &Path, request: &Request) -> Result<(UnixStream, Response), ClientError> {
    let io = |source| ClientError::Io { path: socket.to_owned(), source };
    let mut stream = UnixStream::connect(socket).map_err(|source| match source.kind() {
        std::io::ErrorKind::PermissionDenied => ClientError::Denied { path: socket.to_owned() },
        _ => ClientError::Connect { path: socket.to_owned(), source },
    })?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_vec(request).map_err(|source| ClientError::Decode { path: socket.to_owned(), source })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).map_err(io)?;
    if reply.is_empty() {
        return Err(ClientError::NoReply { path: socket.to_owned() });
    }
    let response = serde_json::from_str(&reply).map_err(|source| ClientError::Decode { path: socket.to_owned(), source })?;
    Ok((stream, response))
}
