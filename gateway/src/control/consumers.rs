//! Local consumer operations: add, list, remove. A consumer reads one local
//! destination's view on the hub's broker; while the gateway runs, a new
//! one can connect at once and a removed one is disconnected at once.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{now_ms, OpError, Operations};
use crate::devices::Consumer;
use crate::local::LocalAccess;

/// A consumer as every face shows it: never its credential or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerInfo {
    pub id: String,
    /// The MQTT username: the id.
    pub username: String,
    pub destination: String,
    /// Topic filters it may subscribe to.
    pub subscribe: Vec<String>,
    pub created_ms: u64,
}

/// A new consumer and its password, which is shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedConsumer {
    #[serde(flatten)]
    pub consumer: ConsumerInfo,
    pub password: String,
    /// Whether its destination announces fields to Home Assistant.
    pub discovery: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedConsumer {
    pub id: String,
    /// Sessions that were ended (0 with the gateway stopped).
    pub sessions_closed: usize,
}

impl Operations {
    /// What the broker lets this config's consumers do.
    fn local_access(&self) -> LocalAccess {
        LocalAccess::from_config(&self.config.destinations)
    }

    fn consumer_info(&self, c: &Consumer, access: &LocalAccess) -> ConsumerInfo {
        ConsumerInfo {
            id: c.id.clone(),
            username: c.id.clone(),
            destination: c.destination.clone(),
            subscribe: access.filters(&c.destination),
            created_ms: c.created_ms,
        }
    }

    /// The local destination a new consumer reads: the one named, which
    /// must be local, or the only local one.
    fn local_destination(&self, named: Option<&str>) -> Result<String, OpError> {
        let local: Vec<&str> = self
            .config
            .destinations
            .iter()
            .filter(|d| d.is_local())
            .map(|d| d.name.as_str())
            .collect();
        match named {
            Some(n) if local.contains(&n) => Ok(n.to_string()),
            Some(n) if self.config.destinations.iter().any(|d| d.name == n) => Err(
                OpError::input(format!(
                    "destination {n:?} is not local: a consumer reads a destination of kind = \"local\""
                )),
            ),
            Some(n) => Err(OpError::input(format!(
                "no destination {n:?} in the config; local destinations: {}",
                names_or_none(&local)
            ))),
            None => match local.as_slice() {
                [only] => Ok(only.to_string()),
                [] => Err(OpError::input(
                    "the config has no local destination: add a [[destination]] with kind = \"local\" first (see docs/home-assistant.md)",
                )),
                several => Err(OpError::input(format!(
                    "name the destination it reads (--destination): {}",
                    several.join(", ")
                ))),
            },
        }
    }

    pub async fn consumer_add(
        &self,
        id: &str,
        destination: Option<&str>,
    ) -> Result<AddedConsumer, OpError> {
        let destination = self.local_destination(destination)?;
        let registry = Arc::clone(self.registry()?);
        let (id_owned, dest) = (id.to_string(), destination.clone());
        // Argon2 hashing: off the runtime that serves devices.
        let (consumer, password) =
            tokio::task::spawn_blocking(move || registry.add_consumer(&id_owned, &dest, now_ms()))
                .await
                .map_err(|e| OpError::runtime(format!("consumer add task failed: {e}")))??;
        self.flush().await?;
        tracing::info!(consumer = %consumer.id, %destination, "local consumer added");
        self.record(crate::ledger::EntryBody::ConsumerAdded {
            consumer: consumer.id.clone(),
            destination,
        })
        .await;
        let access = self.local_access();
        Ok(AddedConsumer {
            consumer: self.consumer_info(&consumer, &access),
            password: password.as_str().to_string(),
            discovery: access.announces(&consumer.destination),
        })
    }

    pub fn consumer_list(&self) -> Result<Vec<ConsumerInfo>, OpError> {
        let access = self.local_access();
        Ok(self
            .registry
            .as_ref()
            .map(|r| {
                r.consumers()
                    .iter()
                    .map(|c| self.consumer_info(c, &access))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Forgets the consumer's credential, then ends its sessions, so that it
    /// cannot log straight back in.
    pub async fn consumer_remove(&self, id: &str) -> Result<RemovedConsumer, OpError> {
        let registry = self.registry()?;
        let consumer = registry.remove_consumer(id)?;
        let sessions_closed = match &self.live {
            Some(live) => live.broker.disconnect_device(id).await,
            None => 0,
        };
        self.flush().await?;
        self.record(crate::ledger::EntryBody::ConsumerRemoved {
            consumer: id.to_string(),
            destination: consumer.destination.clone(),
        })
        .await;
        tracing::info!(consumer = %id, sessions_closed, "local consumer removed");
        Ok(RemovedConsumer {
            id: id.to_string(),
            sessions_closed,
        })
    }
}

fn names_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}
