//! Device history: every message a device published, kept locally.
//!
//! NOT ENCRYPTED YET: records are stored in plaintext until the keys issue
//! puts per-period data keys behind this same interface (README says so).

use super::StoreError;

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRecord {
    pub device: String,
    pub seq: u64,
    pub received_ms: u64,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Where device history lives. Appends are not durable until the store's
/// `Durability::sync` returns.
pub trait HistoryStore: Send + Sync {
    fn append(
        &self,
        device: &str,
        received_ms: u64,
        topic: &str,
        payload: &[u8],
    ) -> Result<u64, StoreError>;
    /// Records of one device (or all, with `None`), oldest first per device.
    fn scan(
        &self,
        device: Option<&str>,
    ) -> Box<dyn Iterator<Item = Result<HistoryRecord, StoreError>> + '_>;
    fn count(&self, device: &str) -> usize;
}

/// History in the sled tree `history`: key = device id, 0x00, sequence
/// (u64 BE); value = received time (u64 BE), topic length (u16 BE), topic,
/// payload.
pub struct SledHistory {
    tree: sled::Tree,
    db: sled::Db,
    dirty: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SledHistory {
    pub(super) fn open(
        db: &sled::Db,
        dirty: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            tree: db.open_tree("history")?,
            db: db.clone(),
            dirty,
        })
    }

    fn prefix(device: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(device.len() + 9);
        k.extend_from_slice(device.as_bytes());
        k.push(0);
        k
    }

    fn decode(key: &[u8], value: &[u8]) -> Result<HistoryRecord, StoreError> {
        let corrupt = || StoreError::Corrupt(format!("history record {key:02x?}"));
        let split = key.iter().position(|b| *b == 0).ok_or_else(corrupt)?;
        let device = std::str::from_utf8(&key[..split])
            .map_err(|_| corrupt())?
            .to_string();
        let seq = u64::from_be_bytes(
            key.get(split + 1..)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(corrupt)?,
        );
        let received_ms = u64::from_be_bytes(
            value
                .get(..8)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(corrupt)?,
        );
        let tlen = u16::from_be_bytes(
            value
                .get(8..10)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(corrupt)?,
        ) as usize;
        let topic = value.get(10..10 + tlen).ok_or_else(corrupt)?;
        let topic = std::str::from_utf8(topic)
            .map_err(|_| corrupt())?
            .to_string();
        let payload = value.get(10 + tlen..).ok_or_else(corrupt)?.to_vec();
        Ok(HistoryRecord {
            device,
            seq,
            received_ms,
            topic,
            payload,
        })
    }
}

impl HistoryStore for SledHistory {
    fn append(
        &self,
        device: &str,
        received_ms: u64,
        topic: &str,
        payload: &[u8],
    ) -> Result<u64, StoreError> {
        let seq = self.db.generate_id()?;
        let mut key = Self::prefix(device);
        key.extend_from_slice(&seq.to_be_bytes());
        let tlen = u16::try_from(topic.len())
            .map_err(|_| StoreError::Corrupt("topic longer than 65535 bytes".into()))?;
        let mut value = Vec::with_capacity(10 + topic.len() + payload.len());
        value.extend_from_slice(&received_ms.to_be_bytes());
        value.extend_from_slice(&tlen.to_be_bytes());
        value.extend_from_slice(topic.as_bytes());
        value.extend_from_slice(payload);
        self.tree.insert(key, value)?;
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
        Ok(seq)
    }

    fn scan(
        &self,
        device: Option<&str>,
    ) -> Box<dyn Iterator<Item = Result<HistoryRecord, StoreError>> + '_> {
        let iter = match device {
            Some(d) => self.tree.scan_prefix(Self::prefix(d)),
            None => self.tree.iter(),
        };
        Box::new(iter.map(|kv| {
            let (k, v) = kv?;
            Self::decode(&k, &v)
        }))
    }

    fn count(&self, device: &str) -> usize {
        self.tree.scan_prefix(Self::prefix(device)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn records_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            let h = store.history().expect("history");
            h.append("dev1", 1000, "devices/dev1/state", b"{\"a\":1}")
                .expect("append");
            h.append("dev1", 1001, "devices/dev1/state", b"\xff\x00binary")
                .expect("append");
            h.append("dev10", 1002, "devices/dev10/state", b"x")
                .expect("append");
            store.flush().expect("flush");
        }
        let store = Store::open(dir.path()).expect("reopen");
        let h = store.history().expect("history");
        let recs: Vec<_> = h
            .scan(Some("dev1"))
            .collect::<Result<_, _>>()
            .expect("scan");
        assert_eq!(recs.len(), 2, "dev10 must not leak into dev1's prefix");
        assert_eq!(recs[0].payload, b"{\"a\":1}");
        assert_eq!(recs[1].payload, b"\xff\x00binary");
        assert!(recs[0].seq < recs[1].seq);
        assert_eq!(h.count("dev10"), 1);
        assert_eq!(h.scan(None).count(), 3);
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        assert!(SledHistory::decode(b"nozero", b"").is_err());
        assert!(SledHistory::decode(b"d\0\0\0\0\0\0\0\0\x01", b"short").is_err());
    }
}
