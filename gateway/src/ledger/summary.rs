//! Counts per day × destination × device × field, kept as buckets close,
//! so `ledger summary` reads only the days it reports and never scans the
//! chain. A field name of "" holds the day's message count.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::entry::EntryBody;
use crate::store::StoreError;

pub const DAY_MS: u64 = 86_400_000;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SummaryRow {
    /// Days since 1970-01-01 (UTC).
    pub day: u64,
    pub destination: String,
    pub device: String,
    /// The field, or "" for the messages themselves.
    pub field: String,
    pub count: u64,
}

pub struct Summary {
    tree: sled::Tree,
    dirty: Arc<AtomicBool>,
}

fn key(day: u64, destination: &str, device: &str, field: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + destination.len() + device.len() + field.len() + 2);
    k.extend_from_slice(&day.to_be_bytes());
    for (i, part) in [destination, device, field].into_iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(part.as_bytes());
    }
    k
}

fn add(tree: &sled::Tree, k: Vec<u8>, n: u64) -> Result<(), StoreError> {
    tree.fetch_and_update(k, |old| {
        let mut v = [0u8; 8];
        if let Some(o) = old.filter(|o| o.len() == 8) {
            v.copy_from_slice(o);
        }
        Some(
            u64::from_le_bytes(v)
                .saturating_add(n)
                .to_le_bytes()
                .to_vec(),
        )
    })?;
    Ok(())
}

impl Summary {
    pub fn open(db: &sled::Db, dirty: Arc<AtomicBool>) -> Result<Self, StoreError> {
        Ok(Self {
            tree: db.open_tree("ledger_summary")?,
            dirty,
        })
    }

    /// Counts a closed egress bucket (other entries count nothing).
    pub fn count(&self, body: &EntryBody) -> Result<(), StoreError> {
        if let EntryBody::Egress {
            destination,
            device,
            first_ms,
            messages,
            fields,
            ..
        } = body
        {
            let day = first_ms / DAY_MS;
            add(&self.tree, key(day, destination, device, ""), *messages)?;
            for f in fields {
                add(&self.tree, key(day, destination, device, &f.field), f.count)?;
            }
            self.dirty.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// The rows from `since_day` on, in key order.
    pub fn since(&self, since_day: u64) -> Result<Vec<SummaryRow>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.range(since_day.to_be_bytes()..) {
            let (k, v) = kv?;
            if k.len() < 8 || v.len() != 8 {
                continue;
            }
            let mut d = [0u8; 8];
            d.copy_from_slice(&k[..8]);
            let mut parts = k[8..].split(|b| *b == 0);
            let text =
                |p: Option<&[u8]>| String::from_utf8_lossy(p.unwrap_or_default()).into_owned();
            let (destination, device, field) =
                (text(parts.next()), text(parts.next()), text(parts.next()));
            let mut c = [0u8; 8];
            c.copy_from_slice(&v);
            out.push(SummaryRow {
                day: u64::from_be_bytes(d),
                destination,
                device,
                field,
                count: u64::from_le_bytes(c),
            });
        }
        Ok(out)
    }

    /// Drops the days before `before_day` (ledger retention).
    pub fn prune(&self, before_day: u64) -> Result<u64, StoreError> {
        let mut n = 0;
        for k in self.tree.range(..before_day.to_be_bytes()).keys() {
            self.tree.remove(k?)?;
            n += 1;
        }
        Ok(n)
    }
}
