//! `/api/v1`: setup, the session (login is unlock), and the reading and
//! approving the pages use, as JSON. Every route but setup and login needs
//! a session; every state-changing one also the session's CSRF token in
//! `X-CSRF-Token`, and no foreign `Origin`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

#[allow(unused_imports)]
use crate::openapi::ProblemDoc;
use crate::problem::Problem;
use crate::session;
use crate::{AppState, HubError};

/// How long one operation may take before the request gives up.
const CALL_DEADLINE: Duration = Duration::from_secs(60);

/// A request with a live session.
pub struct Session {
    pub csrf: String,
    pub token: String,
}

impl FromRequestParts<Arc<AppState>> for Session {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Problem> {
        let cookies = parts
            .headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let token = session::from_cookies(cookies).ok_or_else(Problem::unauthorized)?;
        let csrf = state
            .sessions
            .touch(token, Instant::now())
            .ok_or_else(Problem::unauthorized)?;
        Ok(Session {
            csrf,
            token: token.to_string(),
        })
    }
}

impl Session {
    /// The passphrase this session was unlocked with (login is unlock).
    pub(crate) fn unlock(&self, state: &AppState) -> Result<Zeroizing<String>, Problem> {
        state
            .sessions
            .unlock(&self.token, Instant::now())
            .ok_or_else(Problem::unauthorized)
    }
}

/// A state-changing request: a session, its CSRF token, and no foreign
/// origin.
pub struct Change(pub Session);

impl FromRequestParts<Arc<AppState>> for Change {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Problem> {
        same_origin(&parts.headers)?;
        let session = Session::from_request_parts(parts, state).await?;
        let sent = parts
            .headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !session::same(sent, &session.csrf) {
            return Err(Problem::forbidden(
                "the request lacks this session's CSRF token (X-CSRF-Token)",
            ));
        }
        Ok(Change(session))
    }
}

/// A browser says where a request came from; one from another site is
/// refused even before its cookie would be (SameSite=Strict) checked.
pub(crate) fn same_origin(headers: &HeaderMap) -> Result<(), Problem> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    if origin_host.is_empty() || origin_host != host {
        return Err(Problem::forbidden(format!(
            "a request from another site ({}) is refused",
            origin.escape_debug()
        )));
    }
    Ok(())
}

pub(crate) fn hub_problem(e: HubError) -> Problem {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let title = match status.as_u16() {
        400..=499 => "Refused",
        503 => "Busy",
        _ => "Failed",
    };
    Problem::new(status, title, e.message)
}

pub(crate) async fn call(state: &AppState, request: Value) -> Result<Json<Value>, Problem> {
    match tokio::time::timeout(CALL_DEADLINE, state.hub.call(request)).await {
        Ok(Ok(v)) => Ok(Json(v)),
        Ok(Err(e)) => Err(hub_problem(e)),
        Err(_) => Err(Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "Too slow",
            "the operation did not finish in time",
        )),
    }
}

pub(crate) fn body<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, Problem> {
    serde_json::from_slice(bytes)
        .map_err(|e| Problem::bad_request(format!("the body is not the JSON expected: {e}")))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct SetupBody {
    token: String,
    passphrase: String,
}

/// First run: the one-time token the gateway printed, and the passphrase.
/// Answers the recovery key, once, and logs the user in.
#[utoipa::path(post, path = "/api/v1/setup", tag = "dataward", request_body = SetupBody, responses((status = 201, description = "Set up; the recovery key is shown this once", body = Object), (status = 403, description = "Wrong token", body = ProblemDoc, content_type = "application/problem+json"), (status = 409, description = "Already set up", body = ProblemDoc, content_type = "application/problem+json")), security(()), description = "First run: the one-time token `dataward run` printed, and the passphrase. Answers the recovery key, once, and starts a session.")]
pub async fn setup(State(state): State<Arc<AppState>>, bytes: Bytes) -> Result<Response, Problem> {
    let b: SetupBody = body(&bytes)?;
    let passphrase = Zeroizing::new(b.passphrase);
    if state.hub.is_set_up() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "Already set up",
            "the keys are set up; log in with the passphrase",
        ));
    }
    let (recovery, token, csrf) = set_up(&state, &b.token, passphrase).await?;
    let mut resp = (
        StatusCode::CREATED,
        Json(json!({ "recovery_key": recovery.as_str(), "csrf_token": csrf })),
    )
        .into_response();
    set_cookie(&mut resp, &session::set_cookie(&token, state.secure));
    Ok(resp)
}

/// Setup behind both the API and the page: the one-time token, then the
/// keys; the token is spent, and a session begins. Gives the recovery key
/// and the session's (cookie token, CSRF token).
pub(crate) async fn set_up(
    state: &AppState,
    setup_token: &str,
    passphrase: Zeroizing<String>,
) -> Result<(Zeroizing<String>, String, String), Problem> {
    {
        let token = state.setup_token.lock().unwrap_or_else(|e| e.into_inner());
        let ok = token
            .as_deref()
            .is_some_and(|t| session::same(t, setup_token));
        if !ok {
            return Err(Problem::forbidden(
                "the setup token is wrong: use the one `dataward run` printed",
            ));
        }
    }
    let recovery = state
        .hub
        .set_up(passphrase.clone())
        .await
        .map_err(hub_problem)?;
    // Used: it opens nothing any more.
    *state.setup_token.lock().unwrap_or_else(|e| e.into_inner()) = None;
    let (token, csrf) = session_or_500(state, passphrase)?;
    Ok((recovery, token, csrf))
}

fn session_or_500(
    state: &AppState,
    unlock: Zeroizing<String>,
) -> Result<(String, String), Problem> {
    state
        .sessions
        .create(Instant::now(), unlock)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Failed",
                "no randomness for a session token",
            )
        })
}

fn set_cookie(resp: &mut Response, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct LoginBody {
    passphrase: String,
}

/// Login is unlock: the passphrase, checked as `dataward export` checks it.
#[utoipa::path(post, path = "/api/v1/session", tag = "dataward", request_body = LoginBody, responses((status = 200, description = "Logged in", body = Object), (status = 401, description = "Wrong passphrase", body = ProblemDoc, content_type = "application/problem+json"), (status = 429, description = "Too many wrong passphrases; see Retry-After", body = ProblemDoc, content_type = "application/problem+json")), security(()), description = "Login is unlock: the passphrase starts a session (cookie) and answers its CSRF token. Wrong passphrases slow down.")]
pub async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, Problem> {
    let b: LoginBody = body(&bytes)?;
    let (token, csrf) = log_in(&state, peer, &headers, Zeroizing::new(b.passphrase)).await?;
    let mut resp = Json(json!({ "csrf_token": csrf })).into_response();
    set_cookie(&mut resp, &session::set_cookie(&token, state.secure));
    Ok(resp)
}

/// The passphrase check behind both the API's and the page's login, with
/// its throttle: a new session's (cookie token, CSRF token).
pub(crate) async fn log_in(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    passphrase: Zeroizing<String>,
) -> Result<(String, String), Problem> {
    same_origin(headers)?;
    if !state.hub.is_set_up() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "Not set up",
            "set up a passphrase first, with the token `dataward run` printed",
        ));
    }
    let ip = peer.ip();
    let wait = state.throttle.wait(ip, Instant::now());
    if wait > Duration::ZERO {
        let mut p = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many wrong passphrases",
            format!("try again in {} s", wait.as_secs().max(1)),
        );
        p.retry_after = Some(wait.as_secs().max(1));
        return Err(p);
    }
    let ok = {
        let _one = state.throttle.checking.lock().await;
        state
            .hub
            .check_passphrase(passphrase.clone())
            .await
            .map_err(hub_problem)?
    };
    if !ok {
        state.throttle.failed(ip, Instant::now());
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "Wrong passphrase",
            "that is not the passphrase",
        ));
    }
    state.throttle.succeeded(ip);
    session_or_500(state, passphrase)
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The current session's CSRF token, for a page that just loaded.
#[utoipa::path(get, path = "/api/v1/session", tag = "dataward", responses((status = 200, description = "The CSRF token", body = Object), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [])), description = "The session's CSRF token.")]
pub async fn session_info(s: Session) -> Json<Value> {
    Json(json!({ "csrf_token": s.csrf }))
}

#[utoipa::path(delete, path = "/api/v1/session", tag = "dataward", responses((status = 204, description = "Logged out"), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json"), (status = 403, description = "No CSRF token, or a request from another site", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [], "csrf" = [])), description = "Ends the session.")]
pub async fn logout(State(state): State<Arc<AppState>>, Change(s): Change) -> Response {
    state.sessions.end(&s.token);
    let mut resp = StatusCode::NO_CONTENT.into_response();
    set_cookie(&mut resp, &session::clear_cookie(state.secure));
    resp
}

#[utoipa::path(get, path = "/api/v1/status", tag = "dataward", responses((status = 200, description = "The status", body = Object), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [])), description = "The hub: devices, destinations, policy version, storage.")]
pub async fn status(
    State(state): State<Arc<AppState>>,
    _s: Session,
) -> Result<Json<Value>, Problem> {
    call(&state, json!({ "op": "status" })).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatementQuery {
    /// `jsonld`: the statement as JSON-LD (W3C DPV) instead of plain words.
    #[serde(default)]
    format: String,
}

#[utoipa::path(get, path = "/api/v1/statement", tag = "dataward", params(StatementQuery), responses((status = 200, description = "The statement", body = Object), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [])), description = "The sharing statement: what the policy shares, per device and destination, in plain words (or JSON-LD).")]
pub async fn statement(
    State(state): State<Arc<AppState>>,
    _s: Session,
    Query(q): Query<StatementQuery>,
) -> Result<Json<Value>, Problem> {
    call(
        &state,
        json!({ "op": "statement", "json_ld": q.format == "jsonld" }),
    )
    .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SummaryQuery {
    since_ms: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/ledger/summary", tag = "dataward", params(SummaryQuery), responses((status = 200, description = "Rows of day, destination, device, field and count", body = Object), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [])), description = "What left, counted per day, destination, device and field (the overview's numbers).")]
pub async fn ledger_summary(
    State(state): State<Arc<AppState>>,
    _s: Session,
    Query(q): Query<SummaryQuery>,
) -> Result<Json<Value>, Problem> {
    call(
        &state,
        json!({ "op": "ledger_summary", "since_ms": q.since_ms }),
    )
    .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReceivedQuery {
    destination: String,
    since_ms: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/ledger/received", tag = "dataward", params(ReceivedQuery), responses((status = 200, description = "Per device: messages, bytes, the fields and how they left", body = Object), (status = 400, description = "No such destination", body = ProblemDoc, content_type = "application/problem+json"), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [])), description = "What one destination received.")]
pub async fn ledger_received(
    State(state): State<Arc<AppState>>,
    _s: Session,
    Query(q): Query<ReceivedQuery>,
) -> Result<Json<Value>, Problem> {
    call(
        &state,
        json!({ "op": "ledger_received", "destination": q.destination, "since_ms": q.since_ms }),
    )
    .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LedgerQuery {
    since_ms: Option<u64>,
    destination: Option<String>,
    device: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/ledger", tag = "dataward", params(LedgerQuery), responses((status = 200, description = "Ledger entries", body = Object), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [])), description = "The record of what left and what was done, filtered.")]
pub async fn ledger(
    State(state): State<Arc<AppState>>,
    _s: Session,
    Query(q): Query<LedgerQuery>,
) -> Result<Json<Value>, Problem> {
    call(
        &state,
        json!({ "op": "ledger", "since_ms": q.since_ms, "destination": q.destination, "device": q.device }),
    )
    .await
}

#[utoipa::path(get, path = "/api/v1/ledger/verify", tag = "dataward", responses((status = 200, description = "The verdict", body = Object), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [])), description = "Checks the record's hash chain.")]
pub async fn ledger_verify(
    State(state): State<Arc<AppState>>,
    _s: Session,
) -> Result<Json<Value>, Problem> {
    call(&state, json!({ "op": "ledger_verify" })).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FieldsQuery {
    device: Option<String>,
    #[serde(default)]
    pending: bool,
}

#[utoipa::path(get, path = "/api/v1/fields", tag = "dataward", params(FieldsQuery), responses((status = 200, description = "The field inventory", body = Object), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [])), description = "The fields devices sent, held ones marked.")]
pub async fn fields(
    State(state): State<Arc<AppState>>,
    _s: Session,
    Query(q): Query<FieldsQuery>,
) -> Result<Json<Value>, Problem> {
    call(
        &state,
        json!({ "op": "fields", "device": q.device, "pending": q.pending }),
    )
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct ApproveBody {
    device: String,
    field: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/fields/approve", tag = "dataward", request_body = ApproveBody, responses((status = 200, description = "What was approved", body = Object), (status = 400, description = "Refused: the input, or the hub said no", body = ProblemDoc, content_type = "application/problem+json"), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json"), (status = 403, description = "No CSRF token, or a request from another site", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [], "csrf" = [])), description = "Approves a held field (or all of a device's).")]
pub async fn fields_approve(
    State(state): State<Arc<AppState>>,
    _c: Change,
    bytes: Bytes,
) -> Result<Json<Value>, Problem> {
    let b: ApproveBody = body(&bytes)?;
    call(
        &state,
        json!({ "op": "fields_approve", "device": b.device, "field": b.field }),
    )
    .await
}

#[utoipa::path(get, path = "/api/v1/destinations", tag = "dataward", responses((status = 200, description = "The destinations", body = Object), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [])), description = "The configured destinations, and whether rules for every destination reach each.")]
pub async fn destinations(
    State(state): State<Arc<AppState>>,
    _s: Session,
) -> Result<Json<Value>, Problem> {
    call(&state, json!({ "op": "destinations" })).await
}

/// Anything else under `/api/v1`.
pub async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "Not found", "no such API route")
}
