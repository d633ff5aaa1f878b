//! Tests of the outbox on a real store.
use crate::store::Store;

#[test]
fn entries_come_out_in_order_and_leave_on_ack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let ob = store.outbox("cloud", 100).expect("outbox");
    for i in 0..5u8 {
        ob.push("dev", "t/x", &[i], 100 + u64::from(i))
            .expect("push");
    }
    let first = ob.read_after(None, 3).expect("read");
    assert_eq!(
        first.iter().map(|e| e.payload[0]).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    let rest = ob.read_after(Some(first[2].key), 10).expect("read");
    assert_eq!(rest.len(), 2);
    assert_eq!(ob.oldest_queued_ms().expect("oldest"), Some(100));
    ob.remove(first[0].key).expect("remove");
    ob.remove(first[0].key)
        .expect("a second ack of the same entry");
    assert_eq!(ob.len(), 4);
    assert_eq!(ob.oldest_queued_ms().expect("oldest"), Some(101));
    assert_eq!(first[1].device, "dev");
    assert_eq!(first[1].topic, "t/x");
    drop(ob);
    // Keys continue after a reopen instead of restarting.
    let ob = store.outbox("cloud", 100).expect("reopen");
    assert_eq!(ob.len(), 4, "the count is rebuilt at open");
    let k = ob.push("dev", "t", b"z", 0).expect("push");
    assert!(k > rest[1].key);
}

#[test]
fn a_dead_letter_leaves_the_queue_and_is_kept_with_its_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let ob = store.outbox("cloud", 100).expect("outbox");
    let k1 = ob.push("dev", "t", b"poison", 1).expect("push");
    ob.push("dev", "t", b"next", 2).expect("push");
    assert!(ob
        .dead_letter(k1, "the cloud dropped the connection")
        .expect("move"));
    assert!(!ob.dead_letter(k1, "again").expect("already moved"));
    assert_eq!((ob.len(), ob.dead_letters()), (1, 1));
    // The ledger says it will never leave, once.
    let dropped: Vec<_> = store
        .ledger()
        .since(0)
        .expect("ledger")
        .into_iter()
        .filter(|e| matches!(e.body, crate::ledger::EntryBody::OutboxDropped { .. }))
        .collect();
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    let left = ob.read_after(None, 10).expect("read");
    assert_eq!(left[0].payload, b"next");
    drop(ob);
    let ob = store.outbox("cloud", 100).expect("reopen");
    assert_eq!((ob.len(), ob.dead_letters()), (1, 1));
    let letter = store.tree("deadletter/cloud").expect("tree");
    let (_, v) = letter.first().expect("read").expect("one letter");
    assert!(v.windows(6).any(|w| w == b"poison"));
    assert!(v.windows(5).any(|w| w == b"cloud"));
}

#[test]
fn entries_of_the_first_format_are_upgraded_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    // Format 1: device and topic (u16 BE length each), then payload.
    let old = store.tree("outbox/cloud").expect("tree");
    old.insert(7u64.to_be_bytes(), &b"\0\x03dev\0\x01tpayload"[..])
        .expect("insert");
    let ob = store.outbox("cloud", 100).expect("open upgrades");
    let e = ob.read_after(None, 10).expect("read");
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].key, e[0].device.as_str(), e[0].topic.as_str()),
        (7, "dev", "t")
    );
    assert_eq!(e[0].payload, b"payload");
    assert!(e[0].queued_ms > 0);
    drop(ob);
    // Upgraded once: a reopen leaves the new layout alone.
    let ob = store.outbox("cloud", 100).expect("reopen");
    assert_eq!(
        ob.read_after(None, 10).expect("read")[0].payload,
        b"payload"
    );
}

#[test]
fn quota_drops_the_oldest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let ob = store.outbox("cloud", 3).expect("outbox");
    for i in 0..6u8 {
        ob.push("dev", "t", &[i], 0).expect("push");
    }
    let left = ob.read_after(None, 10).expect("read");
    assert_eq!(
        left.iter().map(|e| e.payload[0]).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    // After a reopen the quota still holds, counted from what is there.
    drop(ob);
    let ob = store.outbox("cloud", 3).expect("reopen");
    ob.push("dev", "t", &[6], 0).expect("push");
    assert_eq!(ob.len(), 3);
    let left = ob.read_after(None, 10).expect("read");
    assert_eq!(
        left.iter().map(|e| e.payload[0]).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
}

#[test]
fn new_entries_stay_out_of_sled_until_a_checkpoint_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let ob = store.outbox("cloud", 100).expect("outbox");
    let tree = store.tree("outbox/cloud").expect("tree");
    let a = ob.push("dev", "t", b"acked", 1).expect("push");
    ob.push("dev", "t", b"waiting", 2).expect("push");
    ob.remove(a).expect("ack");
    // Pushed and acknowledged between checkpoints: sled never saw it.
    assert!(tree.is_empty(), "held in memory and the journal only");
    assert_eq!(ob.len(), 1);
    assert_eq!(
        ob.read_after(None, 10).expect("read")[0].payload,
        b"waiting"
    );
    assert_eq!(ob.oldest_queued_ms().expect("oldest"), Some(2));
    // A checkpoint writes what waits to sled.
    store.flush().expect("checkpoint");
    assert_eq!(tree.len(), 1);
    drop((ob, tree));
    drop(store);
    let store = Store::open(dir.path()).expect("reopen");
    let ob = store.outbox("cloud", 100).expect("outbox");
    let left = ob.read_after(None, 10).expect("read");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].payload, b"waiting");
}

#[test]
fn held_entries_read_after_spilled_ones_in_key_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let ob = store.outbox("cloud", 100).expect("outbox");
    for i in 0..3u8 {
        ob.push("dev", "t", &[i], 0).expect("push");
    }
    store.flush().expect("checkpoint");
    for i in 3..6u8 {
        ob.push("dev", "t", &[i], 0).expect("push");
    }
    let first = ob.read_after(None, 4).expect("read");
    assert_eq!(
        first.iter().map(|e| e.payload[0]).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    let rest = ob.read_after(Some(first[3].key), 10).expect("read");
    assert_eq!(
        rest.iter().map(|e| e.payload[0]).collect::<Vec<_>>(),
        vec![4, 5]
    );
    // A held entry and a spilled one, each to the dead letters.
    assert!(ob.dead_letter(first[0].key, "spilled").expect("move"));
    assert!(ob.dead_letter(rest[1].key, "held").expect("move"));
    assert!(!ob.contains(rest[1].key).expect("contains"));
    assert_eq!((ob.len(), ob.dead_letters()), (4, 2));
    // A purge takes both kinds.
    assert_eq!(ob.purge(Some("dev")).expect("purge"), 4 + 2);
    assert!(ob.is_empty());
    assert!(ob.read_after(None, 10).expect("read").is_empty());
}

#[test]
fn a_full_memory_spills_to_sled_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let ob = store.outbox("cloud", 1_000_000).expect("outbox");
    let tree = store.tree("outbox/cloud").expect("tree");
    let payload = vec![b'x'; 64 << 10];
    for _ in 0..31 {
        ob.push("dev", "t", &payload, 0).expect("push");
    }
    assert!(tree.is_empty(), "under 2 MiB: held");
    ob.push("dev", "t", &payload, 0).expect("push");
    assert_eq!(tree.len(), 32, "over 2 MiB: all in sled");
    ob.push("dev", "t", &payload, 0).expect("push");
    assert_eq!(tree.len(), 32, "the next one is held again");
    assert_eq!(ob.read_after(None, 100).expect("read").len(), 33);
}

#[test]
fn entries_of_a_dropped_handle_still_reach_sled_at_the_next_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let ob = store.outbox("cloud", 100).expect("outbox");
    ob.push("dev", "t", b"left behind", 0).expect("push");
    // As at a stop: the outbox goes before the store's last checkpoint.
    drop(ob);
    store.flush().expect("checkpoint");
    let tree = store.tree("outbox/cloud").expect("tree");
    assert_eq!(tree.len(), 1);
}
