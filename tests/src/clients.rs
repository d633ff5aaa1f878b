//! MQTT clients: devices and cloud-side subscribers (rumqttc).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

use crate::cloud::Cloud;
use crate::gateway::DeviceCreds;

/// MQTT 3.1.1 client options for a device.
pub fn device_options(addr: SocketAddr, creds: &DeviceCreds, client_id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_credentials(creds.id.clone(), creds.password.clone());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(4 << 20, 4 << 20);
    o
}

/// Connects and waits for the CONNACK; errors if the broker refuses.
pub async fn connect(opts: MqttOptions) -> Result<(AsyncClient, EventLoop)> {
    let (client, mut events) = AsyncClient::new(opts, 1024);
    let deadline = Duration::from_secs(10);
    tokio::time::timeout(deadline, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a)))
                    if a.code == rumqttc::ConnectReturnCode::Success =>
                {
                    return Ok(())
                }
                Ok(Event::Incoming(Packet::ConnAck(a))) => bail!("refused: {:?}", a.code),
                Ok(_) => {}
                Err(e) => bail!("connection failed: {e}"),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no CONNACK within {deadline:?}"))??;
    Ok((client, events))
}

/// A cloud-side subscriber with a persistent session and manual acks: a
/// message is acknowledged only once [`collect`] has recorded it, so a cloud
/// restart loses nothing queued for, or in flight to, the subscriber.
pub async fn cloud_subscriber(
    cloud: &Cloud,
    filter: &str,
    client_id: &str,
) -> Result<(AsyncClient, EventLoop)> {
    let (client, events, early) = resume_cloud_subscriber(cloud, filter, client_id).await?;
    if !early.is_empty() {
        bail!(
            "a new subscriber {client_id} got {} messages from an old session",
            early.len()
        );
    }
    Ok((client, events))
}

/// Like [`cloud_subscriber`], for a client id that may have a session on
/// the cloud already: also returns the messages the cloud redelivered from
/// that session before the SUBACK.
pub async fn resume_cloud_subscriber(
    cloud: &Cloud,
    filter: &str,
    client_id: &str,
) -> Result<(AsyncClient, EventLoop, Vec<(String, Vec<u8>)>)> {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", cloud.port);
    o.set_clean_session(false);
    o.set_manual_acks(true);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut events) = connect(o).await?;
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    let mut early = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                early.push((p.topic.clone(), p.payload.to_vec()));
                client.try_ack(&p)?;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("subscriber failed: {e}"),
            Err(_) => bail!("no SUBACK"),
        }
    }
    Ok((client, events, early))
}

/// Collects publishes from `events` until `done` says so or `timeout`
/// passes, acknowledging each through `acker` when the client uses manual
/// acks. Connection errors are retried (the broker may be restarting).
pub async fn collect<F>(
    acker: Option<&AsyncClient>,
    events: &mut EventLoop,
    timeout: Duration,
    mut done: F,
) -> Vec<(String, Vec<u8>)>
where
    F: FnMut(&[(String, Vec<u8>)]) -> bool,
{
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(&got) {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Err(_) => break,
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                got.push((p.topic.clone(), p.payload.to_vec()));
                if let Some(c) = acker {
                    let _ = c.try_ack(&p);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    got
}

/// Polls `events` until an event satisfies `pred`; fails on a connection
/// error or after 10 s.
pub async fn wait_for(events: &mut EventLoop, mut pred: impl FnMut(&Event) -> bool) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(e) if pred(&e) => return Ok(()),
                Ok(_) => {}
                Err(e) => bail!("connection failed: {e}"),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("timed out waiting for an MQTT event"))?
}

/// One MQTT 3.1.1 CONNECT over a raw socket bound to `source` (any
/// 127.x.y.z works on loopback), for tests that play many hosts. Returns
/// the CONNACK's return code (0 accepted, 4 bad credentials, 5 not
/// authorized).
pub async fn raw_connect(
    addr: SocketAddr,
    source: std::net::Ipv4Addr,
    client_id: &str,
    username: &str,
    password: &str,
) -> Result<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let mut stream = socket.connect(addr).await?;
    let packet = crate::fuzz::connect(false, client_id, username, password, false);
    stream.write_all(&packet).await?;
    let mut ack = [0u8; 4];
    stream.read_exact(&mut ack).await?;
    if ack[0] != 0x20 {
        bail!("not a CONNACK: {ack:02x?}");
    }
    Ok(ack[3])
}

/// Publishes one QoS 1 message and waits for its PUBACK.
pub async fn publish_acked(
    client: &AsyncClient,
    events: &mut EventLoop,
    topic: &str,
    payload: &str,
) -> Result<()> {
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
        .await?;
    wait_for(events, |e| matches!(e, Event::Incoming(Packet::PubAck(_)))).await
}

/// Whatever still arrives on `events` within `within`, up to the first
/// message: for checking that nothing trails behind what was expected.
pub async fn stragglers(
    acker: Option<&AsyncClient>,
    events: &mut EventLoop,
    within: Duration,
) -> Vec<(String, Vec<u8>)> {
    collect(acker, events, within, |g| !g.is_empty()).await
}
