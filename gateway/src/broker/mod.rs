//! The device-facing MQTT broker: rmqtt embedded in the process.
//!
//! This module is the only place that knows rmqtt. rmqtt ships breaking 0.x
//! releases often; an upgrade, or a swap to another broker, touches only
//! here. What the rest of dataward sees is [`Broker::start`] and
//! [`Broker::publish`].
//!
//! rmqtt settings chosen deliberately (each is a trap with the defaults):
//! - the CPU busy check is off: it refuses connections above 90% load, which
//!   a small hub reaches during a burst;
//! - anonymous access is off, and auth runs in our hook;
//! - the subscriber queue is sized from config, and drops are logged through
//!   the `MessageDropped` hook;
//! - message expiry is set from config instead of rmqtt's 300 s;
//! - rmqtt listens on loopback only, behind [`gate`], which owns the device
//!   port: rmqtt's first read has no deadline, the gate's does.

mod gate;
mod hooks;
mod login;
mod retain;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rmqtt::context::ServerContext;
use rmqtt::hook::Type;
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;
use rmqtt::session::SessionState;
use rmqtt::types::{From, Id};

use crate::devices::DeviceRegistry;
use crate::pipeline::Pipeline;
use crate::supervise::{Supervised, Supervisor};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen for MQTT on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("delivering to devices failed: {0}")]
    Deliver(String),
}

/// What the broker needs from the config.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub listen: SocketAddr,
    /// Plain MQTT on `listen` (off: TLS only).
    pub plain: bool,
    /// MQTT over TLS: where, and with which certificate.
    pub tls: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
    pub max_packet_bytes: u32,
    pub max_connections_per_device: u32,
    pub max_queued_messages: usize,
    pub max_retained: usize,
    pub message_expiry: Duration,
    pub connect_timeout: Duration,
    pub max_connections: usize,
    pub max_handshakes: usize,
    pub max_handshakes_per_address: usize,
    /// The local destinations, whose consumers log in here too.
    pub local: crate::local::LocalAccess,
}

const DEVICE_LISTENER: rmqtt::types::ListenerId = 1;

pub struct Broker {
    scx: ServerContext,
    gates: Vec<gate::Gate>,
    tls_addr: Option<SocketAddr>,
    hooks: Arc<hooks::Hooks>,
    retained: retain::InMemoryRetain,
    local_addr: SocketAddr,
    task: Supervised,
}

impl Broker {
    pub async fn start(
        settings: BrokerSettings,
        registry: Arc<DeviceRegistry>,
        pipeline: Arc<Pipeline>,
        supervisor: &Supervisor,
    ) -> Result<Self, BrokerError> {
        let scx = ServerContext::new().busy_check_enable(false).build().await;
        let retained = retain::InMemoryRetain::new(settings.max_retained);
        *scx.extends.retain_mut().await = Box::new(retained.clone());

        let hooks = hooks::Hooks {
            scx: scx.clone(),
            registry,
            local: settings.local.clone(),
            logins: login::LoginGuard::start(),
            pipeline,
            max_connections_per_device: settings.max_connections_per_device,
            connections: Default::default(),
            over_limit: Default::default(),
        };
        let handler = Arc::new(hooks);
        let register = scx.extends.hook_mgr().register();
        for typ in [
            Type::ClientAuthenticate,
            Type::ClientConnected,
            Type::ClientDisconnected,
            Type::ClientSubscribeCheckAcl,
            Type::MessagePublishCheckAcl,
            Type::MessagePublish,
            Type::MessageDropped,
        ] {
            register
                .add(typ, Box::new(SharedHandler(Arc::clone(&handler))))
                .await;
        }
        register.start().await;

        // rmqtt listens on loopback only; devices reach it through the gate.
        let inner = bind_inner(&settings)?;
        let upstream = inner.local_addr().map_err(|e| BrokerError::Bind {
            addr: settings.listen,
            reason: format!("the broker's loopback listener: {e}"),
        })?;
        let public = if settings.plain {
            Some(bind_public(settings.listen).await?)
        } else {
            None
        };
        let tls_public = match &settings.tls {
            Some((addr, _)) => Some(bind_public(*addr).await?),
            None => None,
        };
        let tls_addr = match &tls_public {
            Some(l) => Some(l.local_addr().map_err(|e| BrokerError::Bind {
                addr: settings.listen,
                reason: e.to_string(),
            })?),
            None => None,
        };
        let local_addr = match &public {
            Some(l) => l.local_addr().map_err(|e| BrokerError::Bind {
                addr: settings.listen,
                reason: e.to_string(),
            })?,
            None => tls_addr.unwrap_or(settings.listen),
        };
        // A fixed listener id: rmqtt keys per-listener state by it, and
        // derives one from the port otherwise (0 when the OS picks it).
        let server = MqttServer::new(scx.clone())
            .listener_by_id(inner, DEVICE_LISTENER)
            .build();
        let task = supervisor.spawn("broker", async move {
            if let Err(e) = server.run().await {
                tracing::error!(error = %e, "the MQTT broker stopped");
            }
        });
        let limits = gate::GateLimits {
            connect_timeout: settings.connect_timeout,
            max_pending: settings.max_handshakes,
            max_pending_per_source: settings.max_handshakes_per_address,
            max_connections: settings.max_connections,
            max_packet_bytes: settings.max_packet_bytes,
        };
        let mut gates = Vec::new();
        if let Some(public) = public {
            gates.push(gate::Gate::start(
                public,
                upstream,
                limits.clone(),
                None,
                supervisor,
            ));
        }
        if let (Some(listener), Some((_, config))) = (tls_public, &settings.tls) {
            gates.push(gate::Gate::start(
                listener,
                upstream,
                limits,
                Some(tokio_rustls::TlsAcceptor::from(Arc::clone(config))),
                supervisor,
            ));
        }
        tracing::info!(%local_addr, "MQTT broker listening for devices");
        Ok(Self {
            scx,
            gates,
            tls_addr,
            hooks: handler,
            retained,
            local_addr,
            task,
        })
    }

    /// The plain device port (the TLS one when plain MQTT is off).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The devices' TLS port, if there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Delivers a message to whichever devices subscribed to `topic`, as the
    /// hub itself (used for commands that the policy let through).
    pub async fn publish(
        &self,
        topic: &str,
        payload: &[u8],
        qos1: bool,
    ) -> Result<(), BrokerError> {
        SessionState::forwards(
            &self.scx,
            self.hub_sender(),
            hub_message(topic, payload, qos1, false),
            false,
            None,
        )
        .await
        .map_err(|e| BrokerError::Deliver(e.to_string()))
    }

    /// Publishes as the hub (QoS 1) and keeps the message as the topic's
    /// retained one, for subscribers to come; an empty payload clears it.
    /// It stays until replaced or cleared, never past the process.
    pub async fn publish_retained(&self, topic: &str, payload: &[u8]) -> Result<(), BrokerError> {
        let retain = rmqtt::types::Retain {
            msg_id: None,
            from: self.hub_sender(),
            publish: hub_message(topic, payload, true, true),
        };
        self.retained
            .keep(topic, retain)
            .await
            .map_err(|e| BrokerError::Deliver(e.to_string()))?;
        self.publish(topic, payload, true).await
    }

    /// Clears the retained messages on topics matching `filter`; answers
    /// how many there were.
    pub async fn clear_retained(&self, filter: &str) -> Result<usize, BrokerError> {
        self.retained
            .clear(filter)
            .await
            .map_err(|e| BrokerError::Deliver(e.to_string()))
    }

    fn hub_sender(&self) -> From {
        From::from_system(Id::new(
            self.scx.node.id(),
            DEVICE_LISTENER,
            None,
            None,
            "dataward".into(),
            None,
        ))
    }

    /// Devices with at least one live connection, and connections in all.
    pub fn connected(&self) -> (usize, usize) {
        self.hooks.connected_counts()
    }

    pub fn is_online(&self, device: &str) -> bool {
        self.hooks.is_online(device)
    }

    /// Ends every session of `device`: live connections are closed at once,
    /// and offline sessions go with their queued messages (pending
    /// commands), so nothing more reaches or comes from it. Call after the
    /// device left the registry, so that it cannot log in again.
    pub async fn disconnect_device(&self, device: &str) -> usize {
        end_sessions(&self.scx, device).await
    }

    /// Drops the retained messages on topics the device could publish to,
    /// and their copies in the local views (`local/<destination>/<topic>`).
    pub async fn drop_retained(&self, publish_filters: &[String]) -> usize {
        let mut n = 0;
        let views = publish_filters
            .iter()
            .map(|f| crate::local::in_every_view(f));
        for f in publish_filters.iter().cloned().chain(views) {
            match self.retained.clear(&f).await {
                Ok(k) => n += k,
                Err(e) => {
                    tracing::warn!(filter = ?f, error = %e, "could not clear retained messages")
                }
            }
        }
        n
    }

    pub fn stop(&self) {
        for g in &self.gates {
            g.stop();
        }
        self.task.abort();
    }
}

/// A message from the hub itself.
fn hub_message(topic: &str, payload: &[u8], qos1: bool, retain: bool) -> rmqtt::types::Publish {
    use rmqtt::codec::types::{Publish as Packet, QoS};
    let packet = Packet {
        dup: false,
        retain,
        qos: if qos1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        },
        topic: topic.into(),
        packet_id: None,
        payload: bytes::Bytes::copy_from_slice(payload),
        properties: None,
    };
    rmqtt::types::Publish {
        inner: Box::new(packet),
        target_clientid: None,
        delay_interval: None,
        create_time: Some(now_ms() as i64),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// rmqtt's own listener, on a free loopback port, taking the PROXY header
/// the gate sends with each connection.
fn bind_inner(settings: &BrokerSettings) -> Result<rmqtt::net::Listener, BrokerError> {
    Builder::new()
        .name("devices")
        .laddr(SocketAddr::from(([127, 0, 0, 1], 0)))
        .nodelay(true)
        .proxy_protocol(true)
        // The gate sends the header with its first write; anyone slower is
        // not the gate (and rmqtt waits for it in its accept loop).
        .proxy_protocol_timeout(Duration::from_millis(500))
        .allow_anonymous(false)
        .allow_zero_keepalive(true)
        // From the CONNECT to the CONNACK: the login itself, which a busy
        // or suspicious moment may slow down (see `login`).
        .handshake_timeout(Duration::from_secs(15))
        .max_packet_size(settings.max_packet_bytes)
        .max_mqueue_len(settings.max_queued_messages)
        // Bounds on what one session can make the broker keep.
        .max_subscriptions(64)
        .max_clientid_len(128)
        .message_expiry_interval(settings.message_expiry)
        .max_inflight(std::num::NonZeroU16::new(64).unwrap_or(std::num::NonZeroU16::MIN))
        .bind()
        .and_then(|b| b.tcp())
        .map_err(|e| BrokerError::Bind {
            addr: settings.listen,
            reason: format!("the broker's loopback listener: {e}"),
        })
}

/// The device port. A restarted hub may find its old socket still in
/// TIME_WAIT or the old process still exiting; a few retries cover that
/// without hiding a real conflict for long.
async fn bind_public(addr: SocketAddr) -> Result<tokio::net::TcpListener, BrokerError> {
    let mut last = String::new();
    for attempt in 0..10 {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        };
        let bound = socket.and_then(|s| {
            s.set_reuseaddr(true)?;
            s.set_nodelay(true)?;
            s.bind(addr)?;
            s.listen(1024)
        });
        match bound {
            Ok(l) => return Ok(l),
            Err(e) => {
                last = e.to_string();
                tracing::warn!(%addr, attempt, error = %last, "MQTT bind failed; retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    Err(BrokerError::Bind { addr, reason: last })
}

/// Kicks one session (retrying briefly while it is busy in its handshake).
pub(crate) async fn end_session(scx: &ServerContext, id: Id) {
    let shared = scx.extends.shared().await;
    for _ in 0..20 {
        if let Ok(mut locked) = shared.entry(id.clone()).try_lock().await {
            if locked.kick(true, true, true).await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tracing::warn!(client_id = ?id.client_id, "could not end a session");
}

/// Kicks every session of `device`, live or offline, with its
/// subscriptions and queued messages. A session busy in a handshake cannot
/// be locked at that instant; it is tried again for a little while.
pub(crate) async fn end_sessions(scx: &ServerContext, device: &str) -> usize {
    let shared = scx.extends.shared().await;
    let mut closed = 0;
    for attempt in 0..20 {
        let ids: Vec<Id> = shared
            .iter()
            .filter_map(|entry| entry.session().map(|s| s.id.clone()))
            .filter(|id| {
                id.username.as_deref() == Some(device)
                    || hooks::client_id_fits(&id.client_id, device)
            })
            .collect();
        if ids.is_empty() {
            break;
        }
        for id in ids {
            let kicked = match shared.entry(id.clone()).try_lock().await {
                Ok(mut locked) => locked.kick(true, true, true).await.map(|_| ()),
                Err(e) => Err(e),
            };
            match kicked {
                Ok(()) => closed += 1,
                Err(e) => {
                    tracing::debug!(device, client_id = ?id.client_id, attempt, error = %e, "session busy; will retry the kick")
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    closed
}

/// rmqtt wants one boxed handler per hook type; they all share one state.
struct SharedHandler(Arc<hooks::Hooks>);

#[async_trait::async_trait]
impl rmqtt::hook::Handler for SharedHandler {
    async fn hook(
        &self,
        param: &rmqtt::hook::Parameter,
        acc: Option<rmqtt::hook::HookResult>,
    ) -> rmqtt::hook::ReturnType {
        self.0.hook(param, acc).await
    }
}
