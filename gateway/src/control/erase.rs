//! `delete` and `wipe`: the right to be forgotten, by crypto-shredding
//! (see `store::shred`). Both need the passphrase: they are as much the
//! user's act as reading is, and a cut day must be re-encrypted.

use serde::{Deserialize, Serialize};

use super::{OpError, Operations, Passphrase};
use crate::store::{ShredRange, ShredReport};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteReport {
    /// The device, or none for a wipe.
    pub device: Option<String>,
    pub history: ShredReport,
    /// Entries that were waiting to leave (or set aside as dead letters).
    pub outbox_entries: u64,
    /// Retained messages dropped from the running broker.
    pub retained: usize,
    /// For a factory wipe: devices and policy versions removed, and whether
    /// the keys went too.
    #[serde(default)]
    pub devices_removed: u64,
    /// Local consumers' accounts removed (a factory wipe).
    #[serde(default)]
    pub consumers_removed: u64,
    #[serde(default)]
    pub policy_versions_removed: u64,
    #[serde(default)]
    pub keys_removed: bool,
    /// Field names forgotten from the inventory (a whole delete or a wipe):
    /// whatever the device sends next is held as new.
    #[serde(default)]
    pub fields_forgotten: u64,
}

impl DeleteReport {
    /// A report of history and what waited to leave; no devices, policies
    /// or keys removed.
    fn of(
        device: Option<&str>,
        history: ShredReport,
        outbox_entries: u64,
        retained: usize,
    ) -> Self {
        Self {
            device: device.map(str::to_string),
            history,
            outbox_entries,
            retained,
            devices_removed: 0,
            consumers_removed: 0,
            policy_versions_removed: 0,
            keys_removed: false,
            fields_forgotten: 0,
        }
    }
}

impl Operations {
    /// Purges the outbox entries of `device` (or all), live or stored.
    fn purge_outboxes(&self, device: Option<&str>) -> Result<u64, OpError> {
        let mut purged = 0;
        for dest in &self.config.destinations {
            let live = self
                .live
                .as_ref()
                .and_then(|l| l.links.iter().find(|h| h.name == dest.name));
            purged += match live {
                Some(link) => link.outbox.purge(device)?,
                None => {
                    let store = self.store()?;
                    if store.has_outbox(&dest.name) {
                        store
                            .outbox(&dest.name, self.config.store.outbox_max_entries)?
                            .purge(device)?
                    } else {
                        0
                    }
                }
            };
        }
        Ok(purged)
    }

    /// Deletes `device`'s history in `[since, until)` (all of it without
    /// bounds), what waits to leave for it and its retained messages.
    pub async fn delete(
        &self,
        device: &str,
        since_ms: Option<u64>,
        until_ms: Option<u64>,
        passphrase: &Passphrase,
    ) -> Result<DeleteReport, OpError> {
        if !policy::is_valid_name(device) {
            return Err(OpError::input(format!("{device:?} is not a device id")));
        }
        let store = self.store()?.clone();
        let history = store.history();
        let registered = self.registry()?.get(device);
        if registered.is_none() && history.count(device) == 0 {
            return Err(OpError::input(format!(
                "there is no device {device:?} and no history of it"
            )));
        }
        let sk = self.unlock_off_runtime(passphrase).await?;
        let range = ShredRange {
            device: Some(device),
            since_ms: since_ms.unwrap_or(0),
            until_ms: until_ms.unwrap_or(u64::MAX),
        };
        if range.since_ms >= range.until_ms {
            return Err(OpError::input(
                "the range's start (--since) must be before its end (--until)",
            ));
        }
        let whole = since_ms.is_none() && until_ms.is_none();
        let owned = device.to_string();
        let report = tokio::task::spawn_blocking(move || {
            let range = ShredRange {
                device: Some(&owned),
                ..range
            };
            history.shred(&range, Some(&sk))
        })
        .await
        .map_err(|e| OpError::runtime(format!("the delete task failed: {e}")))??;
        // What waits to leave and what the broker keeps go with a whole
        // delete; a time range concerns history only.
        let (outbox_entries, retained, fields) = if whole {
            let outbox = self.purge_outboxes(Some(device))?;
            let retained = match (&self.live, &registered) {
                (Some(live), Some(d)) => live.broker.drop_retained(&d.publish).await,
                // Its topics are unknown now: every view's copies go (the
                // views fill again with the next messages).
                (Some(live), None) => live
                    .broker
                    .clear_retained(crate::local::ALL_VIEWS)
                    .await
                    .unwrap_or(0),
                _ => 0,
            };
            (outbox, retained, self.forget_fields(Some(device))?)
        } else {
            (0, 0, 0)
        };
        self.flush().await?;
        tracing::info!(
            device = %device,
            records = report.records,
            periods = report.periods,
            outbox_entries,
            "history deleted"
        );
        let mut report = DeleteReport::of(Some(device), report, outbox_entries, retained);
        report.fields_forgotten = fields;
        self.record(crate::ledger::EntryBody::Deleted {
            by: super::actor(),
            device: Some(device.to_string()),
            since_ms,
            until_ms,
            records: report.history.records,
            outbox_entries: report.outbox_entries,
            factory: false,
        })
        .await;
        Ok(report)
    }

    /// Deletes all history and everything waiting to leave. With
    /// `factory`, also every device, every policy version and the keys:
    /// the hub is as new, and keeps no history until `init` again.
    pub async fn wipe(
        &self,
        factory: bool,
        passphrase: &Passphrase,
    ) -> Result<DeleteReport, OpError> {
        let store = self.store()?.clone();
        let sk = self.unlock_off_runtime(passphrase).await?;
        let history = store.history();
        if factory {
            // Nothing more is written under the keys about to go: messages
            // arriving during the wipe are not kept at all.
            history.set_recipient(None);
        }
        let restore = || {
            if factory {
                if let Ok(Some(keys)) = store.load_keys() {
                    store.history().set_recipient(keys.public().ok());
                }
            }
        };
        let report = tokio::task::spawn_blocking(move || {
            history.shred(
                &ShredRange {
                    device: None,
                    since_ms: 0,
                    until_ms: u64::MAX,
                },
                Some(&sk),
            )
        })
        .await
        .map_err(|e| OpError::runtime(format!("the wipe task failed: {e}")))
        .and_then(|r| r.map_err(OpError::from))
        .inspect_err(|_| restore())?;
        let outbox_entries = self.purge_outboxes(None)?;
        let mut retained = 0;
        if let Some(live) = &self.live {
            for device in self.registry()?.list() {
                retained += live.broker.drop_retained(&device.publish).await;
            }
            // What the views keep of devices removed earlier, too.
            retained += live
                .broker
                .clear_retained(crate::local::ALL_VIEWS)
                .await
                .unwrap_or(0);
        }
        let mut wiped = DeleteReport::of(None, report, outbox_entries, retained);
        wiped.fields_forgotten = self.forget_fields(None)?;
        if factory {
            for device in self.registry()?.list() {
                self.device_remove(&device.id).await?;
                wiped.devices_removed += 1;
            }
            for consumer in self.registry()?.consumers() {
                self.consumer_remove(&consumer.id).await?;
                wiped.consumers_removed += 1;
            }
            let _change = self.policy_changes.lock().await;
            let versions = store.policy_versions()?;
            for v in versions.list()? {
                versions.remove(v.version)?;
                wiped.policy_versions_removed += 1;
            }
            if let Some(live) = &self.live {
                live.pipeline.swap_policy(Default::default());
            }
            store.remove_keys()?;
            wiped.keys_removed = true;
            // As new: the next start approves the configured destinations.
            store.destinations().forget_all()?;
        }
        self.flush().await?;
        self.record(crate::ledger::EntryBody::Deleted {
            by: super::actor(),
            device: None,
            since_ms: None,
            until_ms: None,
            records: wiped.history.records,
            outbox_entries: wiped.outbox_entries,
            factory,
        })
        .await;
        tracing::warn!(
            factory,
            records = wiped.history.records,
            devices = wiped.devices_removed,
            "wiped"
        );
        Ok(wiped)
    }
}
