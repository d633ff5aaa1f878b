//! How fast the ledger grows: 100 devices each sending one message every
//! 10 s to one destination, for a simulated day (or BENCH_HOURS hours),
//! recorded and closed into buckets as the gateway does. Prints the
//! entries and bytes per day, as stored and as the data directory grows.
//!
//! Run: `cargo bench -p gateway --bench ledger_growth`.

use std::time::Instant;

use gateway::ledger::{Sent, SentField};
use gateway::store::{dir_bytes, Store};

fn main() {
    let hours: u64 = std::env::var("BENCH_HOURS")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(24);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("store");
    let bucket_ms: u64 = std::env::var("BENCH_BUCKET_SECS")
        .ok()
        .and_then(|h| h.parse::<u64>().ok())
        .map_or(gateway::ledger::DEFAULT_BUCKET_MS, |s| s * 1000);
    let ledger = store.ledger();
    ledger.configure(Vec::new(), bucket_ms, true);
    let before = dir_bytes(dir.path());
    let payload = br#"{"temp":21.5,"hum":48,"battery":87,"seq":12345,"fw":"1.4.2"}"#;
    let names = ["temp", "hum", "battery", "seq", "fw"];
    let rules = ["r-temp", "r-hum", "r-battery", "r-seq", "r-fw"];
    let start_ms: u64 = 1_764_460_800_000;
    let started = Instant::now();
    let mut messages = 0u64;
    for step in 0..(hours * 360) {
        let now = start_ms + step * 10_000;
        for d in 0..100 {
            let device = format!("device-{d:03}");
            let fields: Vec<SentField<'_>> = names
                .iter()
                .zip(rules)
                .map(|(f, r)| SentField {
                    field: f.to_string(),
                    rule: r,
                    action: "share",
                })
                .collect();
            ledger
                .egress(&Sent {
                    destination: "vendor_cloud",
                    device: &device,
                    policy_version: 1,
                    topic: "t",
                    now_ms: now,
                    payload,
                    fields: &fields,
                })
                .expect("egress");
            messages += 1;
        }
        if step % 6 == 5 {
            ledger.close_due(now + 1, false).expect("close");
        }
        if step % 360 == 359 {
            store.flush().expect("flush");
        }
    }
    ledger
        .close_due(start_ms + hours * 3_600_000, true)
        .expect("close");
    store.flush().expect("flush");
    let secs = started.elapsed().as_secs_f64();
    let per_day = |x: u64| x as f64 * 24.0 / hours as f64;
    println!(
        "bucket {} s: {messages} messages in {hours} h simulated ({:.0} recorded/s): {:.0} entries/day, {:.1} MB/day of entries, data directory +{:.1} MB/day",
        bucket_ms / 1000,
        messages as f64 / secs,
        per_day(ledger.entries()),
        per_day(ledger.stored_bytes()) / 1e6,
        per_day(dir_bytes(dir.path()).saturating_sub(before)) / 1e6
    );
}
