//! The device port under hostile openings: sockets that never finish their
//! CONNECT are closed within the deadline, whatever they send, and a real
//! device connects and delivers meanwhile.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use dataward_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Opens a socket from `source`, sends `bytes`, then waits for the gateway
/// to close it; returns how long that took.
async fn hostile(
    addr: std::net::SocketAddr,
    source: Ipv4Addr,
    bytes: &'static [u8],
) -> Result<Duration> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    let mut s = socket.connect(addr).await?;
    let opened = Instant::now();
    if !bytes.is_empty() {
        s.write_all(bytes).await?;
    }
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(opened.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => bail!("a socket sending {bytes:02x?} stayed open for 20 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_finish_connect_are_closed_in_time() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let dev = add_device(&data, "real", "generic")?;
    let policy = write_policy(dir.path(), SHARE_ALL)?;
    let extra = "[mqtt]\nconnect_timeout_secs = 2\nmax_handshakes = 4096\nmax_connections = 8192\n";
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), extra))?;
    let (sub, mut sub_events) = cloud_subscriber(&cloud, "home/#", "sub-gate").await?;
    let baseline = open_fds(gw.pid())?;
    let gw_addr = gw.mqtt;

    const OPENINGS: [&[u8]; 6] = [
        b"",                         // nothing at all
        b"\x10",                     // one byte
        b"\x10\x0c",                 // a fixed header alone
        b"\x10\xff\xff\xff\x7f",     // the largest length there is
        b"\x10\x0c\x00\x04MQTT\x04", // the first 8 bytes of a CONNECT
        b"\x10\x00",                 // an empty CONNECT
    ];
    let mut storm = Vec::new();
    for (kind, bytes) in OPENINGS.iter().enumerate() {
        for i in 0..300u32 {
            // Nine sockets per address: under the per-address cap, so the
            // deadline is what closes them.
            let n = kind as u32 * 300 + i;
            let source = Ipv4Addr::new(127, 3, (n / 200) as u8, (n % 200 + 1) as u8);
            storm.push(tokio::spawn(hostile(gw.mqtt, source, bytes)));
        }
    }

    // Meanwhile a real device connects and delivers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (client, mut events) = connect(device_options(gw.mqtt, &dev, "real")).await?;
    publish_acked(&client, &mut events, "devices/real/state", r#"{"t":1}"#).await?;
    let got = collect(Some(&sub), &mut sub_events, Duration::from_secs(10), |g| {
        !g.is_empty()
    })
    .await;
    assert_eq!(got.len(), 1, "the real device delivered during the storm");

    let mut slowest = Duration::ZERO;
    for s in storm {
        slowest = slowest.max(s.await??);
    }
    eprintln!("slowest hostile socket closed after {slowest:?}");
    // A whole CONNECT with a wrong password, then silence: refused, and
    // the connection (the gate's relay with it) goes, not just the
    // broker's half of it.
    let mut refused = Vec::new();
    for i in 0..20u8 {
        refused.push(tokio::spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind((Ipv4Addr::new(127, 4, 0, i + 1), 0).into())?;
            let mut s = socket.connect(gw_addr).await?;
            s.write_all(&fuzz::connect(
                false,
                "ghost",
                &format!("ghost-{i}"),
                "wrong",
                false,
            ))
            .await?;
            let mut buf = [0u8; 64];
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return anyhow::Ok(()),
                    Ok(Ok(_)) => {}
                    Err(_) => bail!("a refused, silent connection stayed open"),
                }
            }
        }));
    }
    for r in refused {
        r.await??;
    }
    assert!(
        slowest <= Duration::from_secs(3),
        "every hostile socket is closed within connect_timeout + 1 s; the slowest took {slowest:?}"
    );
    drop((client, events));
    // The gateway's descriptors go back to where they were.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = open_fds(gw.pid())?;
        if now <= baseline + 2 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the gateway holds {now} fds, {baseline} before the storm");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gw.stop()?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_starters_from_many_addresses_do_not_lock_devices_out() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let dev = add_device(&data, "real", "generic")?;
    let extra = "[mqtt]\nmax_handshakes = 32\n";
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, None, extra))?;
    let addr = gw.mqtt;
    // 64 sockets from 64 addresses, each dribbling a CONNECT one byte every
    // 300 ms, reconnecting whenever closed: twice what the gate lets log
    // in at once.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut slow = Vec::new();
    for i in 0..64u8 {
        let stop = std::sync::Arc::clone(&stop);
        slow.push(tokio::spawn(async move {
            let hello = fuzz::connect(false, "x", "x", "x", false);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                    return;
                };
                if socket
                    .bind((Ipv4Addr::new(127, 5, 0, i + 1), 0).into())
                    .is_err()
                {
                    return;
                }
                let Ok(mut s) = socket.connect(addr).await else {
                    continue;
                };
                for b in &hello {
                    if s.write_all(&[*b]).await.is_err()
                        || stop.load(std::sync::atomic::Ordering::Relaxed)
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut took = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let code = raw_connect(addr, Ipv4Addr::LOCALHOST, "real", &dev.id, &dev.password).await?;
        assert_eq!(code, 0, "the real device is accepted");
        took.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in slow {
        s.abort();
    }
    eprintln!("real device logins among slow starters took {took:?}");
    assert!(
        took.iter().all(|t| *t < Duration::from_secs(2)),
        "logins took {took:?}"
    );
    assert!(gw.stop()?.success());
    Ok(())
}
