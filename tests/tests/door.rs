//! Refused at the door: a message that could never leave the home (a topic
//! with control characters, or too long once a destination's prefix is
//! added) is refused at PUBLISH, and what follows it still flows.

use std::time::Duration;

use anyhow::{bail, Result};
use dataward_tests::*;
use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, PubAckReason};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::Event as Event5;
use rumqttc::{Event, Packet, QoS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_that_cannot_leave_are_refused_and_the_rest_flows() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let v5 = add_device(&data, "five", "generic")?;
    let v3 = add_device(&data, "three", "generic")?;
    let policy = write_policy(dir.path(), SHARE_ALL)?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;
    let (sub, mut sub_events) = cloud_subscriber(&cloud, "home/#", "sub-door").await?;

    let long = format!(
        "devices/five/{}",
        "x".repeat(65_535 - "devices/five/".len())
    );
    assert_eq!(long.len(), 65_535);
    let bad = [
        (
            "devices/five/a\u{0}b".to_string(),
            PubAckReason::PayloadFormatInvalid,
        ),
        (
            "devices/five/a\nb".to_string(),
            PubAckReason::PayloadFormatInvalid,
        ),
        (
            "devices/five/\u{1b}[2J".to_string(),
            PubAckReason::PayloadFormatInvalid,
        ),
        (
            "devices/five/\u{85}".to_string(),
            PubAckReason::PayloadFormatInvalid,
        ),
        (long, PubAckReason::UnspecifiedError),
    ];
    let mut o5 = rumqttc::v5::MqttOptions::new("five", gw.mqtt.ip().to_string(), gw.mqtt.port());
    o5.set_credentials(v5.id.clone(), v5.password.clone());
    o5.set_max_packet_size(Some(1 << 20));
    let (c5, mut e5) = rumqttc::v5::AsyncClient::new(o5, 16);
    for (topic, _) in &bad {
        c5.publish(topic.clone(), QoS5::AtLeastOnce, false, "{\"t\":1}")
            .await?;
    }
    // Its own command topic: commands come from a destination only.
    c5.publish("devices/five/cmd/x", QoS5::AtLeastOnce, false, "{\"t\":9}")
        .await?;
    c5.publish("devices/five/ok", QoS5::AtLeastOnce, false, "{\"t\":5}")
        .await?;
    let mut reasons = Vec::new();
    while reasons.len() < bad.len() + 2 {
        match tokio::time::timeout(Duration::from_secs(10), e5.poll()).await {
            Ok(Ok(Event5::Incoming(Packet5::PubAck(a)))) => reasons.push(a.reason),
            Ok(Ok(_)) => {}
            other => bail!("the v5 device lost its connection: {other:?}"),
        }
    }
    let mut expected: Vec<_> = bad.iter().map(|(_, r)| *r).collect();
    expected.push(PubAckReason::NotAuthorized);
    expected.push(PubAckReason::Success);
    assert_eq!(reasons, expected);

    // MQTT 3.1.1 cannot say why: the message is dropped, the connection
    // stays, and the next message flows.
    let (c3, mut e3) = connect(device_options(gw.mqtt, &v3, "three")).await?;
    c3.publish(
        "devices/three/a\u{0}b",
        QoS::AtLeastOnce,
        false,
        "{\"t\":3}",
    )
    .await?;
    c3.publish("devices/three/ok", QoS::AtLeastOnce, false, "{\"t\":4}")
        .await?;
    let mut acks = 0;
    while acks < 2 {
        match tokio::time::timeout(Duration::from_secs(10), e3.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acks += 1,
            Ok(Ok(_)) => {}
            other => bail!("the 3.1.1 device lost its connection: {other:?}"),
        }
    }

    let got = collect(Some(&sub), &mut sub_events, Duration::from_secs(10), |g| {
        g.len() >= 2
    })
    .await;
    let mut topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    topics.sort();
    assert_eq!(topics, ["home/devices/five/ok", "home/devices/three/ok"]);
    let more = collect(
        Some(&sub),
        &mut sub_events,
        Duration::from_millis(500),
        |g| !g.is_empty(),
    )
    .await;
    assert!(more.is_empty(), "refused messages leaked: {more:?}");
    assert!(gw
        .log()
        .contains("publish refused: it could not leave the home"));
    assert!(gw.stop()?.success());
    Ok(())
}
