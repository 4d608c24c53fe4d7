//! Accepts CLI connections and hands each request to the agent's main loop, which
//! is the only writer of kernel state; replies go back on the same connection.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader},
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

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another agent is already serving {path}; stop it first (or give this one another state_dir, or another [docker] plugin_name)")]
    AlreadyRunning { path: PathBuf },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the control socket, replacing a stale one left by a crashed agent but
/// refusing to steal a live agent's socket.
pub async fn bind(path: &Path) -> Result<UnixListener, ServerError> {
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
    UnixListener::bind(path).map_err(io)
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

async fn handle(stream: UnixStream, calls: mpsc::Sender<Call>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_LINE as u64)).lines();
    while let Some(line) = lines.next_line().await? {
        let response = match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::error(format!("malformed request: {e}")),
            Ok(request) => {
                let (reply, rx) = oneshot::channel();
                if calls.send(Call { request, reply }).await.is_err() {
                    Response::error("the agent is shutting down")
                } else {
                    rx.await.unwrap_or_else(|_| Response::error("the agent is shutting down"))
                }
            }
        };
        let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
        write.flush().await?;
    }
    Ok(())
}


