//! Serving the router: plain HTTP, or HTTPS with the gateway's
//! certificate, with the limits a LAN-facing listener needs.
//!
//! - At most [`MAX_CONNECTIONS`] at once; one more is closed at accept.
//! - A TLS handshake must finish within [`HANDSHAKE_DEADLINE`].
//! - A request's head must arrive within [`HEADER_DEADLINE`], and so must
//!   the next one on a kept-alive connection: an idle or trickling client
//!   does not hold a connection (hyper's header read timeout).
//! - A request's body must arrive within [`BODY_DEADLINE`] (see
//!   [`body_deadline`]).
//!
//! On shutdown, no new connection is taken; those open get
//! [`DRAIN`] to finish (an export or a live page's event stream would
//! otherwise hold the gateway's exit).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::problem::Problem;

pub const MAX_CONNECTIONS: usize = 128;
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
pub const HEADER_DEADLINE: Duration = Duration::from_secs(15);
pub const BODY_DEADLINE: Duration = Duration::from_secs(15);
pub const DRAIN: Duration = Duration::from_secs(5);

/// A request's body, read whole (it is at most [`crate::MAX_BODY_BYTES`])
/// within [`BODY_DEADLINE`]: a client that sends its body slowly is cut
/// off with 408 instead of holding a connection and a task.
pub async fn body_deadline(req: Request<Body>, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(
        BODY_DEADLINE,
        axum::body::to_bytes(body, crate::MAX_BODY_BYTES),
    )
    .await
    {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Too large",
            format!("a request body is at most {} bytes", crate::MAX_BODY_BYTES),
        )
        .into_response(),
        Err(_) => Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "Too slow",
            "the request's body did not arrive in time",
        )
        .into_response(),
    }
}

/// Serves `app` on `listener` until `shutdown` resolves; over TLS with
/// `tls`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "HTTP connection refused: too many open");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                None => connection(tcp, peer, app, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => connection(tls, peer, app, stop).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake too slow"),
                    }
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    // Every permit back means every connection ended.
    let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::info!("HTTP connections still open at shutdown were dropped");
    }
}

async fn connection<I>(io: I, peer: SocketAddr, app: Router, mut stop: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = tower::ServiceExt::map_request(app, move |mut req: Request<_>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    let service = hyper_util::service::TowerToHyperService::new(service);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_DEADLINE);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => {
            if let Err(e) = done {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
