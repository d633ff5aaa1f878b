//! The HTTP API against the real gateway: first-run setup with the token
//! the gateway printed (once), login as unlock, the session's CSRF token,
//! reading the ledger and the statement, approving a held field, and the
//! refusals (no session, a forged one, a cross-site request, a wrong
//! passphrase that slows down).

use anyhow::Result;
use dataward_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_login_read_and_approve_over_http() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let plug = add_device(&data, "plug", "generic")?;
    let policy = write_policy(
        dir.path(),
        "[[rule]]\ndevice = \"*\"\nfield = \"*\"\ndestination = \"*\"\naction = \"share\"\n",
    )?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;
    let token = gw.setup_token()?;
    let api = |m: &str, p: &str, h: &[(&str, &str)], b: &str| http(gw.http, m, p, h, b.as_bytes());

    // Nothing without a session; setup only with the token.
    assert_eq!(api("GET", "/api/v1/status", &[], "")?.status, 401);
    let wrong = api(
        "POST",
        "/api/v1/setup",
        &[],
        r#"{"token":"nope","passphrase":"correct horse battery staple"}"#,
    )?;
    assert_eq!(wrong.status, 403);
    assert_eq!(
        wrong.header("content-type"),
        Some("application/problem+json")
    );
    let body = format!(r#"{{"token":"{token}","passphrase":"{PASSPHRASE}"}}"#);
    let done = api("POST", "/api/v1/setup", &[], &body)?;
    assert_eq!(done.status, 201, "{}", String::from_utf8_lossy(&done.body));
    let recovery = done.json()["recovery_key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(recovery.len(), 47, "eight groups of five: {recovery}");
    assert!(done
        .header("set-cookie")
        .is_some_and(|c| c.contains("HttpOnly") && c.contains("SameSite=Strict")));
    assert_eq!(
        api("POST", "/api/v1/setup", &[], &body)?.status,
        409,
        "once only"
    );
    // The CLI sees the keys the web set up.
    let status = cli_json(&data, &["status"])?;
    assert!(
        status["history"]
            .as_str()
            .unwrap_or_default()
            .starts_with("kept"),
        "{status}"
    );

    // Login is unlock.
    assert_eq!(
        api(
            "POST",
            "/api/v1/session",
            &[],
            r#"{"passphrase":"wrong one"}"#
        )?
        .status,
        401
    );
    let login = api(
        "POST",
        "/api/v1/session",
        &[],
        &format!(r#"{{"passphrase":"{PASSPHRASE}"}}"#),
    )?;
    assert_eq!(login.status, 200);
    let cookie = login.cookie().unwrap_or_default();
    let csrf = login.json()["csrf_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let forged = api(
        "GET",
        "/api/v1/status",
        &[("Cookie", "dw_session=0123")],
        "",
    )?;
    assert_eq!(forged.status, 401);
    let status = api("GET", "/api/v1/status", &[("Cookie", &cookie)], "")?;
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["running"], true);
    assert!(status.header("content-security-policy").is_some());

    // A new field, held; approved over HTTP with the CSRF token only.
    publish_each(&gw, &plug, &[r#"{"power":12}"#.to_string()])?;
    let held = api(
        "GET",
        "/api/v1/fields?pending=true",
        &[("Cookie", &cookie)],
        "",
    )?;
    assert_eq!(
        held.json()["fields"][0]["field"],
        "power",
        "{}",
        held.json()
    );
    let approve = r#"{"device":"plug","field":"power"}"#;
    let cross = api(
        "POST",
        "/api/v1/fields/approve",
        &[
            ("Cookie", &cookie),
            ("X-CSRF-Token", &csrf),
            ("Origin", "http://evil.example"),
        ],
        approve,
    )?;
    assert_eq!(cross.status, 403);
    assert_eq!(
        api(
            "POST",
            "/api/v1/fields/approve",
            &[("Cookie", &cookie)],
            approve
        )?
        .status,
        403
    );
    let ok = api(
        "POST",
        "/api/v1/fields/approve",
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
        approve,
    )?;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["approved"][0], "power");
    // The ledger says so, and verifies; the statement reads.
    let ledger = api("GET", "/api/v1/ledger", &[("Cookie", &cookie)], "")?;
    let kinds: Vec<String> = ledger.json()["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(kinds.contains(&"fields_approved".to_string()), "{kinds:?}");
    assert_eq!(
        api("GET", "/api/v1/ledger/verify", &[("Cookie", &cookie)], "")?.json()["intact"],
        true
    );
    let statement = api("GET", "/api/v1/statement", &[("Cookie", &cookie)], "")?;
    assert!(statement.json()["lines"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .contains("plug"));

    // Wrong passphrases slow down, even for the right one after them.
    for _ in 0..3 {
        api("POST", "/api/v1/session", &[], r#"{"passphrase":"guess"}"#)?;
    }
    let slowed = api(
        "POST",
        "/api/v1/session",
        &[],
        &format!(r#"{{"passphrase":"{PASSPHRASE}"}}"#),
    )?;
    assert_eq!(slowed.status, 429);
    assert!(slowed.header("retry-after").is_some());
    // Logout ends the session.
    let out = api(
        "DELETE",
        "/api/v1/session",
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
        "",
    )?;
    assert_eq!(out.status, 204);
    assert_eq!(
        api("GET", "/api/v1/status", &[("Cookie", &cookie)], "")?.status,
        401
    );
    assert!(gw.stop()?.success());
    Ok(())
}
