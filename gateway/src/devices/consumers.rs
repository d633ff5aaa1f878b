//! Local consumers: apps on the home network (Home Assistant, say) with an
//! account on the hub's broker that reads one local destination's view and
//! nothing else. The view holds only what the policy shares with that
//! destination; a consumer never sees a device's own topics.
//!
//! A consumer's id is its MQTT username, from the same namespace as device
//! ids. Like a device's, its password is random, shown once, and kept only
//! as an Argon2id hash.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{check_id, hash_password, new_password, DeviceError, DeviceRegistry};
use crate::devices::Device;
use crate::store::StoreError;

/// A local consumer's account.
#[derive(Clone, Serialize, Deserialize)]
pub struct Consumer {
    pub id: String,
    /// The local destination whose view it reads.
    pub destination: String,
    pub password_hash: String,
    pub created_ms: u64,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("id", &self.id)
            .field("destination", &self.destination)
            .field("created_ms", &self.created_ms)
            .finish_non_exhaustive()
    }
}

/// Whoever logs in to the broker: a device or a local consumer.
#[derive(Debug, Clone)]
pub enum Account {
    Device(Arc<Device>),
    Consumer(Arc<Consumer>),
}

impl Account {
    pub fn id(&self) -> &str {
        match self {
            Account::Device(d) => &d.id,
            Account::Consumer(c) => &c.id,
        }
    }

    pub fn password_hash(&self) -> &str {
        match self {
            Account::Device(d) => &d.password_hash,
            Account::Consumer(c) => &c.password_hash,
        }
    }
}

pub(super) fn load(tree: &sled::Tree) -> Result<BTreeMap<String, Arc<Consumer>>, DeviceError> {
    let mut all = BTreeMap::new();
    for kv in tree.iter() {
        let (_, v) = kv.map_err(StoreError::from)?;
        let c: Consumer =
            serde_json::from_slice(&v).map_err(|e| DeviceError::Corrupt(e.to_string()))?;
        all.insert(c.id.clone(), Arc::new(c));
    }
    Ok(all)
}

impl DeviceRegistry {
    /// Registers a consumer of `destination`'s view and returns it with
    /// its one-time password. The caller checks that the destination is a
    /// local one.
    pub fn add_consumer(
        &self,
        id: &str,
        destination: &str,
        now_ms: u64,
    ) -> Result<(Consumer, Zeroizing<String>), DeviceError> {
        check_id(id)?;
        self.check_consumer_id_free(id)?;
        let password = new_password();
        let consumer = Consumer {
            id: id.to_string(),
            destination: destination.to_string(),
            password_hash: hash_password(password.as_bytes())?,
            created_ms: now_ms,
        };
        let _one_at_a_time = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        // Checked again under the lock: a device add may have raced.
        self.check_consumer_id_free(id)?;
        let bytes =
            serde_json::to_vec(&consumer).map_err(|e| DeviceError::Corrupt(e.to_string()))?;
        self.consumer_tree
            .insert(id.as_bytes(), bytes)
            .map_err(StoreError::from)?;
        self.consumers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(consumer.id.clone(), Arc::new(consumer.clone()));
        Ok((consumer, password))
    }

    fn check_consumer_id_free(&self, id: &str) -> Result<(), DeviceError> {
        if self.get(id).is_some() {
            return Err(DeviceError::IsDevice(id.to_string()));
        }
        if self.consumer(id).is_some() {
            return Err(DeviceError::ConsumerExists(id.to_string()));
        }
        Ok(())
    }

    pub fn remove_consumer(&self, id: &str) -> Result<Arc<Consumer>, DeviceError> {
        let _one_at_a_time = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(consumer) = self.consumer(id) else {
            return Err(DeviceError::ConsumerNotFound(id.to_string()));
        };
        self.consumer_tree
            .remove(id.as_bytes())
            .map_err(StoreError::from)?;
        self.consumers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        Ok(consumer)
    }

    pub fn consumer(&self, id: &str) -> Option<Arc<Consumer>> {
        self.consumers.read().ok().and_then(|c| c.get(id).cloned())
    }

    pub fn consumers(&self) -> Vec<Arc<Consumer>> {
        self.consumers
            .read()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The device or consumer that logs in as `username`.
    pub fn account(&self, username: &str) -> Option<Account> {
        self.get(username)
            .map(Account::Device)
            .or_else(|| self.consumer(username).map(Account::Consumer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::Preset;
    use crate::store::Store;

    #[test]
    fn consumers_and_devices_share_one_namespace_and_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let reg = DeviceRegistry::open(&store).expect("registry");
        reg.add("plug", "Plug", Preset::Tasmota, 1).expect("device");
        let (c, password) = reg
            .add_consumer("home-assistant", "home", 2)
            .expect("consumer");
        assert!(c.password_hash.starts_with("$argon2id$"));
        assert!(super::super::password_matches(
            &c.password_hash,
            password.as_bytes()
        ));
        assert!(!format!("{c:?}").contains("argon2"), "no hash in Debug");
        assert!(matches!(
            reg.add_consumer("plug", "home", 3),
            Err(DeviceError::IsDevice(_))
        ));
        assert!(matches!(
            reg.add("home-assistant", "HA", Preset::Generic, 3),
            Err(DeviceError::IsConsumer(_))
        ));
        assert!(matches!(
            reg.add_consumer("-x", "home", 3),
            Err(DeviceError::InvalidId(_))
        ));
        assert!(matches!(
            reg.account("home-assistant"),
            Some(Account::Consumer(_))
        ));
        assert!(matches!(reg.account("plug"), Some(Account::Device(_))));
        drop(reg);
        let reg = DeviceRegistry::open(&store).expect("reopen");
        assert_eq!(reg.consumers().len(), 1);
        assert_eq!(reg.list().len(), 1, "a consumer is not a device");
        reg.remove_consumer("home-assistant").expect("remove");
        assert!(reg.account("home-assistant").is_none());
        assert!(matches!(
            reg.remove_consumer("home-assistant"),
            Err(DeviceError::ConsumerNotFound(_))
        ));
    }

    #[test]
    fn no_device_may_take_the_local_views() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let reg = DeviceRegistry::open(&store).expect("registry");
        for (id, preset) in [
            ("local", Preset::Zigbee2mqtt),
            ("homeassistant", Preset::Zigbee2mqtt),
            ("local", Preset::Shelly),
        ] {
            assert!(
                matches!(
                    reg.add(id, "x", preset, 1),
                    Err(DeviceError::ReservedTopic { .. })
                ),
                "{id} {preset:?}"
            );
        }
        // One registered before the views existed still cannot use them.
        let old = Device {
            id: "local".into(),
            name: "old bridge".into(),
            preset: Preset::Zigbee2mqtt,
            publish: vec!["local/#".into()],
            subscribe: vec!["local/+/set".into()],
            password_hash: String::new(),
            created_ms: 0,
        };
        assert!(!old.may_publish("local/home/tele/plug/SENSOR"));
        assert!(!old.may_subscribe("local/home/set"));
        assert!(!old.may_subscribe("local/#"));
        // Nor does a cloud's command reach it there.
        assert!(!old.receives("local/home/set"));
    }
}
