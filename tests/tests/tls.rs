//! The uplink speaks TLS with verification on: a cloud whose certificate
//! chains to the configured CA gets the data; one that does not, gets
//! nothing.

use std::time::Duration;

use anyhow::Result;
use dataward_tests::*;
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_verifies_the_cloud_certificate() -> Result<()> {
    let ca = TestCa::new()?;
    let tls_port = free_port()?;
    let cloud = Cloud::start_with(&ca.listener(tls_port))?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let dev = add_device(&data, "dev1", "generic")?;
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[quarantine]\nexempt = [\"*\"]\n\n[[rule]]\ndevice = \"*\"\nfield = \"*\"\ndestination = \"*\"\naction = \"share\"\n",
    )?;
    // Same TLS cloud twice: once trusting our CA, once with the system
    // trust store, which does not know it.
    let config = format!(
        "data_dir = {:?}\npolicy = {:?}\n\
         [[destination]]\nname = \"trusted\"\nurl = \"mqtts://127.0.0.1:{tls_port}\"\nca_file = {:?}\ntopic_prefix = \"trusted/\"\n\
         [[destination]]\nname = \"untrusted\"\nurl = \"mqtts://127.0.0.1:{tls_port}\"\ntopic_prefix = \"untrusted/\"\n",
        data.display().to_string(),
        policy.display().to_string(),
        ca.ca.display().to_string(),
    );
    let gw = Gateway::start(dir.path(), &config)?;
    let (sub, mut events) = cloud_subscriber(&cloud, "#", "sub-tls").await?;
    let (c, e) = connect(device_options(gw.mqtt, &dev, "dev1")).await?;
    let poller = tokio::spawn(async move {
        let mut e = e;
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(3), e.poll()).await {}
    });
    c.publish(
        "devices/dev1/state",
        QoS::AtLeastOnce,
        false,
        r#"{"temp":20}"#,
    )
    .await?;
    let got = collect(Some(&sub), &mut events, Duration::from_secs(10), |g| {
        !g.is_empty()
    })
    .await;
    let more = collect(Some(&sub), &mut events, Duration::from_secs(2), |_| false).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "trusted/devices/dev1/state");
    assert!(
        more.is_empty(),
        "the unverified destination received data: {more:?}"
    );
    gw.wait_for_log("UnknownIssuer", Duration::from_secs(10))?;
    drop(c);
    let _ = poller.await;
    gw.stop()?;
    Ok(())
}
