//! Devices over TLS: the gateway's generated certificate (its fingerprint
//! printed and shown by `dataward status`) verifies for a real rumqttc
//! device that trusts exactly that certificate; the device's message
//! reaches the cloud. A device that trusts another certificate, or speaks
//! plain MQTT to the TLS port, gets nowhere; with `plain = false`, the
//! plain port is closed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use dataward_tests::*;
use rumqttc::{QoS, TlsConfiguration, Transport};
use tokio_rustls::rustls;

/// A device's TLS config trusting only `cert_pem`.
fn trusting(cert_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &cert_pem[..]) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

fn tls_device(
    port: u16,
    creds: &DeviceCreds,
    config: Arc<rustls::ClientConfig>,
) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(&creds.id, "localhost", port);
    o.set_credentials(creds.id.clone(), creds.password.clone());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    o
}

/// Connects `device`, publishes `payload` at QoS 1, and answers what the
/// cloud's subscriber then receives.
async fn publish_over(
    device: rumqttc::MqttOptions,
    payload: &str,
    cloud_sub: &rumqttc::AsyncClient,
    cloud_events: &mut rumqttc::EventLoop,
) -> Result<Vec<(String, Vec<u8>)>> {
    let (client, mut events) = connect(device).await?;
    client
        .publish("devices/sensor/state", QoS::AtLeastOnce, false, payload)
        .await?;
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    Ok(collect(
        Some(cloud_sub),
        cloud_events,
        Duration::from_secs(10),
        |g| !g.is_empty(),
    )
    .await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_publishes_over_tls_verified_against_the_generated_certificate() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let sensor = add_device(&data, "sensor", "generic")?;
    let policy = write_policy(dir.path(), SHARE_ALL)?;
    let config = config_for(
        &data,
        &cloud,
        Some(&policy),
        "\n[mqtt]\ntls_listen = \"127.0.0.1:0\"\n",
    );
    let gw = Gateway::start(dir.path(), &config)?;
    let tls = gw
        .mqtts
        .ok_or_else(|| anyhow!("no mqtts= in the running line"))?;
    gw.wait_for_log("mqtt_fingerprint=", Duration::from_secs(10))?;
    let printed = gw
        .log()
        .split("mqtt_fingerprint=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_string)
        .unwrap_or_default();
    let status = cli_json(&data, &["status"])?;
    assert_eq!(status["mqtt_tls_fingerprint"], printed.as_str(), "{status}");
    let cert = std::fs::read(data.join("mqtt-tls/cert.pem"))?;
    assert_eq!(
        ::gateway::tls::fingerprint_of(&data.join("mqtt-tls/cert.pem")),
        Some(printed)
    );

    let (cloud_sub, mut cloud_events) = cloud_subscriber(&cloud, "home/#", "sub-tls").await?;
    let device = tls_device(tls.port(), &sensor, trusting(&cert)?);
    let got = publish_over(device, r#"{"t":21}"#, &cloud_sub, &mut cloud_events).await?;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].1, br#"{"t":21}"#);

    // Another certificate: the handshake fails, nothing gets in.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let refused = connect(tls_device(
        tls.port(),
        &sensor,
        trusting(other.cert.pem().as_bytes())?,
    ))
    .await;
    assert!(refused.is_err(), "a certificate it does not trust");
    // Plain MQTT on the TLS port: no CONNACK.
    assert!(connect(device_options(tls, &sensor, "plain-on-tls"))
        .await
        .is_err());
    assert!(gw.stop()?.success());

    // TLS only: the plain port is not opened.
    let tls_only = config.replace("tls_listen", "plain = false\ntls_listen");
    let gw = Gateway::start(dir.path(), &tls_only)?;
    let tls = gw.mqtts.ok_or_else(|| anyhow!("no mqtts="))?;
    assert_eq!(gw.mqtt, tls, "the only device port is the TLS one");
    let device = tls_device(tls.port(), &sensor, trusting(&cert)?);
    let got = publish_over(device, r#"{"t":22}"#, &cloud_sub, &mut cloud_events).await?;
    assert_eq!(
        got.len(),
        1,
        "the same certificate after a restart: {got:?}"
    );
    assert!(gw.stop()?.success());
    Ok(())
}
