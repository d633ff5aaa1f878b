//! The pages: server-rendered HTML (maud escapes every value it is given,
//! device-supplied names included), readable without JavaScript; forms
//! post back to the server. Each page asks the hub the same operations the
//! API does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Form, FromRequestParts, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::api::Session;
use crate::session;
use crate::AppState;

pub const CSS: &str = include_str!("app.css");

const DAY_MS: u64 = 86_400_000;

pub(crate) fn page(title: &str, csrf: Option<&str>, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · dataward" }
                    link rel="stylesheet" href="/static/app.css";
                }
                body {
                    header {
                        a.brand href="/" { "dataward" }
                        @if let Some(csrf) = csrf {
                            nav {
                                a href="/" { "Overview" }
                                a href="/devices" { "Devices" }
                                a href="/fields" { "New fields" }
                                a href="/data" { "Your data" }
                                a href="/ledger" { "Record" }
                                a href="/statement" { "Statement" }
                                form method="post" action="/logout" {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button type="submit" { "Log out" }
                                }
                            }
                        }
                    }
                    main { (body) }
                }
            }
        }
        .into_string(),
    )
}

pub(crate) fn message(title: &str, text: &str) -> Response {
    page(title, None, html! { h1 { (title) } p { (text) } }).into_response()
}

/// A session, or the page the browser should go to instead.
async fn session_or_redirect(
    parts: &mut axum::http::request::Parts,
    state: &Arc<AppState>,
) -> Result<Session, Response> {
    match Session::from_request_parts(parts, state).await {
        Ok(s) => Ok(s),
        Err(_) if !state.hub.is_set_up() => Err(Redirect::to("/setup").into_response()),
        Err(_) => Err(Redirect::to("/login").into_response()),
    }
}

/// A page's session; without one, a redirect to login (or setup).
pub struct PageSession(pub Session);

impl FromRequestParts<Arc<AppState>> for PageSession {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Response> {
        session_or_redirect(parts, state).await.map(PageSession)
    }
}

pub(crate) async fn ask(state: &AppState, request: Value) -> Value {
    state.hub.call(request).await.unwrap_or(Value::Null)
}

pub const JS: &str = include_str!("app.js");

pub async fn js() -> Response {
    let mut resp = JS.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    resp
}

pub async fn css() -> Response {
    let mut resp = CSS.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    resp
}

#[derive(Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

pub async fn setup_page(
    State(state): State<Arc<AppState>>,
    Query(q): Query<TokenQuery>,
) -> Response {
    if state.hub.is_set_up() {
        return Redirect::to("/login").into_response();
    }
    let token = q.token.unwrap_or_default();
    page(
        "Set up",
        None,
        html! {
            h1 { "Welcome to dataward" }
            p { "Choose the passphrase that protects your devices' history. You will need it to log in, to export and to delete." }
            form method="post" action="/setup" {
                input type="hidden" name="token" value=(token);
                label { "Passphrase (at least 8 characters)" input type="password" name="passphrase" autocomplete="new-password" required minlength="8"; }
                label { "The same again" input type="password" name="again" autocomplete="new-password" required; }
                button type="submit" { "Set passphrase" }
            }
            @if token.is_empty() {
                p.note { "Open the setup link that " code { "dataward run" } " printed, or run " code { "dataward init" } " on the hub." }
            }
        },
    )
    .into_response()
}

#[derive(Deserialize)]
pub struct SetupForm {
    token: String,
    passphrase: String,
    again: String,
}

pub async fn setup_submit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(f): Form<SetupForm>,
) -> Response {
    if crate::api::same_origin(&headers).is_err() {
        return (
            StatusCode::FORBIDDEN,
            message("Refused", "A request from another site."),
        )
            .into_response();
    }
    let (passphrase, again) = (Zeroizing::new(f.passphrase), Zeroizing::new(f.again));
    if state.hub.is_set_up() {
        return Redirect::to("/login").into_response();
    }
    if passphrase.as_str() != again.as_str() {
        return (
            StatusCode::BAD_REQUEST,
            message(
                "Not the same",
                "The two passphrases differ: go back and type them again.",
            ),
        )
            .into_response();
    }
    let (recovery, token, csrf) = match crate::api::set_up(&state, &f.token, passphrase).await {
        Ok(done) => done,
        Err(p) if p.status == StatusCode::FORBIDDEN => {
            return (
                StatusCode::FORBIDDEN,
                message(
                    "Wrong setup link",
                    "Use the link `dataward run` printed on the hub's console.",
                ),
            )
                .into_response()
        }
        Err(p) => return (p.status, message("Not set up", &p.detail)).into_response(),
    };
    let mut resp = page(
        "Your recovery key",
        Some(&csrf),
        html! {
            h1 { "Your recovery key" }
            p { "If you forget your passphrase, this key sets a new one. It is shown this once: write it down, or store it in a password manager." }
            p.recovery id="recovery-key" { (recovery.as_str()) }
            p { a.button id="saved" href="/" { "I saved it" } }
        },
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&token, state.secure)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

pub async fn login_page(State(state): State<Arc<AppState>>) -> Response {
    if !state.hub.is_set_up() {
        return Redirect::to("/setup").into_response();
    }
    page(
        "Log in",
        None,
        html! {
            h1 { "Log in" }
            form method="post" action="/login" {
                label { "Passphrase" input type="password" name="passphrase" autocomplete="current-password" required autofocus; }
                button type="submit" { "Log in" }
            }
        },
    )
    .into_response()
}

#[derive(Deserialize)]
pub struct LoginForm {
    passphrase: String,
}

pub async fn login_submit(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    match crate::api::log_in(&state, peer, &headers, Zeroizing::new(f.passphrase)).await {
        Ok((token, _csrf)) => {
            let mut resp = Redirect::to("/").into_response();
            if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&token, state.secure)) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Err(p) => (p.status, message(p.title, &p.detail)).into_response(),
    }
}

/// A form that changes something must come from this site, with the
/// session's CSRF token in its hidden field.
/// The refusal to answer with, if it does not.
pub(crate) fn form_from_this_page(
    headers: &HeaderMap,
    csrf: &str,
    s: &Session,
) -> Option<Response> {
    if crate::api::same_origin(headers).is_err() || !session::same(csrf, &s.csrf) {
        return Some(
            (
                StatusCode::FORBIDDEN,
                message("Refused", "That request did not come from this page."),
            )
                .into_response(),
        );
    }
    None
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn logout_submit(
    State(state): State<Arc<AppState>>,
    PageSession(s): PageSession,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Some(refused) = form_from_this_page(&headers, &f.csrf, &s) {
        return refused;
    }
    state.sessions.end(&s.token);
    let mut resp = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(state.secure)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// Seven bars, one per day, oldest first, as an SVG drawn here.
fn bars(per_day: &[u64; 7]) -> Markup {
    let max = per_day.iter().copied().max().unwrap_or(0).max(1);
    html! {
        svg.bars viewBox="0 0 70 30" role="img" aria-label="messages per day, the last 7 days" {
            @for (i, n) in per_day.iter().enumerate() {
                @let h = (*n as f64 / max as f64 * 28.0).round() as u64;
                rect x=(i * 10 + 1) y=(30 - h.max(1)) width="8" height=(h.max(1)) {
                    title { (n) " messages" }
                }
            }
        }
    }
}

pub async fn overview(State(state): State<Arc<AppState>>, PageSession(s): PageSession) -> Response {
    let now = crate::api::now_ms();
    let since = now - now % DAY_MS - 6 * DAY_MS;
    let summary = ask(&state, json!({"op": "ledger_summary", "since_ms": since})).await;
    let statement = ask(&state, json!({"op": "statement"})).await;
    let held = ask(&state, json!({"op": "fields", "pending": true})).await;
    let verdict = ask(&state, json!({"op": "ledger_verify"})).await;
    // Per destination: messages per day, and the fields that left.
    let mut per_dest: BTreeMap<String, ([u64; 7], std::collections::BTreeSet<String>)> =
        BTreeMap::new();
    for row in summary.as_array().into_iter().flatten() {
        let dest = row["destination"].as_str().unwrap_or_default().to_string();
        let entry = per_dest.entry(dest).or_default();
        let field = row["field"].as_str().unwrap_or_default();
        if field.is_empty() {
            let day = row["day"].as_u64().unwrap_or(0) * DAY_MS;
            if let Some(slot) = day
                .checked_sub(since)
                .map(|d| (d / DAY_MS) as usize)
                .filter(|i| *i < 7)
            {
                entry.0[slot] += row["count"].as_u64().unwrap_or(0);
            }
        } else {
            entry.1.insert(field.to_string());
        }
    }
    let mut who: BTreeMap<String, String> = BTreeMap::new();
    for l in statement["lines"].as_array().into_iter().flatten() {
        let name = l["destination"].as_str().unwrap_or_default().to_string();
        let parts: Vec<String> = ["recipient", "country", "purpose"]
            .iter()
            .filter_map(|k| l[*k].as_str().map(str::to_string))
            .collect();
        who.entry(name).or_insert_with(|| parts.join(" · "));
    }
    let held: Vec<&Value> = held["fields"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    page(
        "Overview",
        Some(&s.csrf),
        html! {
            h1 { "What left your home in the last 7 days" }
            @if per_dest.is_empty() {
                p { "Nothing has left your home in the last 7 days." }
            }
            @for (dest, (days, fields)) in &per_dest {
                section.card {
                    h2 { (dest) }
                    @if let Some(w) = who.get(dest).filter(|w| !w.is_empty()) { p.who { (w) } }
                    p { (days.iter().sum::<u64>()) " messages" }
                    (bars(days))
                    p.fields { "Fields shared: " (fields.iter().cloned().collect::<Vec<_>>().join(", ")) }
                }
            }
            section.card {
                h2 { "Needs your decision" }
                @if held.is_empty() {
                    p { "Nothing: no new field waits." }
                } @else {
                    p {
                        @if held.len() == 1 { "1 new field is held until you decide. " }
                        @else { (held.len()) " new fields are held until you decide. " }
                        a href="/fields" { "Review" }
                    }
                }
            }
            section.card {
                h2 { "The record" }
                @if verdict["intact"] == true {
                    p.ok { "The record of what left is intact (" (verdict["entries"].as_u64().unwrap_or(0)) " entries)." }
                } @else {
                    p.bad { "The record does not check out: " (verdict["reason"].as_str().unwrap_or("unknown")) }
                }
            }
        },
    )
    .into_response()
}

pub async fn fields_page(
    State(state): State<Arc<AppState>>,
    PageSession(s): PageSession,
) -> Response {
    let list = ask(&state, json!({"op": "fields"})).await;
    let fields: Vec<Value> = list["fields"].as_array().cloned().unwrap_or_default();
    page(
        "Fields",
        Some(&s.csrf),
        html! {
            h1 { "What your devices send" }
            p { "A field a device sends for the first time is held: no rule for every field shares it until you approve it." }
            table {
                thead { tr { th { "Device" } th { "Field" } th { "State" } th { "Sample" } th {} } }
                tbody {
                    @for f in &fields {
                        @let held = f["held"] == true;
                        tr.held[held] {
                            td { (f["device"].as_str().unwrap_or_default()) }
                            td.field { (f["field"].as_str().unwrap_or_default()) }
                            td { @if f["approved"] == true { "approved" } @else if held { "held" } @else { "new" } }
                            td.sample { (f["sample"].as_str().unwrap_or_default()) }
                            td {
                                @if f["approved"] != true {
                                    form method="post" action="/fields/approve" {
                                        input type="hidden" name="csrf" value=(s.csrf);
                                        input type="hidden" name="device" value=(f["device"].as_str().unwrap_or_default());
                                        input type="hidden" name="field" value=(f["field"].as_str().unwrap_or_default());
                                        button type="submit" { "Approve" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
    .into_response()
}

#[derive(Deserialize)]
pub struct ApproveForm {
    csrf: String,
    device: String,
    field: String,
    /// The page to go back to: a device's, or the fields list.
    #[serde(default)]
    back: Option<String>,
}

pub async fn approve_submit(
    State(state): State<Arc<AppState>>,
    PageSession(s): PageSession,
    headers: HeaderMap,
    Form(f): Form<ApproveForm>,
) -> Response {
    if let Some(refused) = form_from_this_page(&headers, &f.csrf, &s) {
        return refused;
    }
    match state
        .hub
        .call(json!({"op": "fields_approve", "device": f.device, "field": f.field}))
        .await
    {
        // Only a page of this site's devices: never a redirect elsewhere.
        Ok(_) => match f.back.as_deref() {
            Some(b)
                if b.starts_with("/devices/")
                    && b[9..]
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"-_.%".contains(&c)) =>
            {
                Redirect::to(b).into_response()
            }
            _ => Redirect::to("/fields").into_response(),
        },
        Err(e) => (StatusCode::BAD_REQUEST, message("Not approved", &e.message)).into_response(),
    }
}

pub async fn ledger_page(
    State(state): State<Arc<AppState>>,
    PageSession(s): PageSession,
) -> Response {
    let since = crate::api::now_ms().saturating_sub(7 * DAY_MS);
    let listing = ask(&state, json!({"op": "ledger", "since_ms": since})).await;
    let entries: Vec<Value> = listing["entries"].as_array().cloned().unwrap_or_default();
    page(
        "Record",
        Some(&s.csrf),
        html! {
            h1 { "The record of the last 7 days" }
            ol.ledger reversed {
                @for e in entries.iter().rev() {
                    li {
                        span.kind { (e["kind"].as_str().unwrap_or_default()) }
                        " "
                        span.what { (describe(e)) }
                    }
                }
            }
        },
    )
    .into_response()
}

/// One entry in a line of plain text (escaped by the template).
fn describe(e: &Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
    match e["kind"].as_str().unwrap_or_default() {
        "egress" => format!(
            "{} → {}: {} messages ({})",
            s("device"),
            s("destination"),
            e["messages"].as_u64().unwrap_or(0),
            e["fields"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| format!(
                    "{} {}",
                    f["field"].as_str().unwrap_or_default(),
                    f["action"].as_str().unwrap_or_default()
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "fields_approved" => format!(
            "{}: approved {}",
            s("device"),
            e["fields"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "policy_applied" => format!("policy version {} ({})", e["version"], s("source")),
        "device_added" => format!("{} added", s("device")),
        "device_removed" => format!("{} removed", s("device")),
        _ => e
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "seq" | "at_ms" | "prev" | "kind"))
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default(),
    }
}

pub async fn statement_page(
    State(state): State<Arc<AppState>>,
    PageSession(s): PageSession,
) -> Response {
    let st = ask(&state, json!({"op": "statement"})).await;
    let lines: Vec<Value> = st["lines"].as_array().cloned().unwrap_or_default();
    page(
        "Statement",
        Some(&s.csrf),
        html! {
            h1 { "What your policy shares" }
            @if lines.is_empty() { p { "No devices or no destinations: nothing leaves." } }
            ul.statement {
                @for l in &lines { li { (l["text"].as_str().unwrap_or_default()) } }
            }
        },
    )
    .into_response()
}
