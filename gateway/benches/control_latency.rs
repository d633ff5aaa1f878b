//! Latency of control requests against a real running gateway, over its
//! control socket, as the CLI sends them (one connection per request), but
//! without the cost of starting a process.
//!
//! `cargo bench -p gateway --bench control_latency [-- REQUESTS]`
//!
//! Starts `dataward run` on a temporary data directory with 100 devices,
//! then times `status`, `device list` and `policy show`, first with the hub
//! idle, then while one device publishes QoS 1 messages as fast as they are
//! acknowledged. Prints p50, p99 and max per request kind.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gateway::config::Config;
use gateway::control::{client, Request};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn measure(config: &Config, request: Request, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        client::request(config.clone(), request.clone(), &mut std::io::sink())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times)
}

fn report(label: &str, times: &[Duration]) {
    println!(
        "{label:<28} n={:<6} p50={:>7.1} µs  p99={:>7.1} µs  max={:>8.1} µs",
        times.len(),
        percentile(times, 0.50).as_secs_f64() * 1e6,
        percentile(times, 0.99).as_secs_f64() * 1e6,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e6,
    );
}

fn dataward(data: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_dataward"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .output()?)
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut password = String::new();
    for i in 0..100 {
        let out = dataward(&data, &["device", "add", &format!("dev-{i}"), "--json"])?;
        anyhow::ensure!(out.status.success(), "device add failed");
        if i == 0 {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            password = v["password"].as_str().unwrap_or_default().to_string();
        }
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_dataward"))
        .args([
            "run",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    let mqtt: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("mqtt="))
        .ok_or_else(|| anyhow::anyhow!("gateway did not start: {line:?}"))?
        .parse()?;
    let config = Config {
        data_dir: data.clone(),
        ..Config::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let kinds = [
            ("status", Request::Status),
            ("device list (100)", Request::DeviceList),
            (
                "policy show",
                Request::PolicyShow {
                    policy_version: None,
                },
            ),
        ];
        println!("hub idle:");
        for (label, req) in &kinds {
            report(label, &measure(&config, req.clone(), n).await?);
        }

        let mut opts = rumqttc::MqttOptions::new("dev-0", mqtt.ip().to_string(), mqtt.port());
        opts.set_credentials("dev-0", password.clone());
        let (device, mut events) = rumqttc::AsyncClient::new(opts, 256);
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = std::sync::Arc::clone(&acked);
        let publisher = tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                if device
                    .try_publish(
                        "devices/dev-0/state",
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        r#"{"temp":21.5}"#,
                    )
                    .is_ok()
                {
                    sent += 1;
                }
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
                if sent.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        println!("one device publishing QoS 1 flat out:");
        let (t0, a0) = (
            Instant::now(),
            acked.load(std::sync::atomic::Ordering::Relaxed),
        );
        for (label, req) in &kinds {
            report(label, &measure(&config, req.clone(), n).await?);
        }
        let rate = (acked.load(std::sync::atomic::Ordering::Relaxed) - a0) as f64
            / t0.elapsed().as_secs_f64();
        println!("(the device's messages were acknowledged at {rate:.0} msg/s meanwhile)");
        publisher.abort();
        anyhow::Ok(())
    });
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    result
}
