//! Accepts CLI connections and hands each request to the agent's main loop, which
//! is the only writer of kernel state; replies go back on the same connection.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
    task::JoinSet,
};
use tracing::{debug, warn};

use super::{Request, Response};

/// A request and where its answer goes.
pub struct Call {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// Largest request line accepted (a request is a few hundred bytes).
const MAX_LINE: usize = 64 * 1024;
/// How long a connection may take to send a whole request line (or stay idle between
/// requests) before it is closed: a client that stalls must not hold a task and a
/// descriptor forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another agent is already serving {path}; stop it first (or give this one another state_dir, or another [docker] plugin_name)")]
    AlreadyRunning { path: PathBuf },
    #[error("control socket {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("socket_group {group:?} does not exist on this host: create it (groupadd) or remove the setting")]
    NoGroup { group: String },
    #[error("looking up socket_group {group:?}")]
    Group {
        group: String,
        #[source]
        source: nix::Error,
    },
}

/// Binds the control socket, replacing a stale one left by a crashed agent but
/// refusing to steal a live agent's socket. The socket is root's only (0600), or root's
/// and `group`'s (0660): whoever can connect can plug containers in and tear the node
/// down.
pub async fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, ServerError> {
    let gid = match group {
        Some(name) => match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Some(g.gid),
            Ok(None) => return Err(ServerError::NoGroup { group: name.to_owned() }),
            Err(source) => return Err(ServerError::Group { group: name.to_owned(), source }),
        },
        None => None,
    };
    let io = |source| ServerError::Io { path: path.to_owned(), source };
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ServerError::AlreadyRunning { path: path.to_owned() });
        }
        warn!(path = %path.display(), "removing a stale control socket");
        std::fs::remove_file(path).map_err(io)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    // Connecting needs write permission on the socket file; until this chmod the umask
    // (022 for a daemon) already keeps others out.
    if let Some(gid) = gid {
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| io(e.into()))?;
    }
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(io)?;
    Ok(listener)
}

/// How long [`serve`] lets open connections finish once told to stop.
const DRAIN: Duration = Duration::from_secs(2);

/// Serves connections until `stop` fires, then stops accepting and gives the open
/// connections up to [`DRAIN`] to write the replies they wait for: the last one may be
/// `down`'s, answered just before the agent exits (its runtime then ends, and with it
/// any connection still unwritten). The caller drops the receiving end of `calls`
/// first, so that requests the main loop will never take get an error at once.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>, mut stop: oneshot::Receiver<()>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(handle(stream, calls.clone()));
                }
                Err(e) => warn!(error = %e, "accepting a control connection"),
            },
            Some(done) = conns.join_next(), if !conns.is_empty() => log_end(done),
            _ = &mut stop => break,
        }
    }
    drop(listener);
    drop(calls);
    let drained = tokio::time::timeout(DRAIN, async {
        while let Some(done) = conns.join_next().await {
            log_end(done);
        }
    })
    .await;
    if drained.is_err() {
        debug!(open = conns.len(), "control connections still open at exit");
    }
}

fn log_end(done: Result<std::io::Result<()>, tokio::task::JoinError>) {
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "control connection ended with an error"),
        Err(e) => debug!(error = %e, "control connection task failed"),
    }
}

/// What reading one request line gave.
enum Line {
    Request(Vec<u8>),
    /// The peer closed the connection between requests.
    End,
    /// Longer than [`MAX_LINE`]: answered with an error, then the connection closes
    /// (the rest of the line cannot be told apart from a next request).
    TooLong,
    /// Nothing complete within [`REQUEST_TIMEOUT`].
    Stalled { partial: bool },
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, (&mut *reader).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)).await;
    match read {
        Err(_) => Ok(Line::Stalled { partial: !buf.is_empty() }),
        Ok(Err(e)) => Err(e),
        Ok(Ok(0)) => Ok(Line::End),
        Ok(Ok(_)) if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE => Ok(Line::TooLong),
        Ok(Ok(_)) => Ok(Line::Request(buf)),
    }
}

async fn handle(stream: UnixStream, calls: mpsc::Sender<Call>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let line = match read_line(&mut reader).await? {
            Line::Request(line) => line,
            Line::End => return Ok(()),
            Line::TooLong => {
                let e = Response::error(format!("request larger than {} KiB; closing the connection", MAX_LINE / 1024));
                return reply(&mut write, &e).await;
            }
            Line::Stalled { partial } => {
                debug!(partial, "closing a control connection that sent no complete request in time");
                if partial {
                    let e = Response::error(format!("request incomplete after {} s; closing the connection", REQUEST_TIMEOUT.as_secs()));
                    return reply(&mut write, &e).await;
                }
                return Ok(());
            }
        };
        let response = match serde_json::from_slice::<Request>(&line) {
            Err(e) => Response::error(format!("malformed request: {e}")),
            // Only the server itself ends sessions.
            Ok(Request::TraceStop) => Response::error("malformed request: TraceStop is not a client request"),
            Ok(request) => call(&calls, request).await,
        };
        let written = reply(&mut write, &response).await;
        if matches!(response, Response::Trace(_)) {
            // A trace session lasts as long as this connection: wait for the client to
            // close it (or die), however long that takes, then switch tracing off; at
            // once if the client was gone before the reply could be written.
            if written.is_ok() {
                let mut rest = [0u8; 256];
                while matches!(reader.read(&mut rest).await, Ok(n) if n > 0) {}
            }
            let _ended = call(&calls, Request::TraceStop).await;
            return written;
        }
        written?;
    }
}

/// Hands `request` to the main loop and waits for its answer.
async fn call(calls: &mpsc::Sender<Call>, request: Request) -> Response {
    let (reply, rx) = oneshot::channel();
    if calls.send(Call { request, reply }).await.is_err() {
        return Response::error("the agent is shutting down");
    }
    rx.await.unwrap_or_else(|_| Response::error("the agent is shutting down"))
}

async fn reply<W: tokio::io::AsyncWrite + Unpin>(write: &mut W, response: &Response) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.flush().await
}



#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::*;

    #[tokio::test]
    async fn the_socket_is_roots_or_its_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = bind(&path, None).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        // `daemon` exists on every Debian system (base-passwd).
        let listener = bind(&path, Some("daemon")).await.unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        let daemon = nix::unistd::Group::from_name("daemon").unwrap().unwrap();
        assert_eq!(meta.gid(), daemon.gid.as_raw());
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        let e = bind(&path, Some("no-such-group-here")).await.unwrap_err();
        assert!(e.to_string().contains("socket_group \"no-such-group-here\" does not exist"), "{e}");
        assert!(!path.exists(), "nothing bound for a group that does not exist");
    }
}
