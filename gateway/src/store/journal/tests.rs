//! Tests of the journal on real files: what a crash leaves is replayed,
//! and nothing else is.
use super::recovery::{CHECKPOINT_KEY, META_TREE};
use super::*;
use crate::store::open_test_db;

struct Side {
    _dir: tempfile::TempDir,
    db: sled::Db,
    journal: Arc<Journal>,
    dirty: Arc<AtomicBool>,
    tree: JournaledTree,
}

fn side() -> Side {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_test_db(&dir.path().join("db"));
    let dirty = Arc::new(AtomicBool::new(false));
    let journal = Arc::new(
        Journal::open(&dir.path().join("journal"), db.clone(), Arc::clone(&dirty))
            .expect("journal"),
    );
    let tree = JournaledTree::new(db.open_tree("t").expect("tree"), Arc::clone(&journal));
    Side {
        _dir: dir,
        db,
        journal,
        dirty,
        tree,
    }
}

impl Side {
    fn journal_dir(&self) -> PathBuf {
        self._dir.path().join("journal")
    }

    /// Overwrites bytes of segment `name` at `at`, as damage would.
    fn write_segment(&self, name: &str, at: u64, bytes: &[u8]) {
        let seg = OpenOptions::new()
            .write(true)
            .open(self.journal_dir().join(name))
            .expect("open");
        seg.write_all_at(bytes, at).expect("write");
        seg.sync_all().expect("sync");
    }

    /// A copy of the journal's files, as a crash now would leave them, in
    /// a new directory beside a new (empty) store.
    fn copy_journal(&self) -> (tempfile::TempDir, PathBuf, sled::Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let jdir = dir.path().join("journal");
        std::fs::create_dir_all(&jdir).expect("mkdir");
        for seg in ["0", "1"] {
            std::fs::copy(self.journal_dir().join(seg), jdir.join(seg)).expect("copy");
        }
        let db = open_test_db(&dir.path().join("db"));
        (dir, jdir, db)
    }

    /// What a crash now would leave: the journal's files, replayed into
    /// a store that has none of sled's unflushed writes (an empty one).
    fn recovered(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.recovered_noting(None)
    }

    /// As [`Side::recovered`], into a store that holds `db`'s checkpoint
    /// note, if any (and nothing else).
    fn recovered_noting(&self, note_of: Option<&sled::Db>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let (_dir, jdir, fresh) = self.copy_journal();
        let note = note_of.and_then(|db| {
            db.open_tree(META_TREE)
                .expect("meta")
                .get(CHECKPOINT_KEY)
                .expect("get")
        });
        if let Some(v) = note {
            fresh
                .open_tree(META_TREE)
                .expect("meta")
                .insert(CHECKPOINT_KEY, v)
                .expect("note");
        }
        Journal::open(&jdir, fresh.clone(), Arc::default()).expect("recover");
        let t = fresh.open_tree("t").expect("tree");
        t.iter()
            .map(|kv| kv.expect("read"))
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }
}

fn kv(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
    (k.as_bytes().to_vec(), v.as_bytes().to_vec())
}

#[test]
fn committed_writes_are_replayed_in_order_and_pending_ones_are_not() {
    let s = side();
    s.tree.insert(b"a", b"1").expect("put");
    s.tree.insert(b"b", b"2").expect("put");
    s.journal.commit().expect("commit");
    s.tree.insert(b"a", b"3").expect("put");
    assert!(s.tree.remove(b"b").expect("remove"));
    s.journal.commit().expect("commit");
    // Applied to sled, never committed: a crash loses it (it was never
    // acknowledged).
    s.tree.insert(b"c", b"4").expect("put");
    assert_eq!(s.recovered(), vec![kv("a", "3")]);
    assert!(!s.dirty.load(Ordering::SeqCst));
}

#[test]
fn a_torn_last_frame_ends_the_replay_before_it() {
    let s = side();
    s.tree.insert(b"a", b"1").expect("put");
    s.journal.commit().expect("commit");
    s.tree.insert(b"b", b"2").expect("put");
    s.journal.commit().expect("commit");
    // Tear the second frame's body: its last byte is lost.
    let first = (FRAME_HEADER + 2 + 1 + 4 + 1 + 4 + 1) as u64;
    let second_end = first + (FRAME_HEADER + 2 + 1 + 4 + 1 + 4 + 1) as u64;
    s.write_segment("0", second_end - 1, &[0xff]);
    assert_eq!(s.recovered(), vec![kv("a", "1")]);
}

#[test]
fn a_checkpoint_empties_the_journal_and_old_frames_never_come_back() {
    let s = side();
    for i in 0..20u8 {
        s.tree.insert(&[i], b"before").expect("put");
        s.journal.commit().expect("commit");
    }
    // A deletion, then the checkpoint it ends with.
    for i in 0..20u8 {
        s.tree.remove(&[i]).expect("remove");
    }
    s.journal.checkpoint().expect("checkpoint");
    assert_eq!(s.recovered(), vec![], "nothing live after a checkpoint");
    // A shorter pass over the same blocks: the old frames after it carry
    // another pass and are not read as its continuation.
    s.tree.insert(b"z", b"after").expect("put");
    s.journal.commit().expect("commit");
    assert_eq!(s.recovered(), vec![kv("z", "after")]);
    // The deleted keys stay deleted in sled too.
    assert_eq!(s.db.open_tree("t").expect("tree").len(), 1);
}

#[test]
fn a_full_segment_moves_to_the_other_and_nothing_is_lost() {
    let s = side();
    let capacity = s.journal.capacity;
    let value = vec![7u8; 4096];
    // Enough commits to fill both segments several times over.
    let n = (4 * capacity / 4096) as u32;
    for i in 0..n {
        s.tree.insert(&i.to_be_bytes(), &value).expect("put");
        s.journal.commit().expect("commit");
    }
    // Give a background checkpoint time to finish.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let live: Vec<_> = s.recovered().into_iter().map(|(k, _)| k).collect();
    // What is live in the journal is the newest writes; everything older
    // is in sled, which a checkpoint flushed.
    assert!(!live.is_empty());
    let newest = (n - 1).to_be_bytes().to_vec();
    assert_eq!(live.last(), Some(&newest));
    drop(s.tree);
    let tree = s.db.open_tree("t").expect("tree");
    assert_eq!(tree.len() as u32, n);
}

#[test]
fn a_write_the_buffer_cannot_take_asks_for_a_checkpoint() {
    let s = side();
    let capacity = s.journal.capacity as usize;
    assert!(!s.dirty.load(Ordering::SeqCst));
    s.tree.insert(b"big", &vec![1u8; capacity]).expect("put");
    assert!(
        s.dirty.load(Ordering::SeqCst),
        "not journaled, so the next commit must flush sled"
    );
    assert!(!s.journal.has_pending());
    // A name too long for the format is not journaled either.
    s.dirty.store(false, Ordering::SeqCst);
    s.journal.record(&[Op::Put {
        tree: &[b'n'; 300],
        key: b"k",
        value: b"v",
    }]);
    assert!(s.dirty.load(Ordering::SeqCst));
}

#[test]
fn garbage_in_a_segment_is_not_replayed() {
    let s = side();
    s.tree.insert(b"a", b"1").expect("put");
    s.journal.commit().expect("commit");
    // The frame keeps its magic, pass and length; a byte of its body
    // changes, so the checksum no longer matches.
    s.write_segment("0", FRAME_HEADER as u64 + 3, &[0xaa]);
    assert_eq!(s.recovered(), vec![], "a bad checksum ends the segment");
}

/// A frame as a commit writes it, for files made by hand.
fn frame(pass: u64, seq: u64, ops: &[(u8, &[u8], &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (op, key, value) in ops {
        body.push(*op);
        body.push(1);
        body.push(b't');
        body.extend_from_slice(&(key.len() as u32).to_le_bytes());
        body.extend_from_slice(key);
        if *op == PUT {
            body.extend_from_slice(&(value.len() as u32).to_le_bytes());
            body.extend_from_slice(value);
        }
    }
    framed(pass, seq, &body)
}

/// `body` in a frame with a valid checksum, whatever the body holds.
fn framed(pass: u64, seq: u64, body: &[u8]) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(&pass.to_le_bytes());
    header.extend_from_slice(&seq.to_le_bytes());
    header.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let crc = frame_crc(&header, body);
    let mut f = MAGIC.to_vec();
    f.extend_from_slice(&header);
    f.extend_from_slice(&crc.to_le_bytes());
    f.extend_from_slice(body);
    f
}

#[test]
fn with_both_segments_live_the_older_pass_is_replayed_first() {
    // A crash after a segment filled and before its background checkpoint
    // ended: both hold live frames. Segment 1 has the older pass here, so
    // file order alone would replay them the wrong way round.
    let s = side();
    let older = [frame(7, 10, &[(PUT, b"k", b"old"), (PUT, b"gone", b"x")])].concat();
    let newer = [
        frame(9, 11, &[(PUT, b"k", b"new")]),
        frame(9, 12, &[(REMOVE, b"gone", b"")]),
    ]
    .concat();
    s.write_segment("1", 0, &older);
    s.write_segment("0", 0, &newer);
    assert_eq!(s.recovered(), vec![kv("k", "new")]);
}

#[test]
fn a_frame_whose_body_does_not_parse_is_an_error_not_a_panic() {
    let s = side();
    // A valid checksum over a body that claims more bytes than it has.
    let mut body = vec![PUT, 1, b't'];
    body.extend_from_slice(&1000u32.to_le_bytes());
    s.write_segment("0", 0, &framed(5, 1, &body));
    let (_dir, jdir, db) = s.copy_journal();
    let opened = Journal::open(&jdir, db, Arc::default());
    assert!(
        matches!(opened, Err(StoreError::Corrupt(_))),
        "refused with a clear error"
    );
}

#[test]
fn frames_a_checkpoint_covered_are_not_replayed_even_if_it_was_cut_short() {
    // A crash after a checkpoint's flush and before it emptied the
    // segments: the put is still in a live frame, and the deletion after
    // it (not journaled, as a purge of old was) is only in sled.
    let s = side();
    s.tree.insert(b"k", b"1").expect("put");
    s.journal.commit().expect("commit");
    let saved: Vec<Vec<u8>> = ["0", "1"]
        .iter()
        .map(|n| std::fs::read(s.journal_dir().join(n)).expect("read"))
        .collect();
    (*s.tree).remove(b"k").expect("plain remove");
    s.journal.checkpoint().expect("checkpoint");
    for (n, bytes) in ["0", "1"].iter().zip(&saved) {
        std::fs::write(s.journal_dir().join(n), bytes).expect("restore");
    }
    Journal::open(&s.journal_dir(), s.db.clone(), Arc::default()).expect("recover");
    assert_eq!(
        s.db.open_tree("t").expect("tree").get(b"k").expect("get"),
        None,
        "the deletion stands"
    );
    // Frames after the checkpoint still count: the sequence goes on above
    // the noted one.
    let again =
        Arc::new(Journal::open(&s.journal_dir(), s.db.clone(), Arc::default()).expect("open"));
    let tree = JournaledTree::new(s.db.open_tree("t").expect("tree"), Arc::clone(&again));
    tree.insert(b"z", b"2").expect("put");
    again.commit().expect("commit");
    let fresh = s.recovered_noting(Some(&s.db));
    assert_eq!(fresh, vec![kv("z", "2")]);
}

#[test]
fn a_lone_segment_is_recovered_and_the_pair_made_again() {
    let s = side();
    s.tree.insert(b"a", b"1").expect("put");
    s.journal.commit().expect("commit");
    let dir = tempfile::tempdir().expect("tempdir");
    let jdir = dir.path().join("journal");
    std::fs::create_dir_all(&jdir).expect("mkdir");
    std::fs::copy(s.journal_dir().join("0"), jdir.join("0")).expect("copy");
    let db = open_test_db(&dir.path().join("db"));
    let j = Journal::open(&jdir, db.clone(), Arc::default()).expect("recover");
    let t = db.open_tree("t").expect("tree");
    assert_eq!(t.get(b"a").expect("get").as_deref(), Some(&b"1"[..]));
    for n in ["0", "1"] {
        let len = std::fs::metadata(jdir.join(n)).expect("segment").len();
        assert_eq!(len, j.capacity);
    }
}
