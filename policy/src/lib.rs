//! The dataward sharing policy: what of a device's message may leave the
//! home, to which destination, and which commands may come back in.
//!
//! This crate is pure: no I/O, no async, no clock. Same policy and same
//! message give the same result, which makes it easy to test and to fuzz.
//!
//! - [`parse`](Policy::parse): policy text (TOML) to a validated [`Policy`];
//!   every error carries a line and column ([`PolicyError`]).
//! - [`rule`]: the model, [`SharingRule`] and [`CommandRule`], and the
//!   specificity order that resolves overlapping rules.
//! - [`path`]: field paths inside a payload and the patterns rules use.
//! - [`evaluate`](Policy::evaluate): one message to one output per
//!   destination, with the deciding rule for every field.
//! - [`json`]: payloads parsed with every scalar kept as written, so what
//!   is shared leaves exactly as the device sent it.
//! - [`transform`]: what the value-level actions make of a shared value.
//! - [`topic`]: MQTT topic filter matching, shared with the broker's ACL.
//! - [`retention`]: how long history is kept, per device, and fields that
//!   are never stored.
//! - [`aggregate`]: the windows of `aggregate`, and the message a closed
//!   window sends.
//! - [`statement`]: the policy in plain words, per device and destination.
//! - [`calendar`]: days since 1970 and civil dates, for everything that
//!   shows or reads a date.
//! - [`edit`]: the device's own rules in the text, replaced as the web
//!   UI's sharing grid saves them, the rest of the file kept as written.
//!
//! The quarantine for new fields is decided here too: a field the caller's
//! inventory has not approved is shared only by a rule that names it (or a
//! parent of it) without a wildcard, unless the policy's `[quarantine] exempt` list names the device.

pub mod aggregate;
pub mod calendar;
pub mod edit;
mod evaluate;
pub mod json;
mod parse;
pub mod path;
pub mod retention;
pub mod rule;
pub mod statement;
pub mod topic;
pub mod transform;

use std::collections::{BTreeMap, BTreeSet};

pub use evaluate::{looks_like_json, Decision, DestinationOutput, Evaluation, Message};
pub use parse::{is_valid_name, PolicyError};
pub use path::{FieldPath, FieldPattern};
pub use rule::{
    Action, CommandRule, DestinationSelector, DeviceSelector, Position, RuleId, SharingRule,
};

/// A validated policy. The empty policy shares nothing and allows no command.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    rules: Vec<SharingRule>,
    commands: Vec<CommandRule>,
    groups: BTreeMap<String, BTreeSet<String>>,
    retain: Vec<retention::RetainRule>,
    /// Devices whose new fields wildcard rules share at once.
    quarantine_exempt: Vec<(DeviceSelector, Position)>,
}

impl Policy {
    /// Parses and validates policy text. Nothing is partially accepted.
    pub fn parse(src: &str) -> Result<Self, PolicyError> {
        parse::parse(src)
    }

    pub fn rules(&self) -> &[SharingRule] {
        &self.rules
    }

    pub fn command_rules(&self) -> &[CommandRule] {
        &self.commands
    }

    pub fn rule(&self, id: RuleId) -> Option<&SharingRule> {
        self.rules.get(id.0)
    }

    /// Whether new fields of `device` are held until approved (the
    /// default), rather than exempt.
    pub fn quarantines(&self, device: &str) -> bool {
        !self
            .quarantine_exempt
            .iter()
            .any(|(d, _)| d.selects(device, &self.groups))
    }

    /// Checks that every destination the policy names exists, so that a typo
    /// is an error rather than a rule that silently never applies.
    pub fn check_destinations<S: AsRef<str>>(&self, known: &[S]) -> Result<(), PolicyError> {
        let named = self
            .rules
            .iter()
            .map(|r| (&r.destination, r.position))
            .chain(self.commands.iter().map(|c| (&c.destination, c.position)));
        for (dest, position) in named {
            if let DestinationSelector::Named(name) = dest {
                if !known.iter().any(|k| k.as_ref() == name) {
                    let list: Vec<&str> = known.iter().map(|k| k.as_ref()).collect();
                    return Err(PolicyError {
                        position,
                        message: format!(
                            "destination {name:?} is not configured (configured: {})",
                            if list.is_empty() {
                                "none".to_string()
                            } else {
                                list.join(", ")
                            }
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Every device id the policy names, with where: (id, "the rule at
    /// line 3, column 1" or "group @heating"). The caller checks them
    /// against the devices it knows; the policy itself has no registry.
    pub fn named_devices(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut add = |d: &DeviceSelector, what: &str, at: Position| {
            if let DeviceSelector::Device(id) = d {
                out.push((id.clone(), format!("the {what} at {at}")));
            }
        };
        for r in &self.rules {
            add(&r.device, "rule", r.position);
        }
        for c in &self.commands {
            add(&c.device, "command rule", c.position);
        }
        for r in &self.retain {
            add(&r.device, "retain rule", r.position);
        }
        for (d, at) in &self.quarantine_exempt {
            add(d, "quarantine exemption", *at);
        }
        for (group, members) in &self.groups {
            for m in members {
                out.push((m.clone(), format!("group @{group}")));
            }
        }
        out
    }

    /// Decides, for each destination, what of `msg` it receives. `seal`
    /// withholds here: there is no key; see [`Policy::evaluate_with`].
    pub fn evaluate<S: AsRef<str>>(&self, msg: &Message<'_>, destinations: &[S]) -> Evaluation {
        evaluate::evaluate(self, msg, destinations, &transform::NoContext)
    }

    /// [`Policy::evaluate`], with what sealing needs from the caller.
    pub fn evaluate_with<S: AsRef<str>>(
        &self,
        msg: &Message<'_>,
        destinations: &[S],
        ctx: &dyn transform::Context,
    ) -> Evaluation {
        evaluate::evaluate(self, msg, destinations, ctx)
    }

    /// Whether `destination` may send a command to `device` on the local
    /// topic `topic`; gives the allowing rule's index among the command rules.
    pub fn allows_command(&self, device: &str, destination: &str, topic: &str) -> Option<usize> {
        self.commands.iter().position(|c| {
            c.device.selects(device, &self.groups)
                && c.destination.selects(destination)
                && topic::matches(&c.topic, topic)
        })
    }
}

#[cfg(test)]
mod evaluate_tests;
#[cfg(test)]
mod tests;
