//! Policy evaluation cost per message: the DESIGN §11 budget is a few
//! microseconds.

use criterion::{criterion_group, criterion_main, Criterion};
use policy::{Message, Policy};
use std::hint::black_box;

const POLICY: &str = include_str!("bench_policy.toml");

const PAYLOAD: &str = r#"{"seq":12345,"temp":21.5,"hum":48.2,"battery":87,"ssid":"home-network-5g-upstairs","loc":{"lat":52.374031,"lon":4.889692},"meta":{"fw":"1.4.2-build.7781","model":"TH-200-EU-rev3","uptime":1234567}}"#;

fn bench(c: &mut Criterion) {
    let policy = Policy::parse(POLICY).expect("bench policy parses");
    let dests = ["vendor_cloud", "utility", "local"];
    c.bench_function(
        "evaluate 20 rules, 3 destinations, 10-field 200-byte JSON",
        |b| {
            b.iter(|| {
                policy.evaluate(
                    black_box(&Message {
                        device: "thermo-1",
                        topic: "devices/thermo-1/state",
                        payload: PAYLOAD.as_bytes(),
                    }),
                    &dests,
                )
            })
        },
    );
    c.bench_function("parse 20-rule policy", |b| {
        b.iter(|| Policy::parse(black_box(POLICY)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
