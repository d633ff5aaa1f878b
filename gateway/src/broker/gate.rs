//! The gate: dataward's own listener on the device port, in front of the
//! broker library.
//!
//! rmqtt reads the first bytes of a connection (its protocol-version probe)
//! with no deadline, before its own handshake timeout starts, and that code
//! is not public. So the gate owns the public port instead:
//!
//! - every accepted socket must deliver one whole CONNECT packet within
//!   `connect_timeout`, whatever arrives and however slowly, or it is closed;
//! - connections still in that phase are capped overall and per source
//!   address, and all connections are capped overall; beyond a cap a new
//!   socket is closed at once (and logged, at most once a second);
//! - once the CONNECT is in, the gate opens a connection to rmqtt's
//!   loopback-only listener, sends a PROXY protocol v2 header with the
//!   device's real address (so per-source limits and logs see it), then the
//!   CONNECT, and relays bytes both ways until either side closes.
//! - On the TLS port, the gate ends TLS itself: the handshake counts
//!   against the same deadline as the CONNECT, and the broker behind it
//!   sees plain MQTT on loopback.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::supervise::{Supervised, Supervisor};

/// How long the broker may take to answer a CONNECT the gate passed on
/// (its own handshake timeout is shorter; this is the backstop).
const ANSWER_DEADLINE: Duration = Duration::from_secs(20);

/// What the gate enforces.
#[derive(Debug, Clone)]
pub struct GateLimits {
    pub connect_timeout: Duration,
    pub max_pending: usize,
    pub max_pending_per_source: usize,
    pub max_connections: usize,
    pub max_packet_bytes: u32,
}

#[derive(Default)]
struct Counts {
    /// Connections still sending their CONNECT, oldest first, each with
    /// the address it counts against and the way to close it.
    pending: std::collections::BTreeMap<u64, (IpAddr, tokio::sync::oneshot::Sender<()>)>,
    pending_by_source: HashMap<IpAddr, usize>,
    next: u64,
    open: usize,
    last_refusal_log: Option<Instant>,
}

/// Held while a connection occupies a place; gives it back when dropped.
struct Place {
    counts: Arc<Mutex<Counts>>,
    seq: u64,
}

impl Place {
    fn connected(&mut self) {
        release_pending(&mut lock(&self.counts), self.seq);
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut c = lock(&self.counts);
        release_pending(&mut c, self.seq);
        c.open = c.open.saturating_sub(1);
    }
}

/// Takes `seq` off the pending list, if it is still there (connected,
/// closed, and evicted all come here; only the first counts).
fn release_pending(c: &mut Counts, seq: u64) -> Option<tokio::sync::oneshot::Sender<()>> {
    let (source, evict) = c.pending.remove(&seq)?;
    if let Some(n) = c.pending_by_source.get_mut(&source) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            c.pending_by_source.remove(&source);
        }
    }
    Some(evict)
}

fn lock(m: &Mutex<Counts>) -> std::sync::MutexGuard<'_, Counts> {
    // Plain counters: usable even after a panic elsewhere.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why the gate closed a connection before handing it on.
#[derive(Debug, thiserror::Error)]
enum Turned {
    #[error("no complete CONNECT within the deadline")]
    Deadline,
    #[error("the first packet is not a CONNECT (type byte {0:#04x})")]
    NotConnect(u8),
    #[error("the CONNECT's length field is malformed")]
    BadLength,
    #[error("the CONNECT is {0} bytes, above max_packet_bytes")]
    TooLarge(usize),
    #[error("the CONNECT does not name MQTT 3.1, 3.1.1 or 5")]
    NotMqtt,
    #[error("the broker did not answer the CONNECT")]
    NoAnswer,
    #[error("closed to make room: the oldest of too many connections still logging in")]
    Evicted,
    #[error("the connection closed before its CONNECT was complete")]
    Closed,
    #[error("the TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads exactly one CONNECT packet (fixed header included) into a buffer.
async fn read_connect<S>(stream: &mut S, max: u32) -> Result<Vec<u8>, Turned>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let eof = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Turned::Closed
        } else {
            Turned::Io(e)
        }
    };
    // Fixed header: the type byte, then 1-4 bytes of remaining length.
    let kind = stream.read_u8().await.map_err(eof)?;
    if kind != 0x10 {
        return Err(Turned::NotConnect(kind));
    }
    let mut buf = vec![kind];
    let mut remaining: usize = 0;
    for i in 0..4 {
        let b = stream.read_u8().await.map_err(eof)?;
        buf.push(b);
        remaining |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
        if i == 3 {
            return Err(Turned::BadLength);
        }
    }
    if remaining > max as usize {
        return Err(Turned::TooLarge(remaining));
    }
    let header = buf.len();
    // Grown as bytes arrive, not from the length field's claim.
    (&mut *stream)
        .take(remaining as u64)
        .read_to_end(&mut buf)
        .await?;
    if buf.len() != header + remaining {
        return Err(Turned::Closed);
    }
    check_variable_header(&buf[header..])?;
    Ok(buf)
}

/// The start of a CONNECT's variable header: protocol name and level,
/// connect flags (reserved bit clear), keep-alive. What follows is the
/// broker's to judge; this is what it needs to even begin.
fn check_variable_header(v: &[u8]) -> Result<(), Turned> {
    let ok = match v {
        [0, 4, b'M', b'Q', b'T', b'T', 4 | 5, flags, _, _, ..] => flags & 1 == 0,
        [0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, flags, _, _, ..] => flags & 1 == 0,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Turned::NotMqtt)
    }
}

/// A PROXY protocol v2 header saying the connection came from `src` to
/// `dst`.
fn proxy_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    let (src_ip, dst_ip) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (IpAddr::V4(s), IpAddr::V4(d)),
        (IpAddr::V4(s), IpAddr::V6(d)) => (IpAddr::V6(s.to_ipv6_mapped()), IpAddr::V6(d)),
        (IpAddr::V6(s), IpAddr::V4(d)) => (IpAddr::V6(s), IpAddr::V6(d.to_ipv6_mapped())),
        (s, d) => (s, d),
    };
    match (src_ip, dst_ip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.push(0x11); // TCP over IPv4
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            h.push(0x21); // TCP over IPv6
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        // Made the same family above.
        _ => {}
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

pub struct Gate {
    task: Supervised,
}

impl Gate {
    /// Serves `listener`, handing each connection whose CONNECT arrived in
    /// time to the broker at `upstream`.
    pub fn start(
        listener: TcpListener,
        upstream: SocketAddr,
        limits: GateLimits,
        tls: Option<tokio_rustls::TlsAcceptor>,
        supervisor: &Supervisor,
    ) -> Self {
        let counts: Arc<Mutex<Counts>> = Arc::default();
        let local = listener.local_addr().ok();
        let name = if tls.is_some() {
            "device TLS port"
        } else {
            "device port"
        };
        let task = supervisor.spawn(name, async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors, typically: wait rather
                        // than spin.
                        tracing::warn!(error = %e, "accepting a device connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some((place, evicted)) = admit(&counts, &limits, peer.ip()) else {
                    drop(stream);
                    continue;
                };
                let limits = limits.clone();
                let local = local.unwrap_or(upstream);
                let tls = tls.clone();
                tokio::spawn(async move {
                    if let Err(why) =
                        serve(stream, peer, local, upstream, &limits, place, evicted, tls).await
                    {
                        tracing::debug!(?peer, reason = %why, "device connection closed by the gate");
                    }
                });
            }
        });
        Self { task }
    }
}

impl Gate {
    /// Stops taking new connections.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The address a per-source limit counts by: IPv4 as is (also when it
/// comes IPv4-mapped), IPv6 by its /64, which one host can fill at will.
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
        v4 => v4,
    }
}

fn admit(
    counts: &Arc<Mutex<Counts>>,
    limits: &GateLimits,
    source: IpAddr,
) -> Option<(Place, tokio::sync::oneshot::Receiver<()>)> {
    let source = source_key(source);
    let mut c = lock(counts);
    let from_source = c.pending_by_source.get(&source).copied().unwrap_or(0);
    let refusal = if c.open >= limits.max_connections {
        Some("the connection limit")
    } else if from_source >= limits.max_pending_per_source {
        Some("the per-address limit of connections still logging in")
    } else {
        None
    };
    let now = Instant::now();
    let log = |c: &mut Counts, what: &str| {
        if c.last_refusal_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            c.last_refusal_log = Some(now);
            tracing::warn!(%source, limit = what, open = c.open, logging_in = c.pending.len(), "device connection refused or evicted: over {what}");
        }
    };
    if let Some(limit) = refusal {
        log(&mut c, limit);
        return None;
    }
    if c.pending.len() >= limits.max_pending {
        // Full of slow starters (slowloris from many addresses): the oldest
        // goes, not the newcomer. A real device's CONNECT takes a round
        // trip; an attacker's never completes, so it is always the oldest.
        if let Some(&oldest) = c.pending.keys().next() {
            if let Some(evict) = release_pending(&mut c, oldest) {
                let _ = evict.send(());
            }
        }
        log(&mut c, "the limit of connections still logging in");
    }
    let seq = c.next;
    c.next += 1;
    let (evict, evicted) = tokio::sync::oneshot::channel();
    c.pending.insert(seq, (source, evict));
    *c.pending_by_source.entry(source).or_insert(0) += 1;
    c.open += 1;
    Some((
        Place {
            counts: Arc::clone(counts),
            seq,
        },
        evicted,
    ))
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    upstream: SocketAddr,
    limits: &GateLimits,
    place: Place,
    mut evicted: tokio::sync::oneshot::Receiver<()>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<(), Turned> {
    let _ = client.set_nodelay(true);
    keep_alive(&client);
    let local = client.local_addr().unwrap_or(local);
    // One deadline for the TLS handshake and the CONNECT together.
    let deadline = tokio::time::Instant::now() + limits.connect_timeout;
    match tls {
        None => {
            relay(
                client, peer, local, upstream, limits, place, evicted, deadline,
            )
            .await
        }
        Some(acceptor) => {
            let stream = tokio::select! {
                s = tokio::time::timeout_at(deadline, acceptor.accept(client)) => {
                    s.map_err(|_| Turned::Deadline)?.map_err(Turned::Tls)?
                }
                Ok(()) = &mut evicted => return Err(Turned::Evicted),
            };
            relay(
                stream, peer, local, upstream, limits, place, evicted, deadline,
            )
            .await
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn relay<S>(
    mut client: S,
    peer: SocketAddr,
    local: SocketAddr,
    upstream: SocketAddr,
    limits: &GateLimits,
    mut place: Place,
    evicted: tokio::sync::oneshot::Receiver<()>,
    deadline: tokio::time::Instant,
) -> Result<(), Turned>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let connect = tokio::select! {
        c = tokio::time::timeout_at(
            deadline,
            read_connect(&mut client, limits.max_packet_bytes),
        ) => c.map_err(|_| Turned::Deadline)??,
        // Only a send means eviction; the sender also goes when the
        // connection stops being pending, which is not this branch's case.
        Ok(()) = evicted => return Err(Turned::Evicted),
    };
    let mut broker = TcpStream::connect(upstream).await?;
    let _ = broker.set_nodelay(true);
    // One write: the broker peeks the PROXY header and expects it whole.
    let mut first = proxy_header(peer, local);
    first.extend_from_slice(&connect);
    broker.write_all(&first).await?;
    place.connected();
    // The broker answers a CONNECT (CONNACK, or closing) within its own
    // handshake timeout; this bounds the wait should it not.
    let mut answer = [0u8; 512];
    let n = tokio::time::timeout(ANSWER_DEADLINE, broker.read(&mut answer))
        .await
        .map_err(|_| Turned::NoAnswer)??;
    if n == 0 {
        return Ok(());
    }
    client.write_all(&answer[..n]).await?;
    client.flush().await?;
    // Until either side is done. Not a half-close: a device that stops
    // talking after the broker closed (a refused login, an expired
    // keepalive) must not keep the relay and its descriptors.
    let (mut from_device, mut to_device) = tokio::io::split(client);
    let (mut from_broker, mut to_broker) = broker.split();
    tokio::select! {
        _ = tokio::io::copy(&mut from_device, &mut to_broker) => {}
        r = to_device_with_deadline(&mut from_broker, &mut to_device) => {
            if let Err(e) = r {
                tracing::warn!(?peer, error = %e, "device connection closed: it stopped reading");
            }
        }
    }
    Ok(())
}

/// A device that takes nothing from its socket for this long while data
/// waits for it is closed: what waits for it would otherwise pile up in
/// the broker.
const DEVICE_STALL: Duration = Duration::from_secs(30);

async fn to_device_with_deadline<R, W>(from: &mut R, to: &mut W) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        // Flushed: over TLS, written bytes wait in the session until then.
        tokio::time::timeout(DEVICE_STALL, async {
            to.write_all(&buf[..n]).await?;
            to.flush().await
        })
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "nothing read for 30 s while data waited",
            )
        })??;
    }
}

/// TCP keepalive on a device's socket: a device that loses power while
/// keepalive 0 is allowed would otherwise hold its connection forever.
fn keep_alive(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let set = |level, name, value: libc::c_int| {
        // SAFETY: setsockopt on a socket we own, with a c_int option value.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 60);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_headers_carry_the_real_address() {
        let h = proxy_header(
            "192.168.1.20:50000".parse().expect("addr"),
            "192.168.1.2:1883".parse().expect("addr"),
        );
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(h[12..16], [0x21, 0x11, 0, 12]);
        assert_eq!(h[16..20], [192, 168, 1, 20]);
        assert_eq!(h[24..26], 50000u16.to_be_bytes());
        assert_eq!(h.len(), 28);
        let v6 = proxy_header(
            "192.168.1.20:1".parse().expect("addr"),
            "[::1]:1883".parse().expect("addr"),
        );
        assert_eq!(v6[13], 0x21);
        assert_eq!(v6.len(), 16 + 36);
        // The IPv4 source, mapped; then ::1; then the ports.
        assert_eq!(&v6[16..28], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&v6[28..32], &[192, 168, 1, 20]);
        assert_eq!(v6[47], 1);
        assert_eq!(&v6[48..50], &1u16.to_be_bytes());
        assert_eq!(&v6[50..52], &1883u16.to_be_bytes());
    }

    #[tokio::test]
    async fn a_full_gate_evicts_its_oldest_starter_not_the_newcomer() {
        let counts: Arc<Mutex<Counts>> = Arc::default();
        let limits = GateLimits {
            connect_timeout: Duration::from_secs(5),
            max_pending: 2,
            max_pending_per_source: 16,
            max_connections: 100,
            max_packet_bytes: 1024,
        };
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        let (_a, first) = admit(&counts, &limits, ip(1)).expect("room");
        let (_b, second) = admit(&counts, &limits, ip(2)).expect("room");
        let (_c, _third) = admit(&counts, &limits, ip(3)).expect("the newcomer gets in");
        assert_eq!(first.await, Ok(()), "the oldest is told to go");
        assert_eq!(lock(&counts).pending.len(), 2);
        // The second one was not.
        let mut second = second;
        assert!(second.try_recv().is_err());
        // Dropping the evicted place does not give back a place twice.
        drop(_a);
        assert_eq!(lock(&counts).pending.len(), 2);
        assert_eq!(lock(&counts).open, 2);
    }

    #[test]
    fn sources_count_by_host() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("v6");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("v6");
        assert_eq!(source_key(a), source_key(b), "one /64, one source");
        let mapped: IpAddr = "::ffff:192.168.1.20".parse().expect("mapped");
        assert_eq!(
            source_key(mapped),
            "192.168.1.20".parse::<IpAddr>().expect("v4")
        );
    }

    #[tokio::test]
    async fn only_a_whole_connect_gets_through() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let v311 = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x1e\x00\x00".to_vec();
        let v31 = b"\x10\x0e\x00\x06MQIsdp\x03\x02\x00\x1e\x00\x00".to_vec();
        let reserved = b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x1e\x00\x00".to_vec();
        let cases: Vec<(Vec<u8>, bool)> = vec![
            (v311, true),
            (v31, true),
            (reserved, false),
            (vec![0x10, 0x02, 0x00, 0x04], false),
            (vec![0x10, 0x00], false),
            (vec![0x30, 0x02, 0x00, 0x00], false),
            (vec![0x10, 0xff, 0xff, 0xff, 0xff, 0x01], false),
            (vec![0x10, 0xff, 0xff, 0xff, 0x7f], false),
            (vec![0x10, 0x05, 0x00], false),
        ];
        for (bytes, whole) in cases {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            let (mut s, _) = listener.accept().await.expect("accept");
            c.write_all(&bytes).await.expect("write");
            drop(c);
            let got = read_connect(&mut s, 1 << 20).await;
            assert_eq!(got.is_ok(), whole, "{bytes:02x?}: {got:?}");
            if let Ok(packet) = got {
                assert_eq!(packet, bytes);
            }
        }
    }
}
