//! The operations layer: the one place that implements what a user can ask
//! of dataward. The CLI, the control socket and (later) the HTTP API are
//! thin faces over [`Operations`], so every request gives the same answer
//! whichever face it came through, with the gateway running or stopped.
//!
//! - [`protocol`]: requests, and the framed protocol of the control socket.
//! - [`lock`]: one process per data directory, named when it refuses.
//! - [`server`]: the control socket a running gateway serves.
//! - [`client`]: the CLI side: through the socket when a gateway runs,
//!   on the store directly when none does.
//! - `devices`, `consumers`, `policy`, `quarantine`, `ledger`, `status`, `keys`,
//!   `export`, `erase`: the operations themselves.

pub mod client;
mod consumers;
mod devices;
mod erase;
mod export;
mod export_csv;
mod keys;
mod ledger;
pub mod lock;
mod policy;
pub mod protocol;
mod quarantine;
pub mod server;
mod status;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::broker::Broker;
use crate::config::Config;
use crate::devices::{DeviceError, DeviceRegistry};
use crate::pipeline::Pipeline;
use crate::store::{Outbox, Store, StoreError};
use crate::uplink::LinkState;

pub use consumers::{AddedConsumer, ConsumerInfo, RemovedConsumer};
pub use devices::{AddedDevice, DeviceActivity, DeviceInfo, RemovedDevice};
pub use erase::DeleteReport;
pub use export::{ndjson_line, ExportFormat, ExportRequest, ExportSummary};
pub use keys::{InitReport, Passphrase, PassphraseChanged};
pub use ledger::{LedgerListing, Received, ReceivedDevice, ReceivedField};
pub use policy::policy_at_start;
pub use policy::{
    AppliedPolicy, CheckedPolicy, FieldPreview, PolicyPreview, PolicyVersionInfo, PreviewOutput,
};
pub use protocol::Request;
pub use quarantine::{DestinationApproval, FieldList, FieldsApproved};
pub use status::{DestinationStatus, StatusReport};

/// Whether a failed request was the user's doing (exit code 2) or not (1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Bad input: a wrong id, an invalid policy, an unknown preset.
    Input,
    /// Something failed that the request could not help: the disk, the
    /// socket, a busy data directory.
    Runtime,
    /// The gateway is serving as many requests as it takes: try again soon
    /// (the CLI does, for a while).
    Busy,
}

/// A refused or failed request, as every face reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct OpError {
    pub class: ErrorClass,
    pub message: String,
}

impl OpError {
    pub fn input(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Input,
            message: message.into(),
        }
    }

    pub fn runtime(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Runtime,
            message: message.into(),
        }
    }
}

/// An error and its causes in one line, as anyhow's `{:#}` writes them.
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::runtime(with_causes(&e))
    }
}

impl From<DeviceError> for OpError {
    fn from(e: DeviceError) -> Self {
        match e {
            DeviceError::Store(s) => s.into(),
            DeviceError::Hash(_) | DeviceError::Corrupt(_) => OpError::runtime(with_causes(&e)),
            _ => OpError::input(e.to_string()),
        }
    }
}

/// One destination of a running gateway, as status sees it.
pub struct LinkHandle {
    pub name: String,
    pub state: Arc<LinkState>,
    pub outbox: Arc<Outbox>,
}

/// The parts of a running gateway that requests act on.
pub struct Live {
    pub broker: Arc<Broker>,
    pub pipeline: Arc<Pipeline>,
    pub links: Vec<LinkHandle>,
    pub started: std::time::Instant,
}

/// The operations, over a store and, while the gateway runs, over the
/// running parts.
pub struct Operations {
    config: Config,
    /// `None` when there is no data directory yet: read-only requests then
    /// answer from nothing, and never create one.
    store: Option<Store>,
    registry: Option<Arc<DeviceRegistry>>,
    live: Option<Live>,
    /// One policy change at a time: version numbers are not raced, and the
    /// store and the pipeline change in the same order.
    policy_changes: tokio::sync::Mutex<()>,
}

impl Operations {
    /// For a CLI command with no gateway running.
    pub fn offline(config: Config, store: Option<Store>) -> Result<Self, OpError> {
        let registry = match &store {
            Some(s) => Some(Arc::new(DeviceRegistry::open(s)?)),
            None => None,
        };
        Ok(Self {
            config,
            store,
            registry,
            live: None,
            policy_changes: Default::default(),
        })
    }

    /// For the running gateway.
    pub fn running(
        config: Config,
        store: Store,
        registry: Arc<DeviceRegistry>,
        live: Live,
    ) -> Self {
        Self {
            config,
            store: Some(store),
            registry: Some(registry),
            live: Some(live),
            policy_changes: Default::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn store(&self) -> Result<&Store, OpError> {
        self.store.as_ref().ok_or_else(|| {
            OpError::runtime(with_causes(&StoreError::Missing(
                self.config.data_dir.display().to_string(),
            )))
        })
    }

    fn registry(&self) -> Result<&Arc<DeviceRegistry>, OpError> {
        self.store()?;
        self.registry
            .as_ref()
            .ok_or_else(|| OpError::runtime("the device registry is not open"))
    }

    /// Makes what was just written durable. Off the async runtime: a flush
    /// waits for the disk.
    async fn flush(&self) -> Result<(), OpError> {
        let store = self.store()?.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| OpError::runtime(format!("flush task failed: {e}")))??;
        Ok(())
    }

    /// Answers one request that is not streamed, as JSON.
    pub async fn call(&self, request: Request) -> Result<serde_json::Value, OpError> {
        fn json<T: Serialize>(v: T) -> Result<serde_json::Value, OpError> {
            serde_json::to_value(v).map_err(|e| OpError::runtime(format!("encoding a reply: {e}")))
        }
        match request {
            Request::Status => json(self.status()?),
            Request::DeviceAdd { name, id, preset } => {
                json(self.device_add(&name, id.as_deref(), &preset).await?)
            }
            Request::DeviceList => json(self.device_list()?),
            Request::DeviceActivity => json(self.device_activity()?),
            Request::DeviceShow { id } => json(self.device_show(&id)?),
            Request::DeviceRemove { id } => json(self.device_remove(&id).await?),
            Request::ConsumerAdd { id, destination } => {
                json(self.consumer_add(&id, destination.as_deref()).await?)
            }
            Request::ConsumerList => json(self.consumer_list()?),
            Request::ConsumerRemove { id } => json(self.consumer_remove(&id).await?),
            Request::PolicyCheck { text, name } => json(self.policy_check(&text, &name)?),
            Request::PolicyApply { text, name } => json(self.policy_apply(&text, &name).await?),
            Request::PolicyShow { policy_version } => json(self.policy_show(policy_version)?),
            Request::PolicyVersions => json(self.policy_versions()?),
            Request::PolicyPreview {
                device,
                topic,
                payload,
                candidate,
                last,
            } => {
                let (topic, payload) = if last {
                    let live = self.live.as_ref().ok_or_else(|| {
                        OpError::input(
                            "--last needs the gateway running: the last message is kept in its memory only, never on disk",
                        )
                    })?;
                    let (t, p) = live.pipeline.last_seen.get(&device).ok_or_else(|| {
                        OpError::input(format!(
                            "no message from {device:?} since the gateway started"
                        ))
                    })?;
                    (Some(topic.unwrap_or(t)), p)
                } else {
                    (topic, payload.into_bytes())
                };
                json(self.policy_preview(
                    &device,
                    topic.as_deref(),
                    &payload,
                    candidate.as_deref(),
                )?)
            }
            Request::KeyRecord => self.key_record(),
            Request::Fields { device, pending } => {
                json(self.fields_list(device.as_deref(), pending)?)
            }
            Request::FieldsApprove { device, field } => {
                json(self.fields_approve(&device, field.as_deref()).await?)
            }
            Request::Destinations => json(self.destinations_list()?),
            Request::DestinationApprove { name } => json(self.destination_approve(&name).await?),
            Request::Delete {
                device,
                since_ms,
                until_ms,
                passphrase,
            } => json(
                self.delete(&device, since_ms, until_ms, &passphrase)
                    .await?,
            ),
            Request::Wipe {
                factory,
                passphrase,
            } => json(self.wipe(factory, &passphrase).await?),
            Request::Export { .. } => Err(OpError::runtime(
                "export is streamed; it has no single reply",
            )),
            blocking => self.call_blocking(blocking),
        }
    }

    /// Answers a request that holds a thread for a while (Argon2id, or a
    /// pass over the history): the server runs it off the async runtime.
    pub fn call_blocking(&self, request: Request) -> Result<serde_json::Value, OpError> {
        fn json<T: Serialize>(v: T) -> Result<serde_json::Value, OpError> {
            serde_json::to_value(v).map_err(|e| OpError::runtime(format!("encoding a reply: {e}")))
        }
        match request {
            Request::Init { passphrase } => json(self.init(&passphrase)?),
            Request::PassphraseChange { old, new } => json(self.passphrase_change(&old, &new)?),
            Request::PassphraseReset { recovery_key, new } => {
                json(self.passphrase_reset(&recovery_key, &new)?)
            }
            Request::Ledger {
                since_ms,
                destination,
                device,
            } => json(self.ledger_list(
                since_ms.unwrap_or(0),
                destination.as_deref(),
                device.as_deref(),
            )?),
            Request::LedgerVerify => json(self.ledger_verify()?),
            Request::LedgerSummary { since_ms } => {
                json(self.ledger_summary(since_ms.unwrap_or(0))?)
            }
            Request::LedgerReceived {
                destination,
                since_ms,
            } => json(self.ledger_received(&destination, since_ms.unwrap_or(0))?),
            Request::Statement { json_ld: false } => json(self.statement()?),
            Request::Statement { json_ld: true } => Ok(self.statement()?.to_json_ld()),
            _ => Err(OpError::runtime("not a blocking request")),
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    crate::pipeline::now_ms()
}

tokio::task_local! {
    /// Who a request came from, as the ledger records it.
    pub(crate) static ACTOR: String;
}

/// Who is asking: the control socket's peer, or this command line.
pub(crate) fn actor() -> String {
    ACTOR.try_with(Clone::clone).unwrap_or_else(|_| {
        // SAFETY: geteuid has no failure mode and touches no memory.
        let uid = unsafe { libc::geteuid() };
        format!("command line, uid {uid}")
    })
}

impl Operations {
    /// Records an act of control that already happened, and makes it
    /// durable; a failure is logged (the act stands).
    pub(crate) async fn record(&self, body: crate::ledger::EntryBody) {
        let Ok(store) = self.store() else {
            return;
        };
        store.ledger().note(body);
        if let Err(e) = self.flush().await {
            tracing::error!(error = %e.message, "a ledger event could not be flushed");
        }
    }
}
