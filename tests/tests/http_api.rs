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
    // The link reaches whoever runs `dataward status` too (under systemd,
    // nobody reads the console).
    let link = cli_json(&data, &["status"])?["setup_link"].clone();
    assert!(
        link.as_str()
            .is_some_and(|l| l.ends_with(&format!("/setup?token={token}"))),
        "{link}"
    );

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
    // The CLI sees the keys the web set up; the link is gone.
    let status = cli_json(&data, &["status"])?;
    assert!(status.get("setup_link").is_none(), "{status}");
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

    // Export streams the history the session unlocked; delete needs the
    // device typed out, then the export is empty.
    publish_each(&gw, &plug, &[r#"{"power":13}"#.to_string()])?;
    let export = || {
        api(
            "GET",
            "/api/v1/export?device=plug",
            &[("Cookie", &cookie)],
            "",
        )
    };
    let mut lines = Vec::new();
    for _ in 0..100 {
        let got = export()?;
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
        lines = String::from_utf8_lossy(&got.body)
            .lines()
            .map(str::to_string)
            .collect();
        if lines.len() >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    let last: serde_json::Value = serde_json::from_str(&lines[1])?;
    assert_eq!(
        (last["device"].as_str(), last["payload"]["power"].as_u64()),
        (Some("plug"), Some(13)),
        "{last}"
    );
    let got = export()?;
    assert_eq!(got.header("content-type"), Some("application/x-ndjson"));
    assert!(got
        .header("content-disposition")
        .is_some_and(|d| d.contains("dataward-plug.ndjson")));
    let csv = api(
        "GET",
        "/api/v1/export?device=plug&format=csv",
        &[("Cookie", &cookie)],
        "",
    )?;
    assert_eq!(csv.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&csv.body).lines().count(),
        3,
        "a header and two rows"
    );
    let bad = api(
        "GET",
        "/api/v1/export?encrypt_to=age1nope",
        &[("Cookie", &cookie)],
        "",
    )?;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.header("content-type"), Some("application/problem+json"));
    assert_eq!(api("GET", "/api/v1/export", &[], "")?.status, 401);
    let typo = api(
        "GET",
        "/api/v1/export?device=plgu",
        &[("Cookie", &cookie)],
        "",
    )?;
    assert_eq!(
        typo.status, 400,
        "a device that never was is not an empty file"
    );
    assert!(String::from_utf8_lossy(&typo.body).contains("no device"));
    let change = [("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str())];
    let unconfirmed = api("POST", "/api/v1/delete", &change, r#"{"device":"plug"}"#)?;
    assert_eq!(unconfirmed.status, 400);
    assert_eq!(
        export()?.body.iter().filter(|b| **b == b'\n').count(),
        2,
        "nothing went"
    );
    let deleted = api(
        "POST",
        "/api/v1/delete",
        &change,
        r#"{"device":"plug","confirm":"plug"}"#,
    )?;
    assert_eq!(
        deleted.status,
        200,
        "{}",
        String::from_utf8_lossy(&deleted.body)
    );
    assert_eq!(
        deleted.json()["history"]["records"],
        2,
        "{}",
        deleted.json()
    );
    let empty = export()?;
    assert_eq!((empty.status, empty.body.len()), (200, 0));
    let kinds: Vec<String> = api("GET", "/api/v1/ledger", &[("Cookie", &cookie)], "")?.json()
        ["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{} {}",
                e["kind"].as_str().unwrap_or_default(),
                e["by"].as_str().unwrap_or_default()
            )
        })
        .collect();
    assert!(kinds.contains(&"export web UI".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"deleted web UI".to_string()), "{kinds:?}");

    // The metrics count what happened, for a session only.
    assert_eq!(api("GET", "/metrics", &[], "")?.status, 401);
    let metrics = api("GET", "/metrics", &[("Cookie", &cookie)], "")?;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let value = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    };
    assert_eq!(value("dataward_messages_in_total"), Some(2), "{text}");
    assert_eq!(
        value("dataward_policy_evaluations_total"),
        Some(2),
        "{text}"
    );
    assert_eq!(
        value("dataward_forwarded_total{destination=\"vendor_cloud\"}"),
        Some(1),
        "the first message's only field was held: {text}"
    );
    assert_eq!(value("dataward_login_failures_total"), Some(1), "{text}");
    assert_eq!(value("dataward_devices_connected"), Some(0), "{text}");

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

/// Logs in over the API: (cookie, CSRF token).
fn log_in_api(gw: &Gateway) -> Result<(String, String)> {
    let token = gw.setup_token()?;
    let body = format!(r#"{{"token":"{token}","passphrase":"{PASSPHRASE}"}}"#);
    let done = http(gw.http, "POST", "/api/v1/setup", &[], body.as_bytes())?;
    assert_eq!(done.status, 201);
    let cookie = done.cookie().unwrap_or_default();
    let csrf = done.json()["csrf_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((cookie, csrf))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sharing_grid_live_events_and_removing_a_device_over_http() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let plug = add_device(&data, "plug", "generic")?;
    let policy = write_policy(
        dir.path(),
        "# the user's own comment\n[[rule]]\ndevice = \"*\"\nfield = \"volts\"\ndestination = \"*\"\naction = \"share\"\n",
    )?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;
    let (cookie, csrf) = log_in_api(&gw)?;
    let read = [("Cookie", cookie.as_str())];
    let change = [("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str())];

    // Live events: a device event once the plug publishes.
    let mut events = std::net::TcpStream::connect(gw.http)?;
    std::io::Write::write_all(
        &mut events,
        format!(
            "GET /api/v1/events HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\n\r\n",
            gw.http
        )
        .as_bytes(),
    )?;
    events.set_read_timeout(Some(std::time::Duration::from_secs(15)))?;
    publish_each(&gw, &plug, &[r#"{"power":12,"volts":230}"#.to_string()])?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("event: device") {
        let n = std::io::Read::read(&mut events, &mut buf)?;
        anyhow::ensure!(
            n > 0,
            "the event stream ended: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(text.contains("text/event-stream"), "{text}");
    assert!(
        text.contains(r#""id":"plug""#) && text.contains(r#""messages_today":1"#),
        "{text}"
    );

    // The grid as it stands: the plug's fields, no rules of its own.
    let grid = http(gw.http, "GET", "/api/v1/devices/plug/sharing", &read, b"")?;
    assert_eq!(grid.status, 200);
    let fields: Vec<String> = grid.json()["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["field"].as_str().map(str::to_string))
        .collect();
    assert_eq!(fields, ["power", "volts"]);
    // A preview of an edit changes nothing; a bad parameter is refused.
    let edit = r#"{"fields":["power","volts"],"cells":[{"field":"power","destination":"vendor_cloud","action":"round","params":"step = 5"}]}"#;
    let preview = http(
        gw.http,
        "POST",
        "/api/v1/devices/plug/sharing/preview",
        &change,
        edit.as_bytes(),
    )?;
    assert_eq!(
        preview.status,
        200,
        "{}",
        String::from_utf8_lossy(&preview.body)
    );
    assert_eq!(
        preview.json()["destinations"][0]["payload"],
        r#"{"power":10,"volts":230}"#
    );
    let bad = r#"{"fields":["power"],"cells":[{"field":"power","destination":"vendor_cloud","action":"round","params":"step = \"x\""}]}"#;
    let refused = http(
        gw.http,
        "PUT",
        "/api/v1/devices/plug/sharing",
        &change,
        bad.as_bytes(),
    )?;
    assert_eq!(
        refused.status,
        400,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(
        cli_json(&data, &["policy", "show", "--list"])?
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    // Saved: a new version with the cell, the user's rule and comment kept.
    let saved = http(
        gw.http,
        "PUT",
        "/api/v1/devices/plug/sharing",
        &change,
        edit.as_bytes(),
    )?;
    assert_eq!(
        saved.status,
        200,
        "{}",
        String::from_utf8_lossy(&saved.body)
    );
    let text = cli_ok(&data, &["policy", "show"])?;
    assert!(
        text.contains("# the user's own comment") && text.contains("field = \"volts\""),
        "{text}"
    );
    assert!(text.contains("action = \"round\"\nstep = 5"), "{text}");
    let grid = http(gw.http, "GET", "/api/v1/devices/plug/sharing", &read, b"")?;
    assert_eq!(grid.json()["cells"][0]["params"], "step = 5");
    assert_eq!(grid.json()["base"], 2);
    // A grid drawn from version 1 cannot overwrite version 2 unseen.
    let stale = edit.replace(r#"{"fields""#, r#"{"base":1,"fields""#);
    let conflict = http(
        gw.http,
        "PUT",
        "/api/v1/devices/plug/sharing",
        &change,
        stale.as_bytes(),
    )?;
    assert_eq!(
        conflict.status,
        409,
        "{}",
        String::from_utf8_lossy(&conflict.body)
    );
    // A reload with the policy file unchanged keeps the grid's version.
    signal_pid(gw.pid(), "HUP")?;
    gw.wait_for_log(
        "SIGHUP: policy file unchanged",
        std::time::Duration::from_secs(10),
    )?;
    let after = cli_ok(&data, &["policy", "show"])?;
    assert!(
        after.contains("step = 5"),
        "the grid's rule survived the reload: {after}"
    );
    // A grid without not_stored or retention leaves them as they are.
    let keep = r#"{"fields":["power"],"cells":[],"not_stored":["power"],"retention":"30d"}"#;
    assert_eq!(
        http(
            gw.http,
            "PUT",
            "/api/v1/devices/plug/sharing",
            &change,
            keep.as_bytes()
        )?
        .status,
        200
    );
    let partial = r#"{"fields":["power"],"cells":[{"field":"power","destination":"vendor_cloud","action":"round","params":"step = 5"}]}"#;
    assert_eq!(
        http(
            gw.http,
            "PUT",
            "/api/v1/devices/plug/sharing",
            &change,
            partial.as_bytes()
        )?
        .status,
        200
    );
    let grid = http(gw.http, "GET", "/api/v1/devices/plug/sharing", &read, b"")?.json();
    assert_eq!(
        (grid["not_stored"][0].as_str(), grid["retention"].as_str()),
        (Some("power"), Some("30d")),
        "{grid}"
    );
    // A query the API cannot read is a problem document too.
    let bad = http(gw.http, "GET", "/api/v1/export?since_ms=-1", &read, b"")?;
    assert_eq!(
        (bad.status, bad.header("content-type")),
        (400, Some("application/problem+json"))
    );
    let listed = http(gw.http, "GET", "/api/v1/devices", &read, b"")?.json();
    assert_eq!(listed[0]["messages_today"], 1, "{listed}");

    // A device added over the API works with the password it answers.
    let added = http(
        gw.http,
        "POST",
        "/api/v1/devices",
        &change,
        br#"{"name":"Meter","preset":"generic","id":"meter"}"#,
    )?;
    assert_eq!(
        added.status,
        201,
        "{}",
        String::from_utf8_lossy(&added.body)
    );
    let meter = DeviceCreds {
        id: "meter".into(),
        password: added.json()["password"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    };
    publish_each(&gw, &meter, &[r#"{"volts":231}"#.to_string()])?;
    let summary = http(
        gw.http,
        "GET",
        "/api/v1/ledger/summary?since_ms=0",
        &read,
        b"",
    )?
    .json();
    assert!(
        summary
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["device"] == "meter" && r["field"] == "volts"),
        "{summary}"
    );
    let received = http(
        gw.http,
        "GET",
        "/api/v1/ledger/received?destination=vendor_cloud",
        &read,
        b"",
    )?;
    assert_eq!(received.status, 200);
    assert_eq!(
        http(
            gw.http,
            "GET",
            "/api/v1/ledger/received?destination=nope",
            &read,
            b""
        )?
        .status,
        400
    );
    let jsonld = http(
        gw.http,
        "GET",
        "/api/v1/statement?format=jsonld",
        &read,
        b"",
    )?
    .json();
    assert!(jsonld.get("@context").is_some(), "{jsonld}");

    // Removing the device keeps its history unless asked.
    assert_eq!(
        http(gw.http, "DELETE", "/api/v1/devices/plug", &read, b"")?.status,
        403,
        "without the CSRF token"
    );
    let untyped = http(
        gw.http,
        "DELETE",
        "/api/v1/devices/plug?history=delete",
        &change,
        b"",
    )?;
    assert_eq!(
        untyped.status, 400,
        "deleting its history needs its id typed"
    );
    assert_eq!(
        http(gw.http, "GET", "/api/v1/devices/plug", &read, b"")?.status,
        200,
        "still there"
    );
    let removed = http(
        gw.http,
        "DELETE",
        "/api/v1/devices/plug?history=keep",
        &change,
        b"",
    )?;
    assert_eq!(
        removed.status,
        200,
        "{}",
        String::from_utf8_lossy(&removed.body)
    );
    assert!(removed.json()["deleted"].is_null());
    let left: Vec<String> = http(gw.http, "GET", "/api/v1/devices", &read, b"")?
        .json()
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(left, ["meter"], "the plug is gone");
    let export = http(gw.http, "GET", "/api/v1/export?device=plug", &read, b"")?;
    assert_eq!(
        String::from_utf8_lossy(&export.body).lines().count(),
        1,
        "history kept"
    );
    assert!(gw.stop()?.success());
    Ok(())
}
