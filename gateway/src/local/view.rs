//! The task that publishes one local destination's view: its outbox, read
//! in order, published on the hub's broker under `local/<name>/`, and with
//! Home Assistant discovery on, the config message of each field it
//! carries.
//!
//! View messages are retained, so a consumer that (re)starts sees each
//! topic's current value at once instead of waiting for the device's next
//! message. What is retained never outlives what the policy allows:
//! - a new policy clears the view, in sequence with this task's own
//!   publishing, and rechecks every announced field against it;
//! - a message decided by an earlier policy, or from a device removed
//!   since, still goes to the consumers connected now (as it would to a
//!   cloud), but is not retained;
//! - a message purged from the outbox by a delete or a wipe after it was
//!   read is not published at all; removing a device or deleting its
//!   history clears its topics in the views (`Broker::drop_retained`).
//!
//! An entry leaves the outbox once the broker has it; a consumer that is
//! offline then gets the retained value, not the messages in between (as
//! with any MQTT subscriber without a persistent session).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::discovery::{self, Announcement, DeviceLabel};
use crate::broker::Broker;
use crate::devices::DeviceRegistry;
use crate::pipeline::Pipeline;
use crate::store::{Outbox, OutboxEntry};
use crate::uplink::LinkState;

/// Discovery configs one view keeps announced, at most, and per device:
/// past them, new fields are not announced (a warning says so once).
pub const MAX_ANNOUNCED: usize = 4096;
pub const MAX_ANNOUNCED_PER_DEVICE: usize = 256;
/// How often announcements of removed devices are withdrawn.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
const BATCH: usize = 64;
/// Batches published before the task looks up (shutdown, a birth).
const BATCHES_PER_TURN: usize = 16;

pub struct LocalView {
    pub name: String,
    pub discovery: bool,
    pub outbox: Arc<Outbox>,
    pub wake: Arc<Notify>,
    /// Home Assistant said it (re)started: announce everything again.
    pub birth: Arc<Notify>,
    pub broker: Arc<Broker>,
    pub registry: Arc<DeviceRegistry>,
    pub pipeline: Arc<Pipeline>,
    pub state: Arc<LinkState>,
}

fn store_failed(e: crate::store::StoreError) -> String {
    crate::control::with_causes(&e)
}

/// One announced field: its config message, and what the policy is asked
/// about it after a change.
struct Known {
    config: Vec<u8>,
    /// Its name as the policy spells it.
    field: String,
    stand_in: (Vec<String>, serde_json::Value),
}

/// What a view announced, per (device, device topic), by config topic.
#[derive(Default)]
struct Announced {
    by_source: HashMap<(String, String), HashMap<String, Known>>,
    per_device: HashMap<String, usize>,
    count: usize,
    warned_full: bool,
    /// A withdrawal after a policy change failed: the recheck runs again
    /// at the next sweep.
    recheck_pending: bool,
}

impl Announced {
    fn forget(&mut self, device: &str, n: usize) {
        self.count -= n;
        if let Some(c) = self.per_device.get_mut(device) {
            *c -= n;
            if *c == 0 {
                self.per_device.remove(device);
            }
        }
    }
}

impl LocalView {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        self.state.set(true);
        let mut announced = Announced::default();
        let mut generation = self.pipeline.policy_generation();
        let mut last_sweep = tokio::time::Instant::now();
        loop {
            match self.drain(&mut announced, &mut generation).await {
                Ok(true) => {
                    // More waits: look up, then go on without waiting.
                    if *shutdown.borrow() {
                        break;
                    }
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(destination = %self.name, error = %e, "local view: publishing paused; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => break,
                    }
                    continue;
                }
            }
            if self.discovery && last_sweep.elapsed() >= SWEEP_EVERY {
                self.withdraw_removed_devices(&mut announced).await;
                if announced.recheck_pending {
                    self.recheck(&mut announced).await;
                }
                last_sweep = tokio::time::Instant::now();
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = self.birth.notified() => self.announce_again(&announced).await,
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
                _ = shutdown.changed() => break,
            }
        }
        self.state.set(false);
    }

    /// Publishes what waits, oldest first; answers whether more waits.
    async fn drain(&self, announced: &mut Announced, generation: &mut u64) -> Result<bool, String> {
        for _ in 0..BATCHES_PER_TURN {
            self.catch_up(announced, generation).await;
            let batch = self.outbox.read_after(None, BATCH).map_err(store_failed)?;
            if batch.is_empty() {
                return Ok(false);
            }
            for entry in batch {
                self.catch_up(announced, generation).await;
                self.publish(&entry, announced).await?;
                self.outbox.remove(entry.key).map_err(store_failed)?;
            }
        }
        Ok(true)
    }

    /// After a policy change: the view's retained values go (the earlier
    /// policy decided them), and each announced field is asked about anew.
    async fn catch_up(&self, announced: &mut Announced, generation: &mut u64) {
        let now = self.pipeline.policy_generation();
        if now == *generation {
            return;
        }
        if let Err(e) = self
            .broker
            .clear_retained(&format!("{}#", super::view_prefix(&self.name)))
            .await
        {
            // Tried again before the next message.
            tracing::warn!(destination = %self.name, error = %e, "local view: retained values not cleared after a policy change");
            return;
        }
        *generation = now;
        if self.discovery {
            self.recheck(announced).await;
        }
    }

    async fn publish(&self, entry: &OutboxEntry, announced: &mut Announced) -> Result<(), String> {
        // Purged since it was read (a delete or a wipe): it must not leave.
        if !self.outbox.contains(entry.key).map_err(store_failed)? {
            return Ok(());
        }
        let view_topic = format!("{}{}", super::view_prefix(&self.name), entry.topic);
        let device = self.registry.get(&entry.device);
        // Strictly after: a message in the same millisecond as the change
        // may have been decided by the earlier policy.
        let current = device.is_some() && entry.queued_ms > self.pipeline.policy_since_ms();
        if let (Some(device), true) = (&device, current && self.discovery) {
            // The config first: Home Assistant then subscribes to the
            // state topic and finds the retained value there.
            self.announce(entry, device, &view_topic, announced).await?;
        }
        if !current {
            return self
                .broker
                .publish(&view_topic, &entry.payload, true)
                .await
                .map_err(|e| e.to_string());
        }
        self.broker
            .publish_retained(&view_topic, &entry.payload)
            .await
            .map_err(|e| e.to_string())?;
        // A delete, a wipe or a removal may have run between the checks and
        // the publish: it clears after it purges or removes, and this looks
        // again after it publishes, so one of the two clears what it kept.
        let gone = !self.outbox.contains(entry.key).map_err(store_failed)?
            || self.registry.get(&entry.device).is_none();
        if gone {
            self.broker
                .clear_retained(&view_topic)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn announce(
        &self,
        entry: &OutboxEntry,
        device: &crate::devices::Device,
        view_topic: &str,
        announced: &mut Announced,
    ) -> Result<(), String> {
        let label = DeviceLabel {
            id: &device.id,
            name: &device.name,
            model: device.preset.name(),
        };
        let source = (entry.device.clone(), entry.topic.clone());
        for a in
            discovery::announcements(&self.name, label, &entry.topic, view_topic, &entry.payload)
        {
            if announced
                .by_source
                .get(&source)
                .is_some_and(|k| k.contains_key(&a.topic))
            {
                continue;
            }
            let of_device = announced.per_device.get(&device.id).copied().unwrap_or(0);
            if announced.count >= MAX_ANNOUNCED || of_device >= MAX_ANNOUNCED_PER_DEVICE {
                if !announced.warned_full {
                    tracing::warn!(destination = %self.name, device = %device.id, max = MAX_ANNOUNCED, max_per_device = MAX_ANNOUNCED_PER_DEVICE, "local view: too many fields to announce to Home Assistant; new ones are not announced");
                    announced.warned_full = true;
                }
                break;
            }
            self.send(&a).await?;
            let Announcement {
                topic,
                payload,
                field,
                stand_in,
            } = a;
            announced
                .by_source
                .entry(source.clone())
                .or_default()
                .insert(
                    topic,
                    Known {
                        config: payload,
                        field,
                        stand_in,
                    },
                );
            announced.count += 1;
            *announced.per_device.entry(device.id.clone()).or_default() += 1;
        }
        Ok(())
    }

    /// Asks the policy now in force about each announced field, and
    /// withdraws those it no longer sends to this destination (a topic the
    /// policy now keeps home entirely brings no message that could tell).
    /// The policy decides by device, topic and field name, never by value,
    /// so stand-in values in the fields' places are enough.
    async fn recheck(&self, announced: &mut Announced) {
        announced.recheck_pending = false;
        let mut gone = Vec::new();
        for ((device, topic), known) in &announced.by_source {
            // Each field asked on its own (policy changes are rare): two
            // announced fields may not fit one message (`a` and `a.b`).
            for (config_topic, k) in known {
                let payload = discovery::stand_in_payload(std::iter::once(&k.stand_in));
                if !self
                    .pipeline
                    .shared_fields(device, topic, &payload, &self.name)
                    .contains(&k.field)
                {
                    gone.push((device.clone(), topic.clone(), config_topic.clone()));
                }
            }
        }
        self.withdraw(announced, gone).await;
    }

    async fn withdraw_removed_devices(&self, announced: &mut Announced) {
        let gone: Vec<(String, String, String)> = announced
            .by_source
            .iter()
            .filter(|((device, _), _)| self.registry.get(device).is_none())
            .flat_map(|((device, topic), known)| {
                known
                    .keys()
                    .map(|c| (device.clone(), topic.clone(), c.clone()))
            })
            .collect();
        self.withdraw(announced, gone).await;
    }

    /// Withdraws each (device, device topic, config topic); one that could
    /// not be published stays known, to be tried again.
    async fn withdraw(&self, announced: &mut Announced, gone: Vec<(String, String, String)>) {
        for (device, topic, config_topic) in gone {
            if let Err(e) = self.send(&discovery::withdrawal(&config_topic)).await {
                tracing::warn!(destination = %self.name, error = %e, "local view: a withdrawal was not published; it is tried again later");
                announced.recheck_pending = true;
                continue;
            }
            let source = (device.clone(), topic);
            let Some(known) = announced.by_source.get_mut(&source) else {
                continue;
            };
            let removed = known.remove(&config_topic).is_some();
            if known.is_empty() {
                announced.by_source.remove(&source);
            }
            if removed {
                announced.forget(&device, 1);
            }
        }
    }

    /// Home Assistant restarted: every config again (its retained copy may
    /// not have been kept, if the retained store was full).
    async fn announce_again(&self, announced: &Announced) {
        for known in announced.by_source.values() {
            for (topic, k) in known {
                if let Err(e) = self.broker.publish_retained(topic, &k.config).await {
                    tracing::warn!(destination = %self.name, error = %e, "local view: an announcement was not published again");
                }
            }
        }
    }

    async fn send(&self, a: &Announcement) -> Result<(), String> {
        self.broker
            .publish_retained(&a.topic, &a.payload)
            .await
            .map_err(|e| e.to_string())
    }
}
