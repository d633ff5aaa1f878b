//! Delete and wipe, end to end: crypto-shredding leaves no data key for the
//! device, a time range keeps what is outside it byte for byte, what waited
//! to leave goes too, and a wrong passphrase changes nothing.

use std::path::Path;

use anyhow::Result;
use dataward_tests::*;

fn export(data: &Path, device: &str) -> Result<Vec<String>> {
    let pass = passphrase_file(data)?;
    let out = cli_ok(
        data,
        &[
            "export",
            "--device",
            device,
            "--passphrase-file",
            &pass.to_string_lossy(),
        ],
    )?;
    Ok(out.lines().map(str::to_string).collect())
}

#[test]
fn delete_shreds_one_device_and_keeps_the_rest_byte_for_byte() -> Result<()> {
    let (dir, data, mut cloud) = scratch()?;
    let a = add_device(&data, "alpha", "generic")?;
    let b = add_device(&data, "beta", "generic")?;
    init_keys(&data)?;
    let policy = write_policy(dir.path(), SHARE_ALL)?;
    // The cloud is down: what the policy shares waits in the outbox.
    cloud.stop()?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;
    let msgs = |tag: &str| -> Vec<String> {
        (0..10)
            .map(|i| format!(r#"{{"n":{i},"tag":"{tag}"}}"#))
            .collect()
    };
    publish_each(&gw, &a, &msgs("a"))?;
    publish_each(&gw, &b, &msgs("b1"))?;
    std::thread::sleep(std::time::Duration::from_millis(50));
    publish_each(&gw, &b, &msgs("b2"))?;
    let status = cli_json(&data, &["status"])?;
    assert_eq!(status["destinations"][0]["backlog"], 30, "{status}");
    let b_before = export(&data, "beta")?;
    assert_eq!(b_before.len(), 20);

    // A wrong passphrase: exit 2, nothing destroyed.
    let wrong = dir.path().join("wrong.txt");
    std::fs::write(&wrong, "not the passphrase")?;
    let d = data.to_string_lossy().into_owned();
    let out = cli(&[
        "delete",
        "--device",
        "alpha",
        "--passphrase-file",
        &wrong.to_string_lossy(),
        "--data-dir",
        &d,
    ])?;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: the passphrase is wrong"
    );
    assert_eq!(export(&data, "alpha")?.len(), 10);

    // The whole of alpha, through the running gateway.
    let pass = passphrase_file(&data)?.to_string_lossy().into_owned();
    let report = cli_json(
        &data,
        &["delete", "--device", "alpha", "--passphrase-file", &pass],
    )?;
    assert_eq!(report["history"]["records"], 10, "{report}");
    assert_eq!(report["history"]["periods"], 1, "{report}");
    assert!(
        report["history"]["bytes"].as_u64().unwrap_or(0) > 10 * 40,
        "{report}"
    );
    assert_eq!(report["outbox_entries"], 10, "{report}");
    assert!(export(&data, "alpha")?.is_empty());
    assert_eq!(export(&data, "beta")?, b_before, "beta untouched");
    let status = cli_json(&data, &["status"])?;
    assert_eq!(
        status["destinations"][0]["backlog"], 20,
        "alpha's entries left the outbox"
    );

    // A time range of beta: the first batch goes, the second stays as it was.
    let first: serde_json::Value = serde_json::from_str(&b_before[0])?;
    let last_of_first: serde_json::Value = serde_json::from_str(&b_before[9])?;
    let since = first["received"].as_str().unwrap_or_default().to_string();
    let until_ms = last_of_first["received_ms"].as_u64().unwrap_or_default() + 1;
    let until = ::gateway::when::rfc3339_ms(until_ms);
    let report = cli_json(
        &data,
        &[
            "delete",
            "--device",
            "beta",
            "--since",
            &since,
            "--until",
            &until,
            "--passphrase-file",
            &pass,
        ],
    )?;
    assert_eq!(report["history"]["records"], 10, "{report}");
    assert_eq!(report["history"]["kept"], 10, "{report}");
    assert_eq!(
        export(&data, "beta")?,
        b_before[10..].to_vec(),
        "the rest, byte for byte"
    );
    assert!(gw.stop()?.success());

    // Inside the store: no data key of alpha remains, nothing of its records.
    let store = ::gateway::store::Store::open(&data)?;
    let history = store.history();
    assert!(history.period_keys("alpha")?.is_empty());
    assert_eq!(history.count("alpha"), 0);
    assert!(!history.period_keys("beta")?.is_empty());
    drop(history);
    drop(store);

    // Factory wipe (gateway stopped): devices, policies and keys go too.
    let report = cli_json(&data, &["wipe", "--factory", "--passphrase-file", &pass])?;
    assert_eq!(report["history"]["records"], 10, "{report}");
    assert_eq!(report["devices_removed"], 2, "{report}");
    assert_eq!(report["keys_removed"], true, "{report}");
    let status = cli_json(&data, &["status"])?;
    assert_eq!(status["policy_version"], 0, "{status}");
    assert!(
        status["history"]
            .as_str()
            .unwrap_or("")
            .contains("dataward init"),
        "{status}"
    );
    assert_eq!(status["devices"]["known"], 0, "{status}");
    Ok(())
}
