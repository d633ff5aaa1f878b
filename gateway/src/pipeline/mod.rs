//! The pipeline: identify → policy → store → uplink, once per device
//! message.
//!
//! It runs inside the broker's publish check, in the publishing device's
//! task, before the device gets its PUBACK. [`Pipeline::handle`] returns
//! only when the history record and every outbox entry are durable (for
//! QoS 1), so an acknowledged message survives a crash.
//!
//! - [`context`]: what the policy's actions need (keys, clock, windows,
//!   the field inventory), as [`SendContext`];
//! - [`last_seen`]: each device's last message, for `preview --last`.
//!
//! Besides messages, a tick sends the windows of `aggregate` that ended
//! ([`Pipeline::send_closed_windows`]).

mod context;
mod last_seen;

pub use context::{seal_to_age, DryRun, RateLimits, SendContext, AGE_VALUE_PREFIX};
pub use last_seen::LastSeen;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use policy::{Message, Policy};
use tokio::sync::Notify;

use crate::config::{MAX_TOPIC_BYTES, UPLINK_MAX_PACKET_BYTES};
use crate::ledger::{EntryBody, Ledger, Sent, SentField};
use crate::store::{
    DestinationApprovals, Durability, FieldInventory, HistoryStore, NewRecord, Outbox, Store,
    StoreError,
};
use crate::windows::Windows;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a message cannot be taken in: it could never leave.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Inadmissible {
    #[error("the topic holds a control character (NUL, newline, ...)")]
    ControlCharacter,
    #[error("a PUBLISH topic may not hold the wildcards '+' or '#'")]
    Wildcard,
    #[error("the topic would be {len} bytes at destination {destination}, above MQTT's 65535")]
    TopicTooLong { destination: String, len: usize },
    #[error("the message would be {len} bytes at destination {destination}, above the uplink's limit of {max}")]
    TooLarge {
        destination: String,
        len: usize,
        max: usize,
    },
}

/// One destination as the pipeline sees it: where to queue, whom to wake.
pub struct Lane {
    pub name: String,
    /// Prepended to the local topic at the destination.
    pub topic_prefix: String,
    pub outbox: Arc<Outbox>,
    pub wake: Arc<Notify>,
}

/// What the pipeline did since start. Relaxed atomics: each is read on
/// its own, for display, never to decide anything.
#[derive(Default)]
pub struct Counters {
    /// Messages handed to the pipeline by the broker.
    pub messages_in: AtomicU64,
    /// Policy evaluations (one per message).
    pub evaluations: AtomicU64,
    /// Per lane, in the lanes' order: messages queued for the destination,
    /// and messages of which the policy let nothing go to it.
    pub forwarded: Vec<AtomicU64>,
    pub withheld: Vec<AtomicU64>,
}

impl Counters {
    fn new(lanes: usize) -> Self {
        Counters {
            forwarded: (0..lanes).map(|_| AtomicU64::new(0)).collect(),
            withheld: (0..lanes).map(|_| AtomicU64::new(0)).collect(),
            ..Counters::default()
        }
    }

    fn bump(counter: Option<&AtomicU64>) {
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How a message arrived, as history keeps it.
#[derive(Debug, Clone, Copy)]
pub struct Kept {
    pub qos: u8,
    pub retain: bool,
}

/// A policy with the version number it was stored under (0: no policy was
/// ever applied, so nothing is shared).
#[derive(Debug, Default)]
pub struct ActivePolicy {
    pub version: u64,
    pub policy: Policy,
}

pub struct Pipeline {
    /// Swapped whole by `policy apply` and SIGHUP. Each message loads it
    /// once, so it is evaluated under exactly one version.
    policy: ArcSwap<ActivePolicy>,
    history: Arc<HistoryStore>,
    lanes: Vec<Lane>,
    names: Vec<String>,
    durability: Arc<Durability>,
    /// The config's retention, for devices the policy says nothing about.
    default_keep: policy::retention::Keep,
    /// Messages that looked like JSON but did not parse, since start.
    malformed: std::sync::atomic::AtomicU64,
    /// Counts since start, for `status` and `/metrics`.
    pub counters: Counters,
    /// HMAC keys of `pseudonymize`, one per destination.
    pseudonym_keys: std::collections::HashMap<String, ring::hmac::Key>,
    rate_limits: RateLimits,
    /// Every field each device sent, and which the user approved.
    fields: Arc<FieldInventory>,
    /// The destinations rules for `*` reach.
    approved_destinations: Arc<DestinationApprovals>,
    ledger: Arc<Ledger>,
    windows: Windows,
    pub last_seen: LastSeen,
    /// Policies put in force since start, and when the latest was (ms):
    /// a local view tells by them what an older policy decided.
    policy_swaps: AtomicU64,
    policy_since_ms: AtomicU64,
}

impl Pipeline {
    /// The pipeline over `store`'s history, durability and inventories.
    pub fn new(
        policy: ActivePolicy,
        store: &Store,
        lanes: Vec<Lane>,
        default_keep: policy::retention::Keep,
        pseudonym_keys: std::collections::HashMap<String, ring::hmac::Key>,
    ) -> Self {
        let names = lanes.iter().map(|l| l.name.clone()).collect();
        let counters = Counters::new(lanes.len());
        Self {
            policy: ArcSwap::from_pointee(policy),
            history: store.history(),
            lanes,
            names,
            durability: Arc::clone(&store.durability),
            default_keep,
            malformed: Default::default(),
            counters,
            pseudonym_keys,
            rate_limits: RateLimits::default(),
            fields: store.fields(),
            approved_destinations: store.destinations(),
            ledger: store.ledger(),
            windows: Windows::default(),
            last_seen: LastSeen::default(),
            policy_swaps: AtomicU64::new(0),
            // What waits in an outbox from before this start may have been
            // decided by a policy applied since (with the gateway stopped).
            policy_since_ms: AtomicU64::new(now_ms()),
        }
    }

    /// Messages since start that looked like JSON but did not parse.
    pub fn malformed_count(&self) -> u64 {
        self.malformed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<ActivePolicy> {
        self.policy.load_full()
    }

    /// Puts `next` in force for every message evaluated from now on, and
    /// wakes every lane: a local view rechecks what it announced.
    pub fn swap_policy(&self, next: ActivePolicy) {
        // Stored, then stamped: a message that loaded the old policy read
        // its clock before the stamp, so it is never taken for one of the
        // new (one of the new in the same millisecond is taken for old:
        // the safe side).
        self.policy.store(Arc::new(next));
        self.policy_since_ms.store(now_ms(), Ordering::SeqCst);
        self.policy_swaps.fetch_add(1, Ordering::SeqCst);
        for lane in &self.lanes {
            lane.wake.notify_one();
        }
    }

    /// How many policies were put in force since start: changes whenever
    /// the policy does (a version number can repeat after a factory wipe).
    pub fn policy_generation(&self) -> u64 {
        self.policy_swaps.load(Ordering::SeqCst)
    }

    /// When the policy in force was put in force (or the gateway started).
    /// A message queued at or before it may have been decided by an
    /// earlier policy (the pipeline reads the clock before it loads the
    /// policy).
    pub fn policy_since_ms(&self) -> u64 {
        self.policy_since_ms.load(Ordering::SeqCst)
    }

    /// The fields of this message that the policy in force would send to
    /// `destination` (as they are, transformed, aggregated or rate
    /// limited), by name. A dry run: nothing is sent, sealed, counted or
    /// added to a window; decisions do not depend on the values.
    pub fn shared_fields(
        &self,
        device: &str,
        topic: &str,
        payload: &[u8],
        destination: &str,
    ) -> Vec<String> {
        let active = self.policy.load();
        let eval = active.policy.evaluate_with(
            &Message {
                device,
                topic,
                payload,
            },
            &[destination],
            &DryRun {
                fields: Some(Arc::clone(&self.fields)),
                destinations: Some(Arc::clone(&self.approved_destinations)),
            },
        );
        let Some(out) = eval.outputs.first() else {
            return Vec::new();
        };
        eval.fields
            .iter()
            .zip(&out.decisions)
            .filter(|(_, d)| d.is_shared())
            .map(|(f, _)| f.generic())
            .collect()
    }

    /// Refuses, before anything is stored, a message that no destination
    /// could be sent: otherwise it would sit first in an outbox and block
    /// everything behind it.
    pub fn admit(&self, topic: &str, payload_len: usize) -> Result<(), Inadmissible> {
        if crate::config::has_control_chars(topic) {
            return Err(Inadmissible::ControlCharacter);
        }
        if !policy::topic::is_valid_topic(topic) {
            return Err(Inadmissible::Wildcard);
        }
        for lane in &self.lanes {
            let remote = lane.topic_prefix.len() + topic.len();
            if remote > MAX_TOPIC_BYTES {
                return Err(Inadmissible::TopicTooLong {
                    destination: lane.name.clone(),
                    len: remote,
                });
            }
            // A QoS 1 PUBLISH: fixed header (at most 5 bytes), topic length
            // (2), topic, packet id (2), payload.
            let packet = 5 + 2 + remote + 2 + payload_len;
            if packet > UPLINK_MAX_PACKET_BYTES {
                return Err(Inadmissible::TooLarge {
                    destination: lane.name.clone(),
                    len: packet,
                    max: UPLINK_MAX_PACKET_BYTES,
                });
            }
        }
        Ok(())
    }

    /// The ledger this pipeline records egress in.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The destinations, in the order evaluation outputs come in.
    pub fn destinations(&self) -> &[String] {
        &self.names
    }

    /// Evaluates, keeps and queues one message. Returns once it is durable
    /// when its QoS is above 0.
    pub async fn handle(
        &self,
        device: &str,
        topic: &str,
        payload: &[u8],
        kept: Kept,
    ) -> Result<(), PipelineError> {
        let durable = kept.qos > 0;
        Counters::bump(Some(&self.counters.messages_in));
        let now = now_ms();
        self.last_seen.note(device, topic, payload, now);
        let active = self.policy.load();
        let eval = active.policy.evaluate_with(
            &Message {
                device,
                topic,
                payload,
            },
            &self.names,
            &SendContext {
                recipient: self.history.public_key(),
                pseudonym_keys: &self.pseudonym_keys,
                limits: &self.rate_limits,
                windows: &self.windows,
                fields: &self.fields,
                destinations: &self.approved_destinations,
                now_ms: now,
                seals: Default::default(),
            },
        );
        Counters::bump(Some(&self.counters.evaluations));
        let held: Vec<bool> = (0..eval.fields.len())
            .map(|i| {
                eval.outputs
                    .iter()
                    .any(|o| o.decisions.get(i).is_some_and(|d| d.held))
            })
            .collect();
        self.fields
            .observe(device, &eval.fields, &held, payload, now);
        if eval.malformed {
            // Forwarded nowhere (every output is empty); kept, and counted.
            self.malformed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(device = %crate::short(device), "malformed JSON payload: forwarded nowhere");
        }
        let stored = active
            .policy
            .history_payload(device, payload, self.default_keep);
        if let Some(stored) = stored {
            self.history
                .append(&NewRecord {
                    device,
                    received_ms: now,
                    qos: kept.qos,
                    retain: kept.retain,
                    topic,
                    payload: &stored,
                })
                .inspect_err(|_| self.durability.check_now())?;
        }
        for (i, (lane, out)) in self.lanes.iter().zip(&eval.outputs).enumerate() {
            if out.payload.is_none() {
                Counters::bump(self.counters.withheld.get(i));
            }
            if let Some(p) = &out.payload {
                Counters::bump(self.counters.forwarded.get(i));
                // Queued and counted in one step, as the group commit sees it.
                let _step = self.ledger.in_step();
                lane.outbox
                    .push(device, topic, p, now)
                    .inspect_err(|_| self.durability.check_now())?;
                // What left, by which rule: field names only, never values.
                let sent: Vec<SentField<'_>> = eval
                    .fields
                    .iter()
                    .zip(&out.decisions)
                    .zip(&out.sent)
                    .filter(|(_, was_sent)| **was_sent)
                    .map(|((f, d), _)| SentField {
                        field: f.generic(),
                        rule: d
                            .rule
                            .and_then(|id| active.policy.rule(id))
                            .map_or("", |r| r.id.as_str()),
                        action: d.action.as_str(),
                    })
                    .collect();
                self.ledger
                    .egress(&Sent {
                        destination: &lane.name,
                        device,
                        policy_version: active.version,
                        topic,
                        now_ms: now,
                        payload: p,
                        fields: &sent,
                    })
                    .inspect_err(|_| self.durability.check_now())?;
                // Sent while the flush runs, not after it: the cloud may see
                // a message before it is durable here. A crash in between
                // means no PUBACK, so the device sends again: a duplicate at
                // the cloud, never a loss.
                lane.wake.notify_one();
            }
        }
        drop(active);
        if durable {
            self.durability.sync().await?;
        }
        Ok(())
    }
}

impl Pipeline {
    /// Queues the message of every `aggregate` window that ended by
    /// `now_ms`, and makes it durable. A field goes only if the rule that
    /// filled its window is still in force, unchanged: a policy change
    /// that removed or changed it keeps what was collected home.
    pub async fn send_closed_windows(&self, now_ms: u64) -> Result<usize, PipelineError> {
        let closed = self.windows.close_due(now_ms);
        if closed.is_empty() {
            return Ok(0);
        }
        let active = self.policy.load_full();
        let mut sent = 0;
        for c in &closed {
            let Some(lane) = self.lanes.iter().find(|l| l.name == c.destination) else {
                continue;
            };
            let still = |f: &crate::windows::ClosedField| {
                active.policy.rules().iter().any(|r| {
                    r.id == f.rule
                        && r.action == policy::Action::Aggregate
                        && r.transform
                            == Some(policy::transform::Transform::Aggregate {
                                func: f.func,
                                window_ms: c.window_ms,
                            })
                        && r.destination.selects(&c.destination)
                        && r.field.matches(&f.field)
                })
            };
            let Some(payload) = c.render(still) else {
                continue;
            };
            let packet = 5 + 2 + lane.topic_prefix.len() + c.topic.len() + 2 + payload.len();
            if packet > UPLINK_MAX_PACKET_BYTES {
                tracing::warn!(destination = %c.destination, device = %crate::short(&c.device), bytes = payload.len(), "an aggregate window's message is too large to send: dropped");
                continue;
            }
            // One failed push does not lose the other windows.
            if let Err(e) = lane.outbox.push(&c.device, &c.topic, &payload, now_ms) {
                self.durability.check_now();
                tracing::error!(destination = %c.destination, error = %crate::control::with_causes(&e), "an aggregate window's message could not be queued");
                continue;
            }
            self.ledger.note(EntryBody::Aggregate {
                destination: c.destination.clone(),
                device: c.device.clone(),
                bytes: payload.len() as u64,
                digest: crate::ledger::entry::hex(&crate::ledger::entry::sha256(&payload)),
                window_start_ms: c.start_ms,
                window_end_ms: c.end_ms,
            });
            lane.wake.notify_one();
            sent += 1;
        }
        if sent > 0 {
            self.durability.sync().await?;
        }
        Ok(sent)
    }

    /// Forgets what is held in memory about `device`: its open windows and
    /// its last message (its history is being deleted).
    pub fn forget_device(&self, device: &str) {
        self.windows.forget_device(device);
        self.last_seen.forget(device);
    }

    /// At shutdown: every open bucket into the chain, without waiting for
    /// a flush (the committer may be the stage that failed); the final
    /// flush writes them.
    fn close_all_buckets(&self) {
        if let Err(e) = self.ledger.close_due(now_ms(), true) {
            tracing::error!(error = %crate::control::with_causes(&e), "ledger buckets could not be closed");
        }
    }

    /// Once a second until shutdown: sends the `aggregate` windows that
    /// ended, and closes the ledger's buckets whose minute is over. At
    /// shutdown, the open buckets are closed too (what left is recorded
    /// before the gateway stops).
    pub async fn run_tick(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = shutdown.changed() => true,
            };
            let now = now_ms();
            if stopping {
                // No waiting for a flush here: the committer may be the
                // stage that failed. The final flush at shutdown writes
                // these entries.
                self.close_all_buckets();
                return;
            }
            let work = async {
                if let Err(e) = self.send_closed_windows(now).await {
                    tracing::warn!(error = %crate::control::with_causes(&e), "aggregate windows could not be queued");
                }
                match self.ledger.close_due(now, false) {
                    Ok(0) => {}
                    Ok(_) => {
                        if let Err(e) = self.durability.sync().await {
                            tracing::warn!(error = %crate::control::with_causes(&e), "ledger entries not flushed");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %crate::control::with_causes(&e), "ledger buckets could not be closed")
                    }
                }
            };
            // A flush that never comes (a failed committer) must not keep
            // the gateway from stopping.
            tokio::select! {
                _ = work => {}
                _ = shutdown.changed() => {
                    self.close_all_buckets();
                    return;
                }
            }
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
