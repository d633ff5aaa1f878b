//! The CLI's way to the operations: through the control socket when a
//! gateway runs on the data directory, on the store directly when none
//! does. Both give the same JSON answer, which the CLI then renders.

use std::io::Write;
use std::time::{Duration, Instant};

use tokio::net::UnixStream;

use super::lock::{DataDirLock, LockError};
use super::protocol::{self, Envelope, FrameKind, Request};
use super::server::socket_path;
use super::{with_causes, ErrorClass, OpError, Operations};
use crate::config::Config;
use crate::store::Store;

/// How long a command waits for a data directory that another process
/// holds (a gateway starting or stopping, another command) to answer or
/// come free.
pub const BUSY_WAIT: Duration = Duration::from_secs(15);
/// How long the CLI waits for each frame of an answer before it gives the
/// gateway up as hung.
pub const ANSWER_WAIT: Duration = Duration::from_secs(120);

/// Sends `request` to whoever serves the data directory of `config`, and
/// returns its JSON answer. A streamed answer's data goes to `data`.
pub async fn request(
    config: Config,
    request: Request,
    data: &mut dyn Write,
) -> Result<serde_json::Value, OpError> {
    let dir = config.data_dir.clone();
    let sock = socket_path(&dir);
    let deadline = Instant::now() + BUSY_WAIT;
    loop {
        match UnixStream::connect(&sock).await {
            Ok(stream) => match remote(stream, &request, data).await {
                Err(e) if e.class == ErrorClass::Busy && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                other => return other,
            },
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => {
                return Err(OpError::runtime(format!(
                    "cannot use the gateway's control socket {}: {e} (run the command as the gateway's user or as root)",
                    sock.display()
                )))
            }
        }
        match local(&config, &request, data).await {
            Err(Busy(holder)) if Instant::now() < deadline => {
                tracing::debug!(?holder, "data directory busy; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(Busy(e)) => {
                let gateway = matches!(&e, LockError::Held { holder: Some(h), .. } if h.role == super::lock::Role::Gateway);
                return Err(OpError::runtime(format!(
                    "{}{}",
                    with_causes(&e),
                    if gateway {
                        " and its control socket does not answer"
                    } else {
                        "; try again when it has finished"
                    }
                )));
            }
            Ok(result) => return result,
        }
    }
}

/// The data directory is held by another process.
struct Busy(LockError);

/// Root working on a store that belongs to another user (the service's)
/// would leave files that user cannot open, and the service would fail
/// at its next start: refused, with the command that works.
fn not_its_owner(dir: &std::path::Path) -> Option<OpError> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no failure mode and touches no memory.
    let me = unsafe { libc::geteuid() };
    let owner = std::fs::metadata(dir).ok()?.uid();
    if me != 0 || owner == 0 {
        return None;
    }
    // SAFETY: getpwuid returns a pointer into static storage or null; the
    // name is copied out at once, before any other call could reuse it.
    let name = unsafe {
        let pw = libc::getpwuid(owner);
        if pw.is_null() || (*pw).pw_name.is_null() {
            None
        } else {
            Some(
                std::ffi::CStr::from_ptr((*pw).pw_name)
                    .to_string_lossy()
                    .into_owned(),
            )
        }
    };
    let user = name.unwrap_or_else(|| owner.to_string());
    Some(OpError::input(format!(
        "{} belongs to user {user}, and the gateway is not running: run the command as that user (`sudo -u {user} dataward …`), so that the files it writes stay the gateway's",
        dir.display()
    )))
}

async fn local(
    config: &Config,
    request: &Request,
    data: &mut dyn Write,
) -> Result<Result<serde_json::Value, OpError>, Busy> {
    let dir = &config.data_dir;
    let exists = dir.join("db").exists();
    if !exists && !request.creates_store() {
        // Nothing was ever stored here: answer from nothing, create nothing.
        return Ok(run_local(Operations::offline(config.clone(), None), request, data).await);
    }
    if let Err(e) = super::lock::prepare_data_dir(dir) {
        return Ok(Err(OpError::runtime(format!(
            "cannot create the data directory {}: {e}",
            dir.display()
        ))));
    }
    if let Some(e) = not_its_owner(dir) {
        return Ok(Err(e));
    }
    let _lock = match DataDirLock::try_acquire(dir, super::lock::Role::Command) {
        Ok(l) => l,
        Err(e @ LockError::Held { .. }) => return Err(Busy(e)),
        Err(e) => return Ok(Err(OpError::runtime(with_causes(&e)))),
    };
    let store = match Store::open(dir) {
        Ok(s) => s,
        Err(e) => return Ok(Err(e.into())),
    };
    Ok(run_local(
        Operations::offline(config.clone(), Some(store)),
        request,
        data,
    )
    .await)
}

async fn run_local(
    ops: Result<Operations, OpError>,
    request: &Request,
    data: &mut dyn Write,
) -> Result<serde_json::Value, OpError> {
    let ops = ops?;
    match request {
        Request::Export(export) => {
            let summary = ops.export(export, data)?;
            serde_json::to_value(summary).map_err(|e| OpError::runtime(e.to_string()))
        }
        other => ops.call(other.clone()).await,
    }
}

async fn remote(
    mut stream: UnixStream,
    request: &Request,
    data: &mut dyn Write,
) -> Result<serde_json::Value, OpError> {
    let lost = |e: &dyn std::fmt::Display| {
        OpError::runtime(format!("the control connection to the gateway failed: {e}"))
    };
    let body = serde_json::to_vec(&Envelope {
        version: protocol::VERSION,
        request: request.clone(),
    })
    .map_err(|e| lost(&e))?;
    if let Err(e) = protocol::write_frame(&mut stream, FrameKind::Request, &body).await {
        // The gateway may have refused before reading (a peer it does not
        // serve, too many clients): its reason is waiting to be read.
        return match protocol::read_frame(&mut stream, protocol::MAX_REPLY_BYTES).await {
            Ok((FrameKind::Error, body)) => {
                Err(serde_json::from_slice::<OpError>(&body).map_err(|e| lost(&e))?)
            }
            _ => Err(lost(&e)),
        };
    }
    loop {
        let frame = tokio::time::timeout(
            ANSWER_WAIT,
            protocol::read_frame(&mut stream, protocol::MAX_REPLY_BYTES),
        )
        .await
        .map_err(|_| {
            OpError::runtime(format!(
                "the gateway did not answer within {} s",
                ANSWER_WAIT.as_secs()
            ))
        })?;
        let (kind, body) =
            match frame {
                Ok(f) => f,
                Err(protocol::FrameError::Closed) => return Err(OpError::runtime(
                    "the gateway closed the control connection without an answer (is it stopping?)",
                )),
                Err(e) => return Err(lost(&e)),
            };
        match kind {
            FrameKind::Data => data
                .write_all(&body)
                .map_err(|e| OpError::runtime(format!("writing the output failed: {e}")))?,
            FrameKind::Reply | FrameKind::StreamEnd => {
                data.flush()
                    .map_err(|e| OpError::runtime(format!("writing the output failed: {e}")))?;
                return serde_json::from_slice(&body).map_err(|e| lost(&e));
            }
            FrameKind::Error => {
                return Err(serde_json::from_slice::<OpError>(&body).map_err(|e| lost(&e))?)
            }
            FrameKind::Request => return Err(lost(&"unexpected request frame from the gateway")),
        }
    }
}
