//! The pages: server-rendered HTML (maud escapes every value it is given,
//! device-supplied names included), readable without JavaScript; forms
//! post back to the server. Each page asks the hub the same operations the
//! API does.

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

pub(crate) fn page(title: &str, csrf: Option<&str>, body: Markup) -> Html<String> {
    Html(without_controls(
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
    ))
}

/// A device's string may hold control characters (NUL above all), which
/// HTML cannot carry: each is shown as U+FFFD. The escaping that keeps
/// markup out is maud's; this keeps the page well-formed.
fn without_controls(html: String) -> String {
    if !html
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return html;
    }
    html.chars()
        .map(|c| {
            if c.is_control() && !matches!(c, '\n' | '\r' | '\t') {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
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
        Err(p) => {
            let retry = p.retry_after;
            let mut resp = (p.status, message(p.title, &p.detail)).into_response();
            if let Some(v) = retry.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        }
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

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_do_not_reach_the_html() {
        assert_eq!(
            super::without_controls("a\0b\u{1b}c\nd".into()),
            "a\u{FFFD}b\u{FFFD}c\nd"
        );
        let page = super::page("x", None, maud::html! { p { "field x\0y" } });
        assert!(!page.0.contains('\0') && page.0.contains("field x\u{FFFD}y"));
    }
}
