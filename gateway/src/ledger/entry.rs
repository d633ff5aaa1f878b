//! What the ledger records: egress (what left, to whom, under which rule)
//! and acts of control. Entries are JSON, one per chain link; the format
//! is in docs/ledger.md.

use serde::{Deserialize, Serialize};

/// One link of the chain as stored: its body, when it was appended, and
/// the hash of the link before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub at_ms: u64,
    /// SHA-256 of the previous entry's stored bytes, hex; 64 zeros for the
    /// first entry ever.
    pub prev: String,
    #[serde(flatten)]
    pub body: EntryBody,
}

/// One field that left, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldEgress {
    /// As the quarantine names fields: array indices as `[*]`.
    pub field: String,
    /// The deciding rule's id.
    pub rule: String,
    /// The action applied (`share`, `round`, `seal`, ...).
    pub action: String,
    /// Messages in which it left.
    pub count: u64,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntryBody {
    /// What one destination received of one device in one span of time
    /// (`[ledger] bucket`), under one policy version.
    Egress {
        /// The bucket's own number, unique per bucket opened.
        #[serde(default)]
        bucket: u64,
        destination: String,
        device: String,
        policy_version: u64,
        /// Where the bucket's span starts (unix ms).
        minute_ms: u64,
        first_ms: u64,
        last_ms: u64,
        messages: u64,
        bytes: u64,
        /// d(0) = 32 zero bytes, d(n) = SHA-256(d(n-1) ‖ payload n), over
        /// the payloads exactly as queued for the destination, in order;
        /// hex. Anyone holding the destination's copies can recompute it.
        digest: String,
        fields: Vec<FieldEgress>,
    },
    /// One message, for a destination configured with `ledger = "detailed"`.
    Message {
        destination: String,
        device: String,
        policy_version: u64,
        topic: String,
        bytes: u64,
        /// SHA-256 of the payload as sent, hex.
        digest: String,
        fields: Vec<FieldEgress>,
    },
    /// An `aggregate` window's message.
    Aggregate {
        destination: String,
        device: String,
        bytes: u64,
        digest: String,
        window_start_ms: u64,
        window_end_ms: u64,
    },
    PolicyApplied {
        version: u64,
        source: String,
    },
    DeviceAdded {
        device: String,
        name: String,
    },
    DeviceRemoved {
        device: String,
    },
    /// A local app was given an account to read a local destination's
    /// view, or lost it.
    ConsumerAdded {
        consumer: String,
        destination: String,
    },
    ConsumerRemoved {
        consumer: String,
        destination: String,
    },
    FieldsApproved {
        device: String,
        fields: Vec<String>,
    },
    DestinationApproved {
        destination: String,
    },
    Export {
        by: String,
        device: Option<String>,
        since_ms: Option<u64>,
        until_ms: Option<u64>,
        format: String,
        records: u64,
        encrypted: bool,
    },
    Deleted {
        by: String,
        device: Option<String>,
        since_ms: Option<u64>,
        until_ms: Option<u64>,
        records: u64,
        /// Messages that waited to leave and now never will.
        #[serde(default)]
        outbox_entries: u64,
        factory: bool,
    },
    /// Outbox entries that will never leave: over the disk quota, or set
    /// aside as dead letters.
    OutboxDropped {
        destination: String,
        entries: u64,
        reason: String,
    },
    CommandRelayed {
        destination: String,
        topic: String,
        devices: Vec<String>,
    },
    CommandRefused {
        destination: String,
        topic: String,
        reason: String,
    },
    /// Every so often: what the chain held up to here. Pruning cuts the
    /// chain only at a checkpoint, and verification starts from it.
    Checkpoint {
        entries: u64,
    },
}

impl EntryBody {
    pub fn kind(&self) -> &'static str {
        match self {
            EntryBody::Egress { .. } => "egress",
            EntryBody::Message { .. } => "message",
            EntryBody::Aggregate { .. } => "aggregate",
            EntryBody::PolicyApplied { .. } => "policy_applied",
            EntryBody::DeviceAdded { .. } => "device_added",
            EntryBody::DeviceRemoved { .. } => "device_removed",
            EntryBody::ConsumerAdded { .. } => "consumer_added",
            EntryBody::ConsumerRemoved { .. } => "consumer_removed",
            EntryBody::FieldsApproved { .. } => "fields_approved",
            EntryBody::DestinationApproved { .. } => "destination_approved",
            EntryBody::Export { .. } => "export",
            EntryBody::Deleted { .. } => "deleted",
            EntryBody::OutboxDropped { .. } => "outbox_dropped",
            EntryBody::CommandRelayed { .. } => "command_relayed",
            EntryBody::CommandRefused { .. } => "command_refused",
            EntryBody::Checkpoint { .. } => "checkpoint",
        }
    }

    /// The destination the entry is about, if one.
    pub fn destination(&self) -> Option<&str> {
        match self {
            EntryBody::Egress { destination, .. }
            | EntryBody::Message { destination, .. }
            | EntryBody::Aggregate { destination, .. }
            | EntryBody::DestinationApproved { destination }
            | EntryBody::ConsumerAdded { destination, .. }
            | EntryBody::ConsumerRemoved { destination, .. }
            | EntryBody::OutboxDropped { destination, .. }
            | EntryBody::CommandRelayed { destination, .. }
            | EntryBody::CommandRefused { destination, .. } => Some(destination),
            _ => None,
        }
    }

    /// Whether the entry is about `device`.
    pub fn concerns_device(&self, device: &str) -> bool {
        match self {
            EntryBody::Egress { device: d, .. }
            | EntryBody::Message { device: d, .. }
            | EntryBody::Aggregate { device: d, .. }
            | EntryBody::DeviceAdded { device: d, .. }
            | EntryBody::DeviceRemoved { device: d }
            | EntryBody::FieldsApproved { device: d, .. } => d == device,
            EntryBody::Export { device: d, .. } | EntryBody::Deleted { device: d, .. } => {
                d.as_deref().is_none_or(|d| d == device)
            }
            EntryBody::CommandRelayed { devices, .. } => devices.iter().any(|d| d == device),
            _ => false,
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The running digest of a bucket: d(n) = SHA-256(d(n-1) ‖ payload).
pub fn chain_digest(prev: &[u8; 32], payload: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prev);
    ctx.update(payload);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}
