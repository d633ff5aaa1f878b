//! Policy operations: check, apply, show, versions and preview, and the
//! policy file read at start and on SIGHUP.
//!
//! The policy in force is the latest stored version. A change is validated
//! in full, stored (durably) as the next version, and only then swapped
//! into the running pipeline: an invalid text changes nothing, and a crash
//! in between leaves the stored version to be used at the next start.

use std::sync::Arc;

use policy::{Message, Policy};
use serde::{Deserialize, Serialize};

use super::{now_ms, OpError, Operations};
use crate::config::Config;
use crate::pipeline::ActivePolicy;
use crate::store::{PolicySource, PolicyVersion, Store};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckedPolicy {
    pub name: String,
    pub sharing_rules: usize,
    pub command_rules: usize,
    /// Devices the policy names that are not registered.
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedPolicy {
    pub version: u64,
    /// False when the text was the one already in force: no new version.
    pub changed: bool,
    pub sharing_rules: usize,
    pub command_rules: usize,
    /// Devices the policy names that are not registered.
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersionInfo {
    /// 0: no policy was ever applied; nothing is shared.
    pub version: u64,
    pub applied_ms: Option<u64>,
    pub source: Option<String>,
    pub in_force: bool,
    /// The text as applied (left out of version lists).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldPreview {
    pub field: String,
    /// The field as the inventory and the grid name it (`nets[*].ssid`).
    #[serde(default)]
    pub generic: String,
    /// The action, or `held`: the rule would share it, but the field is
    /// new and waits for the user's approval.
    pub action: String,
    /// The deciding rule ("rule temp-to-vendor (line 7, column 1)"), or
    /// none: default deny.
    pub rule: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewOutput {
    pub destination: String,
    /// What the destination would receive; none: the message is not sent.
    pub payload: Option<String>,
    pub fields: Vec<FieldPreview>,
    /// A new destination: rules for every destination (`*`) do not reach
    /// it until approved.
    #[serde(default)]
    pub new_destination: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyPreview {
    pub device: String,
    pub topic: String,
    /// The version previewed; none for a candidate text.
    pub policy_version: Option<u64>,
    pub destinations: Vec<PreviewOutput>,
    /// The message's fields with their values (the first element of an
    /// array stands for all), as the device sent them; cut to 80
    /// characters.
    #[serde(default)]
    pub values: Vec<FieldValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldValue {
    pub field: String,
    pub value: String,
}

/// Parses `text` and checks it against the configured destinations, and
/// that every `seal` recipient is a real age key (the policy crate checks
/// only its shape).
pub(crate) fn validate(config: &Config, text: &str, name: &str) -> Result<Policy, OpError> {
    let policy = Policy::parse(text)
        .and_then(|p| {
            p.check_destinations(&config.destination_names())
                .map(|()| p)
        })
        .map_err(|e| OpError::input(format!("{name}: {e}")))?;
    for rule in policy.rules() {
        if let Some(policy::transform::Transform::SealTo { recipient }) = &rule.transform {
            if let Err(e) = recipient.parse::<age::x25519::Recipient>() {
                return Err(OpError::input(format!(
                    "{name}: policy error at {}: recipient {recipient:?} is not a valid age public key: {e}",
                    rule.position
                )));
            }
        }
    }
    Ok(policy)
}

fn in_force(version: &PolicyVersion, config: &Config) -> Result<ActivePolicy, OpError> {
    let policy = validate(
        config,
        &version.text,
        &format!("stored policy version {}", version.version),
    )
    .map_err(|e| {
        OpError::input(format!(
            "{e} (the config changed since it was applied; apply a corrected policy with `dataward policy apply FILE`)"
        ))
    })?;
    Ok(ActivePolicy {
        version: version.version,
        policy,
    })
}

/// The policy to run with at start. A configured policy file whose text
/// changed since it was last read is validated and stored as the next
/// version first; an unchanged file leaves a later `policy apply` in force.
pub fn policy_at_start(config: &Config, store: &Store) -> Result<ActivePolicy, OpError> {
    let versions = store.policy_versions()?;
    if let Some(path) = config.policy_path() {
        let text = read_policy_file(&path)?;
        let key = path.display().to_string();
        let last_read = versions.latest_from_file(&key)?;
        if last_read.as_ref().map(|v| v.text.as_str()) != Some(text.as_str()) {
            validate(config, &text, &key)?;
            let v = versions.append(
                PolicySource::ConfigFile { path: key.clone() },
                &text,
                now_ms(),
            )?;
            store
                .ledger()
                .note(crate::ledger::EntryBody::PolicyApplied {
                    version: v.version,
                    source: format!("policy file {key}"),
                });
            store.flush()?;
            tracing::info!(version = v.version, file = %path.display(), "policy file stored as a new version");
        }
    }
    match versions.latest()? {
        Some(latest) => in_force(&latest, config),
        None => {
            tracing::info!("no policy: nothing is shared with any destination");
            Ok(ActivePolicy::default())
        }
    }
}

fn read_policy_file(path: &std::path::Path) -> Result<String, OpError> {
    std::fs::read_to_string(path)
        .map_err(|e| OpError::input(format!("cannot read policy file {}: {e}", path.display())))
}

impl Operations {
    /// Devices `p` names that are not registered. A warning, not an error:
    /// a policy is often written before its device is added (and a device
    /// removed may come back); its rules apply from the moment it exists.
    /// Groups and destinations, which the policy and the config define,
    /// must exist: those are errors.
    fn unknown_devices(&self, p: &Policy) -> Vec<String> {
        let known = |id: &str| self.registry.as_ref().is_some_and(|r| r.get(id).is_some());
        let mut seen = std::collections::BTreeSet::new();
        p.named_devices()
            .into_iter()
            .filter(|(id, _)| !known(id) && seen.insert(id.clone()))
            .map(|(id, at)| {
                format!("device {id:?} (named by {at}) is not registered: its rules apply once it is added")
            })
            .collect()
    }

    pub fn policy_check(&self, text: &str, name: &str) -> Result<CheckedPolicy, OpError> {
        let p = validate(&self.config, text, name)?;
        Ok(CheckedPolicy {
            name: name.to_string(),
            sharing_rules: p.rules().len(),
            command_rules: p.command_rules().len(),
            warnings: self.unknown_devices(&p),
        })
    }

    pub async fn policy_apply(&self, text: &str, name: &str) -> Result<AppliedPolicy, OpError> {
        let source = PolicySource::Applied {
            name: name.to_string(),
        };
        self.change_policy(text, name, source).await
    }

    /// SIGHUP: re-reads the configured policy file and applies it if it
    /// differs from the policy in force.
    pub async fn reload_policy_file(&self) -> Result<Option<AppliedPolicy>, OpError> {
        let Some(path) = self.config.policy_path() else {
            return Ok(None);
        };
        let text = read_policy_file(&path)?;
        let key = path.display().to_string();
        // As at start: a file unchanged since it was last read leaves a
        // later `policy apply` (or the web UI's grid) in force; only a new
        // text in the file replaces it.
        let last_read = self.store()?.policy_versions()?.latest_from_file(&key)?;
        if last_read.is_some_and(|v| v.text == text) {
            let active = self.active_policy()?;
            return Ok(Some(AppliedPolicy {
                version: active.version,
                changed: false,
                sharing_rules: active.policy.rules().len(),
                command_rules: active.policy.command_rules().len(),
                warnings: Vec::new(),
            }));
        }
        self.change_policy(&text, &key, PolicySource::ConfigFile { path: key.clone() })
            .await
            .map(Some)
    }

    async fn change_policy(
        &self,
        text: &str,
        name: &str,
        source: PolicySource,
    ) -> Result<AppliedPolicy, OpError> {
        let policy = validate(&self.config, text, name)?;
        let (sharing_rules, command_rules) = (policy.rules().len(), policy.command_rules().len());
        let warnings = self.unknown_devices(&policy);
        for w in &warnings {
            tracing::warn!("{name}: {w}");
        }
        let _one_at_a_time = self.policy_changes.lock().await;
        let versions = self.store()?.policy_versions()?;
        let current = versions.get(self.version_in_force()?)?;
        if let Some(v) = current.filter(|v| v.text == text) {
            return Ok(AppliedPolicy {
                version: v.version,
                changed: false,
                sharing_rules,
                command_rules,
                warnings,
            });
        }
        let stored = versions.append(source, text, now_ms())?;
        if let Err(e) = self.flush().await {
            // Not durable, so not in force: take it back, so the store does
            // not name a version that never decided anything.
            let _ = versions.remove(stored.version);
            return Err(e);
        }
        if let Some(live) = &self.live {
            live.pipeline.swap_policy(ActivePolicy {
                version: stored.version,
                policy,
            });
        }
        tracing::info!(version = stored.version, source = %stored.source, "policy applied");
        self.record(crate::ledger::EntryBody::PolicyApplied {
            version: stored.version,
            source: stored.source.to_string(),
        })
        .await;
        Ok(AppliedPolicy {
            version: stored.version,
            changed: true,
            sharing_rules,
            command_rules,
            warnings,
        })
    }

    /// The version in force: the running pipeline's, or the latest stored.
    pub(super) fn version_in_force(&self) -> Result<u64, OpError> {
        if let Some(live) = &self.live {
            return Ok(live.pipeline.policy().version);
        }
        match &self.store {
            Some(s) => Ok(s.policy_versions()?.latest()?.map_or(0, |v| v.version)),
            None => Ok(0),
        }
    }

    fn info(&self, v: PolicyVersion, current: u64, with_text: bool) -> PolicyVersionInfo {
        PolicyVersionInfo {
            version: v.version,
            applied_ms: Some(v.applied_ms),
            source: Some(v.source.to_string()),
            in_force: v.version == current,
            text: with_text.then_some(v.text),
        }
    }

    pub fn policy_show(&self, version: Option<u64>) -> Result<PolicyVersionInfo, OpError> {
        let current = self.version_in_force()?;
        let wanted = version.unwrap_or(current);
        if wanted == 0 && version.is_none() {
            return Ok(PolicyVersionInfo {
                version: 0,
                applied_ms: None,
                source: None,
                in_force: true,
                text: Some(String::new()),
            });
        }
        let stored = match &self.store {
            Some(s) => s.policy_versions()?.get(wanted)?,
            None => None,
        };
        let v =
            stored.ok_or_else(|| OpError::input(format!("there is no policy version {wanted}")))?;
        Ok(self.info(v, current, true))
    }

    pub fn policy_versions(&self) -> Result<Vec<PolicyVersionInfo>, OpError> {
        let current = self.version_in_force()?;
        let all = match &self.store {
            Some(s) => s.policy_versions()?.list()?,
            None => Vec::new(),
        };
        Ok(all
            .into_iter()
            .map(|v| self.info(v, current, false))
            .collect())
    }

    pub fn policy_preview(
        &self,
        device: &str,
        topic: Option<&str>,
        payload: &[u8],
        candidate: Option<&str>,
    ) -> Result<PolicyPreview, OpError> {
        let known = self.device_show(device)?;
        // A topic the device may publish on: its first pattern with the
        // wildcards filled in.
        let topic = match topic {
            Some(t) => t.to_string(),
            None => known
                .publish
                .first()
                .map(|p| p.replace('#', "state").replace('+', "x"))
                .unwrap_or_default(),
        };
        let (version, active) = match candidate {
            Some(text) => {
                let policy = validate(&self.config, text, "candidate policy")?;
                (None, Arc::new(ActivePolicy { version: 0, policy }))
            }
            None => {
                let active = self.active_policy()?;
                (Some(active.version), active)
            }
        };
        let policy = &active.policy;
        let names = self.config.destination_names();
        let eval = policy.evaluate_with(
            &Message {
                device,
                topic: &topic,
                payload,
            },
            &names,
            &crate::pipeline::DryRun {
                fields: self.store.as_ref().map(Store::fields),
                destinations: self.store.as_ref().map(Store::destinations),
            },
        );
        let destinations = eval
            .outputs
            .iter()
            .map(|out| PreviewOutput {
                destination: out.destination.clone(),
                new_destination: out.held,
                payload: out
                    .payload
                    .as_ref()
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
                fields: eval
                    .fields
                    .iter()
                    .zip(&out.decisions)
                    .map(|(field, d)| FieldPreview {
                        field: field.to_string(),
                        generic: field.generic(),
                        action: if d.held {
                            "held".to_string()
                        } else {
                            d.action.as_str().to_string()
                        },
                        rule: d.rule.and_then(|id| {
                            policy
                                .rule(id)
                                .map(|r| format!("rule {} ({})", r.id, r.position))
                        }),
                    })
                    .collect(),
            })
            .collect();
        let parsed = policy::json::Json::parse(payload).ok();
        let mut values: Vec<FieldValue> = Vec::new();
        for f in &eval.fields {
            let field = f.generic();
            if values.iter().any(|v| v.field == field) {
                continue;
            }
            let value = if f.is_whole_payload() {
                String::from_utf8_lossy(payload).into_owned()
            } else {
                match parsed.as_ref().and_then(|j| j.at(f.segments())) {
                    Some(j) => String::from_utf8_lossy(&j.to_vec()).into_owned(),
                    None => continue,
                }
            };
            values.push(FieldValue {
                field,
                value: crate::store::fields::cut(&value),
            });
        }
        Ok(PolicyPreview {
            device: device.to_string(),
            topic,
            policy_version: version,
            destinations,
            values,
        })
    }

    /// The policy in force: the running pipeline's (shared, not copied),
    /// or the latest stored version.
    pub(super) fn active_policy(&self) -> Result<Arc<ActivePolicy>, OpError> {
        if let Some(live) = &self.live {
            return Ok(live.pipeline.policy());
        }
        match &self.store {
            Some(s) => match s.policy_versions()?.latest()? {
                Some(v) => in_force(&v, &self.config).map(Arc::new),
                None => Ok(Arc::default()),
            },
            None => Ok(Arc::default()),
        }
    }
}
