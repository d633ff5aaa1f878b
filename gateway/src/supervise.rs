//! Long-lived tasks, watched: a stage that panics or stops on its own is
//! reported with its name, `/healthz` turns unhealthy, and `run` shuts the
//! gateway down with a non-zero exit, so that the service manager starts it
//! again. Nothing acknowledged is lost by that: a device's PUBACK waits for
//! the flush, and the outboxes are on disk.
//!
//! Restarting a stage in place was weighed and left out: the committer's
//! waiters, the broker's sessions and an uplink's in-flight window would
//! each need their own recovery, where a restart of the process recovers
//! them all, the same tested way as after a crash.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};

/// A stage that ended when it should not have.
#[derive(Debug, Clone)]
pub struct Failure {
    pub task: &'static str,
    pub reason: String,
}

pub struct Supervisor {
    tx: mpsc::UnboundedSender<Failure>,
    rx: mpsc::UnboundedReceiver<Failure>,
    stopping: Arc<AtomicBool>,
    healthy: Arc<AtomicBool>,
}

/// A supervised task: abort it, or wait for it to end.
pub struct Supervised {
    inner: AbortHandle,
    watcher: JoinHandle<()>,
}

impl Supervised {
    pub fn abort(&self) {
        self.inner.abort();
    }

    pub async fn join(self) {
        let _ = self.watcher.await;
    }
}

impl Default for Supervisor {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx,
            stopping: Arc::default(),
            healthy: Arc::new(AtomicBool::new(true)),
        }
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(other) => other
            .downcast::<&'static str>()
            .map(|s| (*s).to_string())
            .unwrap_or_else(|_| "a panic with no message".into()),
    }
}

impl Supervisor {
    /// False once any stage has failed.
    pub fn health(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.healthy)
    }

    pub fn spawn<F>(&self, task: &'static str, fut: F) -> Supervised
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let inner = tokio::spawn(fut);
        let abort = inner.abort_handle();
        let (tx, stopping, healthy) = (
            self.tx.clone(),
            Arc::clone(&self.stopping),
            Arc::clone(&self.healthy),
        );
        let watcher = tokio::spawn(async move {
            let reason = match inner.await {
                Ok(()) if stopping.load(Ordering::Acquire) => return,
                Ok(()) => "it stopped on its own".to_string(),
                Err(e) if e.is_cancelled() => return,
                Err(e) => format!("it panicked: {}", panic_text(e.into_panic())),
            };
            healthy.store(false, Ordering::Release);
            tracing::error!(task, %reason, "a gateway stage failed");
            let _ = tx.send(Failure { task, reason });
        });
        Supervised {
            inner: abort,
            watcher,
        }
    }

    /// Waits for the first failure.
    pub async fn failed(&mut self) -> Failure {
        match self.rx.recv().await {
            Some(f) => f,
            // The sender lives in self: never reached.
            None => std::future::pending().await,
        }
    }

    /// From now on, stages that end are stopping, not failing.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_reported_with_its_task_and_turns_health_off() {
        let mut s = Supervisor::default();
        let health = s.health();
        let _quiet = s.spawn("quiet", std::future::pending());
        let _bad = s.spawn("committer", async { panic!("injected") });
        let f = tokio::time::timeout(std::time::Duration::from_secs(5), s.failed())
            .await
            .expect("reported");
        assert_eq!(f.task, "committer");
        assert!(f.reason.contains("injected"), "{}", f.reason);
        assert!(!health.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn stages_ending_at_shutdown_are_not_failures() {
        let mut s = Supervisor::default();
        s.stopping();
        s.spawn("uplink", async {}).join().await;
        let none = tokio::time::timeout(std::time::Duration::from_millis(100), s.failed()).await;
        assert!(none.is_err(), "no failure reported");
        assert!(s.health().load(Ordering::Acquire));
    }
}
