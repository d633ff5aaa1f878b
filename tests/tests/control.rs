//! The operations layer as a user meets it: every command with the gateway
//! running (through the control socket) or stopped, changes that take
//! effect at once, and a data directory that only one gateway may use.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use dataward_tests::*;
use rumqttc::{Event, Packet, QoS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_added_while_running_connects_and_shares_at_once() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let policy = write_policy(dir.path(), SHARE_ALL)?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;
    let (sub, mut sub_events) = cloud_subscriber(&cloud, "home/#", "sub-added").await?;

    let creds = add_device(&data, "late", "generic")?;
    let (client, mut events) = connect(device_options(gw.mqtt, &creds, "late")).await?;
    publish_acked(&client, &mut events, "devices/late/state", r#"{"t":1}"#).await?;
    let got = collect(Some(&sub), &mut sub_events, Duration::from_secs(10), |g| {
        !g.is_empty()
    })
    .await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "home/devices/late/state");
    assert_eq!(got[0].1, br#"{"t":1}"#);
    assert!(gw.stop()?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_device_ends_its_sessions_retained_and_pending_commands() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let plug = add_device(&data, "plug", "tasmota")?;
    let policy = write_policy(
        dir.path(),
        "[[command]]\ndevice = \"plug\"\ndestination = \"vendor_cloud\"\ntopic = \"cmnd/plug/#\"\n",
    )?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;

    // Two offline sessions with a command queued in each: the device
    // subscribed with persistent sessions, went away, and the cloud sent a
    // command.
    for client_id in ["plug.offline", "plug.control"] {
        let mut offline = device_options(gw.mqtt, &plug, client_id);
        offline.set_clean_session(false);
        let (oc, mut oe) = connect(offline).await?;
        oc.subscribe("cmnd/plug/#", QoS::AtLeastOnce).await?;
        wait_for(&mut oe, |e| matches!(e, Event::Incoming(Packet::SubAck(_)))).await?;
        oc.disconnect().await?;
        let _ = tokio::time::timeout(Duration::from_secs(2), oe.poll()).await;
    }
    let (cloud_client, mut cloud_events) = connect(rumqttc::MqttOptions::new(
        "cloud-cmd",
        "127.0.0.1",
        cloud.port,
    ))
    .await?;
    cloud_client
        .publish("home/cmd/cmnd/plug/POWER", QoS::AtLeastOnce, false, "ON")
        .await?;
    wait_for(&mut cloud_events, |e| {
        matches!(e, Event::Incoming(Packet::PubAck(_)))
    })
    .await?;
    gw.wait_for_log("command relayed to device", Duration::from_secs(10))?;

    // The control: resuming one of them delivers its queued command. It
    // stays connected, and leaves a retained message.
    let mut control = device_options(gw.mqtt, &plug, "plug.control");
    control.set_clean_session(false);
    let (live, mut live_events) = connect(control).await?;
    wait_for(
        &mut live_events,
        |e| matches!(e, Event::Incoming(Packet::Publish(p)) if p.topic == "cmnd/plug/POWER"),
    )
    .await?;
    live.publish("tele/plug/STATE", QoS::AtLeastOnce, true, r#"{"on":1}"#)
        .await?;
    wait_for(&mut live_events, |e| {
        matches!(e, Event::Incoming(Packet::PubAck(_)))
    })
    .await?;

    let asked = Instant::now();
    let removed = cli_json(&data, &["device", "remove", "plug"])?;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if live_events.poll().await.is_err() {
                return Instant::now();
            }
        }
    })
    .await;
    let Ok(closed_at) = closed else {
        bail!("the removed device's connection stayed open");
    };
    let took = closed_at.duration_since(asked);
    assert!(
        took < Duration::from_secs(1),
        "connection closed {took:?} after the remove command started"
    );
    assert_eq!(removed["sessions_closed"], 2, "{removed}");
    assert_eq!(removed["retained_dropped"], 1, "{removed}");

    // The old credential is refused.
    let again = connect(device_options(gw.mqtt, &plug, "plug")).await;
    assert!(again.is_err(), "a removed device cannot log in again");

    // A new device under the same id does not inherit the old one's
    // session: the command queued in it is gone. (The retained message is
    // checked by the count above: no device may subscribe to another's
    // telemetry topics, so none could read it back here.)
    let plug2 = add_device(&data, "plug", "tasmota")?;
    let mut resumed = device_options(gw.mqtt, &plug2, "plug.offline");
    resumed.set_clean_session(false);
    let (_rc, mut re) = connect(resumed).await?;
    let mut got = Vec::new();
    while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_secs(1), re.poll()).await {
        if let Event::Incoming(Packet::Publish(p)) = ev {
            got.push(p.topic.clone());
        }
    }
    assert!(got.is_empty(), "old session's messages leaked: {got:?}");
    assert!(gw.stop()?.success());
    Ok(())
}

const SHARE_A: &str =
    "[[rule]]\ndevice = \"*\"\nfield = \"a\"\ndestination = \"*\"\naction = \"share\"\n";
const SHARE_B: &str =
    "[[rule]]\ndevice = \"*\"\nfield = \"b\"\ndestination = \"*\"\naction = \"share\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_apply_switches_once_mid_stream_and_loses_nothing() -> Result<()> {
    const N: usize = 2000;
    let (dir, data, cloud) = scratch()?;
    let dev = add_device(&data, "meter", "generic")?;
    let policy = write_policy(dir.path(), SHARE_A)?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;
    assert_eq!(cli_json(&data, &["status"])?["policy_version"], 1);
    let (sub, mut sub_events) = cloud_subscriber(&cloud, "home/#", "sub-switch").await?;
    let (client, mut events) = connect(device_options(gw.mqtt, &dev, "meter")).await?;

    // A steady stream: one message every 2 ms, acknowledged as it goes.
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            let payload = format!(r#"{{"a":{i},"b":{i}}}"#);
            client
                .publish("devices/meter/state", QoS::AtLeastOnce, false, payload)
                .await?;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        anyhow::Ok(client)
    });
    let acks = tokio::spawn(async move {
        let mut n = 0;
        while n < N {
            match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => n += 1,
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        n
    });
    let apply = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        let data = data.clone();
        move || -> Result<(serde_json::Value, std::process::Output)> {
            std::thread::sleep(Duration::from_millis(1200));
            let next = dir.join("next.toml");
            std::fs::write(&next, SHARE_B)?;
            let applied = cli_json(&data, &["policy", "apply", &next.to_string_lossy()])?;
            // An invalid policy in the middle of the stream changes nothing.
            let bad = dir.join("bad.toml");
            std::fs::write(&bad, "[[rule]]\ndevice = \"*\"\nfield = \"b\"\ndestination = \"*\"\naction = \"share\"\nextra = 1\n")?;
            let refused = cli(&[
                "policy",
                "apply",
                &bad.to_string_lossy(),
                "--data-dir",
                &data.to_string_lossy(),
            ])?;
            Ok((applied, refused))
        }
    });
    let got = collect(Some(&sub), &mut sub_events, Duration::from_secs(60), |g| {
        g.len() >= N
    })
    .await;
    let (applied, refused) = apply.await??;
    assert_eq!(acks.await?, N, "every message was acknowledged");
    drop(publisher.await??);

    assert_eq!(applied["version"], 2, "{applied}");
    assert_eq!(applied["changed"], true);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(err.contains("line 6, column 1"), "{err}");
    let status = cli_json(&data, &["status"])?;
    assert_eq!(
        status["policy_version"], 2,
        "the invalid policy changed nothing"
    );

    // Every message exactly once, each with a or b but never both or
    // neither, and one switch from a to b.
    let more = stragglers(Some(&sub), &mut sub_events, Duration::from_millis(500)).await;
    assert!(
        more.is_empty(),
        "duplicates after the stream: {}",
        more.len()
    );
    assert_eq!(got.len(), N, "each message reaches the cloud once");
    let mut seen = vec![false; N];
    let mut switches = 0;
    let mut last_field = "";
    for (i, (_, payload)) in got.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_slice(payload)?;
        let obj = v
            .as_object()
            .ok_or_else(|| anyhow::anyhow!("not an object"))?;
        assert_eq!(obj.len(), 1, "message {i} carries exactly one field: {v}");
        let (field, n) = obj.iter().next().ok_or_else(|| anyhow::anyhow!("empty"))?;
        let n = n.as_u64().ok_or_else(|| anyhow::anyhow!("not a number"))? as usize;
        assert!(!seen[n], "message {n} arrived twice");
        seen[n] = true;
        if i == 0 {
            assert_eq!(field, "a", "the stream starts under the old policy");
        } else if field != last_field {
            switches += 1;
        }
        last_field = if field == "a" { "a" } else { "b" };
    }
    assert_eq!(switches, 1, "the policy switched exactly once");
    assert_eq!(last_field, "b");
    assert!(gw.stop()?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_versions_survive_restarts_and_sighup_rereads_the_file() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let file = write_policy(dir.path(), SHARE_A)?;
    let config = config_for(&data, &cloud, Some(&file), "");
    let gw = Gateway::start(dir.path(), &config)?;
    let applied = dir.path().join("applied.toml");
    std::fs::write(&applied, SHARE_B)?;
    cli_ok(&data, &["policy", "apply", &applied.to_string_lossy()])?;
    assert!(gw.stop()?.success());

    // The unchanged file does not undo the apply across a restart.
    let gw = Gateway::start(dir.path(), &config)?;
    let shown = cli_json(&data, &["policy", "show"])?;
    assert_eq!(shown["version"], 2, "{shown}");
    assert_eq!(shown["text"], SHARE_B);
    let v1 = cli_json(&data, &["policy", "show", "--version", "1"])?;
    assert_eq!(v1["text"], SHARE_A);
    assert_eq!(v1["in_force"], false);

    // SIGHUP: an invalid edit is refused and logged with its position...
    std::fs::write(&file, "[[rule]]\ndevice = \"*\"\n")?;
    signal_pid(gw.pid(), "HUP")?;
    gw.wait_for_log("SIGHUP: policy file rejected", Duration::from_secs(10))?;
    assert!(gw.log().contains("line 1, column 1"), "{}", gw.log());
    assert_eq!(cli_json(&data, &["status"])?["policy_version"], 2);
    // ...a valid one becomes the next version.
    std::fs::write(&file, SHARE_A.replace("\"a\"", "\"c\""))?;
    signal_pid(gw.pid(), "HUP")?;
    gw.wait_for_log("SIGHUP: policy file applied", Duration::from_secs(10))?;
    assert_eq!(cli_json(&data, &["status"])?["policy_version"], 3);
    let list = cli_json(&data, &["policy", "show", "--list"])?;
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
    assert!(gw.stop()?.success());
    Ok(())
}

#[test]
fn a_crashed_gateway_restarts_and_a_second_one_is_refused() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let config = config_for(&data, &cloud, None, "");
    let gw = Gateway::start(dir.path(), &config)?;
    let first_pid = gw.pid();

    let second = cli(&[
        "run",
        "--data-dir",
        &data.to_string_lossy(),
        "--mqtt-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ])?;
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("running dataward gateway (pid {first_pid})")),
        "{err}"
    );

    gw.crash()?;
    assert!(
        data.join("control.sock").exists(),
        "kill -9 leaves the socket"
    );
    // Stopped: commands work on the store directly.
    assert_eq!(cli_json(&data, &["status"])?["running"], false);
    let gw = Gateway::start(dir.path(), &config)?;
    let status = cli_json(&data, &["status"])?;
    assert_eq!(status["running"], true);
    assert_eq!(status["pid"], gw.pid());
    assert!(gw.stop()?.success());
    assert!(
        !data.join("control.sock").exists(),
        "a clean stop removes it"
    );
    Ok(())
}

#[test]
fn the_socket_refuses_other_users() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: getuid has no failure mode.
    if unsafe { libc::getuid() } != 0 {
        bail!("this test becomes the user `nobody` and so must run as root (CI does); it cannot run here");
    }
    let (dir, data, cloud) = scratch()?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, None, ""))?;
    let sock = data.join("control.sock");
    let mode = std::fs::metadata(&sock)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is mode 0600");
    // Let `nobody` reach the socket file, so that its mode is what refuses.
    for d in [dir.path(), data.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    let as_nobody = || -> Result<std::process::Output> {
        Ok(std::process::Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(dataward_bin()?)
            .args(["status", "--data-dir", &data.to_string_lossy()])
            .stdin(std::process::Stdio::null())
            .output()?)
    };
    let out = as_nobody()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("control socket"), "{err}");
    assert!(err.to_lowercase().contains("permission denied"), "{err}");

    // With the file mode opened up, the peer-credential check still refuses.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666))?;
    let out = as_nobody()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("uid 65534 may not control this gateway"),
        "{err}"
    );
    assert!(gw.log().contains("control connection refused"));
    // Root still gets in.
    assert_eq!(cli_json(&data, &["status"])?["running"], true);
    assert!(gw.stop()?.success());
    Ok(())
}

/// Runs `args` (plus --data-dir) and returns (exit code, stdout, stderr).
fn answer(data: &std::path::Path, args: &[&str]) -> Result<(Option<i32>, String, String)> {
    let mut all = args.to_vec();
    let d = data.to_string_lossy();
    all.extend(["--data-dir", &d]);
    let out = cli(&all)?;
    Ok((
        out.status.code(),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

#[test]
fn every_command_answers_the_same_running_or_stopped() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let thermo = add_device(&data, "thermo", "generic")?;
    add_device(&data, "plug", "tasmota")?;
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, SHARE_A)?;
    let config = config_for(&data, &cloud, None, "");
    std::fs::write(dir.path().join("dataward.toml"), &config)?;
    let conf = dir
        .path()
        .join("dataward.toml")
        .to_string_lossy()
        .into_owned();
    let p = policy.to_string_lossy().into_owned();
    cli_ok(&data, &["policy", "apply", &p, "--config", &conf])?;
    // Some history to export, written by a running gateway.
    init_keys(&data)?;
    let pass = passphrase_file(&data)?.to_string_lossy().into_owned();
    {
        let gw = Gateway::start(dir.path(), &config)?;
        for payload in [r#"{"a":1,"b":2}"#, "ON", r#"{"a":3}"#] {
            let out = std::process::Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &gw.mqtt.port().to_string()])
                .args(["-u", &thermo.id, "-P", &thermo.password, "-i", "thermo"])
                .args(["-t", "devices/thermo/state", "-q", "1", "-m", payload])
                .output()?;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(gw.stop()?.success());
    }

    let commands: Vec<Vec<&str>> = vec![
        vec!["device", "list"],
        vec!["device", "list", "--json"],
        vec!["device", "show", "thermo"],
        vec!["device", "show", "thermo", "--json"],
        vec!["device", "show", "nosuch"],
        vec!["device", "remove", "nosuch"],
        vec!["device", "add", "thermo"],
        vec!["device", "add", "x", "--preset", "nope"],
        vec!["policy", "show"],
        vec!["policy", "show", "--json"],
        vec!["policy", "show", "--version", "1", "--json"],
        vec!["policy", "show", "--version", "9"],
        vec!["policy", "show", "--list", "--json"],
        vec!["policy", "check", &p, "--config", &conf, "--json"],
        vec!["policy", "apply", &p, "--config", &conf, "--json"],
        vec![
            "policy",
            "preview",
            "--device",
            "thermo",
            "--payload",
            r#"{"a":1,"b":2}"#,
            "--config",
            &conf,
            "--json",
        ],
        vec![
            "policy",
            "preview",
            "--device",
            "thermo",
            "--payload",
            r#"{"a":1,"b":2}"#,
            "--config",
            &conf,
        ],
        vec!["export", "--passphrase-file", &pass],
        vec!["export", "--device", "plug", "--passphrase-file", &pass],
    ];
    let stopped: Vec<_> = commands
        .iter()
        .map(|c| answer(&data, c))
        .collect::<Result<_>>()?;
    let stopped_status = cli_json(&data, &["status", "--config", &conf])?;
    // Without --config, a stopped command reads the config the gateway
    // last ran with, as the running gateway would answer.
    let stopped_plain = cli_json(&data, &["status"])?;
    let stopped_change = add_then_remove(&data)?;
    let exported = &stopped[commands.len() - 2];
    assert_eq!(exported.1.lines().count(), 3, "{exported:?}");

    let gw = Gateway::start(dir.path(), &config)?;
    for (c, before) in commands.iter().zip(&stopped) {
        let now = answer(&data, c)?;
        assert_eq!(
            &now,
            before,
            "`dataward {}` differs when running",
            c.join(" ")
        );
    }
    let running_status = cli_json(&data, &["status", "--config", &conf])?;
    let running_plain = cli_json(&data, &["status"])?;
    assert_eq!(running_plain["destinations"][0]["name"], "vendor_cloud");
    assert_eq!(
        stopped_plain["destinations"][0]["name"], "vendor_cloud",
        "{stopped_plain}"
    );
    assert_eq!(
        add_then_remove(&data)?,
        stopped_change,
        "changes answer alike"
    );
    assert_eq!(running_status["running"], true);
    assert_eq!(stopped_status["running"], false);
    assert_eq!(
        shape(&running_status),
        shape(&stopped_status),
        "status has the same JSON shape"
    );
    for key in ["devices", "policy_version", "data_dir", "history"] {
        if key == "devices" {
            assert_eq!(running_status[key]["known"], stopped_status[key]["known"]);
        } else {
            assert_eq!(running_status[key], stopped_status[key], "{key}");
        }
    }
    assert!(gw.stop()?.success());
    Ok(())
}

/// Adds and removes one device; returns both answers with what must
/// differ (the random password, the time) masked.
fn add_then_remove(data: &std::path::Path) -> Result<(serde_json::Value, String)> {
    let mut added = cli_json(data, &["device", "add", "Temp Probe"])?;
    assert!(added["password"].as_str().is_some_and(|p| p.len() >= 32));
    added["password"] = "*".into();
    added["created_ms"] = 0.into();
    let removed = cli_ok(data, &["device", "remove", "temp-probe", "--json"])?;
    Ok((added, removed))
}

/// The keys of a JSON document, recursively, with null for every value.
fn shape(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().take(1).map(shape).collect()),
        _ => Value::Null,
    }
}

#[test]
fn a_busy_gateway_makes_commands_wait_not_fail() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, None, ""))?;
    // More at once than the socket serves (16): the rest are told "busy"
    // and try again.
    let adds: Vec<_> = (0..30)
        .map(|i| {
            let data = data.clone();
            std::thread::spawn(move || cli_ok(&data, &["device", "add", &format!("dev {i}")]))
        })
        .collect();
    for a in adds {
        if let Err(e) = a.join().map_err(|_| anyhow::anyhow!("thread"))? {
            bail!("a device add failed while the gateway was busy: {e}");
        }
    }
    let list = cli_json(&data, &["device", "list"])?;
    assert_eq!(list.as_array().map(Vec::len), Some(30));
    assert!(gw.stop()?.success());
    Ok(())
}

#[test]
fn a_store_made_by_a_command_is_private() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir(&data)?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755))?;
    add_device(&data, "plug", "generic")?;
    let mode = std::fs::metadata(&data)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the data directory is made private");
    for f in ["db/db", "db/conf", "lock"] {
        let mode = std::fs::metadata(data.join(f))?.permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{f} is {mode:o}");
    }
    Ok(())
}
