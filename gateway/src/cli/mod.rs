//! The command line's face: turns the operations layer's JSON answers into
//! the text a person reads. `--json` prints the answer itself, which is
//! the same whether the gateway was running or not.

mod ledger;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::control::{
    AddedConsumer, AddedDevice, AppliedPolicy, CheckedPolicy, ConsumerInfo, DeleteReport,
    DestinationApproval, DeviceInfo, ExportSummary, FieldList, FieldsApproved, InitReport, OpError,
    PassphraseChanged, PolicyPreview, PolicyVersionInfo, RemovedConsumer, RemovedDevice, Request,
    StatusReport,
};

fn typed<T: DeserializeOwned>(v: &Value) -> Result<T, OpError> {
    serde_json::from_value(v.clone())
        .map_err(|e| OpError::runtime(format!("unexpected answer from the gateway: {e}")))
}

/// The human-readable text of `reply` to `request`.
pub fn render(request: &Request, reply: &Value) -> Result<String, OpError> {
    Ok(match request {
        Request::Status => status(&typed(reply)?),
        Request::DeviceAdd { .. } => added(&typed(reply)?),
        Request::DeviceList => {
            let devices: Vec<DeviceInfo> = typed(reply)?;
            if devices.is_empty() {
                "no devices; add one with `dataward device add NAME`\n".to_string()
            } else {
                devices
                    .iter()
                    .map(|d| format!("{}\t{:?}\t{}\n", d.id, d.name, preset(d)))
                    .collect()
            }
        }
        Request::DeviceActivity => {
            let all: Vec<crate::control::DeviceActivity> = typed(reply)?;
            all.iter()
                .map(|a| {
                    format!(
                        "{}\t{}\tlast message {}\t{} today\n",
                        a.id,
                        if a.online { "online" } else { "offline" },
                        a.last_seen_ms.map_or("none since start".to_string(), utc),
                        a.messages_today
                    )
                })
                .collect()
        }
        Request::DeviceShow { .. } => {
            let d: DeviceInfo = typed(reply)?;
            format!(
                "id:         {}\nname:       {:?}\npreset:     {}\npublish:    {}\nsubscribe:  {}\nadded:      {}\n",
                d.id,
                d.name,
                preset(&d),
                d.publish.join(", "),
                d.subscribe.join(", "),
                utc(d.created_ms)
            )
        }
        Request::DeviceRemove { .. } => {
            let r: RemovedDevice = typed(reply)?;
            format!(
                "removed device {}; its credential no longer works ({} sessions closed, {} retained messages dropped; its history stays until deleted)\n",
                r.id, r.sessions_closed, r.retained_dropped
            )
        }
        Request::ConsumerAdd { .. } => consumer_added(&typed(reply)?),
        Request::ConsumerList => {
            let all: Vec<ConsumerInfo> = typed(reply)?;
            if all.is_empty() {
                "no local consumers; add one with `dataward consumer add ID`\n".to_string()
            } else {
                all.iter()
                    .map(|c| {
                        format!(
                            "{}\treads {}\t{}\n",
                            c.id,
                            c.destination,
                            c.subscribe.join(", ")
                        )
                    })
                    .collect()
            }
        }
        Request::ConsumerRemove { .. } => {
            let r: RemovedConsumer = typed(reply)?;
            format!(
                "removed consumer {}; its credential no longer works ({} sessions closed)\n",
                r.id, r.sessions_closed
            )
        }
        Request::PolicyCheck { .. } => {
            let c: CheckedPolicy = typed(reply)?;
            let mut text = format!(
                "{}: valid ({} sharing rules, {} command rules)\n",
                c.name, c.sharing_rules, c.command_rules
            );
            for w in &c.warnings {
                text.push_str(&format!("warning: {w}\n"));
            }
            text
        }
        Request::PolicyApply { .. } => {
            let a: AppliedPolicy = typed(reply)?;
            let mut text = if a.changed {
                format!(
                    "policy version {} applied ({} sharing rules, {} command rules); it is the policy in force from now on\n",
                    a.version, a.sharing_rules, a.command_rules
                )
            } else {
                format!(
                    "unchanged: this text is already policy version {}, in force\n",
                    a.version
                )
            };
            for w in &a.warnings {
                text.push_str(&format!("warning: {w}\n"));
            }
            text
        }
        Request::PolicyShow { .. } => {
            let v: PolicyVersionInfo = typed(reply)?;
            if v.version == 0 {
                "# no policy has been applied: nothing is shared with any destination\n".to_string()
            } else {
                let mut text = format!("# {}\n", version_line(&v));
                text.push_str(v.text.as_deref().unwrap_or_default());
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                text
            }
        }
        Request::PolicyVersions => {
            let all: Vec<PolicyVersionInfo> = typed(reply)?;
            if all.is_empty() {
                "no policy has been applied: nothing is shared with any destination\n".to_string()
            } else {
                all.iter()
                    .map(|v| format!("{}\n", version_line(v)))
                    .collect()
            }
        }
        Request::PolicyPreview { .. } => preview(&typed(reply)?),
        Request::Export { .. } => {
            let s: ExportSummary = typed(reply)?;
            let mut text = format!("exported {} records\n", s.records);
            for u in &s.unreadable {
                text.push_str(&format!("NOT exported: {u}\n"));
            }
            text
        }
        Request::Init { .. } => {
            let r: InitReport = typed(reply)?;
            let mut text = format!(
                "Keys set up (key id {}). From now on, history is kept, encrypted to your key.\n\n\
                 Your recovery key is below. It is shown only this once. Write it down and keep it\n\
                 apart from the hub: with it, `dataward passphrase reset` sets a new passphrase if\n\
                 you forget this one. Without both, the history cannot be read by anyone.\n\n    {}\n\n",
                r.key_id, *r.recovery_key.0
            );
            if r.migrated > 0 {
                text.push_str(&format!(
                    "{} records kept before encryption existed are now encrypted too.\n",
                    r.migrated
                ));
            }
            text
        }
        Request::PassphraseChange { .. } | Request::PassphraseReset { .. } => {
            let r: PassphraseChanged = typed(reply)?;
            format!(
                "passphrase changed (key id {}); the history and the recovery key are unchanged\n",
                r.key_id
            )
        }
        Request::KeyRecord => format!("{reply:#}\n"),
        Request::Fields { pending, .. } => fields(&typed(reply)?, *pending),
        Request::Ledger { .. } => ledger::listing(&typed(reply)?),
        Request::LedgerVerify => ledger::verdict(&typed(reply)?),
        Request::LedgerSummary { .. } => ledger::summary(&typed::<Vec<_>>(reply)?),
        Request::LedgerReceived { .. } => ledger::received(&typed(reply)?),
        Request::Statement { json_ld: true } => format!("{reply:#}\n"),
        Request::Statement { json_ld: false } => {
            let s: policy::statement::Statement = typed(reply)?;
            if s.lines.is_empty() {
                "no devices or no destinations: nothing leaves\n".to_string()
            } else {
                s.text()
            }
        }
        Request::Destinations => {
            let list: Vec<DestinationApproval> = typed(reply)?;
            if list.is_empty() {
                "no destinations are configured: nothing leaves\n".to_string()
            } else {
                list.iter()
                    .map(|d| {
                        format!(
                            "{}\t{}\n",
                            d.name,
                            if d.approved {
                                "approved: rules for every destination (\"*\") reach it"
                            } else {
                                "NEW: only rules that name it reach it (`dataward destinations approve NAME`)"
                            }
                        )
                    })
                    .collect()
            }
        }
        Request::DestinationApprove { .. } => {
            let d: DestinationApproval = typed(reply)?;
            format!(
                "{}: approved; rules for every destination (\"*\") reach it from the next message on\n",
                d.name
            )
        }
        Request::FieldsApprove { .. } => {
            let a: FieldsApproved = typed(reply)?;
            if a.approved.is_empty() {
                format!("{}: nothing was held; nothing changed\n", a.device)
            } else {
                format!(
                    "{}: approved {}; wildcard rules share them from the next message on\n",
                    a.device,
                    a.approved
                        .iter()
                        .map(|f| f.escape_debug().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        }
        Request::Delete { .. } | Request::Wipe { .. } => deleted(&typed(reply)?),
    })
}

/// Field names and samples come from devices: escaped, so that no control
/// character reaches the terminal.
fn fields(list: &FieldList, pending: bool) -> String {
    if list.fields.is_empty() {
        return if pending {
            "no held fields: nothing waits for approval\n".to_string()
        } else {
            "no fields recorded yet\n".to_string()
        };
    }
    let mut out = String::new();
    for f in &list.fields {
        let sample = match (&f.sample, f.held) {
            (_, false) => String::new(),
            (Some(s), true) => format!("  sample: {}", s.escape_debug()),
            (None, true) if list.running => "  (no sample since start)".to_string(),
            (None, true) => "  (samples only while the gateway runs)".to_string(),
        };
        out.push_str(&format!(
            "{}\t{}\t{}\tfirst seen {}{}\n",
            f.device,
            f.field.escape_debug(),
            match (f.approved, f.held) {
                (true, _) => "approved",
                (false, true) => "HELD",
                (false, false) => "new (no wildcard rule shares it)",
            },
            utc(f.first_seen_ms),
            sample
        ));
    }
    let held = list.fields.iter().filter(|f| f.held).count();
    if held > 0 {
        out.push_str(&format!(
            "{held} held: no wildcard rule shares them until you run `dataward fields approve DEVICE FIELD`\n"
        ));
    }
    out
}

fn deleted(r: &DeleteReport) -> String {
    let h = &r.history;
    let mut text = format!(
        "{}: {} records in {} device-days destroyed ({}; unreadable {:.1} ms after the start)",
        match &r.device {
            Some(d) => format!("deleted the history of {d}"),
            None => "wiped all history".to_string(),
        },
        h.records,
        h.periods,
        bytes(h.bytes),
        h.unreadable_after_ms
    );
    if h.kept > 0 {
        text.push_str(&format!(
            "; {} records of the days at the range's edges were re-encrypted and kept",
            h.kept
        ));
    }
    text.push_str(&format!(
        "\n{} entries waiting to leave and {} retained messages dropped\n",
        r.outbox_entries, r.retained
    ));
    if r.fields_forgotten > 0 {
        text.push_str(&format!(
            "{} field names forgotten: what the device sends next is held as new\n",
            r.fields_forgotten
        ));
    }
    if r.keys_removed {
        text.push_str(&format!(
            "factory wipe: {} devices, {} local consumers and {} policy versions removed, and your keys: run `dataward init` to keep history again\n",
            r.devices_removed, r.consumers_removed, r.policy_versions_removed
        ));
    }
    text
}

fn preset(d: &DeviceInfo) -> &'static str {
    d.preset.name()
}

fn version_line(v: &PolicyVersionInfo) -> String {
    format!(
        "policy version {}, applied {} from {}{}",
        v.version,
        v.applied_ms.map(utc).unwrap_or_default(),
        v.source.as_deref().unwrap_or("?"),
        if v.in_force { " (in force)" } else { "" }
    )
}

fn added(a: &AddedDevice) -> String {
    let d = &a.device;
    format!(
        "Device added. The password is shown only now; dataward keeps just a hash of it.\n  \
         id / MQTT username: {}\n  MQTT client id:     {} (or {}.<suffix> for more connections)\n  \
         password:           {}\n  may publish to:     {}\n  may subscribe to:   {}\n",
        d.id,
        d.id,
        d.id,
        a.password,
        d.publish.join(", "),
        d.subscribe.join(", ")
    )
}

fn consumer_added(a: &AddedConsumer) -> String {
    let c = &a.consumer;
    let mut text = format!(
        "Consumer added. The password is shown only now; dataward keeps just a hash of it.\n  \
         MQTT username:    {}\n  password:         {}\n  client id:        {} (or {}.<suffix> for more connections)\n  \
         may subscribe to: {}\n  It reads what the policy shares with destination {:?}, under {}, never a device's own topics.\n",
        c.username,
        a.password,
        c.id,
        c.id,
        c.subscribe.join(", "),
        c.destination,
        crate::local::view_prefix(&c.destination),
    );
    if a.discovery {
        text.push_str(
            "  Home Assistant: add the MQTT integration with the hub's address, port and these credentials,\n  \
             and this client id (advanced options); the shared fields appear on their own\n  \
             (discovery prefix \"homeassistant\").\n",
        );
    }
    text
}

fn status(s: &StatusReport) -> String {
    let mut out = match (s.running, s.pid, s.uptime_secs) {
        (true, Some(pid), Some(up)) => {
            format!("dataward: running (pid {pid}, up {})\n", duration(up))
        }
        _ => "dataward: not running\n".to_string(),
    };
    if let Some(link) = &s.setup_link {
        out.push_str(&format!(
            "setup: open {link} to set your passphrase (one time), or run `dataward init`\n"
        ));
    }
    out.push_str(&format!("data directory: {}\n", s.data_dir));
    if let Some(f) = &s.mqtt_tls_fingerprint {
        out.push_str(&format!("devices' TLS certificate: SHA-256 {f}\n"));
    }
    if let Some(f) = &s.http_tls_fingerprint {
        out.push_str(&format!("web UI's TLS certificate: SHA-256 {f}\n"));
    }
    out.push_str(&format!(
        "devices: {} known, {} connected ({} connections)\n",
        s.devices.known, s.devices.connected, s.devices.connections
    ));
    if s.policy_version == 0 {
        out.push_str("policy: none applied (nothing is shared)\n");
    } else {
        out.push_str(&format!("policy: version {} in force\n", s.policy_version));
    }
    out.push_str(&format!("history: {}\n", s.history));
    if s.malformed_messages > 0 {
        out.push_str(&format!(
            "malformed messages: {} since start (they look like JSON but do not parse: kept in history, forwarded nowhere)\n",
            s.malformed_messages
        ));
    }
    if s.held_fields > 0 {
        out.push_str(&format!(
            "held fields: {} new fields wait for your approval before a wildcard rule shares them (`dataward fields --pending`)\n",
            s.held_fields
        ));
    }
    out.push_str(&format!("store: {} on disk\n", bytes(s.store_bytes)));
    for d in &s.destinations {
        out.push_str(&format!(
            "destination {}: {}, backlog {}{}\n",
            d.name,
            match d.consumers_online {
                Some(n) if s.running => format!("local view, {n} consumers online"),
                Some(_) => "local view".to_string(),
                None if d.connected => "connected".to_string(),
                None => "not connected".to_string(),
            },
            d.backlog,
            d.oldest_pending_secs
                .map(|a| format!(" (oldest waiting {})", duration(a)))
                .unwrap_or_default()
        ));
        if d.dead_letters > 0 {
            out.push_str(&format!(
                "  {} messages set aside as dead letters: the destination kept refusing them\n",
                d.dead_letters
            ));
        }
    }
    if s.destinations.is_empty() {
        out.push_str("destinations: none configured\n");
    }
    out
}

fn preview(p: &PolicyPreview) -> String {
    let mut out = format!(
        "device {}, topic {:?}, {}\n",
        p.device,
        p.topic,
        match p.policy_version {
            Some(0) => "no policy (nothing is shared)".to_string(),
            Some(v) => format!("policy version {v}"),
            None => "candidate policy".to_string(),
        }
    );
    if p.destinations.is_empty() {
        out.push_str("no destinations are configured: nothing leaves\n");
    }
    for d in &p.destinations {
        match &d.payload {
            Some(payload) => out.push_str(&format!("{} receives: {payload}\n", d.destination)),
            None => out.push_str(&format!("{} receives nothing\n", d.destination)),
        }
        if d.new_destination {
            out.push_str(&format!(
                "  (a new destination: rules for every destination do not reach it until `dataward destinations approve {}`)\n",
                d.destination
            ));
        }
        for f in &d.fields {
            out.push_str(&format!(
                "  {:<24} {:<6} {}\n",
                f.field,
                f.action,
                f.rule.as_deref().unwrap_or("no rule matches (not shared)")
            ));
        }
    }
    out
}

fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    }
}

/// Milliseconds since the epoch as an ISO 8601 UTC time, to the second.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        policy::calendar::date_of_day(days as i64),
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes_read_well() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_048_523_000), "2026-11-30T14:22:03Z");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(3_725), "1h 2m");
        assert_eq!(duration(90_000), "1d 1h");
        assert_eq!(bytes(2048), "2.0 KiB");
    }
}
