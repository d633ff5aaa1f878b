//! A fuzzer for the policy parser and evaluator, on the stable toolchain
//! (cargo-fuzz needs nightly): policies and payloads from a corpus (the
//! examples in docs/policy.md and shapes devices send), mutated byte-wise
//! and spliced, then parsed and, when they parse, evaluated. A panic is a
//! failure; it is caught, counted and reported with the input. Seeded, so
//! a failure can be replayed.

use std::panic::{catch_unwind, AssertUnwindSafe};

use policy::{Message, Policy};

use crate::fuzz::Rng;

/// Policies to start from: every example of docs/policy.md, and a few more.
fn policy_corpus() -> Vec<Vec<u8>> {
    let doc = include_str!("../../docs/policy.md");
    let mut out: Vec<Vec<u8>> = doc
        .split("```toml")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .map(|t| t.as_bytes().to_vec())
        .collect();
    out.push(
        b"[[rule]]\ndevice = \"*\"\nfield = \"*\"\ndestination = \"*\"\naction = \"share\"\n"
            .to_vec(),
    );
    out.push(b"[groups]\ng = [\"a\", \"b\"]\n[[rule]]\ndevice = \"@g\"\nfield = \"x[*].y\"\ndestination = \"d\"\naction = \"bucket\"\nedges = [1, 2]\nlabels = [\"a\", \"b\", \"c\"]\n[[retain]]\ndevice = \"a\"\nfield = \"gps\"\nkeep = \"none\"\n".to_vec());
    out
}

fn payload_corpus() -> Vec<Vec<u8>> {
    [
        &br#"{"temp":21.74,"ssid":"home","loc":{"lat":52.37,"lon":4.89},"at":"2026-11-30T16:35:14Z"}"#[..],
        br#"[{"t":1},{"t":2,"x":[1,2,{"y":null}]}]"#,
        br#"{"ENERGY":{"Power":12,"Total":1e2},"Wifi":{"SSId":"x"},"POWER":"ON"}"#,
        b"ON",
        b"21.5",
        br#"{"a":"\u00e9\ud83d\ude00","b":12345678901234567890123}"#,
        b"",
    ]
    .iter()
    .map(|p| p.to_vec())
    .collect()
}

fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            2 => {
                let i = rng.below(v.len() + 1);
                let b = b"{}[]\",:=.*@$#+\n\\0123456789aez"[rng.below(29)];
                v.insert(i, b);
            }
            3 if !other.is_empty() => {
                // Splice a piece of another input in.
                let (a, b) = (rng.below(other.len()), rng.below(other.len()));
                let (a, b) = (a.min(b), a.max(b));
                let i = rng.below(v.len() + 1);
                v.splice(i..i, other[a..b].iter().copied());
            }
            4 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.truncate(i);
            }
            _ => {
                // Deep nesting and long runs.
                let i = rng.below(v.len() + 1);
                let b = [b'[', b'{', b'"', b'9'][rng.below(4)];
                let run = vec![b; rng.below(300)];
                v.splice(i..i, run);
            }
        }
    }
    v
}

/// What a run found.
#[derive(Debug, Default)]
pub struct PolicyFuzzReport {
    pub executions: u64,
    pub parsed: u64,
    pub evaluated: u64,
    pub panics: Vec<String>,
}

/// `iterations` mutated policies, each evaluated against mutated payloads.
pub fn fuzz_policy(seed: u64, iterations: u64) -> PolicyFuzzReport {
    let mut rng = Rng::new(seed);
    let policies = policy_corpus();
    let payloads = payload_corpus();
    let mut report = PolicyFuzzReport::default();
    let dests = ["vendor_cloud", "utility", "d", "tracker_app", "my_storage"];
    for _ in 0..iterations {
        let base = &policies[rng.below(policies.len())];
        let other = &policies[rng.below(policies.len())];
        let text = mutate(&mut rng, base, other);
        let payload_base = &payloads[rng.below(payloads.len())];
        let payload_other = &payloads[rng.below(payloads.len())];
        let payload = mutate(&mut rng, payload_base, payload_other);
        report.executions += 1;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let Ok(src) = std::str::from_utf8(&text) else {
                return (false, false);
            };
            let Ok(p) = Policy::parse(src) else {
                return (true, false);
            };
            let _ = p.check_destinations(&dests);
            for device in ["plug", "tracker", "z2m", "a", "thermostat"] {
                let msg = Message {
                    device,
                    topic: "tele/plug/STATE",
                    payload: &payload,
                };
                let _ = p.evaluate(&msg, &dests);
                let _ = p.history_payload(device, &payload, policy::retention::Keep::For(1));
            }
            (true, true)
        }));
        match outcome {
            Ok((parsed, evaluated)) => {
                report.parsed += u64::from(parsed);
                report.evaluated += u64::from(evaluated);
            }
            Err(_) => report.panics.push(format!(
                "policy {:?} payload {:?}",
                String::from_utf8_lossy(&text),
                String::from_utf8_lossy(&payload)
            )),
        }
    }
    report
}
