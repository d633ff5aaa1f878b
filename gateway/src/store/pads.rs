//! Key pads: the part of each key that deleting must be able to destroy
//! for good.
//!
//! sled is log-structured: a removed value stays in older log segments
//! until its garbage collection happens to rewrite them. A key kept only in
//! sled would therefore outlive its deletion on disk. So every data key,
//! and every wrap of the user's private key, is bound to a 32-byte random
//! *pad* kept here, in a file of fixed slots overwritten in place: zeroing
//! the pad (and syncing the file) destroys the key, whatever sled holds.
//!
//! File `<data_dir>/keypads`: the 8 bytes `dwpads1\n`, then 32-byte slots.
//! An all-zero slot is a destroyed pad. Slots are never handed out twice
//! (32 bytes per key drawn: about a megabyte a year for 100 devices), so a
//! key row left behind by a crash can never name someone else's pad.
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
    /// Slots in the file; the next one is handed out next.
    count: u64,
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
    /// Opens the pad file, creating it only when `create` (a store with no
    /// keys yet): a store whose pad file went missing must be refused, not
    /// given an empty one that would read as "every key destroyed".
    pub fn open(path: &Path, create: bool) -> Result<Self, StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let exists = path.exists();
        if !exists && !create {
            return Err(StoreError::Corrupt(format!(
                "{} is missing: without it no stored history or key can be opened (restore it from the same backup as the store)",
                path.display()
            )));
        }
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
            // The file's name must survive a crash too.
            if let Some(dir) = path.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| io("sync the directory", e))?;
            }
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
        // A slot cut short by a crash while the file grew was never named
        // by anything durable: the count stops before it.
        let count = len.saturating_sub(MAGIC.len() as u64) / SLOT;
        Ok(Self {
            slots: Mutex::new(Slots { file, count }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new random pad, durably in a new slot, and the slot's number.
    pub fn allocate(&self) -> Result<(u64, Pad), StoreError> {
        let pad = crate::keys::wrap::random_key().map_err(|e| StoreError::Crypto(e.to_string()))?;
        let mut s = self.lock();
        let slot = s.count;
        s.file
            .write_all_at(pad.as_ref(), offset(slot))
            .and_then(|()| s.file.sync_data())
            .map_err(|e| io("write", e))?;
        s.count += 1;
        Ok((slot, pad))
    }

    /// The pad in `slot`; `None` once destroyed. A slot the file does not
    /// have is an error: the file is older than the store that names it.
    pub fn read(&self, slot: u64) -> Result<Option<Pad>, StoreError> {
        let s = self.lock();
        if slot >= s.count {
            return Err(StoreError::Corrupt(format!(
                "key pad {slot} is beyond the end of the keypads file ({} pads): the file does not match the store",
                s.count
            )));
        }
        let mut pad = Zeroizing::new([0u8; 32]);
        s.file
            .read_exact_at(pad.as_mut(), offset(slot))
            .map_err(|e| io("read", e))?;
        Ok((!pad.iter().all(|b| *b == 0)).then_some(pad))
    }

    /// Overwrites the pads in `slots` with zeros, then syncs: from the
    /// return on, the keys bound to them cannot be derived.
    pub fn destroy(&self, slots: &[u64]) -> Result<(), StoreError> {
        if slots.is_empty() {
            return Ok(());
        }
        let s = self.lock();
        for slot in slots {
            if *slot < s.count {
                s.file
                    .write_all_at(&[0u8; SLOT as usize], offset(*slot))
                    .map_err(|e| io("write", e))?;
            }
        }
        s.file.sync_data().map_err(|e| io("sync", e))
    }

    /// Zeroes every live pad not in `used`: pads drawn for a key or a wrap
    /// that a crash kept from being stored, or an old wrap a crash kept
    /// from being revoked. Only while nothing else uses the store (at
    /// open). Returns how many.
    pub fn destroy_unused(&self, used: &std::collections::HashSet<u64>) -> Result<u64, StoreError> {
        let mut orphans = Vec::new();
        {
            // The whole file in one read: this runs at every open.
            let s = self.lock();
            let mut all = Zeroizing::new(vec![0u8; (s.count * SLOT) as usize]);
            s.file
                .read_exact_at(&mut all, offset(0))
                .map_err(|e| io("read", e))?;
            for (slot, pad) in all.chunks(SLOT as usize).enumerate() {
                let slot = slot as u64;
                if !used.contains(&slot) && pad.iter().any(|b| *b != 0) {
                    orphans.push(slot);
                }
            }
        }
        self.destroy(&orphans)?;
        Ok(orphans.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_are_stored_destroyed_in_place_and_never_handed_out_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keypads");
        assert!(
            KeyPads::open(&path, false).is_err(),
            "missing, and not to be created"
        );
        let (a, b, pad_a) = {
            let pads = KeyPads::open(&path, true).expect("open");
            let (a, pad_a) = pads.allocate().expect("a");
            let (b, _) = pads.allocate().expect("b");
            assert_ne!(a, b);
            pads.destroy(&[b]).expect("destroy");
            assert!(pads.read(b).expect("read").is_none());
            (a, b, pad_a)
        };
        let bytes = std::fs::read(&path).expect("read");
        assert!(
            bytes.windows(32).any(|w| w == pad_a.as_slice()),
            "the pad is in the file"
        );
        let pads = KeyPads::open(&path, false).expect("reopen");
        assert_eq!(pads.read(a).expect("read").as_deref(), Some(&*pad_a));
        let (c, _) = pads.allocate().expect("c");
        assert!(c > b, "a destroyed slot is not reused");
        assert!(
            pads.read(c + 1).is_err(),
            "beyond the end is an error, not 'destroyed'"
        );
        // Unused live pads are zeroed; used ones stay.
        let used = [a].into_iter().collect();
        assert_eq!(pads.destroy_unused(&used).expect("sweep"), 1);
        assert!(pads.read(c).expect("read").is_none());
        assert!(pads.read(a).expect("read").is_some());
        std::fs::write(&path, b"garbage!").expect("write");
        assert!(KeyPads::open(&path, false).is_err());
    }
}
