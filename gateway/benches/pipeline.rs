//! The pipeline without the network: one device message through policy
//! evaluation, the encrypted history record, two outbox entries and the
//! ledger, on a real on-disk store with the user's keys, under a 10-rule
//! policy over 2 destinations (as `scripts/bench.sh` runs the gateway).
//!
//! - QoS 0: the work alone; the disk is flushed later by the committer.
//! - QoS 1, one at a time: each message waits for its own flush, as one
//!   device publishing alone does.
//! - QoS 1, 10 at once: ten messages share one group commit, as ten
//!   devices publishing together do.
//!
//! The gap between the first and the others is the flush (fsync and sled's
//! work around it). Run: `cargo bench -p gateway --bench pipeline`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gateway::keys::{KdfParams, StoredKeys};
use gateway::pipeline::{ActivePolicy, Kept, Lane, Pipeline};
use gateway::store::Store;
use policy::Policy;
use tokio::sync::Notify;

const POLICY: &str = r#"
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
destination = "utility"
action = "share"
[[rule]]
device = "*"
field = "ssid"
destination = "*"
action = "drop"
[[rule]]
device = "*"
field = "loc"
destination = "vendor_cloud"
action = "coarsen_location"
decimals = 2
[[rule]]
device = "*"
field = "loc"
destination = "utility"
action = "drop"
[[rule]]
device = "*"
field = "pad"
destination = "*"
action = "drop"
[[rule]]
device = "meter"
field = "hum"
destination = "utility"
action = "drop"
"#;

const PAYLOAD: &str = r#"{"seq":12345,"ts":1764547200123,"temp":21.5,"hum":48.25,"battery":87,"ssid":"home-net","loc":{"lat":52.37403,"lon":4.88969},"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;

const DESTINATIONS: [&str; 2] = ["vendor_cloud", "utility"];

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("store");
    let fast = KdfParams {
        m_kib: 256,
        t: 1,
        p: 1,
    };
    let (p, r) = (
        store.new_wrap_pad().expect("pad"),
        store.new_wrap_pad().expect("pad"),
    );
    let (keys, _) = StoredKeys::create(b"bench passphrase", fast, 0, &p, &r).expect("keys");
    store.save_keys(&keys).expect("save keys");
    assert!(store.history().keeps_history());
    store.ledger().configure(Vec::new(), 60_000, true);

    let policy = Policy::parse(POLICY).expect("policy");
    assert_eq!(policy.rules().len(), 10);
    let outboxes: Vec<_> = DESTINATIONS
        .iter()
        .map(|d| Arc::new(store.outbox(d, 10_000_000).expect("outbox")))
        .collect();
    let lanes = DESTINATIONS
        .iter()
        .zip(&outboxes)
        .map(|(d, o)| Lane {
            name: d.to_string(),
            topic_prefix: "home/".into(),
            outbox: Arc::clone(o),
            wake: Arc::new(Notify::new()),
        })
        .collect();
    let keys = DESTINATIONS
        .iter()
        .map(|d| (d.to_string(), store.pseudonym_key(d).expect("key")))
        .collect();
    let pipeline = Arc::new(Pipeline::new(
        ActivePolicy { version: 1, policy },
        &store,
        lanes,
        policy::retention::Keep::parse("90d").expect("keep"),
        keys,
    ));
    // Every field approved, as on a hub that has seen this device before.
    let seen = Policy::parse(POLICY).expect("policy").evaluate(
        &policy::Message {
            device: "meter",
            topic: "devices/meter/state",
            payload: PAYLOAD.as_bytes(),
        },
        &DESTINATIONS,
    );
    let fields = store.fields();
    fields.observe(
        "meter",
        &seen.fields,
        &vec![false; seen.fields.len()],
        PAYLOAD.as_bytes(),
        0,
    );
    fields.approve_all("meter").expect("approve");

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let durability = Arc::clone(&store.durability);
    let committer = rt.spawn(async move { durability.run(stopped).await });

    let one = |qos: u8| {
        let pipeline = Arc::clone(&pipeline);
        async move {
            pipeline
                .handle(
                    "meter",
                    "devices/meter/state",
                    PAYLOAD.as_bytes(),
                    Kept { qos, retain: false },
                )
                .await
                .expect("handled");
        }
    };
    // Outboxes are emptied between batches, outside the timing, as the
    // uplinks would.
    let empty = || {
        for o in &outboxes {
            o.purge(None).expect("purge");
        }
    };

    let mut group = c.benchmark_group("pipeline, 10 rules, 2 destinations, encrypted history");
    group.throughput(Throughput::Elements(1));
    group.bench_function("QoS 0", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            rt.block_on(async {
                for _ in 0..iters {
                    one(0).await;
                }
            });
            let took = start.elapsed();
            empty();
            took
        })
    });
    group.bench_function("QoS 1, one at a time", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            rt.block_on(async {
                for _ in 0..iters {
                    one(1).await;
                }
            });
            let took = start.elapsed();
            empty();
            took
        })
    });
    group.throughput(Throughput::Elements(10));
    group.bench_function("QoS 1, 10 at once", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            rt.block_on(async {
                for _ in 0..iters {
                    let all: Vec<_> = (0..10).map(|_| tokio::spawn(one(1))).collect();
                    for t in all {
                        t.await.expect("task");
                    }
                }
            });
            let took = start.elapsed();
            empty();
            took
        })
    });
    group.finish();
    let _ = stop.send(true);
    let _ = rt.block_on(committer);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
