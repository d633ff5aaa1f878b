use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use super::*;

/// A hub whose passphrase is "right passphrase", and which records the
/// operations it is asked for.
#[derive(Default)]
struct FakeHub {
    set_up: AtomicBool,
    calls: Mutex<Vec<serde_json::Value>>,
}

impl Hub for FakeHub {
    fn health(&self) -> Health {
        Health {
            store_ok: true,
            stages_ok: true,
        }
    }
    fn is_set_up(&self) -> bool {
        self.set_up.load(Ordering::SeqCst)
    }
    fn set_up(&self, _: Zeroizing<String>) -> HubFuture<'_, Result<Zeroizing<String>, HubError>> {
        self.set_up.store(true, Ordering::SeqCst);
        Box::pin(async { Ok(Zeroizing::new("RECOVERY-KEY".to_string())) })
    }
    fn check_passphrase(&self, p: Zeroizing<String>) -> HubFuture<'_, Result<bool, HubError>> {
        Box::pin(async move { Ok(p.as_str() == "right passphrase") })
    }
    fn call(
        &self,
        request: serde_json::Value,
    ) -> HubFuture<'_, Result<serde_json::Value, HubError>> {
        self.calls.lock().expect("lock").push(request.clone());
        Box::pin(async move {
            match request["op"].as_str() {
                Some("fields_approve") if request["device"] == "nope" => Err(HubError {
                    status: 400,
                    message: "no device \"nope\"".into(),
                }),
                _ => Ok(serde_json::json!({ "echo": request })),
            }
        })
    }
    fn call_unlocked(
        &self,
        request: serde_json::Value,
        p: Zeroizing<String>,
    ) -> HubFuture<'_, Result<serde_json::Value, HubError>> {
        let request = self.unlocked(request, &p);
        Box::pin(async move { Ok(serde_json::json!({ "echo": request })) })
    }
    fn export(
        &self,
        request: serde_json::Value,
        p: Zeroizing<String>,
        chunks: tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> HubFuture<'_, Result<serde_json::Value, HubError>> {
        let request = self.unlocked(request, &p);
        Box::pin(async move {
            if request["device"] == "nope" {
                return Err(HubError {
                    status: 400,
                    message: "no device \"nope\"".into(),
                });
            }
            for i in 0..3 {
                let line = format!("{{\"n\":{i}}}\n").into_bytes();
                if chunks.send(line).await.is_err() {
                    break;
                }
            }
            Ok(serde_json::json!({ "records": 3 }))
        })
    }
}

impl FakeHub {
    fn unlocked(&self, request: serde_json::Value, p: &str) -> serde_json::Value {
        let mut request = request;
        request["passphrase"] = p.into();
        self.calls.lock().expect("lock").push(request.clone());
        request
    }
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: serde_json::Value,
}

async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "hub.local");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    Reply {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    }
}

fn app(hub: Arc<FakeHub>, token: Option<&str>) -> Router {
    router(
        hub,
        UiConfig {
            setup_token: token.map(str::to_string),
            secure: false,
            mqtt_port: 1883,
            metrics_token: Some("scraper-token-0123456789abcdef0123".into()),
            closing: None,
        },
    )
    .layer(MockConnectInfo(SocketAddr::from(([192, 0, 2, 1], 5555))))
}

fn cookie_of(r: &Reply) -> String {
    r.headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn healthz_needs_no_login_and_every_response_is_locked_down() {
    let app = app(Arc::new(FakeHub::default()), None);
    let r = send(&app, "GET", "/healthz", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    let csp = r
        .headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(
        r.headers
            .get("x-content-type-options")
            .map(|v| v.as_bytes()),
        Some(&b"nosniff"[..])
    );
    let big = "x".repeat(MAX_BODY_BYTES + 1);
    let r = send(&app, "POST", "/api/v1/session", &[], &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn setup_needs_the_token_once_and_logs_in() {
    let hub = Arc::new(FakeHub::default());
    let app = app(Arc::clone(&hub), Some("T0KEN"));
    let r = send(
        &app,
        "POST",
        "/api/v1/setup",
        &[],
        r#"{"token":"wrong","passphrase":"p"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/problem+json"[..])
    );
    assert_eq!(r.body["status"], 403);
    assert!(!hub.is_set_up());
    let r = send(
        &app,
        "POST",
        "/api/v1/setup",
        &[],
        r#"{"token":"T0KEN","passphrase":"p"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["recovery_key"], "RECOVERY-KEY");
    let set = r
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    // The session works at once.
    let r2 = send(
        &app,
        "GET",
        "/api/v1/status",
        &[("cookie", &cookie_of(&r))],
        "",
    )
    .await;
    assert_eq!(r2.status, StatusCode::OK);
    // A second setup, even with the token: refused.
    let r = send(
        &app,
        "POST",
        "/api/v1/setup",
        &[],
        r#"{"token":"T0KEN","passphrase":"q"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = send(&app, "POST", "/api/v1/setup", &[], "not json").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_api_needs_a_session_and_changes_need_its_csrf_token() {
    let hub = Arc::new(FakeHub::default());
    hub.set_up.store(true, Ordering::SeqCst);
    let app = app(Arc::clone(&hub), None);
    for uri in [
        "/api/v1/status",
        "/api/v1/ledger",
        "/api/v1/statement",
        "/api/v1/fields?pending=true",
    ] {
        let r = send(&app, "GET", uri, &[], "").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{uri}");
        let r = send(&app, "GET", uri, &[("cookie", "dw_session=forged")], "").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{uri}");
    }
    assert!(
        hub.calls.lock().expect("lock").is_empty(),
        "nothing reached the hub"
    );
    let r = send(
        &app,
        "POST",
        "/api/v1/session",
        &[],
        r#"{"passphrase":"right passphrase"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let cookie = cookie_of(&r);
    let csrf = r.body["csrf_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let r = send(
        &app,
        "GET",
        "/api/v1/ledger?since_ms=5&device=plug",
        &[("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["echo"]["op"], "ledger");
    assert_eq!(r.body["echo"]["since_ms"], 5);
    let approve = r#"{"device":"plug","field":"ssid"}"#;
    let r = send(
        &app,
        "POST",
        "/api/v1/fields/approve",
        &[("cookie", &cookie)],
        approve,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "no CSRF token");
    let r = send(
        &app,
        "POST",
        "/api/v1/fields/approve",
        &[
            ("cookie", &cookie),
            ("x-csrf-token", &csrf),
            ("origin", "http://evil.example"),
        ],
        approve,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "a cross-site request");
    let r = send(
        &app,
        "POST",
        "/api/v1/fields/approve",
        &[
            ("cookie", &cookie),
            ("x-csrf-token", &csrf),
            ("origin", "http://hub.local"),
        ],
        approve,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["echo"]["field"], "ssid");
    // The hub's refusal is a problem document with its status.
    let r = send(
        &app,
        "POST",
        "/api/v1/fields/approve",
        &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        r#"{"device":"nope"}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.body["detail"].as_str()),
        (StatusCode::BAD_REQUEST, Some("no device \"nope\""))
    );
    // Logout ends it.
    let r = send(
        &app,
        "DELETE",
        "/api/v1/session",
        &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = send(&app, "GET", "/api/v1/status", &[("cookie", &cookie)], "").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(&app, "GET", "/api/v1/nothing-here", &[], "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn wrong_passphrases_slow_down() {
    let hub = Arc::new(FakeHub::default());
    hub.set_up.store(true, Ordering::SeqCst);
    let app = app(hub, None);
    for _ in 0..throttle::FREE_FAILURES {
        let r = send(
            &app,
            "POST",
            "/api/v1/session",
            &[],
            r#"{"passphrase":"wrong"}"#,
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // Now even the right one waits.
    let r = send(
        &app,
        "POST",
        "/api/v1/session",
        &[],
        r#"{"passphrase":"right passphrase"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
}

async fn logged_in(app: &Router) -> (String, String) {
    let r = send(
        app,
        "POST",
        "/api/v1/session",
        &[],
        r#"{"passphrase":"right passphrase"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let csrf = r.body["csrf_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (cookie_of(&r), csrf)
}

async fn raw_body(app: &Router, uri: &str, cookie: &str) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .uri(uri)
        .header("host", "hub.local")
        .header("cookie", cookie)
        .body(Body::empty())
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, bytes.to_vec())
}

#[tokio::test]
async fn export_and_delete_use_the_sessions_passphrase_and_delete_must_be_confirmed() {
    let hub = Arc::new(FakeHub::default());
    hub.set_up.store(true, Ordering::SeqCst);
    let app = app(Arc::clone(&hub), None);
    let (cookie, csrf) = logged_in(&app).await;
    let (status, body) = raw_body(&app, "/api/v1/export?device=plug&format=csv", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, b"{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n");
    let (status, _) = raw_body(&app, "/api/v1/export?device=nope", &cookie).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a refusal before any byte");
    let (status, _) = raw_body(&app, "/api/v1/export?format=pdf", &cookie).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let change = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    for (body, why) in [
        (r#"{"device":"plug"}"#, "a whole device, not typed"),
        (r#"{"device":"plug","confirm":"plugs"}"#, "mistyped"),
        (
            r#"{"device":"*","confirm":"plug"}"#,
            "everything, not typed",
        ),
        (
            r#"{"device":"*","since_ms":1,"confirm":"everything"}"#,
            "a range of everything",
        ),
        (r#"{"confirm":"everything"}"#, "no device"),
        (
            r#"{"device":"plug","since_ms":0}"#,
            "an open range, not typed",
        ),
    ] {
        let r = send(&app, "POST", "/api/v1/delete", &change, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{why}");
    }
    let r = send(
        &app,
        "POST",
        "/api/v1/delete",
        &[("cookie", cookie.as_str())],
        r#"{"device":"plug","confirm":"plug"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "no CSRF token");
    for body in [
        r#"{"device":"plug","confirm":"plug"}"#,
        r#"{"device":"plug","since_ms":1000,"confirm":"plug"}"#,
        r#"{"device":"*","confirm":"everything"}"#,
    ] {
        let r = send(&app, "POST", "/api/v1/delete", &change, body).await;
        assert_eq!(r.status, StatusCode::OK, "{body}");
    }
    let calls = hub.calls.lock().expect("lock").clone();
    let unlocked: Vec<String> = calls
        .iter()
        .filter(|c| c.get("passphrase").is_some())
        .map(|c| {
            assert_eq!(c["passphrase"], "right passphrase", "{c}");
            format!(
                "{} {}",
                c["op"].as_str().unwrap_or("export"),
                c["device"].as_str().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(
        unlocked,
        [
            "export plug",
            "export nope",
            "delete plug",
            "delete plug",
            "wipe -"
        ]
    );
}

#[tokio::test]
async fn metrics_need_a_session_or_the_scrapers_token() {
    let hub = Arc::new(FakeHub::default());
    hub.set_up.store(true, Ordering::SeqCst);
    let app = app(Arc::clone(&hub), None);
    let r = send(&app, "GET", "/metrics", &[], "").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(
        &app,
        "GET",
        "/metrics",
        &[("authorization", "Bearer wrong")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(hub.calls.lock().expect("lock").is_empty(), "nothing read");
    let (status, body) = {
        let req = Request::builder()
            .uri("/metrics")
            .header("host", "hub.local")
            .header("authorization", "Bearer scraper-token-0123456789abcdef0123")
            .body(Body::empty())
            .expect("request");
        let resp = app.clone().oneshot(req).await.expect("response");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    };
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("dataward_login_failures_total 0"), "{body}");
    let (cookie, _) = logged_in(&app).await;
    let (status, _) = raw_body(&app, "/metrics", &cookie).await;
    assert_eq!(status, StatusCode::OK);
}
