//! The user's keys and the encrypted history, end to end: nothing is kept
//! before `init`; after it, what devices publish is nowhere on disk in the
//! clear (running, stopped, killed); the passphrase reads it back exactly,
//! as NDJSON, CSV, or an age file that Debian's `age` opens; a wrong
//! passphrase changes nothing; the recovery key sets a new one.

use std::path::Path;
use std::process::Command;

use anyhow::Result;
use base64::Engine;
use dataward_tests::*;

/// Every encoding of `marker` a careless store might leave: as is, hex
/// (both cases) and base64 at each of the three alignments.
fn encodings(marker: &str) -> Vec<Vec<u8>> {
    let mut all = vec![
        marker.as_bytes().to_vec(),
        marker
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into_bytes(),
        marker
            .bytes()
            .map(|b| format!("{b:02X}"))
            .collect::<String>()
            .into_bytes(),
    ];
    for pad in 0..3 {
        let mut bytes = vec![b'x'; pad];
        bytes.extend_from_slice(marker.as_bytes());
        let enc = base64::engine::general_purpose::STANDARD.encode(&bytes);
        // Drop the characters that depend on the neighbours.
        let stable = &enc[4..enc.len() - 4];
        all.push(stable.as_bytes().to_vec());
    }
    all
}

/// Files under `dir` that contain any encoding of `marker`.
fn files_with(dir: &Path, marker: &str) -> Result<Vec<String>> {
    let needles = encodings(marker);
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if entry.file_type()?.is_file() {
                let bytes = std::fs::read(&path)?;
                if needles
                    .iter()
                    .any(|n| bytes.windows(n.len()).any(|w| w == n.as_slice()))
                {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    Ok(found)
}

fn export(data: &Path, extra: &[&str]) -> Result<std::process::Output> {
    let pass = passphrase_file(data)?;
    let d = data.to_string_lossy();
    let p = pass.to_string_lossy();
    let mut args = vec!["export", "--passphrase-file", &p, "--data-dir", &d];
    args.extend_from_slice(extra);
    cli(&args)
}

#[test]
fn history_is_kept_only_after_init_and_never_in_the_clear() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let dev = add_device(&data, "meter", "generic")?;
    let config = config_for(&data, &cloud, None, "");

    // Before init: forwarding runs, nothing is kept, and both say so.
    let gw = Gateway::start(dir.path(), &config)?;
    gw.wait_for_log("no history is kept", std::time::Duration::from_secs(5))?;
    let status = cli_json(&data, &["status"])?;
    assert!(
        status["history"]
            .as_str()
            .unwrap_or("")
            .contains("dataward init"),
        "{status}"
    );
    publish_each(&gw, &dev, &[r#"{"early":"before-init-7731"}"#.to_string()])?;
    let out = export(&data, &[])?;
    assert_eq!(out.status.code(), Some(2), "export before init");
    assert!(String::from_utf8_lossy(&out.stderr).contains("dataward init"));

    // init through the running gateway; then messages with secrets in
    // fields that no rule shares.
    init_keys(&data)?;
    let status = cli_json(&data, &["status"])?;
    assert!(
        status["history"]
            .as_str()
            .unwrap_or("")
            .contains("encrypted"),
        "{status}"
    );
    let sent: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"seq":{i},"ssid":"MARKER-alpha-{i:03}-home","power":1e2,"big":12345678901234567890}}"#))
        .collect();
    publish_each(&gw, &dev, &sent)?;
    std::thread::sleep(std::time::Duration::from_millis(700));
    for i in [0, 7, 19] {
        let found = files_with(&data, &format!("MARKER-alpha-{i:03}-home"))?;
        assert!(
            found.is_empty(),
            "running: marker {i} in the clear in {found:?}"
        );
    }
    assert!(gw.stop()?.success());
    let found = files_with(&data, "MARKER-alpha-007-home")?;
    assert!(found.is_empty(), "stopped: in the clear in {found:?}");

    // A restart draws a new data key for the same day; kill -9 flushes
    // nothing on the way out.
    let gw = Gateway::start(dir.path(), &config)?;
    let more: Vec<String> = (20..25)
        .map(|i| format!(r#"{{"seq":{i},"ssid":"MARKER-beta-{i:03}-home"}}"#))
        .collect();
    publish_each(&gw, &dev, &more)?;
    gw.crash()?;
    let found = files_with(&data, "MARKER-beta-022-home")?;
    assert!(found.is_empty(), "after kill -9: in the clear in {found:?}");

    // The passphrase reads it all back, exactly as sent, running or not.
    let out = export(&data, &["--device", "meter"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout.clone())?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 25, "the message before init was not kept");
    let text = String::from_utf8(out.stdout.clone())?;
    for (i, payload) in sent.iter().chain(&more).enumerate() {
        // Embedded byte for byte: 1e2 and the 20-digit integer unchanged.
        assert!(
            text.contains(&format!(r#""payload":{payload}}}"#)),
            "record {i} not exported as sent"
        );
    }
    assert_eq!(lines[0]["device"], "meter");
    assert_eq!(lines[0]["qos"], 1);
    assert_eq!(lines[0]["retain"], false);
    assert!(lines[0]["received"].as_str().unwrap_or("").ends_with('Z'));

    let gw = Gateway::start(dir.path(), &config)?;
    let running = export(&data, &["--device", "meter"])?;
    assert_eq!(
        running.stdout, out.stdout,
        "running and stopped exports differ"
    );

    // CSV: one row per message, fields as columns.
    let csv = export(&data, &["--format", "csv"])?;
    assert!(
        csv.status.success(),
        "{}",
        String::from_utf8_lossy(&csv.stderr)
    );
    let csv = String::from_utf8(csv.stdout)?;
    let rows: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(
        rows[0],
        "device,topic,received,qos,retain,payload_text,payload_b64,$.big,$.power,$.seq,$.ssid"
    );
    assert_eq!(rows.len(), 26);
    // CSV cells hold JSON numbers as serde_json writes them (1e2 is 100.0);
    // NDJSON above keeps the text as sent.
    assert!(
        rows[8].ends_with(",12345678901234567890,100.0,7,MARKER-alpha-007-home"),
        "{}",
        rows[8]
    );

    // age: opened by Debian's age with the identity the user holds.
    let key = dir.path().join("age.key");
    let keygen = Command::new("age-keygen").arg("-o").arg(&key).output()?;
    assert!(
        keygen.status.success(),
        "age-keygen: {}",
        String::from_utf8_lossy(&keygen.stderr)
    );
    let recipient = String::from_utf8(keygen.stderr)?
        .split_whitespace()
        .find(|w| w.starts_with("age1"))
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("age-keygen printed no recipient"))?;
    let sealed = dir.path().join("export.age");
    let out_age = export(
        &data,
        &[
            "--device",
            "meter",
            "--encrypt-to",
            &recipient,
            "-o",
            &sealed.to_string_lossy(),
        ],
    )?;
    assert!(
        out_age.status.success(),
        "{}",
        String::from_utf8_lossy(&out_age.stderr)
    );
    assert!(files_with(dir.path(), "MARKER-alpha-007-home")?.is_empty());
    let opened = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&key)
        .arg(&sealed)
        .output()?;
    assert!(
        opened.status.success(),
        "age -d: {}",
        String::from_utf8_lossy(&opened.stderr)
    );
    assert_eq!(
        opened.stdout, out.stdout,
        "the age file holds the same export"
    );
    let bad = export(&data, &["--encrypt-to", "age1nope"])?;
    assert_eq!(bad.status.code(), Some(2));

    // An output that is not a regular file (here a pipe; /dev/null alike)
    // is written to, never renamed over.
    let fifo = dir.path().join("export.pipe");
    assert!(Command::new("mkfifo").arg(&fifo).status()?.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo))
    };
    let piped = export(&data, &["--device", "meter", "-o", &fifo.to_string_lossy()])?;
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert_eq!(reader.join().expect("reader")?, out.stdout);
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::metadata(&fifo)?.file_type().is_fifo(),
        "the pipe is still a pipe"
    );
    assert!(gw.stop()?.success());
    Ok(())
}

#[test]
fn a_wrong_passphrase_changes_nothing_and_the_recovery_key_resets_it() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let dev = add_device(&data, "meter", "generic")?;
    let recovery = init_keys(&data)?;
    assert_eq!(recovery.len(), 47, "{recovery}");
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, None, ""))?;
    publish_each(&gw, &dev, &[r#"{"v":1}"#.to_string()])?;
    let d = data.to_string_lossy().into_owned();
    let wrong = dir.path().join("wrong.txt");
    std::fs::write(&wrong, "not the passphrase\n")?;
    let wrong = wrong.to_string_lossy().into_owned();
    let new = dir.path().join("new.txt");
    std::fs::write(&new, "a brand new passphrase\n")?;
    let new = new.to_string_lossy().into_owned();
    let keys_before = cli_json(&data, &["status"])?;

    for (running, args) in [
        (true, vec!["export", "--passphrase-file", &wrong]),
        (
            true,
            vec!["decrypt", "dw1.AAAA", "--passphrase-file", &wrong],
        ),
        (
            true,
            vec![
                "passphrase",
                "change",
                "--passphrase-file",
                &wrong,
                "--new-passphrase-file",
                &new,
            ],
        ),
    ] {
        let mut all = args.clone();
        all.extend(["--data-dir", &d]);
        let out = cli(&all)?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim(), "error: the passphrase is wrong", "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
        let _ = running;
    }
    // Still the old passphrase.
    assert_eq!(stored_seqs(&data, "meter")?.len(), 0);
    let out = export(&data, &[])?;
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout)?.lines().count(), 1);
    assert_eq!(
        cli_json(&data, &["status"])?["history"],
        keys_before["history"]
    );
    assert!(gw.stop()?.success());

    // The recovery key sets a new passphrase (gateway stopped this time);
    // a mistyped recovery key is refused before anything is tried.
    let rk = dir.path().join("recovery.txt");
    let mut typo = recovery.clone().into_bytes();
    typo[0] = if typo[0] == b'A' { b'B' } else { b'A' };
    std::fs::write(&rk, &typo)?;
    let out = cli(&[
        "passphrase",
        "reset",
        "--recovery-key-file",
        &rk.to_string_lossy(),
        "--new-passphrase-file",
        &new,
        "--data-dir",
        &d,
    ])?;
    assert_eq!(out.status.code(), Some(2));
    std::fs::write(&rk, format!("{}\n", recovery.to_lowercase()))?;
    cli_ok(
        &data,
        &[
            "passphrase",
            "reset",
            "--recovery-key-file",
            &rk.to_string_lossy(),
            "--new-passphrase-file",
            &new,
        ],
    )?;
    let old = export(&data, &[])?;
    assert_eq!(old.status.code(), Some(2), "the old passphrase still works");
    let with_new = cli_ok(&data, &["export", "--passphrase-file", &new])?;
    assert_eq!(with_new.lines().count(), 1);
    // And `passphrase change` back, from the new one.
    let pass = passphrase_file(&data)?.to_string_lossy().into_owned();
    cli_ok(
        &data,
        &[
            "passphrase",
            "change",
            "--passphrase-file",
            &new,
            "--new-passphrase-file",
            &pass,
        ],
    )?;
    assert!(export(&data, &[])?.status.success());
    // decrypt: a value sealed to the user's public key (as the policy's
    // seal action will send it) opens with the passphrase, alone or inside
    // NDJSON read from standard input.
    let public = {
        let store = ::gateway::store::Store::open(&data)?;
        let keys = store
            .load_keys()?
            .ok_or_else(|| anyhow::anyhow!("no keys stored"))?;
        keys.public()?
    };
    let sealed = ::gateway::keys::seal::seal_value(&public, br#"[52.37,4.89]"#)?;
    let opened = cli_ok(&data, &["decrypt", &sealed, "--passphrase-file", &pass])?;
    assert_eq!(opened, "[52.37,4.89]\n");
    let mut child = Command::new(dataward_bin()?)
        .args(["decrypt", "--passphrase-file", &pass, "--data-dir", &d])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        writeln!(
            stdin,
            r#"{{"device":"meter","payload":{{"loc":"{sealed}","n":1}}}}"#
        )?;
        writeln!(stdin, "not json")?;
    }
    let out = child.wait_with_output()?;
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout)?,
        "{\"device\":\"meter\",\"payload\":{\"loc\":[52.37,4.89],\"n\":1}}\nnot json\n"
    );
    let mut damaged = sealed.clone();
    damaged.truncate(sealed.len() - 3);
    let out = cli(&[
        "decrypt",
        &damaged,
        "--passphrase-file",
        &pass,
        "--data-dir",
        &d,
    ])?;
    assert_eq!(out.status.code(), Some(2));
    // No terminal and no file: told how, not hung.
    let out = cli(&["export", "--data-dir", &d])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--passphrase-file"));
    Ok(())
}

#[test]
fn retain_rules_leave_fields_and_devices_out_of_the_history() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let meter = add_device(&data, "meter", "generic")?;
    let cam = add_device(&data, "cam", "generic")?;
    init_keys(&data)?;
    let policy = write_policy(
        dir.path(),
        "[[retain]]\ndevice = \"meter\"\nfield = \"ssid\"\nkeep = \"none\"\n\n[[retain]]\ndevice = \"cam\"\nkeep = \"none\"\n",
    )?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;
    publish_each(
        &gw,
        &meter,
        &[r#"{"power":5,"ssid":"RETAIN-MARKER-1"}"#.to_string()],
    )?;
    publish_each(&gw, &cam, &[r#"{"motion":true}"#.to_string()])?;
    assert!(gw.stop()?.success());
    let out = export(&data, &[])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains(r#""payload":{"power":5}"#), "{text}");
    assert!(files_with(&data, "RETAIN-MARKER-1")?.is_empty());

    // A store restored without its key pads is refused, and nothing in it
    // is touched; with the file back, everything reads again.
    let pads = data.join("keypads");
    let aside = dir.path().join("keypads.aside");
    std::fs::rename(&pads, &aside)?;
    let out = export(&data, &[])?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("keypads") && err.contains("missing"), "{err}");
    assert!(!pads.exists(), "no empty pad file was made in its place");
    std::fs::rename(&aside, &pads)?;
    let again = export(&data, &[])?;
    assert_eq!(String::from_utf8(again.stdout)?, text);
    Ok(())
}
