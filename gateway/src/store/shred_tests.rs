//! Tests of crypto-shredding, on a real on-disk store.
use super::*;
use crate::keys::seal;
use crate::store::{NewRecord, ReadRange, Store};

const DAY: u64 = PERIOD_MS;

fn fill(store: &Store, device: &str, times: &[u64]) {
    for t in times {
        let payload = format!("{{\"t\":{t}}}");
        store
            .history()
            .append(&NewRecord {
                device,
                received_ms: *t,
                qos: 1,
                retain: false,
                topic: "devices/x/state",
                payload: payload.as_bytes(),
            })
            .expect("append");
    }
}

fn times(store: &Store, sk: &PrivateKey, device: &str) -> Vec<u64> {
    store
        .history()
        .read(
            sk,
            &ReadRange {
                device: Some(device),
                ..Default::default()
            },
        )
        .map(|r| r.expect("readable").received_ms)
        .collect()
}

#[test]
fn deleting_a_device_destroys_its_keys_and_leaves_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sk, pk) = seal::generate();
    let store = Store::open(dir.path()).expect("open");
    store.history().set_recipient(Some(pk));
    fill(&store, "a", &[10, DAY + 10, 2 * DAY + 10]);
    fill(&store, "b", &[20, DAY + 20]);
    let h = store.history();
    let raw: Vec<_> = h
        .records
        .scan_prefix(b"a\0")
        .map(|kv| kv.expect("kv"))
        .collect();
    let raw_keys: Vec<_> = h
        .keys
        .scan_prefix(b"a\0")
        .map(|kv| kv.expect("kv"))
        .collect();
    let r = h
        .shred(
            &ShredRange {
                device: Some("a"),
                since_ms: 0,
                until_ms: u64::MAX,
            },
            None,
        )
        .expect("shred");
    assert_eq!((r.periods, r.records, r.kept), (3, 3, 0));
    assert!(r.bytes > 3 * 30);
    assert!(h.period_keys("a").expect("keys").is_empty());
    assert_eq!(h.count("a"), 0);
    assert!(!h.has_unreclaimed());
    assert_eq!(
        h.shredded.len(),
        3,
        "notes stay, so key numbers are not reused"
    );
    assert_eq!(times(&store, &sk, "b"), vec![20, DAY + 20]);
    // The ciphertext and the sealed key rows, put back as sled's log
    // may still hold them, do not open with the right private key:
    // the key pads are zeroed in place.
    for (k, v) in &raw_keys {
        h.keys.insert(k, v.clone()).expect("insert");
    }
    for (k, v) in &raw {
        h.records.insert(k, v).expect("insert");
        let (_, period, _) = split_key(k).expect("key");
        let keyno = record_keyno(v).expect("keyno");
        assert!(matches!(
            h.open_key(&sk, "a", period, keyno).expect("lookup"),
            Opened::Destroyed
        ));
    }
    assert_eq!(
        h.read(
            &sk,
            &ReadRange {
                device: Some("a"),
                ..Default::default()
            }
        )
        .count(),
        0
    );
    for (k, _) in &raw {
        h.records.remove(k).expect("remove");
    }
    for (k, _) in &raw_keys {
        h.keys.remove(k).expect("remove");
    }
    // Writing again after a delete uses a fresh key.
    fill(&store, "a", &[2 * DAY + 50]);
    assert_eq!(times(&store, &sk, "a"), vec![2 * DAY + 50]);
}

#[test]
fn a_cut_day_keeps_what_is_outside_the_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sk, pk) = seal::generate();
    let store = Store::open(dir.path()).expect("open");
    store.history().set_recipient(Some(pk));
    fill(
        &store,
        "a",
        &[100, 200, 300, DAY + 100, DAY + 200, 2 * DAY + 5],
    );
    let h = store.history();
    let before = h.period_keys("a").expect("keys");
    // From the middle of day 0 to the middle of day 1.
    let range = ShredRange {
        device: Some("a"),
        since_ms: 150,
        until_ms: DAY + 150,
    };
    assert!(
        h.shred(&range, None).is_err(),
        "a cut day needs the private key"
    );
    assert_eq!(h.period_keys("a").expect("keys"), before, "nothing changed");
    let r = h.shred(&range, Some(&sk)).expect("shred");
    assert_eq!((r.records, r.kept, r.periods), (3, 2, 2));
    assert_eq!(times(&store, &sk, "a"), vec![100, DAY + 200, 2 * DAY + 5]);
    // The old keys of the cut days are gone: new ones took their place.
    let after = h.period_keys("a").expect("keys");
    assert!(
        before.iter().all(|k| k.0 == 2 || !after.contains(k)),
        "{before:?} {after:?}"
    );
}

#[test]
fn retention_expires_whole_days_by_the_clock_it_is_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sk, pk) = seal::generate();
    let store = Store::open(dir.path()).expect("open");
    store.history().set_recipient(Some(pk));
    fill(&store, "a", &[10, DAY + 10, 3 * DAY + 10]);
    fill(&store, "forever", &[10]);
    let h = store.history();
    let keep = |d: &str| (d != "forever").then_some(2 * DAY);
    // Day 0 ends at DAY; kept 2 days: expires at 3 DAY, not before.
    assert_eq!(h.expire(3 * DAY - 1, &keep).expect("expire").periods, 0);
    let r = h.expire(3 * DAY, &keep).expect("expire");
    assert_eq!((r.periods, r.records), (1, 1));
    assert_eq!(times(&store, &sk, "a"), vec![DAY + 10, 3 * DAY + 10]);
    assert_eq!(times(&store, &sk, "forever"), vec![10]);
}

#[test]
fn deletes_racing_appends_leave_everything_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sk, pk) = seal::generate();
    let store = Store::open(dir.path()).expect("open");
    store.history().set_recipient(Some(pk));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut t = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                fill(&store, "a", &[t % (2 * DAY)]);
                t += 997;
            }
            t
        })
    };
    let h = store.history();
    for round in 0..20u64 {
        let range = if round % 2 == 0 {
            ShredRange {
                device: Some("a"),
                since_ms: 0,
                until_ms: u64::MAX,
            }
        } else {
            ShredRange {
                device: Some("a"),
                since_ms: round * 1000,
                until_ms: DAY + round * 1000,
            }
        };
        h.shred(&range, Some(&sk)).expect("shred");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.join().expect("writer") > 0);
    // Whatever survived opens: no key was destroyed under a writer.
    for r in h.read(&sk, &ReadRange::default()) {
        r.expect("every surviving record is readable");
    }
    assert!(!h.has_unreclaimed());
}

#[test]
fn an_interrupted_delete_is_finished_by_reclaim() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sk, pk) = seal::generate();
    let store = Store::open(dir.path()).expect("open");
    store.history().set_recipient(Some(pk));
    fill(&store, "a", &[10, 20]);
    let h = store.history();
    let (period, keyno) = h.period_keys("a").expect("keys")[0];
    // As if the process died right after noting the key destroyed.
    h.shredded
        .insert(key_row("a", period, keyno), &[][..])
        .expect("note");
    // Readers already treat it as deleted...
    h.keys.remove(key_row("a", period, keyno)).expect("remove");
    assert!(times(&store, &sk, "a").is_empty());
    // ...and reclaim removes the records.
    assert_eq!(h.reclaim(None).expect("reclaim").0, 2);
    assert_eq!(h.count("a"), 0);
}
