//! A full disk: the device gets no PUBACK for what cannot be stored, the
//! process stays up and says it is degraded, and everything acknowledged
//! before is still there.
//!
//! The data directory is a small tmpfs, so this test needs root (CI runs as
//! root); without it, it fails and says why rather than skipping.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};
use dataward_tests::*;
use rumqttc::{Event, Packet, QoS};

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(at)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()?;
        if !out.status.success() {
            bail!(
                "this test mounts a small tmpfs to fill the disk and needs root: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self(at.to_path_buf()))
    }

    fn grow(&self, size: &str) -> Result<()> {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}"), "tmpfs"])
            .arg(&self.0)
            .output()?;
        if !out.status.success() {
            bail!("remount failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_without_losing_what_was_acknowledged() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let disk = Tmpfs::mount(&data, "3m")?;
    let dev = add_device(&data, "dev", "generic")?;
    init_keys(&data)?;
    let mut gw = Gateway::start(
        dir.path(),
        &format!("data_dir = {:?}\n", data.display().to_string()),
    )?;

    let (client, mut events) = connect(device_options(gw.mqtt, &dev, "dev")).await?;
    let mut acked = 0usize;
    let mut refused = false;
    for seq in 0..2000usize {
        let payload = format!(r#"{{"seq":{seq},"pad":"{}"}}"#, "x".repeat(8000));
        client
            .publish("devices/dev/x", QoS::AtLeastOnce, false, payload)
            .await?;
        let outcome = loop {
            match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break true,
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break false,
            }
        };
        if !outcome {
            refused = true;
            break;
        }
        acked += 1;
    }
    assert!(
        refused,
        "the disk never filled up ({acked} messages acknowledged)"
    );
    assert!(
        acked > 10,
        "only {acked} messages fit before the disk filled"
    );

    assert!(
        gw.is_running(),
        "a full disk must not take the process down"
    );
    // The failed write makes the committer flush at once, and the flush
    // reports the full disk.
    let mut health = gw.healthz()?;
    for _ in 0..30 {
        if health.starts_with("HTTP/1.1 503") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        health = gw.healthz()?;
    }
    assert!(
        health.starts_with("HTTP/1.1 503") && health.contains("degraded"),
        "{health}\n{}",
        gw.log()
    );
    assert!(gw.log().contains("No space left on device"));
    drop((client, events));
    let _ = gw.stop()?;

    // With room again, every acknowledged message is in the history.
    disk.grow("32m")?;
    let stored = stored_seqs(&data, "dev")?;
    let missing: Vec<usize> = (0..acked).filter(|s| !stored.contains(s)).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    Ok(())
}
