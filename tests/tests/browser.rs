//! The web UI in a real browser: Debian's headless chromium, driven
//! through chromedriver with fantoccini, against the real gateway and a
//! real mosquitto cloud. First-run setup with the printed token, the
//! recovery key shown once, a device added in the page (its credentials,
//! read off the page, used by a real MQTT client), its hostile field names
//! and values shown literally (no script runs), approving a field that
//! then reaches the cloud, the record and the statement, logout. Screenshots of each
//! page at phone and desktop widths go to target/ui-screenshots/.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dataward_tests::*;
use fantoccini::{Client, ClientBuilder, Locator};

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser() -> Result<(Driver, Client)> {
    // Two providers are compiled in (see Cargo.toml): name one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port()?;
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting chromedriver (the test script installs chromium-driver)")?;
    let driver = Driver(child);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"],
            "prefs": {
                "download.default_directory": downloads_dir().to_string_lossy(),
                "download.prompt_for_download": false
            }
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        let mut b = ClientBuilder::rustls()?;
        match b.capabilities(caps.clone()).connect(&url).await {
            Ok(c) => return Ok((driver, c)),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    bail!("chromedriver did not answer on port {port}")
}

/// Where the browser saves downloads: a fresh directory per test run.
fn downloads_dir() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dataward-downloads-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(&dir);
        dir
    })
    .clone()
}

/// The element, once the page has it (a form's answer takes a moment:
/// setup and login run an Argon2id).
async fn wait_for(c: &Client, what: Locator<'_>) -> Result<fantoccini::elements::Element> {
    Ok(c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(what)
        .await?)
}

/// Screenshots of the page at phone and desktop widths.
async fn shoot(c: &Client, name: &str) -> Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots");
    std::fs::create_dir_all(&dir)?;
    for (label, w, h) in [("phone", 390, 844), ("desktop", 1280, 900)] {
        c.set_window_size(w, h).await?;
        let png = c.screenshot().await?;
        std::fs::write(dir.join(format!("{name}-{label}.png")), png)?;
    }
    Ok(())
}

/// No alert is open: a script injected through a device string would
/// have opened one.
async fn no_dialog(c: &Client) -> Result<()> {
    if let Ok(text) = c.get_alert_text().await {
        bail!("a dialog opened: {text:?}");
    }
    Ok(())
}

/// Every request the page made went to the hub: nothing a device wrote
/// made the browser fetch from anywhere else.
async fn only_this_site(c: &Client, base: &str) -> Result<()> {
    let urls = c
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href]);",
            vec![],
        )
        .await?;
    let urls: Vec<String> = serde_json::from_value(urls)?;
    assert!(
        urls.len() >= 2,
        "the page loaded its stylesheet at least: {urls:?}"
    );
    for u in &urls {
        if !u.starts_with(base) {
            bail!("the page requested {u}");
        }
    }
    Ok(())
}

const HOSTILE_FIELD: &str = "<img src=x onerror=alert(1)>";
const HOSTILE_VALUE: &str = "</script><script>alert(2)</script>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_review_held_fields_and_approve_in_the_browser() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let policy = write_policy(
        dir.path(),
        "[[rule]]\ndevice = \"*\"\nfield = \"*\"\ndestination = \"*\"\naction = \"share\"\n",
    )?;
    let gw = Gateway::start(
        dir.path(),
        &config_for(
            &data,
            &cloud,
            Some(&policy),
            "recipient = \"Acme Inc.\"\npurpose = \"remote control\"\n",
        ),
    )?;
    let token = gw.setup_token()?;
    let base = format!("http://{}", gw.http);
    let (_driver, c) = browser().await?;

    // Before setup, every page leads to setup.
    c.goto(&format!("{base}/")).await?;
    assert!(c.current_url().await?.path().starts_with("/setup"));
    c.goto(&format!("{base}/setup?token={token}")).await?;
    shoot(&c, "setup").await?;
    for name in ["passphrase", "again"] {
        c.find(Locator::Css(&format!("input[name={name}]")))
            .await?
            .send_keys(PASSPHRASE)
            .await?;
    }
    c.find(Locator::Css("form button[type=submit]"))
        .await?
        .click()
        .await?;
    let recovery = match wait_for(&c, Locator::Id("recovery-key")).await {
        Ok(e) => e.text().await?,
        Err(e) => bail!("no recovery key ({e}); the page: {}", c.source().await?),
    };
    assert_eq!(recovery.trim().len(), 47, "{recovery}");
    shoot(&c, "recovery-key").await?;
    c.find(Locator::Id("saved")).await?.click().await?;
    let h1 = wait_for(&c, Locator::Css("section.card")).await;
    h1?;
    let h1 = c.find(Locator::Css("h1")).await?.text().await?;
    assert_eq!(h1, "What left your home in the last 7 days");

    // Add the device in the browser; its credentials are shown once.
    c.goto(&format!("{base}/devices")).await?;
    c.find(Locator::Css("input[name=name]"))
        .await?
        .send_keys("plug")
        .await?;
    c.find(Locator::Css("form[action='/devices/add'] button"))
        .await?
        .click()
        .await?;
    let id = wait_for(&c, Locator::Id("device-id")).await?.text().await?;
    let password = c.find(Locator::Id("device-password")).await?.text().await?;
    let port = c.find(Locator::Id("mqtt-port")).await?.text().await?;
    assert_eq!(
        (id.as_str(), port.parse::<u16>()?),
        ("plug", gw.mqtt.port())
    );
    let settings = c.find(Locator::Id("settings")).await?.text().await?;
    assert!(
        settings.contains(&format!("-p {port} -i plug -u plug -P '{password}'")),
        "connection settings ready to copy: {settings}"
    );
    shoot(&c, "device-added").await?;
    let plug = DeviceCreds { id, password };
    c.goto(&format!("{base}/devices")).await?;
    let listed = c.find(Locator::Css("main table")).await?.text().await?;
    assert!(listed.contains("plug"), "{listed}");
    shoot(&c, "devices").await?;

    // A hostile device: a field named like markup, a value that closes a script.
    let (cloud_sub, mut cloud_events) = cloud_subscriber(&cloud, "home/#", "sub-browser").await?;
    let payload = serde_json::json!({ HOSTILE_FIELD: HOSTILE_VALUE, "power": 12 }).to_string();
    publish_each(&gw, &plug, &[payload])?;
    c.goto(&format!("{base}/fields")).await?;
    no_dialog(&c).await?;
    let fields: Vec<String> = {
        let mut out = Vec::new();
        for cell in c.find_all(Locator::Css("td.field")).await? {
            out.push(cell.text().await?);
        }
        out
    };
    assert!(
        fields.iter().any(|f| f == HOSTILE_FIELD),
        "shown literally: {fields:?}"
    );
    let samples = c.find_all(Locator::Css("td.sample")).await?;
    let mut seen_value = false;
    for s in samples {
        seen_value |= s.text().await?.contains(HOSTILE_VALUE);
    }
    assert!(seen_value, "the value is shown literally");
    assert!(
        c.find_all(Locator::Css("main img")).await?.is_empty(),
        "no element was injected"
    );
    shoot(&c, "fields").await?;
    no_dialog(&c).await?;
    only_this_site(&c, &base).await?;

    // Approve `power` only; the cloud then receives exactly it.
    c.find(Locator::Css(
        "form:has(input[name=field][value=power]) button",
    ))
    .await?
    .click()
    .await?;
    // The form's answer is a new page: read its rows once it is there (an
    // element of the old page goes stale under the reader).
    let mut states: Vec<String> = Vec::new();
    for _ in 0..100 {
        let mut rows = Vec::new();
        let mut stale = false;
        for row in c.find_all(Locator::Css("tbody tr")).await? {
            match row.text().await {
                Ok(t) => rows.push(t),
                Err(_) => stale = true,
            }
        }
        states = rows;
        if !stale
            && states
                .iter()
                .any(|r| r.contains("power") && r.contains("approved"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        states
            .iter()
            .any(|r| r.contains("power") && r.contains("approved")),
        "{states:?}"
    );
    let again = serde_json::json!({ HOSTILE_FIELD: HOSTILE_VALUE, "power": 13 }).to_string();
    publish_each(&gw, &plug, &[again])?;
    let got = collect(
        Some(&cloud_sub),
        &mut cloud_events,
        Duration::from_secs(10),
        |g| !g.is_empty(),
    )
    .await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(String::from_utf8_lossy(&got[0].1), r#"{"power":13}"#);

    // The record and the statement say so; no page runs the device's script.
    c.goto(&format!("{base}/ledger")).await?;
    let record = c.find(Locator::Css("main")).await?.text().await?;
    assert!(record.contains("approved power"), "{record}");
    shoot(&c, "record").await?;
    c.goto(&format!("{base}/ledger?destination=vendor_cloud&days=1"))
        .await?;
    let verdict = c.find(Locator::Id("verdict")).await?.text().await?;
    assert!(verdict.contains("checks out"), "{verdict}");
    c.find(Locator::LinkText("What did vendor_cloud receive?"))
        .await?
        .click()
        .await?;
    let received = wait_for(&c, Locator::Css("h1")).await?.text().await?;
    assert_eq!(received, "What vendor_cloud received in the last 30 days");
    shoot(&c, "received").await?;
    c.goto(&format!("{base}/statement")).await?;
    let statement = c.find(Locator::Css("main")).await?.text().await?;
    assert!(statement.contains("plug → vendor_cloud"), "{statement}");
    shoot(&c, "statement").await?;
    let jsonld = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const a = document.querySelector('a[href=\"/statement.jsonld\"]');
             fetch(a.href).then(r => r.json()).then(done, e => done('failed: ' + e));",
            vec![],
        )
        .await?;
    assert!(jsonld.get("@context").is_some(), "{jsonld}");
    c.goto(&format!("{base}/")).await?;
    let overview = c.find(Locator::Css("main")).await?.text().await?;
    assert!(
        overview.contains("vendor_cloud") && overview.contains("power"),
        "what left shows before its hour closes: {overview}"
    );
    assert!(
        overview.contains("plug: 1 message\n") || overview.ends_with("plug: 1 message"),
        "the devices that shared the most: {overview}"
    );
    let decisions = c.find(Locator::Id("decisions")).await?.text().await?;
    assert!(decisions.contains("1 new field is held"), "{decisions}");
    shoot(&c, "overview").await?;
    no_dialog(&c).await?;

    // The device page: its fields (the hostile name literally), the grid,
    // and the preview following an edit before it is saved.
    c.goto(&format!("{base}/devices/plug")).await?;
    no_dialog(&c).await?;
    let sent = c.find(Locator::Css("main")).await?.text().await?;
    assert!(
        sent.contains(HOSTILE_FIELD) && sent.contains(HOSTILE_VALUE),
        "{sent}"
    );
    assert!(c.find_all(Locator::Css("main img")).await?.is_empty());
    let row = "table.grid tr:has(input[value=power])";
    c.find(Locator::Css(&format!("{row} select")))
        .await?
        .select_by_value("round")
        .await?;
    c.find(Locator::Css(&format!("{row} input.params")))
        .await?
        .send_keys("step = 5")
        .await?;
    let mut shown = String::new();
    for _ in 0..100 {
        shown = c
            .find(Locator::Css("[data-destination=vendor_cloud] pre.payload"))
            .await?
            .text()
            .await?;
        if shown == r#"{"power":15}"# {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shown, r#"{"power":15}"#, "the preview follows the edit");
    let decided = c
        .find(Locator::Css("[data-destination=vendor_cloud] ul.decisions"))
        .await?
        .text()
        .await?;
    assert!(
        decided.contains("power round · rule r-"),
        "each field names its rule: {decided}"
    );
    shoot(&c, "device").await?;
    no_dialog(&c).await?;
    only_this_site(&c, &base).await?;
    c.find(Locator::Id("save-sharing")).await?.click().await?;
    let saved = wait_for(&c, Locator::Id("saved")).await?.text().await?;
    assert!(saved.contains("policy version 2"), "{saved}");
    publish_each(
        &gw,
        &plug,
        &[serde_json::json!({ HOSTILE_FIELD: "x", "power": 13 }).to_string()],
    )?;
    let got = collect(
        Some(&cloud_sub),
        &mut cloud_events,
        Duration::from_secs(10),
        |g| !g.is_empty(),
    )
    .await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        String::from_utf8_lossy(&got[0].1),
        r#"{"power":15}"#,
        "as previewed"
    );

    // Export in the browser: the download holds the three messages.
    c.goto(&format!("{base}/data")).await?;
    shoot(&c, "data").await?;
    let downloads = downloads_dir();
    c.find(Locator::Css(
        "form[action='/data/export'] select[name=device]",
    ))
    .await?
    .select_by_value("plug")
    .await?;
    c.find(Locator::Id("export")).await?.click().await?;
    let file = downloads.join("dataward-plug.ndjson");
    let mut lines = Vec::new();
    for _ in 0..100 {
        if let Ok(text) = std::fs::read_to_string(&file) {
            lines = text.lines().map(str::to_string).collect();
            if lines.len() == 3 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lines.len(), 3, "{lines:?}");
    let first: serde_json::Value = serde_json::from_str(&lines[0])?;
    assert_eq!(first["payload"][HOSTILE_FIELD], HOSTILE_VALUE, "{first}");

    // Delete the device's history: asked first, the name typed, then a report.
    c.goto(&format!("{base}/data")).await?;
    c.find(Locator::Css(
        "form[action='/data/delete'] select[name=device]",
    ))
    .await?
    .select_by_value("plug")
    .await?;
    c.find(Locator::Id("delete")).await?.click().await?;
    wait_for(&c, Locator::Id("confirm"))
        .await?
        .send_keys("plug")
        .await?;
    shoot(&c, "delete-confirm").await?;
    c.find(Locator::Id("confirm-delete")).await?.click().await?;
    let report = wait_for(&c, Locator::Id("report")).await?.text().await?;
    assert!(report.contains("3 messages"), "{report}");
    let empty = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/data/export?device=plug').then(r => r.text()).then(done, e => done('failed: ' + e));",
            vec![],
        )
        .await?;
    assert_eq!(empty, serde_json::json!(""), "the export is now empty");
    no_dialog(&c).await?;

    // A page of another site posts a form to the hub while the session is
    // live: refused (no cookie goes with it, and its origin is foreign).
    let forged = format!(
        "data:text/html,<form method=post action='{base}/devices/add'>\
         <input name=csrf value=x><input name=name value=evil><input name=preset value=generic>\
         </form><script>document.forms[0].submit()</script>"
    );
    c.goto(&forged).await?;
    // The form did go: the browser is on the hub's answer, which is the
    // login page (the cookie stayed home) or a refusal.
    let mut landed = String::new();
    for _ in 0..50 {
        landed = c.current_url().await?.to_string();
        if landed.starts_with(&base) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        landed.ends_with("/login") || landed.ends_with("/devices/add"),
        "{landed}"
    );
    let devices = cli_json(&data, &["device", "list"])?;
    assert!(
        !devices.to_string().contains("evil"),
        "a cross-site form added a device: {devices}"
    );
    c.goto(&format!("{base}/devices")).await?;

    // Logout, and the pages lead to login. The logout's answer is awaited
    // (it redirects to /login): a navigation started before it lands
    // would cancel the form's request.
    c.find(Locator::Css("nav form button"))
        .await?
        .click()
        .await?;
    wait_for(&c, Locator::Css("form[action='/login']")).await?;
    c.goto(&format!("{base}/fields")).await?;
    assert_eq!(c.current_url().await?.path(), "/login");
    shoot(&c, "login").await?;
    c.close().await?;
    assert!(gw.stop()?.success());
    Ok(())
}
