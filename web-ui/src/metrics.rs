//! `GET /metrics`: Prometheus text. What the hub counted since it started
//! (messages in, policy evaluations, and per destination what was
//! forwarded, withheld, waits in the outbox and was set aside), connected
//! devices, and wrong passphrases. It says how much, never what: no field
//! name or value. Still it needs a session, or the `Authorization: Bearer`
//! token the config's `[http] metrics_token` sets for a scraper.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::api::Session;
use crate::problem::Problem;
use crate::AppState;

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A metric family: name, type, help, and its value (or how to read it).
type Family<V> = (&'static str, &'static str, &'static str, V);
/// How a per-destination family reads its value from a destination's status.
type ReadDestination = fn(&Value) -> u64;

/// The text for `status` (the hub's `status` answer) and the login
/// failures counted here.
pub fn render(status: &Value, login_failures: u64) -> String {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let mut out = String::new();
    let hub: [Family<u64>; 7] = [
        (
            "dataward_messages_in_total",
            "counter",
            "Messages devices published, since start.",
            n(&status["messages_in"]),
        ),
        (
            "dataward_policy_evaluations_total",
            "counter",
            "Policy evaluations, since start.",
            n(&status["policy_evaluations"]),
        ),
        (
            "dataward_malformed_messages_total",
            "counter",
            "Payloads that looked like JSON but did not parse, since start.",
            n(&status["malformed_messages"]),
        ),
        (
            "dataward_devices_connected",
            "gauge",
            "Devices with a live connection.",
            n(&status["devices"]["connected"]),
        ),
        (
            "dataward_devices_known",
            "gauge",
            "Devices registered.",
            n(&status["devices"]["known"]),
        ),
        (
            "dataward_held_fields",
            "gauge",
            "New fields held until the user decides.",
            n(&status["held_fields"]),
        ),
        (
            "dataward_login_failures_total",
            "counter",
            "Wrong passphrases at login, since start.",
            login_failures,
        ),
    ];
    for (metric, kind, help, value) in hub {
        family(&mut out, metric, kind, help);
        let _ = writeln!(out, "{metric} {value}");
    }
    let dests: Vec<&Value> = status["destinations"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let per_destination: [Family<ReadDestination>; 5] = [
        (
            "dataward_forwarded_total",
            "counter",
            "Messages queued for the destination, since start.",
            |d| d["forwarded"].as_u64().unwrap_or(0),
        ),
        (
            "dataward_withheld_total",
            "counter",
            "Messages of which the policy let nothing go to the destination, since start.",
            |d| d["withheld"].as_u64().unwrap_or(0),
        ),
        (
            "dataward_outbox_depth",
            "gauge",
            "Messages waiting for the destination's acknowledgement.",
            |d| d["backlog"].as_u64().unwrap_or(0),
        ),
        (
            "dataward_dead_letters",
            "gauge",
            "Messages the destination kept refusing, set aside.",
            |d| d["dead_letters"].as_u64().unwrap_or(0),
        ),
        (
            "dataward_destination_connected",
            "gauge",
            "1 while connected to the destination's broker.",
            |d| u64::from(d["connected"] == true),
        ),
    ];
    for (metric, kind, help, value) in per_destination {
        family(&mut out, metric, kind, help);
        for d in &dests {
            let name = label(d["name"].as_str().unwrap_or_default());
            let _ = writeln!(out, "{metric}{{destination=\"{name}\"}} {}", value(d));
        }
    }
    out
}

/// A session, or the scraper's bearer token.
async fn allowed(state: &Arc<AppState>, req: Request<axum::body::Body>) -> bool {
    if let Some(token) = state.metrics_token.as_deref() {
        let sent = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if sent.is_some_and(|s| crate::session::same(s, token)) {
            return true;
        }
    }
    let (mut parts, _) = req.into_parts();
    Session::from_request_parts(&mut parts, state).await.is_ok()
}

pub async fn metrics(
    State(state): State<Arc<AppState>>,
    req: Request<axum::body::Body>,
) -> Response {
    if !allowed(&state, req).await {
        let mut resp = Problem::unauthorized().into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"dataward metrics\""),
        );
        return resp;
    }
    let status = match state.hub.call(json!({"op": "status"})).await {
        Ok(s) => s,
        Err(e) => {
            return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Busy", e.message).into_response()
        }
    };
    let text = render(
        &status,
        state.throttle.failures_total.load(Ordering::Relaxed),
    );
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_has_every_family_and_escapes_labels() {
        let status = json!({
            "messages_in": 7, "policy_evaluations": 7, "malformed_messages": 1,
            "devices": {"connected": 2, "known": 3}, "held_fields": 4,
            "destinations": [{"name": "a\"b\\c", "forwarded": 5, "withheld": 2, "backlog": 1, "dead_letters": 0, "connected": true}],
        });
        let text = render(&status, 9);
        for line in [
            "dataward_messages_in_total 7",
            "dataward_policy_evaluations_total 7",
            "dataward_forwarded_total{destination=\"a\\\"b\\\\c\"} 5",
            "dataward_withheld_total{destination=\"a\\\"b\\\\c\"} 2",
            "dataward_outbox_depth{destination=\"a\\\"b\\\\c\"} 1",
            "dataward_destination_connected{destination=\"a\\\"b\\\\c\"} 1",
            "dataward_devices_connected 2",
            "dataward_login_failures_total 9",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // Every sample line belongs to a family declared before it.
        let mut declared = Vec::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap_or_default().to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap_or_default();
                assert!(declared.iter().any(|d| d == name), "{l}");
            }
        }
    }
}
