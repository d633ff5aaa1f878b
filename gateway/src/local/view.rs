//! The task that publishes one local destination's view: its outbox, read
//! in order, published on the hub's broker under `local/<name>/`, and with
//! Home Assistant discovery on, the config message of each field it
//! carries.
//!
//! View messages are retained, so a consumer that (re)starts sees each
//! topic's current value at once instead of waiting for the device's next
//! message. What is retained never outlives what the policy allows: a
//! policy change clears the views, and removing a device or deleting its
//! history clears its topics there (see `Broker::drop_retained`). An entry
//! leaves the outbox once the broker has it; a consumer that is offline
//! then gets the retained value, not the messages in between (as with any
//! MQTT subscriber without a persistent session).

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

/// Discovery configs one view keeps announced, at most: past it, new
/// fields are not announced (and a warning says so once).
pub const MAX_ANNOUNCED: usize = 4096;
/// How often announcements of removed devices are withdrawn.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
const BATCH: usize = 64;

pub struct LocalView {
    pub name: String,
    pub discovery: bool,
    pub outbox: Arc<Outbox>,
    pub wake: Arc<Notify>,
    pub broker: Arc<Broker>,
    pub registry: Arc<DeviceRegistry>,
    pub pipeline: Arc<Pipeline>,
    pub state: Arc<LinkState>,
}

/// A field's path and a value of its type.
type StandIn = (Vec<String>, serde_json::Value);

/// What a view announced: per (device, device topic), each config topic
/// with its field's stand-in (see [`discovery::stand_in_payload`]).
#[derive(Default)]
struct Announced {
    by_source: HashMap<(String, String), HashMap<String, StandIn>>,
    count: usize,
    warned_full: bool,
    /// The policy version the announcements were last checked against.
    version: u64,
}

impl LocalView {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        self.state.set(true);
        let mut announced = Announced::default();
        let mut last_sweep = tokio::time::Instant::now();
        announced.version = self.pipeline.policy().version;
        loop {
            if self.discovery {
                let version = self.pipeline.policy().version;
                if version != announced.version {
                    self.recheck(&mut announced).await;
                    announced.version = version;
                }
            }
            if let Err(e) = self.drain(&mut announced).await {
                tracing::warn!(destination = %self.name, error = %e, "local view: publishing paused; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => break,
                }
                continue;
            }
            if self.discovery && last_sweep.elapsed() >= SWEEP_EVERY {
                self.withdraw_removed_devices(&mut announced).await;
                last_sweep = tokio::time::Instant::now();
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
                _ = shutdown.changed() => break,
            }
        }
        self.state.set(false);
    }

    /// Publishes everything waiting, oldest first.
    async fn drain(&self, announced: &mut Announced) -> Result<(), String> {
        loop {
            let batch = self
                .outbox
                .read_after(None, BATCH)
                .map_err(|e| crate::control::with_causes(&e))?;
            if batch.is_empty() {
                return Ok(());
            }
            for entry in batch {
                self.publish(&entry, announced).await?;
                self.outbox
                    .remove(entry.key)
                    .map_err(|e| crate::control::with_causes(&e))?;
            }
        }
    }

    async fn publish(&self, entry: &OutboxEntry, announced: &mut Announced) -> Result<(), String> {
        let view_topic = format!("{}{}", super::view_prefix(&self.name), entry.topic);
        // The config first: Home Assistant then subscribes to the state
        // topic and finds the retained value there.
        if self.discovery {
            self.announce(entry, &view_topic, announced).await?;
        }
        self.broker
            .publish_retained(&view_topic, &entry.payload)
            .await
            .map_err(|e| e.to_string())
    }

    async fn announce(
        &self,
        entry: &OutboxEntry,
        view_topic: &str,
        announced: &mut Announced,
    ) -> Result<(), String> {
        let Some(device) = self.registry.get(&entry.device) else {
            // Removed since: nothing to announce for it.
            return Ok(());
        };
        let preset = format!("{:?}", device.preset).to_lowercase();
        let label = DeviceLabel {
            id: &device.id,
            name: &device.name,
            model: &preset,
        };
        let now =
            discovery::announcements(&self.name, label, &entry.topic, view_topic, &entry.payload);
        let known = announced
            .by_source
            .entry((entry.device.clone(), entry.topic.clone()))
            .or_default();
        for a in now {
            if known.contains_key(&a.topic) {
                continue;
            }
            if announced.count >= MAX_ANNOUNCED {
                if !announced.warned_full {
                    tracing::warn!(destination = %self.name, max = MAX_ANNOUNCED, "local view: too many fields to announce to Home Assistant; new ones are not announced");
                    announced.warned_full = true;
                }
                break;
            }
            self.send(&a).await?;
            known.insert(a.topic, a.stand_in);
            announced.count += 1;
        }
        Ok(())
    }

    /// After a policy change: asks the policy now in force about each
    /// announced field, and withdraws those it no longer shares with this
    /// destination (a topic the policy now keeps home entirely brings no
    /// message that could tell).
    async fn recheck(&self, announced: &mut Announced) {
        let mut gone = Vec::new();
        for ((device, topic), known) in &mut announced.by_source {
            let payload = discovery::stand_in_payload(known.values());
            let label = DeviceLabel {
                id: device,
                name: "",
                model: "",
            };
            let still: Vec<String> = self
                .pipeline
                .dry_run(device, topic, &payload, &self.name)
                .map(|out| {
                    discovery::announcements(&self.name, label, topic, "", &out)
                        .into_iter()
                        .map(|a| a.topic)
                        .collect()
                })
                .unwrap_or_default();
            known.retain(|config_topic, _| {
                let keep = still.contains(config_topic);
                if !keep {
                    gone.push(config_topic.clone());
                }
                keep
            });
        }
        announced.by_source.retain(|_, known| !known.is_empty());
        announced.count -= gone.len();
        for topic in gone {
            if let Err(e) = self.send(&discovery::withdrawal(&topic)).await {
                tracing::warn!(destination = %self.name, error = %e, "local view: a withdrawal was not published");
            }
        }
    }

    async fn withdraw_removed_devices(&self, announced: &mut Announced) {
        let removed: Vec<(String, String)> = announced
            .by_source
            .keys()
            .filter(|(device, _)| self.registry.get(device).is_none())
            .cloned()
            .collect();
        for source in removed {
            if let Some(topics) = announced.by_source.remove(&source) {
                announced.count -= topics.len();
                for topic in topics.keys() {
                    if let Err(e) = self.send(&discovery::withdrawal(topic)).await {
                        tracing::warn!(destination = %self.name, error = %e, "local view: a withdrawal was not published");
                    }
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
