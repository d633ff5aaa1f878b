//! The overview: what left the home in the last 7 days, per destination
//! (who receives it, why, how many messages per day as an SVG chart drawn
//! here, which fields), the devices that shared the most, what waits for
//! the user's decision (held fields, new destinations, dead letters), and
//! whether the record checks out.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use serde_json::{json, Value};

use crate::pages::{ask, page, PageSession};
use crate::AppState;

const DAY_MS: u64 = 86_400_000;

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
    let since = (now - now % DAY_MS).saturating_sub(6 * DAY_MS);
    let summary = ask(&state, json!({"op": "ledger_summary", "since_ms": since})).await;
    let statement = ask(&state, json!({"op": "statement"})).await;
    let held = ask(&state, json!({"op": "fields", "pending": true})).await;
    let verdict = ask(&state, json!({"op": "ledger_verify"})).await;
    let destinations = ask(&state, json!({"op": "destinations"})).await;
    let status = ask(&state, json!({"op": "status"})).await;
    let new_destinations: Vec<String> = destinations
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["approved"] == false)
        .filter_map(|d| d["name"].as_str().map(str::to_string))
        .collect();
    let dead_letters: Vec<(String, u64)> = status["destinations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| Some((d["name"].as_str()?.to_string(), d["dead_letters"].as_u64()?)))
        .filter(|(_, n)| *n > 0)
        .collect();
    // The devices that shared the most, by messages that left.
    let mut per_device: BTreeMap<String, u64> = BTreeMap::new();
    for row in summary.as_array().into_iter().flatten() {
        if row["field"].as_str().is_some_and(str::is_empty) {
            *per_device
                .entry(row["device"].as_str().unwrap_or_default().to_string())
                .or_default() += row["count"].as_u64().unwrap_or(0);
        }
    }
    let mut top: Vec<(String, u64)> = per_device.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(5);
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
            @if !top.is_empty() {
                section.card {
                    h2 { "The devices that shared the most" }
                    ol { @for (d, n) in &top { li { a href={"/devices/" (crate::device_page::urlencode(d))} { (d) } ": " (n) @if *n == 1 { " message" } @else { " messages" } } } }
                }
            }
            section.card #decisions {
                h2 { "Needs your decision" }
                @if held.is_empty() && new_destinations.is_empty() && dead_letters.is_empty() {
                    p { "Nothing: no new field or destination waits, and every destination takes what is sent." }
                }
                @if !held.is_empty() {
                    p {
                        @if held.len() == 1 { "1 new field is held until you decide. " }
                        @else { (held.len()) " new fields are held until you decide. " }
                        a href="/fields" { "Review" }
                    }
                }
                @for d in &new_destinations {
                    p { "New destination " strong { (d) } ": rules for every destination do not reach it until you approve it on the hub (" code { "dataward destinations approve " (d) } ")." }
                }
                @for (d, n) in &dead_letters {
                    p.bad { (d) " refused " (n) " messages; they are set aside (dead letters), and the rest flow. See " code { "dataward status" } "." }
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
