//! Accepts CLI connections and hands each request to the agent's main loop, which
//! is the only writer of kernel state; replies go back on the same connection.

use std::path::{Path, PathBuf};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

use super::{Request, Response};

/// A request, where its answer goes, and word that the answer has been written back to
/// the client (so that an agent about to exit can wait for it).
pub struct Call {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
    pub written: oneshot::Receiver<()>,
}

/// Largest request line accepted (a request is a few hundred bytes).
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another agent is already serving {path}; stop it first (or use a different state_dir)")]
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

/// Serves connections until the main loop goes away.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "accepting a control connection");
                continue;
            }
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, calls).await {
                debug!(error = %e, "control connection ended with an error");
            }
        });
    }
}

async fn handle(stream: UnixStream, calls: mpsc::Sender<Call>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_LINE as u64)).lines();
    while let Some(line) = lines.next_line().await? {
        let mut done = None;
        let response = match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Error { message: format!("malformed request: {e}") },
            Ok(request) => {
                let (reply, rx) = oneshot::channel();
                let (tx, written) = oneshot::channel();
                done = Some(tx);
                if calls.send(Call { request, reply, written }).await.is_err() {
                    Response::Error { message: "the agent is shutting down".into() }
                } else {
                    rx.await.unwrap_or(Response::Error { message: "the agent is shutting down".into() })
                }
            }
        };
        let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
        write.flush().await?;
        if let Some(done) = done.take() {
            // Nobody may be waiting; that is fine.
            let _nobody_waits = done.send(());
        }
    }
    Ok(())
}


