//! Retained messages, kept in memory.
//!
//! rmqtt's core leaves retained messages to a plugin; its in-memory tree is
//! what we need for a single hub. Retained messages live as long as the
//! process (and at most the configured message expiry): devices republish
//! their state on reconnect, and the durable copy of every message is the
//! history store.

use std::time::Duration;

use async_trait::async_trait;
use rmqtt::retain::{DefaultRetainStorage, RetainStorage};
use rmqtt::types::{Retain, TopicFilter, TopicName};

#[derive(Default)]
pub(super) struct InMemoryRetain(DefaultRetainStorage);

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
