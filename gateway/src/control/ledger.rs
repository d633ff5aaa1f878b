//! Reading the ledger: entries, the chain check, the daily summary, what
//! one recipient was sent, and the sharing statement.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{OpError, Operations};
use crate::ledger::{Entry, EntryBody, SummaryRow, Verdict};

/// Entries one listing returns at most (the newest ones): the rest is a
/// narrower `--since` away.
pub const MAX_LISTED: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerListing {
    pub entries: Vec<Entry>,
    /// Older matching entries left out (over [`MAX_LISTED`]).
    pub left_out: u64,
}

/// What one destination was sent of one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedDevice {
    pub device: String,
    pub messages: u64,
    pub bytes: u64,
    pub first_ms: Option<u64>,
    pub last_ms: Option<u64>,
    /// Field → (forms it left in, how many messages carried it).
    pub fields: BTreeMap<String, ReceivedField>,
    /// `aggregate` windows sent.
    pub aggregates: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReceivedField {
    pub actions: Vec<String>,
    pub rules: Vec<String>,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    pub destination: String,
    pub recipient: Option<String>,
    pub purpose: Option<String>,
    pub country: Option<String>,
    pub since_ms: u64,
    pub devices: Vec<ReceivedDevice>,
    /// Entries that never left (quota, dead letters) for this destination.
    pub dropped: u64,
}

impl Operations {
    pub fn ledger_list(
        &self,
        since_ms: u64,
        destination: Option<&str>,
        device: Option<&str>,
    ) -> Result<LedgerListing, OpError> {
        let Some(store) = &self.store else {
            return Ok(LedgerListing {
                entries: Vec::new(),
                left_out: 0,
            });
        };
        // The newest MAX_LISTED that match, without holding the rest.
        let mut entries: std::collections::VecDeque<Entry> = Default::default();
        let mut left_out = 0u64;
        store.ledger().scan_since(since_ms, |e| {
            let wanted = destination.is_none_or(|d| e.body.destination() == Some(d))
                && device.is_none_or(|d| e.body.concerns_device(d));
            if wanted {
                if entries.len() == MAX_LISTED {
                    entries.pop_front();
                    left_out += 1;
                }
                entries.push_back(e);
            }
        })?;
        Ok(LedgerListing {
            entries: entries.into(),
            left_out,
        })
    }

    pub fn ledger_verify(&self) -> Result<Verdict, OpError> {
        Ok(self.store()?.ledger().verify()?)
    }

    pub fn ledger_summary(&self, since_ms: u64) -> Result<Vec<SummaryRow>, OpError> {
        match &self.store {
            Some(store) => Ok(store.ledger().summary_since(since_ms)?),
            None => Ok(Vec::new()),
        }
    }

    /// What `destination` was sent since `since_ms`: "what does the vendor
    /// have about me?".
    pub fn ledger_received(&self, destination: &str, since_ms: u64) -> Result<Received, OpError> {
        let dest = self
            .config
            .destinations
            .iter()
            .find(|d| d.name == destination);
        let mut devices: BTreeMap<String, ReceivedDevice> = BTreeMap::new();
        let mut dropped = 0;
        let mut any = false;
        let mut take = |e: Entry| {
            if e.body.destination() != Some(destination) {
                return;
            }
            any = true;
            match &e.body {
                EntryBody::Egress {
                    device,
                    first_ms,
                    last_ms,
                    messages,
                    bytes,
                    fields,
                    ..
                } => {
                    let d = devices
                        .entry(device.clone())
                        .or_insert_with(|| empty(device));
                    d.messages += messages;
                    d.bytes += bytes;
                    d.first_ms = Some(d.first_ms.map_or(*first_ms, |f| f.min(*first_ms)));
                    d.last_ms = Some(d.last_ms.map_or(*last_ms, |l| l.max(*last_ms)));
                    for f in fields {
                        let rf = d.fields.entry(f.field.clone()).or_default();
                        rf.count += f.count;
                        if !rf.actions.contains(&f.action) {
                            rf.actions.push(f.action.clone());
                        }
                        if !rf.rules.contains(&f.rule) {
                            rf.rules.push(f.rule.clone());
                        }
                    }
                }
                EntryBody::Aggregate { device, .. } => {
                    devices
                        .entry(device.clone())
                        .or_insert_with(|| empty(device))
                        .aggregates += 1;
                }
                EntryBody::OutboxDropped { entries, .. } => dropped += entries,
                _ => {}
            }
        };
        if let Some(store) = &self.store {
            store.ledger().scan_since(since_ms, &mut take)?;
        }
        if dest.is_none() && !any {
            return Err(OpError::input(format!(
                "{destination:?} is not a configured destination, and the ledger has nothing for it"
            )));
        }
        Ok(Received {
            destination: destination.to_string(),
            recipient: dest.and_then(|d| d.recipient.clone()),
            purpose: dest.and_then(|d| d.purpose.clone()),
            country: dest.and_then(|d| d.country.clone()),
            since_ms,
            devices: devices.into_values().collect(),
            dropped,
        })
    }

    /// The policy in force in plain words, per registered device and
    /// configured destination.
    pub fn statement(&self) -> Result<policy::statement::Statement, OpError> {
        let active = self.active_policy()?;
        let devices: Vec<(String, String)> = match &self.registry {
            Some(r) => r
                .list()
                .iter()
                .map(|d| (d.id.clone(), d.name.clone()))
                .collect(),
            None => Vec::new(),
        };
        let approvals = self.store.as_ref().map(|s| s.destinations());
        let destinations: Vec<policy::statement::DestinationFacts> = self
            .config
            .destinations
            .iter()
            .map(|d| policy::statement::DestinationFacts {
                name: d.name.clone(),
                recipient: d.recipient.clone(),
                purpose: d.purpose.clone(),
                country: d.country.clone(),
                approved: approvals.as_ref().is_none_or(|a| a.is_approved(&d.name)),
            })
            .collect();
        Ok(policy::statement::statement(
            &active.policy,
            &devices,
            &destinations,
        ))
    }
}

fn empty(device: &str) -> ReceivedDevice {
    ReceivedDevice {
        device: device.to_string(),
        messages: 0,
        bytes: 0,
        first_ms: None,
        last_ms: None,
        fields: BTreeMap::new(),
        aggregates: 0,
    }
}
