//! The policy model: sharing rules, command rules, and how specific a rule is.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::path::{FieldPattern, FieldSpecificity};

/// Where a rule was written in the policy text, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Identifies a sharing rule within one policy version: its index in file
/// order. The ledger pairs it with the policy version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId(pub usize);

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule #{}", self.0 + 1)
    }
}

/// Which devices a rule is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceSelector {
    /// One device, by id.
    Device(String),
    /// A group defined in the policy's `[groups]` table, written `@name`.
    Group(String),
    /// Every device: `*`.
    Any,
}

impl DeviceSelector {
    pub(crate) fn rank(&self) -> u8 {
        match self {
            DeviceSelector::Device(_) => 2,
            DeviceSelector::Group(_) => 1,
            DeviceSelector::Any => 0,
        }
    }

    pub(crate) fn selects(
        &self,
        device: &str,
        groups: &BTreeMap<String, BTreeSet<String>>,
    ) -> bool {
        match self {
            DeviceSelector::Device(d) => d == device,
            DeviceSelector::Group(g) => groups
                .get(g)
                .is_some_and(|members| members.contains(device)),
            DeviceSelector::Any => true,
        }
    }
}

impl fmt::Display for DeviceSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSelector::Device(d) => f.write_str(d),
            DeviceSelector::Group(g) => write!(f, "@{g}"),
            DeviceSelector::Any => f.write_str("*"),
        }
    }
}

/// Which destinations a rule is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DestinationSelector {
    Named(String),
    Any,
}

impl DestinationSelector {
    pub(crate) fn rank(&self) -> u8 {
        match self {
            DestinationSelector::Named(_) => 1,
            DestinationSelector::Any => 0,
        }
    }

    pub fn selects(&self, destination: &str) -> bool {
        match self {
            DestinationSelector::Named(d) => d == destination,
            DestinationSelector::Any => true,
        }
    }
}

impl fmt::Display for DestinationSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DestinationSelector::Named(d) => f.write_str(d),
            DestinationSelector::Any => f.write_str("*"),
        }
    }
}

/// What happens to a field on its way to a destination.
///
/// The set grows with the transform actions of DESIGN §5 (redact, round,
/// pseudonymize, seal, ...); every action is applied per field, after
/// resolution has picked the one rule that decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Share,
    Drop,
    Redact,
    /// Parameters in the rule's [`Transform`](crate::transform::Transform).
    Round,
    Bucket,
    TruncateTime,
    /// Sealed to the user's key (see `transform::Context`).
    Seal,
    /// A keyed hash, per destination (see `transform::Context`).
    Pseudonymize,
    CoarsenLocation,
    RateLimit,
    /// Into the caller's window; one message per window leaves instead.
    Aggregate,
}

impl Action {
    pub const NAMES: &'static [&'static str] = &[
        "share",
        "drop",
        "redact",
        "round",
        "bucket",
        "truncate_time",
        "coarsen_location",
        "seal",
        "pseudonymize",
        "rate_limit",
        "aggregate",
    ];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "share" => Some(Action::Share),
            "drop" => Some(Action::Drop),
            "redact" => Some(Action::Redact),
            "round" => Some(Action::Round),
            "bucket" => Some(Action::Bucket),
            "truncate_time" => Some(Action::TruncateTime),
            "seal" => Some(Action::Seal),
            "pseudonymize" => Some(Action::Pseudonymize),
            "coarsen_location" => Some(Action::CoarsenLocation),
            "rate_limit" => Some(Action::RateLimit),
            "aggregate" => Some(Action::Aggregate),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Share => "share",
            Action::Drop => "drop",
            Action::Redact => "redact",
            Action::Round => "round",
            Action::Bucket => "bucket",
            Action::TruncateTime => "truncate_time",
            Action::Seal => "seal",
            Action::Pseudonymize => "pseudonymize",
            Action::CoarsenLocation => "coarsen_location",
            Action::RateLimit => "rate_limit",
            Action::Aggregate => "aggregate",
        }
    }

    /// Whether the field leaves (as it is, or transformed).
    pub fn sends(&self) -> bool {
        *self != Action::Drop
    }
}

/// One `[[rule]]`: for these devices, this field, this destination, do this.
#[derive(Debug, Clone, PartialEq)]
pub struct SharingRule {
    /// The rule's stable id: its `name` in the file, or `r-` and a hash of
    /// what it says (see [`SharingRule::content_id`]). It survives edits
    /// elsewhere in the file and reordering.
    pub id: String,
    pub device: DeviceSelector,
    /// An MQTT topic filter: the rule applies only to messages on a
    /// matching topic. None: any topic.
    pub topic: Option<String>,
    pub field: FieldPattern,
    pub destination: DestinationSelector,
    pub action: Action,
    /// The action's parameters (`round`'s step, ...).
    pub transform: Option<crate::transform::Transform>,
    pub position: Position,
}

/// How specific a rule's match is, compared lexicographically in the order
/// DESIGN §5 gives: device before field before destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Rank {
    device: u8,
    /// A rule for a topic beats one for any topic.
    topic: u8,
    field: FieldSpecificity,
    destination: u8,
}

impl SharingRule {
    /// `r-` and 12 hex digits of a 64-bit FNV-1a hash over device, field,
    /// destination and action: the same rule gets the same id in every
    /// version of the file, wherever it stands.
    pub fn content_id(
        device: &DeviceSelector,
        topic: Option<&str>,
        field: &FieldPattern,
        destination: &DestinationSelector,
        action: Action,
    ) -> String {
        let mut text = format!(
            "{device}\u{1f}{}\u{1f}{destination}\u{1f}{}",
            field.as_str(),
            action.as_str()
        );
        // Rules without a topic keep the ids they had before topics existed.
        if let Some(t) = topic {
            text.push('\u{1f}');
            text.push_str(t);
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("r-{:012x}", h >> 16)
    }

    /// Whether the rule applies to a message on `topic`.
    pub fn covers_topic(&self, topic: &str) -> bool {
        self.topic
            .as_deref()
            .is_none_or(|f| crate::topic::matches(f, topic))
    }

    pub(crate) fn rank(&self) -> Rank {
        Rank {
            device: self.device.rank(),
            topic: u8::from(self.topic.is_some()),
            field: self.field.specificity(),
            destination: self.destination.rank(),
        }
    }
}

/// One `[[command]]`: this destination may send commands to these devices
/// on topics matching `topic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRule {
    pub device: DeviceSelector,
    pub destination: DestinationSelector,
    /// An MQTT topic filter over the device-side (local) topic.
    pub topic: String,
    pub position: Position,
}
