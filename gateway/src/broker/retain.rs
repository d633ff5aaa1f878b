//! Retained messages, kept in memory.
//!
//! rmqtt's core leaves retained messages to a plugin; its in-memory tree is
//! what we need for a single hub. Retained messages live as long as the
//! process (and at most the configured message expiry): devices republish
//! their state on reconnect, and the durable copy of every message is the
//! history store.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rmqtt::retain::{DefaultRetainStorage, RetainStorage};
use rmqtt::types::{Retain, TopicFilter, TopicName};

/// Shared with [`super::Broker`], which drops a removed device's retained
/// messages.
#[derive(Clone)]
pub(super) struct InMemoryRetain(Arc<DefaultRetainStorage>, usize);

impl Default for InMemoryRetain {
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl InMemoryRetain {
    /// Keeps at most `max` retained messages: beyond, a new retained topic
    /// is not kept (the message itself still flows, and it is logged).
    pub(super) fn new(max: usize) -> Self {
        Self(Arc::default(), max)
    }

    /// Keeps `retain` as `topic`'s retained message (with no expiry), within
    /// the store's bound; an empty payload removes it.
    pub(super) async fn keep(&self, topic: &str, retain: Retain) -> rmqtt::Result<()> {
        self.set(&TopicName::from(topic), retain, None).await
    }

    /// Removes every retained message on a topic matching `filter`;
    /// returns how many there were.
    pub(super) async fn clear(&self, filter: &str) -> rmqtt::Result<usize> {
        let found = self.0.get_message(&TopicFilter::from(filter)).await?;
        let n = found.len();
        for (topic, mut retain) in found {
            // An empty payload is MQTT's way to clear a retained message,
            // and what the storage removes on.
            retain.publish.payload = bytes::Bytes::new();
            self.0.set_with_timeout(&topic, retain, None).await?;
        }
        Ok(n)
    }
}

#[async_trait]
impl RetainStorage for InMemoryRetain {
    fn enable(&self) -> bool {
        true
    }

    async fn set(
        &self,
        topic: &TopicName,
        retain: Retain,
        expiry: Option<Duration>,
    ) -> rmqtt::Result<()> {
        if !retain.publish.payload.is_empty()
            && self.0.count().await >= self.1 as isize
            && self
                .0
                .get_message(&TopicFilter::from(topic.as_ref()))
                .await?
                .is_empty()
        {
            tracing::warn!(
                topic = ?crate::short(topic.as_ref()),
                max = self.1,
                "retained message not kept: the retained store is full"
            );
            return Ok(());
        }
        self.0.set_with_timeout(topic, retain, expiry).await
    }

    async fn get(&self, filter: &TopicFilter) -> rmqtt::Result<Vec<(TopicName, Retain)>> {
        self.0.get_message(filter).await
    }

    async fn count(&self) -> isize {
        self.0.count().await
    }

    async fn max(&self) -> isize {
        self.0.max().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmqtt::codec::types::{Publish as Packet, QoS};
    use rmqtt::types::{From, Id, Publish};

    fn retained(topic: &str) -> Retain {
        let packet = Packet {
            dup: false,
            retain: true,
            qos: QoS::AtLeastOnce,
            topic: topic.into(),
            packet_id: None,
            payload: bytes::Bytes::from_static(b"{\"on\":1}"),
            properties: None,
        };
        Retain {
            msg_id: None,
            from: From::from_system(Id::new(1, 1, None, None, "t".into(), None)),
            publish: Publish {
                inner: Box::new(packet),
                target_clientid: None,
                delay_interval: None,
                create_time: None,
            },
        }
    }

    #[tokio::test]
    async fn clearing_removes_only_the_matching_topics() {
        let store = InMemoryRetain::default();
        for t in ["tele/plug/STATE", "tele/plug/SENSOR", "tele/other/STATE"] {
            store
                .set(&TopicName::from(t), retained(t), None)
                .await
                .expect("set");
        }
        assert_eq!(store.clear("tele/plug/#").await.expect("clear"), 2);
        let left = store.get(&TopicFilter::from("#")).await.expect("get");
        let topics: Vec<String> = left.iter().map(|(t, _)| t.to_string()).collect();
        assert_eq!(topics, vec!["tele/other/STATE".to_string()]);
        assert_eq!(store.clear("tele/plug/#").await.expect("clear"), 0);
    }

    #[tokio::test]
    async fn the_retained_store_is_bounded() {
        let store = InMemoryRetain::new(2);
        for t in ["a/1", "a/2", "a/3"] {
            store
                .set(&TopicName::from(t), retained(t), None)
                .await
                .expect("set");
        }
        assert_eq!(store.count().await, 2);
        // An existing topic may still be replaced when full.
        store
            .set(&TopicName::from("a/2"), retained("a/2"), None)
            .await
            .expect("set");
        assert_eq!(store.count().await, 2);
    }
}
