//! Egress buckets: what one destination received of one device in one
//! span of time (an hour by default; `[ledger] bucket`) under one policy
//! version. A bucket is open while its span runs. Every message updates
//! it in memory; each group commit writes the buckets that changed to the
//! `ledger_open` tree before it flushes (so a crash loses no count of a
//! queued message, at one write per bucket per commit, not per message);
//! the tick closes it into the chain a few seconds after its span ends.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::entry::{chain_digest, hex, EntryBody, FieldEgress};
use crate::store::StoreError;

/// The default span of a bucket.
pub const DEFAULT_BUCKET_MS: u64 = 3_600_000;
/// Field names one bucket lists; the rest count under [`OTHER_FIELDS`].
pub const MAX_FIELDS_PER_BUCKET: usize = 256;
/// Longer names count under [`OTHER_FIELDS`] too.
pub const MAX_NAME_BYTES: usize = 256;
pub const OTHER_FIELDS: &str = "(other fields)";

fn random_id() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    // Without randomness, time still tells runs apart.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
    }
    u64::from_le_bytes(b) >> 1
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    destination: String,
    device: String,
    policy_version: u64,
    minute_ms: u64,
}

impl Key {
    fn bytes(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.destination.len() + self.device.len() + 18);
        k.extend_from_slice(&self.minute_ms.to_be_bytes());
        k.extend_from_slice(self.destination.as_bytes());
        k.push(0);
        k.extend_from_slice(self.device.as_bytes());
        k.push(0);
        k.extend_from_slice(&self.policy_version.to_be_bytes());
        k
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Open {
    /// Unique per bucket opened: a span closed at a stop and opened again
    /// after a restart makes two buckets with two ids, so recovery after a
    /// crash never takes one for the other.
    #[serde(default)]
    id: u64,
    destination: String,
    device: String,
    policy_version: u64,
    minute_ms: u64,
    #[serde(default = "default_span")]
    span_ms: u64,
    first_ms: u64,
    last_ms: u64,
    messages: u64,
    bytes: u64,
    digest: [u8; 32],
    /// (field, rule, action) → count: one field decided by two rules in
    /// one span (topic rules) is listed under each.
    #[serde(with = "field_counts")]
    fields: BTreeMap<(String, String, String), u64>,
    /// Changed since last written to `ledger_open`.
    #[serde(skip)]
    unsaved: bool,
}

/// The open bucket's field counts as a list (JSON maps need string keys).
mod field_counts {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    type Counts = BTreeMap<(String, String, String), u64>;

    pub fn serialize<S: Serializer>(v: &Counts, s: S) -> Result<S::Ok, S::Error> {
        v.iter().collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Counts, D::Error> {
        Ok(Vec::<((String, String, String), u64)>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

fn default_span() -> u64 {
    DEFAULT_BUCKET_MS
}

impl Open {
    fn close(self) -> EntryBody {
        EntryBody::Egress {
            bucket: self.id,
            destination: self.destination,
            device: self.device,
            policy_version: self.policy_version,
            minute_ms: self.minute_ms,
            first_ms: self.first_ms,
            last_ms: self.last_ms,
            messages: self.messages,
            bytes: self.bytes,
            digest: hex(&self.digest),
            fields: self
                .fields
                .into_iter()
                .map(|((field, rule, action), count)| FieldEgress {
                    field,
                    rule,
                    action,
                    count,
                })
                .collect(),
        }
    }
}

/// One shared field of a message, as the ledger notes it.
pub struct SentField<'a> {
    pub field: String,
    pub rule: &'a str,
    pub action: &'a str,
}

pub struct Buckets {
    /// Journaled: the group commit writes the buckets it changed.
    tree: crate::store::journal::JournaledTree,
    span_ms: std::sync::atomic::AtomicU64,
    /// Spans ending at or before this are closed: a record that comes late
    /// (its time taken before the tick closed its span) goes to the span
    /// open now instead of reopening a closed one.
    closed_before: std::sync::atomic::AtomicU64,
    next_id: std::sync::atomic::AtomicU64,
    open: Mutex<HashMap<Key, Open>>,
    /// Set by every message counted: the next commit writes its bucket.
    due: Arc<AtomicBool>,
    /// Set by the removal of a closed bucket, which is not journaled.
    dirty: Arc<AtomicBool>,
}

impl Buckets {
    pub fn open(
        db: &sled::Db,
        due: Arc<AtomicBool>,
        dirty: Arc<AtomicBool>,
        journal: &Arc<crate::store::journal::Journal>,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            tree: crate::store::journal::JournaledTree::new(
                db.open_tree("ledger_open")?,
                Arc::clone(journal),
            ),
            span_ms: std::sync::atomic::AtomicU64::new(DEFAULT_BUCKET_MS),
            closed_before: std::sync::atomic::AtomicU64::new(0),
            next_id: std::sync::atomic::AtomicU64::new(random_id()),
            open: Mutex::new(HashMap::new()),
            due,
            dirty,
        })
    }

    /// The span of new buckets (open ones keep theirs).
    pub fn set_span(&self, span_ms: u64) {
        self.span_ms.store(span_ms.max(1000), Ordering::Relaxed);
    }

    /// Adds one message as queued for `destination`.
    pub fn record(
        &self,
        destination: &str,
        device: &str,
        policy_version: u64,
        now_ms: u64,
        payload: &[u8],
        fields: &[SentField<'_>],
    ) -> Result<(), StoreError> {
        let span = self.span_ms.load(Ordering::Relaxed);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock that closing takes too: a late record lands in
        // the span open now.
        let now_ms = now_ms.max(self.closed_before.load(Ordering::Acquire));
        let key = Key {
            destination: destination.to_string(),
            device: device.to_string(),
            policy_version,
            minute_ms: now_ms - now_ms % span,
        };
        let span_ms = self.span_ms.load(Ordering::Relaxed);
        let next_id = &self.next_id;
        let bucket = open.entry(key.clone()).or_insert_with(|| Open {
            id: next_id.fetch_add(1, Ordering::Relaxed),
            destination: key.destination.clone(),
            device: key.device.clone(),
            policy_version,
            minute_ms: key.minute_ms,
            span_ms,
            first_ms: now_ms,
            last_ms: now_ms,
            messages: 0,
            bytes: 0,
            digest: [0; 32],
            fields: BTreeMap::new(),
            unsaved: true,
        });
        bucket.last_ms = now_ms;
        bucket.messages += 1;
        bucket.bytes += payload.len() as u64;
        bucket.digest = chain_digest(&bucket.digest, payload);
        let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for f in fields {
            // Array elements share one name: counted once per message.
            if !seen.insert(f.field.as_str()) {
                continue;
            }
            // A device inventing names cannot grow the record without end:
            // long names and names past the bucket's cap count as one.
            let key = (f.field.clone(), f.rule.to_string(), f.action.to_string());
            let key = if f.field.len() > MAX_NAME_BYTES
                || (bucket.fields.len() >= MAX_FIELDS_PER_BUCKET
                    && !bucket.fields.contains_key(&key))
            {
                (OTHER_FIELDS.to_string(), String::new(), String::new())
            } else {
                key
            };
            *bucket.fields.entry(key).or_insert(0) += 1;
        }
        bucket.unsaved = true;
        self.due.store(true, Ordering::Release);
        Ok(())
    }

    /// Writes the buckets changed since the last call.
    pub fn persist_dirty(&self) -> Result<(), StoreError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for (key, bucket) in open.iter_mut().filter(|(_, b)| b.unsaved) {
            let state = serde_json::to_vec(bucket)
                .map_err(|e| StoreError::Corrupt(format!("a ledger bucket: {e}")))?;
            self.tree.insert(&key.bytes(), &state)?;
            bucket.unsaved = false;
        }
        Ok(())
    }

    /// Takes the buckets whose span ended by `now_ms` (all of them with
    /// `u64::MAX`), oldest first, leaving them in `ledger_open` until
    /// [`Buckets::forget_closed`]: they leave it once in the chain.
    pub fn take_due(&self, now_ms: u64) -> Vec<(Vec<u8>, EntryBody)> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if now_ms != u64::MAX {
            self.closed_before.fetch_max(now_ms, Ordering::AcqRel);
        }
        let due: Vec<Key> = open
            .iter()
            .filter(|(k, b)| k.minute_ms.saturating_add(b.span_ms) <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out: Vec<(u64, Vec<u8>, EntryBody)> = due
            .into_iter()
            .filter_map(|k| open.remove(&k).map(|b| (k.minute_ms, k.bytes(), b.close())))
            .collect();
        out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        out.into_iter().map(|(_, k, b)| (k, b)).collect()
    }

    /// Buckets a crash left open (in `ledger_open`, not in memory): read
    /// back at start, to be closed into the chain.
    pub fn recover(&self) -> Result<Vec<(Vec<u8>, EntryBody)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.iter() {
            let (k, v) = kv?;
            match serde_json::from_slice::<Open>(&v) {
                Ok(b) => out.push((k.to_vec(), b.close())),
                Err(e) => {
                    tracing::error!(error = %e, "an open ledger bucket is unreadable: dropped");
                    self.tree.remove(&k)?;
                }
            }
        }
        Ok(out)
    }

    /// Not journaled: the chain entry that replaces the bucket is a plain
    /// sled write, and a journaled removal could reach the disk before it,
    /// losing the counts. sled keeps the two in order.
    pub fn forget_closed(&self, key: &[u8]) -> Result<(), StoreError> {
        (*self.tree).remove(key)?;
        self.dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// What the open buckets hold, as summary rows (day, destination,
    /// device, field or "" for messages, count), for a summary that is
    /// current before its buckets close.
    pub fn open_rows(&self) -> Vec<(u64, String, String, String, u64)> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows = Vec::new();
        for b in open.values() {
            let day = b.first_ms / super::summary::DAY_MS;
            rows.push((
                day,
                b.destination.clone(),
                b.device.clone(),
                String::new(),
                b.messages,
            ));
            for ((field, _, _), n) in &b.fields {
                rows.push((
                    day,
                    b.destination.clone(),
                    b.device.clone(),
                    field.clone(),
                    *n,
                ));
            }
        }
        rows
    }

    /// Buckets open now.
    pub fn open_count(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
