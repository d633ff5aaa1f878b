//! The evaluator on arbitrary payloads (and topics) under policies that use
//! every action: no panic, deterministic, and a malformed payload yields no
//! output. The input is `topic \0 payload`; the policy is picked by the
//! first byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::{Message, Policy};

const POLICIES: &[&str] = &[
    "[[rule]]\ndevice=\"*\"\nfield=\"*\"\ndestination=\"*\"\naction=\"share\"\n",
    "[[rule]]\ndevice=\"*\"\nfield=\"*\"\ndestination=\"a\"\naction=\"round\"\nstep=0.5\n\
     [[rule]]\ndevice=\"*\"\nfield=\"*\"\ndestination=\"b\"\naction=\"bucket\"\nedges=[0,10]\nlabels=[\"l\",\"m\",\"h\"]\n",
    "[[rule]]\ndevice=\"*\"\nfield=\"*\"\ndestination=\"a\"\naction=\"coarsen_location\"\ngeohash=7\n\
     [[rule]]\ndevice=\"*\"\nfield=\"*\"\ndestination=\"b\"\naction=\"coarsen_location\"\ndecimals=2\n",
    "[[rule]]\ndevice=\"*\"\nfield=\"*\"\ndestination=\"a\"\naction=\"truncate_time\"\nunit=\"hour\"\n\
     [[rule]]\ndevice=\"*\"\nfield=\"*\"\ndestination=\"b\"\naction=\"redact\"\n",
    "[[rule]]\ndevice=\"*\"\nfield=\"*\"\ndestination=\"a\"\naction=\"aggregate\"\nfn=\"mean\"\nwindow=\"1m\"\n\
     [[rule]]\ndevice=\"*\"\ntopic=\"t/#\"\nfield=\"x\"\ndestination=\"b\"\naction=\"rate_limit\"\ninterval=\"1s\"\n",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (topic, payload) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&b"t/x"[..], rest),
    };
    let Ok(topic) = std::str::from_utf8(topic) else {
        return;
    };
    let Ok(policy) = Policy::parse(POLICIES[pick as usize % POLICIES.len()]) else {
        panic!("a fuzz policy does not parse");
    };
    let msg = Message {
        device: "d",
        topic,
        payload,
    };
    let a = policy.evaluate(&msg, &["a", "b"]);
    let b = policy.evaluate(&msg, &["a", "b"]);
    assert_eq!(a, b, "evaluation is deterministic");
    if a.malformed {
        assert!(a.outputs.iter().all(|o| o.payload.is_none()));
    }
});
