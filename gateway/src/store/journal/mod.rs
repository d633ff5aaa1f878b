//! The write-ahead journal: what makes a message durable between sled's
//! flushes.
//!
//! A sled flush costs about 2.5 times the CPU of writing the same bytes to
//! a file and calling `fdatasync` (its I/O thread pool wakes every idle
//! thread for each flush; `cargo bench --bench commit`), so the writes of
//! the hot path (history records, outbox entries and their removal, the
//! ledger's open buckets) go to sled's memory *and* to this journal, and a
//! group commit is one journal write and one `fdatasync`. sled is flushed
//! only at a checkpoint: when a journal segment is full, when a write
//! that is not journaled must be made durable, and at a clean stop.
//!
//! # On disk
//!
//! Two segment files, `journal/0` and `journal/1`, of the same size (8 MiB,
//! less on a small disk), filled with zeros when created: a commit then
//! overwrites blocks that exist, so `fdatasync` has no file size or block
//! map to write, which costs about a third less (the same benchmark).
//!
//! A segment holds frames from offset 0, back to back:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `DWJ1` |
//! | 8 | pass (u64 LE): random, drawn each time the segment is reused |
//! | 8 | sequence (u64 LE): orders the two segments' passes |
//! | 4 | body length (u32 LE) |
//! | 4 | CRC-32 (LE) of the pass, sequence, length and body |
//! | n | body: operations |
//!
//! An operation is `1` (put) or `2` (remove), the sled tree's name (u8
//! length, bytes), the key (u32 LE length, bytes) and, for a put, the
//! value (u32 LE length, bytes).
//!
//! A segment's live frames are those from offset 0 that carry the first
//! frame's pass and a valid checksum; the first one that does not (zeros,
//! a frame of an earlier pass, a torn write) ends them. A segment is
//! emptied by zeroing its first frame header.
//!
//! # Recovery
//!
//! At open, the live frames of both segments are applied to sled, the
//! older pass first, then sled is flushed and both segments emptied.
//! Replaying a put or a remove twice gives the same state, so a frame whose
//! effect sled already holds does no harm.
//!
//! # Why this order is safe
//!
//! A journaled write goes to sled first (or to state a spill hook holds,
//! such as an outbox's newest entries), then to the pending buffer. A
//! checkpoint spills the hooks' state into sled and then flushes it, which
//! therefore covers everything pending and lets it drop the pending buffer
//! and empty the segments. A writer
//! waits for durability only after its operations are in the buffer, so the
//! commit that covers it has them, or a checkpoint did.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::StoreError;

mod frames;
mod recovery;
mod tree;

pub(crate) use frames::Op;
use frames::{frame_crc, read_live};
use recovery::{note_checkpoint, recover};
pub use tree::JournaledTree;

const MAGIC: &[u8; 4] = b"DWJ1";
const FRAME_HEADER: usize = 4 + 8 + 8 + 4 + 4;
const PUT: u8 = 1;
const REMOVE: u8 = 2;

/// A segment's size when the disk has room: at about 600 bytes a message,
/// some 14,000 messages between checkpoints.
const SEGMENT_MAX: u64 = 8 << 20;
/// The smallest segment, on a disk that is nearly full when the store is
/// created.
const SEGMENT_MIN: u64 = 256 << 10;

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Journal(format!("{what} {}: {e}", path.display()))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state stays consistent across a panic (plain buffers and
    // offsets); the next commit or checkpoint puts it right.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Segment {
    path: PathBuf,
    file: File,
    /// The pass its live frames carry; `None` while it holds none.
    pass: Option<u64>,
    /// Where the next frame goes.
    at: u64,
}

impl Segment {
    /// Zeroes the first frame header, so recovery finds nothing live.
    fn empty(&mut self) -> Result<(), StoreError> {
        if self.pass.is_none() && self.at == 0 {
            return Ok(());
        }
        self.file
            .write_all_at(&[0u8; FRAME_HEADER], 0)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io_err("emptying the journal segment", &self.path, e))?;
        self.pass = None;
        self.at = 0;
        Ok(())
    }
}

struct Segments {
    segs: [Segment; 2],
    active: usize,
    next_seq: u64,
    /// The buffer the last commit wrote, kept to take the next pending
    /// operations: a commit allocates nothing.
    spare: Vec<u8>,
}

/// State held in memory whose writes are journaled but not applied to sled
/// (an outbox's newest entries): a checkpoint writes it to sled before it
/// flushes, since afterwards the journal no longer holds it.
pub(crate) trait Spill: Send + Sync {
    fn spill(&self) -> Result<(), StoreError>;
    /// Nothing held: a hook no one else owns may then be let go.
    fn holds_nothing(&self) -> bool;
}

/// Held strongly: entries of an outbox dropped before the next checkpoint
/// (at a stop) must still reach sled. A hook only the journal holds is let
/// go once it has spilled.
type Spills = Arc<Mutex<Vec<Arc<dyn Spill>>>>;

/// Runs every spill hook.
fn spill_all(spills: &Spills) -> Result<(), StoreError> {
    let all: Vec<Arc<dyn Spill>> = lock(spills).clone();
    all.iter().try_for_each(|s| s.spill())?;
    drop(all);
    // Only the journal holds it, so nothing can be added to it any more;
    // one that still holds something (added after its spill above) stays.
    lock(spills).retain(|s| Arc::strong_count(s) > 1 || !s.holds_nothing());
    Ok(())
}

/// A checkpoint's flush: what the hooks hold into sled, the note that
/// frames up to `seq` are covered, then the flush that makes both true.
fn flush_covering(db: &sled::Db, spills: &Spills, seq: u64) -> Result<(), StoreError> {
    spill_all(spills)?;
    note_checkpoint(db, seq)?;
    db.flush()?;
    Ok(())
}

pub struct Journal {
    db: sled::Db,
    spills: Spills,
    /// Operations applied to sled and not yet in a segment. Starts with
    /// room for a frame header, so a commit writes it in one piece.
    pending: Mutex<Vec<u8>>,
    /// Set when an operation could not be journaled (the pending buffer is
    /// full): the next commit must be a checkpoint.
    overflowed: Arc<AtomicBool>,
    /// Each segment's size; also the most the pending buffer takes.
    capacity: u64,
    /// Shared with the background checkpoint.
    segments: Arc<Mutex<Segments>>,
}

/// A pending buffer's first size, and the most one keeps after a burst:
/// below the size at which the allocator maps memory afresh each time.
const PENDING_START: usize = 64 << 10;
const PENDING_KEEP: usize = 1 << 20;

fn fresh_buffer(capacity: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(capacity.max(FRAME_HEADER));
    v.resize(FRAME_HEADER, 0);
    v
}

impl Journal {
    /// Opens the journal in `dir`, creating its segments if needed, and
    /// applies what a crash left in them to `db`.
    pub(super) fn open(
        dir: &Path,
        db: sled::Db,
        overflowed: Arc<AtomicBool>,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
        let paths = [dir.join("0"), dir.join("1")];
        // Whatever segments exist are recovered first, even a lone or odd
        // one: a pair that is not whole is then made again.
        let mut found = Vec::new();
        for p in &paths {
            match File::open(p) {
                Ok(f) => {
                    let len = f.metadata().map_err(|e| io_err("reading", p, e))?.len();
                    found.push(read_live(&f, len).map_err(|e| io_err("reading", p, e))?);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("opening", p, e)),
            }
        }
        let next_seq = recover(&db, dir, found)? + 1;
        let lens: Vec<u64> = paths
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok().map(|m| m.len()))
            .collect();
        let wanted = test_segment_size();
        let capacity = match lens.as_slice() {
            [a, b]
                if a == b
                    && match wanted {
                        Some(w) => w == *a,
                        None => *a >= SEGMENT_MIN,
                    } =>
            {
                *a
            }
            _ => {
                let capacity = wanted.unwrap_or_else(|| segment_size(dir));
                for p in &paths {
                    create_zeroed(p, capacity)?;
                }
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| io_err("syncing", dir, e))?;
                capacity
            }
        };
        let open = |p: &PathBuf| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map(|file| Segment {
                    path: p.clone(),
                    file,
                    pass: None,
                    // Unknown: emptying must really zero the header.
                    at: 1,
                })
                .map_err(|e| io_err("opening", p, e))
        };
        let mut segs = [open(&paths[0])?, open(&paths[1])?];
        // Recovered, so nothing in them is live any more.
        for seg in segs.iter_mut() {
            seg.empty()?;
        }
        Ok(Self {
            db,
            spills: Spills::default(),
            pending: Mutex::new(fresh_buffer(PENDING_START)),
            overflowed,
            capacity,
            segments: Arc::new(Mutex::new(Segments {
                segs,
                active: 0,
                next_seq,
                spare: fresh_buffer(PENDING_START),
            })),
        })
    }

    /// Writes what every spill hook holds to sled now: before another
    /// handle on the same tree reads it (an outbox opened again).
    pub(crate) fn spill_now(&self) -> Result<(), StoreError> {
        spill_all(&self.spills)
    }

    /// Registers state a checkpoint must write to sled first.
    pub(crate) fn add_spill(&self, spill: Arc<dyn Spill>) {
        lock(&self.spills).push(spill);
    }

    /// Records operations already applied to sled, or to what a spill hook
    /// holds, in one piece: a commit takes all of them or none (a dead
    /// letter leaves the queue and joins the dead letters together).
    pub(crate) fn record(&self, ops: &[Op<'_>]) {
        let len: usize = ops.iter().map(Op::encoded_len).sum();
        let mut buf = lock(&self.pending);
        if !ops.iter().all(Op::fits) || buf.len() + len > self.capacity as usize {
            // Not journaled: a checkpoint (a spill and a flush of sled,
            // which then has the writes) must make them durable instead.
            drop(buf);
            self.overflowed.store(true, Ordering::SeqCst);
            return;
        }
        for op in ops {
            op.encode(&mut buf);
        }
    }

    /// Whether operations wait for a commit.
    pub(super) fn has_pending(&self) -> bool {
        lock(&self.pending).len() > FRAME_HEADER
    }

    /// Writes the pending operations as one frame and syncs it. A frame
    /// that does not fit where it should go is made durable by a
    /// checkpoint instead.
    pub(super) fn commit(&self) -> Result<(), StoreError> {
        let mut s = lock(&self.segments);
        let mut frame = std::mem::take(&mut s.spare);
        {
            let mut buf = lock(&self.pending);
            if buf.len() <= FRAME_HEADER {
                drop(buf);
                s.spare = frame;
                return Ok(());
            }
            std::mem::swap(&mut *buf, &mut frame);
        }
        let result = self.write_frame(&mut s, &mut frame);
        frame.truncate(FRAME_HEADER);
        frame.shrink_to(PENDING_KEEP);
        s.spare = frame;
        result
    }

    fn write_frame(&self, s: &mut Segments, frame: &mut [u8]) -> Result<(), StoreError> {
        let len = frame.len() as u64;
        if len > self.capacity {
            return self.checkpoint_locked(s);
        }
        if s.segs[s.active].at + len > self.capacity {
            let standby = 1 - s.active;
            if s.segs[standby].pass.is_some() {
                // The last full segment is not checkpointed yet.
                return self.checkpoint_locked(s);
            }
            let retired = s.active;
            s.active = standby;
            self.checkpoint_in_background(retired, s.segs[retired].pass, s.next_seq - 1);
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        let active = s.active;
        let seg = &mut s.segs[active];
        let pass = *seg.pass.get_or_insert_with(rand::random);
        let body_len = (frame.len() - FRAME_HEADER) as u32;
        frame[..4].copy_from_slice(MAGIC);
        frame[4..12].copy_from_slice(&pass.to_le_bytes());
        frame[12..20].copy_from_slice(&seq.to_le_bytes());
        frame[20..24].copy_from_slice(&body_len.to_le_bytes());
        let crc = frame_crc(&frame[4..24], &frame[FRAME_HEADER..]);
        frame[24..28].copy_from_slice(&crc.to_le_bytes());
        let written = seg
            .file
            .write_all_at(frame, seg.at)
            .and_then(|()| seg.file.sync_data());
        if let Err(e) = written {
            // What was written may be torn; a checkpoint, once the disk
            // works again, covers the operations (sled has them).
            self.overflowed.store(true, Ordering::SeqCst);
            return Err(io_err("writing the journal", &seg.path, e));
        }
        seg.at += len;
        Ok(())
    }

    /// Flushes sled and empties both segments: afterwards, sled alone
    /// holds everything. Used for writes that are not journaled, before a
    /// deletion is reported done, and at a clean stop.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let mut s = lock(&self.segments);
        self.checkpoint_locked(&mut s)
    }

    fn checkpoint_locked(&self, s: &mut Segments) -> Result<(), StoreError> {
        // Pending operations are in sled already, so the flush covers
        // them; they leave the buffer only once it succeeded.
        let pending = lock(&self.pending).len();
        if let Err(e) = flush_covering(&self.db, &self.spills, s.next_seq - 1) {
            self.overflowed.store(true, Ordering::SeqCst);
            return Err(e);
        }
        lock(&self.pending).drain(FRAME_HEADER..pending);
        for seg in s.segs.iter_mut() {
            seg.empty()?;
        }
        s.active = 0;
        Ok(())
    }

    /// Flushes sled on a thread of its own, then empties the segment that
    /// filled up, unless it was emptied meanwhile. Commits go on in the
    /// other segment while sled writes.
    fn checkpoint_in_background(&self, retired: usize, pass: Option<u64>, last_seq: u64) {
        let Some(pass) = pass else { return };
        let (db, segments) = (self.db.clone(), Arc::clone(&self.segments));
        let spills = Arc::clone(&self.spills);
        let spawned = std::thread::Builder::new()
            .name("dataward-checkpoint".into())
            .spawn(move || {
                if let Err(e) = flush_covering(&db, &spills, last_seq) {
                    // The segment stays live; the next one to fill finds it
                    // so and checkpoints in line, reporting the error.
                    tracing::warn!(error = %e, "a background checkpoint of the store failed");
                    return;
                }
                let mut s = lock(&segments);
                if s.active != retired && s.segs[retired].pass == Some(pass) {
                    if let Err(e) = s.segs[retired].empty() {
                        tracing::warn!(error = %e, "a checkpointed journal segment could not be emptied");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no thread for a journal checkpoint; the next full segment is checkpointed in line");
        }
    }
}

/// Debug builds only: `DATAWARD_TEST_JOURNAL_BYTES=N` makes segments of N
/// bytes (at least 64 KiB), so that end-to-end tests cross segments, and
/// their background checkpoints, within seconds.
#[cfg(debug_assertions)]
fn test_segment_size() -> Option<u64> {
    let n: u64 = std::env::var("DATAWARD_TEST_JOURNAL_BYTES")
        .ok()?
        .parse()
        .ok()?;
    Some(n.max(64 << 10) & !4095)
}

#[cfg(not(debug_assertions))]
fn test_segment_size() -> Option<u64> {
    None
}

/// The segment size for a new journal: [`SEGMENT_MAX`], or a sixteenth of
/// the free space when that is less (two segments then take an eighth).
fn segment_size(dir: &Path) -> u64 {
    let free = free_bytes(dir).unwrap_or(u64::MAX);
    (free / 16).clamp(SEGMENT_MIN, SEGMENT_MAX) & !4095
}

fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct it is given; zeroed is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Writes `len` zero bytes to a new file at `path` and syncs it; a file
/// that could not be completed is removed.
fn create_zeroed(path: &Path, len: u64) -> Result<(), StoreError> {
    let tmp = path.with_extension("new");
    let result = (|| {
        let mut f = File::create(&tmp)?;
        let zeros = vec![0u8; 64 << 10];
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err("creating the journal segment", path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
