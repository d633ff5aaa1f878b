//! dataward's HTTP face.
//!
//! - [`Hub`]: what the UI needs from the running gateway. `gateway`
//!   implements it over its operations layer; this crate knows nothing of
//!   storage or the broker.
//! - [`router`]: the axum router the gateway mounts: `/healthz`, and
//!   `/api/v1` (setup, the session, and what the pages read and change).
//! - `session`: login sessions and their CSRF tokens.
//! - `throttle`: wrong passphrases slow down, per client and for everyone.
//! - `problem`: errors as RFC 7807 problem documents.
//! - `api`: the `/api/v1` handlers.
//! - `pages`: the page layout, setup, login and the new fields; the
//!   other pages, each in its module, are server-rendered and readable
//!   without JavaScript: `overview_page`, `record_page` (the ledger, what
//!   a destination received, the statement);
//!   `devices_page`: the devices, and adding one; `device_page`: one
//!   device, its sharing grid and live preview, removing it; `data_page`:
//!   export (streamed) and delete.
//! - `metrics`: `/metrics`, Prometheus text, for a session or a scraper's
//!   bearer token.
//! - [`openapi`]: the OpenAPI 3.1 document, generated from the handlers.
//! - `events`: live updates (server-sent events) for the pages' script.
//! - `sharing`: the grid (form or JSON) to a candidate policy text
//!   (`policy::edit`), previewed or applied; the devices' API.
//!
//! - [`serve`]: the listener loop (plain or TLS) with its connection
//!   limits and deadlines.
//!
//! Every response carries a strict Content-Security-Policy and friends;
//! request bodies are limited to [`MAX_BODY_BYTES`].

mod api;
mod data_page;
mod device_page;
mod devices_page;
mod events;
mod metrics;
pub mod openapi;
mod overview_page;
mod pages;
mod problem;
mod record_page;
pub mod serve;
pub mod session;
mod sharing;
pub mod throttle;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use zeroize::Zeroizing;

pub use problem::Problem;

/// Request bodies larger than this are refused (413).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// A sharing grid's body may be larger: a device may send 1,024 fields
/// with names of 256 bytes, and the grid sends each with every
/// destination's cell.
pub const MAX_GRID_BODY_BYTES: usize = 4 << 20;

/// The hub's state as the health check reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Health {
    /// False when the store cannot write: devices' messages are refused.
    pub store_ok: bool,
    /// False when a stage of the gateway (broker, committer, an uplink...)
    /// has failed.
    pub stages_ok: bool,
}

/// An operation the hub refused or failed; `status` is the HTTP status it
/// maps to (400 for the user's input, 500 for a failure, 503 when busy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubError {
    pub status: u16,
    pub message: String,
}

pub type HubFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the web UI needs from the running hub.
pub trait Hub: Send + Sync + 'static {
    fn health(&self) -> Health;
    /// Whether the user's keys exist (setup is done).
    fn is_set_up(&self) -> bool;
    /// Sets up the user's keys with `passphrase`, as `dataward init` does;
    /// answers the recovery key, to be shown once.
    fn set_up(
        &self,
        passphrase: Zeroizing<String>,
    ) -> HubFuture<'_, Result<Zeroizing<String>, HubError>>;
    /// Whether `passphrase` is the user's (an Argon2id: slow).
    fn check_passphrase(
        &self,
        passphrase: Zeroizing<String>,
    ) -> HubFuture<'_, Result<bool, HubError>>;
    /// One operation, as the control socket takes it: `{"op": "status"}`.
    fn call(
        &self,
        request: serde_json::Value,
    ) -> HubFuture<'_, Result<serde_json::Value, HubError>>;
    /// An operation that needs the passphrase (`delete`, `wipe`): the
    /// request without it, and the session's.
    fn call_unlocked(
        &self,
        request: serde_json::Value,
        passphrase: Zeroizing<String>,
    ) -> HubFuture<'_, Result<serde_json::Value, HubError>>;
    /// An export (the control socket's `export` request, without the
    /// passphrase): its bytes go into `chunks` as they are written, the
    /// answer is its summary. Dropping the receiver stops it.
    fn export(
        &self,
        request: serde_json::Value,
        passphrase: Zeroizing<String>,
        chunks: tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> HubFuture<'_, Result<serde_json::Value, HubError>>;
}

/// How the gateway serves the UI.
#[derive(Debug, Clone, Default)]
pub struct UiConfig {
    /// The one-time setup token `dataward run` printed; none once the keys
    /// exist.
    pub setup_token: Option<String>,
    /// Served over TLS: cookies get `Secure`.
    pub secure: bool,
    /// The devices' MQTT port, for the connection settings shown.
    pub mqtt_port: u16,
    /// A bearer token that may read `/metrics` without a session (a
    /// Prometheus scraper); none: only a session may.
    pub metrics_token: Option<String>,
    /// Turns true when the hub shuts down: live event streams end then,
    /// instead of holding the exit.
    pub closing: Option<tokio::sync::watch::Receiver<bool>>,
}

pub struct AppState {
    pub(crate) hub: Arc<dyn Hub>,
    pub(crate) sessions: session::Sessions,
    pub(crate) throttle: throttle::LoginThrottle,
    pub(crate) setup_token: Mutex<Option<String>>,
    pub(crate) secure: bool,
    pub(crate) mqtt_port: u16,
    pub(crate) event_streams: Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) metrics_token: Option<String>,
    pub(crate) closing: Option<tokio::sync::watch::Receiver<bool>>,
}

pub fn router(hub: Arc<dyn Hub>, config: UiConfig) -> Router {
    let state = Arc::new(AppState {
        hub,
        sessions: Default::default(),
        throttle: Default::default(),
        setup_token: Mutex::new(config.setup_token),
        secure: config.secure,
        mqtt_port: config.mqtt_port,
        event_streams: Default::default(),
        metrics_token: config.metrics_token,
        closing: config.closing,
    });
    let api = Router::new()
        .route("/setup", post(api::setup))
        .route(
            "/session",
            post(api::login).get(api::session_info).delete(api::logout),
        )
        .route("/status", get(api::status))
        .route("/statement", get(api::statement))
        .route("/ledger", get(api::ledger))
        .route("/ledger/verify", get(api::ledger_verify))
        .route("/ledger/summary", get(api::ledger_summary))
        .route("/ledger/received", get(api::ledger_received))
        .route("/fields", get(api::fields))
        .route("/fields/approve", post(api::fields_approve))
        .route("/destinations", get(api::destinations))
        .route("/devices", get(sharing::api_devices).post(sharing::api_add))
        .route(
            "/devices/{id}",
            get(sharing::api_device).delete(sharing::api_remove),
        )
        .route(
            "/devices/{id}/sharing",
            get(sharing::api_grid)
                .put(sharing::api_save)
                .layer(DefaultBodyLimit::max(MAX_GRID_BODY_BYTES)),
        )
        .route(
            "/devices/{id}/sharing/preview",
            post(sharing::api_preview).layer(DefaultBodyLimit::max(MAX_GRID_BODY_BYTES)),
        )
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/events", get(events::events))
        .route("/export", get(data_page::api_export))
        .route("/delete", post(data_page::api_delete))
        .fallback(api::not_found);
    Router::new()
        .route("/", get(overview_page::overview))
        .route("/setup", get(pages::setup_page).post(pages::setup_submit))
        .route("/login", get(pages::login_page).post(pages::login_submit))
        .route("/logout", post(pages::logout_submit))
        .route("/devices", get(devices_page::devices_page))
        .route("/devices/add", post(devices_page::add_submit))
        .route("/devices/{id}", get(device_page::device_page))
        .route(
            "/devices/{id}/sharing",
            post(device_page::sharing_submit).layer(DefaultBodyLimit::max(MAX_GRID_BODY_BYTES)),
        )
        .route("/devices/{id}/remove", post(device_page::remove_submit))
        .route("/data", get(data_page::data_page))
        .route("/data/export", get(data_page::export_download))
        .route(
            "/data/delete",
            get(data_page::delete_confirm).post(data_page::delete_submit),
        )
        .route("/fields", get(pages::fields_page))
        .route("/fields/approve", post(pages::approve_submit))
        .route("/ledger", get(record_page::ledger_page))
        .route("/received", get(record_page::received_page))
        .route("/statement", get(record_page::statement_page))
        .route("/statement.jsonld", get(record_page::statement_jsonld))
        .route("/static/app.css", get(pages::css))
        .route("/static/app.js", get(pages::js))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::metrics))
        .nest("/api/v1", api)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(serve::body_deadline))
        .layer(axum::middleware::from_fn(problem::plain_rejections))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            refresh_cookie,
        ))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// A request in a live session renews the cookie's lifetime, as the
/// server's idle timeout slides: an active user is not logged out 30
/// minutes after logging in.
async fn refresh_cookie(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(session::from_cookies)
        .map(str::to_string);
    let mut resp = next.run(req).await;
    if let Some(token) = token {
        let live = state.sessions.is_live(&token, std::time::Instant::now());
        if live && !resp.headers().contains_key(header::SET_COOKIE) {
            if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&token, state.secure)) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
        }
    }
    resp
}

/// On every response: no script, style or frame from anywhere else, no
/// inline script, no sniffing, no referrer to other sites.
async fn security_headers(req: axum::extract::Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not no-referrer: with it, browsers send `Origin: null` on a form
    // POST, and the same-origin check could not tell the page from a foe.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Liveness for supervisors. It says nothing about devices or data, so it
/// needs no login.
async fn healthz(State(state): State<Arc<AppState>>) -> (StatusCode, Json<serde_json::Value>) {
    let h = state.hub.health();
    let ok = h.store_ok && h.stages_ok;
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status = if ok { "ok" } else { "degraded" };
    (code, Json(serde_json::json!({ "status": status })))
}

#[cfg(test)]
mod tests;
