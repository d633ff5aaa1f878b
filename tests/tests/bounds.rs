//! Memory a client could make the hub keep: a device that never reads its
//! socket while a cloud sends it 10,000 large commands holds a bounded
//! queue, not all of them.

use std::time::{Duration, Instant};

use anyhow::Result;
use dataward_tests::*;
use rumqttc::{MqttOptions, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_never_reads_holds_a_bounded_queue() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let plug = add_device(&data, "plug", "tasmota")?;
    let policy = write_policy(
        dir.path(),
        "[[command]]\ndevice = \"plug\"\ndestination = \"vendor_cloud\"\ntopic = \"cmnd/plug/#\"\n",
    )?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), ""))?;

    // The device subscribes, then never reads again.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut s = socket.connect(gw.mqtt).await?;
    s.write_all(&fuzz::connect(
        false,
        "plug",
        &plug.id,
        &plug.password,
        false,
    ))
    .await?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await?;
    assert_eq!(connack, [0x20, 2, 0, 0], "connected");
    // At QoS 0, the worst case: no in-flight window holds it back.
    let mut sub = fuzz::subscribe(false, b"cmnd/plug/#", 1);
    if let Some(qos) = sub.last_mut() {
        *qos = 0;
    }
    s.write_all(&sub).await?;
    let mut suback = [0u8; 5];
    s.read_exact(&mut suback).await?;
    assert_eq!(suback[0], 0x90, "subscribed");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = rss_kib(gw.pid())?;
    let mut o = MqttOptions::new("cloud-flood", "127.0.0.1", cloud.port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (cloud_client, mut cloud_events) = connect(o).await?;
    let driver = tokio::spawn(async move { while cloud_events.poll().await.is_ok() {} });
    let command = vec![b'x'; 16_000];
    let started = Instant::now();
    let mut peak = baseline;
    for i in 0..10_000 {
        cloud_client
            .publish(
                "home/cmd/cmnd/plug/POWER",
                QoS::AtMostOnce,
                false,
                command.clone(),
            )
            .await?;
        if i % 100 == 0 {
            peak = peak.max(rss_kib(gw.pid())?);
            tokio::task::yield_now().await;
        }
    }
    // Let the gateway take in what is still on its way.
    while started.elapsed() < Duration::from_secs(3) {
        peak = peak.max(rss_kib(gw.pid())?);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grew_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!("RSS {baseline} KiB before, {peak} KiB at the peak (+{grew_mib} MiB) for 160 MB of commands");
    // A device gets at most 256 KiB of commands at once and 32 KiB/s after;
    // its queue holds 64 × 16 KiB; the command channel in front of the
    // router at most 1024 × 16 KiB.
    assert!(grew_mib < 40, "RSS grew by {grew_mib} MiB");
    // The commands did reach the device, up to its budget; the rest were
    // dropped as they came.
    assert!(gw.log().contains("command relayed to device"));
    assert!(
        gw.log()
            .contains("command dropped: over the device's command rate"),
        "the budget never ran out"
    );
    driver.abort();
    drop(s);
    assert!(gw.stop()?.success());
    Ok(())
}
