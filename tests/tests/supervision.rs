//! A stage that fails is not left half-dead: a panic injected into the
//! committer (debug builds only) stops the gateway with a non-zero exit
//! within 2 s, and every message it acknowledged is there after a restart.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Result};
use dataward_tests::*;
use rumqttc::{Event, Outgoing, Packet, QoS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_committer_stops_the_gateway_and_loses_nothing() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let dev = add_device(&data, "meter", "generic")?;
    init_keys(&data)?;
    let policy = write_policy(dir.path(), SHARE_ALL)?;
    let config = config_for(&data, &cloud, Some(&policy), "");
    let mut gw = Gateway::start_with_env(
        dir.path(),
        &config,
        &[("DATAWARD_TEST_FAULT", "committer:40")],
    )?;
    let (client, mut events) = connect(device_options(gw.mqtt, &dev, "meter")).await?;

    let publisher = tokio::spawn(async move {
        for i in 0..100_000u64 {
            let payload = format!(r#"{{"seq":{i}}}"#);
            if client
                .publish("devices/meter/state", QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut next = 0usize;
    let mut by_pkid: HashMap<u16, usize> = HashMap::new();
    let mut acked = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                by_pkid.insert(pkid, next);
                next += 1;
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(a)))) => {
                if let Some(seq) = by_pkid.remove(&a.pkid) {
                    acked.push(seq);
                }
            }
            Ok(Ok(_)) => {}
            // The gateway went away, or stopped answering.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    publisher.abort();
    let Some(status) = gw.wait_exit(Duration::from_secs(10))? else {
        bail!("the gateway kept running after its committer panicked");
    };
    let exited = std::time::SystemTime::now();
    // From the panic, as the gateway's own log stamps it, to the exit.
    let log = gw.log();
    let Some(panicked_at) = log
        .lines()
        .find(|l| l.contains("a gateway stage failed"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(utc_seconds_of_day)
    else {
        bail!("no failure logged: {log}");
    };
    let exited_at = exited.duration_since(std::time::UNIX_EPOCH)?.as_secs_f64() % 86_400.0;
    let took = Duration::from_secs_f64((exited_at - panicked_at).rem_euclid(86_400.0));
    assert!(
        !status.success(),
        "a failed stage exits non-zero: {status:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "it exited {took:?} after the failure"
    );
    assert!(gw.log().contains("committer"), "the log names the stage");
    assert!(!acked.is_empty(), "some messages were acknowledged first");

    // Everything acknowledged was stored.
    let stored = stored_seqs(&data, "meter")?;
    let lost: Vec<_> = acked.iter().filter(|s| !stored.contains(s)).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    // And the gateway starts again on the same data directory.
    let gw = Gateway::start(dir.path(), &config)?;
    assert!(gw.stop()?.success());
    Ok(())
}

/// Seconds since midnight UTC of a log timestamp like
/// `2026-11-30T15:05:07.122221Z`.
fn utc_seconds_of_day(stamp: &str) -> Option<f64> {
    let time = stamp.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}
