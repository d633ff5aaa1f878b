//! Broker features a device relies on: will messages, retained messages,
//! the per-device connection limit.

use std::time::Duration;

use anyhow::Result;
use dataward_tests::*;
use rumqttc::{Event, LastWill, Packet, QoS};

fn setup(extra: &str) -> Result<(tempfile::TempDir, Cloud, Gateway, DeviceCreds, DeviceCreds)> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let cloud = Cloud::start()?;
    let a = add_device(&data, "a", "generic")?;
    let b = add_device(&data, "b", "generic")?;
    let policy = write_policy(dir.path(), SHARE_ALL)?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), extra))?;
    Ok((dir, cloud, gw, a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_messages_pass_the_policy_and_cannot_target_other_devices() -> Result<()> {
    let (_dir, cloud, gw, a, b) = setup("")?;
    let (sub, mut cloud_events) = cloud_subscriber(&cloud, "home/#", "sub-will").await?;

    // A will on another device's command topic is refused at CONNECT.
    let mut forged = device_options(gw.mqtt, &b, "b");
    forged.set_last_will(LastWill::new(
        "devices/a/cmd/power",
        "ON",
        QoS::AtLeastOnce,
        false,
    ));
    assert!(
        connect(forged).await.is_err(),
        "a will outside the device's topics must be refused"
    );

    // A will on its own topic is accepted, and published when the device
    // drops off without a DISCONNECT.
    let mut honest = device_options(gw.mqtt, &a, "a");
    honest.set_keep_alive(Duration::from_secs(5));
    honest.set_last_will(LastWill::new(
        "devices/a/status",
        r#"{"online":false}"#,
        QoS::AtLeastOnce,
        false,
    ));
    let (client, events) = connect(honest).await?;
    // Dropping the event loop closes the socket without DISCONNECT.
    drop(events);
    drop(client);
    let got = collect(
        Some(&sub),
        &mut cloud_events,
        Duration::from_secs(15),
        |g| !g.is_empty(),
    )
    .await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0],
        (
            "home/devices/a/status".to_string(),
            br#"{"online":false}"#.to_vec()
        )
    );
    gw.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_flow_and_a_device_cannot_command_itself() -> Result<()> {
    let (_dir, _cloud, gw, a, _b) = setup("")?;
    let (c, mut e) = connect(device_options(gw.mqtt, &a, "a")).await?;
    // A retained message on its own telemetry topic is taken (and kept: the
    // removal test sees it dropped with the device).
    c.publish("devices/a/state", QoS::AtLeastOnce, true, "kept")
        .await?;
    wait_for(&mut e, |ev| {
        matches!(ev, Event::Incoming(Packet::PubAck(_)))
    })
    .await?;
    // Its own command topic is not a place it may publish: commands come
    // from a destination, through a rule.
    c.subscribe("devices/a/cmd/#", QoS::AtLeastOnce).await?;
    c.publish("devices/a/cmd/last", QoS::AtLeastOnce, true, "self")
        .await?;
    let got = collect(None, &mut e, Duration::from_secs(2), |g| !g.is_empty()).await;
    assert!(got.is_empty(), "a device commanded itself: {got:?}");
    assert!(gw
        .log()
        .contains("may not publish to its own command topics"));
    gw.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_device_are_limited() -> Result<()> {
    let (_dir, _cloud, gw, a, b) = setup("[mqtt]\nmax_connections_per_device = 2\n")?;
    let first = connect(device_options(gw.mqtt, &a, "a")).await?;
    let second = connect(device_options(gw.mqtt, &a, "a.two")).await?;
    let refused = connect(device_options(gw.mqtt, &a, "a.three")).await;
    assert!(
        refused.is_err(),
        "a third connection for the same device is refused"
    );
    // Another device is not affected by a's limit.
    let other = connect(device_options(gw.mqtt, &b, "b")).await?;
    assert!(gw.log().contains("connection limit"));
    drop((first, second, other));
    gw.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_connections_free_their_slot() -> Result<()> {
    let (_dir, _cloud, gw, a, _b) = setup("[mqtt]\nmax_connections_per_device = 1\n")?;
    for round in 0..3 {
        let (c, mut e) = connect(device_options(gw.mqtt, &a, "a")).await?;
        if round % 2 == 0 {
            c.disconnect().await?;
            let _ = tokio::time::timeout(Duration::from_secs(2), e.poll()).await;
        }
        // Odd rounds just drop the socket, with no DISCONNECT.
        drop((c, e));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The slot is free again, for another client id of the same device.
    let (c, _e) = connect(device_options(gw.mqtt, &a, "a.other")).await?;
    drop(c);
    gw.stop()?;
    Ok(())
}
