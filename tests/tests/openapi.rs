//! The API's OpenAPI document, as the running gateway serves it: valid
//! against the OpenAPI 3.1 schema (checked by `openapi-spec-validator`,
//! which the test script installs), and covering every `/api/v1` route
//! the UI's router answers.

use anyhow::{Context, Result};
use dataward_tests::*;

#[test]
fn the_openapi_document_is_valid_openapi_3_1_and_complete() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, None, ""))?;
    let got = http(gw.http, "GET", "/api/v1/openapi.json", &[], b"")?;
    assert_eq!(
        got.status, 200,
        "no session needed: it describes routes, not data"
    );
    let doc = got.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &got.body)?;
    let validate = |file: &std::path::Path| {
        std::process::Command::new("openapi-spec-validator")
            .args(["--schema", "3.1"])
            .arg(file)
            .output()
            .context("running openapi-spec-validator (scripts/test.sh installs it)")
    };
    // The validator does refuse: a document without `info` fails.
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"openapi":"3.1.0","paths":{}}"#)?;
    assert!(!validate(&broken)?.status.success());
    let out = validate(&file)?;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every route is documented, with the methods it answers.
    for (path, method) in [
        ("/api/v1/setup", "post"),
        ("/api/v1/session", "post"),
        ("/api/v1/session", "get"),
        ("/api/v1/session", "delete"),
        ("/api/v1/status", "get"),
        ("/api/v1/statement", "get"),
        ("/api/v1/ledger", "get"),
        ("/api/v1/ledger/verify", "get"),
        ("/api/v1/ledger/summary", "get"),
        ("/api/v1/ledger/received", "get"),
        ("/api/v1/fields", "get"),
        ("/api/v1/fields/approve", "post"),
        ("/api/v1/destinations", "get"),
        ("/api/v1/devices", "get"),
        ("/api/v1/devices", "post"),
        ("/api/v1/devices/{id}", "get"),
        ("/api/v1/devices/{id}", "delete"),
        ("/api/v1/devices/{id}/sharing", "get"),
        ("/api/v1/devices/{id}/sharing", "put"),
        ("/api/v1/devices/{id}/sharing/preview", "post"),
        ("/api/v1/events", "get"),
        ("/api/v1/export", "get"),
        ("/api/v1/delete", "post"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
        let real = http(
            gw.http,
            &method.to_uppercase(),
            &path.replace("{id}", "plug"),
            &[],
            b"{}",
        )?;
        assert_ne!(
            real.status, 404,
            "{method} {path} is documented but not routed"
        );
    }
    assert!(gw.stop()?.success());
    Ok(())
}
