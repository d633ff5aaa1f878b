//! Every policy ever applied, numbered, with its time, its source and its
//! exact text: the ledger names the version that decided each message, and
//! `policy show --version N` gives back what the user wrote.
//!
//! The policy in force is the latest version. Version numbers start at 1
//! and never repeat; 0 means "no policy yet" (nothing is shared).

use serde::{Deserialize, Serialize};

use super::StoreError;

/// Where a policy version came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PolicySource {
    /// The policy file named in the config, read at start or on SIGHUP.
    ConfigFile { path: String },
    /// `policy apply` (CLI, or later the web UI); `name` is what the user
    /// gave, e.g. the file name.
    Applied { name: String },
}

impl std::fmt::Display for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicySource::ConfigFile { path } => write!(f, "config file {path}"),
            PolicySource::Applied { name } => write!(f, "policy apply {name}"),
        }
    }
}

/// One stored version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    pub version: u64,
    pub applied_ms: u64,
    pub source: PolicySource,
    pub text: String,
}

/// The `policy_versions` tree: key = version (u64 BE), value = JSON.
pub struct PolicyVersions {
    tree: sled::Tree,
}

impl PolicyVersions {
    pub(super) fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            tree: db.open_tree("policy_versions")?,
        })
    }

    fn decode(v: &[u8]) -> Result<PolicyVersion, StoreError> {
        serde_json::from_slice(v)
            .map_err(|e| StoreError::Corrupt(format!("stored policy version: {e}")))
    }

    pub fn latest(&self) -> Result<Option<PolicyVersion>, StoreError> {
        self.tree.last()?.map(|(_, v)| Self::decode(&v)).transpose()
    }

    pub fn get(&self, version: u64) -> Result<Option<PolicyVersion>, StoreError> {
        self.tree
            .get(version.to_be_bytes())?
            .map(|v| Self::decode(&v))
            .transpose()
    }

    /// All versions, oldest first.
    pub fn list(&self) -> Result<Vec<PolicyVersion>, StoreError> {
        self.tree
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                Self::decode(&v)
            })
            .collect()
    }

    /// The newest version that was read from the config file at `path`.
    pub fn latest_from_file(&self, path: &str) -> Result<Option<PolicyVersion>, StoreError> {
        for kv in self.tree.iter().rev() {
            let (_, v) = kv?;
            let version = Self::decode(&v)?;
            if matches!(&version.source, PolicySource::ConfigFile { path: p } if p == path) {
                return Ok(Some(version));
            }
        }
        Ok(None)
    }

    /// Takes back a version whose storing failed half way.
    pub fn remove(&self, version: u64) -> Result<(), StoreError> {
        self.tree.remove(version.to_be_bytes())?;
        Ok(())
    }

    /// Stores `text` as the next version. Callers serialise appends (one
    /// applier at a time), so the number is not raced.
    pub fn append(
        &self,
        source: PolicySource,
        text: &str,
        applied_ms: u64,
    ) -> Result<PolicyVersion, StoreError> {
        let version = self.latest()?.map(|v| v.version + 1).unwrap_or(1);
        let record = PolicyVersion {
            version,
            applied_ms,
            source,
            text: text.to_string(),
        };
        let bytes = serde_json::to_vec(&record)
            .map_err(|e| StoreError::Corrupt(format!("encoding a policy version: {e}")))?;
        self.tree.insert(version.to_be_bytes(), bytes)?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn versions_are_numbered_kept_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            let pv = store.policy_versions().expect("tree");
            assert_eq!(pv.latest().expect("latest"), None);
            let file = PolicySource::ConfigFile {
                path: "/etc/p.toml".into(),
            };
            let v1 = pv.append(file.clone(), "a", 10).expect("append");
            let v2 = pv
                .append(PolicySource::Applied { name: "b".into() }, "b", 20)
                .expect("append");
            assert_eq!((v1.version, v2.version), (1, 2));
            assert_eq!(pv.latest_from_file("/etc/p.toml").expect("scan"), Some(v1));
            assert_eq!(pv.latest_from_file("/other").expect("scan"), None);
            store.flush().expect("flush");
        }
        let store = Store::open(dir.path()).expect("reopen");
        let pv = store.policy_versions().expect("tree");
        assert_eq!(
            pv.latest().expect("latest").map(|v| v.text),
            Some("b".into())
        );
        assert_eq!(pv.get(1).expect("get").map(|v| v.applied_ms), Some(10));
        assert_eq!(pv.list().expect("list").len(), 2);
        assert_eq!(
            pv.append(PolicySource::Applied { name: "c".into() }, "c", 30)
                .expect("append")
                .version,
            3
        );
    }
}
