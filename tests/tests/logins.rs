//! Logins under attack: a flood of bad logins does not lock a real device
//! out, and an unknown id is refused no faster than a known one.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use dataward_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_device_logs_in_during_a_flood_of_bad_logins() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let real = add_device(&data, "real", "generic")?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, None, ""))?;
    let addr = gw.mqtt;

    // 200 wrong passwords for the real id from one host, 200 unknown ids
    // from another, all at once.
    let mut attack = Vec::new();
    for i in 0..400 {
        let (source, id, user) = if i % 2 == 0 {
            (
                Ipv4Addr::new(127, 0, 0, 2),
                "real".to_string(),
                "real".to_string(),
            )
        } else {
            let u = format!("ghost-{i}");
            (Ipv4Addr::new(127, 0, 0, 3), u.clone(), u)
        };
        attack.push(tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_secs(30),
                raw_connect(addr, source, &id, &user, "not-the-password"),
            )
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut took = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let code = raw_connect(addr, Ipv4Addr::LOCALHOST, "real", &real.id, &real.password).await?;
        took.push(start.elapsed());
        assert_eq!(code, 0, "the real device is accepted");
    }
    let (mut refused, mut closed) = (0, 0);
    for a in attack {
        match a.await? {
            Ok(Ok(0)) => bail!("a bad login was accepted"),
            Ok(Ok(_)) => refused += 1,
            // Over the per-address cap of logins in progress: closed at once.
            Ok(Err(_)) => closed += 1,
            Err(_) => bail!("an attacker got no answer within 30 s"),
        }
    }
    eprintln!("real device logins took {took:?}; attackers: {refused} refused, {closed} closed");
    assert_eq!(refused + closed, 400);
    assert!(refused > 0, "some attempts reached the password check");
    assert!(
        took.iter().all(|t| *t < Duration::from_secs(2)),
        "the real device's logins took {took:?}"
    );
    assert!(gw
        .log()
        .contains("too many failed logins from this address"));
    assert!(gw.stop()?.success());
    Ok(())
}

/// The flood a botnet on the LAN would send: every attempt from an address
/// of its own, so that no per-address limit applies. A device that logged
/// in before from its address is checked ahead of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_device_logs_in_during_a_flood_from_many_addresses() -> Result<()> {
    let (dir, data, cloud) = scratch()?;
    let real = add_device(&data, "real", "generic")?;
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, None, ""))?;
    let addr = gw.mqtt;
    let code = raw_connect(addr, Ipv4Addr::LOCALHOST, "real", &real.id, &real.password).await?;
    assert_eq!(code, 0, "the real device is accepted before the flood");

    let mut attack = Vec::new();
    for i in 0..400u16 {
        let source = Ipv4Addr::new(127, 1, (i / 200) as u8, (i % 200) as u8 + 1);
        let (id, password) = if i % 2 == 0 {
            (real.id.clone(), "not-the-password".to_string())
        } else {
            (format!("ghost-{i}"), "whatever".to_string())
        };
        attack.push(tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_secs(30),
                raw_connect(addr, source, &id, &id, &password),
            )
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut took = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let code = raw_connect(addr, Ipv4Addr::LOCALHOST, "real", &real.id, &real.password).await?;
        took.push(start.elapsed());
        assert_eq!(code, 0, "the real device is accepted during the flood");
    }
    let mut answered = 0;
    for a in attack {
        match a.await? {
            Ok(Ok(0)) => bail!("a bad login was accepted"),
            Ok(_) => answered += 1,
            Err(_) => bail!("an attacker got no answer within 30 s"),
        }
    }
    eprintln!("real device logins during a 400-address flood took {took:?}");
    assert_eq!(answered, 400);
    assert!(
        took.iter().all(|t| *t < Duration::from_secs(2)),
        "the real device's logins took {took:?}"
    );
    assert!(gw.stop()?.success());
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_cost_what_known_ones_do() -> Result<()> {
    const N: u8 = 20;
    let (dir, data, cloud) = scratch()?;
    for i in 0..N {
        add_device(&data, &format!("known-{i}"), "generic")?;
    }
    let gw = Gateway::start(dir.path(), &config_for(&data, &cloud, None, ""))?;
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    // Each attempt from its own address and on its own id, alternating, so
    // neither backoff nor the machine's drift favours one side.
    for i in 0..N {
        for (side, id, net) in [
            (&mut known, format!("known-{i}"), 1),
            (&mut unknown, format!("unknown-{i}"), 2),
        ] {
            let start = Instant::now();
            let code = raw_connect(
                gw.mqtt,
                Ipv4Addr::new(127, 0, net, i + 1),
                &id,
                &id,
                "wrong",
            )
            .await?;
            side.push(start.elapsed());
            assert_eq!(code, 4, "refused as bad credentials");
        }
    }
    let (k, u) = (median(known), median(unknown));
    let ratio = u.as_secs_f64() / k.as_secs_f64();
    eprintln!("median rejection: known {k:?}, unknown {u:?}");
    assert!(
        (0.8..=1.25).contains(&ratio),
        "median rejection: known id {k:?}, unknown id {u:?}"
    );
    assert!(gw.stop()?.success());
    Ok(())
}
