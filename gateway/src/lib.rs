//! dataward's gateway: the program that sits between a home's IoT devices
//! and the clouds they would otherwise talk to directly.
//!
//! Data flows one way: device → [`broker`] → [`pipeline`] (identify →
//! policy → store → outbox) → [`uplink`] → cloud. Commands flow back through
//! [`uplink`] → [`commands`] (policy check) → [`broker`] → device.
//!
//! - [`config`]: the TOML config file and its embedded defaults.
//! - [`devices`]: device identities, credentials and topic permissions.
//! - [`broker`]: the embedded MQTT broker (rmqtt, behind this one module).
//! - [`pipeline`]: policy evaluation and durable storage per message.
//! - [`store`]: sled behind small interfaces: history, outboxes, group commit.
//! - [`uplink`]: one MQTT client per destination, fed from its outbox.
//! - [`commands`]: cloud → device commands, allowed only by a rule.
//! - [`app`]: `dataward run`, wiring it all and shutting down cleanly.

pub mod app;
pub mod broker;
pub mod commands;
pub mod config;
pub mod devices;
pub mod pipeline;
pub mod store;
pub mod uplink;

use anyhow::Context;

/// Loads the policy in effect for `config` and checks it against the
/// configured destinations. No policy file means the empty policy: nothing
/// leaves the home.
pub fn load_policy(config: &config::Config) -> anyhow::Result<policy::Policy> {
    let Some(path) = config.policy_path() else {
        tracing::info!("no policy file: nothing is shared with any destination");
        return Ok(policy::Policy::default());
    };
    read_policy(&path, config)
}

/// Reads and validates one policy file, including that every destination it
/// names is configured.
pub fn read_policy(
    path: &std::path::Path,
    config: &config::Config,
) -> anyhow::Result<policy::Policy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy file {}", path.display()))?;
    let policy = policy::Policy::parse(&text)
        .and_then(|p| {
            p.check_destinations(&config.destination_names())
                .map(|()| p)
        })
        .map_err(|e| BadInput(format!("{}: {e}", path.display())))?;
    Ok(policy)
}

/// An error caused by the user's input (a file, a flag): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);
