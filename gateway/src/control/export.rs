//! `export`: the stored history as NDJSON, one object per message with
//! `device`, `seq`, `received_ms`, `topic` and `payload` (or
//! `payload_base64` for a payload that is not UTF-8).

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::{OpError, Operations};
use crate::store::HistoryStore;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSummary {
    pub records: u64,
}

impl Operations {
    /// Writes the history to `out`. Blocking: run it off the async runtime.
    /// With no data directory there is nothing to export, which is not an
    /// error.
    pub fn export(
        &self,
        device: Option<&str>,
        out: &mut dyn Write,
    ) -> Result<ExportSummary, OpError> {
        let Some(store) = &self.store else {
            return Ok(ExportSummary { records: 0 });
        };
        let history = store.history()?;
        let write_err =
            |e: std::io::Error| OpError::runtime(format!("writing the output failed: {e}"));
        let mut records = 0u64;
        let mut line = Vec::with_capacity(512);
        for rec in history.scan(device) {
            let rec = rec?;
            let mut obj = serde_json::json!({
                "device": rec.device,
                "seq": rec.seq,
                "received_ms": rec.received_ms,
                "topic": rec.topic,
            });
            match std::str::from_utf8(&rec.payload) {
                Ok(s) => obj["payload"] = s.into(),
                Err(_) => {
                    use base64::Engine;
                    obj["payload_base64"] = base64::engine::general_purpose::STANDARD
                        .encode(&rec.payload)
                        .into();
                }
            }
            line.clear();
            serde_json::to_writer(&mut line, &obj)
                .map_err(|e| OpError::runtime(format!("encoding a record: {e}")))?;
            line.push(b'\n');
            out.write_all(&line).map_err(write_err)?;
            records += 1;
        }
        out.flush().map_err(write_err)?;
        Ok(ExportSummary { records })
    }
}
