//! End to end: the real `dataward` binary, a real mosquitto as the cloud,
//! rumqttc clients as devices.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Result};
use dataward_tests::*;
use rumqttc::{Event, Packet, QoS};

const SAMPLE: &str = r#"{"temp":21.5,"ssid":"home","loc":{"lat":52.37,"lon":4.89}}"#;

/// Polls the event loop in the background so publishes flow; returns the
/// client and a handle that yields what the loop saw.
fn drive(mut events: rumqttc::EventLoop) -> tokio::task::JoinHandle<Vec<Event>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_secs(3), events.poll()).await {
            seen.push(ev);
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_shares_only_allowed_fields_and_default_denies() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let cloud = Cloud::start()?;
    let thermo = add_device(&data, "thermo", "generic")?;
    let silent = add_device(&data, "silent", "generic")?;
    let policy = write_policy(
        dir.path(),
        "[[rule]]\ndevice = \"thermo\"\nfield = \"temp\"\ndestination = \"vendor_cloud\"\naction = \"share\"\n",
    )?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;
    let (sub, mut sub_events) = cloud_subscriber(&cloud, "home/#", "sub-policy").await?;

    // The device with no rules publishes first: the outbox is one ordered
    // queue, so had it been forwarded it would arrive before thermo's.
    let (c2, e2) = connect(device_options(gw.mqtt, &silent, "silent")).await?;
    let d2 = drive(e2);
    c2.publish("devices/silent/state", QoS::AtLeastOnce, false, SAMPLE)
        .await?;
    let (c1, e1) = connect(device_options(gw.mqtt, &thermo, "thermo")).await?;
    let d1 = drive(e1);
    c1.publish("devices/thermo/state", QoS::AtLeastOnce, false, SAMPLE)
        .await?;

    let got = collect(Some(&sub), &mut sub_events, Duration::from_secs(10), |g| {
        !g.is_empty()
    })
    .await;
    assert_eq!(
        got.len(),
        1,
        "exactly one message reaches the cloud: {got:?}"
    );
    assert_eq!(got[0].0, "home/devices/thermo/state");
    assert_eq!(std::str::from_utf8(&got[0].1)?, r#"{"temp":21.5}"#);
    // Nothing else trails behind it.
    let more = stragglers(Some(&sub), &mut sub_events, Duration::from_millis(700)).await;
    assert!(more.is_empty(), "unexpected extra messages: {more:?}");
    drop((c1, c2));
    let _ = (d1.await, d2.await);
    let status = gw.stop()?;
    assert!(status.success(), "SIGTERM gives a clean exit: {status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_valid_credentials_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let cloud = Cloud::start()?;
    let dev = add_device(&data, "dev1", "generic")?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, None, ""))?;

    let unknown = DeviceCreds {
        id: "nobody".into(),
        password: dev.password.clone(),
    };
    assert!(
        connect(device_options(gw.mqtt, &unknown, "nobody"))
            .await
            .is_err(),
        "unknown device"
    );
    let wrong = DeviceCreds {
        id: dev.id.clone(),
        password: "not-the-password".into(),
    };
    assert!(
        connect(device_options(gw.mqtt, &wrong, "dev1"))
            .await
            .is_err(),
        "wrong password"
    );
    let mut anon = rumqttc::MqttOptions::new("dev1", gw.mqtt.ip().to_string(), gw.mqtt.port());
    anon.set_keep_alive(Duration::from_secs(30));
    assert!(connect(anon).await.is_err(), "no credentials");
    // Right credential, but a client id that claims another device.
    assert!(
        connect(device_options(gw.mqtt, &dev, "dev2"))
            .await
            .is_err(),
        "foreign client id"
    );
    // And the right one works, so the refusals above mean something.
    let (c, _e) = connect(device_options(gw.mqtt, &dev, "dev1")).await?;
    drop(c);
    assert!(gw.log().contains("wrong password"));
    gw.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_cannot_read_or_spoof_each_other() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let cloud = Cloud::start()?;
    let dev1 = add_device(&data, "dev1", "generic")?;
    let dev2 = add_device(&data, "dev2", "generic")?;
    // Everything is shared, so any spoofed message would show at the cloud.
    let policy = write_policy(dir.path(), SHARE_ALL)?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;
    let (sub, mut cloud_events) = cloud_subscriber(&cloud, "home/#", "sub-acl").await?;

    let (c2, mut e2) = connect(device_options(gw.mqtt, &dev2, "dev2")).await?;
    c2.subscribe("#", QoS::AtLeastOnce).await?;
    c2.subscribe("devices/dev1/#", QoS::AtLeastOnce).await?;
    c2.subscribe("devices/dev2/cmd/#", QoS::AtLeastOnce).await?;
    let mut codes = Vec::new();
    while codes.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(5), e2.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => codes.push(ack.return_codes[0]),
            Ok(Ok(_)) => {}
            other => bail!("no SUBACK: {other:?}"),
        }
    }
    assert_eq!(
        codes[0],
        rumqttc::SubscribeReasonCode::Failure,
        "subscribe to # refused"
    );
    assert_eq!(
        codes[1],
        rumqttc::SubscribeReasonCode::Failure,
        "subscribe to dev1's topics refused"
    );
    assert!(
        matches!(codes[2], rumqttc::SubscribeReasonCode::Success(_)),
        "own command topic allowed"
    );

    let (c1, mut e1) = connect(device_options(gw.mqtt, &dev1, "dev1")).await?;
    c1.subscribe("devices/dev1/cmd/#", QoS::AtLeastOnce).await?;
    // dev2 tries to speak for dev1, on its data and its command topics.
    c2.publish(
        "devices/dev1/state",
        QoS::AtLeastOnce,
        false,
        r#"{"spoof":1}"#,
    )
    .await?;
    c2.publish("devices/dev1/cmd/power", QoS::AtLeastOnce, false, "ON")
        .await?;
    // dev1 publishes for real.
    c1.publish(
        "devices/dev1/state",
        QoS::AtLeastOnce,
        false,
        r#"{"real":1}"#,
    )
    .await?;

    let dev2_saw =
        tokio::spawn(
            async move { collect(None, &mut e2, Duration::from_secs(3), |_| false).await },
        );
    let dev1_saw =
        tokio::spawn(
            async move { collect(None, &mut e1, Duration::from_secs(3), |_| false).await },
        );
    let at_cloud = collect(
        Some(&sub),
        &mut cloud_events,
        Duration::from_secs(3),
        |_| false,
    )
    .await;
    assert_eq!(
        at_cloud.len(),
        1,
        "only dev1's own message reaches the cloud: {at_cloud:?}"
    );
    assert_eq!(at_cloud[0].1, br#"{"real":1}"#);
    assert!(
        dev2_saw.await?.is_empty(),
        "dev2 received another device's data"
    );
    assert!(
        dev1_saw.await?.is_empty(),
        "dev1 received a spoofed command"
    );
    assert!(gw.log().contains("publish refused"));
    gw.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_zero_and_both_protocol_versions_work() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let cloud = Cloud::start()?;
    let v3 = add_device(&data, "v3dev", "generic")?;
    let v5 = add_device(&data, "v5dev", "generic")?;
    let policy = write_policy(dir.path(), SHARE_ALL)?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;
    let (sub, mut cloud_events) = cloud_subscriber(&cloud, "home/#", "sub-versions").await?;

    let mut o3 = device_options(gw.mqtt, &v3, "v3dev");
    o3.set_keep_alive(Duration::ZERO);
    let (c3, e3) = connect(o3).await?;
    let d3 = drive(e3);
    c3.publish("devices/v3dev/x", QoS::AtLeastOnce, false, "from-3.1.1")
        .await?;

    let mut o5 = rumqttc::v5::MqttOptions::new("v5dev", gw.mqtt.ip().to_string(), gw.mqtt.port());
    o5.set_credentials(v5.id.clone(), v5.password.clone());
    let (c5, mut e5) = rumqttc::v5::AsyncClient::new(o5, 16);
    c5.publish(
        "devices/v5dev/x",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        "from-5",
    )
    .await?;
    let mut v5_acked = false;
    for _ in 0..50 {
        match tokio::time::timeout(Duration::from_secs(5), e5.poll()).await {
            Ok(Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(a)))) => {
                assert_eq!(a.reason, rumqttc::v5::mqttbytes::v5::PubAckReason::Success);
                v5_acked = true;
                break;
            }
            Ok(Ok(_)) => {}
            other => bail!("v5 client failed: {other:?}"),
        }
    }
    assert!(v5_acked, "the v5 publish was acknowledged");
    // Outside its topics, a v5 device is told so in the PUBACK.
    c5.publish(
        "devices/v3dev/x",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        "spoof",
    )
    .await?;
    let mut refused = false;
    for _ in 0..50 {
        match tokio::time::timeout(Duration::from_secs(5), e5.poll()).await {
            Ok(Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(a)))) => {
                assert_eq!(
                    a.reason,
                    rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized
                );
                refused = true;
                break;
            }
            Ok(Ok(_)) => {}
            other => bail!("v5 client failed: {other:?}"),
        }
    }
    assert!(refused, "the v5 spoof got a PUBACK");
    // QoS 0 flows too.
    c3.publish("devices/v3dev/y", QoS::AtMostOnce, false, "qos0")
        .await?;

    let got = collect(
        Some(&sub),
        &mut cloud_events,
        Duration::from_secs(10),
        |g| g.len() >= 2,
    )
    .await;
    let payloads: Vec<&[u8]> = got.iter().map(|(_, p)| p.as_slice()).collect();
    assert!(payloads.contains(&b"from-3.1.1".as_slice()), "{got:?}");
    assert!(payloads.contains(&b"from-5".as_slice()), "{got:?}");
    drop(c3);
    let _ = d3.await;
    gw.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_closes_only_that_connection() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let cloud = Cloud::start()?;
    let good = add_device(&data, "good", "generic")?;
    let big = add_device(&data, "big", "generic")?;
    let policy = write_policy(dir.path(), SHARE_ALL)?;
    let gw = Gateway::start(
        dir.path(),
        &config_for(
            &data,
            &cloud,
            Some(&policy),
            "[mqtt]\nmax_packet_bytes = 4096\n",
        ),
    )?;
    let (sub, mut cloud_events) = cloud_subscriber(&cloud, "home/#", "sub-garbage").await?;
    let (gc, ge) = connect(device_options(gw.mqtt, &good, "good")).await?;
    let gd = drive(ge);

    let closed = |mut s: TcpStream| -> Result<bool> {
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        let mut buf = [0u8; 64];
        Ok(matches!(s.read(&mut buf), Ok(0) | Err(_)))
    };
    // Garbage bytes.
    let mut s = TcpStream::connect(gw.mqtt)?;
    s.write_all(b"\xde\xad\xbe\xef GET / HTTP/1.1\r\n\r\n\x00\x01\x02")?;
    assert!(closed(s)?, "garbage closes the connection");
    // A CONNECT cut short, then the client goes quiet.
    let mut s = TcpStream::connect(gw.mqtt)?;
    s.write_all(&[0x10, 0x40, 0x00, 0x04, b'M', b'Q'])?;
    s.shutdown(std::net::Shutdown::Write)?;
    assert!(closed(s)?, "a truncated packet closes the connection");
    // A payload over the limit.
    let (bc, mut be) = connect(device_options(gw.mqtt, &big, "big")).await?;
    bc.publish(
        "devices/big/x",
        QoS::AtLeastOnce,
        false,
        vec![b'x'; 64 * 1024],
    )
    .await?;
    let mut big_closed = false;
    for _ in 0..20 {
        match tokio::time::timeout(Duration::from_secs(5), be.poll()).await {
            Ok(Err(_)) => {
                big_closed = true;
                break;
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                bail!("an oversized payload was accepted")
            }
            Ok(Ok(_)) => {}
            Err(_) => break,
        }
    }
    assert!(big_closed, "an oversized payload closes that connection");

    // Random bytes, some starting like a CONNECT: a bounded, seeded storm.
    let mut seed: u64 = 0x5eed_da7a;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as u8
    };
    for i in 0..60 {
        let mut blob: Vec<u8> = (0..(8 + usize::from(next()) % 200))
            .map(|_| next())
            .collect();
        if i % 3 == 0 {
            blob[0] = 0x10; // CONNECT, with whatever follows
        }
        if let Ok(mut s) = TcpStream::connect(gw.mqtt) {
            let _ = s.write_all(&blob);
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
    }

    // The other device is unaffected, and the process is up.
    gc.publish("devices/good/x", QoS::AtLeastOnce, false, r#"{"ok":true}"#)
        .await?;
    let got = collect(
        Some(&sub),
        &mut cloud_events,
        Duration::from_secs(10),
        |g| !g.is_empty(),
    )
    .await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, br#"{"ok":true}"#);
    assert!(gw.healthz()?.contains("\"ok\""));
    drop(gc);
    let _ = gd.await;
    gw.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_a_device_only_when_allowed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let cloud = Cloud::start()?;
    let plug = add_device(&data, "plug", "tasmota")?;
    let policy = write_policy(
        dir.path(),
        "[[command]]\ndevice = \"plug\"\ndestination = \"vendor_cloud\"\ntopic = \"cmnd/plug/POWER\"\n",
    )?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;
    let (pc, mut pe) = connect(device_options(gw.mqtt, &plug, "plug")).await?;
    pc.subscribe("cmnd/plug/#", QoS::AtLeastOnce).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), pe.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(a)))) => {
                assert!(matches!(
                    a.return_codes[0],
                    rumqttc::SubscribeReasonCode::Success(_)
                ));
                break;
            }
            Ok(Ok(_)) => {}
            other => bail!("no SUBACK: {other:?}"),
        }
    }
    let (cc, ce) = connect({
        let mut o = rumqttc::MqttOptions::new("vendor", "127.0.0.1", cloud.port);
        o.set_keep_alive(Duration::from_secs(30));
        o
    })
    .await?;
    let cd = drive(ce);
    gw.wait_for_log("uplink connected", Duration::from_secs(10))?;
    // The command subscription goes out right after the connect.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cc.publish(
        "home/cmd/cmnd/plug/Upgrade",
        QoS::AtLeastOnce,
        false,
        "http://evil/fw.bin",
    )
    .await?;
    cc.publish("home/cmd/cmnd/plug/POWER", QoS::AtLeastOnce, false, "ON")
        .await?;
    let got = collect(None, &mut pe, Duration::from_secs(10), |g| !g.is_empty()).await;
    let more = stragglers(None, &mut pe, Duration::from_millis(700)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0], ("cmnd/plug/POWER".to_string(), b"ON".to_vec()));
    assert!(
        more.is_empty(),
        "a disallowed command got through: {more:?}"
    );
    assert!(gw.log().contains("command dropped"));
    drop(cc);
    let _ = cd.await;
    gw.stop()?;
    Ok(())
}

/// A payload that starts like JSON but does not parse goes to no
/// destination, even under a share-everything rule; it is counted, and
/// kept in the history. The message after it flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_json_payload_reaches_no_destination() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let tracker = add_device(&data, "tracker", "generic")?;
    init_keys(&data)?;
    let policy = write_policy(dir.path(), SHARE_ALL)?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;
    let (sub, mut sub_events) = cloud_subscriber(&cloud, "home/#", "sub-malformed").await?;
    let (client, events) = connect(device_options(gw.mqtt, &tracker, "tracker")).await?;
    let driven = drive(events);
    // Cut short: the whole object would otherwise have left as `$payload`.
    let malformed = r#"{"ssid":"home","loc":[52.1,"#;
    client
        .publish("devices/tracker/state", QoS::AtLeastOnce, false, malformed)
        .await?;
    client
        .publish(
            "devices/tracker/state",
            QoS::AtLeastOnce,
            false,
            r#"{"bat":90}"#,
        )
        .await?;
    let got = collect(Some(&sub), &mut sub_events, Duration::from_secs(10), |g| {
        !g.is_empty()
    })
    .await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(std::str::from_utf8(&got[0].1)?, r#"{"bat":90}"#);
    let more = stragglers(Some(&sub), &mut sub_events, Duration::from_millis(700)).await;
    assert!(more.is_empty(), "unexpected extra messages: {more:?}");
    let status = cli_json(&data, &["status"])?;
    assert_eq!(status["malformed_messages"], 1, "{status}");
    drop(client);
    let _ = driven.await;
    assert!(gw.stop()?.success());
    // Kept locally, as received.
    let pass = passphrase_file(&data)?;
    let export = cli_ok(
        &data,
        &["export", "--passphrase-file", &pass.to_string_lossy()],
    )?;
    assert_eq!(export.lines().count(), 2, "{export}");
    assert!(
        export.contains(r#""payload_text":"{\"ssid\":\"home\",\"loc\":[52.1,""#),
        "{export}"
    );
    Ok(())
}

/// The value-level actions, end to end: the cloud receives exactly the
/// transformed values, and numbers it shares exactly as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloud_receives_exactly_the_transformed_values() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let thermo = add_device(&data, "thermo", "generic")?;
    let rule = |field: &str, action: &str| {
        format!("[[rule]]\ndevice = \"thermo\"\nfield = \"{field}\"\ndestination = \"vendor_cloud\"\naction = \"{action}\"\n")
    };
    let policy = [
        format!("{}step = 0.5\n", rule("temp", "round")),
        rule("ssid", "redact"),
        format!(
            "{}edges = [30, 70]\nlabels = [\"dry\", \"ok\", \"damp\"]\n",
            rule("hum", "bucket")
        ),
        format!("{}unit = \"day\"\n", rule("at", "truncate_time")),
        rule("energy", "share"),
    ]
    .join("\n");
    let policy = write_policy(dir.path(), &policy)?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;
    let (sub, mut sub_events) = cloud_subscriber(&cloud, "home/#", "sub-actions").await?;
    let (client, events) = connect(device_options(gw.mqtt, &thermo, "thermo")).await?;
    let driven = drive(events);
    client
        .publish(
            "devices/thermo/state",
            QoS::AtLeastOnce,
            false,
            r#"{"temp":21.74,"ssid":"home-wifi","hum":71.5,"at":1764520514,"energy":12345678901234567890123,"occupied":true}"#,
        )
        .await?;
    let got = collect(Some(&sub), &mut sub_events, Duration::from_secs(10), |g| {
        !g.is_empty()
    })
    .await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        std::str::from_utf8(&got[0].1)?,
        r#"{"temp":21.5,"ssid":"[redacted]","hum":"damp","at":1764460800,"energy":12345678901234567890123}"#
    );
    drop(client);
    let _ = driven.await;
    assert!(gw.stop()?.success());
    Ok(())
}

/// `seal`: the cloud receives the field sealed to the user's key, and
/// `dataward decrypt` opens what the cloud received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_field_opens_with_dataward_decrypt() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let tracker = add_device(&data, "tracker", "generic")?;
    init_keys(&data)?;
    let policy = write_policy(
        dir.path(),
        "[[rule]]\ndevice = \"tracker\"\nfield = \"loc\"\ndestination = \"vendor_cloud\"\naction = \"seal\"\n\n\
         [[rule]]\ndevice = \"tracker\"\nfield = \"bat\"\ndestination = \"vendor_cloud\"\naction = \"share\"\n",
    )?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;
    let (sub, mut sub_events) = cloud_subscriber(&cloud, "home/#", "sub-seal").await?;
    let (client, events) = connect(device_options(gw.mqtt, &tracker, "tracker")).await?;
    let driven = drive(events);
    client
        .publish(
            "devices/tracker/state",
            QoS::AtLeastOnce,
            false,
            r#"{"loc":{"lat":52.3702,"lon":4.8952},"bat":90}"#,
        )
        .await?;
    let got = collect(Some(&sub), &mut sub_events, Duration::from_secs(10), |g| {
        !g.is_empty()
    })
    .await;
    assert_eq!(got.len(), 1, "{got:?}");
    let received = String::from_utf8(got[0].1.clone())?;
    assert!(!received.contains("52.3702"), "{received}");
    let v: serde_json::Value = serde_json::from_str(&received)?;
    assert!(
        v["loc"]["lat"].as_str().unwrap_or("").starts_with("dw1."),
        "{received}"
    );
    assert_eq!(v["bat"], 90);
    drop(client);
    let _ = driven.await;
    // Opened with the passphrase, running gateway or not.
    let pass = passphrase_file(&data)?;
    let mut child = std::process::Command::new(dataward_bin()?)
        .args(["decrypt", "--passphrase-file", &pass.to_string_lossy()])
        .args(["--data-dir", &data.to_string_lossy()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{received}")?;
    }
    let out = child.wait_with_output()?;
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout)?.trim(),
        r#"{"loc":{"lat":52.3702,"lon":4.8952},"bat":90}"#
    );
    assert!(gw.stop()?.success());
    Ok(())
}

/// `pseudonymize`: the cloud gets the same pseudonym for the same value,
/// another one for another value, never the value, and the same again
/// after a restart (the destination's key is kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pseudonyms_are_stable_and_hide_the_value() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let lock = add_device(&data, "lock", "generic")?;
    let policy = write_policy(
        dir.path(),
        "[[rule]]\ndevice = \"lock\"\nfield = \"user\"\ndestination = \"vendor_cloud\"\naction = \"pseudonymize\"\n",
    )?;
    let config = config_for(&data, &cloud, Some(&policy), "");
    let (sub, mut sub_events) = cloud_subscriber(&cloud, "home/#", "sub-pseudo").await?;
    let mut seen = Vec::new();
    for users in [&["alice", "bob", "alice"][..], &["alice"][..]] {
        let gw = Gateway::start(dir.path(), &config)?;
        let (client, events) = connect(device_options(gw.mqtt, &lock, "lock")).await?;
        let driven = drive(events);
        for u in users {
            client
                .publish(
                    "devices/lock/state",
                    QoS::AtLeastOnce,
                    false,
                    format!(r#"{{"user":"{u}"}}"#),
                )
                .await?;
        }
        let want = seen.len() + users.len();
        let got = collect(Some(&sub), &mut sub_events, Duration::from_secs(10), |g| {
            g.len() == users.len()
        })
        .await;
        for (_, payload) in got {
            let v: serde_json::Value = serde_json::from_slice(&payload)?;
            seen.push(v["user"].as_str().unwrap_or_default().to_string());
        }
        assert_eq!(seen.len(), want, "{seen:?}");
        drop(client);
        let _ = driven.await;
        assert!(gw.stop()?.success());
    }
    assert!(seen.iter().all(|p| p.starts_with("ps-")), "{seen:?}");
    assert_eq!(seen[0], seen[2], "same value, same pseudonym");
    assert_ne!(seen[0], seen[1], "another value, another pseudonym");
    assert_eq!(seen[0], seen[3], "the same after a restart");
    Ok(())
}

/// `policy preview --last` evaluates the device's last real message, which
/// the running gateway keeps in memory only.
#[test]
fn preview_last_uses_the_last_real_message() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let meter = add_device(&data, "meter", "generic")?;
    let policy = write_policy(
        dir.path(),
        "[[rule]]\nname = \"power-out\"\ndevice = \"meter\"\nfield = \"w\"\ndestination = \"vendor_cloud\"\naction = \"round\"\nstep = 10\n",
    )?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;
    let nothing_yet = cli(&[
        "policy",
        "preview",
        "--device",
        "meter",
        "--last",
        "--data-dir",
        &data.to_string_lossy(),
    ])?;
    assert_eq!(nothing_yet.status.code(), Some(2));
    publish_each(&gw, &meter, &[r#"{"w":1234,"ssid":"home"}"#.to_string()])?;
    let p = cli_json(&data, &["policy", "preview", "--device", "meter", "--last"])?;
    let dest = &p["destinations"][0];
    assert_eq!(dest["payload"], r#"{"w":1230}"#, "{p}");
    assert_eq!(p["topic"], "devices/meter/state");
    let w = dest["fields"]
        .as_array()
        .and_then(|f| f.iter().find(|x| x["field"] == "w"))
        .cloned();
    assert!(
        w.as_ref()
            .and_then(|w| w["rule"].as_str())
            .is_some_and(|r| r.contains("power-out")),
        "{w:?}"
    );
    assert!(gw.stop()?.success());
    let stopped = cli(&[
        "policy",
        "preview",
        "--device",
        "meter",
        "--last",
        "--data-dir",
        &data.to_string_lossy(),
    ])?;
    assert_eq!(stopped.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&stopped.stderr).contains("running"));
    Ok(())
}
