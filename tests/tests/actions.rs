//! The actions that need more than one message, a pair of values or
//! someone else's key, end to end against a real mosquitto: `aggregate`
//! (one message per window, sent by the gateway's tick), `coarsen_location`
//! (decimals, and a geohash), `rate_limit`, and `seal` to an age
//! recipient, opened with the `age` tool.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use base64::Engine;
use dataward_tests::*;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

const WINDOW_MS: u64 = 4000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_arrive_once_per_window_with_the_right_values() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let meter = add_device(&data, "meter", "generic")?;
    let policy = write_policy(
        dir.path(),
        "[[rule]]\ndevice = \"meter\"\nfield = \"wh\"\ndestination = \"vendor_cloud\"\naction = \"aggregate\"\nfn = \"sum\"\nwindow = \"4s\"\n\n\
         [[rule]]\ndevice = \"meter\"\nfield = \"w\"\ndestination = \"vendor_cloud\"\naction = \"aggregate\"\nfn = \"max\"\nwindow = \"4s\"\n\n\
         [[rule]]\ndevice = \"meter\"\nfield = \"status\"\ndestination = \"vendor_cloud\"\naction = \"share\"\n",
    )?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;
    let (sub, mut events) = cloud_subscriber(&cloud, "home/#", "sub-aggregate").await?;

    // Start just after a window opens, so that all three land in it.
    while now_ms() % WINDOW_MS > 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = now_ms() - now_ms() % WINDOW_MS;
    publish_each(
        &gw,
        &meter,
        &[
            r#"{"wh":1.5,"w":300,"status":"ok"}"#.into(),
            r#"{"wh":2.25,"w":1200}"#.into(),
            r#"{"wh":0.25,"w":800}"#.into(),
        ],
    )?;
    if now_ms() >= start + WINDOW_MS {
        bail!("publishing took longer than the window; the machine is too slow for this test");
    }
    // The raw `status` at once; one aggregate after the window ends (the
    // tick runs every second), and nothing more for the next window, in
    // which nothing was sent.
    let got = collect(
        Some(&sub),
        &mut events,
        Duration::from_millis(3 * WINDOW_MS),
        |_| false,
    )
    .await;
    let payloads: Vec<String> = got
        .iter()
        .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert_eq!(payloads.len(), 2, "{payloads:?}");
    assert_eq!(payloads[0], r#"{"status":"ok"}"#);
    assert_eq!(
        payloads[1],
        format!(
            r#"{{"wh":4,"w":1200,"$window":{{"start":{start},"end":{}}}}}"#,
            start + WINDOW_MS
        )
    );
    assert_eq!(got[1].0, "home/devices/meter/state");
    assert!(gw.stop()?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locations_coarsened_rates_limited_and_a_value_sealed_to_someone_else() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let tracker = add_device(&data, "tracker", "generic")?;
    let key_file = dir.path().join("friend.key");
    let keygen = std::process::Command::new("age-keygen")
        .args(["-o", &key_file.to_string_lossy()])
        .output()?;
    if !keygen.status.success() {
        bail!("age-keygen: {}", String::from_utf8_lossy(&keygen.stderr));
    }
    let key_text = std::fs::read_to_string(&key_file)?;
    let Some(recipient) = key_text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
    else {
        bail!("no public key in {key_text}");
    };
    let policy = write_policy(
        dir.path(),
        &format!(
            "[[rule]]\ndevice = \"tracker\"\nfield = \"pos\"\ndestination = \"vendor_cloud\"\naction = \"coarsen_location\"\ngeohash = 5\n\n\
             [[rule]]\ndevice = \"tracker\"\nfield = \"exact\"\ndestination = \"vendor_cloud\"\naction = \"seal\"\nrecipient = \"{recipient}\"\n\n\
             [[rule]]\ndevice = \"tracker\"\nfield = \"near\"\ndestination = \"vendor_cloud\"\naction = \"coarsen_location\"\ndecimals = 2\n\n\
             [[rule]]\ndevice = \"tracker\"\nfield = \"beat\"\ndestination = \"vendor_cloud\"\naction = \"rate_limit\"\ninterval = \"1h\"\n"
        ),
    )?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;
    let (sub, mut events) = cloud_subscriber(&cloud, "home/#", "sub-geo").await?;
    publish_each(
        &gw,
        &tracker,
        &[
            r#"{"pos":{"lat":52.3702,"lon":4.8952},"exact":[52.370216,4.895168],"beat":1}"#.into(),
            r#"{"near":[52.370216,-4.895168],"beat":2}"#.into(),
        ],
    )?;
    let got = collect(Some(&sub), &mut events, Duration::from_secs(10), |g| {
        g.len() >= 2
    })
    .await;
    assert_eq!(got.len(), 2, "{got:?}");
    // The second: the location to two decimals; `beat` waits an hour.
    assert_eq!(
        String::from_utf8_lossy(&got[1].1),
        r#"{"near":[52.37,-4.90]}"#
    );
    let v: serde_json::Value = serde_json::from_slice(&got[0].1)?;
    assert_eq!(v["pos"], serde_json::json!({"geohash": "u173z"}), "{v}");
    assert_eq!(v["beat"], 1, "the first value of the hour goes");
    let received = String::from_utf8_lossy(&got[0].1);
    assert!(!received.contains("52.37"), "{received}");

    // Each coordinate sealed on its own; the friend opens them with `age`.
    let mut opened = Vec::new();
    for sealed in v["exact"].as_array().into_iter().flatten() {
        let Some(b64) = sealed.as_str().and_then(|s| s.strip_prefix("age.")) else {
            bail!("not sealed to an age recipient: {sealed}");
        };
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64)?;
        let mut age = std::process::Command::new("age")
            .args(["-d", "-i", &key_file.to_string_lossy()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = age.stdin.take() {
            stdin.write_all(&bytes)?;
        }
        let out = age.wait_with_output()?;
        assert!(out.status.success());
        opened.push(String::from_utf8(out.stdout)?);
    }
    assert_eq!(opened, ["52.370216", "4.895168"]);

    // A recipient that only looks like one is refused with its line.
    let bad = recipient.replace(&recipient[10..14], "qqqq");
    let bad_policy = write_policy(
        dir.path(),
        &format!(
            "[[rule]]\ndevice = \"tracker\"\nfield = \"exact\"\ndestination = \"vendor_cloud\"\naction = \"seal\"\nrecipient = \"{bad}\"\n"
        ),
    )?;
    let check = cli(&[
        "policy",
        "check",
        &bad_policy.to_string_lossy(),
        "--data-dir",
        &data.to_string_lossy(),
    ])?;
    if bad != recipient {
        assert_eq!(check.status.code(), Some(2), "{check:?}");
        assert!(String::from_utf8_lossy(&check.stderr).contains("line 1"));
    }
    assert!(gw.stop()?.success());
    Ok(())
}
