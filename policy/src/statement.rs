//! The sharing statement: the policy in plain words, per device and
//! destination, such as "Thermostat → vendor_cloud (Acme Inc., US,
//! purpose: remote control): temp, rounded to steps of 0.5; nothing
//! else." Pure: the caller says which devices and destinations exist.

use serde::{Deserialize, Serialize};

use crate::aggregate::AggregateFn;
use crate::rule::{Action, DestinationSelector, SharingRule};
use crate::transform::{Coarsen, Transform};
use crate::Policy;

/// What the statement needs to know of a destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationFacts {
    pub name: String,
    pub recipient: Option<String>,
    pub purpose: Option<String>,
    pub country: Option<String>,
    /// Rules for every destination (`*`) reach it (see the quarantine).
    pub approved: bool,
}

/// One field (or pattern) that leaves, and in which form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedField {
    /// The field path or pattern as the policy writes it.
    pub field: String,
    /// Only messages on this topic filter.
    pub topic: Option<String>,
    /// In plain words: "rounded to steps of 0.5".
    pub form: String,
    pub action: String,
    pub rule: String,
}

/// One device and one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementLine {
    pub device: String,
    pub device_name: String,
    pub destination: String,
    pub recipient: Option<String>,
    pub purpose: Option<String>,
    pub country: Option<String>,
    pub shared: Vec<SharedField>,
    /// Fields a rule keeps home by name.
    pub never: Vec<String>,
    /// Whether anything beyond the listed fields may leave (a `*` rule).
    pub everything_else: bool,
    /// The whole line in words.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub lines: Vec<StatementLine>,
}

impl Statement {
    /// The statement as JSON-LD in the W3C Data Privacy Vocabulary (DPV):
    /// one `dpv:PersonalDataHandling` per device and destination, with
    /// `dpv:hasRecipient`, `dpv:hasPurpose` and `dpv:hasPersonalData`.
    pub fn to_json_ld(&self) -> serde_json::Value {
        let graph: Vec<serde_json::Value> = self
            .lines
            .iter()
            .filter(|l| !l.shared.is_empty())
            .map(|l| {
                let mut recipient = serde_json::json!({
                    "@type": "dpv:Recipient",
                    "dpv:hasName": l.recipient.clone().unwrap_or_else(|| l.destination.clone()),
                });
                if let Some(c) = &l.country {
                    recipient["dpv:hasCountry"] = serde_json::json!(c);
                }
                let mut handling = serde_json::json!({
                    "@type": "dpv:PersonalDataHandling",
                    "dpv:hasDataSubject": {"@type": "dpv:DataSubject", "dpv:hasName": l.device_name},
                    "dpv:hasRecipient": recipient,
                    "dpv:hasPersonalData": l.shared.iter().map(|f| serde_json::json!({
                        "@type": "dpv:PersonalData",
                        "dpv:hasName": f.field,
                        "dpv:hasDescription": f.form,
                    })).collect::<Vec<_>>(),
                    "rdfs:comment": l.text,
                });
                if let Some(p) = &l.purpose {
                    handling["dpv:hasPurpose"] =
                        serde_json::json!({"@type": "dpv:Purpose", "dpv:hasDescription": p});
                }
                handling
            })
            .collect();
        serde_json::json!({
            "@context": {
                "dpv": "https://w3id.org/dpv#",
                "rdfs": "http://www.w3.org/2000/01/rdf-schema#"
            },
            "@graph": graph
        })
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for l in &self.lines {
            out.push_str(&l.text);
            out.push('\n');
        }
        out
    }
}

/// The statement for `devices` (id, display name) and `destinations`.
pub fn statement(
    policy: &Policy,
    devices: &[(String, String)],
    destinations: &[DestinationFacts],
) -> Statement {
    let mut lines = Vec::new();
    for (id, name) in devices {
        for dest in destinations {
            lines.push(line(policy, id, name, dest));
        }
    }
    Statement { lines }
}

fn line(
    policy: &Policy,
    device: &str,
    device_name: &str,
    dest: &DestinationFacts,
) -> StatementLine {
    // The rules that can decide something of this device for this
    // destination; for each (topic, field) the most specific wins.
    let applicable: Vec<&SharingRule> = policy
        .rules()
        .iter()
        .filter(|r| r.device.selects(device, &policy.groups) && r.destination.selects(&dest.name))
        .collect();
    let mut winners: Vec<&SharingRule> = Vec::new();
    for r in &applicable {
        let key = (r.topic.as_deref(), r.field.as_str());
        match winners
            .iter_mut()
            .find(|w| (w.topic.as_deref(), w.field.as_str()) == key)
        {
            Some(w) if r.rank() > w.rank() => *w = r,
            Some(_) => {}
            None => winners.push(r),
        }
    }
    let mut shared = Vec::new();
    let mut never = Vec::new();
    let mut everything_else = false;
    for r in &winners {
        // A new destination: what rules for every destination would share
        // waits for approval (their drops still hold).
        if !dest.approved && matches!(r.destination, DestinationSelector::Any) && r.action.sends() {
            continue;
        }
        if r.action == Action::Drop {
            never.push(match r.field.as_str() {
                "*" => "any field".to_string(),
                f => f.to_string(),
            });
            continue;
        }
        if r.field.as_str() == "*" {
            everything_else = true;
        }
        shared.push(SharedField {
            field: r.field.as_str().to_string(),
            topic: r.topic.clone(),
            form: form(r),
            action: r.action.as_str().to_string(),
            rule: r.id.clone(),
        });
    }
    // The whole-message rule last: it reads as "every other field".
    shared.sort_by_key(|s| s.field == "*");
    let text = words(
        device_name,
        dest,
        &shared,
        &never,
        everything_else,
        policy.quarantines(device),
    );
    StatementLine {
        device: device.to_string(),
        device_name: device_name.to_string(),
        destination: dest.name.clone(),
        recipient: dest.recipient.clone(),
        purpose: dest.purpose.clone(),
        country: dest.country.clone(),
        shared,
        never,
        everything_else,
        text,
    }
}

fn words(
    device_name: &str,
    dest: &DestinationFacts,
    shared: &[SharedField],
    never: &[String],
    everything_else: bool,
    quarantined: bool,
) -> String {
    let mut who: Vec<String> = Vec::new();
    if let Some(r) = &dest.recipient {
        who.push(r.clone());
    }
    if let Some(c) = &dest.country {
        who.push(c.clone());
    }
    if let Some(p) = &dest.purpose {
        who.push(format!("purpose: {p}"));
    }
    let mut text = format!("{device_name} → {}", dest.name);
    if !who.is_empty() {
        text.push_str(&format!(" ({})", who.join(", ")));
    }
    text.push_str(": ");
    if shared.is_empty() {
        text.push_str("nothing");
    } else {
        let parts: Vec<String> = shared
            .iter()
            .map(|s| {
                let name = if s.field == "*" && quarantined {
                    "every other field (a field the device never sent before only once you approve it)".to_string()
                } else if s.field == "*" {
                    "every other field, new ones included (the quarantine is off for it)".to_string()
                } else {
                    s.field.clone()
                };
                match &s.topic {
                    Some(t) => format!("{name} on {t}, {}", s.form),
                    None => format!("{name}, {}", s.form),
                }
            })
            .collect();
        text.push_str(&parts.join("; "));
        if !everything_else {
            text.push_str("; nothing else");
        }
    }
    if !never.is_empty() {
        text.push_str(&format!("; never: {}", never.join(", ")));
    }
    if !dest.approved {
        text.push_str(" (a new destination: rules for every destination do not reach it yet)");
    }
    text.push('.');
    text
}

fn duration(ms: u64) -> String {
    const UNITS: [(u64, &str, &str); 4] = [
        (86_400_000, "day", "days"),
        (3_600_000, "hour", "hours"),
        (60_000, "minute", "minutes"),
        (1_000, "second", "seconds"),
    ];
    for (size, one, many) in UNITS {
        if ms >= size && ms.is_multiple_of(size) {
            let n = ms / size;
            return if n == 1 {
                one.to_string()
            } else {
                format!("{n} {many}")
            };
        }
    }
    format!("{ms} ms")
}

/// The form a value leaves in, in words.
fn form(r: &SharingRule) -> String {
    match (r.action, r.transform.as_ref()) {
        (Action::Share, _) => "as it is".into(),
        (Action::Redact, _) => "as \"[redacted]\" (that it exists, not what it says)".into(),
        (Action::Round, Some(Transform::Round { step, .. })) => {
            format!("rounded to steps of {step}")
        }
        (Action::Bucket, Some(Transform::Bucket { labels, .. })) => {
            format!("only as a range: {}", labels.join(" / "))
        }
        (Action::TruncateTime, Some(Transform::TruncateTime(unit))) => {
            let name = crate::transform::TimeUnit::NAMES
                .iter()
                .zip([
                    crate::transform::TimeUnit::Second,
                    crate::transform::TimeUnit::Minute,
                    crate::transform::TimeUnit::Hour,
                    crate::transform::TimeUnit::Day,
                ])
                .find(|(_, u)| u == unit)
                .map_or("unit", |(n, _)| n);
            format!("cut to the {name}")
        }
        (Action::CoarsenLocation, Some(Transform::CoarsenLocation(Coarsen::Decimals(d)))) => {
            let about = ["110 km", "11 km", "1 km", "110 m", "11 m", "1 m", "10 cm"];
            format!(
                "coarsened to {d} decimals (about {})",
                about.get(*d as usize).unwrap_or(&"1 m")
            )
        }
        (Action::CoarsenLocation, Some(Transform::CoarsenLocation(Coarsen::Geohash(n)))) => {
            let about = [
                "5,000 km", "1,250 km", "156 km", "39 km", "5 km", "1.2 km", "150 m", "40 m",
                "5 m", "1 m", "15 cm", "4 cm",
            ];
            format!(
                "as a geohash cell about {} across",
                about.get((*n as usize).saturating_sub(1)).unwrap_or(&"1 m")
            )
        }
        (Action::Seal, Some(Transform::SealTo { recipient })) => {
            let short: String = recipient.chars().take(12).collect();
            format!("sealed to the age key {short}… (only its holder can read it)")
        }
        (Action::Seal, _) => "sealed to your own key (only your passphrase opens it)".into(),
        (Action::Pseudonymize, _) => {
            "as a pseudonym (a keyed hash: linkable at this destination only)".into()
        }
        (Action::RateLimit, Some(Transform::RateLimit { interval_ms })) => {
            format!("as it is, at most once per {}", duration(*interval_ms))
        }
        (Action::Aggregate, Some(Transform::Aggregate { func, window_ms })) => {
            let what = match func {
                AggregateFn::Min => "minimum",
                AggregateFn::Max => "maximum",
                AggregateFn::Mean => "mean",
                AggregateFn::Sum => "sum",
                AggregateFn::Count => "count",
            };
            format!("only as its {what} per {}", duration(*window_ms))
        }
        (Action::Drop, _) => "never".into(),
        (action, _) => action.as_str().into(),
    }
}
