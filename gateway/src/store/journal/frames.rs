//! The journal's bytes: operations, frames, and reading them back.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::{FRAME_HEADER, MAGIC, PUT, REMOVE};
use crate::store::StoreError;

/// One operation for [`Journal::record`], already applied to sled.
pub(crate) enum Op<'a> {
    Put {
        tree: &'a [u8],
        key: &'a [u8],
        value: &'a [u8],
    },
    Remove {
        tree: &'a [u8],
        key: &'a [u8],
    },
}

impl Op<'_> {
    pub(super) fn encoded_len(&self) -> usize {
        match self {
            Op::Put { tree, key, value } => 2 + tree.len() + 4 + key.len() + 4 + value.len(),
            Op::Remove { tree, key } => 2 + tree.len() + 4 + key.len(),
        }
    }

    pub(super) fn fits(&self) -> bool {
        let (tree, key, value) = match self {
            Op::Put { tree, key, value } => (tree, key, value.len()),
            Op::Remove { tree, key } => (tree, key, 0),
        };
        u8::try_from(tree.len()).is_ok()
            && u32::try_from(key.len()).is_ok()
            && u32::try_from(value).is_ok()
    }

    pub(super) fn encode(&self, buf: &mut Vec<u8>) {
        let (code, tree, key, value) = match self {
            Op::Put { tree, key, value } => (PUT, tree, key, Some(value)),
            Op::Remove { tree, key } => (REMOVE, tree, key, None),
        };
        buf.push(code);
        buf.push(tree.len() as u8);
        buf.extend_from_slice(tree);
        buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
        buf.extend_from_slice(key);
        if let Some(v) = value {
            buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
            buf.extend_from_slice(v);
        }
    }
}

/// One live frame found at recovery.
pub(super) struct Frame {
    pub(super) seq: u64,
    pub(super) body: Vec<u8>,
}

pub(super) fn frame_crc(header: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(body);
    h.finalize()
}

/// The live frames of a segment, in order.
pub(super) fn read_live(file: &File, capacity: u64) -> std::io::Result<Vec<Frame>> {
    let mut frames = Vec::new();
    let mut at = 0u64;
    let mut pass = None;
    let mut header = [0u8; FRAME_HEADER];
    while at + FRAME_HEADER as u64 <= capacity {
        file.read_exact_at(&mut header, at)?;
        if &header[..4] != MAGIC {
            break;
        }
        let field = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b[..r.len()].copy_from_slice(&header[r]);
            u64::from_le_bytes(b)
        };
        let (this_pass, seq, len, crc) =
            (field(4..12), field(12..20), field(20..24), field(24..28));
        if *pass.get_or_insert(this_pass) != this_pass || at + FRAME_HEADER as u64 + len > capacity
        {
            break;
        }
        let mut body = vec![0u8; len as usize];
        file.read_exact_at(&mut body, at + FRAME_HEADER as u64)?;
        if u64::from(frame_crc(&header[4..24], &body)) != crc {
            break;
        }
        at += FRAME_HEADER as u64 + len;
        frames.push(Frame { seq, body });
    }
    Ok(frames)
}

/// Applies a frame's operations to sled; returns how many.
pub(super) fn apply(db: &sled::Db, mut body: &[u8]) -> Result<usize, StoreError> {
    let corrupt =
        || StoreError::Corrupt("a journal frame with a valid checksum does not parse".into());
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    }
    fn take_len(b: &mut &[u8]) -> Option<usize> {
        let raw: [u8; 4] = take(b, 4)?.try_into().ok()?;
        Some(u32::from_le_bytes(raw) as usize)
    }
    let mut trees: Vec<(Vec<u8>, sled::Tree)> = Vec::new();
    let mut n = 0;
    while !body.is_empty() {
        let op = *take(&mut body, 1)
            .ok_or_else(corrupt)?
            .first()
            .ok_or_else(corrupt)?;
        let name_len = *take(&mut body, 1)
            .ok_or_else(corrupt)?
            .first()
            .ok_or_else(corrupt)?;
        let name = take(&mut body, name_len as usize).ok_or_else(corrupt)?;
        let key_len = take_len(&mut body).ok_or_else(corrupt)?;
        let key = take(&mut body, key_len).ok_or_else(corrupt)?;
        let tree = match trees.iter().find(|(n, _)| n == name) {
            Some((_, t)) => t.clone(),
            None => {
                let t = db.open_tree(name)?;
                trees.push((name.to_vec(), t.clone()));
                t
            }
        };
        match op {
            PUT => {
                let value_len = take_len(&mut body).ok_or_else(corrupt)?;
                let value = take(&mut body, value_len).ok_or_else(corrupt)?;
                tree.insert(key, value)?;
            }
            REMOVE => {
                tree.remove(key)?;
            }
            _ => return Err(corrupt()),
        }
        n += 1;
    }
    Ok(n)
}
