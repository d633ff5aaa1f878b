//! Losing nothing: a cloud outage in the middle of a QoS 1 stream, and a
//! kill -9 of the gateway in the middle of one.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Result};
use dataward_tests::*;
use rumqttc::{Event, Outgoing, Packet, QoS};

/// Publishes `n` QoS 1 messages numbered 0..n, driving the event loop, and
/// returns the numbers the gateway acknowledged. Stops early when `stop`
/// fires (the gateway died) and returns what was acknowledged by then.
async fn publish_numbered(
    client: rumqttc::AsyncClient,
    mut events: rumqttc::EventLoop,
    topic: &str,
    n: usize,
    pace_every: usize,
) -> Vec<usize> {
    let topic = topic.to_string();
    let publisher = tokio::spawn(async move {
        for i in 0..n {
            let payload = format!(r#"{{"seq":{i},"temp":20.5}}"#);
            if client
                .publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                break;
            }
            if pace_every > 0 && i % pace_every == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        client
    });
    let mut sent: std::collections::VecDeque<usize> = Default::default();
    let mut next_seq = 0usize;
    let mut pkid_to_seq: HashMap<u16, usize> = HashMap::new();
    let mut acked = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                sent.push_back(next_seq);
                pkid_to_seq.insert(pkid, next_seq);
                next_seq += 1;
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(a)))) => {
                if let Some(s) = pkid_to_seq.remove(&a.pkid) {
                    acked.push(s);
                }
                if acked.len() == n {
                    break;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    drop(publisher);
    acked
}

fn seq_of(payload: &[u8]) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v["seq"].as_u64().map(|s| s as usize)
}

/// Every number 0..n present; first arrivals in increasing order
/// (redelivery after an outage may repeat a few, never reorder).
fn check_complete_in_order(got: &[(String, Vec<u8>)], n: usize) -> Result<usize> {
    let mut seen = vec![false; n];
    let mut last_first = None;
    let mut dups = 0;
    for (_, p) in got {
        let Some(s) = seq_of(p) else {
            bail!("unexpected payload {:?}", String::from_utf8_lossy(p))
        };
        if s >= n {
            bail!("sequence {s} out of range");
        }
        if seen[s] {
            dups += 1;
            continue;
        }
        if let Some(l) = last_first {
            if s < l {
                bail!("{s} first arrived after {l}: order broken");
            }
        }
        seen[s] = true;
        last_first = Some(s);
    }
    let missing: Vec<usize> = (0..n).filter(|i| !seen[*i]).collect();
    if !missing.is_empty() {
        bail!(
            "{} messages missing, first {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }
    Ok(dups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_outage_loses_nothing_and_keeps_order() -> Result<()> {
    const N: usize = 2000;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut cloud = Cloud::start()?;
    let dev = add_device(&data, "meter", "generic")?;
    let policy = write_policy(dir.path(), SHARE_ALL)?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;
    let (sub, mut sub_events) = cloud_subscriber(&cloud, "home/#", "sub-outage").await?;

    let (client, events) = connect(device_options(gw.mqtt, &dev, "meter")).await?;
    let publishing = tokio::spawn(publish_numbered(
        client,
        events,
        "devices/meter/reading",
        N,
        10,
    ));

    // Let part of the stream through, then take the cloud away.
    let mut before = collect(Some(&sub), &mut sub_events, Duration::from_secs(20), |g| {
        g.len() >= 200
    })
    .await;
    cloud.stop()?;
    // The subscriber's client has already read (and acknowledged) whatever
    // the cloud sent before it stopped; keep those too.
    // rumqttc reports the connection error before the events it parsed in
    // the same read, so poll past a few errors.
    let mut errors = 0;
    while errors < 3 {
        match tokio::time::timeout(Duration::from_secs(2), sub_events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                before.push((p.topic.clone(), p.payload.to_vec()));
                let _ = sub.try_ack(&p);
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => errors += 1,
            Err(_) => break,
        }
    }
    drop(sub);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cloud.restart()?;
    let (sub, mut sub_events, redelivered) =
        resume_cloud_subscriber(&cloud, "home/#", "sub-outage").await?;
    before.extend(redelivered);

    let acked = publishing.await?;
    assert_eq!(
        acked.len(),
        N,
        "the gateway acknowledged every message while the cloud was down"
    );
    let seen_before: std::collections::HashSet<usize> =
        before.iter().filter_map(|(_, p)| seq_of(p)).collect();
    let mut all = before;
    let rest = collect(Some(&sub), &mut sub_events, Duration::from_secs(60), |g| {
        let mut seen = seen_before.clone();
        seen.extend(g.iter().filter_map(|(_, p)| seq_of(p)));
        seen.len() >= N
    })
    .await;
    all.extend(rest);
    let dups = check_complete_in_order(&all, N)?;
    eprintln!("outage: {N} delivered, {dups} redelivered duplicates");
    assert!(
        gw.log().contains("uplink disconnected"),
        "the outage was noticed"
    );
    // An outage is not a refusal: nothing was set aside.
    assert!(!gw.log().contains("set aside as a dead letter"));
    assert_eq!(
        cli_json(&data, &["status"])?["destinations"][0]["dead_letters"],
        0
    );
    gw.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_keeps_every_acknowledged_message() -> Result<()> {
    const N: usize = 20_000;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let cloud = Cloud::start()?;
    let dev = add_device(&data, "meter", "generic")?;
    init_keys(&data)?;
    let policy = write_policy(dir.path(), SHARE_ALL)?;
    let config = config_for(&data, &cloud, Some(&policy), "");
    let gw = Gateway::start(dir.path(), &config)?;
    let (sub, mut sub_events) = cloud_subscriber(&cloud, "home/#", "sub-crash").await?;

    let (client, events) = connect(device_options(gw.mqtt, &dev, "meter")).await?;
    let publishing = tokio::spawn(publish_numbered(
        client,
        events,
        "devices/meter/reading",
        N,
        0,
    ));
    // Kill it mid-stream, with no chance to flush.
    let early = collect(Some(&sub), &mut sub_events, Duration::from_secs(30), |g| {
        g.len() >= 1000
    })
    .await;
    assert!(early.len() >= 1000, "the stream got going before the crash");
    gw.crash()?;
    let acked = publishing.await?;
    assert!(
        !acked.is_empty() && acked.len() < N,
        "the crash came mid-stream ({} acked)",
        acked.len()
    );

    let gw = Gateway::start(dir.path(), &config)?;
    let want: std::collections::HashSet<usize> = acked.iter().copied().collect();
    let seen_early: std::collections::HashSet<usize> =
        early.iter().filter_map(|(_, p)| seq_of(p)).collect();
    let mut all = early;
    let rest = collect(Some(&sub), &mut sub_events, Duration::from_secs(60), |g| {
        let mut seen = seen_early.clone();
        seen.extend(g.iter().filter_map(|(_, p)| seq_of(p)));
        want.iter().all(|s| seen.contains(s))
    })
    .await;
    all.extend(rest);
    let at_cloud: std::collections::HashSet<usize> =
        all.iter().filter_map(|(_, p)| seq_of(p)).collect();
    let lost: Vec<usize> = want
        .iter()
        .filter(|s| !at_cloud.contains(s))
        .copied()
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages never reached the cloud, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    // What sled had not flushed came back from the journal: the path the
    // acknowledgements relied on was the one exercised.
    assert!(
        gw.log()
            .contains("the journal's writes since the last checkpoint were applied"),
        "no journal replay after the crash:\n{}",
        gw.log()
    );
    gw.stop()?;

    let in_history = stored_seqs(&data, "meter")?;
    let missing: Vec<usize> = want
        .iter()
        .filter(|s| !in_history.contains(s))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged messages missing from history",
        missing.len()
    );
    eprintln!(
        "crash: {} acknowledged before kill -9, all in history and at the cloud",
        want.len()
    );
    Ok(())
}

/// The same under full load: ten devices publishing as fast as the
/// gateway acknowledges, into one group commit, killed mid-stream. Every
/// message acknowledged to any of them reaches the cloud after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_under_full_load_loses_no_acknowledged_message() -> Result<()> {
    const DEVICES: usize = 10;
    const N: usize = 5_000;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let cloud = Cloud::start()?;
    let devs: Vec<DeviceCreds> = (0..DEVICES)
        .map(|i| add_device(&data, &format!("m{i}"), "generic"))
        .collect::<Result<_>>()?;
    init_keys(&data)?;
    let policy = write_policy(dir.path(), SHARE_ALL)?;
    let config = config_for(&data, &cloud, Some(&policy), "");
    // Small journal segments: the load fills one every few hundred
    // messages, so the kill comes after many switches between the two and
    // their background checkpoints, with both likely live.
    let small_segments = [("DATAWARD_TEST_JOURNAL_BYTES", "262144")];
    let gw = Gateway::start_with_env(dir.path(), &config, &small_segments)?;
    let (sub, mut sub_events) = cloud_subscriber(&cloud, "home/#", "sub-crash-load").await?;

    let mut publishing = Vec::new();
    for d in &devs {
        let (client, events) = connect(device_options(gw.mqtt, d, &d.id)).await?;
        let topic = format!("devices/{}/reading", d.id);
        publishing.push((
            format!("home/{topic}"),
            tokio::spawn(async move { publish_numbered(client, events, &topic, N, 0).await }),
        ));
    }
    let early = collect(Some(&sub), &mut sub_events, Duration::from_secs(30), |g| {
        g.len() >= 3000
    })
    .await;
    assert!(early.len() >= 3000, "the load got going before the crash");
    gw.crash()?;
    let mut want: std::collections::HashSet<(String, usize)> = Default::default();
    for (topic, task) in publishing {
        for s in task.await? {
            want.insert((topic.clone(), s));
        }
    }
    assert!(
        want.len() < DEVICES * N,
        "the crash came mid-stream ({} acked)",
        want.len()
    );

    let gw = Gateway::start_with_env(dir.path(), &config, &small_segments)?;
    let key = |(t, p): &(String, Vec<u8>)| seq_of(p).map(|s| (t.clone(), s));
    let mut at_cloud: std::collections::HashSet<(String, usize)> =
        early.iter().filter_map(key).collect();
    // Counted down as messages arrive (the closure sees them all each time).
    let mut missing: std::collections::HashSet<(String, usize)> =
        want.difference(&at_cloud).cloned().collect();
    let mut looked = 0;
    let rest = collect(Some(&sub), &mut sub_events, Duration::from_secs(90), |g| {
        for m in &g[looked..] {
            if let Some(k) = key(m) {
                missing.remove(&k);
            }
        }
        looked = g.len();
        missing.is_empty()
    })
    .await;
    at_cloud.extend(rest.iter().filter_map(key));
    let lost: Vec<&(String, usize)> = want.iter().filter(|w| !at_cloud.contains(w)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages never reached the cloud, e.g. {:?}",
        lost.len(),
        want.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        gw.log()
            .contains("the journal's writes since the last checkpoint were applied"),
        "no journal replay after the crash:\n{}",
        gw.log()
    );
    assert_eq!(
        std::fs::metadata(data.join("journal").join("0"))?.len(),
        262_144,
        "the small segments were in use"
    );
    gw.stop()?;
    eprintln!(
        "crash under load: {} messages acknowledged to {DEVICES} devices before kill -9, acknowledged-but-lost 0",
        want.len()
    );
    Ok(())
}
