//! Load generator: N devices × R msg/s of ~200-byte JSON, QoS 1, through
//! dataward to a real mosquitto "cloud", and, in the same run with the same
//! load, through a mosquitto → mosquitto bridge for comparison.
//!
//! Run it with `cargo run --release -p dataward-tests --bin loadgen -- --help`.
//! It reports delivered msg/s, device → cloud latency (p50/p99/max), losses,
//! and dataward's RSS idle (100 connected devices) and under load.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use dataward_tests::{add_device, connect, device_options, init_keys, Cloud, DeviceCreds, Gateway};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[derive(Parser, Clone)]
#[command(about = "dataward end-to-end load generator (compares with a mosquitto bridge)")]
struct Args {
    /// Devices publishing at once
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Messages per second per device for the latency run
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Seconds per run
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Approximate payload size in bytes
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Devices connected for the idle-memory reading
    #[arg(long, default_value_t = 100)]
    idle_devices: usize,
    /// Skip the mosquitto bridge baseline
    #[arg(long)]
    no_bridge: bool,
    /// Only compare dataward's throughput with history kept (encrypted to
    /// the user's key, the normal case) and with no keys set up (no
    /// history kept), alternating, twice each
    #[arg(long)]
    compare_history: bool,
    /// Only compare dataward's throughput with the egress ledger on (the
    /// normal case) and off, history kept in both, alternating, twice each
    #[arg(long)]
    compare_ledger: bool,
    /// Print one table, dataward against the bridge under the same loads:
    /// max throughput at each of --device-counts (and with one sealed
    /// field at the first), CPU per message and latency at --steady-rate,
    /// and RSS
    #[arg(long)]
    table: bool,
    /// Device counts for the table's throughput rows
    #[arg(long, value_delimiter = ',', default_value = "10,100")]
    device_counts: Vec<usize>,
    /// Total msg/s of the table's steady run (spread over --devices)
    #[arg(long, default_value_t = 1000)]
    steady_rate: u64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn payload(dev: usize, seq: u64, size: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"dev":{dev},"seq":{seq},"ts":{},"temp":21.5,"hum":48.25,"battery":87,"ssid":"home-net","loc":{{"lat":52.37403,"lon":4.88969}},"pad":""#,
        now_us()
    );
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = head.into_bytes();
    s.extend(std::iter::repeat_n(b'x', pad));
    s.extend_from_slice(b"\"}");
    s
}

/// Ten rules, as DESIGN §11 asks; `pad`, `ssid` and `loc` stay home.
const POLICY: &str = r#"
[[rule]]
device = "*"
field = "dev"
destination = "vendor_cloud"
action = "share"
[[rule]]
device = "*"
field = "seq"
destination = "vendor_cloud"
action = "share"
[[rule]]
device = "*"
field = "ts"
destination = "vendor_cloud"
action = "share"
[[rule]]
device = "*"
field = "temp"
destination = "*"
action = "share"
[[rule]]
device = "*"
field = "hum"
destination = "vendor_cloud"
action = "share"
[[rule]]
device = "*"
field = "battery"
destination = "vendor_cloud"
action = "share"
[[rule]]
device = "*"
field = "ssid"
destination = "*"
action = "drop"
[[rule]]
device = "*"
field = "loc"
destination = "*"
action = "drop"
[[rule]]
device = "*"
field = "pad"
destination = "*"
action = "drop"
[[rule]]
device = "dev0"
field = "loc.lat"
destination = "vendor_cloud"
action = "drop"
"#;

#[derive(Default)]
struct Received {
    seen: HashSet<(u64, u64)>,
    latencies_us: Vec<u64>,
    last: Option<Instant>,
    duplicates: u64,
}

/// Subscribes to `filter` on the cloud and records every message.
async fn cloud_listener(
    cloud: &Cloud,
    filter: &str,
    rec: Arc<Mutex<Received>>,
) -> Result<AsyncClient> {
    let mut o = MqttOptions::new(format!("loadgen-sub-{}", now_us()), "127.0.0.1", cloud.port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(1000);
    let (client, mut events) = connect(o).await?;
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            other => bail!("cloud subscriber: {other:?}"),
        }
    }
    tokio::spawn(async move {
        while let Ok(ev) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                let t = now_us();
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) else {
                    continue;
                };
                let (Some(dev), Some(seq), Some(ts)) =
                    (v["dev"].as_u64(), v["seq"].as_u64(), v["ts"].as_u64())
                else {
                    continue;
                };
                let mut r = rec.lock().unwrap_or_else(|e| e.into_inner());
                if r.seen.insert((dev, seq)) {
                    r.latencies_us.push(t.saturating_sub(ts));
                } else {
                    r.duplicates += 1;
                }
                r.last = Some(Instant::now());
            }
        }
    });
    Ok(client)
}

struct RunResult {
    /// CPU time of the watched process over the run, in µs.
    cpu_us: Option<u64>,
    acked: u64,
    delivered: u64,
    duplicates: u64,
    msgs_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    peak_rss_kb: Option<u64>,
    backlog_at_end: u64,
}

/// User + system CPU time of `pid` so far, in µs (from /proc/PID/stat).
fn cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line: utime, stime (clock ticks).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant of the running system.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_sec > 0).then(|| ticks * 1_000_000 / per_sec as u64)
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Drives `devices` publishers for `seconds`; `rate` 0 means as fast as the
/// broker acknowledges.
async fn run_load(
    devices: Vec<(MqttOptions, String)>,
    rate: u64,
    seconds: u64,
    size: usize,
    rec: Arc<Mutex<Received>>,
    watch_pid: Option<u32>,
) -> Result<RunResult> {
    let acked = Arc::new(AtomicU64::new(0));
    // Every device is connected before the clock and the CPU count start:
    // a login (dataward checks an Argon2id hash) is not a message's cost.
    let mut connected = Vec::new();
    for (opts, topic) in devices {
        connected.push((connect(opts).await?, topic));
    }
    let cpu_at_start = watch_pid.and_then(cpu_us);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    let n = connected.len().max(1) as u64;
    for (i, ((client, mut events), topic)) in connected.into_iter().enumerate() {
        // Spread over the period, as independent devices are: all of them
        // on the same tick would be bursts, not a steady rate.
        let phase = (rate > 0).then(|| Duration::from_micros(1_000_000 / rate * i as u64 / n));
        let acked = Arc::clone(&acked);
        let poller = tokio::spawn(async move {
            while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_secs(5), events.poll()).await
            {
                if let Event::Incoming(Packet::PubAck(_)) = ev {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let sender = tokio::spawn(async move {
            let mut seq = 0u64;
            if let Some(p) = phase {
                tokio::time::sleep(p).await;
            }
            let mut tick = (rate > 0).then(|| {
                let mut t = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            while Instant::now() < deadline {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                if client
                    .publish(
                        topic.clone(),
                        QoS::AtLeastOnce,
                        false,
                        payload(i, seq, size),
                    )
                    .await
                    .is_err()
                {
                    break;
                }
                seq += 1;
            }
            (client, seq)
        });
        tasks.push((sender, poller));
    }
    let mut peak = None;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(pid) = watch_pid {
            peak = peak.max(rss_kb(pid));
        }
    }
    // Acknowledged but not yet at the cloud when the load stops: how far the
    // uplink trails the devices.
    let backlog_at_end = acked
        .load(Ordering::Relaxed)
        .saturating_sub(rec.lock().unwrap_or_else(|e| e.into_inner()).seen.len() as u64);
    let mut sent = 0;
    let mut clients = Vec::new();
    for (sender, poller) in tasks {
        let (client, n) = sender.await?;
        sent += n;
        clients.push((client, poller));
    }
    // Wait for the tail: everything acknowledged must show up at the cloud.
    let drain = Instant::now();
    loop {
        let got = rec.lock().unwrap_or_else(|e| e.into_inner()).seen.len() as u64;
        let a = acked.load(Ordering::Relaxed);
        if (a >= sent && got >= a) || drain.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu = match (watch_pid.and_then(cpu_us), cpu_at_start) {
        (Some(end), Some(start)) => Some(end.saturating_sub(start)),
        _ => None,
    };
    for (c, p) in clients {
        let _ = c.disconnect().await;
        p.abort();
    }
    let r = rec.lock().unwrap_or_else(|e| e.into_inner());
    let elapsed = r
        .last
        .map(|l| l.duration_since(start))
        .unwrap_or_else(|| start.elapsed())
        .as_secs_f64();
    let mut lat = r.latencies_us.clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Ok(RunResult {
        cpu_us: cpu,
        acked: acked.load(Ordering::Relaxed),
        delivered: r.seen.len() as u64,
        duplicates: r.duplicates,
        msgs_per_sec: r.seen.len() as f64 / elapsed.max(1e-9),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: lat.last().copied().unwrap_or(0) as f64 / 1000.0,
        peak_rss_kb: peak,
        backlog_at_end,
    })
}

fn print(name: &str, r: &RunResult) {
    println!(
        "{name:<34} acked {:>8}  delivered {:>8}  lost {:>6}  dup {:>5}  {:>9.0} msg/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms  backlog at end {:>6}{}",
        r.acked,
        r.delivered,
        r.acked.saturating_sub(r.delivered),
        r.duplicates,
        r.msgs_per_sec,
        r.p50_ms,
        r.p99_ms,
        r.max_ms,
        r.backlog_at_end,
        r.peak_rss_kb.map(|k| format!("  peak RSS {:.1} MB", k as f64 / 1024.0)).unwrap_or_default()
    );
}

struct Dataward {
    _dir: tempfile::TempDir,
    gw: Gateway,
    creds: Vec<DeviceCreds>,
}

async fn start_dataward(cloud: &Cloud, devices: usize) -> Result<Dataward> {
    start_dataward_with(cloud, devices, true, "").await
}

/// A gateway with `devices` registered; with `history`, the user's keys are
/// set up, so history is kept, encrypted.
/// Two set-ups of dataward, alternating, twice each, under the same load:
/// (label, history kept, config lines added).
async fn compare(args: &Args, variants: [(&str, bool, &str); 2], ratio: &str) -> Result<()> {
    let mut rates = [Vec::new(), Vec::new()];
    for _round in 0..2 {
        for (i, (label, history, extra)) in variants.iter().enumerate() {
            let cloud = Cloud::start()?;
            let dw = start_dataward_with(&cloud, args.devices, *history, extra).await?;
            let rec = Arc::new(Mutex::new(Received::default()));
            let _sub = cloud_listener(&cloud, "home/#", Arc::clone(&rec)).await?;
            let r = run_load(
                dataward_devices(&dw, args.devices),
                0,
                args.seconds,
                args.payload,
                rec,
                Some(dw.gw.pid()),
            )
            .await?;
            print(&format!("dataward   {label}"), &r);
            rates[i].push(r.msgs_per_sec);
            dw.gw.stop()?;
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "{ratio}: {:.2} ({:.0} vs {:.0} msg/s)",
        mean(&rates[0]) / mean(&rates[1]).max(1e-9),
        mean(&rates[0]),
        mean(&rates[1])
    );
    Ok(())
}

async fn start_dataward_with(
    cloud: &Cloud,
    devices: usize,
    history: bool,
    extra: &str,
) -> Result<Dataward> {
    start_dataward_policy(cloud, devices, history, extra, POLICY).await
}

async fn start_dataward_policy(
    cloud: &Cloud,
    devices: usize,
    history: bool,
    extra: &str,
    policy: &str,
) -> Result<Dataward> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut creds = Vec::new();
    for i in 0..devices {
        creds.push(add_device(&data, &format!("dev{i}"), "generic")?);
    }
    if history {
        init_keys(&data)?;
    }
    std::fs::write(dir.path().join("policy.toml"), policy)?;
    let config = format!(
        "data_dir = {:?}\npolicy = {:?}\n{extra}\n[[destination]]\nname = \"vendor_cloud\"\nurl = \"{}\"\ntopic_prefix = \"home/\"\nmax_inflight = 256\n",
        data.display().to_string(),
        dir.path().join("policy.toml").display().to_string(),
        cloud.url()
    );
    let gw = Gateway::start(dir.path(), &config)?;
    Ok(Dataward {
        _dir: dir,
        gw,
        creds,
    })
}

fn dataward_devices(dw: &Dataward, n: usize) -> Vec<(MqttOptions, String)> {
    dw.creds
        .iter()
        .take(n)
        .map(|c| {
            let mut o = device_options(dw.gw.mqtt, c, &c.id);
            o.set_inflight(100);
            (o, format!("devices/{}/state", c.id))
        })
        .collect()
}

fn bridge_devices(port: u16, n: usize) -> Vec<(MqttOptions, String)> {
    (0..n)
        .map(|i| {
            let mut o = MqttOptions::new(format!("bdev{i}"), "127.0.0.1", port);
            o.set_keep_alive(Duration::from_secs(30));
            o.set_inflight(100);
            (o, format!("devices/dev{i}/state"))
        })
        .collect()
}

/// A mosquitto → mosquitto bridge, tuned to drop nothing: (cloud, edge).
fn start_bridge() -> Result<(Cloud, Cloud)> {
    let cloud = Cloud::start()?;
    let edge = Cloud::start_with(&[
        "connection cloud".into(),
        format!("address 127.0.0.1:{}", cloud.port),
        "topic devices/# out 1".into(),
        "cleansession false".into(),
        "bridge_attempt_unsubscribe false".into(),
        format!("remote_clientid loadgen-bridge-{}", now_us()),
    ])?;
    Ok((cloud, edge))
}

/// One dataward run of `devices` at `rate` per device (0: as fast as
/// acknowledged), with encrypted history, `policy` and the ledger on.
async fn dataward_run(args: &Args, devices: usize, rate: u64, policy: &str) -> Result<RunResult> {
    let cloud = Cloud::start()?;
    let dw = start_dataward_policy(&cloud, devices, true, "", policy).await?;
    let rec = Arc::new(Mutex::new(Received::default()));
    let _sub = cloud_listener(&cloud, "home/#", Arc::clone(&rec)).await?;
    let r = run_load(
        dataward_devices(&dw, devices),
        rate,
        args.seconds,
        args.payload,
        rec,
        Some(dw.gw.pid()),
    )
    .await?;
    dw.gw.stop()?;
    Ok(r)
}

/// The same load through the bridge; CPU and RSS are the edge broker's
/// (the hub's share of the work).
async fn bridge_run(args: &Args, devices: usize, rate: u64) -> Result<RunResult> {
    let (cloud, edge) = start_bridge()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rec = Arc::new(Mutex::new(Received::default()));
    let _sub = cloud_listener(&cloud, "devices/#", Arc::clone(&rec)).await?;
    run_load(
        bridge_devices(edge.port, devices),
        rate,
        args.seconds,
        args.payload,
        rec,
        edge.pid(),
    )
    .await
}

/// dataward's RSS with `n` devices connected and idle, in MB.
async fn idle_rss_mb(n: usize) -> Result<Option<f64>> {
    let cloud = Cloud::start()?;
    let dw = start_dataward(&cloud, n).await?;
    let mut held = Vec::new();
    for (o, _) in dataward_devices(&dw, n) {
        held.push(connect(o).await.context("idle device connect")?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_kb(dw.gw.pid()).map(|k| k as f64 / 1024.0);
    drop(held);
    dw.gw.stop()?;
    Ok(rss)
}

fn per_msg_us(r: &RunResult) -> Option<f64> {
    r.cpu_us.map(|c| c as f64 / r.delivered.max(1) as f64)
}

fn ratio(d: Option<f64>, b: Option<f64>) -> String {
    match (d, b) {
        (Some(d), Some(b)) if b > 0.0 => format!("{:.2}×", d / b),
        _ => "-".into(),
    }
}

fn throughput_cell(r: &RunResult) -> String {
    format!(
        "{:.0} (lost {})",
        r.msgs_per_sec,
        r.acked.saturating_sub(r.delivered)
    )
}

async fn table(args: &Args) -> Result<()> {
    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut row = |m: String, d: String, b: String, r: String| rows.push([m, d, b, r]);
    let idle = idle_rss_mb(args.idle_devices).await?;
    println!(
        "idle: dataward RSS with {} devices connected: {idle:?} MB",
        args.idle_devices
    );
    let mut first = None;
    for &n in &args.device_counts {
        let d = dataward_run(args, n, 0, POLICY).await?;
        print(&format!("dataward   max, {n} devices"), &d);
        let b = bridge_run(args, n, 0).await?;
        print(&format!("bridge     max, {n} devices"), &b);
        row(
            format!("max msg/s, {n} devices"),
            throughput_cell(&d),
            throughput_cell(&b),
            ratio(Some(d.msgs_per_sec), Some(b.msgs_per_sec)),
        );
        row(
            format!("CPU µs/msg at max, {n} devices"),
            per_msg_us(&d).map_or("-".into(), |v| format!("{v:.0}")),
            per_msg_us(&b).map_or("-".into(), |v| format!("{v:.0}")),
            ratio(per_msg_us(&d), per_msg_us(&b)),
        );
        row(
            format!("peak RSS MB at max, {n} devices"),
            d.peak_rss_kb
                .map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
            b.peak_rss_kb
                .map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
            ratio(
                d.peak_rss_kb.map(|k| k as f64),
                b.peak_rss_kb.map(|k| k as f64),
            ),
        );
        if first.is_none() {
            first = Some((n, b));
        }
    }
    if let Some((n, b)) = first {
        let sealed = POLICY.replace(
            "field = \"temp\"\ndestination = \"*\"\naction = \"share\"",
            "field = \"temp\"\ndestination = \"*\"\naction = \"seal\"",
        );
        let s = dataward_run(args, n, 0, &sealed).await?;
        print(&format!("dataward   max, {n} devices, sealed"), &s);
        row(
            format!("max msg/s, {n} devices, one sealed field"),
            throughput_cell(&s),
            throughput_cell(&b),
            ratio(Some(s.msgs_per_sec), Some(b.msgs_per_sec)),
        );
    }
    let per_device = (args.steady_rate / args.devices.max(1) as u64).max(1);
    let d = dataward_run(args, args.devices, per_device, POLICY).await?;
    print("dataward   steady", &d);
    let b = bridge_run(args, args.devices, per_device).await?;
    print("bridge     steady", &b);
    let total = per_device * args.devices as u64;
    row(
        format!("CPU µs/msg at {total} msg/s"),
        per_msg_us(&d).map_or("-".into(), |v| format!("{v:.0}")),
        per_msg_us(&b).map_or("-".into(), |v| format!("{v:.0}")),
        ratio(per_msg_us(&d), per_msg_us(&b)),
    );
    for (name, dv, bv) in [
        ("p50", d.p50_ms, b.p50_ms),
        ("p99", d.p99_ms, b.p99_ms),
        ("max", d.max_ms, b.max_ms),
    ] {
        row(
            format!("{name} latency ms at {total} msg/s"),
            format!("{dv:.2}"),
            format!("{bv:.2}"),
            format!("{:.2}× ({:+.2} ms)", dv / bv.max(1e-9), dv - bv),
        );
    }
    row(
        format!("RSS MB idle, {} devices", args.idle_devices),
        idle.map_or("-".into(), |v| format!("{v:.1}")),
        "-".into(),
        "-".into(),
    );
    println!();
    println!(
        "{:<44} {:>20} {:>20} {:>18}",
        "measure (QoS 1)", "dataward", "bridge", "dataward/bridge"
    );
    for [m, d, b, r] in &rows {
        println!("{m:<44} {d:>20} {b:>20} {r:>18}");
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    println!(
        "load: {} devices, ~{}-byte JSON, QoS 1, {} s per run; latency run at {} msg/s per device ({} msg/s total)",
        args.devices,
        args.payload,
        args.seconds,
        args.rate,
        args.rate * args.devices as u64
    );

    if args.table {
        return table(&args).await;
    }
    if args.compare_history {
        return compare(
            &args,
            [
                ("history kept, encrypted", true, ""),
                ("no history kept", false, ""),
            ],
            "throughput with encrypted history / without history",
        )
        .await;
    }
    if args.compare_ledger {
        return compare(
            &args,
            [
                ("ledger on", true, ""),
                ("ledger off", true, "[ledger]\nrecord_egress = false\n"),
            ],
            "throughput with the ledger / without",
        )
        .await;
    }

    // Idle memory: many devices connected, nothing sent.
    {
        let cloud = Cloud::start()?;
        let dw = start_dataward(&cloud, args.idle_devices).await?;
        let mut held = Vec::new();
        for (o, _) in dataward_devices(&dw, args.idle_devices) {
            held.push(connect(o).await.context("idle device connect")?);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = rss_kb(dw.gw.pid());
        println!(
            "dataward RSS idle with {} connected devices: {}",
            held.len(),
            rss.map(|k| format!("{:.1} MB", k as f64 / 1024.0))
                .unwrap_or_else(|| "unknown".into())
        );
        drop(held);
        dw.gw.stop()?;
    }

    let mut results = Vec::new();
    for (label, rate) in [
        ("throughput (as fast as acked)", 0),
        ("latency (fixed rate)", args.rate),
    ] {
        let d = dataward_run(&args, args.devices, rate, POLICY).await?;
        print(&format!("dataward   {label}"), &d);
        if args.no_bridge {
            continue;
        }
        let b = bridge_run(&args, args.devices, rate).await?;
        print(&format!("bridge     {label}"), &b);
        results.push((label, d, b));
    }
    for (label, d, b) in &results {
        println!(
            "{label}: dataward/bridge throughput ratio {:.2}; p99 dataward {:.2} ms vs bridge {:.2} ms (diff {:+.2} ms)",
            d.msgs_per_sec / b.msgs_per_sec.max(1e-9),
            d.p99_ms,
            b.p99_ms,
            d.p99_ms - b.p99_ms
        );
    }
    Ok(())
}
