//! The record and the statement: the ledger's entries, filtered by
//! device, destination and days, with the chain check; what one
//! destination received; the sharing statement in plain words, and as
//! JSON-LD (W3C DPV) to download.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::pages::{ask, message, page, PageSession};
use crate::AppState;

const DAY_MS: u64 = 86_400_000;

#[derive(Deserialize)]
pub struct RecordFilter {
    device: Option<String>,
    destination: Option<String>,
    days: Option<u64>,
}

pub async fn ledger_page(
    State(state): State<Arc<AppState>>,
    PageSession(s): PageSession,
    Query(f): Query<RecordFilter>,
) -> Response {
    let pick = |v: &Option<String>| crate::data_page::given(v).map(str::to_string);
    let (device, destination) = (pick(&f.device), pick(&f.destination));
    let days = f.days.unwrap_or(7).clamp(1, 366);
    let since = crate::api::now_ms().saturating_sub(days * DAY_MS);
    let listing = ask(
        &state,
        json!({"op": "ledger", "since_ms": since, "device": device, "destination": destination}),
    )
    .await;
    let entries: Vec<Value> = listing["entries"].as_array().cloned().unwrap_or_default();
    let verdict = ask(&state, json!({"op": "ledger_verify"})).await;
    let devices = ask(&state, json!({"op": "device_list"})).await;
    let dests = ask(&state, json!({"op": "destinations"})).await;
    let names = |v: &Value, k: &str| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d[k].as_str().map(str::to_string))
            .collect()
    };
    let (device_names, dest_names) = (names(&devices, "id"), names(&dests, "name"));
    page(
        "Record",
        Some(&s.csrf),
        html! {
            h1 { "The record" }
            @if verdict["intact"] == true {
                p.ok #verdict { "The chain checks out: " (verdict["entries"].as_u64().unwrap_or(0)) " entries, none changed or missing." }
            } @else {
                p.bad #verdict { "The record does not check out: " (verdict["reason"].as_str().unwrap_or("unknown")) }
            }
            form.filters method="get" action="/ledger" {
                label { "Device" select name="device" {
                    option value="" { "every device" }
                    @for d in &device_names { option value=(d) selected[device.as_deref() == Some(d.as_str())] { (d) } }
                } }
                label { "Destination" select name="destination" {
                    option value="" { "every destination" }
                    @for d in &dest_names { option value=(d) selected[destination.as_deref() == Some(d.as_str())] { (d) } }
                } }
                label { "Days" input type="number" name="days" min="1" max="366" value=(days); }
                button type="submit" { "Show" }
            }
            @if let Some(d) = &destination {
                p { a href={"/received?destination=" (crate::device_page::urlencode(d))} { "What did " (d) " receive?" } }
            }
            @if entries.is_empty() { p { "Nothing recorded for this choice." } }
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
        "consumer_added" => format!(
            "{} may read local destination {}",
            s("consumer"),
            s("destination")
        ),
        "consumer_removed" => format!(
            "{} no longer reads local destination {}",
            s("consumer"),
            s("destination")
        ),
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
            p { a.button href="/statement.jsonld" download="dataward-statement.jsonld" { "Download (JSON-LD, W3C DPV)" } }
            @if lines.is_empty() { p { "No devices or no destinations: nothing leaves." } }
            ul.statement {
                @for l in &lines { li { (l["text"].as_str().unwrap_or_default()) } }
            }
        },
    )
    .into_response()
}

/// `GET /statement.jsonld`: the statement as JSON-LD, to download.
pub async fn statement_jsonld(
    State(state): State<Arc<AppState>>,
    PageSession(_s): PageSession,
) -> Response {
    match state
        .hub
        .call(json!({"op": "statement", "json_ld": true}))
        .await
    {
        Ok(doc) => {
            let mut resp = serde_json::to_string_pretty(&doc)
                .unwrap_or_default()
                .into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/ld+json"),
            );
            h.insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"dataward-statement.jsonld\""),
            );
            resp
        }
        Err(e) => message("No statement", &e.message),
    }
}

#[derive(Deserialize)]
pub struct ReceivedQuery {
    destination: String,
}

/// What one destination received in the last 30 days: per device, the
/// fields and how, and how many messages.
pub async fn received_page(
    State(state): State<Arc<AppState>>,
    PageSession(s): PageSession,
    Query(q): Query<ReceivedQuery>,
) -> Response {
    let since = crate::api::now_ms().saturating_sub(30 * DAY_MS);
    let got = match state
        .hub
        .call(json!({"op": "ledger_received", "destination": q.destination, "since_ms": since}))
        .await
    {
        Ok(v) => v,
        Err(e) => return message("Nothing to show", &e.message),
    };
    page(
        "Received",
        Some(&s.csrf),
        html! {
            h1 { "What " (q.destination) " received in the last 30 days" }
            p.who { @for k in ["recipient", "country", "purpose"] { @if let Some(v) = got[k].as_str() { (v) " · " } } }
            @let devices = got["devices"].as_array().cloned().unwrap_or_default();
            @if devices.is_empty() { p { "Nothing." } }
            @for d in &devices {
                section.card {
                    h2 { (d["device"].as_str().unwrap_or_default()) }
                    p { (d["messages"].as_u64().unwrap_or(0)) " messages, " (d["bytes"].as_u64().unwrap_or(0)) " bytes" }
                    ul { @for (name, f) in d["fields"].as_object().into_iter().flatten() {
                        li {
                            span.field { (name) } " "
                            (f["actions"].as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                            " · in " (f["count"].as_u64().unwrap_or(0)) " messages"
                        }
                    } }
                }
            }
        },
    )
    .into_response()
}
