//! `export`: the history, decrypted with the user's key, streamed as NDJSON
//! or CSV, optionally encrypted to an age recipient. Memory stays flat
//! whatever the size (CSV reads the range twice: once for its columns).
//! The formats are specified in docs/formats.md.

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::export_csv::CsvWriter;
use super::{OpError, Operations, Passphrase};
use crate::store::{HistoryRecord, ReadRange, StoreError};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    #[default]
    Ndjson,
    Csv,
}

/// What to export, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRequest {
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub since_ms: Option<u64>,
    #[serde(default)]
    pub until_ms: Option<u64>,
    #[serde(default)]
    pub format: ExportFormat,
    /// An age recipient (`age1…`): the output is an age file for it.
    #[serde(default)]
    pub encrypt_to: Option<String>,
    pub passphrase: Passphrase,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSummary {
    pub records: u64,
    /// Records or keys that failed authentication, one line per device and
    /// day, with how many records it covers. Never skipped in silence.
    #[serde(default)]
    pub unreadable: Vec<String>,
}

fn write_err(e: std::io::Error) -> OpError {
    OpError::runtime(format!("writing the output failed: {e}"))
}

/// Counts what could not be read, per device, day and reason.
#[derive(Default)]
pub(super) struct Unreadable(std::collections::BTreeMap<String, u64>);

impl Unreadable {
    /// Takes an unreadable record's error; anything else is returned.
    pub(super) fn note(&mut self, e: StoreError) -> Result<(), OpError> {
        match e {
            StoreError::Unreadable { .. } => {
                *self.0.entry(e.to_string()).or_default() += 1;
                Ok(())
            }
            other => Err(other.into()),
        }
    }

    pub(super) fn into_lines(self) -> Vec<String> {
        self.0
            .into_iter()
            .map(|(what, n)| format!("{what} ({n} record{})", if n == 1 { "" } else { "s" }))
            .collect()
    }
}

impl Operations {
    /// Writes the history to `out`, and records in the ledger who exported
    /// what. Blocking: run it off the async runtime.
    pub fn export(
        &self,
        req: &ExportRequest,
        out: &mut dyn Write,
    ) -> Result<ExportSummary, OpError> {
        let summary = self.export_to(req, out)?;
        if let Ok(store) = self.store() {
            store.ledger().note(crate::ledger::EntryBody::Export {
                by: super::actor(),
                device: req.device.clone(),
                since_ms: req.since_ms,
                until_ms: req.until_ms,
                format: match req.format {
                    ExportFormat::Ndjson => "ndjson".into(),
                    ExportFormat::Csv => "csv".into(),
                },
                records: summary.records,
                encrypted: req.encrypt_to.is_some(),
            });
            if let Err(e) = store.flush() {
                tracing::error!(error = %e, "the export's ledger event could not be flushed");
            }
        }
        Ok(summary)
    }

    fn export_to(
        &self,
        req: &ExportRequest,
        out: &mut dyn Write,
    ) -> Result<ExportSummary, OpError> {
        // A typo in the device's id would otherwise give an empty file
        // that looks like "nothing was kept".
        if let Some(device) = &req.device {
            let known = self
                .registry
                .as_ref()
                .is_some_and(|r| r.get(device).is_some());
            let kept = self.store().map(|s| s.history().count(device)).unwrap_or(0);
            if !known && kept == 0 {
                return Err(OpError::input(format!(
                    "there is no device {device:?} and no history of it"
                )));
            }
        }
        let sk = self.unlock(&req.passphrase)?;
        let recipient = match &req.encrypt_to {
            Some(r) => Some(r.trim().parse::<age::x25519::Recipient>().map_err(|e| {
                OpError::input(format!(
                    "the key to encrypt to (--encrypt-to) {r:?} is not an age recipient (age1…): {e}"
                ))
            })?),
            None => None,
        };
        match recipient {
            Some(r) => {
                let enc =
                    age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
                        .map_err(|e| OpError::runtime(format!("age: {e}")))?;
                let mut w = enc.wrap_output(out).map_err(write_err)?;
                let summary = self.write_export(req, &sk, &mut w)?;
                // The last chunk is written only now.
                w.finish().map_err(write_err)?.flush().map_err(write_err)?;
                Ok(summary)
            }
            None => self.write_export(req, &sk, out),
        }
    }

    fn write_export(
        &self,
        req: &ExportRequest,
        sk: &crate::keys::PrivateKey,
        out: &mut dyn Write,
    ) -> Result<ExportSummary, OpError> {
        let history = self.store()?.history();
        // What was received up to now: messages arriving during the export
        // are not half in it (and CSV's two passes see the same records).
        let now = crate::pipeline::now_ms().saturating_add(1);
        let range = ReadRange {
            device: req.device.as_deref(),
            since_ms: req.since_ms.unwrap_or(0),
            until_ms: req.until_ms.unwrap_or(u64::MAX).min(now),
        };
        let mut buf = std::io::BufWriter::with_capacity(64 << 10, out);
        let mut unreadable = Unreadable::default();
        let mut records = 0u64;
        match req.format {
            ExportFormat::Ndjson => {
                let mut line = Vec::with_capacity(1024);
                for rec in history.read(sk, &range) {
                    match rec {
                        Ok(rec) => {
                            line.clear();
                            ndjson_line(&rec, &mut line);
                            buf.write_all(&line).map_err(write_err)?;
                            records += 1;
                        }
                        Err(e) => unreadable.note(e)?,
                    }
                }
            }
            ExportFormat::Csv => {
                // First pass: the columns. Problems are counted in the
                // second pass only, so each is reported once.
                let mut csv = CsvWriter::default();
                let mut last_seq = 0;
                for rec in history.read(sk, &range).flatten() {
                    last_seq = last_seq.max(rec.seq);
                    csv.learn(&rec);
                }
                csv.header(&mut buf).map_err(write_err)?;
                for rec in history.read(sk, &range) {
                    match rec {
                        // Written after the first pass: its fields may have
                        // no column.
                        Ok(rec) if rec.seq > last_seq => {}
                        Ok(rec) => {
                            csv.row(&rec, &mut buf).map_err(write_err)?;
                            records += 1;
                        }
                        Err(e) => unreadable.note(e)?,
                    }
                }
            }
        }
        buf.flush().map_err(write_err)?;
        Ok(ExportSummary {
            records,
            unreadable: unreadable.into_lines(),
        })
    }
}

/// One NDJSON line: device, topic, received (RFC 3339 UTC), received_ms,
/// seq, qos, retain, and the payload: `payload` as the JSON itself when it
/// is JSON, else `payload_text` (UTF-8) or `payload_b64`.
pub fn ndjson_line(rec: &HistoryRecord, line: &mut Vec<u8>) {
    use std::fmt::Write as _;
    let mut head = String::with_capacity(128);
    head.push_str("{\"device\":");
    head.push_str(&json_string(&rec.device));
    head.push_str(",\"topic\":");
    head.push_str(&json_string(&rec.topic));
    let _ = write!(
        head,
        ",\"received\":\"{}\",\"received_ms\":{},\"seq\":{},\"qos\":{},\"retain\":{},",
        crate::when::rfc3339_ms(rec.received_ms),
        rec.received_ms,
        rec.seq,
        rec.qos,
        rec.retain
    );
    line.extend_from_slice(head.as_bytes());
    // serde_json's skipping parser does not check UTF-8 inside strings:
    // the bytes are checked first, so every line is UTF-8.
    let utf8 = std::str::from_utf8(&rec.payload).ok();
    let is_json =
        utf8.is_some() && serde_json::from_slice::<serde::de::IgnoredAny>(&rec.payload).is_ok();
    let breaks = rec.payload.iter().any(|b| *b == b'\n' || *b == b'\r');
    // A line break inside (pretty-printed JSON) would split the line: the
    // same value, written compactly, if it parses fully.
    let compact = (is_json && breaks)
        .then(|| serde_json::from_slice::<serde_json::Value>(&rec.payload).ok())
        .flatten()
        .map(|v| v.to_string());
    if is_json && !breaks {
        // Embedded as sent: numbers keep their exact text.
        line.extend_from_slice(b"\"payload\":");
        line.extend_from_slice(rec.payload.trim_ascii());
    } else if let Some(compact) = compact {
        line.extend_from_slice(b"\"payload\":");
        line.extend_from_slice(compact.as_bytes());
    } else if let Some(text) = utf8 {
        line.extend_from_slice(b"\"payload_text\":");
        line.extend_from_slice(json_string(text).as_bytes());
    } else {
        use base64::Engine;
        line.extend_from_slice(b"\"payload_b64\":\"");
        line.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(&rec.payload)
                .as_bytes(),
        );
        line.push(b'"');
    }
    line.extend_from_slice(b"}\n");
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}
