//! The egress ledger: a tamper-evident record of what left the home, to
//! whom, under which rule and policy version, and of every act of control
//! (policy applied, devices added and removed, fields approved, exports,
//! deletes, dropped outbox entries, commands relayed and refused).
//!
//! - [`entry`]: what an entry says.
//! - [`chain`]: the append-only hash chain, its head anchor, checkpoints,
//!   verification and pruning.
//! - [`buckets`]: egress counted per span of time (an hour by default) ×
//!   destination × device × policy version, closed into the chain when the
//!   span ends.
//! - [`summary`]: counts per day × destination × device × field, kept as
//!   buckets close.
//!
//! Values never enter the ledger: only field names, counts, sizes and
//! digests of what was sent.

pub mod buckets;
pub mod chain;
pub mod entry;
pub mod summary;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

pub use buckets::{SentField, DEFAULT_BUCKET_MS};
pub use chain::Verdict;
pub use entry::{Entry, EntryBody, FieldEgress};
pub use summary::{SummaryRow, DAY_MS};

use crate::store::StoreError;

/// A bucket closes this long after its span ends: a message evaluated just
/// before the end is still counted in it.
pub const CLOSE_GRACE_MS: u64 = 5_000;

/// A checkpoint is appended when the last one is older than this.
const CHECKPOINT_EVERY_MS: u64 = DAY_MS;

/// One message as queued for a destination.
#[derive(Clone, Copy)]
pub struct Sent<'a> {
    pub destination: &'a str,
    pub device: &'a str,
    pub policy_version: u64,
    pub topic: &'a str,
    pub now_ms: u64,
    /// Exactly as queued.
    pub payload: &'a [u8],
    pub fields: &'a [SentField<'a>],
}

pub struct Ledger {
    chain: chain::Chain,
    buckets: buckets::Buckets,
    summary: summary::Summary,
    /// Destinations whose every message gets an entry of its own.
    detailed: RwLock<HashSet<String>>,
    /// Off only to measure the ledger's cost (`[ledger] record_egress`).
    record_egress: AtomicBool,
    /// Held (shared) by the pipeline from an outbox push to its record
    /// here, and (exclusively) by the group commit's write of the open
    /// buckets: a flush never makes a queued message durable without its
    /// count.
    in_step: std::sync::RwLock<()>,
}

impl Ledger {
    /// `dirty` is set by the ledger's rare writes (the chain, the
    /// summary), which a checkpoint makes durable; `due` by every message
    /// counted, whose open bucket the next journal commit writes.
    pub(crate) fn open(
        db: &sled::Db,
        dirty: Arc<AtomicBool>,
        due: Arc<AtomicBool>,
        journal: &Arc<crate::store::journal::Journal>,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            chain: chain::Chain::open(db, Arc::clone(&dirty))?,
            buckets: buckets::Buckets::open(db, due, Arc::clone(&dirty), journal)?,
            summary: summary::Summary::open(db, dirty)?,
            detailed: RwLock::default(),
            record_egress: AtomicBool::new(true),
            in_step: std::sync::RwLock::new(()),
        })
    }

    /// The running gateway's settings: which destinations are detailed,
    /// the span of an egress bucket, and whether egress is recorded at all.
    pub fn configure(
        &self,
        detailed: impl IntoIterator<Item = String>,
        bucket_ms: u64,
        record_egress: bool,
    ) {
        *self.detailed.write().unwrap_or_else(|e| e.into_inner()) = detailed.into_iter().collect();
        self.buckets.set_span(bucket_ms);
        self.record_egress.store(record_egress, Ordering::Relaxed);
    }

    /// Records an act of control now.
    pub fn event(&self, body: EntryBody) -> Result<u64, StoreError> {
        self.chain.append(body, crate::pipeline::now_ms())
    }

    /// [`Ledger::event`], for callers whose act already happened: a
    /// failure to record it is logged, not returned.
    pub fn note(&self, body: EntryBody) {
        let kind = body.kind();
        if let Err(e) = self.event(body) {
            tracing::error!(kind, error = %crate::control::with_causes(&e), "could not record a ledger event");
        }
    }

    /// One message queued for a destination, with the fields it carries.
    pub fn egress(&self, sent: &Sent<'_>) -> Result<(), StoreError> {
        let Sent {
            destination,
            device,
            policy_version,
            topic,
            now_ms,
            payload,
            fields,
        } = *sent;
        if !self.record_egress.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.buckets
            .record(destination, device, policy_version, now_ms, payload, fields)?;
        let detailed = self
            .detailed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(destination);
        if detailed {
            self.chain.append(
                EntryBody::Message {
                    destination: destination.to_string(),
                    device: device.to_string(),
                    policy_version,
                    topic: topic.to_string(),
                    bytes: payload.len() as u64,
                    digest: entry::hex(&entry::sha256(payload)),
                    fields: fields
                        .iter()
                        .map(|f| FieldEgress {
                            field: f.field.clone(),
                            rule: f.rule.to_string(),
                            action: f.action.to_string(),
                            count: 1,
                        })
                        .collect(),
                },
                now_ms,
            )?;
        }
        Ok(())
    }

    /// Held while a message is queued and recorded (see `in_step`).
    pub fn in_step(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.in_step.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the open buckets that changed since the last call: run at
    /// the start of every group commit, so a crash loses no count of a
    /// message that was acknowledged. An error fails the flush.
    pub fn persist_open(&self) -> Result<(), StoreError> {
        let _all = self.in_step.write().unwrap_or_else(|e| e.into_inner());
        self.buckets.persist_dirty()
    }

    /// Closes into the chain and the summary the buckets whose span ended
    /// [`CLOSE_GRACE_MS`] before `now_ms`; `all` closes every open one (at
    /// a stop). Entries are stamped `now_ms`. One that fails is logged and
    /// the rest go on (it stays in `ledger_open`, for the next start).
    pub fn close_due(&self, now_ms: u64, all: bool) -> Result<usize, StoreError> {
        let due = if all {
            self.buckets.take_due(u64::MAX)
        } else {
            self.buckets.take_due(now_ms.saturating_sub(CLOSE_GRACE_MS))
        };
        let mut n = 0;
        let mut first_error = None;
        for (key, body) in due {
            let closed = self
                .summary
                .count(&body)
                .and_then(|()| self.chain.append(body, now_ms))
                .and_then(|_| self.buckets.forget_closed(&key));
            match closed {
                Ok(()) => n += 1,
                Err(e) => {
                    tracing::error!(error = %crate::control::with_causes(&e), "a ledger bucket could not be closed; the next start closes it");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if n == 0 => Err(e),
            _ => Ok(n),
        }
    }

    /// At start: closes the buckets a crash or a stop left open, unless a
    /// crash came after one was already in the chain.
    pub fn recover(&self, now_ms: u64) -> Result<usize, StoreError> {
        let open = self.buckets.recover()?;
        let Some(earliest) = open.iter().filter_map(|(_, b)| bucket_minute(b)).min() else {
            return Ok(0);
        };
        let already: Vec<Entry> = self.chain.since(earliest)?;
        let mut n = 0;
        for (key, body) in open {
            let in_chain = already.iter().any(|e| same_bucket(&e.body, &body));
            if !in_chain {
                self.summary.count(&body)?;
                self.chain.append(body, now_ms)?;
                n += 1;
            }
            self.buckets.forget_closed(&key)?;
        }
        Ok(n)
    }

    /// Hourly: a checkpoint once a day, and entries older than
    /// `retention_ms` pruned at a checkpoint.
    pub fn maintain(&self, now_ms: u64, retention_ms: Option<u64>) -> Result<u64, StoreError> {
        let last = self.chain.last_checkpoint_ms()?;
        if last.is_none_or(|t| now_ms.saturating_sub(t) >= CHECKPOINT_EVERY_MS) {
            let entries = self.chain.next_seq();
            self.chain
                .append(EntryBody::Checkpoint { entries }, now_ms)?;
        }
        let Some(keep) = retention_ms else {
            return Ok(0);
        };
        let cut = now_ms.saturating_sub(keep);
        let removed = self.chain.prune(cut)?;
        self.summary.prune(cut / DAY_MS)?;
        Ok(removed)
    }

    pub fn verify(&self) -> Result<Verdict, StoreError> {
        self.chain.verify()
    }

    pub fn since(&self, since_ms: u64) -> Result<Vec<Entry>, StoreError> {
        self.chain.since(since_ms)
    }

    /// Each entry from `since_ms` on, one at a time.
    pub fn scan_since(&self, since_ms: u64, f: impl FnMut(Entry)) -> Result<(), StoreError> {
        self.chain.scan_since(since_ms, f)
    }

    /// Counts per day × destination × device × field since `since_ms`:
    /// the closed buckets' (kept as they close) and the open ones', so the
    /// answer is current.
    pub fn summary_since(&self, since_ms: u64) -> Result<Vec<SummaryRow>, StoreError> {
        let since_day = since_ms / DAY_MS;
        let mut rows: std::collections::BTreeMap<(u64, String, String, String), u64> = self
            .summary
            .since(since_day)?
            .into_iter()
            .map(|r| ((r.day, r.destination, r.device, r.field), r.count))
            .collect();
        for (day, destination, device, field, n) in self.buckets.open_rows() {
            if day >= since_day {
                *rows.entry((day, destination, device, field)).or_default() += n;
            }
        }
        Ok(rows
            .into_iter()
            .map(|((day, destination, device, field), count)| SummaryRow {
                day,
                destination,
                device,
                field,
                count,
            })
            .collect())
    }

    pub fn entries(&self) -> u64 {
        self.chain.next_seq()
    }

    pub fn stored_bytes(&self) -> u64 {
        self.chain.stored_bytes()
    }

    #[cfg(test)]
    pub(crate) fn raw_entries(&self) -> &sled::Tree {
        self.chain.raw()
    }
}

fn bucket_minute(body: &EntryBody) -> Option<u64> {
    match body {
        EntryBody::Egress { minute_ms, .. } => Some(*minute_ms),
        _ => None,
    }
}

/// The same bucket: its number, which is unique per bucket opened.
fn same_bucket(a: &EntryBody, b: &EntryBody) -> bool {
    match (a, b) {
        (
            EntryBody::Egress {
                bucket: b1,
                destination: d1,
                device: v1,
                minute_ms: m1,
                ..
            },
            EntryBody::Egress {
                bucket: b2,
                destination: d2,
                device: v2,
                minute_ms: m2,
                ..
            },
        ) => b1 == b2 && d1 == d2 && v1 == v2 && m1 == m2,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
