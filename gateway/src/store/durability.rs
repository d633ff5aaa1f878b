//! Group commit: many writers, one flush.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::StoreError;

/// The flush state every waiter watches: how many writes are covered, and
/// whether the flush that covered the latest ones failed.
#[derive(Debug, Clone)]
struct Flushed {
    covered: u64,
    error: Option<String>,
    /// The committer has stopped: nothing later will be flushed.
    closed: bool,
}

/// The longest a write that nobody waits for (a QoS 0 message, an
/// acknowledged outbox entry's removal) stays unflushed.
pub const IDLE_FLUSH: Duration = Duration::from_millis(500);

pub struct Durability {
    db: sled::Db,
    /// Set by every write to the store; the committer flushes within
    /// [`IDLE_FLUSH`] when set, even if no writer waits.
    dirty: Arc<AtomicBool>,
    /// Tickets handed out; a writer takes one after its writes are in sled.
    written: AtomicU64,
    kick: Notify,
    flushed: watch::Sender<Flushed>,
    /// Run at the start of every flush: state kept in memory between
    /// commits (the ledger's open buckets) is written then, once per group
    /// commit instead of once per message.
    before_flush: std::sync::RwLock<Option<BeforeFlush>>,
}

type BeforeFlush = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

impl Durability {
    pub(super) fn new(db: sled::Db) -> Self {
        let (flushed, _) = watch::channel(Flushed {
            covered: 0,
            error: None,
            closed: false,
        });
        Self {
            db,
            dirty: Arc::default(),
            written: AtomicU64::new(0),
            kick: Notify::new(),
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

    /// Waits until everything this task wrote before the call is on disk.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let ticket = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = self.flushed.subscribe();
        self.kick.notify_one();
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

    /// The flag writers set, for the stores that write without waiting.
    pub(super) fn dirty(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.dirty)
    }

    /// After a write failed (sled reports an I/O error at insert when its
    /// log cannot grow): flush now, so that the failure shows in health at
    /// once, not only when the next write happens to need a flush.
    pub fn check_now(&self) {
        self.dirty.store(true, Ordering::Release);
        self.kick.notify_one();
    }

    /// False while the latest flush failed (a full or broken disk).
    pub fn healthy(&self) -> bool {
        self.flushed.borrow().error.is_none()
    }

    /// The committer: runs until `shutdown` fires, then flushes once more.
    /// While one flush runs, new writers pile up and the next flush covers
    /// them all; there is no fixed delay to add latency when idle.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(IDLE_FLUSH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.kick.notified() => {}
                _ = tick.tick() => {
                    if !self.dirty.load(Ordering::Acquire) {
                        continue;
                    }
                }
                _ = shutdown.changed() => break,
            }
            self.dirty.store(false, Ordering::Release);
            let target = self.written.load(Ordering::SeqCst);
            #[cfg(debug_assertions)]
            test_fault::committer_flush();
            let db = self.db.clone();
            let hook = self.hook();
            let result = match tokio::task::spawn_blocking(move || {
                if let Some(h) = hook {
                    h()?;
                }
                db.flush().map_err(|e| e.to_string())
            })
            .await
            {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e),
                Err(e) => Some(format!("flush task failed: {e}")),
            };
            if let Some(e) = &result {
                // Still to be flushed: the next tick tries again.
                self.dirty.store(true, Ordering::Release);
                tracing::error!(error = %e, "flushing the store failed; publishes are refused until it works again");
            }
            self.flushed.send_replace(Flushed {
                covered: target,
                error: result,
                closed: false,
            });
        }
        let target = self.written.load(Ordering::SeqCst);
        let hooked = self.hook().map_or(Ok(()), |h| h());
        let error = hooked
            .err()
            .or_else(|| self.db.flush().err().map(|e| e.to_string()));
        self.flushed.send_replace(Flushed {
            covered: target,
            error,
            closed: true,
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
        let d = Arc::clone(&store.durability);
        let committer = tokio::spawn(async move { d.run(stop_rx).await });
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
        let d = Arc::clone(&store.durability);
        let committer = tokio::spawn(async move { d.run(stop_rx).await });
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
        let d = Arc::clone(&store.durability);
        let committer = tokio::spawn(async move { d.run(stop_rx).await });
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
