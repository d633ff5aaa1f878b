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
    let v5dev = v5.clone();
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

    // Wildcards have no place in a PUBLISH, and no cloud would take one
    // (client libraries refuse to send them, so these go out raw).
    for (v5, topic) in [
        (true, &b"devices/five/+"[..]),
        (false, &b"devices/five/a/#"[..]),
    ] {
        let reason = raw_publish(gw.mqtt, &v5dev, v5, topic).await?;
        if v5 {
            assert_eq!(reason, Some(0x99), "MQTT 5 is told why");
        }
    }
    // And what comes after them still flows.
    c3.publish("devices/three/after", QoS::AtLeastOnce, false, "{\"t\":6}")
        .await?;
    wait_for(&mut e3, |e| matches!(e, Event::Incoming(Packet::PubAck(_)))).await?;

    let got = collect(Some(&sub), &mut sub_events, Duration::from_secs(10), |g| {
        g.len() >= 3
    })
    .await;
    let mut topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    topics.sort();
    assert_eq!(
        topics,
        [
            "home/devices/five/ok",
            "home/devices/three/after",
            "home/devices/three/ok"
        ]
    );
    let more = stragglers(Some(&sub), &mut sub_events, Duration::from_millis(500)).await;
    assert!(more.is_empty(), "refused messages leaked: {more:?}");
    assert!(gw
        .log()
        .contains("publish refused: it could not leave the home"));
    assert!(gw.stop()?.success());
    Ok(())
}

/// Reads one MQTT packet: (first byte, body).
async fn read_packet(s: &mut tokio::net::TcpStream) -> Result<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let kind = s.read_u8().await?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = s.read_u8().await?;
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 || shift > 21 {
            break;
        }
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).await?;
    Ok((kind, body))
}

/// Connects as `dev` with a raw socket, publishes on `topic` at QoS 1, and
/// returns the PUBACK's reason code (MQTT 5), or None (3.1.1).
async fn raw_publish(
    addr: std::net::SocketAddr,
    dev: &DeviceCreds,
    v5: bool,
    topic: &[u8],
) -> Result<Option<u8>> {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let id = format!("{}.raw", dev.id);
    s.write_all(&fuzz::connect(v5, &id, &dev.id, &dev.password, false))
        .await?;
    let (kind, body) = read_packet(&mut s).await?;
    anyhow::ensure!(
        kind == 0x20 && body.get(1) == Some(&0),
        "not accepted: {body:?}"
    );
    s.write_all(&fuzz::publish(v5, topic, b"{\"t\":1}", 1, 7, false))
        .await?;
    let (kind, body) = tokio::time::timeout(Duration::from_secs(10), read_packet(&mut s)).await??;
    anyhow::ensure!(kind == 0x40, "expected a PUBACK, got {kind:#04x}");
    Ok(if v5 {
        Some(body.get(2).copied().unwrap_or(0))
    } else {
        None
    })
}
