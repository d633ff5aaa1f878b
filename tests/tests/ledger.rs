//! The egress ledger end to end: three real mosquitto clouds; what the
//! ledger says each received (messages, fields, digests) is checked
//! against what each actually received; then every act of control leaves
//! its entry.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use dataward_tests::*;
use rumqttc::QoS;

fn destination(name: &str, cloud: &Cloud, extra: &str) -> String {
    format!(
        "\n[[destination]]\nname = \"{name}\"\nurl = \"{}\"\ntopic_prefix = \"{name}/\"\n{extra}",
        cloud.url()
    )
}

/// d(0) = 32 zero bytes, d(n) = SHA-256(d(n-1) ‖ payload n): as the ledger
/// documents it, computed here from the cloud's own copies (with the
/// `sha256sum` tool, so that nothing of the gateway's code is trusted).
fn digest(payloads: &[Vec<u8>]) -> Result<String> {
    let mut d = [0u8; 32];
    for p in payloads {
        let mut input = d.to_vec();
        input.extend_from_slice(p);
        let mut child = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(&input)?;
        }
        let out = child.wait_with_output()?;
        let hex = String::from_utf8(out.stdout)?;
        let hex = hex
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        for (i, byte) in d.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
        }
    }
    Ok(d.iter().map(|b| format!("{b:02x}")).collect())
}

/// Leaf field names of a JSON payload, as the ledger names them.
fn leaves(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(c, &p, out);
            }
        }
        serde_json::Value::Array(a) if !a.is_empty() => {
            for c in a {
                leaves(c, &format!("{prefix}[*]"), out);
            }
        }
        _ => {
            if !out.contains(&prefix.to_string()) {
                out.push(prefix.to_string());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_matches_what_three_clouds_received() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let clouds = [Cloud::start()?, Cloud::start()?, Cloud::start()?];
    let names = ["acme", "utility", "archive"];
    let thermo = add_device(&data, "thermo", "generic")?;
    let plug = add_device(&data, "plug", "generic")?;
    let policy = write_policy(
        dir.path(),
        "[quarantine]\nexempt = [\"thermo\"]\n\n\
         [[rule]]\nname = \"temp-acme\"\ndevice = \"thermo\"\nfield = \"temp\"\ndestination = \"acme\"\naction = \"round\"\nstep = 0.5\n\n\
         [[rule]]\ndevice = \"thermo\"\nfield = \"hum\"\ndestination = \"utility\"\naction = \"share\"\n\n\
         [[rule]]\ndevice = \"plug\"\nfield = \"power\"\ndestination = \"*\"\naction = \"share\"\n\n\
         [[rule]]\ndevice = \"plug\"\nfield = \"ssid\"\ndestination = \"archive\"\naction = \"redact\"\n\n\
         [[rule]]\nname = \"all-to-archive\"\ndevice = \"thermo\"\nfield = \"*\"\ndestination = \"archive\"\naction = \"share\"\n",
    )?;
    let mut config = format!(
        "data_dir = {:?}\npolicy = {:?}\n",
        data.display().to_string(),
        policy.display().to_string()
    );
    config.push_str(&destination(
        "acme",
        &clouds[0],
        "recipient = \"Acme Inc.\"\ncountry = \"US\"\npurpose = \"remote control\"\n",
    ));
    config.push_str(&destination(
        "utility",
        &clouds[1],
        "ledger = \"detailed\"\n",
    ));
    config.push_str(&destination("archive", &clouds[2], ""));
    let gw = Gateway::start(dir.path(), &config)?;
    let mut subs = Vec::new();
    for (cloud, name) in clouds.iter().zip(names) {
        subs.push(cloud_subscriber(cloud, &format!("{name}/#"), &format!("sub-{name}")).await?);
    }
    let mut thermo_msgs = Vec::new();
    let mut plug_msgs = Vec::new();
    for i in 0..12 {
        thermo_msgs.push(format!(
            r#"{{"temp":{}.{},"hum":{},"loc":[52.1,4.{i}],"seq":{i}}}"#,
            20 + i % 3,
            i * 7 % 10,
            40 + i
        ));
        plug_msgs.push(format!(r#"{{"power":{},"ssid":"home-{i}"}}"#, 100 + i));
    }
    publish_each(&gw, &thermo, &thermo_msgs)?;
    publish_each(&gw, &plug, &plug_msgs)?;
    // acme: 12 temps + 12 powers; utility: 12 hums + 12 powers;
    // archive: 12 thermo messages + 12 plug messages.
    let mut received: BTreeMap<(String, String), Vec<Vec<u8>>> = BTreeMap::new();
    for (name, (client, events)) in names.iter().zip(subs.iter_mut()) {
        let got = collect(Some(&*client), events, Duration::from_secs(15), |g| {
            g.len() >= 24
        })
        .await;
        assert_eq!(got.len(), 24, "{name}: {got:?}");
        for (topic, payload) in got {
            let device = topic.split('/').nth(2).unwrap_or_default().to_string();
            received
                .entry((name.to_string(), device))
                .or_default()
                .push(payload);
        }
    }
    // A stop closes the open minute's buckets into the chain.
    assert!(gw.stop()?.success());

    let listing = cli_json(
        &data,
        &["ledger", "--config", &write_config(dir.path(), &config)?],
    )?;
    let entries = listing["entries"].as_array().cloned().unwrap_or_default();
    let mut checked = 0;
    for ((dest, device), payloads) in &received {
        let buckets: Vec<&serde_json::Value> = entries
            .iter()
            .filter(|e| {
                e["kind"] == "egress" && e["destination"] == *dest && e["device"] == *device
            })
            .collect();
        let total: u64 = buckets.iter().filter_map(|b| b["messages"].as_u64()).sum();
        assert_eq!(total, payloads.len() as u64, "{dest}/{device}: {buckets:?}");
        // Each bucket's digest over its share of the cloud's copies, in order.
        let mut at = 0;
        let mut field_counts: BTreeMap<String, u64> = BTreeMap::new();
        for b in &buckets {
            let n = b["messages"].as_u64().unwrap_or(0) as usize;
            let bytes: u64 = payloads[at..at + n].iter().map(|p| p.len() as u64).sum();
            assert_eq!(b["bytes"].as_u64(), Some(bytes), "{dest}/{device}");
            assert_eq!(
                b["digest"].as_str(),
                Some(digest(&payloads[at..at + n])?.as_str()),
                "{dest}/{device}"
            );
            at += n;
            for f in b["fields"].as_array().into_iter().flatten() {
                *field_counts
                    .entry(f["field"].as_str().unwrap_or_default().to_string())
                    .or_default() += f["count"].as_u64().unwrap_or(0);
            }
        }
        // The fields the cloud saw, message by message.
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        for p in payloads {
            let v: serde_json::Value = serde_json::from_slice(p)?;
            let mut names = Vec::new();
            leaves(&v, "", &mut names);
            for n in names {
                *seen.entry(n).or_default() += 1;
            }
        }
        assert_eq!(field_counts, seen, "{dest}/{device}");
        checked += 1;
    }
    assert_eq!(checked, 6);
    // The detailed destination has one entry per message as well.
    let detailed = entries
        .iter()
        .filter(|e| e["kind"] == "message" && e["destination"] == "utility")
        .count();
    assert_eq!(detailed, 24);
    // Rules and actions are named.
    let acme_thermo = entries
        .iter()
        .find(|e| e["kind"] == "egress" && e["destination"] == "acme" && e["device"] == "thermo")
        .cloned()
        .unwrap_or_default();
    assert_eq!(acme_thermo["fields"][0]["rule"], "temp-acme");
    assert_eq!(acme_thermo["fields"][0]["action"], "round");

    let verdict = cli_json(&data, &["ledger", "verify"])?;
    assert_eq!(verdict["intact"], true, "{verdict}");
    let got = cli_json(
        &data,
        &[
            "ledger",
            "received",
            "--destination",
            "acme",
            "--config",
            &write_config(dir.path(), &config)?,
        ],
    )?;
    assert_eq!(got["recipient"], "Acme Inc.");
    let devices = got["devices"].as_array().cloned().unwrap_or_default();
    assert_eq!(devices.len(), 2, "{got}");
    assert_eq!(devices[1]["device"], "thermo");
    assert_eq!(devices[1]["fields"]["temp"]["count"], 12);
    assert!(
        devices[1]["fields"].get("hum").is_none(),
        "acme never got hum"
    );
    // The summary's counts per field agree with the buckets.
    let summary = cli_json(&data, &["ledger", "summary", "--since", "1d"])?;
    let power_acme: u64 = summary
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["destination"] == "acme" && r["field"] == "power")
        .filter_map(|r| r["count"].as_u64())
        .sum();
    assert_eq!(power_acme, 12);
    // And the statement says it in words.
    let statement = cli_ok(
        &data,
        &["statement", "--config", &write_config(dir.path(), &config)?],
    )?;
    assert!(
        statement.contains("thermo → acme (Acme Inc., US, purpose: remote control): temp, rounded to steps of 0.5; nothing else."),
        "{statement}"
    );
    let ld = cli_ok(
        &data,
        &[
            "statement",
            "--json-ld",
            "--config",
            &write_config(dir.path(), &config)?,
        ],
    )?;
    let ld: serde_json::Value = serde_json::from_str(&ld)?;
    let acme = ld["@graph"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| {
            h["dpv:hasRecipient"]["dpv:hasName"] == "Acme Inc."
                && h["dpv:hasDataSubject"]["dpv:hasName"] == "thermo"
        })
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        acme["dpv:hasPurpose"]["dpv:hasDescription"], "remote control",
        "{ld}"
    );
    assert_eq!(acme["dpv:hasPersonalData"][0]["dpv:hasName"], "temp");
    Ok(())
}

fn write_config(dir: &std::path::Path, config: &str) -> Result<String> {
    let p = dir.join("cli-config.toml");
    std::fs::write(&p, config)?;
    Ok(p.to_string_lossy().into_owned())
}

/// Every act of control leaves its entry: policy applied, device added
/// and removed, field and destination approved, export, delete, wipe,
/// outbox entries dropped over the quota, commands relayed and refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_act_of_control_is_recorded() -> Result<()> {
    let (dir, data, mut cloud) = scratch()?;
    // The plug receives the command; it need not be connected.
    add_device(&data, "plug", "tasmota")?;
    let spare = add_device(&data, "spare", "generic")?;
    init_keys(&data)?;
    let policy = write_policy(
        dir.path(),
        "[[rule]]\ndevice = \"*\"\nfield = \"*\"\ndestination = \"*\"\naction = \"share\"\n\n\
         [[command]]\ndevice = \"plug\"\ndestination = \"vendor_cloud\"\ntopic = \"cmnd/plug/POWER\"\n",
    )?;
    let config = config_for(
        &data,
        &cloud,
        Some(&policy),
        "[store]\noutbox_max_entries = 2\n",
    );
    let gw = Gateway::start(dir.path(), &config)?;
    gw.wait_for_log("uplink connected", Duration::from_secs(10))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A command allowed, one refused.
    let (cc, mut ce) = connect({
        let mut o = rumqttc::MqttOptions::new("vendor", "127.0.0.1", cloud.port);
        o.set_keep_alive(Duration::from_secs(30));
        o
    })
    .await?;
    cc.publish("home/cmd/cmnd/plug/POWER", QoS::AtLeastOnce, false, "ON")
        .await?;
    cc.publish("home/cmd/cmnd/plug/Upgrade", QoS::AtLeastOnce, false, "x")
        .await?;
    let _ = stragglers(None, &mut ce, Duration::from_millis(800)).await;
    // A new field held, then approved.
    publish_each(&gw, &spare, &[r#"{"x":1}"#.to_string()])?;
    cli_ok(&data, &["fields", "approve", "spare", "x"])?;
    // The cloud goes away: over the quota of 2, the oldest are dropped.
    cloud.stop()?;
    let burst: Vec<String> = (0..5).map(|i| format!(r#"{{"x":{i}}}"#)).collect();
    publish_each(&gw, &spare, &burst)?;
    let pass = passphrase_file(&data)?;
    let pass = pass.to_string_lossy();
    let out = dir.path().join("export.ndjson");
    cli_ok(
        &data,
        &[
            "export",
            "--passphrase-file",
            &pass,
            "-o",
            &out.to_string_lossy(),
        ],
    )?;
    cli_ok(
        &data,
        &["delete", "--device", "spare", "--passphrase-file", &pass],
    )?;
    cli_ok(&data, &["device", "remove", "spare"])?;
    cli_ok(&data, &["policy", "apply", &policy.to_string_lossy()])?;
    cli_ok(&data, &["wipe", "--passphrase-file", &pass])?;
    assert!(gw.stop()?.success());
    // A destination added later, then approved.
    let config2 = format!(
        "{config}\n[[destination]]\nname = \"second\"\nurl = \"{}\"\n",
        cloud.url()
    );
    let c2 = dir.path().join("c2.toml");
    std::fs::write(&c2, &config2)?;
    cli_ok(
        &data,
        &[
            "destinations",
            "approve",
            "second",
            "--config",
            &c2.to_string_lossy(),
        ],
    )?;

    let listing = cli_json(&data, &["ledger"])?;
    let kinds: Vec<String> = listing["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    for kind in [
        "policy_applied",
        "device_added",
        "device_removed",
        "fields_approved",
        "destination_approved",
        "export",
        "deleted",
        "outbox_dropped",
        "command_relayed",
        "command_refused",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} entry in {kinds:?}"
        );
    }
    let entries = listing["entries"].as_array().cloned().unwrap_or_default();
    let wipe = entries
        .iter()
        .find(|e| e["kind"] == "deleted" && e["device"].is_null())
        .cloned()
        .unwrap_or_default();
    assert!(
        wipe["by"].as_str().unwrap_or_default().contains("uid"),
        "{wipe}"
    );
    let export = entries
        .iter()
        .find(|e| e["kind"] == "export")
        .cloned()
        .unwrap_or_default();
    assert_eq!(export["format"], "ndjson");
    let added = entries
        .iter()
        .filter(|e| e["kind"] == "device_added")
        .count();
    assert_eq!(added, 2);
    if !cli_json(&data, &["ledger", "verify"])?["intact"]
        .as_bool()
        .unwrap_or(false)
    {
        bail!("the chain does not verify");
    }
    Ok(())
}
