//! History at scale: fills a store with encrypted records (1,000,000 by
//! default; BENCH_RECORDS sets another count), then measures, with the
//! real `dataward` binary on that store:
//! - export to NDJSON and to CSV: records/s and the process's peak RSS;
//! - `delete --device`: the time until the records are unreadable, the
//!   whole command's time, and the bytes on disk before and after.
//!
//! Run: `cargo bench -p gateway --bench history`. Figures vary with the
//! machine; compare runs on the same one.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use gateway::keys::{KdfParams, StoredKeys};
use gateway::store::{dir_bytes, NewRecord, Store, PERIOD_MS};

const PASSPHRASE: &str = "benchmark passphrase";

/// Runs `dataward ARGS` with standard output to `out`; (seconds, peak
/// RSS in KB, what it printed there).
fn run(args: &[&str], out: &Path) -> (f64, i64, String) {
    let start = Instant::now();
    let stdout = std::fs::File::create(out).expect("output file");
    let child = Command::new(env!("CARGO_BIN_EXE_dataward"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dataward");
    let pid = child.id() as i32;
    // Reaped here, by wait4, for the child's resource usage; the Child is
    // not waited on again.
    std::mem::forget(child);
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child.
    unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = start.elapsed().as_secs_f64();
    let printed = if out == Path::new("/dev/null") {
        String::new()
    } else {
        std::fs::read_to_string(out).unwrap_or_default()
    };
    (secs, usage.ru_maxrss, printed)
}

fn main() {
    let n: u64 = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let pass = dir.path().join("pass");
    std::fs::write(&pass, PASSPHRASE).expect("passphrase file");
    let (d, p) = (
        data.to_string_lossy().into_owned(),
        pass.to_string_lossy().into_owned(),
    );

    let base = 20_000 * PERIOD_MS;
    {
        let store = Store::open(&data).expect("open");
        let (keys, _) = StoredKeys::create(
            PASSPHRASE.as_bytes(),
            KdfParams::default(),
            0,
            &store.new_wrap_pad().expect("pad"),
            &store.new_wrap_pad().expect("pad"),
        )
        .expect("keys");
        store.save_keys(&keys).expect("save");
        let h = store.history();
        let start = Instant::now();
        // Two days of one busy meter, and a quieter second device.
        let step = 2 * PERIOD_MS / n.max(1);
        for i in 0..n {
            let payload = format!(
                r#"{{"seq":{i},"power":{:.1},"voltage":231.4,"current":{:.3},"energy_kwh":{:.3},"ssid":"home-network","rssi":-61,"uptime_s":{}}}"#,
                (i % 3000) as f64 / 10.0,
                (i % 100) as f64 / 7.0,
                i as f64 / 1000.0,
                i * 5
            );
            h.append(&NewRecord {
                device: "meter",
                received_ms: base + i * step,
                qos: 1,
                retain: false,
                topic: "devices/meter/state",
                payload: payload.as_bytes(),
            })
            .expect("append");
            if i % 1000 == 0 {
                h.append(&NewRecord {
                    device: "other",
                    received_ms: base + i * step,
                    qos: 0,
                    retain: false,
                    topic: "devices/other/state",
                    payload: b"{\"on\":true}",
                })
                .expect("append");
            }
        }
        store.flush().expect("flush");
        let secs = start.elapsed().as_secs_f64();
        println!(
            "fill: {n} records encrypted and stored in {secs:.1} s ({:.0} records/s, one thread, no fsync per record)",
            n as f64 / secs
        );
    }
    let before = dir_bytes(&data);
    println!("store on disk: {:.1} MB", before as f64 / 1e6);

    // The fixed cost: process start, store open, Argon2id unlock.
    let null = Path::new("/dev/null");
    let (t0, rss0, _) = run(
        &[
            "export",
            "--device",
            "meter",
            "--since",
            "2100-01-01",
            "--passphrase-file",
            &p,
            "--data-dir",
            &d,
        ],
        null,
    );
    println!(
        "export of nothing (process start, store open, Argon2id unlock with its 64 MiB): {t0:.2} s, peak RSS {:.1} MB",
        rss0 as f64 / 1024.0
    );
    for format in ["ndjson", "csv"] {
        let (t, rss, _) = run(
            &[
                "export",
                "--device",
                "meter",
                "--format",
                format,
                "--passphrase-file",
                &p,
                "--data-dir",
                &d,
            ],
            null,
        );
        println!(
            "export {format}: {n} records in {t:.2} s ({:.0} records/s after the fixed cost), peak RSS {:.1} MB",
            n as f64 / (t - t0).max(1e-6),
            rss as f64 / 1024.0
        );
    }

    let (t, _, out) = run(
        &[
            "delete",
            "--device",
            "meter",
            "--passphrase-file",
            &p,
            "--data-dir",
            &d,
            "--json",
        ],
        &dir.path().join("delete.json"),
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    println!(
        "delete --device meter: unreadable {:.1} ms after the start; {} records, {} device-days, {:.1} MB of records removed; command {t:.2} s",
        report["history"]["unreadable_after_ms"].as_f64().unwrap_or(f64::NAN),
        report["history"]["records"],
        report["history"]["periods"],
        report["history"]["bytes"].as_f64().unwrap_or(0.0) / 1e6
    );
    let after = dir_bytes(&data);
    println!(
        "store on disk after delete: {:.1} MB (was {:.1} MB)",
        after as f64 / 1e6,
        before as f64 / 1e6
    );
    // sled does not shrink its files: the space of removed records is
    // reused by later writes. Writing half as much again shows how much.
    {
        let store = Store::open(&data).expect("open");
        let h = store.history();
        for i in 0..n / 2 {
            let payload = format!(
                r#"{{"seq":{i},"power":{:.1},"voltage":231.4,"ssid":"home-network","rssi":-61,"uptime_s":{}}}"#,
                (i % 3000) as f64 / 10.0,
                i * 5
            );
            h.append(&NewRecord {
                device: "meter2",
                received_ms: base + i,
                qos: 1,
                retain: false,
                topic: "devices/meter2/state",
                payload: payload.as_bytes(),
            })
            .expect("append");
        }
        store.flush().expect("flush");
    }
    println!(
        "store on disk after {} new records (about half the deleted volume) are written: {:.1} MB",
        n / 2,
        dir_bytes(&data) as f64 / 1e6
    );
}
