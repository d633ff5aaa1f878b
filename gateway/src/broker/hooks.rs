//! The rmqtt hook handler: authentication, per-device ACL, and the
//! pipeline hung on `MessagePublishCheckAcl`, which runs in the publisher's
//! task before routing and before PUBACK. Local consumers log in here too;
//! their ACL is their destination's view ([`crate::local::LocalAccess`]),
//! and nothing they publish reaches the pipeline.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use rmqtt::codec::v5::{PublishAckReason, SubscribeAckReason};
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::types::{
    AuthResult, ConnectInfo, FromType, LastWill, PublishAclResult, PublishResult,
    SubscribeAclResult,
};

use super::login::Verdict;
use crate::devices::{Account, Device, DeviceRegistry};
use crate::pipeline::{Inadmissible, Pipeline};

pub(super) struct Hooks {
    pub scx: rmqtt::context::ServerContext,
    pub registry: Arc<DeviceRegistry>,
    pub local: crate::local::LocalAccess,
    pub logins: super::login::LoginGuard,
    pub pipeline: Arc<Pipeline>,
    pub max_connections_per_device: u32,
    /// device id -> client id -> live connections with that client id.
    /// Client ids are counted, not connections, because a reconnect with the
    /// same client id takes the old session over rather than adding one.
    pub connections: DashMap<String, HashMap<String, u32>>,
    /// Sessions refused at connect for the limit, not counted in, so not to
    /// be counted out: (client id, session creation time).
    pub over_limit: DashMap<(String, i64), ()>,
}

// Device-supplied strings (client ids, usernames, topics) are logged with
// `?` (Debug), which escapes control characters: a hostile topic cannot
// forge log lines or terminal escapes.

/// A client id belongs to device `id` if it is `id` or `id.<suffix>`, so one
/// device may hold several connections with distinct client ids.
pub(crate) fn client_id_fits(client_id: &str, device: &str) -> bool {
    client_id == device
        || client_id
            .strip_prefix(device)
            .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1)
}

/// What a CONNECT's will would publish, whichever MQTT version sent it.
struct Will {
    topic: String,
    len: usize,
    retain: bool,
}

fn will_of(ci: &ConnectInfo) -> Option<Will> {
    Some(match ci.last_will()? {
        LastWill::V3(w) => Will {
            topic: w.topic.to_string(),
            len: w.message.len(),
            retain: w.retain,
        },
        LastWill::V5(w) => Will {
            topic: w.topic.to_string(),
            len: w.message.len(),
            retain: w.retain,
        },
    })
}

impl Hooks {
    async fn authenticate(&self, ci: &ConnectInfo) -> AuthResult {
        let client_id = ci.client_id().to_string();
        let Some(username) = ci.username().map(|u| u.to_string()) else {
            tracing::warn!(client_id = ?crate::short(&client_id), "connection refused: no credentials");
            return AuthResult::NotAuthorized;
        };
        let Some(password) = ci.password().cloned() else {
            tracing::warn!(client_id = ?crate::short(&client_id), device = ?crate::short(&username), "connection refused: no password");
            return AuthResult::BadUsernameOrPassword;
        };
        // Known or not, the id costs one Argon2 check: the answer's timing
        // does not tell which ids exist.
        let known = self.registry.account(&username);
        let source = ci.id().remote_addr.map(|a| a.ip());
        let verdict = self
            .logins
            .check(
                source,
                &username,
                known.as_ref().map(Account::password_hash),
                &password,
            )
            .await;
        let account = match (verdict, known) {
            (Verdict::Allowed, Some(account)) => account,
            (Verdict::Throttled, _) => {
                tracing::warn!(client_id = ?crate::short(&client_id), device = ?crate::short(&username), ?source, "connection refused: too many failed logins from this address, or too many at once");
                return AuthResult::NotAuthorized;
            }
            (_, None) => {
                tracing::warn!(client_id = ?crate::short(&client_id), device = ?crate::short(&username), ?source, "connection refused: unknown device");
                return AuthResult::BadUsernameOrPassword;
            }
            (_, Some(_)) => {
                tracing::warn!(client_id = ?crate::short(&client_id), device = ?crate::short(&username), ?source, "connection refused: wrong password");
                return AuthResult::BadUsernameOrPassword;
            }
        };
        // The check took a while: a `device remove` in the meantime wins.
        if self.registry.account(&username).is_none() {
            tracing::warn!(client_id = ?crate::short(&client_id), device = ?crate::short(&username), "connection refused: device removed during login");
            return AuthResult::BadUsernameOrPassword;
        }
        let device = match account {
            Account::Device(device) => device,
            Account::Consumer(consumer) => {
                return self.admit_consumer(ci, &client_id, &consumer);
            }
        };
        if !client_id_fits(&client_id, &device.id) {
            tracing::warn!(client_id = ?crate::short(&client_id), device = %device.id, "connection refused: client id must be the device id or <id>.<suffix>");
            return AuthResult::NotAuthorized;
        }
        if let Some(will) = will_of(ci) {
            let topic = will.topic;
            // Wills bypass the publish ACL hook, so a will outside the
            // device's topics could forge a message (or a command) for
            // another device when the connection drops.
            if !device.may_publish(&topic) {
                tracing::warn!(client_id = ?crate::short(&client_id), device = %device.id, topic = ?crate::short(&topic), "connection refused: will topic outside the device's topics");
                return AuthResult::NotAuthorized;
            }
            if let Err(why) = self.pipeline.admit(&topic, will.len) {
                tracing::warn!(client_id = ?crate::short(&client_id), device = %device.id, topic = ?crate::short(&topic), reason = %why, "connection refused: its will could not leave the home");
                return AuthResult::NotAuthorized;
            }
        }
        if !self.has_connection_room(&device.id, &client_id) {
            tracing::warn!(client_id = ?crate::short(&client_id), device = %device.id, max = self.max_connections_per_device, "connection refused: connection limit for this device reached");
            return AuthResult::NotAuthorized;
        }
        AuthResult::Allow(false, None)
    }

    /// A consumer that knew its password: its destination must be a local
    /// one of this config, its client id its own, and its will (Home
    /// Assistant sets one) within what it may publish.
    fn admit_consumer(
        &self,
        ci: &ConnectInfo,
        client_id: &str,
        consumer: &crate::devices::Consumer,
    ) -> AuthResult {
        if !self.local.is_local(&consumer.destination) {
            tracing::warn!(consumer = %consumer.id, destination = %consumer.destination, "connection refused: the consumer's destination is not a local destination of this config");
            return AuthResult::NotAuthorized;
        }
        // Bound like a device's: an id no other account can use, so that
        // nobody takes its session (and its subscriptions) over.
        if !client_id_fits(client_id, &consumer.id) {
            tracing::warn!(consumer = %consumer.id, client_id = ?crate::short(client_id), "connection refused: a consumer's client id must be its id or <id>.<suffix>");
            return AuthResult::NotAuthorized;
        }
        if let Some(will) = will_of(ci) {
            if !self
                .local
                .may_publish(&consumer.destination, &will.topic, will.retain)
            {
                tracing::warn!(consumer = %consumer.id, topic = ?crate::short(&will.topic), "connection refused: will topic outside what the consumer may publish");
                return AuthResult::NotAuthorized;
            }
        }
        if !self.has_connection_room(&consumer.id, client_id) {
            tracing::warn!(consumer = %consumer.id, max = self.max_connections_per_device, "connection refused: connection limit for this consumer reached");
            return AuthResult::NotAuthorized;
        }
        AuthResult::Allow(false, None)
    }

    fn has_connection_room(&self, device: &str, client_id: &str) -> bool {
        match self.connections.get(device) {
            Some(clients) => {
                clients.contains_key(client_id)
                    || (clients.len() as u32) < self.max_connections_per_device
            }
            None => true,
        }
    }

    /// (devices with a live connection, live connections)
    pub fn connected_counts(&self) -> (usize, usize) {
        let mut devices = 0;
        let mut conns = 0;
        for e in self.connections.iter() {
            let n: u32 = e.value().values().sum();
            if n > 0 {
                devices += 1;
                conns += n as usize;
            }
        }
        (devices, conns)
    }

    /// Whether `device` has a live connection.
    pub fn is_online(&self, device: &str) -> bool {
        self.connections
            .get(device)
            .is_some_and(|c| c.values().any(|n| *n > 0))
    }

    /// Counts a new connection, unless the device is at its limit: the
    /// check and the count happen under one lock, so two logins at once
    /// cannot both take the last place (the check at login is only the
    /// early, polite refusal).
    fn connected(&self, device: &str, client_id: &str) -> bool {
        let mut clients = self.connections.entry(device.to_string()).or_default();
        if !clients.contains_key(client_id)
            && clients.len() as u32 >= self.max_connections_per_device
        {
            return false;
        }
        *clients.entry(client_id.to_string()).or_insert(0) += 1;
        true
    }

    fn disconnected(&self, device: &str, client_id: &str) {
        if let Some(mut clients) = self.connections.get_mut(device) {
            if let Some(n) = clients.get_mut(client_id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    clients.remove(client_id);
                }
            }
        }
        self.connections.remove_if(device, |_, c| c.is_empty());
    }

    /// The device a connection belongs to: its MQTT username, which
    /// authentication bound to the client id.
    fn device(&self, username: Option<&str>) -> Option<Arc<Device>> {
        username.and_then(|u| self.registry.get(u))
    }

    async fn check_publish(
        &self,
        username: Option<&str>,
        p: &rmqtt::types::Publish,
    ) -> PublishAclResult {
        if let Some(c) = username.and_then(|u| self.registry.consumer(u)) {
            // Routed as it is (Home Assistant's birth message), never into
            // the pipeline: a consumer is not a device.
            return if self.local.may_publish(&c.destination, &p.topic, p.retain) {
                self.local.heard(&c.destination, &p.topic, &p.payload);
                PublishAclResult::allow()
            } else {
                tracing::warn!(consumer = %c.id, topic = ?crate::short(&p.topic), "publish refused: a consumer only reads its view");
                PublishAclResult::rejected(false, None)
            };
        }
        let Some(device) = self.device(username) else {
            // The device was removed while connected.
            return PublishAclResult::rejected(true, Some("unknown device".into()));
        };
        let topic: &str = &p.topic;
        if !device.may_publish(topic) {
            tracing::warn!(device = %device.id, topic = ?crate::short(topic), "publish refused: topic outside the device's topics");
            return PublishAclResult::rejected(false, None);
        }
        // Its own command topics: commands come only from a destination,
        // through a rule (and a device could otherwise fill its own queue).
        if device.receives(topic) {
            tracing::warn!(device = %device.id, topic = ?crate::short(topic), "publish refused: a device may not publish to its own command topics");
            return PublishAclResult::rejected(false, None);
        }
        if let Err(why) = self.pipeline.admit(topic, p.payload.len()) {
            // MQTT 5 devices learn why from the PUBACK; 3.1.1 has no way to
            // say it, so the message is dropped (and logged) there.
            tracing::warn!(device = %device.id, topic = ?crate::short(topic), reason = %why, "publish refused: it could not leave the home");
            let code = match why {
                Inadmissible::ControlCharacter | Inadmissible::Wildcard => {
                    PublishAckReason::PayloadFormatInvalid
                }
                _ => PublishAckReason::UnspecifiedError,
            };
            return PublishAclResult(PublishResult::reason_code(
                code,
                Some(why.to_string().into()),
                false,
            ));
        }
        let kept = crate::pipeline::Kept {
            qos: p.qos as u8,
            retain: p.retain,
        };
        match self
            .pipeline
            .handle(&device.id, topic, &p.payload, kept)
            .await
        {
            Ok(()) => PublishAclResult::allow(),
            Err(e) => {
                // No PUBACK: close the connection so the device resends
                // once the store works again. Nothing acknowledged is lost.
                tracing::error!(device = %device.id, topic = ?crate::short(topic), error = %e, "message not stored; closing the connection without acknowledging");
                PublishAclResult::rejected(true, Some("storage unavailable".into()))
            }
        }
    }
}

#[async_trait]
impl Handler for Hooks {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(ci) => (
                false,
                Some(HookResult::AuthResult(self.authenticate(ci).await)),
            ),
            Parameter::ClientConnected(s) => {
                if let Some(u) = s.id.username.as_deref() {
                    if !self.connected(u, &s.id.client_id) {
                        self.over_limit
                            .insert((s.id.client_id.to_string(), s.id.create_time), ());
                        tracing::warn!(client_id = ?crate::short(&s.id.client_id), device = %u, max = self.max_connections_per_device, "connection closed: connection limit for this device reached");
                        let (scx, id) = (self.scx.clone(), s.id.clone());
                        tokio::spawn(async move { super::end_session(&scx, id).await });
                        return (true, acc);
                    }
                    // Removed between its login and now: end it once this
                    // hook has returned (a kick waits on the session).
                    if self.registry.account(u).is_none() {
                        let (scx, device) = (self.scx.clone(), u.to_string());
                        tokio::spawn(async move {
                            super::end_sessions(&scx, &device).await;
                        });
                    }
                }
                (true, acc)
            }
            Parameter::ClientDisconnected(s, _) => {
                let key = (s.id.client_id.to_string(), s.id.create_time);
                if self.over_limit.remove(&key).is_none() {
                    if let Some(u) = s.id.username.as_deref() {
                        self.disconnected(u, &s.id.client_id);
                    }
                }
                (true, acc)
            }
            Parameter::ClientSubscribeCheckAcl(s, sub) => {
                let allowed = match s
                    .id
                    .username
                    .as_deref()
                    .and_then(|u| self.registry.account(u))
                {
                    Some(Account::Device(d)) => d.may_subscribe(&sub.topic_filter),
                    Some(Account::Consumer(c)) => {
                        self.local.may_subscribe(&c.destination, &sub.topic_filter)
                    }
                    None => false,
                };
                let result = if allowed {
                    SubscribeAclResult::new_success(sub.opts.qos(), None)
                } else {
                    tracing::warn!(client_id = ?crate::short(&s.id.client_id), filter = ?crate::short(&sub.topic_filter), "subscribe refused: outside the account's topics");
                    SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized)
                };
                (false, Some(HookResult::SubscribeAclResult(result)))
            }
            Parameter::MessagePublishCheckAcl(s, p) => {
                let result = self.check_publish(s.id.username.as_deref(), p).await;
                (false, Some(HookResult::PublishAclResult(result)))
            }
            Parameter::MessagePublish(Some(s), from, p)
                if matches!(from.typ(), FromType::LastWill) =>
            {
                // The will was checked against the device's topics at
                // CONNECT; it still has to pass the policy like any message.
                if let Some(device) = self.device(s.id.username.as_deref()) {
                    if let Err(e) = self
                        .pipeline
                        .handle(
                            &device.id,
                            &p.topic,
                            &p.payload,
                            crate::pipeline::Kept {
                                qos: p.qos as u8,
                                retain: p.retain,
                            },
                        )
                        .await
                    {
                        tracing::error!(device = %device.id, error = %e, "will message not stored");
                    }
                }
                (true, acc)
            }
            Parameter::MessageDropped(to, from, p, reason) => {
                tracing::warn!(to = ?to.as_ref().map(|t| t.client_id.to_string()), from = ?from.client_id, topic = ?crate::short(&p.topic), %reason, "broker dropped a message");
                (true, acc)
            }
            _ => (true, acc),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client_id_fits;

    #[test]
    fn client_ids_bind_to_the_device() {
        assert!(client_id_fits("plug", "plug"));
        assert!(client_id_fits("plug.a", "plug"));
        assert!(!client_id_fits("plug.", "plug"));
        assert!(!client_id_fits("plug2", "plug"));
        assert!(!client_id_fits("plu", "plug"));
        assert!(!client_id_fits("other", "plug"));
    }
}
