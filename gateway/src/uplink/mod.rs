//! The uplink: one MQTT client per destination, fed from that destination's
//! on-disk outbox.
//!
//! An outbox entry leaves the disk only when the cloud's PUBACK for it
//! arrives. After any connection error the client is rebuilt from scratch
//! and everything not yet acknowledged is sent again, oldest first: delivery
//! is at least once, in order per device (the outbox is one ordered queue).
//! Reconnects back off exponentially with jitter, so a hub fleet does not
//! hammer a cloud that just came back.

mod poison;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use crate::config::{DestinationConfig, Endpoint, UPLINK_MAX_PACKET_BYTES};
use crate::store::Outbox;

/// A command that arrived from a destination, for the command router.
#[derive(Debug, Clone)]
pub struct InboundCommand {
    pub destination: String,
    /// The local (device-side) topic.
    pub topic: String,
    pub payload: Vec<u8>,
}

/// What status reports of an uplink while it runs.
#[derive(Debug, Default)]
pub struct LinkState {
    connected: std::sync::atomic::AtomicBool,
}

impl LinkState {
    pub fn is_connected(&self) -> bool {
        self.connected.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn set(&self, up: bool) {
        self.connected
            .store(up, std::sync::atomic::Ordering::Release);
    }
}

pub struct Uplink {
    cfg: DestinationConfig,
    max_command_bytes: usize,
    state: Arc<LinkState>,
    endpoint: Endpoint,
    tls: Option<Arc<rustls::ClientConfig>>,
    outbox: Arc<Outbox>,
    wake: Arc<Notify>,
    commands: mpsc::Sender<InboundCommand>,
}

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("destination {name}: {reason}")]
    Config { name: String, reason: String },
}

enum SessionEnd {
    Shutdown,
    Lost {
        reason: String,
        /// The oldest entry written to the cloud and not acknowledged.
        oldest_written: Option<(u64, Duration)>,
        /// The session made progress (an acknowledgement) or lasted: the
        /// backoff starts over.
        healthy: bool,
    },
}

impl SessionEnd {
    fn lost(reason: impl Into<String>) -> Self {
        SessionEnd::Lost {
            reason: reason.into(),
            oldest_written: None,
            healthy: false,
        }
    }
}

/// A session this long was not a flapping one.
const HEALTHY_SESSION: Duration = Duration::from_secs(60);

impl Uplink {
    pub fn new(
        cfg: DestinationConfig,
        outbox: Arc<Outbox>,
        wake: Arc<Notify>,
        commands: mpsc::Sender<InboundCommand>,
        max_command_bytes: usize,
    ) -> Result<Self, UplinkError> {
        let err = |reason: String| UplinkError::Config {
            name: cfg.name.clone(),
            reason,
        };
        let endpoint = Endpoint::parse(&cfg.url).map_err(err)?;
        let tls = if endpoint.tls {
            Some(tls_config(&cfg).map_err(err)?)
        } else {
            None
        };
        Ok(Self {
            cfg,
            max_command_bytes,
            state: Arc::default(),
            endpoint,
            tls,
            outbox,
            wake,
            commands,
        })
    }

    pub fn state(&self) -> Arc<LinkState> {
        Arc::clone(&self.state)
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut failures: u32 = 0;
        let mut poison = poison::PoisonWatch::default();
        loop {
            let end = self.session(&mut shutdown, &mut poison).await;
            self.state.set(false);
            let SessionEnd::Lost {
                reason,
                oldest_written,
                healthy,
            } = end
            else {
                return;
            };
            if healthy {
                failures = 0;
            }
            failures = failures.saturating_add(1);
            poison.lost(oldest_written);
            if let Some(key) = poison.suspect() {
                tracing::warn!(destination = %self.cfg.name, entry = key, "sending the oldest waiting message alone, to see whether the destination refuses it");
            }
            let delay = backoff(failures);
            tracing::warn!(destination = %self.cfg.name, %reason, backlog = self.outbox.len(), retry_in_ms = delay.as_millis() as u64, "uplink disconnected");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    fn options(&self) -> MqttOptions {
        let client_id = self
            .cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("dataward-{}", self.cfg.name));
        let mut opts = MqttOptions::new(client_id, self.endpoint.host.clone(), self.endpoint.port);
        opts.set_keep_alive(Duration::from_secs(self.cfg.keep_alive_secs.max(5)));
        opts.set_clean_session(true);
        opts.set_inflight(self.cfg.max_inflight);
        opts.set_max_packet_size(UPLINK_MAX_PACKET_BYTES, UPLINK_MAX_PACKET_BYTES);
        if let Some(user) = &self.cfg.username {
            opts.set_credentials(
                user.clone(),
                self.cfg
                    .password
                    .as_ref()
                    .map(|p| p.expose().to_string())
                    .unwrap_or_default(),
            );
        }
        if let Some(tls) = &self.tls {
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::clone(tls),
            )));
        }
        opts
    }

    async fn session(
        &self,
        shutdown: &mut watch::Receiver<bool>,
        poison: &mut poison::PoisonWatch,
    ) -> SessionEnd {
        let full_window = usize::from(self.cfg.max_inflight);
        let mut window = poison.window(full_window);
        let (client, mut events) = AsyncClient::new(self.options(), full_window * 2 + 16);

        // Connect, with a bound so a black-holed cloud does not hang us.
        let connected = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack)))
                        if ack.code == ConnectReturnCode::Success =>
                    {
                        return Ok(())
                    }
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        return Err(format!("cloud refused the connection: {:?}", ack.code))
                    }
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        });
        tokio::select! {
            r = connected => match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return SessionEnd::lost(e),
                Err(_) => return SessionEnd::lost("connect timed out"),
            },
            _ = shutdown.changed() => return SessionEnd::Shutdown,
        }
        let since = tokio::time::Instant::now();
        let mut progressed = false;
        self.state.set(true);
        tracing::info!(destination = %self.cfg.name, host = %self.endpoint.host, port = self.endpoint.port, backlog = self.outbox.len(), "uplink connected");

        if let Some(prefix) = &self.cfg.command_prefix {
            if let Err(e) = client.try_subscribe(format!("{prefix}#"), QoS::AtLeastOnce) {
                return SessionEnd::lost(format!("subscribing to commands failed: {e}"));
            }
        }

        let mut cursor: Option<u64> = None;
        // Keys handed to the client whose packet id we have not seen yet;
        // rumqttc sends in the order we publish, so they pair up in order.
        let mut unsent: VecDeque<u64> = VecDeque::new();
        // Packet id -> (outbox key, when it was written).
        let mut inflight: HashMap<u16, (u64, Instant)> = HashMap::new();
        // Whether the outbox may hold entries past `cursor`: set by a wake,
        // cleared by a read that came back short. Saves a tree scan for
        // every acknowledgement.
        let mut maybe_more = true;
        let lost = |reason: String, inflight: &HashMap<u16, (u64, Instant)>, progressed: bool| {
            SessionEnd::Lost {
                reason,
                oldest_written: inflight
                    .values()
                    .min_by_key(|(key, _)| *key)
                    .map(|(key, at)| (*key, at.elapsed())),
                healthy: progressed || since.elapsed() >= HEALTHY_SESSION,
            }
        };
        // The control session (see `poison`): nothing is sent until this
        // passes; if the connection holds that long, the suspect is set
        // aside.
        let mut control = (window == 0).then(|| Instant::now() + poison::CONTROL_PERIOD);
        loop {
            let room = window.saturating_sub(unsent.len() + inflight.len());
            if room > 0 && maybe_more {
                let entries = match self.outbox.read_after(cursor, room) {
                    Ok(e) => e,
                    Err(e) => {
                        return lost(
                            format!("reading the outbox failed: {e}"),
                            &inflight,
                            progressed,
                        )
                    }
                };
                maybe_more = entries.len() == room;
                for entry in entries {
                    let topic = format!("{}{}", self.cfg.topic_prefix, entry.topic);
                    // The entry itself is what cannot be sent (one queued
                    // before the door refused such topics): set it aside
                    // rather than fail the session on it forever.
                    if !policy::topic::is_valid_topic(&topic)
                        || crate::config::has_control_chars(&topic)
                    {
                        self.set_aside_for(
                            entry.key,
                            "its topic cannot be published (wildcard or control character)",
                        );
                        cursor = Some(entry.key);
                        continue;
                    }
                    if let Err(e) =
                        client.try_publish(topic, QoS::AtLeastOnce, false, entry.payload)
                    {
                        return lost(
                            format!("queueing a publish failed: {e}"),
                            &inflight,
                            progressed,
                        );
                    }
                    unsent.push_back(entry.key);
                    cursor = Some(entry.key);
                }
            }
            tokio::select! {
                event = events.poll() => match event {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        if let Some(key) = unsent.pop_front() {
                            inflight.insert(pkid, (key, Instant::now()));
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some((key, _)) = inflight.remove(&ack.pkid) {
                            progressed = true;
                            poison.acked(key);
                            if let Err(e) = self.outbox.remove(key) {
                                return lost(format!("removing an acknowledged entry failed: {e}"), &inflight, progressed);
                            }
                            // The suspect went through: back to the full window.
                            window = poison.window(full_window);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => self.command(&p.topic, &p.payload),
                    Ok(_) => {}
                    Err(e) => return lost(e.to_string(), &inflight, progressed),
                },
                _ = self.wake.notified(), if room > 0 => maybe_more = true,
                _ = tokio::time::sleep_until(control.unwrap_or_else(Instant::now)), if control.is_some() => {
                    control = None;
                    if let Some(key) = poison.control_held() {
                        self.set_aside(key);
                    }
                    window = poison.window(full_window);
                    maybe_more = true;
                }
                _ = shutdown.changed() => {
                    let _ = client.try_disconnect();
                    return SessionEnd::Shutdown;
                }
            }
        }
    }

    fn set_aside(&self, key: u64) {
        let why = format!(
            "the destination dropped the connection {} times with only this message in flight, and held it without",
            poison::STRIKES
        );
        self.set_aside_for(key, &why);
    }

    fn set_aside_for(&self, key: u64, why: &str) {
        match self.outbox.dead_letter(key, why) {
            Ok(true) => {
                tracing::error!(destination = %self.cfg.name, entry = key, dead_letters = self.outbox.dead_letters(), "message set aside as a dead letter: the destination keeps refusing it; the next ones go on")
            }
            Ok(false) => {
                tracing::info!(destination = %self.cfg.name, entry = key, "the suspected message had already left the outbox")
            }
            Err(e) => {
                tracing::error!(destination = %self.cfg.name, entry = key, error = %e, "could not set a refused message aside")
            }
        }
    }

    fn command(&self, remote_topic: &str, payload: &[u8]) {
        let Some(local) = self
            .cfg
            .command_prefix
            .as_deref()
            .and_then(|p| remote_topic.strip_prefix(p))
        else {
            return;
        };
        // Checked here, before the command queue: what waits there and in
        // a device's queue is bounded by count times this size.
        if payload.len() > self.max_command_bytes {
            tracing::warn!(destination = %self.cfg.name, topic = ?crate::short(local), bytes = payload.len(), max = self.max_command_bytes, "command dropped: larger than max_command_bytes");
            return;
        }
        let cmd = InboundCommand {
            destination: self.cfg.name.clone(),
            topic: local.to_string(),
            payload: payload.to_vec(),
        };
        if self.commands.try_send(cmd).is_err() {
            tracing::warn!(destination = %self.cfg.name, topic = ?crate::short(local), "command dropped: the command queue is full");
        }
    }
}

/// Exponential backoff from 250 ms to 30 s, with the upper half jittered.
fn backoff(failures: u32) -> Duration {
    let base_ms = 250u64
        .saturating_mul(1 << failures.min(7).saturating_sub(1))
        .min(30_000);
    let jitter = rand::thread_rng().gen_range(0..=base_ms / 2);
    Duration::from_millis(base_ms / 2 + jitter)
}

fn tls_config(cfg: &DestinationConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                added += 1;
            }
            if added == 0 {
                return Err(format!(
                    "ca_file {} holds no PEM certificate",
                    path.display()
                ));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no system CA certificates found; set ca_file".into());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_bounded() {
        for f in 1..40 {
            let d = backoff(f);
            assert!(d <= Duration::from_secs(30));
            assert!(d >= Duration::from_millis(125));
        }
        // The base doubles, so the lower bound of a later attempt is above
        // the upper bound of the first.
        assert!(backoff(6) > backoff(1));
    }

    #[test]
    fn ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").expect("write");
        let cfg = DestinationConfig {
            name: "c".into(),
            url: "mqtts://h:8883".into(),
            kind: Default::default(),
            home_assistant_discovery: false,
            client_id: None,
            username: None,
            password: None,
            ca_file: Some(path),
            topic_prefix: String::new(),
            command_prefix: None,
            max_inflight: 8,
            keep_alive_secs: 30,
            recipient: None,
            purpose: None,
            country: None,
            ledger: Default::default(),
        };
        assert!(tls_config(&cfg).is_err());
    }
}
