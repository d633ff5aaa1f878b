//! `status`: is a gateway running, what is connected, what waits to leave.

use serde::{Deserialize, Serialize};

use super::{now_ms, OpError, Operations};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationStatus {
    pub name: String,
    /// Connected to the destination's broker now (false when stopped).
    pub connected: bool,
    /// Messages waiting in the outbox for the destination's acknowledgement.
    pub backlog: u64,
    /// Age of the oldest waiting message, in seconds.
    pub oldest_pending_secs: Option<u64>,
    /// Messages the destination kept refusing, set aside so the rest flow.
    pub dead_letters: u64,
    /// Since the gateway started: messages queued for it, and messages of
    /// which the policy let nothing go to it.
    #[serde(default)]
    pub forwarded: u64,
    #[serde(default)]
    pub withheld: u64,
    /// A local destination: its consumers connected now (none when
    /// stopped); absent for a remote one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers_online: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCounts {
    pub known: usize,
    /// Devices with at least one live connection.
    pub connected: usize,
    pub connections: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub running: bool,
    /// The gateway's pid and uptime; none when stopped.
    pub pid: Option<u32>,
    pub uptime_secs: Option<u64>,
    pub data_dir: String,
    pub devices: DeviceCounts,
    pub destinations: Vec<DestinationStatus>,
    /// The policy version in force (0: none, nothing is shared).
    pub policy_version: u64,
    /// Whether history is kept: encrypted once the user's keys exist, not
    /// at all before.
    pub history: String,
    pub store_bytes: u64,
    /// Messages since start that looked like JSON but did not parse: kept
    /// in history, forwarded nowhere.
    #[serde(default)]
    pub malformed_messages: u64,
    /// Since the gateway started: messages in, and policy evaluations.
    #[serde(default)]
    pub messages_in: u64,
    #[serde(default)]
    pub policy_evaluations: u64,
    /// SHA-256 fingerprints of the hub's certificates: the devices' TLS
    /// port's and the web UI's, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_tls_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_tls_fingerprint: Option<String>,
    /// The running gateway's one-time setup link, until the keys exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_link: Option<String>,
    /// New fields a wildcard rule would share, held until approved.
    #[serde(default)]
    pub held_fields: usize,
}

pub const NOT_KEPT: &str =
    "NOT kept: the keys are not set up; run `dataward init` to keep history, encrypted to your own key";

impl Operations {
    pub fn status(&self) -> Result<StatusReport, OpError> {
        let now = now_ms();
        let age = |queued: Option<u64>| queued.map(|q| now.saturating_sub(q) / 1000);
        let mut destinations = Vec::new();
        for dest in &self.config.destinations {
            let link = self
                .live
                .as_ref()
                .and_then(|l| l.links.iter().find(|h| h.name == dest.name));
            let status = match (link, &self.store) {
                (Some(h), _) => DestinationStatus {
                    name: dest.name.clone(),
                    connected: h.state.is_connected(),
                    backlog: h.outbox.len(),
                    oldest_pending_secs: age(h.outbox.oldest_queued_ms()?),
                    dead_letters: h.outbox.dead_letters(),
                    forwarded: 0,
                    withheld: 0,
                    consumers_online: None,
                },
                (None, Some(store)) if store.has_outbox(&dest.name) => {
                    let ob = store.outbox(&dest.name, self.config.store.outbox_max_entries)?;
                    DestinationStatus {
                        name: dest.name.clone(),
                        connected: false,
                        backlog: ob.len(),
                        oldest_pending_secs: age(ob.oldest_queued_ms()?),
                        dead_letters: ob.dead_letters(),
                        forwarded: 0,
                        withheld: 0,
                        consumers_online: None,
                    }
                }
                _ => DestinationStatus {
                    name: dest.name.clone(),
                    connected: false,
                    backlog: 0,
                    oldest_pending_secs: None,
                    dead_letters: 0,
                    forwarded: 0,
                    withheld: 0,
                    consumers_online: None,
                },
            };
            let mut status = status;
            if let Some(live) = &self.live {
                let c = &live.pipeline.counters;
                let read = |v: &[std::sync::atomic::AtomicU64]| {
                    live.pipeline
                        .destinations()
                        .iter()
                        .position(|n| *n == dest.name)
                        .and_then(|i| v.get(i))
                        .map_or(0, |a| a.load(std::sync::atomic::Ordering::Relaxed))
                };
                status.forwarded = read(&c.forwarded);
                status.withheld = read(&c.withheld);
            }
            if dest.is_local() {
                status.consumers_online = Some(match (&self.live, &self.registry) {
                    (Some(live), Some(registry)) => registry
                        .consumers()
                        .iter()
                        .filter(|c| c.destination == dest.name && live.broker.is_online(&c.id))
                        .count(),
                    _ => 0,
                });
            }
            destinations.push(status);
        }
        // Consumers' connections count as connections, not as devices.
        let (_, connections) = self.live.as_ref().map_or((0, 0), |l| l.broker.connected());
        let connected = match (&self.live, &self.registry) {
            (Some(live), Some(registry)) => registry
                .list()
                .iter()
                .filter(|d| live.broker.is_online(&d.id))
                .count(),
            _ => 0,
        };
        Ok(StatusReport {
            running: self.live.is_some(),
            pid: self.live.as_ref().map(|_| std::process::id()),
            uptime_secs: self.live.as_ref().map(|l| l.started.elapsed().as_secs()),
            // Absolute, so that both faces spell it alike whatever
            // directory each was started from.
            data_dir: std::fs::canonicalize(&self.config.data_dir)
                .unwrap_or_else(|_| self.config.data_dir.clone())
                .display()
                .to_string(),
            devices: DeviceCounts {
                known: self.registry.as_ref().map_or(0, |r| r.list().len()),
                connected,
                connections,
            },
            destinations,
            policy_version: self.version_in_force()?,
            malformed_messages: self
                .live
                .as_ref()
                .map_or(0, |l| l.pipeline.malformed_count()),
            messages_in: self.live.as_ref().map_or(0, |l| {
                l.pipeline
                    .counters
                    .messages_in
                    .load(std::sync::atomic::Ordering::Relaxed)
            }),
            policy_evaluations: self.live.as_ref().map_or(0, |l| {
                l.pipeline
                    .counters
                    .evaluations
                    .load(std::sync::atomic::Ordering::Relaxed)
            }),
            mqtt_tls_fingerprint: self.config.mqtt.tls_listen.and_then(|_| {
                crate::tls::fingerprint_of(
                    &self
                        .config
                        .mqtt
                        .tls_cert
                        .clone()
                        .unwrap_or_else(|| self.config.data_dir.join("mqtt-tls").join("cert.pem")),
                )
            }),
            http_tls_fingerprint: (self.config.http.tls || self.config.http.tls_cert.is_some())
                .then(|| {
                    crate::tls::fingerprint_of(
                        &self.config.http.tls_cert.clone().unwrap_or_else(|| {
                            self.config.data_dir.join("http-tls").join("cert.pem")
                        }),
                    )
                })
                .flatten(),
            setup_link: match &self.live {
                Some(_) if !self.is_set_up() => {
                    std::fs::read_to_string(self.config.data_dir.join(crate::app::SETUP_LINK_FILE))
                        .ok()
                }
                _ => None,
            },
            held_fields: self
                .store
                .as_ref()
                .map_or(0, |s| s.fields().list(None, true).len()),
            history: match &self.store {
                Some(store) if store.history().keeps_history() => {
                    "kept, encrypted to your key (reading it needs your passphrase)".into()
                }
                _ => NOT_KEPT.into(),
            },
            store_bytes: crate::store::dir_bytes(&self.config.data_dir.join("db")),
        })
    }
}
