//! Recovery, and the note a checkpoint leaves for it.

use std::path::Path;

use super::frames::{apply, Frame};
use crate::store::StoreError;

/// The sled tree and key where a checkpoint notes the last frame its
/// flush covers: recovery skips frames up to it, so a crash between the
/// flush and the emptying of the segments cannot replay a put over a
/// deletion the flush made durable.
pub(super) const META_TREE: &str = "meta";
pub(super) const CHECKPOINT_KEY: &[u8] = b"journal_checkpoint";

fn checkpointed_seq(db: &sled::Db) -> Result<u64, StoreError> {
    Ok(db
        .open_tree(META_TREE)?
        .get(CHECKPOINT_KEY)?
        .and_then(|v| v.as_ref().try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// Applies the live frames found (one list per segment) that the last
/// checkpoint does not cover, oldest pass first, and flushes them.
/// Returns the highest sequence number seen or noted: new frames go above.
pub(super) fn recover(
    db: &sled::Db,
    dir: &Path,
    mut found: Vec<Vec<Frame>>,
) -> Result<u64, StoreError> {
    let covered = checkpointed_seq(db)?;
    found.sort_by_key(|frames| frames.first().map_or(0, |f| f.seq));
    let (mut applied, mut max_seq) = (0usize, covered);
    for frame in found.iter().flatten() {
        max_seq = max_seq.max(frame.seq);
        if frame.seq <= covered {
            continue;
        }
        applied += apply(db, &frame.body).map_err(|e| match e {
            // Only a bug or a hand-edited file gets here (the checksum
            // held): say which files, and what starting without them means.
            StoreError::Corrupt(what) => StoreError::Corrupt(format!(
                "{what}, in {}; to start anyway, move that directory aside: the \
                 messages acknowledged since the store's last checkpoint are then lost",
                dir.display()
            )),
            other => other,
        })?;
    }
    if applied > 0 {
        db.flush()?;
        tracing::info!(
            operations = applied,
            "the journal's writes since the last checkpoint were applied"
        );
    }
    Ok(max_seq)
}

/// Notes that frames up to `seq` are in sled, before the flush that makes
/// it so (a lower note never replaces a higher one).
pub(super) fn note_checkpoint(db: &sled::Db, seq: u64) -> Result<(), StoreError> {
    db.open_tree(META_TREE)?
        .fetch_and_update(CHECKPOINT_KEY, |old| {
            let old = old
                .and_then(|v| v.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            Some(old.max(seq).to_be_bytes().to_vec())
        })?;
    Ok(())
}
