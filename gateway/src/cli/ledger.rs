//! The ledger's and the statement's text.

use crate::control::{LedgerListing, Received};
use crate::ledger::{Entry, EntryBody, SummaryRow, Verdict};

use super::utc;

pub fn listing(l: &LedgerListing) -> String {
    if l.entries.is_empty() {
        return "no ledger entries in that range\n".to_string();
    }
    let mut out = String::new();
    if l.left_out > 0 {
        out.push_str(&format!(
            "({} older entries left out; narrow with --since)\n",
            l.left_out
        ));
    }
    for e in &l.entries {
        out.push_str(&entry(e));
        out.push('\n');
    }
    out
}

/// One entry on one line. Names that devices chose are escaped.
pub fn entry(e: &Entry) -> String {
    let at = utc(e.at_ms);
    let what = match &e.body {
        EntryBody::Egress {
            destination,
            device,
            policy_version,
            messages,
            bytes,
            fields,
            first_ms,
            ..
        } => format!(
            "{device} → {destination}: {messages} messages, {bytes} bytes from {} (policy v{policy_version}): {}",
            utc(*first_ms),
            fields
                .iter()
                .map(|f| format!("{} {}×{} [{}]", f.field.escape_debug(), f.action, f.count, f.rule))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        EntryBody::Message {
            destination,
            device,
            topic,
            bytes,
            digest,
            ..
        } => format!(
            "{device} → {destination}: one message on {:?}, {bytes} bytes, sha256 {digest}",
            topic
        ),
        EntryBody::Aggregate {
            destination,
            device,
            window_start_ms,
            window_end_ms,
            ..
        } => format!(
            "{device} → {destination}: the aggregate of {} to {}",
            utc(*window_start_ms),
            utc(*window_end_ms)
        ),
        EntryBody::PolicyApplied { version, source } => {
            format!("policy version {version} applied ({source})")
        }
        EntryBody::DeviceAdded { device, name } => format!("device {device} added ({name:?})"),
        EntryBody::DeviceRemoved { device } => format!("device {device} removed"),
        EntryBody::ConsumerAdded {
            consumer,
            destination,
        } => format!("consumer {consumer} may read local destination {destination}"),
        EntryBody::ConsumerRemoved {
            consumer,
            destination,
        } => format!("consumer {consumer} no longer reads local destination {destination}"),
        EntryBody::FieldsApproved { device, fields } => format!(
            "{device}: fields approved: {}",
            fields
                .iter()
                .map(|f| f.escape_debug().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        EntryBody::DestinationApproved { destination } => {
            format!("destination {destination} approved for rules for every destination")
        }
        EntryBody::Export {
            by,
            device,
            records,
            format,
            encrypted,
            ..
        } => format!(
            "export of {} ({records} records, {format}{}) by {by}",
            device.as_deref().unwrap_or("every device"),
            if *encrypted { ", age-encrypted" } else { "" }
        ),
        EntryBody::Deleted {
            by,
            device,
            records,
            factory,
            ..
        } => format!(
            "{} ({records} records) by {by}",
            match (device, factory) {
                (Some(d), _) => format!("history of {d} deleted"),
                (None, true) => "factory wipe".to_string(),
                (None, false) => "all history wiped".to_string(),
            }
        ),
        EntryBody::OutboxDropped {
            destination,
            entries,
            reason,
        } => format!("{entries} messages for {destination} will never leave: {reason}"),
        EntryBody::CommandRelayed {
            destination,
            topic,
            devices,
        } => format!(
            "command from {destination} on {topic:?} relayed to {}",
            devices.join(", ")
        ),
        EntryBody::CommandRefused {
            destination,
            topic,
            reason,
        } => format!("command from {destination} on {topic:?} refused: {reason}"),
        EntryBody::Checkpoint { entries } => format!("checkpoint after {entries} entries"),
    };
    format!("#{} {at} {what}", e.seq)
}

pub fn verdict(v: &Verdict) -> String {
    if v.intact {
        format!(
            "intact: {} entries chain from {} to the head\n",
            v.entries,
            if v.from == 0 {
                "the first".to_string()
            } else {
                format!("the checkpoint at entry {}", v.from)
            }
        )
    } else {
        format!(
            "BROKEN at entry {}: {}\n",
            v.broken_at.map_or("?".to_string(), |b| b.to_string()),
            v.reason.as_deref().unwrap_or("unknown")
        )
    }
}

pub fn summary(rows: &[SummaryRow]) -> String {
    if rows.is_empty() {
        return "nothing left the home in that range\n".to_string();
    }
    let mut out = String::from("day\tdestination\tdevice\tfield\tcount\n");
    for r in rows {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\n",
            crate::when::date(r.day * crate::ledger::DAY_MS),
            r.destination,
            r.device,
            if r.field.is_empty() {
                "(messages)".to_string()
            } else {
                r.field.escape_debug().to_string()
            },
            r.count
        ));
    }
    out
}

pub fn received(r: &Received) -> String {
    let who: Vec<&str> = [r.recipient.as_deref(), r.country.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    let mut out = format!(
        "{}{} received since {}:\n",
        r.destination,
        if who.is_empty() {
            String::new()
        } else {
            format!(" ({})", who.join(", "))
        },
        utc(r.since_ms)
    );
    if let Some(p) = &r.purpose {
        out.push_str(&format!("purpose: {p}\n"));
    }
    if r.devices.is_empty() {
        out.push_str("nothing\n");
    }
    for d in &r.devices {
        out.push_str(&format!(
            "{}: {} messages, {} bytes{}{}\n",
            d.device,
            d.messages,
            d.bytes,
            match (d.first_ms, d.last_ms) {
                (Some(f), Some(l)) => format!(", {} to {}", utc(f), utc(l)),
                _ => String::new(),
            },
            if d.aggregates > 0 {
                format!(", and {} aggregate windows", d.aggregates)
            } else {
                String::new()
            }
        ));
        for (name, f) in &d.fields {
            out.push_str(&format!(
                "  {} ({}) in {} messages\n",
                name.escape_debug(),
                f.actions.join(", "),
                f.count
            ));
        }
    }
    if r.dropped > 0 {
        out.push_str(&format!(
            "{} messages for it never left (quota or dead letters)\n",
            r.dropped
        ));
    }
    out
}
