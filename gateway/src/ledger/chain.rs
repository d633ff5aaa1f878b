//! The append-only chain: entry `n` carries the SHA-256 of entry `n-1`'s
//! stored bytes, and a head anchor (the last entry's number and hash,
//! kept apart from the entries) tells a cut tail from a short chain.
//!
//! Pruning cuts the chain at a checkpoint: the checkpoint's number and the
//! hash it chains from become the base, from which verification starts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::entry::{hex, sha256, Entry, EntryBody};
use crate::store::StoreError;

const HEAD: &[u8] = b"head";
const BASE: &[u8] = b"base";

struct Tip {
    next: u64,
    last_hash: [u8; 32],
    last_at: u64,
}

pub struct Chain {
    entries: sled::Tree,
    anchors: sled::Tree,
    tip: Mutex<Tip>,
    dirty: Arc<AtomicBool>,
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub intact: bool,
    /// Entries checked.
    pub entries: u64,
    /// The first entry that does not hold, and why.
    pub broken_at: Option<u64>,
    pub reason: Option<String>,
    /// Where verification started (after pruning, a checkpoint).
    pub from: u64,
}

fn anchor(bytes: &[u8]) -> Option<(u64, [u8; 32])> {
    if bytes.len() != 40 {
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[..8]);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes[8..]);
    Some((u64::from_be_bytes(seq), hash))
}

fn anchor_bytes(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut v = seq.to_be_bytes().to_vec();
    v.extend_from_slice(hash);
    v
}

impl Chain {
    pub fn open(db: &sled::Db, dirty: Arc<AtomicBool>) -> Result<Self, StoreError> {
        let entries = db.open_tree("ledger")?;
        let anchors = db.open_tree("ledger_anchors")?;
        let head = anchors.get(HEAD)?.and_then(|b| anchor(&b));
        let last = entries.last()?;
        let tip = match (last, head) {
            // The anchor is ahead of the entries (a cut tail): carry on
            // from the anchor, so the gap stays for `verify` to name.
            (Some((k, _)), Some((seq, hash))) if key_seq(&k) < seq => Tip {
                next: seq.saturating_add(1),
                last_hash: hash,
                last_at: 0,
            },
            (Some((k, v)), _) => Tip {
                next: key_seq(&k).saturating_add(1),
                last_hash: sha256(&v),
                last_at: serde_json::from_slice::<Entry>(&v).map_or(0, |e| e.at_ms),
            },
            (None, Some((seq, hash))) => Tip {
                next: seq.saturating_add(1),
                last_hash: hash,
                last_at: 0,
            },
            (None, None) => Tip {
                next: 0,
                last_hash: [0; 32],
                last_at: 0,
            },
        };
        // Never number below the base: entries lost after a prune leave a
        // gap that `verify` names, instead of a fresh chain under the base.
        let mut tip = tip;
        if let Some((base, _)) = anchors.get(BASE)?.and_then(|b| anchor(&b)) {
            tip.next = tip.next.max(base.saturating_add(1));
        }
        Ok(Self {
            entries,
            anchors,
            tip: Mutex::new(tip),
            dirty,
        })
    }

    /// Appends `body`; returns its number. Times never go backwards in the
    /// chain (a clock stepped back records the last time again).
    pub fn append(&self, body: EntryBody, at_ms: u64) -> Result<u64, StoreError> {
        let mut tip = self.tip.lock().unwrap_or_else(|e| e.into_inner());
        let entry = Entry {
            seq: tip.next,
            at_ms: at_ms.max(tip.last_at),
            prev: hex(&tip.last_hash),
            body,
        };
        let bytes = serde_json::to_vec(&entry)
            .map_err(|e| StoreError::Corrupt(format!("a ledger entry: {e}")))?;
        let hash = sha256(&bytes);
        // The entry and the head together, or neither.
        use sled::Transactional;
        let head = anchor_bytes(entry.seq, &hash);
        (&self.entries, &self.anchors)
            .transaction(|(entries, anchors)| {
                entries.insert(&entry.seq.to_be_bytes(), bytes.as_slice())?;
                anchors.insert(HEAD, head.as_slice())?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(s) => StoreError::Engine(s),
                sled::transaction::TransactionError::Abort(()) => {
                    StoreError::Corrupt("a ledger append was aborted".into())
                }
            })?;
        self.dirty.store(true, Ordering::Release);
        tip.next = tip.next.saturating_add(1);
        tip.last_hash = hash;
        tip.last_at = entry.at_ms;
        Ok(entry.seq)
    }

    /// The number the next entry gets: entries ever appended.
    pub fn next_seq(&self) -> u64 {
        self.tip.lock().unwrap_or_else(|e| e.into_inner()).next
    }

    /// Checks every link from the base to the head anchor. The anchors are
    /// read first, and entries appended meanwhile (the gateway runs) are
    /// left for the next check.
    pub fn verify(&self) -> Result<Verdict, StoreError> {
        let head = self.anchors.get(HEAD)?;
        let head = head.as_deref().map(anchor);
        let base = self.anchors.get(BASE)?.and_then(|b| anchor(&b));
        let (mut expect_seq, mut expect_prev) = base.unwrap_or_default();
        let from = expect_seq;
        let mut checked = 0;
        let broken = |at: u64, why: String, checked: u64| Verdict {
            intact: false,
            entries: checked,
            broken_at: Some(at),
            reason: Some(why),
            from,
        };
        let (head_seq, head_hash) = match head {
            Some(Some(h)) => h,
            // Entries, or a base, with no head: the head was removed.
            Some(None) => return Ok(broken(from, "the head anchor is damaged".into(), 0)),
            None if self.entries.is_empty() && base.is_none() => {
                return Ok(Verdict {
                    intact: true,
                    entries: 0,
                    broken_at: None,
                    reason: None,
                    from,
                })
            }
            None => {
                return Ok(broken(
                    from,
                    "the head anchor is missing: the end of the ledger cannot be checked".into(),
                    0,
                ))
            }
        };
        for kv in self.entries.range(expect_seq.to_be_bytes()..) {
            let (k, v) = kv?;
            let seq = key_seq(&k);
            if seq > head_seq {
                // Appended after the head was read.
                break;
            }
            if seq > expect_seq {
                return Ok(broken(
                    expect_seq,
                    format!("entries {expect_seq} to {} are missing", seq - 1),
                    checked,
                ));
            }
            let Ok(entry) = serde_json::from_slice::<Entry>(&v) else {
                return Ok(broken(
                    seq,
                    format!("entry {seq} is corrupt: not a ledger entry"),
                    checked,
                ));
            };
            if entry.seq != seq {
                return Ok(broken(
                    seq,
                    format!("entry {seq} was altered: it says it is entry {}", entry.seq),
                    checked,
                ));
            }
            if base.is_some() && seq == from && !matches!(entry.body, EntryBody::Checkpoint { .. })
            {
                return Ok(broken(
                    seq,
                    format!("the base, entry {seq}, is not a checkpoint"),
                    checked,
                ));
            }
            if entry.prev != hex(&expect_prev) {
                let why = if seq == from {
                    format!("entry {seq} does not chain from the base")
                } else {
                    format!(
                        "entry {} was altered: its hash no longer matches the one entry {seq} holds",
                        seq - 1
                    )
                };
                return Ok(broken(
                    seq.saturating_sub(u64::from(seq != from)),
                    why,
                    checked,
                ));
            }
            expect_prev = sha256(&v);
            expect_seq = seq + 1;
            checked += 1;
        }
        if head_seq >= expect_seq {
            return Ok(broken(
                expect_seq,
                format!(
                    "entries {expect_seq} to {head_seq} are missing: the end of the ledger was cut"
                ),
                checked,
            ));
        }
        if head_seq.saturating_add(1) == expect_seq && head_hash != expect_prev {
            return Ok(broken(
                head_seq,
                format!("entry {head_seq} was altered: its hash no longer matches the head"),
                checked,
            ));
        }
        Ok(Verdict {
            intact: true,
            entries: checked,
            broken_at: None,
            reason: None,
            from,
        })
    }

    /// Entries from the first one at or after `since_ms`, in order.
    pub fn since(&self, since_ms: u64) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        self.scan_since(since_ms, |e| out.push(e))?;
        Ok(out)
    }

    /// Hands each entry from the first one at or after `since_ms` to `f`,
    /// in order, one at a time: a year of ledger is never in memory at
    /// once. Times only grow along the chain, so the start is found by
    /// bisection.
    pub fn scan_since(&self, since_ms: u64, mut f: impl FnMut(Entry)) -> Result<(), StoreError> {
        let (Some((first, _)), Some((last, _))) = (self.entries.first()?, self.entries.last()?)
        else {
            return Ok(());
        };
        let (mut lo, mut hi) = (key_seq(&first), key_seq(&last) + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            // A missing or unreadable entry counts as early: the scan
            // below reads on from there and skips what does not parse.
            let at = self
                .entries
                .range(mid.to_be_bytes()..)
                .next()
                .transpose()?
                .and_then(|(_, v)| serde_json::from_slice::<Entry>(&v).ok())
                .map_or(0, |e| e.at_ms);
            if at < since_ms {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        for kv in self.entries.range(lo.to_be_bytes()..) {
            let (_, v) = kv?;
            if let Ok(e) = serde_json::from_slice::<Entry>(&v) {
                if e.at_ms >= since_ms {
                    f(e);
                }
            }
        }
        Ok(())
    }

    /// Removes the entries before the newest checkpoint older than
    /// `before_ms`; that checkpoint becomes the base. Returns how many went.
    pub fn prune(&self, before_ms: u64) -> Result<u64, StoreError> {
        let mut cut: Option<(u64, [u8; 32])> = None;
        for kv in self.entries.iter() {
            let (k, v) = kv?;
            let Ok(e) = serde_json::from_slice::<Entry>(&v) else {
                continue;
            };
            if e.at_ms >= before_ms {
                break;
            }
            if matches!(e.body, EntryBody::Checkpoint { .. }) {
                let mut prev = [0u8; 32];
                if hex_decode(&e.prev, &mut prev) {
                    cut = Some((key_seq(&k), prev));
                }
            }
        }
        let Some((seq, prev)) = cut else {
            return Ok(0);
        };
        // The base first: an interrupted prune leaves extra entries below
        // it, which verification skips.
        self.anchors.insert(BASE, anchor_bytes(seq, &prev))?;
        let mut removed = 0;
        for k in self.entries.range(..seq.to_be_bytes()).keys() {
            self.entries.remove(k?)?;
            removed += 1;
        }
        self.dirty.store(true, Ordering::Release);
        Ok(removed)
    }

    /// When the last checkpoint was appended, if one is in the chain.
    pub fn last_checkpoint_ms(&self) -> Result<Option<u64>, StoreError> {
        for kv in self.entries.iter().rev() {
            let (_, v) = kv?;
            if let Ok(e) = serde_json::from_slice::<Entry>(&v) {
                if matches!(e.body, EntryBody::Checkpoint { .. }) {
                    return Ok(Some(e.at_ms));
                }
            }
        }
        Ok(None)
    }

    /// Bytes the entries take, as stored.
    pub fn stored_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }

    #[cfg(test)]
    pub(crate) fn raw(&self) -> &sled::Tree {
        &self.entries
    }
}

fn key_seq(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = k.len().min(8);
    b[8 - n..].copy_from_slice(&k[..n]);
    u64::from_be_bytes(b)
}

fn hex_decode(text: &str, out: &mut [u8; 32]) -> bool {
    let b = text.as_bytes();
    if b.len() != 64 {
        return false;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = std::str::from_utf8(&b[2 * i..2 * i + 2]).ok();
        match pair.and_then(|p| u8::from_str_radix(p, 16).ok()) {
            Some(v) => *byte = v,
            None => return false,
        }
    }
    true
}
