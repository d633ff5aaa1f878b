//! One process per data directory, and who it is.
//!
//! `<data_dir>/lock` is held with `flock` by the gateway for as long as it
//! runs, and by a CLI command for as long as it works on the store
//! directly. The kernel releases it when the holder dies, even by
//! `kill -9`, so a crash never leaves a stale lock behind. The holder
//! writes its pid and role into the file, so a refusal can name it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the holder of a data directory is doing with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// `dataward run`.
    Gateway,
    /// A CLI command working on the store directly.
    Command,
}

/// Who holds a data directory, as far as its lock file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub role: Role,
}

impl Holder {
    /// Whether the named process still exists (it may be the holder).
    pub fn is_alive(&self) -> bool {
        let Ok(pid) = libc::pid_t::try_from(self.pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let rc = unsafe { libc::kill(pid, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the data directory {dir} is in use by {}", describe(.holder))]
    Held {
        dir: PathBuf,
        holder: Option<Holder>,
    },
    #[error("cannot lock the data directory {dir}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

fn describe(holder: &Option<Holder>) -> String {
    match holder {
        Some(Holder {
            pid,
            role: Role::Gateway,
        }) => format!("a running dataward gateway (pid {pid})"),
        Some(Holder {
            pid,
            role: Role::Command,
        }) => format!("a dataward command (pid {pid})"),
        None => "another dataward process".to_string(),
    }
}

/// Creates the data directory if needed, private to its user (0700), and
/// makes an existing one private too: it holds password hashes and history.
/// Files made inside it from then on are private as well (umask 077).
pub fn prepare_data_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    // SAFETY: umask only changes the process's file creation mask.
    unsafe { libc::umask(0o077) };
    Ok(())
}

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join("lock")
}

impl DataDirLock {
    /// Takes the lock without waiting. The directory must exist.
    pub fn try_acquire(dir: &Path, role: Role) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(lock_path(dir))
            .map_err(io)?;
        // SAFETY: flock on a file descriptor we own; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    holder: read_holder(&mut file),
                });
            }
            return Err(io(err));
        }
        let me = Holder {
            pid: std::process::id(),
            role,
        };
        let line = serde_json::to_string(&me).unwrap_or_default();
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(line.as_bytes()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(Self { _file: file })
    }

    /// Who holds the lock of `dir` now, if anyone does.
    pub fn holder(dir: &Path) -> Option<Holder> {
        let mut file = File::open(lock_path(dir)).ok()?;
        // SAFETY: as above; a shared probe that is dropped at once.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        if rc == 0 {
            // Nobody holds it: what the file says is left from a past run.
            // SAFETY: as above.
            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
            return None;
        }
        read_holder(&mut file)
    }
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(4096).read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_named_in_the_refusal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = DataDirLock::try_acquire(dir.path(), Role::Gateway).expect("first");
        // flock locks belong to the open file, so a second open in the same
        // process conflicts just as another process would.
        match DataDirLock::try_acquire(dir.path(), Role::Command) {
            Err(LockError::Held { holder, .. }) => assert_eq!(
                holder,
                Some(Holder {
                    pid: std::process::id(),
                    role: Role::Gateway
                })
            ),
            other => panic!("expected Held, got {other:?}"),
        }
        let holder = DataDirLock::holder(dir.path()).expect("held");
        assert_eq!(holder.role, Role::Gateway);
        assert!(holder.is_alive());
        assert!(!Holder {
            pid: i32::MAX as u32,
            role: Role::Gateway
        }
        .is_alive());
        drop(held);
        assert_eq!(DataDirLock::holder(dir.path()), None);
        let again = DataDirLock::try_acquire(dir.path(), Role::Command).expect("free again");
        drop(again);
    }
}
