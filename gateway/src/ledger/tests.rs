use super::*;

fn ledger(dir: &std::path::Path) -> (sled::Db, Ledger) {
    let db = crate::store::open_test_db(dir);
    let journal = crate::store::open_test_journal(dir, &db);
    let l = Ledger::open(&db, Arc::default(), Arc::default(), &journal).expect("ledger");
    (db, l)
}

#[allow(clippy::too_many_arguments)]
fn egress(
    l: &Ledger,
    destination: &str,
    device: &str,
    version: u64,
    topic: &str,
    now_ms: u64,
    payload: &[u8],
    fields: &[SentField<'_>],
) -> Result<(), StoreError> {
    l.egress(&Sent {
        destination,
        device,
        policy_version: version,
        topic,
        now_ms,
        payload,
        fields,
    })
}

fn event(i: u64) -> EntryBody {
    EntryBody::PolicyApplied {
        version: i,
        source: format!("test {i}"),
    }
}

fn field<'a>(name: &str, rule: &'a str) -> SentField<'a> {
    SentField {
        field: name.to_string(),
        rule,
        action: "share",
    }
}

#[test]
fn an_intact_chain_verifies_and_a_flipped_byte_is_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_db, l) = ledger(dir.path());
    for i in 0..10 {
        l.event(event(i)).expect("append");
    }
    let v = l.verify().expect("verify");
    assert!(v.intact && v.entries == 10, "{v:?}");
    // Flip one byte inside entry 4's text (a digit of its version).
    let raw = l.raw_entries();
    let k = 4u64.to_be_bytes();
    let mut bytes = raw.get(k).expect("get").expect("entry 4").to_vec();
    let at = bytes
        .windows(10)
        .position(|w| w == b"\"version\":")
        .expect("version")
        + 10;
    bytes[at] ^= 0x01; // '4' -> '5'
    raw.insert(k, bytes).expect("tamper");
    let v = l.verify().expect("verify");
    assert!(!v.intact);
    assert_eq!(v.broken_at, Some(4), "{v:?}");
    assert!(v.reason.unwrap_or_default().contains("entry 4"));
}

#[test]
fn a_corrupt_entry_and_a_cut_tail_are_detected_even_after_more_appends() {
    let dir = tempfile::tempdir().expect("tmp");
    {
        let (_db, l) = ledger(dir.path());
        for i in 0..6 {
            l.event(event(i)).expect("append");
        }
        let raw = l.raw_entries();
        raw.insert(2u64.to_be_bytes(), b"{not json".to_vec())
            .expect("tamper");
        let v = l.verify().expect("verify");
        assert_eq!(v.broken_at, Some(2), "{v:?}");
    }
    let dir2 = tempfile::tempdir().expect("tmp");
    {
        let (_db, l) = ledger(dir2.path());
        for i in 0..6 {
            l.event(event(i)).expect("append");
        }
        let raw = l.raw_entries();
        raw.remove(5u64.to_be_bytes()).expect("cut");
        let v = l.verify().expect("verify");
        assert_eq!(v.broken_at, Some(5), "{v:?}");
        assert!(v.reason.unwrap_or_default().contains("cut"));
    }
    // Reopened and appended to: the gap is still there to see.
    let (_db, l) = ledger(dir2.path());
    l.event(event(9)).expect("append");
    let v = l.verify().expect("verify");
    assert!(!v.intact);
    assert_eq!(v.broken_at, Some(5), "{v:?}");
}

#[test]
fn buckets_close_per_span_with_counts_and_a_digest_anyone_can_recompute() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_db, l) = ledger(dir.path());
    l.configure(Vec::new(), 60_000, true);
    let payloads: [&[u8]; 3] = [br#"{"t":1}"#, br#"{"t":2,"h":5}"#, br#"{"t":3}"#];
    let t0 = 1_764_518_400_000;
    for (i, p) in payloads.iter().enumerate() {
        let mut fields = vec![field("t", "r-t")];
        if i == 1 {
            fields.push(field("h", "r-h"));
        }
        egress(
            &l,
            "cloud",
            "thermo",
            3,
            "x/t",
            t0 + i as u64 * 1000,
            p,
            &fields,
        )
        .expect("egress");
    }
    // Current before the bucket closes.
    let open_summary = l.summary_since(0).expect("summary");
    assert!(
        open_summary
            .iter()
            .any(|r| r.field.is_empty() && r.count == 3),
        "{open_summary:?}"
    );
    assert_eq!(
        l.close_due(t0 + 59_999 + CLOSE_GRACE_MS, false)
            .expect("close"),
        0,
        "the minute runs"
    );
    assert_eq!(
        l.close_due(t0 + 60_000 + CLOSE_GRACE_MS, false)
            .expect("close"),
        1
    );
    let entries = l.since(0).expect("read");
    let EntryBody::Egress {
        messages,
        bytes,
        digest,
        fields,
        first_ms,
        last_ms,
        ..
    } = &entries[0].body
    else {
        panic!("not an egress entry: {entries:?}");
    };
    assert_eq!((*messages, *first_ms, *last_ms), (3, t0, t0 + 2000));
    assert_eq!(*bytes, payloads.iter().map(|p| p.len() as u64).sum::<u64>());
    let mut d = [0u8; 32];
    for p in payloads {
        d = entry::chain_digest(&d, p);
    }
    assert_eq!(*digest, entry::hex(&d));
    let counts: Vec<(&str, u64)> = fields.iter().map(|f| (f.field.as_str(), f.count)).collect();
    assert_eq!(counts, [("h", 1), ("t", 3)]);
    let summary = l.summary_since(0).expect("summary");
    assert_eq!(summary.len(), 3, "messages, h and t: {summary:?}");
    assert_eq!(summary, open_summary, "the same once closed, counted once");
}

#[test]
fn a_crash_leaves_open_buckets_that_the_next_start_closes_once() {
    let dir = tempfile::tempdir().expect("tmp");
    {
        let (db, l) = ledger(dir.path());
        egress(&l, "cloud", "d", 1, "t", 120_000, b"1", &[field("x", "r")]).expect("egress");
        // As the group commit does before it flushes.
        l.persist_open().expect("persist");
        db.flush().expect("flush");
        // No close: the process "dies" here.
    }
    let (_db, l) = ledger(dir.path());
    assert_eq!(l.recover(200_000).expect("recover"), 1);
    assert_eq!(l.recover(300_000).expect("again"), 0, "closed once");
    assert_eq!(l.since(0).expect("read").len(), 1);
}

#[test]
fn pruning_cuts_at_a_checkpoint_and_the_rest_still_verifies() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_db, l) = ledger(dir.path());
    let day = DAY_MS;
    l.chain.append(event(0), 1).expect("append");
    l.maintain(2, Some(10 * day)).expect("checkpoint");
    l.chain.append(event(1), 3).expect("append");
    l.maintain(day + 5, Some(10 * day)).expect("checkpoint 2");
    l.chain.append(event(2), day + 6).expect("append");
    assert_eq!(l.entries(), 5);
    // Keep one day: everything before the second checkpoint goes.
    let removed = l.maintain(2 * day + 10, Some(day)).expect("prune");
    assert_eq!(removed, 3, "event 0, checkpoint 1, event 1");
    let v = l.verify().expect("verify");
    assert!(v.intact, "{v:?}");
    assert_eq!(v.from, 3);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// The incremental summary equals a recount over the chain.
        #[test]
        fn the_summary_equals_a_full_recount(
            msgs in prop::collection::vec(
                (0usize..3, 0usize..3, 0u64..(3 * DAY_MS), prop::collection::vec(0usize..4, 0..4)),
                1..60,
            )
        ) {
            let dir = tempfile::tempdir().expect("tmp");
            let (_db, l) = ledger(dir.path());
            let mut msgs = msgs;
            msgs.sort_by_key(|m| m.2);
            for (dest, dev, at, fields) in &msgs {
                let names: Vec<SentField<'_>> = fields
                    .iter()
                    .map(|f| field(["a", "b", "c", "d"][*f], "r"))
                    .collect();
                egress(&l, ["x", "y", "z"][*dest], ["p", "q", "s"][*dev], 1, "t", *at, b"{}", &names)
                    .expect("egress");
            }
            l.close_due(1_000 * DAY_MS, true).expect("close");
            let mut recount: std::collections::BTreeMap<(u64, String, String, String), u64> =
                Default::default();
            for e in l.since(0).expect("read") {
                if let EntryBody::Egress { destination, device, first_ms, messages, fields, .. } = e.body {
                    let day = first_ms / DAY_MS;
                    *recount.entry((day, destination.clone(), device.clone(), String::new())).or_default() += messages;
                    for f in fields {
                        *recount.entry((day, destination.clone(), device.clone(), f.field)).or_default() += f.count;
                    }
                }
            }
            let summary: std::collections::BTreeMap<(u64, String, String, String), u64> = l
                .summary_since(0)
                .expect("summary")
                .into_iter()
                .map(|r| ((r.day, r.destination, r.device, r.field), r.count))
                .collect();
            prop_assert_eq!(summary, recount);
            let sent: u64 = msgs.len() as u64;
            let counted: u64 = l.summary_since(0).expect("s").iter().filter(|r| r.field.is_empty()).map(|r| r.count).sum();
            prop_assert_eq!(sent, counted);
        }
    }
}

#[test]
fn a_removed_head_or_a_base_moved_off_a_checkpoint_does_not_verify() {
    let dir = tempfile::tempdir().expect("tmp");
    let (db, l) = ledger(dir.path());
    for i in 0..4 {
        l.event(event(i)).expect("append");
    }
    let anchors = db.open_tree("ledger_anchors").expect("anchors");
    let head = anchors.get(b"head").expect("get").expect("head");
    anchors.remove(b"head").expect("remove");
    let last = l
        .raw_entries()
        .remove(3u64.to_be_bytes())
        .expect("cut")
        .expect("entry 3");
    let v = l.verify().expect("verify");
    assert!(
        !v.intact && v.reason.unwrap_or_default().contains("head"),
        "a cut without the head"
    );
    anchors.insert(b"head", head).expect("put back");
    l.raw_entries()
        .insert(3u64.to_be_bytes(), last)
        .expect("put back");
    assert!(l.verify().expect("verify").intact, "as it was");
    // A base pointing at an ordinary entry, with its own prev copied.
    let e2: Entry = serde_json::from_slice(
        &l.raw_entries()
            .get(2u64.to_be_bytes())
            .expect("get")
            .expect("e2"),
    )
    .expect("json");
    let mut prev = [0u8; 32];
    for (i, b) in prev.iter_mut().enumerate() {
        *b = u8::from_str_radix(&e2.prev[2 * i..2 * i + 2], 16).expect("hex");
    }
    let mut base = 2u64.to_be_bytes().to_vec();
    base.extend_from_slice(&prev);
    anchors.insert(b"base", base).expect("base");
    let v = l.verify().expect("verify");
    assert!(!v.intact, "{v:?}");
    assert!(v.reason.unwrap_or_default().contains("not a checkpoint"));
}
