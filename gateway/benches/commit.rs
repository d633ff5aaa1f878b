//! What one durable commit costs, by storage path, in the same run: the
//! bytes one QoS 1 message writes (its history record and two outbox
//! entries, about 600 bytes) made durable,
//! - by sled, as the store does today: three inserts, then `flush`;
//! - by an append-only journal: one `write` of the same bytes to a file,
//!   then `fdatasync`;
//! - by a journal over blocks written beforehand (as the store's journal
//!   is): `pwrite` in place, then `fdatasync`, which then has no file size
//!   or block map to write;
//! - the same with the file opened `O_DSYNC` (one call instead of two).
//!
//! Each is timed alone (one commit at a time, as one device publishing
//! alone causes) for wall time and for the process's CPU time (user +
//! system, from getrusage, all threads: sled's I/O threads count). The
//! two alternate, twice each, and the ratios are printed.
//!
//! Run: `cargo bench -p gateway --bench commit` (`COMMITS=N` to change the
//! count per round, 2000 by default).

use std::io::Write;
use std::time::{Duration, Instant};

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given; a zeroed rusage is a
    // valid value of it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// (wall, cpu) per commit over `n` commits of `commit`.
fn time(n: usize, mut commit: impl FnMut(usize)) -> (Duration, Duration) {
    let (w, c) = (Instant::now(), cpu_time());
    for i in 0..n {
        commit(i);
    }
    (w.elapsed() / n as u32, (cpu_time() - c) / n as u32)
}

/// The bytes of one message's commit: a length, its history record and
/// two outbox entries.
fn one_message(frame: &mut Vec<u8>, record: &[u8], entry: &[u8]) {
    frame.clear();
    frame.extend_from_slice(&(record.len() as u32 + 2 * entry.len() as u32).to_le_bytes());
    frame.extend_from_slice(record);
    frame.extend_from_slice(entry);
    frame.extend_from_slice(entry);
}

fn main() {
    let n: usize = std::env::var("COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let record = vec![0x5au8; 300];
    let entry = vec![0xa5u8; 150];

    let dir = tempfile::tempdir().expect("temp dir");
    let db = sled::Config::new()
        .path(dir.path().join("db"))
        .flush_every_ms(None)
        .cache_capacity(4 * 1024 * 1024)
        .open()
        .expect("sled");
    let (history, a, b) = (
        db.open_tree("history").expect("tree"),
        db.open_tree("outbox/a").expect("tree"),
        db.open_tree("outbox/b").expect("tree"),
    );
    let mut journal = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("journal"))
        .expect("journal");
    // The same journal over blocks written once beforehand: an overwrite
    // changes no file size, so fdatasync has no metadata to commit.
    let prealloc_len = 64u64 << 20;
    let prealloc = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.path().join("journal-prealloc"))
        .expect("journal");
    {
        let zeros = vec![0u8; 1 << 20];
        let mut f = &prealloc;
        for _ in 0..(prealloc_len >> 20) {
            f.write_all(&zeros).expect("zero fill");
        }
        prealloc.sync_all().expect("sync");
    }
    let mut prealloc_at = 0u64;
    // The same blocks opened with O_DSYNC: one pwrite that returns once
    // durable, instead of a pwrite and an fdatasync.
    let dsync = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DSYNC)
            .open(dir.path().join("journal-prealloc"))
            .expect("journal")
    };
    let mut dsync_at = 0u64;
    let mut key = 0u64;
    let mut sled_commit = |_: usize| {
        key += 1;
        let k = key.to_be_bytes();
        history.insert(k, record.as_slice()).expect("insert");
        a.insert(k, entry.as_slice()).expect("insert");
        b.insert(k, entry.as_slice()).expect("insert");
        db.flush().expect("flush");
    };
    let mut frame = Vec::with_capacity(record.len() + 2 * entry.len() + 16);
    let mut journal_commit = |_: usize| {
        one_message(&mut frame, &record, &entry);
        journal.write_all(&frame).expect("write");
        journal.sync_data().expect("fdatasync");
    };
    let mut frame2 = Vec::with_capacity(record.len() + 2 * entry.len() + 16);
    let mut prealloc_commit = |_: usize| {
        use std::os::unix::fs::FileExt;
        one_message(&mut frame2, &record, &entry);
        if prealloc_at + frame2.len() as u64 > prealloc_len {
            prealloc_at = 0;
        }
        prealloc.write_all_at(&frame2, prealloc_at).expect("write");
        prealloc_at += frame2.len() as u64;
        prealloc.sync_data().expect("fdatasync");
    };
    let mut frame3 = Vec::with_capacity(record.len() + 2 * entry.len() + 16);
    let mut dsync_commit = |_: usize| {
        use std::os::unix::fs::FileExt;
        one_message(&mut frame3, &record, &entry);
        if dsync_at + frame3.len() as u64 > prealloc_len {
            dsync_at = 0;
        }
        dsync.write_all_at(&frame3, dsync_at).expect("write");
        dsync_at += frame3.len() as u64;
    };
    // Warm both (sled starts its I/O threads, the file gets its blocks).
    time(200, &mut sled_commit);
    time(200, &mut journal_commit);
    time(200, &mut prealloc_commit);
    time(200, &mut dsync_commit);
    let mut sums = [(Duration::ZERO, Duration::ZERO); 4];
    println!("{n} commits per round, one at a time, about 600 bytes each");
    for round in 1..=2 {
        for (i, (name, r)) in [
            ("sled: 3 inserts + flush", time(n, &mut sled_commit)),
            ("journal: write + fdatasync", time(n, &mut journal_commit)),
            (
                "preallocated: pwrite + fdatasync",
                time(n, &mut prealloc_commit),
            ),
            ("preallocated: pwrite, O_DSYNC", time(n, &mut dsync_commit)),
        ]
        .into_iter()
        .enumerate()
        {
            println!(
                "round {round}  {name:<34} wall {:>8.1} µs  CPU {:>8.1} µs per commit",
                r.0.as_secs_f64() * 1e6,
                r.1.as_secs_f64() * 1e6
            );
            sums[i].0 += r.0;
            sums[i].1 += r.1;
        }
    }
    let ratio = |s: Duration, j: Duration| s.as_secs_f64() / j.as_secs_f64().max(1e-12);
    println!(
        "sled / journal: wall {:.2}×, CPU {:.2}×",
        ratio(sums[0].0, sums[1].0),
        ratio(sums[0].1, sums[1].1)
    );
    println!(
        "journal / preallocated: wall {:.2}×, CPU {:.2}×",
        ratio(sums[1].0, sums[2].0),
        ratio(sums[1].1, sums[2].1)
    );
    println!(
        "preallocated fdatasync / O_DSYNC: wall {:.2}×, CPU {:.2}×",
        ratio(sums[2].0, sums[3].0),
        ratio(sums[2].1, sums[3].1)
    );
}
