//! The control socket of a running gateway: `<data_dir>/control.sock`.
//!
//! Mode 0600, and every peer's uid is checked with `SO_PEERCRED`: only the
//! gateway's own user and root may use it. Connections are few and local,
//! yet still bounded: at most [`MAX_CLIENTS`] at once, and a request must
//! arrive within [`REQUEST_DEADLINE`].

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, Semaphore};

use super::protocol::{self, Envelope, FrameKind, Request};
use super::{OpError, Operations};
use crate::supervise::{Supervised, Supervisor};

pub const SOCKET_NAME: &str = "control.sock";
pub const MAX_CLIENTS: usize = 16;
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// A client must take each frame of the answer within this, or the
/// connection (and its slot) is given up.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(30);

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

pub struct ControlServer {
    path: PathBuf,
    task: Supervised,
}

impl ControlServer {
    /// Binds the socket. The caller holds the data directory's lock, so a
    /// socket file already there was left by a gateway that died (`kill
    /// -9`, power cut) and is replaced. The socket is created under a
    /// temporary name, restricted, then renamed into place: no client ever
    /// sees it with looser permissions.
    pub fn start(
        data_dir: &Path,
        ops: Arc<Operations>,
        mut shutdown: watch::Receiver<bool>,
        supervisor: &Supervisor,
    ) -> std::io::Result<Self> {
        let path = socket_path(data_dir);
        let staging = data_dir.join(format!(".{SOCKET_NAME}.{}", std::process::id()));
        let _ = std::fs::remove_file(&staging);
        if path.exists() {
            tracing::info!(socket = %path.display(), "replacing a control socket left by a gateway that did not stop cleanly");
        }
        let listener = UnixListener::bind(&staging)?;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staging, &path)?;
        let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
        let task = supervisor.spawn("control socket", async move {
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => c,
                    _ = shutdown.changed() => return,
                };
                match conn {
                    Ok((stream, _)) => {
                        let ops = Arc::clone(&ops);
                        let slot = Arc::clone(&slots).try_acquire_owned();
                        tokio::spawn(async move {
                            let mut stream = stream;
                            match slot {
                                Ok(_slot) => serve(&mut stream, ops).await,
                                Err(_) => {
                                    let busy = OpError {
                                        class: super::ErrorClass::Busy,
                                        message: "the gateway is busy with other control requests; try again".into(),
                                    };
                                    let _ = send_error(&mut stream, &busy).await;
                                }
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        tracing::info!(socket = %path.display(), "control socket ready");
        Ok(Self { path, task })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a peer with `uid` may control this gateway.
pub fn peer_allowed(uid: u32) -> bool {
    // SAFETY: geteuid has no failure mode and touches no memory.
    let me = unsafe { libc::geteuid() };
    uid == me || uid == 0
}

async fn send(stream: &mut UnixStream, kind: FrameKind, body: &[u8]) -> std::io::Result<()> {
    tokio::time::timeout(WRITE_DEADLINE, protocol::write_frame(stream, kind, body))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading its answer",
            )
        })?
}

async fn send_error(stream: &mut UnixStream, e: &OpError) -> std::io::Result<()> {
    let body = serde_json::to_vec(e).unwrap_or_default();
    send(stream, FrameKind::Error, &body).await
}

async fn serve(stream: &mut UnixStream, ops: Arc<Operations>) {
    let uid = match stream.peer_cred() {
        Ok(cred) if peer_allowed(cred.uid()) => cred.uid(),
        Ok(cred) => {
            tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "control connection refused: not the gateway's user or root");
            let e = OpError::runtime(format!(
                "permission denied: uid {} may not control this gateway (only its own user and root may)",
                cred.uid()
            ));
            let _ = send_error(stream, &e).await;
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "control connection refused: cannot read the peer's credentials");
            return;
        }
    };
    // Who asked, for the ledger's record of exports and deletes.
    super::ACTOR
        .scope(
            format!("control socket, uid {uid}"),
            serve_request(stream, ops),
        )
        .await
}

async fn serve_request(stream: &mut UnixStream, ops: Arc<Operations>) {
    let request = match tokio::time::timeout(
        REQUEST_DEADLINE,
        protocol::read_frame(stream, protocol::MAX_REQUEST_BYTES),
    )
    .await
    {
        Ok(Ok((FrameKind::Request, body))) => body,
        Ok(Ok((kind, _))) => {
            let _ = send_error(
                stream,
                &OpError::input(format!("expected a request frame, got {kind:?}")),
            )
            .await;
            return;
        }
        Ok(Err(e)) => {
            let _ = send_error(stream, &OpError::input(format!("bad request: {e}"))).await;
            return;
        }
        Err(_) => {
            let _ = send_error(stream, &OpError::input("no request within 10 s")).await;
            return;
        }
    };
    let envelope = match parse_envelope(&request) {
        Ok(e) => e,
        Err(e) => {
            let _ = send_error(stream, &e).await;
            return;
        }
    };
    let outcome = if envelope.request.is_streamed() {
        stream_export(stream, ops, envelope.request).await
    } else {
        let answer = if envelope.request.is_blocking() {
            let request = envelope.request;
            tokio::task::spawn_blocking(move || ops.call_blocking(request))
                .await
                .unwrap_or_else(|e| {
                    Err(OpError::runtime(format!("the request's task failed: {e}")))
                })
        } else {
            ops.call(envelope.request).await
        };
        match answer {
            Ok(reply) => {
                let body = serde_json::to_vec(&reply).unwrap_or_default();
                send(stream, FrameKind::Reply, &body).await
            }
            Err(e) => send_error(stream, &e).await,
        }
    };
    if let Err(e) = outcome {
        tracing::debug!(error = %e, "control client went away before its answer");
    }
}

fn parse_envelope(body: &[u8]) -> Result<Envelope, OpError> {
    // The version first, so a newer client gets "unsupported version"
    // rather than a confusing complaint about an op this build lacks.
    #[derive(serde::Deserialize)]
    struct VersionOnly {
        version: u32,
    }
    let v: VersionOnly =
        serde_json::from_slice(body).map_err(|e| OpError::input(format!("bad request: {e}")))?;
    if v.version != protocol::VERSION {
        return Err(OpError::input(format!(
            "control protocol version {} is not supported (this gateway speaks version {}); use the dataward binary of the running gateway",
            v.version,
            protocol::VERSION
        )));
    }
    serde_json::from_slice(body).map_err(|e| OpError::input(format!("bad request: {e}")))
}

/// Sends chunks written on a blocking thread to the async side. Bounded,
/// so a slow reader holds the export back instead of buffering it all.
pub(crate) struct ChunkSender {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkSender {
    pub(crate) fn new(tx: mpsc::Sender<Vec<u8>>) -> Self {
        ChunkSender {
            tx,
            buf: Vec::with_capacity(protocol::CHUNK_BYTES),
        }
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= protocol::CHUNK_BYTES {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(protocol::CHUNK_BYTES));
        self.tx.blocking_send(chunk).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

async fn stream_export(
    stream: &mut UnixStream,
    ops: Arc<Operations>,
    request: Request,
) -> std::io::Result<()> {
    let Request::Export(export) = request else {
        return send_error(stream, &OpError::runtime("not a streamed request")).await;
    };
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    let by = super::actor();
    let worker = tokio::task::spawn_blocking(move || {
        let mut sink = ChunkSender::new(tx);
        super::ACTOR.sync_scope(by, || ops.export(&export, &mut sink))
    });
    let mut client_gone = None;
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = send(stream, FrameKind::Data, &chunk).await {
            client_gone = Some(e);
            break;
        }
    }
    // Dropping the receiver makes the worker's next send fail, ending it.
    drop(rx);
    let result = worker
        .await
        .map_err(|e| OpError::runtime(format!("export task failed: {e}")))
        .and_then(|r| r);
    if let Some(e) = client_gone {
        return Err(e);
    }
    match result {
        Ok(summary) => {
            let body = serde_json::to_vec(&summary).unwrap_or_default();
            send(stream, FrameKind::StreamEnd, &body).await
        }
        Err(e) => send_error(stream, &e).await,
    }
}
