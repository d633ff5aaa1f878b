//! The pipeline: identify → policy → store → uplink, once per device
//! message.
//!
//! It runs inside the broker's publish check, in the publishing device's
//! task, before the device gets its PUBACK. [`Pipeline::handle`] returns
//! only when the history record and every outbox entry are durable (for
//! QoS 1), so an acknowledged message survives a crash.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use policy::{Message, Policy};
use tokio::sync::Notify;

use crate::config::{MAX_TOPIC_BYTES, UPLINK_MAX_PACKET_BYTES};
use crate::store::{Durability, HistoryStore, NewRecord, Outbox, StoreError};

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

/// A policy with the version number it was stored under (0: no policy was
/// ever applied, so nothing is shared).
/// What the policy's `seal` and `pseudonymize` actions need: the user's
/// public key (until `init` there is none, and sealed fields are withheld)
/// and each destination's pseudonym key.
pub struct SendContext<'a> {
    pub recipient: Option<crate::keys::PublicKey>,
    pub pseudonym_keys: &'a std::collections::HashMap<String, ring::hmac::Key>,
    pub limits: &'a RateLimits,
    pub now_ms: u64,
}

/// When each `rate_limit`ed value last left: bounded, the stalest go first.
#[derive(Default)]
pub struct RateLimits(std::sync::Mutex<std::collections::HashMap<String, u64>>);

/// Each device's last message, for `policy preview --last`: in memory
/// only (never on disk), bounded in bytes; the stalest go first.
#[derive(Default)]
pub struct LastSeen(std::sync::Mutex<LastSeenInner>);

#[derive(Default)]
struct LastSeenInner {
    by_device: std::collections::HashMap<String, (u64, String, Vec<u8>)>,
    bytes: usize,
    next: u64,
}

/// Bytes of last messages kept, all devices together.
const MAX_LAST_SEEN_BYTES: usize = 4 << 20;

impl LastSeen {
    fn note(&self, device: &str, topic: &str, payload: &[u8]) {
        let size = device.len() + topic.len() + payload.len();
        if size > MAX_LAST_SEEN_BYTES / 16 {
            return;
        }
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let order = s.next;
        s.next += 1;
        // The usual case, a device seen before: its buffers are reused, so
        // the hot path allocates nothing here.
        if let Some((o, t, p)) = s.by_device.get_mut(device) {
            let old = device.len() + t.len() + p.len();
            *o = order;
            t.clear();
            t.push_str(topic);
            p.clear();
            p.extend_from_slice(payload);
            s.bytes = s.bytes - old + size;
        } else {
            s.bytes += size;
            s.by_device.insert(
                device.to_string(),
                (order, topic.to_string(), payload.to_vec()),
            );
        }
        // The one just noted is the newest: it is never the one dropped.
        while s.bytes > MAX_LAST_SEEN_BYTES {
            let Some(stalest) = s
                .by_device
                .iter()
                .min_by_key(|(_, v)| v.0)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((_, t, p)) = s.by_device.remove(&stalest) {
                s.bytes -= stalest.len() + t.len() + p.len();
            }
        }
    }

    /// (topic, payload) of `device`'s last message since start.
    pub fn get(&self, device: &str) -> Option<(String, Vec<u8>)> {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.by_device
            .get(device)
            .map(|(_, t, p)| (t.clone(), p.clone()))
    }
}

/// Values tracked at most (rule × device × destination × field).
const MAX_RATE_KEYS: usize = 65_536;

impl RateLimits {
    fn allow(&self, key: &str, interval_ms: u64, now_ms: u64) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = last.get(key) {
            if now_ms < t.saturating_add(interval_ms) {
                return false;
            }
        } else if last.len() >= MAX_RATE_KEYS {
            if let Some(stalest) = last.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) {
                last.remove(&stalest);
            }
        }
        last.insert(key.to_string(), now_ms);
        true
    }
}

impl policy::transform::Context for SendContext<'_> {
    fn seal(&self, value: &[u8]) -> Option<String> {
        crate::keys::seal::seal_value(self.recipient.as_ref()?, value).ok()
    }

    fn allow_once_per(&self, key: &str, interval_ms: u64) -> bool {
        self.limits.allow(key, interval_ms, self.now_ms)
    }

    fn pseudonym(&self, destination: &str, value: &[u8]) -> Option<String> {
        let key = self.pseudonym_keys.get(destination)?;
        let tag = ring::hmac::sign(key, value);
        let hex: String = tag.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Some(format!("ps-{hex}"))
    }
}

/// How a message arrived, as history keeps it.
#[derive(Debug, Clone, Copy)]
pub struct Kept {
    pub qos: u8,
    pub retain: bool,
}

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
    /// HMAC keys of `pseudonymize`, one per destination.
    pseudonym_keys: std::collections::HashMap<String, ring::hmac::Key>,
    rate_limits: RateLimits,
    pub last_seen: LastSeen,
}

impl Pipeline {
    pub fn new(
        policy: ActivePolicy,
        history: Arc<HistoryStore>,
        lanes: Vec<Lane>,
        durability: Arc<Durability>,
        default_keep: policy::retention::Keep,
        pseudonym_keys: std::collections::HashMap<String, ring::hmac::Key>,
    ) -> Self {
        let names = lanes.iter().map(|l| l.name.clone()).collect();
        Self {
            policy: ArcSwap::from_pointee(policy),
            history,
            lanes,
            names,
            durability,
            default_keep,
            malformed: Default::default(),
            pseudonym_keys,
            rate_limits: RateLimits::default(),
            last_seen: LastSeen::default(),
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

    /// Puts `next` in force for every message evaluated from now on.
    pub fn swap_policy(&self, next: ActivePolicy) {
        self.policy.store(Arc::new(next));
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
        self.last_seen.note(device, topic, payload);
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
                now_ms: now_ms(),
            },
        );
        if eval.malformed {
            // Forwarded nowhere (every output is empty); kept, and counted.
            self.malformed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(device = %crate::short(device), "malformed JSON payload: forwarded nowhere");
        }
        let stored = active
            .policy
            .history_payload(device, payload, self.default_keep);
        drop(active);
        let now = now_ms();
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
        for (lane, out) in self.lanes.iter().zip(&eval.outputs) {
            if let Some(p) = &out.payload {
                lane.outbox
                    .push(device, topic, p, now)
                    .inspect_err(|_| self.durability.check_now())?;
                // Sent while the flush runs, not after it: the cloud may see
                // a message before it is durable here. A crash in between
                // means no PUBACK, so the device sends again: a duplicate at
                // the cloud, never a loss.
                lane.wake.notify_one();
            }
        }
        if durable {
            self.durability.sync().await?;
        }
        Ok(())
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::transform::Context;

    #[test]
    fn pseudonyms_are_stable_per_destination_and_differ_across() {
        let key = |b: u8| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[b; 32]);
        let keys = [("a".to_string(), key(1)), ("b".to_string(), key(2))]
            .into_iter()
            .collect();
        let limits = RateLimits::default();
        let ctx = SendContext {
            recipient: None,
            pseudonym_keys: &keys,
            limits: &limits,
            now_ms: 1000,
        };
        let p = |d: &str, v: &str| ctx.pseudonym(d, v.as_bytes()).expect("pseudonym");
        assert_eq!(p("a", "\"alice\""), p("a", "\"alice\""));
        assert_ne!(p("a", "\"alice\""), p("a", "\"bob\""));
        assert_ne!(p("a", "\"alice\""), p("b", "\"alice\""));
        assert!(p("a", "\"alice\"").starts_with("ps-") && p("a", "x").len() == 27);
        assert!(ctx.pseudonym("unknown", b"1").is_none());
        assert!(ctx.seal(b"1").is_none(), "no key before init: withheld");
    }

    #[test]
    fn last_messages_stay_within_their_byte_bound() {
        let last = LastSeen::default();
        last.note("a", "t", b"1");
        last.note("a", "t", b"22");
        assert_eq!(last.get("a"), Some(("t".into(), b"22".to_vec())));
        let big = vec![b'x'; MAX_LAST_SEEN_BYTES / 32];
        for i in 0..100 {
            last.note(&format!("d{i}"), "t", &big);
        }
        let bytes = last.0.lock().expect("lock").bytes;
        assert!(bytes <= MAX_LAST_SEEN_BYTES, "{bytes}");
        assert!(last.get("d99").is_some() && last.get("d0").is_none());
        last.note("huge", "t", &vec![0; MAX_LAST_SEEN_BYTES]);
        assert!(last.get("huge").is_none(), "too large to keep");
    }

    #[test]
    fn a_rate_limited_value_leaves_once_per_interval() {
        let limits = RateLimits::default();
        assert!(limits.allow("k", 60_000, 0));
        assert!(!limits.allow("k", 60_000, 59_999));
        assert!(limits.allow("other", 60_000, 59_999));
        assert!(limits.allow("k", 60_000, 60_000));
        for i in 0..(MAX_RATE_KEYS + 10) {
            limits.allow(&format!("flood-{i}"), 1, i as u64);
        }
        assert!(limits.0.lock().expect("lock").len() <= MAX_RATE_KEYS);
    }
}
