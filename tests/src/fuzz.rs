//! A packet fuzzer for the device port: fresh connections, each opening
//! with a CONNECT (valid credentials or not, mutated or not), then mutated
//! PUBLISH and SUBSCRIBE packets. Seeded, so a failure can be replayed.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::gateway::DeviceCreds;

/// xorshift64*: small, fast, and the same sequence for the same seed.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

fn with_length(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        p.push(b);
        if len == 0 {
            break;
        }
    }
    p.extend_from_slice(body);
    p
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

pub fn connect(v5: bool, client_id: &str, user: &str, password: &str, will: bool) -> Vec<u8> {
    let mut b = Vec::new();
    string(&mut b, b"MQTT");
    b.push(if v5 { 5 } else { 4 });
    b.push(0xC2 | if will { 0x0C } else { 0 });
    b.extend_from_slice(&30u16.to_be_bytes());
    if v5 {
        b.push(0);
    }
    string(&mut b, client_id.as_bytes());
    if will {
        if v5 {
            b.push(0);
        }
        string(&mut b, format!("devices/{user}/will").as_bytes());
        string(&mut b, b"gone");
    }
    string(&mut b, user.as_bytes());
    string(&mut b, password.as_bytes());
    with_length(0x10, &b)
}

pub fn publish(
    v5: bool,
    topic: &[u8],
    payload: &[u8],
    qos: u8,
    pkid: u16,
    retain: bool,
) -> Vec<u8> {
    let mut b = Vec::new();
    string(&mut b, topic);
    if qos > 0 {
        b.extend_from_slice(&pkid.to_be_bytes());
    }
    if v5 {
        b.push(0);
    }
    b.extend_from_slice(payload);
    with_length(0x30 | (qos << 1) | u8::from(retain), &b)
}

pub fn subscribe(v5: bool, filter: &[u8], pkid: u16) -> Vec<u8> {
    let mut b = pkid.to_be_bytes().to_vec();
    if v5 {
        b.push(0);
    }
    string(&mut b, filter);
    b.push(1);
    with_length(0x82, &b)
}

/// One of a handful of ways to break a packet, or none.
pub fn mutate(rng: &mut Rng, mut p: Vec<u8>) -> Vec<u8> {
    match rng.below(9) {
        0 => p,
        1 => {
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(p.len());
                p[i] ^= 1 << rng.below(8);
            }
            p
        }
        2 => {
            let i = rng.below(p.len());
            p[i] = rng.next_u64() as u8;
            p
        }
        3 => {
            let i = rng.below(p.len() + 1);
            let n = 1 + rng.below(16);
            let extra = rng.bytes(n);
            p.splice(i..i, extra);
            p
        }
        4 if p.len() > 2 => {
            let i = 1 + rng.below(p.len() - 1);
            let j = (i + 1 + rng.below(8)).min(p.len());
            p.drain(i..j);
            p
        }
        5 => {
            p.truncate(rng.below(p.len()));
            p
        }
        6 if p.len() > 2 => {
            // The remaining-length field: anything, including 4 bytes with
            // the continuation bit.
            p[1] = rng.next_u64() as u8 | 0x80;
            let n = rng.below(4);
            p.splice(2..2, rng.bytes(n));
            p
        }
        7 => {
            let mut twice = p.clone();
            twice.extend_from_slice(&p);
            twice
        }
        _ => {
            let n = rng.below(64);
            rng.bytes(n)
        }
    }
}

/// What a storm did.
#[derive(Debug, Default, Clone)]
pub struct FuzzStats {
    pub packets: usize,
    pub connections: usize,
}

/// Sends about `packets` packets over fresh connections, `parallel` at a
/// time, from addresses in 127.9.0.0/16 (so that the login backoff they
/// earn does not touch other tests' clients on 127.0.0.1).
pub async fn storm(
    addr: SocketAddr,
    creds: &DeviceCreds,
    packets: usize,
    parallel: usize,
    seed: u64,
) -> Result<FuzzStats> {
    let sent = Arc::new(AtomicUsize::new(0));
    let conns = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..parallel {
        let (sent, conns, creds) = (Arc::clone(&sent), Arc::clone(&conns), creds.clone());
        let mut rng = Rng::new(seed ^ (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        workers.push(tokio::spawn(async move {
            while sent.load(Ordering::Relaxed) < packets {
                let n = conns.fetch_add(1, Ordering::Relaxed);
                let source = Ipv4Addr::new(127, 9, (n / 250 % 250) as u8, (n % 250 + 1) as u8);
                let k = one_connection(addr, source, &creds, &mut rng, n).await;
                sent.fetch_add(k, Ordering::Relaxed);
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    Ok(FuzzStats {
        packets: sent.load(Ordering::Relaxed),
        connections: conns.load(Ordering::Relaxed),
    })
}

async fn one_connection(
    addr: SocketAddr,
    source: Ipv4Addr,
    creds: &DeviceCreds,
    rng: &mut Rng,
    n: usize,
) -> usize {
    let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
        return 0;
    };
    if socket.bind((source, 0).into()).is_err() {
        return 0;
    }
    let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(2), socket.connect(addr)).await
    else {
        return 0;
    };
    let v5 = rng.below(3) == 0;
    let good = rng.below(2) == 0;
    let client_id = format!("{}.f{n}", creds.id);
    let password = if good {
        creds.password.clone()
    } else {
        "wrong".into()
    };
    let hello = connect(v5, &client_id, &creds.id, &password, rng.below(4) == 0);
    let mut packets = vec![if rng.below(3) == 0 {
        mutate(rng, hello)
    } else {
        hello
    }];
    for _ in 0..rng.below(10) {
        let topic: Vec<u8> = match rng.below(4) {
            0 => format!("devices/{}/s", creds.id).into_bytes(),
            1 => format!("devices/{}/\u{0}x", creds.id).into_bytes(),
            2 => b"devices/other/s".to_vec(),
            _ => {
                let n = rng.below(40);
                rng.bytes(n)
            }
        };
        let p = match rng.below(3) {
            0 => subscribe(v5, &topic, 1 + rng.below(1000) as u16),
            _ => {
                let payload = if rng.below(2) == 0 {
                    br#"{"t":21.5,"n":[1,2,{"x":null}]}"#.to_vec()
                } else {
                    let n = rng.below(300);
                    rng.bytes(n)
                };
                publish(
                    v5,
                    &topic,
                    &payload,
                    rng.below(2) as u8,
                    1 + rng.below(1000) as u16,
                    rng.below(8) == 0,
                )
            }
        };
        packets.push(mutate(rng, p));
    }
    // Counted as they are written: the gateway may close at any point.
    let mut count = 0;
    for p in packets {
        if s.write_all(&p).await.is_err() {
            break;
        }
        count += 1;
    }
    // Read whatever comes back, briefly; the gateway may close at any time.
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(100), async {
        while let Ok(k) = s.read(&mut buf).await {
            if k == 0 {
                break;
            }
        }
    })
    .await;
    count
}

/// A whole run: a gateway with one device sharing everything, the storm,
/// then the checks: the process is alive, nothing panicked, and a real
/// device still delivers to the cloud.
pub async fn run_against_gateway(packets: usize, seed: u64) -> Result<FuzzStats> {
    use crate::{
        add_device, cloud_subscriber, collect, config_for, connect, device_options, publish_acked,
        scratch, write_policy, Gateway, SHARE_ALL,
    };
    let (dir, data, cloud) = scratch()?;
    let target = add_device(&data, "target", "generic")?;
    let real = add_device(&data, "real", "generic")?;
    let policy = write_policy(dir.path(), SHARE_ALL)?;
    let extra = "[mqtt]\nmax_connections_per_device = 64\nconnect_timeout_secs = 2\n";
    let mut gw = Gateway::start(dir.path(), &config_for(&data, &cloud, Some(&policy), extra))?;
    let stats = storm(gw.mqtt, &target, packets, 16, seed).await?;
    anyhow::ensure!(
        gw.is_running(),
        "the gateway died during the storm (seed {seed})"
    );
    let log = gw.log();
    anyhow::ensure!(
        !log.contains("panicked"),
        "a panic during the storm (seed {seed}); see the gateway log"
    );
    let (sub, mut sub_events) = cloud_subscriber(&cloud, "home/devices/real/#", "sub-fuzz").await?;
    let (client, mut events) = connect(device_options(gw.mqtt, &real, "real")).await?;
    publish_acked(&client, &mut events, "devices/real/after", r#"{"ok":1}"#).await?;
    let got = collect(Some(&sub), &mut sub_events, Duration::from_secs(10), |g| {
        !g.is_empty()
    })
    .await;
    anyhow::ensure!(
        got.len() == 1,
        "the real device's message did not arrive after the storm"
    );
    anyhow::ensure!(
        gw.stop()?.success(),
        "the gateway did not stop cleanly after the storm"
    );
    Ok(stats)
}
