//! One device's page: what it sends (fields, their type, a recent value,
//! held ones approvable), the sharing grid (fields × destinations, each
//! cell an action with its parameters), the preview of what each
//! destination receives of its last message, what left per day, and
//! removing it. Without JavaScript the grid saves by form; with it
//! (`/static/app.js`), the preview follows every edit.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::pages::{ask, form_from_this_page, message, page, PageSession};
use crate::sharing::{self, GridBody};
use crate::AppState;

const DAY_MS: u64 = 86_400_000;

/// The actions a cell offers, and the parameters each takes.
const ACTIONS: &[(&str, &str)] = &[
    ("share", ""),
    ("drop", ""),
    ("redact", ""),
    ("round", "step = 0.5"),
    (
        "bucket",
        "edges = [18, 65], labels = [\"minor\", \"adult\", \"senior\"]",
    ),
    ("truncate_time", "unit = \"hour\""),
    ("coarsen_location", "decimals = 2  or  geohash = 5"),
    ("rate_limit", "interval = \"1m\""),
    ("seal", "(none: your key)  or  recipient = \"age1…\""),
    ("aggregate", "fn = \"mean\", window = \"1h\""),
    ("pseudonymize", ""),
];

/// What a value looks like, from its JSON text.
fn kind_of(value: &str) -> &'static str {
    match value.trim_start().as_bytes().first() {
        Some(b'"') => "text",
        Some(b't' | b'f') => "yes/no",
        Some(b'n') => "null",
        Some(b'{') => "object",
        Some(b'[') => "list",
        Some(b'-' | b'0'..=b'9') => "number",
        _ => "raw",
    }
}

fn str_of<'v>(v: &'v Value, k: &str) -> &'v str {
    v[k].as_str().unwrap_or_default()
}

/// "3 min ago", from milliseconds.
pub(crate) fn ago(then_ms: u64, now_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

#[derive(Deserialize)]
pub struct Saved {
    saved: Option<u64>,
}

pub async fn device_page(
    State(state): State<Arc<AppState>>,
    PageSession(s): PageSession,
    Path(id): Path<String>,
    Query(q): Query<Saved>,
) -> Response {
    let info = match state.hub.call(json!({"op": "device_show", "id": id})).await {
        Ok(v) => v,
        Err(e) => {
            return (StatusCode::NOT_FOUND, message("No such device", &e.message)).into_response()
        }
    };
    let now = crate::api::now_ms();
    let activity = crate::events::activity(&ask(&state, json!({"op": "device_activity"})).await);
    let active = activity.get(&id).cloned().unwrap_or(Value::Null);
    let fields = ask(&state, json!({"op": "fields", "device": id})).await;
    let fields: Vec<Value> = fields["fields"].as_array().cloned().unwrap_or_default();
    let dests = ask(&state, json!({"op": "destinations"})).await;
    let dests: Vec<String> = dests
        .as_array()
        .or_else(|| dests["destinations"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|d| d["name"].as_str().map(str::to_string))
        .collect();
    // The grid is drawn only from a policy read in full: drawn empty, a
    // save would remove the device's rules.
    let own = match sharing::text_in_force(&state)
        .await
        .and_then(|(text, version)| {
            policy::edit::device_rules(&text, &id)
                .map(|own| (own, version))
                .map_err(|e| crate::problem::Problem::bad_request(e.to_string()))
        }) {
        Ok(own) => own,
        Err(p) => {
            return (
                p.status,
                message(
                    "The policy could not be read",
                    &format!("{} (reload to try again)", p.detail),
                ),
            )
                .into_response()
        }
    };
    let (own, base) = own;
    let preview = state
        .hub
        .call(json!({"op": "policy_preview", "device": id, "last": true}))
        .await;
    let since = (now - now % DAY_MS).saturating_sub(6 * DAY_MS);
    let summary = ask(&state, json!({"op": "ledger_summary", "since_ms": since})).await;

    // The grid's rows: what the device sent, then fields only its rules name.
    let mut names: Vec<String> = fields
        .iter()
        .map(|f| str_of(f, "field").to_string())
        .collect();
    for extra in own.cells.iter().map(|c| &c.field).chain(&own.not_stored) {
        if !names.contains(extra) {
            names.push(extra.clone());
        }
    }
    let values: BTreeMap<String, String> = preview
        .as_ref()
        .ok()
        .and_then(|p| p["values"].as_array())
        .into_iter()
        .flatten()
        .map(|v| {
            (
                str_of(v, "field").to_string(),
                str_of(v, "value").to_string(),
            )
        })
        .collect();
    let effective = |field: &str, dest: &str| -> Option<String> {
        let p = preview.as_ref().ok()?;
        let out = p["destinations"]
            .as_array()?
            .iter()
            .find(|o| o["destination"] == dest)?;
        let f = out["fields"]
            .as_array()?
            .iter()
            .find(|f| f["generic"] == field)?;
        Some(str_of(f, "action").to_string())
    };
    // Messages per day and destination, the last 7 days.
    let mut timeline: BTreeMap<u64, BTreeMap<String, u64>> = BTreeMap::new();
    for row in summary.as_array().into_iter().flatten() {
        if row["device"] == id.as_str() && str_of(row, "field").is_empty() {
            *timeline
                .entry(row["day"].as_u64().unwrap_or(0))
                .or_default()
                .entry(str_of(row, "destination").to_string())
                .or_default() += row["count"].as_u64().unwrap_or(0);
        }
    }

    let grid = html! {
        form #sharing method="post" action={"/devices/" (id) "/sharing"} data-device=(id) data-csrf=(s.csrf) {
            input type="hidden" name="csrf" value=(s.csrf);
            input type="hidden" name="base" value=(base);
            @for (j, d) in dests.iter().enumerate() { input type="hidden" name={"d" (j)} value=(d); }
            div.scroll {
                table.grid {
                    thead { tr { th { "Field" } @for d in &dests { th { "To " (d) } } th { "Don't store" } } }
                    tbody {
                        @for (i, name) in names.iter().enumerate() {
                            tr {
                                @let nameable = policy::edit::grid_can_name(name);
                                th.field scope="row" { (name) @if nameable { input type="hidden" name={"f" (i)} value=(name); } }
                                @if !nameable {
                                    td colspan=(dests.len() + 1) { "Its name reads as a wildcard (it has *, $ or \"): only a rule written in the policy file can decide it." }
                                }
                                @for (j, d) in dests.iter().enumerate().filter(|_| nameable) {
                                    @let cell = own.cells.iter().find(|c| &c.field == name && &c.destination == d);
                                    @let chosen = cell.and_then(|c| c.action.as_deref()).unwrap_or("");
                                    td {
                                        select name={"a" (i) "_" (j)} aria-label={(name) " to " (d)} {
                                            option value="" selected[chosen.is_empty()] {
                                                "— other rules"
                                                @if let Some(e) = effective(name, d) { ": " (e) }
                                            }
                                            @for (a, _) in ACTIONS { option value=(a) selected[chosen == *a] { (a) } }
                                        }
                                        input.params type="text" name={"p" (i) "_" (j)} value=(cell.map(|c| c.params.as_str()).unwrap_or_default()) placeholder="parameters" aria-label={"parameters for " (name) " to " (d)};
                                    }
                                }
                                @if nameable { td { input type="checkbox" name={"n" (i)} checked[own.not_stored.contains(name)] aria-label={"don't store " (name)}; } }
                            }
                        }
                    }
                }
            }
            label { "Keep this device's history for (e.g. 30d, forever, none; empty: the default)"
                input type="text" name="retention" value=(own.retention.as_deref().unwrap_or_default()) maxlength="20"; }
            button type="submit" id="save-sharing" { "Save as a new policy version" }
            details {
                summary { "Actions and their parameters" }
                dl.actions { @for (a, p) in ACTIONS { dt { (a) } dd { @if p.is_empty() { "no parameters" } @else { code { (p) } } } } }
            }
        }
    };
    let name = str_of(&info, "name").to_string();
    page(
        &name,
        Some(&s.csrf),
        html! {
            h1 { (name) }
            p.meta {
                span.field { (id) } " · " (str_of(&info, "preset")) " · "
                @match active["online"].as_bool() {
                    Some(true) => span.ok #online { "online" },
                    _ => span #online { "offline" },
                }
                @if let Some(t) = active["last_seen_ms"].as_u64() { " · last message " (ago(t, now)) }
                @if let Some(n) = active["messages_today"].as_u64() { " · " (n) " messages today" }
            }
            @if let Some(v) = q.saved { p.ok id="saved" { "Saved: policy version " (v) " is in force." } }
            section.card {
                h2 { "What it sends" }
                @if fields.is_empty() { p { "Nothing yet since it was added." } }
                @else {
                    div.scroll { table {
                        thead { tr { th { "Field" } th { "Type" } th { "Recent value" } th { "Messages" } th { "State" } } }
                        tbody {
                            @for f in &fields {
                                @let fname = str_of(f, "field");
                                @let value = values.get(fname).map(String::as_str).or(f["sample"].as_str());
                                tr.held[f["held"] == true] {
                                    td.field { (fname) }
                                    td { (value.map(kind_of).unwrap_or("")) }
                                    td.sample { (value.unwrap_or("")) }
                                    td { (f["seen_since_start"].as_u64().unwrap_or(0)) }
                                    td {
                                        @if f["approved"] == true { "approved" }
                                        @else {
                                            @if f["held"] == true { "held " } @else { "new " }
                                            form.inline method="post" action="/fields/approve" {
                                                input type="hidden" name="csrf" value=(s.csrf);
                                                input type="hidden" name="device" value=(id);
                                                input type="hidden" name="field" value=(fname);
                                                input type="hidden" name="back" value={"/devices/" (id)};
                                                button type="submit" { "Approve" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    } }
                }
            }
            section.card {
                h2 { "Sharing" }
                p { "Each cell decides what that field becomes for that destination. "
                    "“Other rules” leaves it to your policy's wider rules; a field no rule shares does not leave." }
                (grid)
            }
            section.card #preview {
                h2 { "What each destination receives" }
                (preview_markup(&preview))
            }
            section.card {
                h2 { "What left, per day" }
                @if timeline.is_empty() { p { "Nothing left in the last 7 days." } }
                @else {
                    table {
                        thead { tr { th { "Day (UTC)" } th { "Destination" } th { "Messages" } } }
                        tbody { @for (day, per) in timeline.iter().rev() { @for (d, n) in per {
                            tr { td { (day_text(*day)) } td { (d) } td { (n) } }
                        } } }
                    }
                }
            }
            section.card {
                h2 { "Remove this device" }
                form method="post" action={"/devices/" (id) "/remove"} {
                    input type="hidden" name="csrf" value=(s.csrf);
                    label.choice { input type="radio" name="history" value="keep" checked; " Keep its history (export or delete it later)" }
                    label.choice { input type="radio" name="history" value="delete"; " Delete its history too, for good" }
                    label { "To delete its history, type " code { (id) } input type="text" name="confirm" autocomplete="off"; }
                    button.danger type="submit" id="remove" { "Remove " (name) }
                }
            }
            script src="/static/app.js" {}
        },
    )
    .into_response()
}

/// The preview as the server first draws it; the script redraws the same
/// elements.
fn preview_markup(preview: &Result<Value, crate::HubError>) -> Markup {
    match preview {
        Err(e) => html! { p #preview-status { "No preview: " (e.message) } },
        Ok(p) => html! {
            p #preview-status { "On its last message (topic " code { (str_of(p, "topic")) } "), under the policy in force." }
            @for out in p["destinations"].as_array().into_iter().flatten() {
                div.destination data-destination=(str_of(out, "destination")) {
                    h3 { (str_of(out, "destination")) @if out["new_destination"] == true { " (new: not approved)" } }
                    pre.payload { (out["payload"].as_str().unwrap_or("(nothing is sent)")) }
                    ul.decisions {
                        @for f in out["fields"].as_array().into_iter().flatten() {
                            li { span.field { (str_of(f, "field")) } " " (str_of(f, "action")) " · " (f["rule"].as_str().unwrap_or("no rule: not shared")) }
                        }
                    }
                }
            }
        },
    }
}

/// Days since 1970 as `2026-11-30`.
pub(crate) fn day_text(day: u64) -> String {
    policy::calendar::date_of_day(day as i64)
}

pub async fn sharing_submit(
    State(state): State<Arc<AppState>>,
    PageSession(s): PageSession,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let csrf = pairs
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    if let Some(refused) = form_from_this_page(&headers, csrf, &s) {
        return refused;
    }
    let saved = match GridBody::from_form(&pairs) {
        Ok(body) => {
            let base = body.base;
            match body.into_edit(&id) {
                Ok(edit) => sharing::save(&state, &edit, base).await,
                Err(p) => Err(p),
            }
        }
        Err(p) => Err(p),
    };
    match saved {
        Ok(v) => Redirect::to(&format!(
            "/devices/{}?saved={}",
            urlencode(&id),
            v["version"].as_u64().unwrap_or(0)
        ))
        .into_response(),
        Err(p) => (
            p.status,
            page(
                "Not saved",
                Some(&s.csrf),
                html! {
                    h1 { "Not saved" }
                    p.bad #error { (p.detail) }
                    p { "Nothing changed: the policy in force is the one before. " a href={"/devices/" (urlencode(&id))} { "Back to the device" } }
                },
            ),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
pub struct RemoveForm {
    csrf: String,
    #[serde(default)]
    history: String,
    #[serde(default)]
    confirm: String,
}

pub async fn remove_submit(
    State(state): State<Arc<AppState>>,
    PageSession(s): PageSession,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(f): Form<RemoveForm>,
) -> Response {
    if let Some(refused) = form_from_this_page(&headers, &f.csrf, &s) {
        return refused;
    }
    match sharing::remove(&state, &s, &id, f.history == "delete", &f.confirm).await {
        Ok(done) => page(
            "Removed",
            Some(&s.csrf),
            html! {
                h1 { "Removed " (id) }
                p { "Its password no longer works, and its connections were closed." }
                @if done["deleted"].is_null() { p { "Its history is kept: export or delete it under " a href="/data" { "Your data" } "." } }
                @else { p { "Its history was deleted: " (done["deleted"]["history"]["records"].as_u64().unwrap_or(0)) " messages." } }
                p { a.button href="/devices" { "Devices" } }
            },
        )
        .into_response(),
        Err(p) => (p.status, message("Not removed", &p.detail)).into_response(),
    }
}

/// A path segment, percent-encoded (device ids are plain, but the URL is
/// built from what the browser sent).
pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_paths_and_days_read_right() {
        assert_eq!(day_text(0), "1970-01-01");
        assert_eq!(day_text(20_787), "2026-11-30");
        assert_eq!(day_text(19_782), "2024-02-29");
        assert_eq!(kind_of("\"a\""), "text");
        assert_eq!(kind_of("-1.5"), "number");
        assert_eq!(kind_of("true"), "yes/no");
        assert_eq!(urlencode("a b/<"), "a%20b%2F%3C");
        assert_eq!(ago(0, 61_000), "1 min ago");
    }
}
