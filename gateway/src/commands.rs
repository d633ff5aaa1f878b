//! Cloud → device commands: relayed only when a command rule allows that
//! destination to reach that device on that topic. Everything else is
//! dropped and logged.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::broker::Broker;
use crate::devices::DeviceRegistry;
use crate::pipeline::Pipeline;
use crate::uplink::InboundCommand;

/// Why a command was not relayed.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    InvalidTopic,
    NoDevice,
    NotAllowed(String),
}

/// Decides whether `cmd` may go to the devices that would receive it. All
/// of them must be allowed, since the broker delivers to every subscriber.
pub fn check(
    registry: &DeviceRegistry,
    policy: &policy::Policy,
    cmd: &InboundCommand,
) -> Result<(), Refusal> {
    if !policy::topic::is_valid_topic(&cmd.topic) {
        return Err(Refusal::InvalidTopic);
    }
    let receivers = registry.receivers_of(&cmd.topic);
    if receivers.is_empty() {
        return Err(Refusal::NoDevice);
    }
    for d in receivers {
        if policy
            .allows_command(&d.id, &cmd.destination, &cmd.topic)
            .is_none()
        {
            return Err(Refusal::NotAllowed(d.id.clone()));
        }
    }
    Ok(())
}

pub async fn route(
    mut rx: mpsc::Receiver<InboundCommand>,
    registry: Arc<DeviceRegistry>,
    pipeline: Arc<Pipeline>,
    broker: Arc<Broker>,
) {
    while let Some(cmd) = rx.recv().await {
        match check(&registry, &pipeline.policy().policy, &cmd) {
            Ok(()) => match broker.publish(&cmd.topic, &cmd.payload, true).await {
                Ok(()) => {
                    tracing::info!(destination = %cmd.destination, topic = ?cmd.topic, "command relayed to device")
                }
                Err(e) => {
                    tracing::warn!(destination = %cmd.destination, topic = ?cmd.topic, error = %e, "command not delivered")
                }
            },
            Err(reason) => {
                tracing::warn!(destination = %cmd.destination, topic = ?cmd.topic, ?reason, "command dropped: no rule allows it")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(
            check(&reg, &policy, &cmd("vendor_cloud", "cmnd/plug/POWER")),
            Ok(())
        );
        assert_eq!(
            check(&reg, &policy, &cmd("vendor_cloud", "cmnd/plug/Upgrade")),
            Err(Refusal::NotAllowed("plug".into()))
        );
        assert_eq!(
            check(&reg, &policy, &cmd("utility", "cmnd/plug/POWER")),
            Err(Refusal::NotAllowed("plug".into()))
        );
        assert_eq!(
            check(&reg, &policy, &cmd("vendor_cloud", "cmnd/other/POWER")),
            Err(Refusal::NoDevice)
        );
        assert_eq!(
            check(&reg, &policy, &cmd("vendor_cloud", "cmnd/+/POWER")),
            Err(Refusal::InvalidTopic)
        );
    }
}
