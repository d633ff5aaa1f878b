//! Devices: identity, credentials and the topics each may use; and the
//! accounts of local consumers ([`consumers`]), which share the broker's
//! one namespace of usernames.
//!
//! A device is known by its credential, never by the topic it claims. The
//! password is random, shown once, and stored only as an Argon2id hash.

mod consumers;

pub use consumers::{Account, Consumer};

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{:?} does not make a valid device id: use letters, digits, '-' or '_' (at most 64), starting with a letter or digit", shown(.0))]
    InvalidId(String),
    #[error("the device name {:?} is not accepted: at most {MAX_NAME_CHARS} characters, and no control characters", shown(.0))]
    InvalidName(String),
    #[error("a device with id {0:?} already exists")]
    Exists(String),
    #[error("{0:?} is already the id of a local consumer; choose another")]
    IsConsumer(String),
    #[error("{0:?} is already the id of a device; choose another")]
    IsDevice(String),
    #[error("a local consumer with id {0:?} already exists")]
    ConsumerExists(String),
    #[error("no local consumer with id {0:?}")]
    ConsumerNotFound(String),
    #[error("device {id:?} would use topic {topic:?}, inside the hub's own local views ({reserved}); choose another id")]
    ReservedTopic {
        id: String,
        topic: String,
        reserved: String,
    },
    #[error("no device with id {0:?}")]
    NotFound(String),
    #[error("device {id:?} would use topic {ours:?}, which overlaps {theirs:?} of device {other:?}; choose another id")]
    TopicConflict {
        id: String,
        ours: String,
        other: String,
        theirs: String,
    },
    #[error("unknown preset {0:?}; presets: generic, tasmota, shelly, zigbee2mqtt")]
    UnknownPreset(String),
    #[error("hashing the credential failed: {0}")]
    Hash(String),
    #[error("a stored device record is unreadable: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The longest display name a device may have.
pub const MAX_NAME_CHARS: usize = 128;

/// A user-supplied string as an error message quotes it: cut short, so
/// that a huge input does not come back whole.
fn shown(s: &str) -> String {
    if s.chars().count() <= 80 {
        s.to_string()
    } else {
        let mut cut: String = s.chars().take(80).collect();
        cut.push('…');
        cut
    }
}

/// Topic conventions of common device firmware. `{id}` stands for the
/// device id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Generic,
    Tasmota,
    Shelly,
    Zigbee2mqtt,
}

impl Preset {
    pub fn parse(s: &str) -> Result<Self, DeviceError> {
        match s {
            "generic" => Ok(Preset::Generic),
            "tasmota" => Ok(Preset::Tasmota),
            "shelly" => Ok(Preset::Shelly),
            "zigbee2mqtt" => Ok(Preset::Zigbee2mqtt),
            other => Err(DeviceError::UnknownPreset(other.to_string())),
        }
    }

    /// Its name, as `parse` takes it and every face shows it.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Generic => "generic",
            Preset::Tasmota => "tasmota",
            Preset::Shelly => "shelly",
            Preset::Zigbee2mqtt => "zigbee2mqtt",
        }
    }

    /// (publish patterns, subscribe patterns)
    fn patterns(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Preset::Generic => (&["devices/{id}/#"], &["devices/{id}/cmd/#"]),
            Preset::Tasmota => (&["tele/{id}/#", "stat/{id}/#"], &["cmnd/{id}/#"]),
            Preset::Shelly => (
                &[
                    "shellies/{id}/#",
                    "{id}/events/#",
                    "{id}/status/#",
                    "{id}/online",
                ],
                &[
                    "shellies/{id}/+/+/command",
                    "shellies/{id}/command",
                    "{id}/rpc",
                ],
            ),
            // One bridge per home speaks for many Zigbee devices under its
            // base topic, which is the device id here.
            Preset::Zigbee2mqtt => (
                &["{id}/#"],
                &[
                    "{id}/+/set",
                    "{id}/+/set/#",
                    "{id}/+/get",
                    "{id}/bridge/request/#",
                ],
            ),
        }
    }
}

/// A registered device.
#[derive(Clone, Serialize, Deserialize)]
pub struct Device {
    pub id: String,
    pub name: String,
    pub preset: Preset,
    /// Topic filters the device may publish to.
    pub publish: Vec<String>,
    /// Topic filters the device may subscribe to.
    pub subscribe: Vec<String>,
    pub password_hash: String,
    pub created_ms: u64,
}

impl std::fmt::Debug for Device {
    // Everything but the password hash: an offline guess needs only that.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("preset", &self.preset)
            .field("publish", &self.publish)
            .field("subscribe", &self.subscribe)
            .field("created_ms", &self.created_ms)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// The hub's local views are never a device's, whatever its patterns
    /// (a device registered before they existed may have overlapping ones).
    pub fn may_publish(&self, topic: &str) -> bool {
        !crate::local::is_reserved(topic)
            && self
                .publish
                .iter()
                .any(|p| policy::topic::matches(p, topic))
    }

    pub fn may_subscribe(&self, filter: &str) -> bool {
        !crate::local::is_reserved(filter)
            && self
                .subscribe
                .iter()
                .any(|p| policy::topic::filter_within(filter, p))
    }

    /// Whether a message on `topic` would be delivered to this device if it
    /// subscribed to all it may: used to route a cloud command.
    pub fn receives(&self, topic: &str) -> bool {
        !crate::local::is_reserved(topic)
            && self
                .subscribe
                .iter()
                .any(|p| policy::topic::matches(p, topic))
    }

    /// Checks a password against the stored Argon2id hash. Deliberately
    /// slow (that is the point of Argon2): call it off the async runtime.
    pub fn verify_password(&self, password: &[u8]) -> bool {
        password_matches(&self.password_hash, password)
    }
}

/// An Argon2id hash of `password` with a fresh salt, in PHC string form.
pub fn hash_password(password: &[u8]) -> Result<String, DeviceError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| DeviceError::Hash(e.to_string()))
}

/// Whether `password` matches `hash` (PHC form); false for a hash that does
/// not parse. Deliberately slow: call it off the async runtime.
pub fn password_matches(hash: &str, password: &[u8]) -> bool {
    match PasswordHash::new(hash) {
        Ok(h) => Argon2::default().verify_password(password, &h).is_ok(),
        Err(_) => false,
    }
}

/// Turns a display name into a device id: `Living Room Plug` becomes
/// `living-room-plug`.
pub fn id_from_name(name: &str) -> Result<String, DeviceError> {
    let mut id = String::new();
    for c in name.trim().chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            id.push(c.to_ascii_lowercase());
        } else if !id.ends_with('-') && !id.is_empty() {
            id.push('-');
        }
    }
    let id = id.trim_end_matches('-').to_string();
    if policy::is_valid_name(&id) {
        Ok(id)
    } else {
        Err(DeviceError::InvalidId(name.to_string()))
    }
}

/// An id for a device or a consumer (an MQTT username): a valid name,
/// and no leading '-', which would read as an option on the command line.
fn check_id(id: &str) -> Result<(), DeviceError> {
    if !policy::is_valid_name(id) || id.starts_with('-') {
        return Err(DeviceError::InvalidId(id.to_string()));
    }
    Ok(())
}

/// A fresh random password: 24 bytes from the OS RNG, base64url (32 chars).
fn new_password() -> Zeroizing<String> {
    use base64::Engine;
    let mut raw = Zeroizing::new([0u8; 24]);
    rand::rngs::OsRng.fill_bytes(raw.as_mut());
    Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref()))
}

/// The devices tree plus an in-memory copy for the broker's hot path.
pub struct DeviceRegistry {
    tree: sled::Tree,
    cache: RwLock<BTreeMap<String, Arc<Device>>>,
    consumer_tree: sled::Tree,
    consumers: RwLock<BTreeMap<String, Arc<Consumer>>>,
    /// Adds and removes one at a time, so the existence and overlap checks
    /// still hold when the record is written (the control socket serves
    /// several requests at once).
    changes: std::sync::Mutex<()>,
}

impl DeviceRegistry {
    pub fn open(store: &Store) -> Result<Self, DeviceError> {
        let tree = store.tree("devices")?;
        let mut cache = BTreeMap::new();
        for kv in tree.iter() {
            let (_, v) = kv.map_err(StoreError::from)?;
            let d: Device =
                serde_json::from_slice(&v).map_err(|e| DeviceError::Corrupt(e.to_string()))?;
            cache.insert(d.id.clone(), Arc::new(d));
        }
        let consumer_tree = store.tree("consumers")?;
        let consumers = consumers::load(&consumer_tree)?;
        Ok(Self {
            tree,
            cache: RwLock::new(cache),
            consumer_tree,
            consumers: RwLock::new(consumers),
            changes: std::sync::Mutex::new(()),
        })
    }

    /// Registers a device and returns it with its one-time password.
    pub fn add(
        &self,
        id: &str,
        name: &str,
        preset: Preset,
        now_ms: u64,
    ) -> Result<(Device, Zeroizing<String>), DeviceError> {
        check_id(id)?;
        if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(DeviceError::InvalidName(name.to_string()));
        }
        self.check_free(id)?;
        // Hashing is slow, so it runs before the lock; the checks that
        // matter are repeated under it.
        let password = new_password();
        let hash = hash_password(password.as_bytes())?;
        let (publish, subscribe) = preset.patterns();
        let fill = |ps: &[&str]| ps.iter().map(|p| p.replace("{id}", id)).collect::<Vec<_>>();
        let device = Device {
            id: id.to_string(),
            name: name.to_string(),
            preset,
            publish: fill(publish),
            subscribe: fill(subscribe),
            password_hash: hash,
            created_ms: now_ms,
        };
        let _one_at_a_time = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        self.check_free(id)?;
        for ours in device.publish.iter().chain(&device.subscribe) {
            if crate::local::is_reserved(ours) {
                return Err(DeviceError::ReservedTopic {
                    id: device.id.clone(),
                    topic: ours.clone(),
                    reserved: crate::local::RESERVED_FILTERS.join(", "),
                });
            }
        }
        // Topic spaces must not touch: otherwise one device could publish
        // into another's topics (e.g. a zigbee2mqtt bridge with id
        // "devices" would cover every generic device's command topics).
        for other in self.list() {
            for ours in device.publish.iter().chain(&device.subscribe) {
                for theirs in other.publish.iter().chain(&other.subscribe) {
                    if policy::topic::filters_overlap(ours, theirs) {
                        return Err(DeviceError::TopicConflict {
                            id: device.id.clone(),
                            ours: ours.clone(),
                            other: other.id.clone(),
                            theirs: theirs.clone(),
                        });
                    }
                }
            }
        }
        let bytes = serde_json::to_vec(&device).map_err(|e| DeviceError::Corrupt(e.to_string()))?;
        self.tree
            .insert(id.as_bytes(), bytes)
            .map_err(StoreError::from)?;
        self.cache_mut()
            .insert(device.id.clone(), Arc::new(device.clone()));
        Ok((device, password))
    }

    pub fn remove(&self, id: &str) -> Result<(), DeviceError> {
        let _one_at_a_time = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        if self
            .tree
            .remove(id.as_bytes())
            .map_err(StoreError::from)?
            .is_none()
        {
            return Err(DeviceError::NotFound(id.to_string()));
        }
        self.cache_mut().remove(id);
        Ok(())
    }

    /// Device ids and consumer ids are one namespace: both are MQTT
    /// usernames.
    fn check_free(&self, id: &str) -> Result<(), DeviceError> {
        if self.get(id).is_some() {
            return Err(DeviceError::Exists(id.to_string()));
        }
        if self.consumer(id).is_some() {
            return Err(DeviceError::IsConsumer(id.to_string()));
        }
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<Arc<Device>> {
        self.cache.read().ok().and_then(|c| c.get(id).cloned())
    }

    pub fn list(&self) -> Vec<Arc<Device>> {
        self.cache
            .read()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The devices a message on local `topic` would reach.
    pub fn receivers_of(&self, topic: &str) -> Vec<Arc<Device>> {
        self.list()
            .into_iter()
            .filter(|d| d.receives(topic))
            .collect()
    }

    fn cache_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Device>>> {
        // A poisoned lock only means another thread panicked mid-insert of a
        // complete value; the map itself is still consistent.
        self.cache.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_names() {
        assert_eq!(
            id_from_name("Living Room Plug").unwrap(),
            "living-room-plug"
        );
        assert_eq!(id_from_name("  thermo_1 ").unwrap(), "thermo_1");
        assert!(id_from_name("!!!").is_err());
        assert!(id_from_name(&"x".repeat(65)).is_err());
        let huge = id_from_name(&"!".repeat(100_000)).expect_err("no id");
        assert!(
            huge.to_string().len() < 300,
            "the error does not echo it all"
        );
    }

    #[test]
    fn credentials_are_random_hashed_and_verified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let reg = DeviceRegistry::open(&store).expect("registry");
        let (d1, p1) = reg.add("plug", "Plug", Preset::Tasmota, 1).expect("add");
        let (_, p2) = reg.add("plug2", "Plug 2", Preset::Tasmota, 1).expect("add");
        assert_ne!(*p1, *p2);
        assert!(!d1.password_hash.contains(p1.as_str()));
        assert!(d1.password_hash.starts_with("$argon2id$"));
        assert!(!format!("{d1:?}").contains("argon2"), "no hash in Debug");
        assert!(d1.verify_password(p1.as_bytes()));
        assert!(!d1.verify_password(p2.as_bytes()));
        assert!(matches!(
            reg.add("plug", "again", Preset::Generic, 1),
            Err(DeviceError::Exists(_))
        ));
        assert!(d1.may_publish("tele/plug/SENSOR"));
        assert!(!d1.may_publish("tele/plug2/SENSOR"));
        assert!(d1.may_subscribe("cmnd/plug/POWER"));
        assert!(!d1.may_subscribe("cmnd/#"));
        assert!(!d1.may_subscribe("#"));
        // A zigbee2mqtt bridge named "tele" would cover every Tasmota's
        // telemetry topics.
        assert!(matches!(
            reg.add("tele", "Bridge", Preset::Zigbee2mqtt, 1),
            Err(DeviceError::TopicConflict { .. })
        ));
        drop(reg);
        let reg = DeviceRegistry::open(&store).expect("reopen");
        assert_eq!(reg.list().len(), 2);
        reg.remove("plug").expect("remove");
        assert!(reg.get("plug").is_none());
        for bad in [
            "a\0b",
            "line\nbreak",
            "\u{1b}[2J",
            &"n".repeat(MAX_NAME_CHARS + 1),
        ] {
            assert!(
                matches!(
                    reg.add("named", bad, Preset::Generic, 1),
                    Err(DeviceError::InvalidName(_))
                ),
                "{bad:?}"
            );
        }
        // Concurrent adds of one id: exactly one wins.
        let reg = Arc::new(reg);
        let racers: Vec<_> = (0..4)
            .map(|_| {
                let reg = Arc::clone(&reg);
                std::thread::spawn(move || reg.add("twin", "Twin", Preset::Generic, 1).is_ok())
            })
            .collect();
        let wins = racers
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .filter(|won| *won)
            .count();
        assert_eq!(wins, 1, "one add of an id succeeds");
        assert!(matches!(reg.remove("plug"), Err(DeviceError::NotFound(_))));
    }
}
