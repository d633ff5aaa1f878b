//! The quarantine's approvals: `fields` (what each device sends; a field a
//! device never sent before is held from every wildcard rule until the
//! user approves it) and `destinations` (one added to the config after the
//! first start gets nothing from `destination = "*"` rules until
//! approved).

use serde::{Deserialize, Serialize};

use super::{OpError, Operations};
use crate::store::{ApproveOutcome, FieldInfo};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldList {
    pub fields: Vec<FieldInfo>,
    /// Samples and counts come from the running gateway's memory only.
    pub running: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationApproval {
    pub name: String,
    /// Rules for every destination (`*`) reach it.
    pub approved: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldsApproved {
    pub device: String,
    pub approved: Vec<String>,
}

impl Operations {
    pub fn fields_list(&self, device: Option<&str>, pending: bool) -> Result<FieldList, OpError> {
        let fields = match &self.store {
            Some(store) => store.fields().list(device, pending),
            None => Vec::new(),
        };
        Ok(FieldList {
            fields,
            running: self.live.is_some(),
        })
    }

    /// Approves one held field of `device`, or all of them.
    pub async fn fields_approve(
        &self,
        device: &str,
        field: Option<&str>,
    ) -> Result<FieldsApproved, OpError> {
        let inventory = self.store()?.fields();
        let approved = match field {
            None => inventory.approve_all(device)?,
            Some(name) => match inventory.approve(device, name)? {
                ApproveOutcome::Approved => vec![name.to_string()],
                ApproveOutcome::AlreadyApproved => Vec::new(),
                ApproveOutcome::Unknown => {
                    let held: Vec<String> = inventory
                        .list(Some(device), true)
                        .into_iter()
                        .map(|f| f.field)
                        .collect();
                    return Err(OpError::input(format!(
                        "{device:?} has not sent a field {name:?}{}",
                        if held.is_empty() {
                            " (it has no held fields)".to_string()
                        } else {
                            format!("; its held fields: {}", held.join(", "))
                        }
                    )));
                }
            },
        };
        self.flush().await?;
        if !approved.is_empty() {
            tracing::info!(device = %device, fields = approved.len(), "fields approved");
            self.record(crate::ledger::EntryBody::FieldsApproved {
                device: device.to_string(),
                fields: approved.clone(),
            })
            .await;
        }
        Ok(FieldsApproved {
            device: device.to_string(),
            approved,
        })
    }

    /// The configured destinations and whether `*` rules reach them.
    pub fn destinations_list(&self) -> Result<Vec<DestinationApproval>, OpError> {
        let approvals = self.store.as_ref().map(|s| s.destinations());
        Ok(self
            .config
            .destination_names()
            .into_iter()
            .map(|name| DestinationApproval {
                approved: approvals.as_ref().is_none_or(|a| a.is_approved(&name)),
                name,
            })
            .collect())
    }

    /// Lets rules for every destination reach `name`, from the next
    /// message on.
    pub async fn destination_approve(&self, name: &str) -> Result<DestinationApproval, OpError> {
        if !self.config.destination_names().iter().any(|n| n == name) {
            return Err(OpError::input(format!(
                "{name:?} is not a configured destination (configured: {})",
                self.config.destination_names().join(", ")
            )));
        }
        if self.store()?.destinations().approve(name)? {
            self.flush().await?;
            tracing::info!(destination = %name, "destination approved for rules that name every destination");
            self.record(crate::ledger::EntryBody::DestinationApproved {
                destination: name.to_string(),
            })
            .await;
        }
        Ok(DestinationApproval {
            name: name.to_string(),
            approved: true,
        })
    }

    /// Forgets what is known of `device`'s fields, on disk and in the
    /// running pipeline's memory (samples, open windows, last message).
    pub(super) fn forget_fields(&self, device: Option<&str>) -> Result<u64, OpError> {
        let inventory = self.store()?.fields();
        let n = match device {
            Some(d) => inventory.forget_device(d)? as u64,
            None => {
                let n = inventory.list(None, false).len() as u64;
                inventory.forget_all()?;
                n
            }
        };
        if let Some(live) = &self.live {
            match device {
                Some(d) => live.pipeline.forget_device(d),
                None => {
                    for d in self.registry()?.list() {
                        live.pipeline.forget_device(&d.id);
                    }
                }
            }
        }
        Ok(n)
    }
}
