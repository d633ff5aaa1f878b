//! The configuration file (TOML): listeners, data directory, destinations,
//! limits. Unknown keys are errors, reported with line and column; every key
//! has an embedded default so `dataward run` works with no file at all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod destination;

pub use destination::{DestinationConfig, Endpoint, LedgerDetail, Secret};

/// The largest packet an uplink sends to, or takes from, a destination.
pub const UPLINK_MAX_PACKET_BYTES: usize = 1 << 20;

/// The longest topic MQTT can carry (its length is a u16).
pub const MAX_TOPIC_BYTES: usize = u16::MAX as usize;

/// Whether `s` holds a character no MQTT topic that leaves the home may
/// carry: NUL and the other C0 and C1 controls, and DEL. A cloud broker
/// drops the connection on some of them, and they forge log lines.
pub fn has_control_chars(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Where `dataward run` looks for a config file when `--config` is not given.
pub const SYSTEM_CONFIG: &str = "/etc/dataward/dataward.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}, line {line}, column {column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the store lives. Relative paths are relative to the working
    /// directory, like the embedded default `./dataward-data`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The policy file. Default: `<data_dir>/policy.toml` if it exists;
    /// with no policy at all, nothing leaves the home.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub ledger: LedgerConfig,
    #[serde(default, rename = "destination")]
    pub destinations: Vec<DestinationConfig>,
    /// The file this was read from; none for the embedded defaults.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// In the data directory: the config file the gateway last ran with, so a
/// command given only `--data-dir` sees the same destinations and policy
/// file with the gateway stopped as it would through the running one.
const REMEMBERED: &str = "config-file";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    #[serde(default = "default_mqtt_listen")]
    pub listen: SocketAddr,
    /// Plain MQTT on `listen`; false turns it off (TLS only).
    #[serde(default = "yes")]
    pub plain: bool,
    /// MQTT over TLS for devices (e.g. "0.0.0.0:8883"), with `tls_cert`
    /// and `tls_key`, or a self-signed certificate made at first start.
    #[serde(default)]
    pub tls_listen: Option<SocketAddr>,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Largest MQTT packet a device may send; a larger one closes its
    /// connection.
    #[serde(default = "default_max_packet")]
    pub max_packet_bytes: u32,
    /// Simultaneous connections one device's credential may hold.
    #[serde(default = "default_conn_per_device")]
    pub max_connections_per_device: u32,
    /// Messages (commands) queued for one device before the oldest are
    /// dropped (and logged). With `max_command_bytes`, this bounds the
    /// memory one device's queue can take.
    #[serde(default = "default_mqueue")]
    pub max_queued_messages: usize,
    /// The largest command a destination may send to a device; larger ones
    /// are dropped (and logged) as they arrive.
    #[serde(default = "default_max_command")]
    pub max_command_bytes: usize,
    /// Retained messages kept at most, over all devices.
    #[serde(default = "default_max_retained")]
    pub max_retained: usize,
    /// How long a command queued for an offline device, or a retained
    /// message, stays valid.
    #[serde(default = "default_expiry")]
    pub message_expiry_secs: u64,
    /// A new connection must deliver its whole CONNECT within this, or it
    /// is closed.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Device connections open at once, all stages.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections that have not delivered their CONNECT yet, overall.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// The same, from one source address.
    #[serde(default = "default_max_handshakes_per_address")]
    pub max_handshakes_per_address: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// A bearer token with which a scraper (Prometheus) may read
    /// `/metrics` without logging in; at least 32 characters. None: only a
    /// logged-in session may.
    #[serde(default)]
    pub metrics_token: Option<String>,
    /// Serve the web UI over HTTPS, with a self-signed certificate made at
    /// first start (unless `tls_cert` and `tls_key` give the user's own).
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Entries an outbox may hold per destination while the cloud is
    /// unreachable; above it, the oldest are dropped and logged.
    #[serde(default = "default_outbox_max")]
    pub outbox_max_entries: u64,
    /// How long device history is kept unless the policy's `[[retain]]`
    /// says otherwise: a duration ("90d"), "forever", or "none". A day is
    /// deleted once all of it is older than this.
    #[serde(default = "default_retention")]
    pub history_retention: String,
}

impl StoreConfig {
    /// The default retention, as validated at load.
    pub fn retention(&self) -> policy::retention::Keep {
        policy::retention::Keep::parse(&self.history_retention)
            .unwrap_or(policy::retention::Keep::For(90 * 86_400_000))
    }
}

fn default_retention() -> String {
    "90d".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// How long ledger entries are kept: a duration ("365d") or
    /// "forever". Pruning cuts at a daily checkpoint, so up to a day more
    /// is kept.
    #[serde(default = "default_ledger_retention")]
    pub retention: String,
    /// The span of an egress entry: what one destination received of one
    /// device in that time is one entry. From "1m" to "1d"; shorter is
    /// finer and larger on disk.
    #[serde(default = "default_ledger_bucket")]
    pub bucket: String,
    /// Record egress at all. Only to measure the ledger's cost: with it
    /// off, nothing says what left.
    #[serde(default = "yes")]
    pub record_egress: bool,
}

impl LedgerConfig {
    /// The bucket span, as validated at load.
    pub fn bucket_ms(&self) -> u64 {
        policy::retention::parse_duration_ms(&self.bucket)
            .unwrap_or(crate::ledger::DEFAULT_BUCKET_MS)
    }

    /// Milliseconds to keep, or none for ever.
    pub fn retention_ms(&self) -> Option<u64> {
        match policy::retention::Keep::parse(&self.retention) {
            Some(policy::retention::Keep::For(ms)) => Some(ms),
            _ => None,
        }
    }
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            retention: default_ledger_retention(),
            bucket: default_ledger_bucket(),
            record_egress: true,
        }
    }
}

fn default_ledger_retention() -> String {
    "365d".into()
}

fn default_ledger_bucket() -> String {
    "1h".into()
}

fn yes() -> bool {
    true
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./dataward-data")
}
fn default_mqtt_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 1883))
}
fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_max_packet() -> u32 {
    256 * 1024
}
fn default_conn_per_device() -> u32 {
    2
}
fn default_mqueue() -> usize {
    64
}
fn default_max_command() -> usize {
    16 * 1024
}
fn default_max_retained() -> usize {
    10_000
}
fn default_connect_timeout() -> u64 {
    5
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_handshakes() -> usize {
    256
}
fn default_max_handshakes_per_address() -> usize {
    16
}
fn default_expiry() -> u64 {
    3600
}
fn default_outbox_max() -> u64 {
    1_000_000
}
impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: default_mqtt_listen(),
            plain: true,
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            max_packet_bytes: default_max_packet(),
            max_connections_per_device: default_conn_per_device(),
            max_queued_messages: default_mqueue(),
            max_command_bytes: default_max_command(),
            max_retained: default_max_retained(),
            message_expiry_secs: default_expiry(),
            connect_timeout_secs: default_connect_timeout(),
            max_connections: default_max_connections(),
            max_handshakes: default_max_handshakes(),
            max_handshakes_per_address: default_max_handshakes_per_address(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_http_listen(),
            metrics_token: None,
            tls: false,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            outbox_max_entries: default_outbox_max(),
            history_retention: default_retention(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            policy: None,
            mqtt: MqttConfig::default(),
            http: HttpConfig::default(),
            store: StoreConfig::default(),
            ledger: LedgerConfig::default(),
            destinations: Vec::new(),
            source: None,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg =
            Self::parse(&text).map_err(|(line, column, message)| ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message,
            })?;
        cfg.source = Some(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()));
        // Paths inside the file are relative to the file, not to wherever
        // the service happens to be started from.
        if let Some(dir) = path.parent() {
            if let Some(p) = cfg.policy.as_mut().filter(|p| p.is_relative()) {
                *p = dir.join(&*p);
            }
            for d in &mut cfg.destinations {
                if let Some(ca) = d.ca_file.as_mut().filter(|p| p.is_relative()) {
                    *ca = dir.join(&*ca);
                }
            }
        }
        Ok(cfg)
    }

    /// Parses and validates config text; errors are (line, column, message).
    pub fn parse(text: &str) -> Result<Self, (usize, usize, String)> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = line_col(text, e.span().map(|s| s.start).unwrap_or(0));
            (line, column, e.message().trim().to_string())
        })?;
        cfg.validate(text)?;
        Ok(cfg)
    }

    fn validate(&self, text: &str) -> Result<(), (usize, usize, String)> {
        // Semantic errors point at the destination's name in the text.
        let at = |needle: &str| {
            let off = text.find(needle).unwrap_or(0);
            line_col(text, off)
        };
        if self.mqtt.tls_cert.is_some() != self.mqtt.tls_key.is_some() {
            let (line, column) = at("tls_");
            return Err((
                line,
                column,
                "[mqtt] needs both tls_cert and tls_key, or neither".into(),
            ));
        }
        if (self.mqtt.tls_cert.is_some()) && self.mqtt.tls_listen.is_none() {
            let (line, column) = at("tls_cert");
            return Err((
                line,
                column,
                "[mqtt] tls_cert is set but tls_listen is not: where should devices connect over TLS?".into(),
            ));
        }
        if !self.mqtt.plain && self.mqtt.tls_listen.is_none() {
            let (line, column) = at("plain");
            return Err((
                line,
                column,
                "[mqtt] plain = false needs tls_listen: devices would have no way in".into(),
            ));
        }
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            let (line, column) = at("tls_");
            return Err((
                line,
                column,
                "[http] needs both tls_cert and tls_key, or neither".into(),
            ));
        }
        if let Some(t) = &self.http.metrics_token {
            // A guessable token would open the metrics to the LAN.
            if t.chars().count() < 32 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                let (line, column) = at("metrics_token");
                return Err((
                    line,
                    column,
                    "[http] metrics_token must be at least 32 printable characters without spaces (e.g. `openssl rand -hex 16`)".into(),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for d in &self.destinations {
            let (line, column) = at(&format!("\"{}\"", d.name));
            let fail = |m: String| Err((line, column, m));
            if !policy::is_valid_name(&d.name) {
                return fail(format!(
                    "destination name {:?} may use only letters, digits, '_' and '-'",
                    d.name
                ));
            }
            if !seen.insert(d.name.as_str()) {
                return fail(format!("destination {:?} is defined twice", d.name));
            }
            if d.is_local() {
                // A view on this hub: nothing to connect to, and its topics
                // are fixed so that consumers' access can be checked.
                let remote_only = [
                    ("url", !d.url.is_empty()),
                    ("client_id", d.client_id.is_some()),
                    ("username", d.username.is_some()),
                    ("password", d.password.is_some()),
                    ("ca_file", d.ca_file.is_some()),
                    ("topic_prefix", !d.topic_prefix.is_empty()),
                    ("command_prefix", d.command_prefix.is_some()),
                ];
                if let Some((key, _)) = remote_only.iter().find(|(_, set)| *set) {
                    return fail(format!(
                        "destination {:?} is local: it takes no {key} (its consumers read {}#)",
                        d.name,
                        crate::local::view_prefix(&d.name)
                    ));
                }
            } else if d.url.is_empty() {
                return fail(format!(
                    "destination {:?} needs a url (mqtt://host:port or mqtts://host:port), or kind = \"local\"",
                    d.name
                ));
            } else if let Err(e) = Endpoint::parse(&d.url) {
                return fail(format!("destination {:?}: {e}", d.name));
            } else if d.home_assistant_discovery {
                return fail(format!(
                    "destination {:?}: home_assistant_discovery is for local destinations (kind = \"local\")",
                    d.name
                ));
            }
            if d.max_inflight == 0 {
                return fail(format!(
                    "destination {:?}: max_inflight must be at least 1",
                    d.name
                ));
            }
            for (key, prefix) in [
                ("topic_prefix", Some(d.topic_prefix.as_str())),
                ("command_prefix", d.command_prefix.as_deref()),
            ] {
                let Some(prefix) = prefix else { continue };
                if prefix.contains(['#', '+']) {
                    return fail(format!(
                        "destination {:?}: {key} may not contain the wildcards '+' or '#'",
                        d.name
                    ));
                }
                if has_control_chars(prefix) {
                    return fail(format!(
                        "destination {:?}: {key} may not contain control characters",
                        d.name
                    ));
                }
                if prefix.len() >= MAX_TOPIC_BYTES {
                    return fail(format!(
                        "destination {:?}: {key} is longer than an MQTT topic can be",
                        d.name
                    ));
                }
            }
        }
        // Home Assistant's discovery topics are one space: two destinations
        // announcing there would each show the other's consumers their
        // device and field names.
        let announcing: Vec<&str> = self
            .destinations
            .iter()
            .filter(|d| d.home_assistant_discovery)
            .map(|d| d.name.as_str())
            .collect();
        if let [_, second, ..] = announcing.as_slice() {
            let (line, column) = at(&format!("\"{second}\""));
            return Err((
                line,
                column,
                format!(
                    "only one destination may announce to Home Assistant; {} do",
                    announcing.join(", ")
                ),
            ));
        }
        if policy::retention::Keep::parse(&self.store.history_retention).is_none() {
            let (line, column) = at("history_retention");
            return Err((
                line,
                column,
                format!(
                    "history_retention {:?} is not \"none\", \"forever\" or a duration such as \"90d\"",
                    self.store.history_retention
                ),
            ));
        }
        if !matches!(
            policy::retention::Keep::parse(&self.ledger.retention),
            Some(policy::retention::Keep::For(_) | policy::retention::Keep::Forever)
        ) {
            let (line, column) = at("retention");
            return Err((
                line,
                column,
                format!(
                    "[ledger] retention {:?} is not \"forever\" or a duration such as \"365d\"",
                    self.ledger.retention
                ),
            ));
        }
        if !policy::retention::parse_duration_ms(&self.ledger.bucket)
            .is_some_and(|ms| (60_000..=86_400_000).contains(&ms) && ms % 60_000 == 0)
        {
            let (line, column) = at("bucket");
            return Err((
                line,
                column,
                format!(
                    "[ledger] bucket {:?} is not a whole number of minutes from \"1m\" to \"1d\"",
                    self.ledger.bucket
                ),
            ));
        }
        for d in &self.destinations {
            for (key, v) in [
                ("recipient", &d.recipient),
                ("purpose", &d.purpose),
                ("country", &d.country),
            ] {
                if v.as_deref()
                    .is_some_and(|t| has_control_chars(t) || t.len() > 200)
                {
                    let (line, column) = at(key);
                    return Err((
                        line,
                        column,
                        format!(
                            "destination {:?}: {key} may hold at most 200 bytes and no control characters",
                            d.name
                        ),
                    ));
                }
            }
        }
        if self.mqtt.max_packet_bytes as usize > UPLINK_MAX_PACKET_BYTES {
            let (line, column) = at("max_packet_bytes");
            return Err((
                line,
                column,
                format!(
                    "max_packet_bytes may be at most {UPLINK_MAX_PACKET_BYTES}: larger messages could not be forwarded to a destination"
                ),
            ));
        }
        for (key, zero) in [
            ("connect_timeout_secs", self.mqtt.connect_timeout_secs == 0),
            ("max_connections", self.mqtt.max_connections == 0),
            ("max_handshakes", self.mqtt.max_handshakes == 0),
            (
                "max_handshakes_per_address",
                self.mqtt.max_handshakes_per_address == 0,
            ),
        ] {
            if zero {
                let (line, column) = at(key);
                return Err((line, column, format!("{key} must be at least 1")));
            }
        }
        if self.mqtt.max_connections_per_device == 0 {
            let (line, column) = at("max_connections_per_device");
            return Err((
                line,
                column,
                "max_connections_per_device must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The config for `dataward run`: `explicit`, else the system file if
    /// it exists, else the embedded defaults; `data_dir` overrides the
    /// file's.
    pub fn resolve(explicit: Option<&Path>, data_dir: Option<&Path>) -> Result<Self, ConfigError> {
        let system = Path::new(SYSTEM_CONFIG);
        let mut config = match explicit {
            Some(path) => Self::load(path)?,
            None if system.exists() => Self::load(system)?,
            None => Self::default(),
        };
        if let Some(d) = data_dir {
            config.data_dir = d.to_path_buf();
        }
        Ok(config)
    }

    /// The config for any other command: as [`Config::resolve`], except
    /// that without `explicit` the file the gateway last ran with on that
    /// data directory wins, if it still exists. The data directory stays
    /// the one that led there.
    pub fn for_command(
        explicit: Option<&Path>,
        data_dir: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let base = Self::resolve(explicit, data_dir)?;
        if explicit.is_some() {
            return Ok(base);
        }
        let remembered = std::fs::read_to_string(base.data_dir.join(REMEMBERED))
            .ok()
            .map(|p| PathBuf::from(p.trim_end_matches('\n')))
            .filter(|p| p.exists() && Some(p) != base.source.as_ref());
        match remembered {
            Some(path) => {
                let dir = base.data_dir.clone();
                Self::load(&path).map(|mut c| {
                    c.data_dir = dir;
                    c
                })
            }
            None => Ok(base),
        }
    }

    /// Records (or clears) the file this config came from in the data
    /// directory, for [`Config::for_command`].
    pub fn remember_for_commands(&self) -> std::io::Result<()> {
        let at = self.data_dir.join(REMEMBERED);
        match &self.source {
            Some(p) => std::fs::write(at, format!("{}\n", p.display())),
            None => match std::fs::remove_file(at) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }

    pub fn destination_names(&self) -> Vec<String> {
        self.destinations.iter().map(|d| d.name.clone()).collect()
    }

    /// The policy file in effect: the configured one, or the data
    /// directory's `policy.toml` if present.
    pub fn policy_path(&self) -> Option<PathBuf> {
        self.policy.clone().or_else(|| {
            let p = self.data_dir.join("policy.toml");
            p.exists().then_some(p)
        })
    }
}

pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (
        line,
        before.get(start..).map(|s| s.chars().count()).unwrap_or(0) + 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_embedded_defaults() {
        let c = Config::parse("").expect("empty config");
        assert_eq!(c.mqtt.listen.port(), 1883);
        assert_eq!(c.http.listen.port(), 8080);
        assert_eq!(c.data_dir, PathBuf::from("./dataward-data"));
        assert!(c.destinations.is_empty());
    }

    #[test]
    fn history_retention_is_a_duration_none_or_forever() {
        use policy::retention::Keep;
        let c = Config::parse("").expect("defaults");
        assert_eq!(c.store.retention(), Keep::For(90 * 86_400_000));
        for (text, keep) in [
            ("30d", Keep::For(30 * 86_400_000)),
            ("none", Keep::Nothing),
            ("forever", Keep::Forever),
        ] {
            let c =
                Config::parse(&format!("[store]\nhistory_retention = \"{text}\"\n")).expect(text);
            assert_eq!(c.store.retention(), keep);
        }
        let (line, _, msg) =
            Config::parse("[store]\nhistory_retention = \"soon\"\n").expect_err("invalid");
        assert_eq!(line, 2);
        assert!(msg.contains("soon"), "{msg}");
    }

    #[test]
    fn unknown_keys_report_line_and_column() {
        let (line, column, msg) =
            Config::parse("data_dir = \"x\"\n[mqtt]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n")
                .expect_err("unknown key");
        assert_eq!((line, column), (4, 1));
        assert!(msg.contains("lisen"), "{msg}");
    }

    /// The config the README shows, and the one the package installs, are
    /// valid configs.
    #[test]
    fn the_documented_configs_parse() {
        let readme = include_str!("../../../README.md");
        let block = readme
            .split("## Configuration")
            .nth(1)
            .and_then(|r| r.split("```toml\n").nth(1))
            .and_then(|r| r.split("```").next())
            .expect("a toml block under Configuration");
        let c = Config::parse(block).unwrap_or_else(|e| panic!("README config: {e:?}"));
        assert!(c.destinations.iter().any(DestinationConfig::is_local));
        let packaged = include_str!("../../../packaging/dataward.toml");
        Config::parse(packaged).unwrap_or_else(|e| panic!("packaged config: {e:?}"));
        // Its commented local destination, uncommented, is valid too.
        let local: String = packaged
            .split("# A local app")
            .nth(1)
            .expect("a local destination example")
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| !l.starts_with("See ") && !l.starts_with("local/"))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = Config::parse(&local).unwrap_or_else(|e| panic!("{local}: {e:?}"));
        assert!(c.destinations[0].is_local() && c.destinations[0].home_assistant_discovery);
    }

    #[test]
    fn destinations_are_validated() {
        let ok = "[[destination]]\nname = \"vendor_cloud\"\nurl = \"mqtt://127.0.0.1:1883\"\n";
        assert_eq!(Config::parse(ok).expect("valid").destinations.len(), 1);
        let bad_url = "[[destination]]\nname = \"v\"\nurl = \"http://x\"\n";
        let (line, _, msg) = Config::parse(bad_url).expect_err("bad scheme");
        assert_eq!(line, 2);
        assert!(msg.contains("mqtt://"), "{msg}");
        let twice = format!("{ok}{ok}");
        assert!(Config::parse(&twice).is_err());
        assert!(Config::parse("[[destination]]\nname = \"a b\"\nurl = \"mqtt://h:1\"\n").is_err());
        for prefix in ["home/+/", "home/#", "home\\u0000/", "home\\u007f"] {
            let text = format!("[[destination]]\nname = \"v\"\nurl = \"mqtt://h:1\"\ntopic_prefix = \"{prefix}\"\n");
            let (line, _, msg) = Config::parse(&text).expect_err(prefix);
            assert_eq!(line, 2, "{msg}");
            assert!(msg.contains("topic_prefix"), "{msg}");
        }
        let (line, _, msg) =
            Config::parse("[mqtt]\nmax_packet_bytes = 2000000\n").expect_err("too large");
        assert_eq!(line, 2);
        assert!(msg.contains("at most 1048576"), "{msg}");
    }
}
