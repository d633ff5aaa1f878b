//! The devices page: the list, and "Add device", which shows the new
//! device's credentials and connection settings once.

use std::sync::Arc;

use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::pages::{form_from_this_page, message, page, PageSession};
use crate::AppState;

const PRESETS: &[(&str, &str)] = &[
    ("generic", "Generic MQTT device (devices/<id>/…)"),
    ("tasmota", "Tasmota (tele/<id>/…, cmnd/<id>/…)"),
    ("shelly", "Shelly (shellies/<id>/…)"),
    ("zigbee2mqtt", "zigbee2mqtt bridge (<id>/…)"),
];

pub async fn devices_page(
    State(state): State<Arc<AppState>>,
    PageSession(s): PageSession,
) -> Response {
    let list = state
        .hub
        .call(json!({"op": "device_list"}))
        .await
        .unwrap_or(Value::Null);
    let statement = state
        .hub
        .call(json!({"op": "statement"}))
        .await
        .unwrap_or(Value::Null);
    let devices: Vec<Value> = list.as_array().cloned().unwrap_or_default();
    let now = crate::api::now_ms();
    let activity = crate::events::activity(
        &state
            .hub
            .call(json!({"op": "device_activity"}))
            .await
            .unwrap_or(Value::Null),
    );
    let active = |id: &str, k: &str| -> Value {
        activity
            .get(id)
            .map(|a| a[k].clone())
            .unwrap_or(Value::Null)
    };
    let shared_with = |id: &str| -> String {
        statement["lines"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["device"] == id && l["shared"].as_array().is_some_and(|a| !a.is_empty()))
            .filter_map(|l| l["destination"].as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    page(
        "Devices",
        Some(&s.csrf),
        html! {
            h1 { "Devices" }
            @if devices.is_empty() {
                p { "No devices yet. Add one below: it gets its own credentials, and nothing it sends leaves your home until a rule says so." }
            } @else {
                table {
                    thead { tr { th { "Name" } th { "Kind" } th { "Online" } th { "Last message" } th { "Today" } th { "Shared with" } } }
                    tbody {
                        @for d in &devices {
                            @let id = d["id"].as_str().unwrap_or_default();
                            tr {
                                td { a href={"/devices/" (crate::device_page::urlencode(id))} { (d["name"].as_str().unwrap_or_default()) } br; span.field { (id) } }
                                td { (d["preset"].as_str().unwrap_or_default()) }
                                td { @match active(id, "online").as_bool() { Some(true) => span.ok { "online" }, Some(false) => "offline", None => "?" } }
                                td { @if let Some(t) = active(id, "last_seen_ms").as_u64() { (crate::device_page::ago(t, now)) } @else { "—" } }
                                td { (active(id, "messages_today").as_u64().map(|n| n.to_string()).unwrap_or_default()) }
                                td { @let w = shared_with(id); @if w.is_empty() { "nobody" } @else { (w) } }
                            }
                        }
                    }
                }
            }
            h2 { "Add device" }
            form method="post" action="/devices/add" {
                input type="hidden" name="csrf" value=(s.csrf);
                label { "Name" input type="text" name="name" required maxlength="128"; }
                label { "Kind"
                    select name="preset" {
                        @for (value, text) in PRESETS { option value=(value) { (text) } }
                    }
                }
                button type="submit" { "Add device" }
            }
        },
    )
    .into_response()
}

/// Where a preset's device takes its MQTT settings.
fn settings_hint(preset: &str) -> &'static str {
    match preset {
        "tasmota" => "In the device's web page: Configuration → Configure MQTT.",
        "shelly" => "In the device's web page: Internet & Security → Advanced - Developer Settings (enable MQTT).",
        "zigbee2mqtt" => "In zigbee2mqtt's configuration.yaml:",
        _ => "To try it from a shell (mosquitto-clients):",
    }
}

/// The preset's connection settings, ready to copy.
fn settings(preset: &str, host: &str, port: u16, id: &str, password: &str) -> String {
    match preset {
        "tasmota" => format!(
            "Host: {host}\nPort: {port}\nClient: {id}\nUser: {id}\nPassword: {password}\nTopic: {id}\nFull Topic: %prefix%/%topic%/"
        ),
        "shelly" => format!(
            "Server: {host}:{port}\nClient ID: {id}\nUsername: {id}\nPassword: {password}\nCustom MQTT prefix: shellies/{id}"
        ),
        "zigbee2mqtt" => format!(
            "mqtt:\n  server: mqtt://{host}:{port}\n  user: {id}\n  password: '{password}'\n  client_id: {id}\n  base_topic: {id}"
        ),
        _ => format!(
            "mosquitto_pub -h {host} -p {port} -i {id} -u {id} -P '{password}' -t devices/{id}/state -m '{{\"temp\": 21.5}}'"
        ),
    }
}

#[derive(Deserialize)]
pub struct AddForm {
    csrf: String,
    name: String,
    preset: String,
}

pub async fn add_submit(
    State(state): State<Arc<AppState>>,
    PageSession(s): PageSession,
    headers: HeaderMap,
    Form(f): Form<AddForm>,
) -> Response {
    if let Some(refused) = form_from_this_page(&headers, &f.csrf, &s) {
        return refused;
    }
    let added = match state
        .hub
        .call(json!({"op": "device_add", "name": f.name, "preset": f.preset}))
        .await
    {
        Ok(v) => v,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, message("Not added", &e.message)).into_response()
        }
    };
    // The broker is on this hub: the address the browser used, the MQTT port.
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host))
        .unwrap_or("this hub")
        .to_string();
    let list = |k: &str| -> String {
        added[k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    page(
        "Device added",
        Some(&s.csrf),
        html! {
            h1 { "Device added: " (added["name"].as_str().unwrap_or_default()) }
            p.bad { "Save the password now: it is shown this once, and only its hash is kept." }
            table.credentials {
                tbody {
                    tr { th { "Broker" } td.field id="mqtt-host" { (host) } }
                    tr { th { "Port" } td.field id="mqtt-port" { (state.mqtt_port) } }
                    tr { th { "Username and client id" } td.field id="device-id" { (added["id"].as_str().unwrap_or_default()) } }
                    tr { th { "Password" } td.field id="device-password" { (added["password"].as_str().unwrap_or_default()) } }
                    tr { th { "It publishes on" } td.field { (list("publish")) } }
                    tr { th { "It receives commands on" } td.field { (list("subscribe")) } }
                }
            }
            h2 { "Settings for the device" }
            p { (settings_hint(added["preset"].as_str().unwrap_or_default())) }
            pre.settings id="settings" { (settings(
                added["preset"].as_str().unwrap_or_default(),
                &host,
                state.mqtt_port,
                added["id"].as_str().unwrap_or_default(),
                added["password"].as_str().unwrap_or_default(),
            )) }
            p { "Nothing it sends leaves your home until a rule shares it, and its first fields are held until you approve them." }
            p { a.button href="/devices" { "Done" } }
        },
    )
    .into_response()
}
