//! Policy evaluation cost per message: the DESIGN §11 budget is a few
//! microseconds.

use criterion::{criterion_group, criterion_main, Criterion};
use policy::{Message, Policy};
use std::hint::black_box;

const POLICY: &str = r#"
[groups]
heating = ["thermo-1", "thermo-2"]

[[rule]]
device = "thermo-1"
field = "temp"
destination = "vendor_cloud"
action = "share"

[[rule]]
device = "thermo-1"
field = "hum"
destination = "*"
action = "share"

[[rule]]
device = "@heating"
field = "loc"
destination = "*"
action = "drop"

[[rule]]
device = "*"
field = "battery"
destination = "utility"
action = "share"

[[rule]]
device = "thermo-1"
field = "loc.lat"
destination = "utility"
action = "share"

[[rule]]
device = "*"
field = "meta.*"
destination = "vendor_cloud"
action = "share"

[[rule]]
device = "thermo-1"
field = "meta.fw"
destination = "vendor_cloud"
action = "drop"

[[rule]]
device = "*"
field = "ssid"
destination = "*"
action = "drop"

[[rule]]
device = "thermo-2"
field = "*"
destination = "utility"
action = "share"

[[rule]]
device = "thermo-1"
field = "seq"
destination = "*"
action = "share"
"#;

const PAYLOAD: &str = r#"{"seq":12345,"temp":21.5,"hum":48.2,"battery":87,"ssid":"home-network","loc":{"lat":52.37403,"lon":4.88969},"meta":{"fw":"1.4.2","model":"TH-200","uptime":123456}}"#;

fn bench(c: &mut Criterion) {
    let policy = Policy::parse(POLICY).expect("bench policy parses");
    let dests = ["vendor_cloud", "utility", "local"];
    c.bench_function("evaluate 10 rules, 3 destinations, 200-byte JSON", |b| {
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
    });
    c.bench_function("parse 10-rule policy", |b| {
        b.iter(|| Policy::parse(black_box(POLICY)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
