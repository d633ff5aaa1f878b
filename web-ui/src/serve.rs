//! Serving the router: plain HTTP, or HTTPS with the gateway's
//! certificate, with the limits a LAN-facing listener needs.
//!
//! - At most [`MAX_CONNECTIONS`] at once, and [`MAX_PER_ADDRESS`] from
//!   one address (IPv6: one /64), so one LAN client cannot take every
//!   place; one more is closed at accept.
//! - A TLS handshake must finish within [`HANDSHAKE_DEADLINE`].
//! - A request's head must arrive within [`HEADER_DEADLINE`], and so must
//!   the next one on a kept-alive connection: an idle or trickling client
//!   does not hold a connection (hyper's header read timeout).
//! - A request's body must arrive within [`BODY_DEADLINE`] (see
//!   [`body_deadline`]).
//!
//! On shutdown, no new connection is taken; those open get
//! [`DRAIN`] to finish, then are aborted (an export or a live page's
//! event stream would otherwise hold the gateway's exit).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
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
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::problem::Problem;

pub const MAX_CONNECTIONS: usize = 128;
pub const MAX_PER_ADDRESS: usize = 32;
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
pub const HEADER_DEADLINE: Duration = Duration::from_secs(15);
pub const BODY_DEADLINE: Duration = Duration::from_secs(15);
pub const DRAIN: Duration = Duration::from_secs(5);

/// A request's body, read whole (it is at most [`crate::MAX_BODY_BYTES`])
/// within [`BODY_DEADLINE`]: a client that sends its body slowly is cut
/// off with 408 instead of holding a connection and a task.
pub async fn body_deadline(req: Request<Body>, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let limit = if parts.uri.path().contains("/sharing") {
        crate::MAX_GRID_BODY_BYTES
    } else {
        crate::MAX_BODY_BYTES
    };
    match tokio::time::timeout(BODY_DEADLINE, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Too large",
            format!("a request body is at most {limit} bytes"),
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

/// Open connections, overall and per address (IPv6 by /64).
#[derive(Default)]
struct Places(Mutex<(usize, HashMap<IpAddr, usize>)>);

/// A place taken; given back when the connection ends.
struct Place(Arc<Places>, IpAddr);

impl Places {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Place> {
        let key = crate::throttle::client_key(ip);
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mine = g.1.get(&key).copied().unwrap_or(0);
        if g.0 >= MAX_CONNECTIONS || mine >= MAX_PER_ADDRESS {
            return None;
        }
        g.0 += 1;
        g.1.insert(key, mine + 1);
        Some(Place(Arc::clone(self), key))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut g = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.1);
            }
        }
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
    let places = Arc::new(Places::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut open = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            // Ended connections are reaped as they end.
            Some(_) = open.join_next(), if !open.is_empty() => continue,
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
        let Some(place) = places.take(peer.ip()) else {
            tracing::debug!(%peer, "HTTP connection refused: too many open");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let stop = stop_rx.clone();
        open.spawn(async move {
            let _place = place;
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
    let drained =
        tokio::time::timeout(DRAIN, async { while open.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::info!(
            open = open.len(),
            "HTTP connections still open at shutdown were closed"
        );
        open.abort_all();
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
