//! The quarantine for new fields, end to end: a field a device never sent
//! is held from wildcard rules until the user approves it, then flows; the
//! approval survives a restart; a delete forgets it; no sample reaches the
//! disk.

use std::time::Duration;

use anyhow::Result;
use dataward_tests::*;

const POLICY: &str = "\
[[rule]]
device = \"*\"
field = \"*\"
destination = \"vendor_cloud\"
action = \"share\"

[[rule]]
device = \"*\"
field = \"power\"
destination = \"vendor_cloud\"
action = \"share\"
";

/// Publishes `payload` as `dev` and returns what the cloud received for
/// it (none within `wait`: nothing).
async fn send(
    gw: &Gateway,
    dev: &DeviceCreds,
    sub: &mut (rumqttc::AsyncClient, rumqttc::EventLoop),
    payload: &str,
) -> Result<Option<String>> {
    publish_each(gw, dev, &[payload.to_string()])?;
    let (client, events) = sub;
    let got = collect(Some(&*client), events, Duration::from_secs(3), |g| {
        !g.is_empty()
    })
    .await;
    Ok(got
        .first()
        .map(|(_, p)| String::from_utf8_lossy(p).into_owned()))
}

fn held(data: &std::path::Path) -> Result<Vec<(String, Option<String>)>> {
    let list = cli_json(data, &["fields", "--pending"])?;
    Ok(list["fields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    (
                        f["field"].as_str().unwrap_or_default().to_string(),
                        f["sample"].as_str().map(str::to_string),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_field_stays_held_until_approved_then_flows() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let plug = add_device(&data, "plug", "generic")?;
    init_keys(&data)?;
    let policy = write_policy(dir.path(), POLICY)?;
    let config = config_for(&data, &cloud, Some(&policy), "");
    let gw = Gateway::start(dir.path(), &config)?;
    let mut sub = cloud_subscriber(&cloud, "home/#", "sub-quarantine").await?;

    // `power` is named by a rule: it leaves at once. `ssid` is new.
    let first = r#"{"power":12,"ssid":"home-wifi-4711"}"#;
    assert_eq!(
        send(&gw, &plug, &mut sub, first).await?.as_deref(),
        Some(r#"{"power":12}"#)
    );
    assert_eq!(
        held(&data)?,
        vec![("ssid".to_string(), Some("\"home-wifi-4711\"".to_string()))]
    );
    // The preview says why.
    let p = cli_json(&data, &["policy", "preview", "--device", "plug", "--last"])?;
    let ssid = p["destinations"][0]["fields"]
        .as_array()
        .and_then(|f| f.iter().find(|x| x["field"] == "ssid").cloned());
    assert_eq!(
        ssid.map(|s| s["action"].clone()),
        Some("held".into()),
        "{p}"
    );

    let status = cli_json(&data, &["status"])?;
    assert_eq!(status["held_fields"], 1, "{status}");

    // Approved: it flows.
    let approved = cli_json(&data, &["fields", "approve", "plug", "ssid"])?;
    assert_eq!(approved["approved"][0], "ssid");
    assert_eq!(
        send(&gw, &plug, &mut sub, first).await?.as_deref(),
        Some(r#"{"power":12,"ssid":"home-wifi-4711"}"#)
    );

    // A firmware update adds a field: held again, the rest flows.
    let update = r#"{"power":13,"ssid":"home-wifi-4711","ip":"10.0.0.47"}"#;
    assert_eq!(
        send(&gw, &plug, &mut sub, update).await?.as_deref(),
        Some(r#"{"power":13,"ssid":"home-wifi-4711"}"#)
    );
    // An unknown name is refused with the held ones listed.
    let typo = cli(&[
        "fields",
        "approve",
        "plug",
        "iq",
        "--data-dir",
        &data.to_string_lossy(),
    ])?;
    assert_eq!(typo.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&typo.stderr).contains("ip"));
    assert!(gw.stop()?.success());

    // Stopped: the inventory is on disk, the samples were not. (`ssid` left
    // for the cloud once approved, so it passed through the outbox, which
    // holds what is meant to leave; `ip` never left: only the quarantine's
    // sample ever held it, in memory.)
    assert_eq!(held(&data)?, vec![("ip".to_string(), None)]);
    let mut on_disk = Vec::new();
    for entry in walk(&data)? {
        on_disk.extend(std::fs::read(entry)?);
    }
    let text = String::from_utf8_lossy(&on_disk);
    assert!(
        !text.contains("10.0.0.47"),
        "a held value was written to disk in the clear"
    );

    // Restarted: the approval holds, `ip` is still held.
    let gw = Gateway::start(dir.path(), &config)?;
    assert_eq!(
        send(&gw, &plug, &mut sub, update).await?.as_deref(),
        Some(r#"{"power":13,"ssid":"home-wifi-4711"}"#)
    );
    // Approving everything, with the gateway running, releases `ip` too.
    cli_ok(&data, &["fields", "approve", "plug", "--all"])?;
    assert_eq!(
        send(&gw, &plug, &mut sub, update).await?.as_deref(),
        Some(update)
    );

    // Deleting the device's history forgets its fields: held as new again.
    let pass = passphrase_file(&data)?;
    let deleted = cli_json(
        &data,
        &[
            "delete",
            "--device",
            "plug",
            "--passphrase-file",
            &pass.to_string_lossy(),
        ],
    )?;
    assert_eq!(deleted["fields_forgotten"], 3, "{deleted}");
    assert_eq!(
        send(&gw, &plug, &mut sub, update).await?.as_deref(),
        Some(r#"{"power":13}"#)
    );
    assert!(gw.stop()?.success());
    Ok(())
}

/// Every regular file under `dir`.
fn walk(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(out)
}

/// A destination added to the config after the first start gets nothing
/// from rules for every destination until approved; rules naming it apply
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_destination_waits_for_approval() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let meter = add_device(&data, "meter", "generic")?;
    let policy = write_policy(
        dir.path(),
        "[quarantine]\nexempt = [\"*\"]\n\n\
         [[rule]]\ndevice = \"*\"\nfield = \"*\"\ndestination = \"*\"\naction = \"share\"\n\n\
         [[rule]]\ndevice = \"meter\"\nfield = \"kwh\"\ndestination = \"utility\"\naction = \"share\"\n",
    )?;
    // First start: one destination, approved by that start.
    let first = config_for(&data, &cloud, None, "");
    let gw = Gateway::start(dir.path(), &first)?;
    assert!(gw.stop()?.success());
    let utility = format!(
        "[[destination]]\nname = \"utility\"\nurl = \"{}\"\ntopic_prefix = \"utility/\"\n",
        cloud.url()
    );
    let config = config_for(&data, &cloud, Some(&policy), &utility);
    let listed = cli_json(
        &data,
        &[
            "destinations",
            "--config",
            &write_config(dir.path(), &config)?,
        ],
    )?;
    assert_eq!(listed[1]["name"], "utility");
    assert_eq!(listed[1]["approved"], false, "{listed}");
    let gw = Gateway::start(dir.path(), &config)?;
    gw.wait_for_log("new destination", Duration::from_secs(5))?;
    let mut sub = cloud_subscriber(&cloud, "utility/#", "sub-new-dest").await?;
    let payload = r#"{"kwh":3,"ssid":"home"}"#;
    assert_eq!(
        send(&gw, &meter, &mut sub, payload).await?.as_deref(),
        Some(r#"{"kwh":3}"#)
    );
    cli_ok(&data, &["destinations", "approve", "utility"])?;
    assert_eq!(
        send(&gw, &meter, &mut sub, payload).await?.as_deref(),
        Some(payload)
    );
    assert!(gw.stop()?.success());
    Ok(())
}

/// Writes `config` beside the data directory, for CLI commands that must
/// see the same destinations as the gateway.
fn write_config(dir: &std::path::Path, config: &str) -> Result<String> {
    let p = dir.join("cli-config.toml");
    std::fs::write(&p, config)?;
    Ok(p.to_string_lossy().into_owned())
}
