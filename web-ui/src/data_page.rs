//! "Your data": the history as a download, streamed as the hub reads it
//! (never held whole in memory), and deleting it: a range of one device's,
//! a device's whole history, or everything. Deleting asks first; a whole
//! device, or everything, must be typed out.
//!
//! Both read the session's passphrase (login is unlock): export to open
//! the history, delete because the hub asks for it before destroying keys.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use maud::html;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{hub_problem, Change, Session};
#[allow(unused_imports)]
use crate::openapi::ProblemDoc;
use crate::pages::{ask, form_from_this_page, message, page, PageSession};
use crate::problem::Problem;
use crate::AppState;

const DAY_MS: u64 = 86_400_000;

/// What the user typed into an optional box: blank is none.
pub(crate) fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// `2026-11-30` as unix milliseconds at 00:00 UTC.
pub(crate) fn day_ms(text: &str) -> Result<u64, Problem> {
    let bad = || Problem::bad_request(format!("{:?} is not a date (YYYY-MM-DD)", text));
    let mut parts = text.splitn(3, '-');
    let mut next = |len: usize| -> Result<i64, Problem> {
        let p = parts.next().filter(|p| p.len() == len).ok_or_else(bad)?;
        p.parse::<i64>().map_err(|_| bad())
    };
    let (y, m, d) = (next(4)?, next(2)?, next(2)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return Err(bad());
    }
    let days = policy::calendar::days_from_civil(y, m as u32, d as u32);
    // 2026-02-31 is no date, though the arithmetic would make one of it.
    if policy::calendar::civil_from_days(days) != (y, m as u32, d as u32) {
        return Err(bad());
    }
    u64::try_from(days).map(|d| d * DAY_MS).map_err(|_| bad())
}

/// A range of days, `until` included, as the hub's `[since_ms, until_ms)`.
fn day_range(
    since: Option<&str>,
    until: Option<&str>,
) -> Result<(Option<u64>, Option<u64>), Problem> {
    let since = since.map(day_ms).transpose()?;
    let until = until.map(|u| day_ms(u).map(|ms| ms + DAY_MS)).transpose()?;
    if let (Some(s), Some(u)) = (since, until) {
        if s >= u {
            return Err(Problem::bad_request("the range ends before it starts"));
        }
    }
    Ok((since, until))
}

/// What has to be typed before a delete goes ahead: the device's id (a
/// range too: an open-ended one is the whole history), `everything` for
/// a wipe.
fn must_type(device: Option<&str>, _ranged: bool) -> Option<String> {
    Some(device.unwrap_or("everything").to_string())
}

pub async fn data_page(
    State(state): State<Arc<AppState>>,
    PageSession(s): PageSession,
) -> Response {
    let devices = ask(&state, json!({"op": "device_list"})).await;
    let devices: Vec<Value> = devices.as_array().cloned().unwrap_or_default();
    let device_options = html! {
        @for d in &devices {
            @let id = d["id"].as_str().unwrap_or_default();
            option value=(id) { (d["name"].as_str().unwrap_or(id)) " (" (id) ")" }
        }
    };
    page(
        "Your data",
        Some(&s.csrf),
        html! {
            h1 { "Your data" }
            section.card {
                h2 { "Export" }
                p { "Your devices' history as a file, opened with your passphrase as it is written. Dates are UTC; leave them empty for all of it." }
                form method="get" action="/data/export" {
                    label { "Device" select name="device" { option value="" { "Every device" } (device_options) } }
                    label { "From" input type="date" name="since"; }
                    label { "Until (included)" input type="date" name="until"; }
                    label { "Format"
                        select name="format" {
                            option value="ndjson" { "NDJSON (one JSON message per line)" }
                            option value="csv" { "CSV (a spreadsheet)" }
                        }
                    }
                    label { "Encrypt the file to an age key (optional)" input type="text" name="encrypt_to" placeholder="age1…" maxlength="200"; }
                    button type="submit" id="export" { "Download" }
                }
            }
            section.card {
                h2 { "Delete" }
                p { "Deleted history is gone for good: its keys are destroyed, so no copy of the disk can read it back. You are asked to confirm first." }
                form method="get" action="/data/delete" {
                    label { "Device" select name="device" { (device_options) option value="*" { "Every device: everything" } } }
                    label { "From (optional)" input type="date" name="since"; }
                    label { "Until, included (optional)" input type="date" name="until"; }
                    button.danger type="submit" id="delete" { "Delete…" }
                }
            }
        },
    )
    .into_response()
}

/// The page's export form: dates, not milliseconds.
#[derive(Deserialize)]
pub struct ExportForm {
    device: Option<String>,
    since: Option<String>,
    until: Option<String>,
    format: Option<String>,
    encrypt_to: Option<String>,
}

pub async fn export_download(
    State(state): State<Arc<AppState>>,
    PageSession(s): PageSession,
    Query(q): Query<ExportForm>,
) -> Response {
    let range = match day_range(given(&q.since), given(&q.until)) {
        Ok(r) => r,
        Err(p) => return (p.status, message("Not exported", &p.detail)).into_response(),
    };
    let spec = ExportSpec {
        device: given(&q.device).map(str::to_string),
        since_ms: range.0,
        until_ms: range.1,
        format: given(&q.format).unwrap_or("ndjson").to_string(),
        encrypt_to: given(&q.encrypt_to).map(str::to_string),
    };
    match stream_export(&state, &s, spec).await {
        Ok(r) => r,
        Err(p) => (p.status, message("Not exported", &p.detail)).into_response(),
    }
}

/// `GET /api/v1/export`: the same download, the range in milliseconds.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportSpec {
    device: Option<String>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
    #[serde(default = "ndjson")]
    format: String,
    encrypt_to: Option<String>,
}

fn ndjson() -> String {
    "ndjson".into()
}

#[utoipa::path(get, path = "/api/v1/export", tag = "dataward", params(ExportSpec), responses((status = 200, description = "The export: NDJSON, CSV, or an age file", content((String = "application/x-ndjson"), (String = "text/csv"), (Vec<u8> = "application/octet-stream"))), (status = 400, description = "Refused: the input, or the hub said no", body = ProblemDoc, content_type = "application/problem+json"), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [])), description = "The history as a download (NDJSON or CSV, optionally age-encrypted), streamed; opened with the session's passphrase.")]
pub async fn api_export(
    State(state): State<Arc<AppState>>,
    s: Session,
    Query(spec): Query<ExportSpec>,
) -> Result<Response, Problem> {
    stream_export(&state, &s, spec).await
}

/// Starts the export and answers once its first bytes (or its end) are
/// there: a refusal (a bad recipient, no such device) is still a proper
/// error, while a long export starts downloading at once. A failure after
/// that cuts the download short, which the browser reports as failed.
async fn stream_export(
    state: &Arc<AppState>,
    s: &Session,
    spec: ExportSpec,
) -> Result<Response, Problem> {
    let passphrase = s.unlock(state)?;
    let (content_type, ext) = match spec.format.as_str() {
        "ndjson" => ("application/x-ndjson", "ndjson"),
        "csv" => ("text/csv; charset=utf-8", "csv"),
        other => {
            return Err(Problem::bad_request(format!(
                "{other:?} is not a format: ndjson or csv"
            )))
        }
    };
    let encrypted = spec.encrypt_to.is_some();
    let request = json!({
        "device": spec.device,
        "since_ms": spec.since_ms,
        "until_ms": spec.until_ms,
        "format": spec.format,
        "encrypt_to": spec.encrypt_to,
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let hub = Arc::clone(&state.hub);
    let task = tokio::spawn(async move { hub.export(request, passphrase, tx).await });
    let first = rx.recv().await;
    let task = if first.is_none() {
        // Done before a byte: an error, or an empty export.
        match task.await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => return Err(hub_problem(e)),
            Err(e) => {
                return Err(Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Failed",
                    format!("the export stopped: {e}"),
                ))
            }
        }
    } else {
        Some(task)
    };
    let chunks =
        futures_util::stream::unfold((first, rx, task), |(first, mut rx, task)| async move {
            if let Some(chunk) = first {
                return Some((Ok(Bytes::from(chunk)), (None, rx, task)));
            }
            if let Some(chunk) = rx.recv().await {
                return Some((Ok(Bytes::from(chunk)), (None, rx, task)));
            }
            let failed = match task?.await {
                Ok(Ok(_)) => return None,
                Ok(Err(e)) => e.message,
                Err(e) => e.to_string(),
            };
            tracing::warn!(error = %failed, "an export download stopped part way");
            Some((Err(std::io::Error::other(failed)), (None, rx, None)))
        });
    let name = format!(
        "dataward-{}.{ext}{}",
        spec.device
            .as_deref()
            .map(|d| d
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
                .collect::<String>())
            .unwrap_or_else(|| "all".into()),
        if encrypted { ".age" } else { "" }
    );
    let mut resp = Body::from_stream(chunks).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if encrypted {
            "application/octet-stream"
        } else {
            content_type
        }),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

#[derive(Deserialize)]
pub struct DeleteQuery {
    device: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// The device, or none for everything (`*`).
fn target(device: &Option<String>) -> Result<Option<&str>, Problem> {
    match given(device) {
        None => Err(Problem::bad_request("choose a device, or every device")),
        Some("*") => Ok(None),
        Some(d) => Ok(Some(d)),
    }
}

fn what_goes(device: Option<&str>, since: Option<&str>, until: Option<&str>) -> String {
    match (device, since, until) {
        (None, _, _) => "the history of every device, and everything waiting to leave".into(),
        (Some(d), None, None) => {
            format!("the whole history of {d} (what it sends next is new again, and held)")
        }
        (Some(d), s, u) => format!(
            "the history of {d} from {} until {} (included, UTC)",
            s.unwrap_or("the start"),
            u.unwrap_or("now")
        ),
    }
}

pub async fn delete_confirm(
    State(_state): State<Arc<AppState>>,
    PageSession(s): PageSession,
    Query(q): Query<DeleteQuery>,
) -> Response {
    let device = match target(&q.device) {
        Ok(d) => d,
        Err(p) => return (p.status, message("Not deleted", &p.detail)).into_response(),
    };
    let (since, until) = (given(&q.since), given(&q.until));
    let ranged = since.is_some() || until.is_some();
    if device.is_none() && ranged {
        return (
            StatusCode::BAD_REQUEST,
            message(
                "Not deleted",
                "A range is for one device; everything is deleted whole.",
            ),
        )
            .into_response();
    }
    if let Err(p) = day_range(since, until) {
        return (p.status, message("Not deleted", &p.detail)).into_response();
    }
    let typed = must_type(device, ranged);
    page(
        "Delete?",
        Some(&s.csrf),
        html! {
            h1 { "Delete for good?" }
            p { "This deletes " strong { (what_goes(device, since, until)) } ". It cannot be undone." }
            form method="post" action="/data/delete" {
                input type="hidden" name="csrf" value=(s.csrf);
                input type="hidden" name="device" value=(device.unwrap_or("*"));
                input type="hidden" name="since" value=(since.unwrap_or_default());
                input type="hidden" name="until" value=(until.unwrap_or_default());
                @if let Some(t) = &typed {
                    label { "Type " code { (t) } " to confirm" input type="text" name="confirm" id="confirm" autocomplete="off" required; }
                } @else {
                    input type="hidden" name="confirm" value="";
                }
                button.danger type="submit" id="confirm-delete" { "Delete" }
                " "
                a href="/data" { "Cancel" }
            }
        },
    )
    .into_response()
}

#[derive(Deserialize)]
pub struct DeleteForm {
    csrf: String,
    device: Option<String>,
    since: Option<String>,
    until: Option<String>,
    #[serde(default)]
    confirm: String,
}

pub async fn delete_submit(
    State(state): State<Arc<AppState>>,
    PageSession(s): PageSession,
    headers: HeaderMap,
    Form(f): Form<DeleteForm>,
) -> Response {
    if let Some(refused) = form_from_this_page(&headers, &f.csrf, &s) {
        return refused;
    }
    let done = async {
        let device = target(&f.device)?;
        let (since_ms, until_ms) = day_range(given(&f.since), given(&f.until))?;
        delete(&state, &s, device, since_ms, until_ms, &f.confirm).await
    }
    .await;
    match done {
        Ok(report) => page(
            "Deleted",
            Some(&s.csrf),
            html! {
                h1 { "Deleted" }
                (report_list(&report))
                p { a.button href="/data" { "Back" } }
            },
        )
        .into_response(),
        Err(p) => (p.status, message("Not deleted", &p.detail)).into_response(),
    }
}

fn report_list(r: &Value) -> maud::Markup {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    html! {
        ul id="report" {
            li { (n(&r["history"]["records"])) " messages (" (n(&r["history"]["bytes"])) " bytes), over " (n(&r["history"]["periods"])) " device-days" }
            li { (n(&r["outbox_entries"])) " messages that were waiting to leave" }
            @if n(&r["fields_forgotten"]) > 0 { li { (n(&r["fields_forgotten"])) " field names forgotten: what the device sends next is held again" } }
            @if let Some(ms) = r["history"]["unreadable_after_ms"].as_f64() { li { "unreadable on disk " (format!("{ms:.0}")) " ms after the delete began" } }
        }
    }
}

/// The delete behind the page and the API: refused unless what
/// [`must_type`] asks for was typed.
async fn delete(
    state: &AppState,
    s: &Session,
    device: Option<&str>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
    confirm: &str,
) -> Result<Value, Problem> {
    let ranged = since_ms.is_some() || until_ms.is_some();
    if device.is_none() && ranged {
        return Err(Problem::bad_request(
            "a range is for one device; everything is deleted whole",
        ));
    }
    if let Some(t) = must_type(device, ranged) {
        if confirm.trim() != t {
            return Err(Problem::bad_request(format!(
                "not confirmed: type {t:?} to delete {}",
                what_goes(device, None, None)
            )));
        }
    }
    let request = match device {
        Some(d) => json!({"op": "delete", "device": d, "since_ms": since_ms, "until_ms": until_ms}),
        None => json!({"op": "wipe", "factory": false}),
    };
    let passphrase = s.unlock(state)?;
    state
        .hub
        .call_unlocked(request, passphrase)
        .await
        .map_err(hub_problem)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct DeleteBody {
    device: Option<String>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
    #[serde(default)]
    confirm: String,
}

/// `POST /api/v1/delete`: `{"device": "plug"}` (or `"*"` for everything),
/// an optional range, and `confirm` as the page asks for it.
#[utoipa::path(post, path = "/api/v1/delete", tag = "dataward", request_body = DeleteBody, responses((status = 200, description = "What was destroyed", body = Object), (status = 400, description = "Refused: the input, or the hub said no", body = ProblemDoc, content_type = "application/problem+json"), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json"), (status = 403, description = "No CSRF token, or a request from another site", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [], "csrf" = [])), description = "Deletes history: a range of one device's, a device's whole history (confirm = its id), or everything (device = *, confirm = everything).")]
pub async fn api_delete(
    State(state): State<Arc<AppState>>,
    Change(s): Change,
    bytes: Bytes,
) -> Result<Json<Value>, Problem> {
    let b: DeleteBody = crate::api::body(&bytes)?;
    let device = target(&b.device)?;
    delete(&state, &s, device, b.since_ms, b.until_ms, &b.confirm)
        .await
        .map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_days_in_utc() {
        assert_eq!(day_ms("1970-01-01").ok(), Some(0));
        assert_eq!(day_ms("2026-11-30").ok(), Some(1_795_996_800_000));
        assert_eq!(day_ms("2024-02-29").ok(), Some(1_709_164_800_000));
        for bad in [
            "",
            "2026-1-30",
            "2026-13-01",
            "30-11-2026",
            "2026-11-30x",
            "1969-12-31",
            "2026-02-31",
        ] {
            assert!(day_ms(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            day_range(Some("2026-11-30"), Some("2026-11-30")).ok(),
            Some((Some(1_795_996_800_000), Some(1_795_996_800_000 + DAY_MS)))
        );
        assert!(day_range(Some("2026-12-01"), Some("2026-11-30")).is_err());
    }

    #[test]
    fn a_whole_device_or_everything_must_be_typed() {
        assert_eq!(must_type(None, false).as_deref(), Some("everything"));
        assert_eq!(must_type(Some("plug"), false).as_deref(), Some("plug"));
        assert_eq!(must_type(Some("plug"), true).as_deref(), Some("plug"));
    }
}
