//! The control protocol spoken on `<data_dir>/control.sock` (documented
//! for users in docs/control.md).
//!
//! One request per connection. Every message is a frame: one byte of kind,
//! a big-endian u32 body length, the body. The client sends one `Q` frame
//! whose body is a JSON [`Envelope`]; the server answers with either one
//! `R` (JSON reply) or `E` (JSON [`OpError`](super::OpError)) frame, or, for
//! a streamed answer such as export, any number of `D` (raw data) frames
//! followed by one `S` (JSON summary) or `E` frame.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version this build speaks. A server answers any other with
/// an error naming the versions it supports.
pub const VERSION: u32 = 1;

/// Largest request: a policy text travels in one.
pub const MAX_REQUEST_BYTES: u32 = 4 << 20;
/// Largest single reply frame a client accepts.
pub const MAX_REPLY_BYTES: u32 = 64 << 20;
/// Size of the data chunks of a streamed answer.
pub const CHUNK_BYTES: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Request,
    Reply,
    Error,
    Data,
    StreamEnd,
}

impl FrameKind {
    fn byte(self) -> u8 {
        match self {
            FrameKind::Request => b'Q',
            FrameKind::Reply => b'R',
            FrameKind::Error => b'E',
            FrameKind::Data => b'D',
            FrameKind::StreamEnd => b'S',
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'Q' => FrameKind::Request,
            b'R' => FrameKind::Reply,
            b'E' => FrameKind::Error,
            b'D' => FrameKind::Data,
            b'S' => FrameKind::StreamEnd,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the connection closed")]
    Closed,
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("a frame of {len} bytes is larger than the limit of {max}")]
    TooLarge { len: u32, max: u32 },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: FrameKind,
    body: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut head = [0u8; 5];
    head[0] = kind.byte();
    head[1..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&head).await?;
    w.write_all(body).await?;
    Ok(())
}

/// Reads one frame, refusing bodies above `max` before allocating them.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: u32,
) -> Result<(FrameKind, Vec<u8>), FrameError> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let kind = FrameKind::from_byte(head[0]).ok_or(FrameError::UnknownKind(head[0]))?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    // Grown as the bytes arrive, not allocated from the header's claim: a
    // client that announces 4 MiB and sends nothing holds nothing.
    let mut body = Vec::with_capacity((len as usize).min(64 << 10));
    r.take(u64::from(len)).read_to_end(&mut body).await?;
    if body.len() != len as usize {
        return Err(FrameError::Closed);
    }
    Ok((kind, body))
}

/// A request with the protocol version it was written for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    #[serde(flatten)]
    pub request: Request,
}

/// Everything a user can ask of dataward, as the operations layer takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    DeviceAdd {
        name: String,
        #[serde(default)]
        id: Option<String>,
        preset: String,
    },
    DeviceList,
    /// The running gateway's view of each device: online, last message,
    /// messages today.
    DeviceActivity,
    DeviceShow {
        id: String,
    },
    DeviceRemove {
        id: String,
    },
    /// An account for a local app (Home Assistant, say) that reads one
    /// local destination's view; the only local destination when none is
    /// named.
    ConsumerAdd {
        id: String,
        #[serde(default)]
        destination: Option<String>,
    },
    ConsumerList,
    ConsumerRemove {
        id: String,
    },
    /// Validates `text` as the running (or configured) gateway would.
    PolicyCheck {
        text: String,
        /// What to call the text in messages, e.g. its file name.
        name: String,
    },
    PolicyApply {
        text: String,
        name: String,
    },
    /// One stored version; the one in force without `version`.
    PolicyShow {
        /// (Not `version`: that key is the protocol's.)
        #[serde(default)]
        policy_version: Option<u64>,
    },
    PolicyVersions,
    /// What each destination would receive of `payload` from `device`.
    PolicyPreview {
        device: String,
        #[serde(default)]
        topic: Option<String>,
        #[serde(default)]
        payload: String,
        /// Preview the device's last message instead (gateway running).
        #[serde(default)]
        last: bool,
        /// A policy text to preview instead of the one in force.
        #[serde(default)]
        candidate: Option<String>,
    },
    /// Streamed: the export's bytes in data frames, then a summary.
    Export(super::ExportRequest),
    Init {
        passphrase: super::Passphrase,
    },
    PassphraseChange {
        old: super::Passphrase,
        new: super::Passphrase,
    },
    PassphraseReset {
        recovery_key: super::Passphrase,
        new: super::Passphrase,
    },
    /// The stored key record, for `decrypt` to unlock on the user's side.
    KeyRecord,
    /// The field inventory: one device's or all, only held ones if `pending`.
    Fields {
        #[serde(default)]
        device: Option<String>,
        #[serde(default)]
        pending: bool,
    },
    /// The configured destinations, and which `*` rules reach.
    Destinations,
    /// Ledger entries from `since_ms`, optionally for one destination or
    /// device (the newest 10,000 at most).
    Ledger {
        #[serde(default)]
        since_ms: Option<u64>,
        #[serde(default)]
        destination: Option<String>,
        #[serde(default)]
        device: Option<String>,
    },
    LedgerVerify,
    LedgerSummary {
        #[serde(default)]
        since_ms: Option<u64>,
    },
    LedgerReceived {
        destination: String,
        #[serde(default)]
        since_ms: Option<u64>,
    },
    /// The policy in force, in plain words; as JSON-LD (W3C DPV) with
    /// `json_ld`.
    Statement {
        #[serde(default)]
        json_ld: bool,
    },
    DestinationApprove {
        name: String,
    },
    /// Releases one held field, or every held field of the device.
    FieldsApprove {
        device: String,
        #[serde(default)]
        field: Option<String>,
    },
    Delete {
        device: String,
        #[serde(default)]
        since_ms: Option<u64>,
        #[serde(default)]
        until_ms: Option<u64>,
        passphrase: super::Passphrase,
    },
    Wipe {
        #[serde(default)]
        factory: bool,
        passphrase: super::Passphrase,
    },
}

impl Request {
    /// Whether the request may create the data directory when none exists.
    pub fn creates_store(&self) -> bool {
        matches!(
            self,
            Request::DeviceAdd { .. }
                | Request::ConsumerAdd { .. }
                | Request::PolicyApply { .. }
                | Request::Init { .. }
        )
    }

    /// Whether answering holds a thread for a while (see
    /// `Operations::call_blocking`).
    pub fn is_blocking(&self) -> bool {
        matches!(
            self,
            Request::Init { .. }
                | Request::PassphraseChange { .. }
                | Request::PassphraseReset { .. }
                // Scans of the ledger: a year of it is a while on a hub.
                | Request::Ledger { .. }
                | Request::LedgerVerify
                | Request::LedgerSummary { .. }
                | Request::LedgerReceived { .. }
                | Request::Statement { .. }
        )
    }

    /// Whether the answer comes as a stream of data frames.
    pub fn is_streamed(&self) -> bool {
        matches!(self, Request::Export { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversize_is_refused_unread() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameKind::Reply, b"{\"a\":1}")
            .await
            .expect("write");
        let (kind, body) = read_frame(&mut buf.as_slice(), 100).await.expect("read");
        assert_eq!(
            (kind, body.as_slice()),
            (FrameKind::Reply, &b"{\"a\":1}"[..])
        );
        assert!(matches!(
            read_frame(&mut buf.as_slice(), 3).await,
            Err(FrameError::TooLarge { len: 7, max: 3 })
        ));
        assert!(matches!(
            read_frame(&mut &b"X\0\0\0\0"[..], 10).await,
            Err(FrameError::UnknownKind(b'X'))
        ));
        assert!(matches!(
            read_frame(&mut &b"R\0\0"[..], 10).await,
            Err(FrameError::Closed)
        ));
        assert!(matches!(
            read_frame(&mut &b"R\0\0\0\x05ab"[..], 10).await,
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn requests_carry_their_version_and_op() {
        let env = Envelope {
            version: VERSION,
            request: Request::DeviceShow { id: "plug".into() },
        };
        let text = serde_json::to_string(&env).expect("json");
        assert_eq!(text, r#"{"version":1,"op":"device_show","id":"plug"}"#);
        let back: Envelope = serde_json::from_str(&text).expect("parse");
        assert_eq!(back.request, env.request);
        let status: Envelope =
            serde_json::from_str(r#"{"version":1,"op":"status"}"#).expect("parse");
        assert_eq!(status.request, Request::Status);
        assert!(serde_json::from_str::<Envelope>(r#"{"version":1,"op":"launch"}"#).is_err());
    }
}
