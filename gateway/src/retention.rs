//! The retention task: the history's expiration date. Once at start and
//! then every hour, every day of history older than its device's retention
//! (the policy's `[[retain]]`, else the config's `history_retention`) is
//! crypto-shredded, like a delete. The sweep itself takes the time as an
//! argument, so a test drives it with any clock. The same task keeps the
//! ledger: a checkpoint a day, and entries past `[ledger] retention`
//! pruned at a checkpoint.

use std::sync::Arc;
use std::time::Duration;

use policy::retention::Keep;
use policy::Policy;
use tokio::sync::watch;

use crate::pipeline::Pipeline;
use crate::store::{HistoryStore, ShredReport, StoreError};

const EVERY: Duration = Duration::from_secs(3600);

/// Destroys what is past retention at `now_ms`.
pub fn sweep(
    history: &HistoryStore,
    policy: &Policy,
    default: Keep,
    now_ms: u64,
) -> Result<ShredReport, StoreError> {
    history.expire(now_ms, &|device| {
        match policy.retention(device).unwrap_or(default) {
            Keep::For(ms) => Some(ms),
            // Nothing new is stored; what is left goes as each day ends.
            Keep::Nothing => Some(0),
            Keep::Forever => None,
        }
    })
}

pub async fn run(
    history: Arc<HistoryStore>,
    pipeline: Arc<Pipeline>,
    default: Keep,
    ledger: (Arc<crate::ledger::Ledger>, Option<u64>),
    mut stop: watch::Receiver<bool>,
) {
    // Deletes a crash interrupted are finished first.
    let h = Arc::clone(&history);
    match tokio::task::spawn_blocking(move || h.reclaim(None)).await {
        Ok(Ok((records, _))) if records > 0 => {
            tracing::info!(
                records,
                "finished removing the records of an interrupted delete"
            )
        }
        Ok(Err(e)) => tracing::error!(error = %e, "finishing an interrupted delete failed"),
        _ => {}
    }
    loop {
        let policy = pipeline.policy();
        let h = Arc::clone(&history);
        let swept = tokio::task::spawn_blocking(move || {
            sweep(&h, &policy.policy, default, crate::pipeline::now_ms())
        })
        .await;
        match swept {
            Ok(Ok(r)) if r.periods > 0 => tracing::info!(
                days = r.periods,
                records = r.records,
                "history past its retention deleted"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the retention sweep failed; it runs again in an hour")
            }
            Err(e) => {
                tracing::error!(error = %e, "the retention sweep failed; it runs again in an hour")
            }
        }
        // The ledger: a daily checkpoint, and entries past its retention.
        let (l, keep) = (Arc::clone(&ledger.0), ledger.1);
        match tokio::task::spawn_blocking(move || l.maintain(crate::pipeline::now_ms(), keep)).await
        {
            Ok(Ok(pruned)) if pruned > 0 => {
                tracing::info!(
                    entries = pruned,
                    "ledger entries past their retention pruned"
                )
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "ledger maintenance failed"),
            Err(e) => tracing::error!(error = %e, "ledger maintenance failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::seal;
    use crate::store::{NewRecord, ReadRange, Store, PERIOD_MS};

    #[test]
    fn the_policy_and_the_default_decide_what_expires() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sk, pk) = seal::generate();
        let store = Store::open(dir.path()).expect("open");
        let h = store.history();
        h.set_recipient(Some(pk));
        for device in ["plug", "tracker", "vault"] {
            for day in 0..10u64 {
                h.append(&NewRecord {
                    device,
                    received_ms: day * PERIOD_MS + 1,
                    qos: 0,
                    retain: false,
                    topic: "t",
                    payload: b"{}",
                })
                .expect("append");
            }
        }
        let policy = Policy::parse(
            "[[retain]]\ndevice = \"tracker\"\nkeep = \"2d\"\n[[retain]]\ndevice = \"vault\"\nkeep = \"forever\"\n",
        )
        .expect("policy");
        // The test clock: the end of day 9.
        let now = 10 * PERIOD_MS;
        let r = sweep(&h, &policy, Keep::For(5 * PERIOD_MS), now).expect("sweep");
        let days = |d: &str| {
            h.read(
                &sk,
                &ReadRange {
                    device: Some(d),
                    ..Default::default()
                },
            )
            .map(|r| r.expect("readable").received_ms / PERIOD_MS)
            .collect::<Vec<_>>()
        };
        assert_eq!(days("plug"), (5..10).collect::<Vec<_>>());
        assert_eq!(days("tracker"), vec![8, 9]);
        assert_eq!(days("vault").len(), 10);
        assert_eq!(r.periods, 5 + 8);
        // Nothing more until a day passes.
        assert_eq!(
            sweep(&h, &policy, Keep::For(5 * PERIOD_MS), now + 1)
                .expect("sweep")
                .periods,
            0
        );
        assert_eq!(
            sweep(&h, &policy, Keep::For(5 * PERIOD_MS), now + PERIOD_MS)
                .expect("sweep")
                .periods,
            2
        );
    }
}
