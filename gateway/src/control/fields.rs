//! `fields`: what each device sends, and the quarantine's approvals. A
//! field a device never sent before is held from every wildcard rule until
//! the user approves it here.

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
            None => {
                let held: Vec<String> = inventory
                    .list(Some(device), true)
                    .into_iter()
                    .map(|f| f.field)
                    .collect();
                inventory.approve_all(device)?;
                held
            }
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
        }
        Ok(FieldsApproved {
            device: device.to_string(),
            approved,
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
