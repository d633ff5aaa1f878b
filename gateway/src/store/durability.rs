//! Group commit: many writers, one flush.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{watch, Notify};

use super::StoreError;

/// The flush state every waiter watches: how many writes are covered, and
/// whether the flush that covered the latest ones failed.
#[derive(Debug, Clone)]
struct Flushed {
    covered: u64,
    error: Option<String>,
}

pub struct Durability {
    db: sled::Db,
    /// Tickets handed out; a writer takes one after its writes are in sled.
    written: AtomicU64,
    kick: Notify,
    flushed: watch::Sender<Flushed>,
}

impl Durability {
    pub(super) fn new(db: sled::Db) -> Self {
        let (flushed, _) = watch::channel(Flushed {
            covered: 0,
            error: None,
        });
        Self {
            db,
            written: AtomicU64::new(0),
            kick: Notify::new(),
            flushed,
        }
    }

    /// Waits until everything this task wrote before the call is on disk.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let ticket = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = self.flushed.subscribe();
        self.kick.notify_one();
        let state = rx
            .wait_for(|f| f.covered >= ticket)
            .await
            .map_err(|_| StoreError::Flush("the store is shutting down".into()))?;
        match &state.error {
            Some(e) => Err(StoreError::Flush(e.clone())),
            None => Ok(()),
        }
    }

    /// False while the latest flush failed (a full or broken disk).
    pub fn healthy(&self) -> bool {
        self.flushed.borrow().error.is_none()
    }

    /// The committer: runs until `shutdown` fires, then flushes once more.
    /// While one flush runs, new writers pile up and the next flush covers
    /// them all; there is no fixed delay to add latency when idle.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = self.kick.notified() => {}
                _ = shutdown.changed() => break,
            }
            let target = self.written.load(Ordering::SeqCst);
            let db = self.db.clone();
            let result = match tokio::task::spawn_blocking(move || db.flush()).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(format!("flush task failed: {e}")),
            };
            if let Some(e) = &result {
                tracing::error!(error = %e, "flushing the store failed; publishes are refused until it works again");
            }
            self.flushed.send_replace(Flushed {
                covered: target,
                error: result,
            });
        }
        let target = self.written.load(Ordering::SeqCst);
        let error = self.db.flush().err().map(|e| e.to_string());
        self.flushed.send_replace(Flushed {
            covered: target,
            error,
        });
    }
}
