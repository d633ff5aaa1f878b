//! A message the cloud keeps refusing is set aside as a dead letter, and
//! the destination goes on with the next ones.

use std::time::{Duration, Instant};

use anyhow::Result;
use dataward_tests::*;
use rumqttc::{Event, Packet, QoS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_cloud_refuses_becomes_a_dead_letter() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    // This cloud drops any client that sends it a packet over 2000 bytes.
    let cloud = Cloud::start_with(&["max_packet_size 2000".to_string()])?;
    let dev = add_device(&data, "meter", "generic")?;
    let policy = write_policy(dir.path(), SHARE_ALL)?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;
    let (sub, mut sub_events) = cloud_subscriber(&cloud, "home/#", "sub-dead").await?;

    let (client, mut events) = connect(device_options(gw.mqtt, &dev, "meter")).await?;
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(5000));
    client
        .publish("devices/meter/state", QoS::AtLeastOnce, false, big)
        .await?;
    for i in 0..3 {
        client
            .publish(
                "devices/meter/state",
                QoS::AtLeastOnce,
                false,
                format!(r#"{{"n":{i}}}"#),
            )
            .await?;
    }
    let mut acks = 0;
    while acks < 4 {
        if let Event::Incoming(Packet::PubAck(_)) = events.poll().await? {
            acks += 1;
        }
    }
    let sent = Instant::now();
    let got = collect(Some(&sub), &mut sub_events, Duration::from_secs(20), |g| {
        g.len() >= 3
    })
    .await;
    let took = sent.elapsed();
    let payloads: Vec<String> = got
        .iter()
        .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert_eq!(
        payloads,
        [r#"{"n":0}"#, r#"{"n":1}"#, r#"{"n":2}"#],
        "in order, once each"
    );
    assert!(
        took < Duration::from_secs(15),
        "the next messages flowed {took:?} after the refused one"
    );
    let status = cli_json(&data, &["status"])?;
    let dest = &status["destinations"][0];
    assert_eq!(dest["dead_letters"], 1, "{status}");
    assert_eq!(dest["backlog"], 0, "{status}");
    assert!(gw.log().contains("set aside as a dead letter"));
    let text = cli_ok(&data, &["status"])?;
    assert!(
        text.contains("1 messages set aside as dead letters"),
        "{text}"
    );
    assert!(gw.stop()?.success());
    Ok(())
}
