//! dataward's HTTP face.
//!
//! - [`Hub`]: what the UI needs from the running gateway. `gateway`
//!   implements it; this crate knows nothing of storage or the broker.
//! - [`router`]: the axum router the gateway mounts.
//!
//! This first cut serves `GET /healthz` only; the pages and `/api/v1` grow
//! here behind the same trait.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

/// The hub's state as the health check reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Health {
    /// False when the store cannot write: devices' messages are refused.
    pub store_ok: bool,
    /// False when a stage of the gateway (broker, committer, an uplink...)
    /// has failed.
    pub stages_ok: bool,
}

/// What the web UI needs from the running hub.
pub trait Hub: Send + Sync + 'static {
    fn health(&self) -> Health;
}

pub fn router(hub: Arc<dyn Hub>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(hub)
}

/// Liveness for supervisors. It says nothing about devices or data, so it
/// needs no login.
async fn healthz(State(hub): State<Arc<dyn Hub>>) -> (StatusCode, Json<serde_json::Value>) {
    let h = hub.health();
    let ok = h.store_ok && h.stages_ok;
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status = if ok { "ok" } else { "degraded" };
    (code, Json(serde_json::json!({ "status": status })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    struct Fixed(bool, bool);
    impl Hub for Fixed {
        fn health(&self) -> Health {
            Health {
                store_ok: self.0,
                stages_ok: self.1,
            }
        }
    }

    async fn status(store_ok: bool, stages_ok: bool) -> StatusCode {
        let app = router(Arc::new(Fixed(store_ok, stages_ok)));
        let req = Request::builder()
            .uri("/healthz")
            .body(Body::empty())
            .expect("request");
        app.oneshot(req).await.expect("response").status()
    }

    #[tokio::test]
    async fn healthz_reflects_the_store() {
        assert_eq!(status(true, true).await, StatusCode::OK);
        assert_eq!(status(false, true).await, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status(true, false).await, StatusCode::SERVICE_UNAVAILABLE);
    }
}
