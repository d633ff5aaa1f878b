//! `GET /api/v1/events`: live updates as server-sent events. Every
//! [`TICK`], the devices' activity is read from the hub, and a `device`
//! event goes out for each device whose last message or connection
//! changed: `{"id", "online", "last_seen_ms", "messages_today"}`. The
//! stream ends with the session. At most [`MAX_STREAMS`] are open at once,
//! so a page opened in many tabs cannot make the hub poll without bound.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::api::Session;
#[allow(unused_imports)]
use crate::openapi::ProblemDoc;
use crate::problem::Problem;
use crate::AppState;

pub const TICK: Duration = Duration::from_secs(2);
pub const MAX_STREAMS: usize = 16;

/// Counts an open stream; the count goes down when the stream is dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The hub's `device_activity` answer, by device id.
pub(crate) fn activity(list: &Value) -> HashMap<String, Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| {
            let id = d["id"].as_str()?.to_string();
            let now = json!({
                "id": id,
                "online": d["online"],
                "last_seen_ms": d["last_seen_ms"],
                "messages_today": d["messages_today"],
            });
            Some((id, now))
        })
        .collect()
}

#[utoipa::path(get, path = "/api/v1/events", tag = "dataward", responses((status = 200, description = "The event stream", content_type = "text/event-stream"), (status = 401, description = "No session", body = ProblemDoc, content_type = "application/problem+json"), (status = 503, description = "Too many streams open", body = ProblemDoc, content_type = "application/problem+json")), security(("session" = [])), description = "Live updates as server-sent events: a `device` event when a device's activity changes.")]
pub async fn events(State(state): State<Arc<AppState>>, s: Session) -> Response {
    let open = state.event_streams.fetch_add(1, Ordering::AcqRel);
    let slot = Slot(Arc::clone(&state.event_streams));
    if open >= MAX_STREAMS {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            "too many live pages are open; close some",
        )
        .into_response();
    }
    let first = state
        .hub
        .call(json!({"op": "device_activity"}))
        .await
        .map(|v| activity(&v))
        .unwrap_or_default();
    let stream = futures_util::stream::unfold(
        (state, s.token, first, Vec::<Event>::new(), slot),
        |(state, token, mut seen, mut ready, slot)| async move {
            loop {
                if let Some(e) = ready.pop() {
                    return Some((Ok::<_, Infallible>(e), (state, token, seen, ready, slot)));
                }
                let mut closing = state.closing.clone();
                tokio::select! {
                    _ = tokio::time::sleep(TICK) => {}
                    // The hub is stopping: the stream ends, the page keeps
                    // what it shows.
                    _ = async {
                        match closing.as_mut() {
                            Some(c) => { let _ = c.wait_for(|closing| *closing).await; }
                            None => std::future::pending::<()>().await,
                        }
                    } => return None,
                }
                if !state.sessions.is_live(&token, Instant::now()) {
                    return None;
                }
                let Ok(list) = state.hub.call(json!({"op": "device_activity"})).await else {
                    continue;
                };
                let now = activity(&list);
                for (id, a) in &now {
                    if seen.get(id) != Some(a) {
                        if let Ok(e) = Event::default().event("device").json_data(a) {
                            ready.push(e);
                        }
                    }
                }
                seen = now;
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
