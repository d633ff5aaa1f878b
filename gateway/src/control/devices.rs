//! Device operations: add, list, show, remove. While the gateway runs, an
//! added device can connect at once (the broker reads the same registry),
//! and a removed one is disconnected at once.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{now_ms, OpError, Operations};
use crate::devices::{id_from_name, Device, DeviceError, Preset};

/// A device as every face shows it: never its credential or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub id: String,
    pub name: String,
    pub preset: Preset,
    /// The MQTT username: the id.
    pub username: String,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    pub created_ms: u64,
}

/// What the running gateway knows of a device's activity (from memory:
/// it starts again at each start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceActivity {
    pub id: String,
    /// A live connection now.
    pub online: bool,
    /// Its last message since the gateway started.
    pub last_seen_ms: Option<u64>,
    /// Messages today (UTC), since the gateway started.
    pub messages_today: u64,
}

impl From<&Device> for DeviceInfo {
    fn from(d: &Device) -> Self {
        Self {
            id: d.id.clone(),
            name: d.name.clone(),
            preset: d.preset,
            username: d.id.clone(),
            publish: d.publish.clone(),
            subscribe: d.subscribe.clone(),
            created_ms: d.created_ms,
        }
    }
}

/// A new device and its password, which is shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedDevice {
    #[serde(flatten)]
    pub device: DeviceInfo,
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedDevice {
    pub id: String,
    /// Live or offline sessions that were ended (0 with the gateway stopped).
    pub sessions_closed: usize,
    /// Retained messages on the device's topics that were dropped.
    pub retained_dropped: usize,
}

impl Operations {
    pub async fn device_add(
        &self,
        name: &str,
        id: Option<&str>,
        preset: &str,
    ) -> Result<AddedDevice, OpError> {
        let preset = Preset::parse(preset)?;
        let id = match id {
            Some(id) => id.to_string(),
            None => id_from_name(name)?,
        };
        let registry = Arc::clone(self.registry()?);
        let name = name.to_string();
        // Argon2 hashing takes tens of milliseconds of CPU: off the runtime
        // that serves devices.
        let (device, password) =
            tokio::task::spawn_blocking(move || registry.add(&id, &name, preset, now_ms()))
                .await
                .map_err(|e| OpError::runtime(format!("device add task failed: {e}")))??;
        self.flush().await?;
        tracing::info!(device = %device.id, "device added");
        self.record(crate::ledger::EntryBody::DeviceAdded {
            device: device.id.clone(),
            name: device.name.clone(),
        })
        .await;
        Ok(AddedDevice {
            device: DeviceInfo::from(&device),
            password: password.as_str().to_string(),
        })
    }

    pub fn device_list(&self) -> Result<Vec<DeviceInfo>, OpError> {
        match &self.registry {
            Some(r) => Ok(r.list().iter().map(|d| DeviceInfo::from(&**d)).collect()),
            // No data directory: no device was ever added.
            None => Ok(Vec::new()),
        }
    }

    pub fn device_show(&self, id: &str) -> Result<DeviceInfo, OpError> {
        let device = self
            .registry
            .as_ref()
            .and_then(|r| r.get(id))
            .ok_or_else(|| DeviceError::NotFound(id.to_string()))?;
        Ok(DeviceInfo::from(&*device))
    }

    /// Every device's activity; none with the gateway stopped (it is
    /// known only to the running gateway's memory).
    pub fn device_activity(&self) -> Result<Vec<DeviceActivity>, OpError> {
        let (Some(live), Some(registry)) = (&self.live, &self.registry) else {
            return Ok(Vec::new());
        };
        let now = crate::pipeline::now_ms();
        Ok(registry
            .list()
            .iter()
            .map(|d| {
                let activity = live.pipeline.last_seen.activity(&d.id, now);
                DeviceActivity {
                    id: d.id.clone(),
                    online: live.broker.is_online(&d.id),
                    last_seen_ms: activity.map(|a| a.0),
                    messages_today: activity.map_or(0, |a| a.1),
                }
            })
            .collect())
    }

    /// Forgets the device's credential, then ends its sessions (so it cannot
    /// log straight back in) and drops what the broker holds for it. Its
    /// history stays until it is deleted.
    pub async fn device_remove(&self, id: &str) -> Result<RemovedDevice, OpError> {
        let registry = self.registry()?;
        let device = registry
            .get(id)
            .ok_or_else(|| DeviceError::NotFound(id.to_string()))?;
        // Forgotten first, so that it cannot log back in; its sessions end
        // before the flush, so the disk's pace does not keep them open.
        registry.remove(id)?;
        let (sessions_closed, retained_dropped) = match &self.live {
            Some(live) => (
                live.broker.disconnect_device(id).await,
                live.broker.drop_retained(&device.publish).await,
            ),
            None => (0, 0),
        };
        // After its sessions ended, so that no message in flight brings its
        // fields or windows back. A device added again under this id
        // starts with every field new.
        self.forget_fields(Some(id))?;
        self.flush().await?;
        self.record(crate::ledger::EntryBody::DeviceRemoved {
            device: id.to_string(),
        })
        .await;
        tracing::info!(device = %id, sessions_closed, retained_dropped, "device removed");
        Ok(RemovedDevice {
            id: id.to_string(),
            sessions_closed,
            retained_dropped,
        })
    }
}
