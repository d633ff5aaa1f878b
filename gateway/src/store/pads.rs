//! Key pads: the part of each key that deleting must be able to destroy
//! for good.
//!
//! sled is log-structured: a removed value stays in older log segments
//! until its garbage collection happens to rewrite them. A data key kept
//! only in sled would therefore outlive its deletion on disk. So every data
//! key is split: a secret sealed to the user's key, kept in sled, and a
//! 32-byte random *pad*, kept here, in a file of fixed slots that is
//! overwritten in place. The data key is derived from both; zeroing the
//! pad (and syncing the file) destroys the key, whatever sled still holds.
//!
//! File `<data_dir>/keypads`: the 8 bytes `dwpads1\n`, then 32-byte slots.
//! An all-zero slot is free (a destroyed pad); freed slots are reused.
//! What a flash device's wear levelling keeps of overwritten blocks is
//! beyond any program's reach (docs/formats.md says so).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use zeroize::Zeroizing;

use super::StoreError;

const MAGIC: &[u8; 8] = b"dwpads1\n";
const SLOT: u64 = 32;

pub type Pad = Zeroizing<[u8; 32]>;

struct Slots {
    file: File,
    /// Slots in the file.
    count: u64,
    /// Zeroed slots, to reuse first.
    free: Vec<u64>,
}

pub struct KeyPads {
    slots: Mutex<Slots>,
}

fn io(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Flush(format!("key pads: {what}: {e}"))
}

fn offset(slot: u64) -> u64 {
    MAGIC.len() as u64 + slot * SLOT
}

impl KeyPads {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| io("open", e))?;
        let len = file.metadata().map_err(|e| io("stat", e))?.len();
        if len == 0 {
            file.write_all_at(MAGIC, 0).map_err(|e| io("write", e))?;
            file.sync_all().map_err(|e| io("sync", e))?;
        } else {
            let mut magic = [0u8; 8];
            file.read_exact_at(&mut magic, 0)
                .map_err(|e| io("read", e))?;
            if &magic != MAGIC {
                return Err(StoreError::Corrupt(format!(
                    "{} is not a dataward key pad file",
                    path.display()
                )));
            }
        }
        // A slot cut short by a crash while the file grew was never
        // handed out: the count stops before it.
        let count = len.saturating_sub(MAGIC.len() as u64) / SLOT;
        let mut free = Vec::new();
        let mut buf = Zeroizing::new(vec![0u8; (SLOT * 1024) as usize]);
        let mut slot = 0;
        while slot < count {
            let n = (count - slot).min(1024);
            let bytes = &mut buf[..(n * SLOT) as usize];
            file.read_exact_at(bytes, offset(slot))
                .map_err(|e| io("read", e))?;
            for (i, pad) in bytes.chunks(SLOT as usize).enumerate() {
                if pad.iter().all(|b| *b == 0) {
                    free.push(slot + i as u64);
                }
            }
            slot += n;
        }
        free.reverse();
        Ok(Self {
            slots: Mutex::new(Slots { file, count, free }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new random pad, durably in a slot, and the slot's number.
    pub fn allocate(&self) -> Result<(u64, Pad), StoreError> {
        let pad = crate::keys::wrap::random_key().map_err(|e| StoreError::Crypto(e.to_string()))?;
        let mut s = self.lock();
        let slot = match s.free.pop() {
            Some(slot) => slot,
            None => {
                s.count += 1;
                s.count - 1
            }
        };
        let written = s
            .file
            .write_all_at(pad.as_ref(), offset(slot))
            .and_then(|()| s.file.sync_data());
        if let Err(e) = written {
            s.free.push(slot);
            return Err(io("write", e));
        }
        Ok((slot, pad))
    }

    /// The pad in `slot`; `None` once destroyed (or never written).
    pub fn read(&self, slot: u64) -> Result<Option<Pad>, StoreError> {
        let s = self.lock();
        if slot >= s.count {
            return Ok(None);
        }
        let mut pad = Zeroizing::new([0u8; 32]);
        s.file
            .read_exact_at(pad.as_mut(), offset(slot))
            .map_err(|e| io("read", e))?;
        Ok((!pad.iter().all(|b| *b == 0)).then_some(pad))
    }

    /// Overwrites the pads in `slots` with zeros, then syncs: from the
    /// return on, the keys they were part of cannot be derived.
    pub fn destroy(&self, slots: &[u64]) -> Result<(), StoreError> {
        let mut s = self.lock();
        for slot in slots {
            if *slot < s.count {
                s.file
                    .write_all_at(&[0u8; SLOT as usize], offset(*slot))
                    .map_err(|e| io("write", e))?;
            }
        }
        s.file.sync_data().map_err(|e| io("sync", e))?;
        for slot in slots {
            if *slot < s.count && !s.free.contains(slot) {
                s.free.push(*slot);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_are_stored_destroyed_in_place_and_their_slots_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keypads");
        let (a, b, pad_a) = {
            let pads = KeyPads::open(&path).expect("open");
            let (a, pad_a) = pads.allocate().expect("a");
            let (b, _) = pads.allocate().expect("b");
            assert_ne!(a, b);
            pads.destroy(&[b]).expect("destroy");
            assert!(pads.read(b).expect("read").is_none());
            (a, b, pad_a)
        };
        let len = std::fs::metadata(&path).expect("stat").len();
        let bytes = std::fs::read(&path).expect("read");
        assert!(
            bytes.windows(32).any(|w| w == pad_a.as_slice()),
            "the pad is in the file"
        );
        let pads = KeyPads::open(&path).expect("reopen");
        assert_eq!(pads.read(a).expect("read").as_deref(), Some(&*pad_a));
        // The destroyed slot is found free again and reused: the file does
        // not grow.
        let (c, _) = pads.allocate().expect("c");
        assert_eq!(c, b);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), len);
        std::fs::write(&path, b"garbage!").expect("write");
        assert!(KeyPads::open(&path).is_err());
    }
}
