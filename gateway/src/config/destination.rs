//! A destination as the config describes it: where it is, who dataward
//! is there, and how local topics map to its topics. Plain data; the uplink
//! acts on it.

use std::path::PathBuf;

use serde::Deserialize;

/// A credential from the config: never printed (its `Debug` is redacted)
/// and wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(zeroize::Zeroizing<String>);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Secret(zeroize::Zeroizing::new(s)))
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// The name rules use, e.g. `vendor_cloud`.
    pub name: String,
    /// Where the destination is: a broker elsewhere, or a view on this hub.
    #[serde(default)]
    pub kind: DestinationKind,
    /// `mqtt://host:port` or `mqtts://host:port` (TLS, verified). Required
    /// for `kind = "mqtt"`; a local destination has none.
    #[serde(default)]
    pub url: String,
    /// A local destination also announces the fields it receives to Home
    /// Assistant (MQTT discovery, under `homeassistant/`).
    #[serde(default)]
    pub home_assistant_discovery: bool,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// PEM file with the CA certificates to trust for `mqtts://`; without it
    /// the system's trust store is used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Remote topic = `topic_prefix` + local topic.
    #[serde(default)]
    pub topic_prefix: String,
    /// Cloud-to-device commands: the uplink subscribes to
    /// `command_prefix` + `#`, and a message on `command_prefix` + T is a
    /// command for local topic T. No prefix: no commands from this cloud.
    #[serde(default)]
    pub command_prefix: Option<String>,
    /// QoS 1 messages in flight to this cloud at once.
    #[serde(default = "default_inflight")]
    pub max_inflight: u16,
    #[serde(default = "default_keepalive")]
    pub keep_alive_secs: u64,
    /// Who receives the data: an organisation ("Acme Inc."), for the
    /// sharing statement and the ledger's readers.
    #[serde(default)]
    pub recipient: Option<String>,
    /// What the recipient uses it for, in the user's words.
    #[serde(default)]
    pub purpose: Option<String>,
    /// Where the recipient is: a country code ("US", "DE").
    #[serde(default)]
    pub country: Option<String>,
    /// `summary` (the default: counts per bucket, `[ledger] bucket`) or
    /// `detailed` (an entry per message as well).
    #[serde(default)]
    pub ledger: LedgerDetail,
}

/// Where a destination's data goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationKind {
    /// A broker elsewhere (a vendor's cloud), reached by the uplink.
    #[default]
    Mqtt,
    /// A view on this hub's own broker, under `local/<name>/`, that local
    /// consumers (Home Assistant, say) subscribe to with their own account.
    Local,
}

impl DestinationConfig {
    pub fn is_local(&self) -> bool {
        self.kind == DestinationKind::Local
    }

    /// What precedes a device's topic at the destination: the configured
    /// prefix at a broker elsewhere, `local/<name>/` in a local view.
    pub fn remote_prefix(&self) -> String {
        if self.is_local() {
            crate::local::view_prefix(&self.name)
        } else {
            self.topic_prefix.clone()
        }
    }
}

/// How much of a destination's egress the ledger records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerDetail {
    #[default]
    Summary,
    Detailed,
}

/// Where a destination lives, parsed from its `mqtt://` / `mqtts://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(format!("url {url:?} must start with mqtt:// or mqtts://"));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("url {url:?} has an invalid port"))?;
                (h, port)
            }
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', '@', '?', '#']) {
            return Err(format!("url {url:?} has no valid host"));
        }
        Ok(Self {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

fn default_inflight() -> u16 {
    64
}
fn default_keepalive() -> u64 {
    30
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn urls_parse() {
        assert_eq!(
            Endpoint::parse("mqtt://127.0.0.1:1884").unwrap(),
            Endpoint {
                host: "127.0.0.1".into(),
                port: 1884,
                tls: false
            }
        );
        assert_eq!(Endpoint::parse("mqtts://cloud.example").unwrap().port, 8883);
        assert_eq!(Endpoint::parse("mqtt://[::1]:1883").unwrap().host, "::1");
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://h:99999",
            "mqtt://u@h:1",
            "h:1",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let c = Config::parse(
            "[[destination]]\nname = \"v\"\nurl = \"mqtt://h:1\"\npassword = \"hunter2\"\n",
        )
        .expect("valid");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(
            c.destinations[0].password.as_ref().map(Secret::expose),
            Some("hunter2")
        );
    }
}
