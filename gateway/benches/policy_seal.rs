//! What one `seal`ed field costs: the benchmarks' 20-rule policy over 3
//! destinations on a 10-field, 200-byte message, evaluated with the
//! gateway's real context (HPKE sealing, HMAC pseudonyms, the field
//! inventory), once as it is and once with one field sealed, in the same
//! run.
//!
//! Run: `cargo bench -p gateway --bench policy_seal`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use gateway::pipeline::{RateLimits, SendContext};
use gateway::store::Store;
use gateway::windows::Windows;
use policy::{Message, Policy};

const POLICY: &str = include_str!("../../policy/benches/bench_policy.toml");
const PAYLOAD: &str = r#"{"seq":12345,"temp":21.5,"hum":48.2,"battery":87,"ssid":"home-network-5g-upstairs","loc":{"lat":52.374031,"lon":4.889692},"meta":{"fw":"1.4.2-build.7781","model":"TH-200-EU-rev3","uptime":1234567}}"#;
/// The one rule that changes: `loc.lat` to the utility, shared or sealed.
const SHARED_RULE: &str = "field = \"loc.lat\"\ndestination = \"utility\"\naction = \"share\"";

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("store");
    let dests = ["vendor_cloud", "utility", "local"];
    let msg = Message {
        device: "thermo-1",
        topic: "devices/thermo-1/state",
        payload: PAYLOAD.as_bytes(),
    };
    let plain = Policy::parse(POLICY).expect("bench policy parses");
    assert!(POLICY.contains(SHARED_RULE), "the bench policy changed");
    let sealed = Policy::parse(&POLICY.replace(
        SHARED_RULE,
        "field = \"loc.lat\"\ndestination = \"utility\"\naction = \"seal\"",
    ))
    .expect("sealed variant parses");
    // Every field approved, as on a hub that has seen this device before.
    let fields = store.fields();
    let e = plain.evaluate(&msg, &dests);
    fields.observe(
        "thermo-1",
        &e.fields,
        &vec![true; e.fields.len()],
        msg.payload,
        0,
    );
    fields.approve_all("thermo-1").expect("approve");
    let (_, pk) = gateway::keys::seal::generate();
    let keys = dests
        .iter()
        .map(|d| {
            let k = store.pseudonym_key(d).expect("pseudonym key");
            (d.to_string(), k)
        })
        .collect();
    let limits = RateLimits::default();
    let destinations = store.destinations();
    let windows = Windows::default();
    let ctx = SendContext {
        recipient: Some(pk),
        pseudonym_keys: &keys,
        limits: &limits,
        windows: &windows,
        fields: &fields,
        destinations: &destinations,
        now_ms: 0,
        seals: Default::default(),
    };
    let with_seal = sealed.evaluate_with(&msg, &dests, &ctx);
    let out = with_seal.outputs[1].payload.as_deref().unwrap_or_default();
    assert!(
        String::from_utf8_lossy(out).contains("dw1."),
        "the field is sealed"
    );

    let mut group = c.benchmark_group("evaluate with the gateway's context");
    group.bench_function("20 rules, 3 destinations, no seal", |b| {
        b.iter(|| plain.evaluate_with(black_box(&msg), &dests, &ctx))
    });
    group.bench_function("20 rules, 3 destinations, one sealed field", |b| {
        b.iter(|| {
            // A fresh count per message, as the pipeline has.
            ctx.seals.set(0);
            sealed.evaluate_with(black_box(&msg), &dests, &ctx)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
