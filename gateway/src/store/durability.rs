//! Group commit: many writers, one journal write and one `fdatasync`.
//!
//! The commit runs on a thread of its own (the single writer of the
//! [`Journal`]): writers wake it and wait on a watch channel, so a commit
//! costs one thread wake-up, not a task hop and a blocking-pool job.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::journal::Journal;
use super::StoreError;

/// The flush state every waiter watches: how many writes are covered, and
/// whether the commit that covered the latest ones failed.
#[derive(Debug, Clone)]
struct Flushed {
    covered: u64,
    error: Option<String>,
    /// The committer has stopped: nothing later will be committed.
    closed: bool,
}

/// The longest a write that nobody waits for (a QoS 0 message, an
/// acknowledged outbox entry's removal) stays uncommitted.
pub const IDLE_FLUSH: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Wake {
    kicked: bool,
    stop: bool,
}

pub struct Durability {
    journal: Arc<Journal>,
    /// Set by every write that is not journaled: the next commit is a
    /// checkpoint (a flush of sled), within [`IDLE_FLUSH`] even if no
    /// writer waits.
    dirty: Arc<AtomicBool>,
    /// Set when state kept in memory (the ledger's open buckets) waits for
    /// a commit: committed within [`IDLE_FLUSH`].
    due: Arc<AtomicBool>,
    /// Tickets handed out; a writer takes one after its writes are in sled
    /// and the journal's pending buffer.
    written: AtomicU64,
    wake: Mutex<Wake>,
    wakeup: Condvar,
    flushed: watch::Sender<Flushed>,
    /// Run at the start of every commit: state kept in memory between
    /// commits (the ledger's open buckets) is written then, once per group
    /// commit instead of once per message.
    before_flush: std::sync::RwLock<Option<BeforeFlush>>,
}

type BeforeFlush = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

impl Durability {
    pub(super) fn new(journal: Arc<Journal>, dirty: Arc<AtomicBool>) -> Self {
        let (flushed, _) = watch::channel(Flushed {
            covered: 0,
            error: None,
            closed: false,
        });
        Self {
            journal,
            dirty,
            due: Arc::default(),
            written: AtomicU64::new(0),
            wake: Mutex::default(),
            wakeup: Condvar::new(),
            flushed,
            before_flush: std::sync::RwLock::new(None),
        }
    }

    pub(super) fn set_before_flush(&self, f: BeforeFlush) {
        *self.before_flush.write().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    fn hook(&self) -> Option<BeforeFlush> {
        self.before_flush
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets a flag for the committer thread and wakes it.
    fn signal(&self, set: fn(&mut Wake)) {
        set(&mut self.wake.lock().unwrap_or_else(|e| e.into_inner()));
        self.wakeup.notify_one();
    }

    fn kick(&self) {
        self.signal(|w| w.kicked = true);
    }

    fn stop(&self) {
        self.signal(|w| w.stop = true);
    }

    /// Waits until everything this task wrote before the call is on disk.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let ticket = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = self.flushed.subscribe();
        self.kick();
        let shutting_down = || StoreError::Flush("the store is shutting down".into());
        let state = rx
            .wait_for(|f| f.covered >= ticket || f.closed)
            .await
            .map_err(|_| shutting_down())?;
        if state.covered < ticket {
            return Err(shutting_down());
        }
        match &state.error {
            Some(e) => Err(StoreError::Flush(e.clone())),
            None => Ok(()),
        }
    }

    /// The flag writers that are not journaled set.
    pub(super) fn dirty(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.dirty)
    }

    /// The flag in-memory state that a commit writes sets.
    pub(super) fn due(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.due)
    }

    /// After a write failed (sled reports an I/O error at insert when its
    /// log cannot grow): checkpoint now, so that the failure shows in
    /// health at once, not only when the next write happens to need one.
    pub fn check_now(&self) {
        self.dirty.store(true, Ordering::SeqCst);
        self.kick();
    }

    /// False while the latest commit failed (a full or broken disk).
    pub fn healthy(&self) -> bool {
        self.flushed.borrow().error.is_none()
    }

    /// The committer: runs its thread until `shutdown` fires, which then
    /// checkpoints once more. While one commit runs, new writers pile up
    /// and the next commit covers them all; there is no fixed delay to add
    /// latency when idle. A panic of the thread is this task's.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let me = Arc::clone(&self);
        let thread = match std::thread::Builder::new()
            .name("dataward-commit".into())
            .spawn(move || me.commit_loop())
        {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "no thread for the committer");
                self.flushed.send_replace(Flushed {
                    covered: 0,
                    error: Some(format!("no committer thread: {e}")),
                    closed: true,
                });
                return;
            }
        };
        let mut joined = tokio::task::spawn_blocking(move || thread.join());
        let finished = tokio::select! {
            j = &mut joined => Some(j),
            _ = shutdown.changed() => None,
        };
        let joined = match finished {
            Some(j) => j,
            None => {
                self.stop();
                joined.await
            }
        };
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(panic)) => {
                // Health shows it too, not only the supervisor.
                self.flushed.send_modify(|f| {
                    f.closed = true;
                    f.error = Some("the committer stopped".into());
                });
                std::panic::resume_unwind(panic)
            }
            Err(e) => tracing::error!(error = %e, "the committer thread could not be joined"),
        }
    }

    fn commit_loop(&self) {
        loop {
            let stop = {
                let mut w = self.wake.lock().unwrap_or_else(|e| e.into_inner());
                while !w.kicked && !w.stop {
                    let (g, waited) = self
                        .wakeup
                        .wait_timeout(w, IDLE_FLUSH)
                        .unwrap_or_else(|e| e.into_inner());
                    w = g;
                    if waited.timed_out()
                        && (self.dirty.load(Ordering::SeqCst)
                            || self.due.load(Ordering::SeqCst)
                            || self.journal.has_pending())
                    {
                        break;
                    }
                }
                w.kicked = false;
                w.stop
            };
            if stop {
                break;
            }
            #[cfg(debug_assertions)]
            test_fault::committer_flush();
            self.commit_round(false);
        }
        self.commit_round(true);
    }

    /// One group commit: a journal commit, or a checkpoint when a write
    /// that is not journaled waits (and always at the end).
    fn commit_round(&self, last: bool) {
        // The ticket count first: a writer that set `dirty` before taking
        // its ticket is then seen as dirty here.
        let target = self.written.load(Ordering::SeqCst);
        let checkpoint = self.dirty.swap(false, Ordering::SeqCst) || last;
        self.due.store(false, Ordering::SeqCst);
        let result = (|| {
            if let Some(h) = self.hook() {
                h()?;
            }
            if checkpoint {
                self.journal.checkpoint()
            } else {
                self.journal.commit()
            }
            .map_err(|e| crate::control::with_causes(&e))
        })();
        if let Err(e) = &result {
            // Still to be made durable: the next round checkpoints.
            self.dirty.store(true, Ordering::SeqCst);
            tracing::error!(error = %e, "committing to the store failed; publishes are refused until it works again");
        }
        self.flushed.send_replace(Flushed {
            covered: target,
            error: result.err(),
            closed: last,
        });
    }
}

/// Faults the end-to-end tests inject into a debug build, to see that a
/// failed stage is noticed. Compiled out of release builds.
#[cfg(debug_assertions)]
mod test_fault {
    use std::sync::atomic::{AtomicU64, Ordering};

    static FLUSHES: AtomicU64 = AtomicU64::new(0);

    /// `DATAWARD_TEST_FAULT=committer:N` makes the committer panic at its
    /// N-th flush.
    pub(super) fn committer_flush() {
        let n = FLUSHES.fetch_add(1, Ordering::Relaxed) + 1;
        let armed = std::env::var("DATAWARD_TEST_FAULT")
            .ok()
            .and_then(|v| v.strip_prefix("committer:")?.parse::<u64>().ok());
        if armed == Some(n) {
            panic!("injected fault: committer flush {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::store::{NewRecord, Store};

    fn rec(payload: &[u8]) -> NewRecord<'_> {
        NewRecord {
            device: "dev",
            received_ms: 0,
            qos: 1,
            retain: false,
            topic: "t",
            payload,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_flush_serves_many_writers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let committer = tokio::spawn(Arc::clone(&store.durability).run(stop_rx));
        let history = store.history();
        history.set_recipient(Some(crate::keys::seal::generate().1));
        let mut writers = Vec::new();
        for w in 0..50u8 {
            let (h, d) = (Arc::clone(&history), Arc::clone(&store.durability));
            writers.push(tokio::spawn(async move {
                h.append(&rec(&[w])).expect("append");
                d.sync().await
            }));
        }
        for w in writers {
            w.await.expect("join").expect("durable");
        }
        assert!(store.durability.healthy());
        stop_tx.send(true).expect("stop");
        committer.await.expect("committer");
        drop(history);
        drop(store);
        // Everything acknowledged as durable is there after a reopen.
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.history().count("dev"), 50);
    }

    #[tokio::test]
    async fn writes_nobody_waits_for_are_flushed_within_the_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let committer = tokio::spawn(Arc::clone(&store.durability).run(stop_rx));
        let mut flushes = store.durability.flushed.subscribe();
        // Idle: no flush at all.
        let idle = tokio::time::timeout(2 * super::IDLE_FLUSH, flushes.changed()).await;
        assert!(idle.is_err(), "a clean store is not flushed");
        // A QoS 0 style write, with no one calling sync.
        let history = store.history();
        history.set_recipient(Some(crate::keys::seal::generate().1));
        history.append(&rec(b"x")).expect("append");
        let flushed = tokio::time::timeout(4 * super::IDLE_FLUSH, flushes.changed()).await;
        assert!(flushed.is_ok(), "flushed within the idle deadline");
        stop_tx.send(true).expect("stop");
        committer.await.expect("committer");
    }

    #[tokio::test]
    async fn sync_fails_instead_of_hanging_once_the_committer_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let committer = tokio::spawn(Arc::clone(&store.durability).run(stop_rx));
        stop_tx.send(true).expect("stop");
        committer.await.expect("committer");
        // Nothing flushes any more: a writer must not wait forever.
        let waited =
            tokio::time::timeout(std::time::Duration::from_secs(10), store.durability.sync()).await;
        assert!(
            matches!(waited, Ok(Err(_))),
            "sync after shutdown fails at once: {waited:?}"
        );
    }
}
