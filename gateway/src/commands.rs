//! Cloud → device commands: relayed only when a command rule allows that
//! destination to reach that device on that topic. Everything else is
//! dropped and logged.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::broker::Broker;
use crate::devices::{Device, DeviceRegistry};
use crate::pipeline::Pipeline;
use crate::uplink::InboundCommand;

use crate::ledger::EntryBody;

/// Why a command was not relayed.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    InvalidTopic,
    NoDevice,
    NotAllowed(String),
}

/// Decides whether `cmd` may go to the devices that would receive it. All
/// of them must be allowed, since the broker delivers to every subscriber.
/// Gives those devices back.
pub fn check(
    registry: &DeviceRegistry,
    policy: &policy::Policy,
    cmd: &InboundCommand,
) -> Result<Vec<Arc<Device>>, Refusal> {
    if !policy::topic::is_valid_topic(&cmd.topic) {
        return Err(Refusal::InvalidTopic);
    }
    let receivers = registry.receivers_of(&cmd.topic);
    if receivers.is_empty() {
        return Err(Refusal::NoDevice);
    }
    for d in &receivers {
        if policy
            .allows_command(&d.id, &cmd.destination, &cmd.topic)
            .is_none()
        {
            return Err(Refusal::NotAllowed(d.id.clone()));
        }
    }
    Ok(receivers)
}

/// Command bytes one device may be sent: a burst, then a steady rate.
/// With the device's queue bound and the gate's stall deadline, this bounds
/// what a cloud can pile up for a device that does not read.
const BURST_BYTES: f64 = 256.0 * 1024.0;
const BYTES_PER_SEC: f64 = 32.0 * 1024.0;

/// Token buckets of command bytes, per device.
#[derive(Default)]
struct CommandBudget {
    buckets: std::collections::HashMap<String, (f64, std::time::Instant)>,
}

impl CommandBudget {
    fn take(&mut self, device: &str, bytes: usize, now: std::time::Instant) -> bool {
        let (tokens, last) = self
            .buckets
            .entry(device.to_string())
            .or_insert((BURST_BYTES, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * BYTES_PER_SEC).min(BURST_BYTES);
        *last = now;
        if *tokens >= bytes as f64 {
            *tokens -= bytes as f64;
            true
        } else {
            false
        }
    }
}

pub async fn route(
    mut rx: mpsc::Receiver<InboundCommand>,
    registry: Arc<DeviceRegistry>,
    pipeline: Arc<Pipeline>,
    broker: Arc<Broker>,
) {
    let mut budget = CommandBudget::default();
    let mut refusals = RefusalRecords::default();
    let mut relays = PerMinute::default();
    while let Some(cmd) = rx.recv().await {
        let now = std::time::Instant::now();
        match check(&registry, &pipeline.policy().policy, &cmd) {
            Ok(receivers)
                if !receivers
                    .iter()
                    .all(|d| budget.take(&d.id, cmd.payload.len().max(1), now)) =>
            {
                tracing::warn!(destination = %cmd.destination, topic = ?crate::short(&cmd.topic), "command dropped: over the device's command rate ({} KiB/s)", BYTES_PER_SEC as u64 / 1024);
                refusals.record(
                    pipeline.ledger(),
                    &cmd,
                    "over the device's command rate",
                    now,
                );
            }
            Ok(receivers) => match broker.publish(&cmd.topic, &cmd.payload, true).await {
                Ok(()) => {
                    tracing::info!(destination = %cmd.destination, topic = ?crate::short(&cmd.topic), "command relayed to device");
                    if relays.allow(&cmd.destination, now) {
                        pipeline.ledger().note(EntryBody::CommandRelayed {
                            destination: cmd.destination.clone(),
                            topic: crate::short(&cmd.topic).to_string(),
                            devices: receivers.iter().map(|d| d.id.clone()).collect(),
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(destination = %cmd.destination, topic = ?crate::short(&cmd.topic), error = %e, "command not delivered");
                    refusals.record(pipeline.ledger(), &cmd, "not delivered", now);
                }
            },
            Err(reason) => {
                tracing::warn!(destination = %cmd.destination, topic = ?crate::short(&cmd.topic), ?reason, "command dropped: no rule allows it");
                refusals.record(pipeline.ledger(), &cmd, &format!("{reason:?}"), now);
            }
        }
    }
}

/// Relayed commands enter the ledger at most [`REFUSALS_PER_MINUTE`] a
/// minute per destination too; past that, the log has them.
#[derive(Default)]
struct PerMinute(std::collections::HashMap<String, (std::time::Instant, u32)>);

impl PerMinute {
    fn allow(&mut self, destination: &str, now: std::time::Instant) -> bool {
        let slot = self.0.entry(destination.to_string()).or_insert((now, 0));
        if now.duration_since(slot.0) >= std::time::Duration::from_secs(60) {
            *slot = (now, 0);
        }
        slot.1 += 1;
        slot.1 <= REFUSALS_PER_MINUTE
    }
}

/// Refused commands enter the ledger at most [`REFUSALS_PER_MINUTE`] a
/// minute per destination, so a cloud sending junk cannot fill the disk;
/// the next recorded refusal says how many were left out.
const REFUSALS_PER_MINUTE: u32 = 60;

#[derive(Default)]
struct RefusalRecords {
    by_destination: std::collections::HashMap<String, (std::time::Instant, u32, u64)>,
}

impl RefusalRecords {
    fn record(
        &mut self,
        ledger: &crate::ledger::Ledger,
        cmd: &InboundCommand,
        why: &str,
        now: std::time::Instant,
    ) {
        // One entry per destination name the config knows: bounded.
        let slot = self
            .by_destination
            .entry(cmd.destination.clone())
            .or_insert((now, 0, 0));
        if now.duration_since(slot.0) >= std::time::Duration::from_secs(60) {
            *slot = (now, 0, slot.2);
        }
        if slot.1 >= REFUSALS_PER_MINUTE {
            slot.2 += 1;
            return;
        }
        slot.1 += 1;
        let left_out = std::mem::take(&mut slot.2);
        let reason = if left_out > 0 {
            format!("{why} ({left_out} more refused before this one were not recorded one by one)")
        } else {
            why.to_string()
        };
        ledger.note(EntryBody::CommandRefused {
            destination: cmd.destination.clone(),
            topic: crate::short(&cmd.topic).to_string(),
            reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_bytes_are_budgeted_per_device() {
        let mut b = CommandBudget::default();
        let t0 = std::time::Instant::now();
        assert!(b.take("plug", 200 * 1024, t0));
        assert!(!b.take("plug", 100 * 1024, t0), "over the burst");
        assert!(b.take("other", 100 * 1024, t0), "per device");
        // A second later, a second's worth is back.
        let t1 = t0 + std::time::Duration::from_secs(1);
        assert!(b.take("plug", 32 * 1024 + 56 * 1024, t1));
        assert!(!b.take("plug", 1024, t1));
    }
    use crate::devices::Preset;
    use crate::store::Store;

    #[test]
    fn commands_need_a_rule_and_a_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let reg = DeviceRegistry::open(&store).expect("registry");
        reg.add("plug", "Plug", Preset::Tasmota, 0).expect("add");
        let policy = policy::Policy::parse(
            "[[command]]\ndevice = \"plug\"\ndestination = \"vendor_cloud\"\ntopic = \"cmnd/plug/POWER\"\n",
        )
        .expect("policy");
        let cmd = |dest: &str, topic: &str| InboundCommand {
            destination: dest.into(),
            topic: topic.into(),
            payload: b"ON".to_vec(),
        };
        let ids = |r: Result<Vec<Arc<Device>>, Refusal>| {
            r.map(|ds| ds.iter().map(|d| d.id.clone()).collect::<Vec<_>>())
        };
        assert_eq!(
            ids(check(
                &reg,
                &policy,
                &cmd("vendor_cloud", "cmnd/plug/POWER")
            )),
            Ok(vec!["plug".to_string()])
        );
        assert_eq!(
            ids(check(
                &reg,
                &policy,
                &cmd("vendor_cloud", "cmnd/plug/Upgrade")
            )),
            Err(Refusal::NotAllowed("plug".into()))
        );
        assert_eq!(
            ids(check(&reg, &policy, &cmd("utility", "cmnd/plug/POWER"))),
            Err(Refusal::NotAllowed("plug".into()))
        );
        assert_eq!(
            ids(check(
                &reg,
                &policy,
                &cmd("vendor_cloud", "cmnd/other/POWER")
            )),
            Err(Refusal::NoDevice)
        );
        assert_eq!(
            ids(check(&reg, &policy, &cmd("vendor_cloud", "cmnd/+/POWER"))),
            Err(Refusal::InvalidTopic)
        );
    }
}
