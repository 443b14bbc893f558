//! The Flooder (BRIEF §2): hostile connections of every kind while two members keep
//! talking, each limit's own refusal, and a SIGTERM that loses no acknowledged envelope.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backchannel_client::{ConnectError, RelayConnection};
use backchannel_core::envelope::{Envelope, ENVELOPE_SIZE};
use backchannel_core::frame::{ErrorCode, Request, Response, FRAME_SIZE};
use backchannel_core::mailbox::MailboxKeys;
use backchannel_core::relay_address::RelayAddress;
use common::*;
use rand_core::{OsRng, RngCore};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

// ---- helpers: raw TCP and TLS clients that misbehave ----

/// A TCP connection to the relay from 127.0.0.`octet`: all of 127.0.0.0/8 reaches the
/// loopback interface, so each kind of attacker gets an address of its own and the
/// per-address limit can be watched apart from the members (who use 127.0.0.1).
fn connect_from(octet: u8, port: u16) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet)), 0))?;
        let s = socket
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await?
            .into_std()?;
        s.set_nonblocking(false)?;
        Ok(s)
    })
}

/// Accepts any certificate: these clients attack the relay, they do not trust it.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_client() -> ClientConnection {
    let provider = Arc::new(backchannel_core::tls::provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    ClientConnection::new(Arc::new(config), ServerName::try_from("backchannel-relay").unwrap()).unwrap()
}

/// The bytes of a real TLS 1.3 ClientHello.
fn client_hello() -> Vec<u8> {
    let mut out = Vec::new();
    tls_client().write_tls(&mut out).unwrap();
    out
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A completed TLS handshake with the relay, from 127.0.0.`octet`.
fn tls_connect(octet: u8, port: u16) -> std::io::Result<Tls> {
    let mut tcp = connect_from(octet, port)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut tls = tls_client();
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp)?;
    }
    Ok(StreamOwned::new(tls, tcp))
}

const UPGRADE_HEAD: &str = "GET /v1 HTTP/1.1\r\nHost: backchannel-relay\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

/// Reads what the relay sends until it closes the connection or `limit` passes; returns
/// the bytes and whether the relay closed.
fn read_until_closed(s: &mut impl Read, set_timeout: impl Fn(Duration), limit: Duration) -> (Vec<u8>, bool) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while start.elapsed() < limit {
        set_timeout((limit - start.elapsed()).max(Duration::from_millis(10)));
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

/// Whether the peer closed: one read, waiting up to `wait` (which paces tricklers).
fn closed_after(s: &mut impl Read, set_timeout: impl Fn(Duration), wait: Duration) -> bool {
    set_timeout(wait);
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The relay's last "relay counts" log line, as numbers.
fn last_counts(logs: &str) -> HashMap<String, u64> {
    let line = logs.lines().rev().find(|l| l.contains("relay counts")).unwrap();
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

fn random_envelope() -> Envelope {
    let mut b = vec![0u8; ENVELOPE_SIZE];
    OsRng.fill_bytes(&mut b);
    Envelope::from_bytes(&b).unwrap()
}

fn refused(r: &Result<Response, ConnectError>, code: ErrorCode) -> bool {
    matches!(r, Err(e) if e.is(code))
}

// ---- the attackers ----

/// What the attackers saw, for the report.
#[derive(Default)]
struct Seen {
    connections: AtomicU64,
    /// Connections the relay closed (or refused) without ever serving them.
    cut_off: AtomicU64,
    /// Longest time a trickler was kept, in ms.
    longest_trickle_ms: AtomicU64,
    rate_limited: AtomicU64,
    pongs: AtomicU64,
    /// Sends refused because the filler's mailbox was full.
    mailbox_full: AtomicU64,
}

fn spawn(f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::spawn(f)
}

/// Random bytes instead of TLS: cut off at once.
fn random_bytes(port: u16, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    while !stop.load(Ordering::Relaxed) {
        let mut s = connect_from(2, port).unwrap();
        seen.connections.fetch_add(1, Ordering::Relaxed);
        let mut junk = vec![0u8; 1 + (OsRng.next_u32() % 4096) as usize];
        OsRng.fill_bytes(&mut junk);
        let _ = s.write_all(&junk);
        let t = s.try_clone().unwrap();
        let (_, closed) = read_until_closed(&mut s, |d| t.set_read_timeout(Some(d)).unwrap(), Duration::from_secs(6));
        assert!(closed, "random bytes: the relay kept the connection open");
        seen.cut_off.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A ClientHello cut short, then silence or a half-close.
fn truncated_hellos(port: u16, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let hello = client_hello();
        let cut = 1 + (OsRng.next_u32() as usize % (hello.len() - 1));
        let mut s = connect_from(2, port).unwrap();
        seen.connections.fetch_add(1, Ordering::Relaxed);
        s.write_all(&hello[..cut]).unwrap();
        if i.is_multiple_of(2) {
            let _ = s.shutdown(Shutdown::Write);
        }
        i += 1;
        let t = s.try_clone().unwrap();
        let (got, closed) = read_until_closed(&mut s, |d| t.set_read_timeout(Some(d)).unwrap(), Duration::from_secs(6));
        assert!(closed, "truncated hello: the relay kept the connection open");
        assert!(!contains(&got, b"HTTP/1.1 101"));
        seen.cut_off.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `bytes` one every two seconds until the relay closes; returns how long it was kept.
fn trickle(s: &mut (impl Read + Write), set_timeout: impl Fn(Duration), bytes: &[u8]) -> Duration {
    let start = Instant::now();
    for b in bytes {
        if s.write_all(&[*b]).and_then(|()| s.flush()).is_err() {
            return start.elapsed();
        }
        if closed_after(s, &set_timeout, Duration::from_secs(2)) {
            return start.elapsed();
        }
    }
    panic!("the relay read a whole trickled handshake");
}

/// A real ClientHello, one byte every two seconds.
fn tls_trickler(port: u16, stop: Arc<AtomicBool>, seen: Arc<Seen>, handshake_timeout: Duration) {
    while !stop.load(Ordering::Relaxed) {
        let mut s = connect_from(3, port).unwrap();
        seen.connections.fetch_add(1, Ordering::Relaxed);
        let t = s.try_clone().unwrap();
        let kept = trickle(&mut s, |d| t.set_read_timeout(Some(d)).unwrap(), &client_hello());
        check_trickle(kept, handshake_timeout, &seen);
    }
}

/// A quick TLS handshake, then the WebSocket upgrade request one byte every two seconds.
fn http_trickler(port: u16, stop: Arc<AtomicBool>, seen: Arc<Seen>, handshake_timeout: Duration) {
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let Ok(mut s) = tls_connect(3, port) else {
            panic!("TLS handshake for the HTTP trickler failed");
        };
        seen.connections.fetch_add(1, Ordering::Relaxed);
        let t = s.sock.try_clone().unwrap();
        let request = format!("{UPGRADE_HEAD}\r\n");
        trickle(&mut s, |d| t.set_read_timeout(Some(d)).unwrap(), request.as_bytes());
        check_trickle(start.elapsed(), handshake_timeout, &seen);
    }
}

fn check_trickle(kept: Duration, handshake_timeout: Duration, seen: &Seen) {
    // Checked every 2 s, so seen closed up to 2 s after the relay closed, and the
    // relay is loaded by the flood: 2 s more of slack. A trickler that is not cut off
    // would be kept for minutes.
    assert!(
        kept <= handshake_timeout + Duration::from_secs(4),
        "a trickler was kept {kept:?} (handshake timeout {handshake_timeout:?})"
    );
    seen.cut_off.fetch_add(1, Ordering::Relaxed);
    seen.longest_trickle_ms
        .fetch_max(kept.as_millis() as u64, Ordering::Relaxed);
}

/// After a real TLS handshake, an upgrade request with a 1 MiB header (or 300 headers).
fn oversize_upgrades(port: u16, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let mut s = tls_connect(4, port).unwrap();
        seen.connections.fetch_add(1, Ordering::Relaxed);
        let mut body = UPGRADE_HEAD.as_bytes().to_vec();
        if i.is_multiple_of(2) {
            body.extend_from_slice(b"X-Pad: ");
            body.extend(std::iter::repeat_n(b'a', 1 << 20));
            body.extend_from_slice(b"\r\n\r\n");
        } else {
            for h in 0..300 {
                body.extend_from_slice(format!("X-H{h}: v\r\n").as_bytes());
            }
            body.extend_from_slice(b"\r\n");
        }
        i += 1;
        for chunk in body.chunks(16 * 1024) {
            if s.write_all(chunk).and_then(|()| s.flush()).is_err() {
                break;
            }
        }
        let t = s.sock.try_clone().unwrap();
        let (got, closed) = read_until_closed(&mut s, |d| t.set_read_timeout(Some(d)).unwrap(), Duration::from_secs(6));
        assert!(closed, "oversize upgrade: the relay kept the connection open");
        assert!(!contains(&got, b"101"), "oversize upgrade accepted");
        seen.cut_off.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Far more connections from one address than it may hold, all silent.
fn address_hog(port: u16, stop: Arc<AtomicBool>, seen: Arc<Seen>, n: usize) {
    while !stop.load(Ordering::Relaxed) {
        let conns: Vec<TcpStream> = (0..n).map(|_| connect_from(5, port).unwrap()).collect();
        seen.connections.fetch_add(n as u64, Ordering::Relaxed);
        for mut s in conns {
            let t = s.try_clone().unwrap();
            let (_, closed) =
                read_until_closed(&mut s, |d| t.set_read_timeout(Some(d)).unwrap(), Duration::from_secs(6));
            assert!(closed, "a silent connection was kept open");
            seen.cut_off.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Valid-looking frames as fast as the relay answers, on real connections from 127.0.0.1.
async fn frame_flood(addr: RelayAddress, stop: Arc<AtomicBool>, seen: Arc<Seen>, kind: u32) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut c) = RelayConnection::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        seen.connections.fetch_add(1, Ordering::Relaxed);
        let mut own: Option<MailboxKeys> = None;
        while !stop.load(Ordering::Relaxed) {
            let alive = match kind {
                // Pipelined pings and fetches.
                0 => {
                    let mut reqs = vec![Request::Ping; 200];
                    reqs.push(Request::Fetch { max: 15, wait_ms: 0 });
                    match c.pipeline(&reqs).await {
                        Ok(results) => {
                            for r in &results {
                                if refused(r, ErrorCode::RateLimited) {
                                    seen.rate_limited.fetch_add(1, Ordering::Relaxed);
                                } else if matches!(r, Ok(Response::Pong)) {
                                    seen.pongs.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            true
                        }
                        Err(_) => false,
                    }
                }
                // Garbage: random full-size frames, short frames, frames one byte too long.
                1 => {
                    let mut frame = vec![0u8; FRAME_SIZE];
                    OsRng.fill_bytes(&mut frame);
                    let frames = [frame, vec![0x08, 0, 0, 0, 1], vec![0x08; FRAME_SIZE + 1]];
                    let mut ok = true;
                    for f in frames {
                        ok &= c.send_raw(f).await.is_ok();
                    }
                    ok
                }
                // Fill a mailbox of its own, and sends to mailboxes that do not exist.
                2 => {
                    if own.is_none() {
                        let k = MailboxKeys::generate(addr.clone(), &mut OsRng);
                        let create = Request::create(&k, 0);
                        if c.request(&create).await.is_ok() {
                            own = Some(k);
                        }
                    }
                    let mut reqs: Vec<Request> = (0..20)
                        .map(|_| Request::Send {
                            send: [7; 32],
                            envelope: random_envelope(),
                            pow: 0,
                        })
                        .collect();
                    if let Some(k) = &own {
                        reqs.extend((0..20).map(|_| Request::Send {
                            send: k.address.send.0,
                            envelope: random_envelope(),
                            pow: 0,
                        }));
                    }
                    match c.pipeline(&reqs).await {
                        Ok(answers) => {
                            let full = answers
                                .iter()
                                .filter(|r| matches!(r, Err(ConnectError::Refused(ErrorCode::MailboxFull, _))))
                                .count();
                            seen.mailbox_full.fetch_add(full as u64, Ordering::Relaxed);
                            true
                        }
                        Err(_) => false,
                    }
                }
                // A message three frames long: the connection is closed.
                _ => {
                    let r = c.send_raw(vec![0x02; 3 * FRAME_SIZE]).await;
                    assert!(r.is_err(), "a message of three frames was answered: {r:?}");
                    seen.cut_off.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    false
                }
            };
            if !alive {
                break;
            }
        }
    }
}

/// A connection that says nothing after its handshake is closed at the idle timeout.
async fn idle_client(addr: RelayAddress, seen: Arc<Seen>, idle_timeout: Duration) {
    let mut c = RelayConnection::connect(&addr).await.unwrap();
    seen.connections.fetch_add(1, Ordering::Relaxed);
    // 3 s of slack for the relay, loaded by the flood, to act on its idle timer.
    tokio::time::sleep(idle_timeout + Duration::from_secs(3)).await;
    assert!(
        c.request(&Request::Ping).await.is_err(),
        "an idle connection was kept past the idle timeout"
    );
    seen.cut_off.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn two_members_keep_talking_through_a_flood_of_hostile_connections_in_bounded_memory() {
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
    const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
    const PER_ADDRESS: usize = 16;
    const HOG: usize = 48;
    const MESSAGES: usize = 30;
    let root = tempfile::tempdir().unwrap();
    let mut relay = RelayProc::start(
        &root.path().join("relay"),
        &[
            "--max-connections",
            "256",
            "--max-connections-per-address",
            &PER_ADDRESS.to_string(),
            "--max-requests-per-second",
            "100",
            "--request-burst",
            "200",
            "--max-envelopes-per-mailbox",
            "200",
            "--handshake-timeout",
            "3s",
            "--idle-timeout",
            "5s",
            "--stats-interval",
            "1s",
        ],
    );
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "talk");
    let addr: RelayAddress = relay.address.parse().unwrap();
    let port = relay.port;
    let pid = relay.child.id();

    let stop = Arc::new(AtomicBool::new(false));
    let baseline = rss_kib(pid);
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let seen = Arc::new(Seen::default());
    let mut attackers: Vec<JoinHandle<()>> = Vec::new();
    for _ in 0..2 {
        let (stop, seen) = (stop.clone(), seen.clone());
        attackers.push(spawn(move || random_bytes(port, stop, seen)));
    }
    for _ in 0..2 {
        let (stop, seen) = (stop.clone(), seen.clone());
        attackers.push(spawn(move || truncated_hellos(port, stop, seen)));
    }
    for _ in 0..3 {
        let (stop, seen) = (stop.clone(), seen.clone());
        attackers.push(spawn(move || tls_trickler(port, stop, seen, HANDSHAKE_TIMEOUT)));
    }
    for _ in 0..2 {
        let (stop, seen) = (stop.clone(), seen.clone());
        attackers.push(spawn(move || http_trickler(port, stop, seen, HANDSHAKE_TIMEOUT)));
    }
    for _ in 0..2 {
        let (stop, seen) = (stop.clone(), seen.clone());
        attackers.push(spawn(move || oversize_upgrades(port, stop, seen)));
    }
    {
        let (stop, seen) = (stop.clone(), seen.clone());
        attackers.push(spawn(move || address_hog(port, stop, seen, HOG)));
    }
    {
        let (stop, seen, addr) = (stop.clone(), seen.clone(), addr.clone());
        attackers.push(spawn(move || {
            rt().block_on(async move {
                let mut tasks = Vec::new();
                for kind in 0..4 {
                    tasks.push(tokio::spawn(frame_flood(
                        addr.clone(),
                        stop.clone(),
                        seen.clone(),
                        kind,
                    )));
                }
                tasks.push(tokio::spawn(idle_client(addr.clone(), seen.clone(), IDLE_TIMEOUT)));
                for t in tasks {
                    t.await.unwrap();
                }
            })
        }));
    }

    // The members talk through it all.
    let started = Instant::now();
    let expected: Vec<(String, String)> = (0..MESSAGES)
        .map(|i| {
            let from = if i % 2 == 0 { "alice" } else { "bob" };
            (from.to_string(), format!("message {i} from {from}"))
        })
        .collect();
    for (from, text) in &expected {
        let who = if from == "alice" { &alice } else { &bob };
        who.ok(&["send", "talk", text]);
    }
    let talk_time = started.elapsed();
    // The filler keeps going until its mailbox is full (a faster relay may serve the
    // members before it gets there).
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.mailbox_full.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join().unwrap();
    }
    sampler.join().unwrap();
    assert!(relay.child.try_wait().unwrap().is_none(), "the relay died");

    for c in [&alice, &bob] {
        let got = c.texts("talk");
        let unique: HashSet<&(String, String)> = got.iter().collect();
        assert_eq!(got.len(), MESSAGES, "each message exactly once: {got:?}");
        assert_eq!(unique.len(), MESSAGES, "{got:?}");
        for m in &expected {
            assert!(unique.contains(m), "missing {m:?}");
        }
    }

    // The relay's own counts (logged every second), after the last attacker left.
    std::thread::sleep(Duration::from_millis(1500));
    let counts = last_counts(&relay.logs());
    let peak_mib = peak.load(Ordering::Relaxed) as f64 / 1024.0;
    let n = |k: &str| counts.get(k).copied().unwrap_or(0);
    println!(
        "{MESSAGES} messages in {talk_time:.1?} under attack; relay RSS {:.1} MiB before, peak {peak_mib:.1} MiB; \
         hostile connections {}, cut off or refused {}, longest trickle {} ms; pongs {}, rate-limited {}",
        baseline as f64 / 1024.0,
        seen.connections.load(Ordering::Relaxed),
        seen.cut_off.load(Ordering::Relaxed),
        seen.longest_trickle_ms.load(Ordering::Relaxed),
        seen.pongs.load(Ordering::Relaxed),
        seen.rate_limited.load(Ordering::Relaxed),
    );
    println!("relay counts: {counts:?}");

    // Memory: the relay holds at most 256 connections (~100 KiB each at most: 16 KiB read
    // buffer, two frames of message, TLS state, up to a fetch answer of 62 KiB queued),
    // plus its store's cache; here far fewer connections are open at once.
    assert!(peak_mib < 64.0, "relay RSS peaked at {peak_mib:.1} MiB");
    assert!(n("refused_per_address") >= (HOG - PER_ADDRESS) as u64, "{counts:?}");
    assert!(n("handshake_timeouts") >= 5, "{counts:?}");
    assert!(n("handshake_failures") >= 4, "{counts:?}");
    assert!(n("oversize_upgrades") >= 1, "{counts:?}");
    assert!(n("idle_timeouts") >= 1, "{counts:?}");
    assert!(n("oversize_frames") >= 2, "{counts:?}");
    assert!(seen.rate_limited.load(Ordering::Relaxed) >= 1);
    assert!(
        n("rate_limited") >= seen.rate_limited.load(Ordering::Relaxed),
        "{counts:?}"
    );
    assert!(n("mailbox_full") >= 1, "{counts:?}");
    assert_eq!(n("relay_full"), 0, "{counts:?}");
}

/// The idle timeout counts from the last answer, not from the last request: a long-poll
/// longer than the timeout keeps its connection, which the timeout still closes once it is
/// quiet. An idle timeout too large for a clock (the flag takes any number of seconds) is
/// no timeout, not a crash.
#[test]
fn a_long_poll_longer_than_the_idle_timeout_keeps_its_connection() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &["--idle-timeout", "1s"]);
    let addr: RelayAddress = relay.address.parse().unwrap();
    rt().block_on(async {
        let mut c = RelayConnection::connect(&addr).await.unwrap();
        let polled = c.request(&Request::Fetch { max: 1, wait_ms: 1500 }).await;
        assert!(matches!(polled, Ok(Response::Envelopes(ref l)) if l.is_empty()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            c.request(&Request::Ping).await.is_ok(),
            "the connection was closed as idle while its long-poll ran"
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(c.request(&Request::Ping).await.is_err(), "a quiet connection is closed");
    });
    let endless = RelayProc::start(
        &root.path().join("endless"),
        &["--idle-timeout", "18446744073709551615s"],
    );
    let addr: RelayAddress = endless.address.parse().unwrap();
    rt().block_on(async {
        let mut c = RelayConnection::connect(&addr).await.unwrap();
        assert!(c.request(&Request::Ping).await.is_ok());
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(c.request(&Request::Ping).await.is_ok());
    });
}

#[test]
fn each_limit_refuses_with_its_own_protocol_error() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(
        &root.path().join("relay"),
        &[
            "--max-connections-per-address",
            "2",
            "--max-envelopes-per-mailbox",
            "3",
            "--max-stored-envelopes",
            "5",
            "--max-requests-per-second",
            "10",
            "--request-burst",
            "20",
        ],
    );
    let addr: RelayAddress = relay.address.parse().unwrap();
    rt().block_on(async {
        let mut c = RelayConnection::connect(&addr).await.unwrap();
        let boxes: Vec<MailboxKeys> = (0..2)
            .map(|_| MailboxKeys::generate(addr.clone(), &mut OsRng))
            .collect();
        for k in &boxes {
            c.request(&Request::create(k, 0)).await.unwrap();
        }
        let send = |k: &MailboxKeys| Request::Send {
            send: k.address.send.0,
            envelope: random_envelope(),
            pow: 0,
        };
        // Per mailbox: 3; in all: 5.
        for i in 0..4 {
            let r = c.request(&send(&boxes[0])).await;
            assert!(
                if i < 3 {
                    r.is_ok()
                } else {
                    refused(&r, ErrorCode::MailboxFull)
                },
                "{r:?}"
            );
        }
        for i in 0..3 {
            let r = c.request(&send(&boxes[1])).await;
            assert!(
                if i < 2 {
                    r.is_ok()
                } else {
                    refused(&r, ErrorCode::RelayFull)
                },
                "{r:?}"
            );
        }
        // Rate: a burst of 20, then 10 a second; the refusal says how long to wait.
        let mut r2 = RelayConnection::connect(&addr).await.unwrap();
        let results = r2.pipeline(&vec![Request::Ping; 40]).await.unwrap();
        let pongs = results.iter().filter(|r| matches!(r, Ok(Response::Pong))).count();
        assert!((20..30).contains(&pongs), "{pongs} pongs");
        let wait = match results.last().unwrap() {
            Err(ConnectError::Refused(ErrorCode::RateLimited, ms)) => *ms,
            other => panic!("{other:?}"),
        };
        assert!((1..=100).contains(&wait), "retry after {wait} ms");
        tokio::time::sleep(Duration::from_millis(wait)).await;
        assert!(matches!(r2.request(&Request::Ping).await, Ok(Response::Pong)));
        // Per address: this is the third connection from 127.0.0.1.
        match RelayConnection::connect(&addr).await {
            Err(ConnectError::Refused(code, _)) => assert_eq!(code, ErrorCode::TooManyConnections),
            other => panic!("expected a refusal, got {other:?}"),
        }
    });
}

#[test]
fn sigterm_finishes_every_send_in_flight_and_loses_no_acknowledged_envelope() {
    const SENDERS: usize = 6;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("relay");
    let mut relay = RelayProc::start(&data, &["--max-envelopes-per-mailbox", "100000"]);
    let addr: RelayAddress = relay.address.parse().unwrap();
    let keys = MailboxKeys::generate(addr.clone(), &mut OsRng);
    let acked: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let (stopped_after, long_poll) = rt().block_on(async {
        let mut c = RelayConnection::connect(&addr).await.unwrap();
        c.request(&Request::create(&keys, 0)).await.unwrap();
        let mut senders = Vec::new();
        for _ in 0..SENDERS {
            let (addr, acked, send) = (addr.clone(), acked.clone(), keys.address.send.0);
            senders.push(tokio::spawn(async move {
                let mut c = RelayConnection::connect(&addr).await.unwrap();
                loop {
                    let envelope = random_envelope();
                    let bytes = envelope.as_bytes().to_vec();
                    match c.request(&Request::Send { send, envelope, pow: 0 }).await {
                        Ok(Response::Ok) => acked.lock().unwrap().push(bytes),
                        Ok(other) => panic!("{other:?}"),
                        Err(ConnectError::Refused(code, _)) => panic!("refused: {code:?}"),
                        Err(_) => break,
                    }
                }
            }));
        }
        drop(c);
        // A long-poll in progress (on a connection with no mailbox open, so nothing
        // arrives) does not hold the shutdown up.
        let mut idle = RelayConnection::connect(&addr).await.unwrap();
        let poller = tokio::spawn(async move {
            let r = idle
                .request(&Request::Fetch {
                    max: 15,
                    wait_ms: 30_000,
                })
                .await;
            (Instant::now(), r)
        });
        // SIGTERM comes while the sends flow: once 50 are acknowledged (on a loaded
        // machine that takes longer than any fixed sleep would promise).
        let flowing = Instant::now() + Duration::from_secs(30);
        while acked.lock().unwrap().len() < 50 {
            assert!(Instant::now() < flowing, "50 sends not acknowledged in 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let term = Instant::now();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &relay.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        for s in senders {
            s.await.unwrap();
        }
        let (answered, r) = poller.await.unwrap();
        let long_poll = (answered.duration_since(term), r);
        let exit = loop {
            if let Some(exit) = relay.child.try_wait().unwrap() {
                break exit;
            }
            assert!(term.elapsed() < Duration::from_secs(8), "the relay did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(exit.success(), "the relay exited with {exit}");
        (term.elapsed(), long_poll)
    });
    let acked = acked.lock().unwrap().clone();
    println!(
        "{} sends acknowledged; relay exited {stopped_after:?} after SIGTERM; the long-poll was answered {:?} after it",
        acked.len(),
        long_poll.0
    );

    // What the store holds is exactly what was acknowledged: nothing acknowledged is
    // lost, and nothing was executed without an answer.
    let stored: HashSet<Vec<u8>> = stored_envelopes_all(&data, keys.id().0).into_iter().collect();
    let acked: HashSet<Vec<u8>> = acked.into_iter().collect();
    assert_eq!(acked.difference(&stored).count(), 0, "acknowledged sends lost");
    assert_eq!(stored.difference(&acked).count(), 0, "sends stored but never answered");
    assert!(stopped_after < Duration::from_secs(5), "{stopped_after:?}");
    let logs = relay.logs();
    assert!(logs.contains("relay stopped"), "{logs}");
    // The long-poll was answered (empty) at shutdown, not held for its 30 s nor cut off.
    assert!(long_poll.0 < Duration::from_secs(5), "{:?}", long_poll.0);
    assert!(
        matches!(long_poll.1, Ok(Response::Envelopes(ref v)) if v.is_empty()),
        "{:?}",
        long_poll.1
    );

    // And the relay starts again on the same data and port, and delivers.
    let listen = format!("127.0.0.1:{}", relay.port);
    let _relay2 = RelayProc::start_on(&data, &listen, &[]);
    rt().block_on(async {
        let mut c = RelayConnection::connect(&addr).await.unwrap();
        let proof = keys.open_proof(c.nonce());
        c.request(&Request::Open {
            mailbox: keys.id(),
            proof,
        })
        .await
        .unwrap();
        match c.request(&Request::Fetch { max: 1, wait_ms: 0 }).await.unwrap() {
            Response::Envelopes(v) => assert_eq!(v.len(), 1),
            other => panic!("{other:?}"),
        }
    });
}

/// Every envelope in one mailbox of a stopped relay's store.
fn stored_envelopes_all(data: &std::path::Path, receive_id: [u8; 32]) -> Vec<Vec<u8>> {
    use backchannel_relay::store::EmbeddedStore;
    let store = EmbeddedStore::open(&data.join("mailboxes.redb"), u32::MAX).unwrap();
    let out = store
        .fetch(&[backchannel_core::mailbox::MailboxId(receive_id)], usize::MAX)
        .unwrap()
        .into_iter()
        .map(|d| d.envelope.as_bytes().to_vec())
        .collect();
    drop(store);
    // Let the store's writer thread release the file.
    std::thread::sleep(Duration::from_millis(200));
    out
}

/// Issue 17, point 4: a relay answers a request over its rate with RateLimited and how
/// long to wait; the client waits that long and sends the refused requests again within
/// the same command, so a burst read under a low rate is acknowledged whole: every message
/// shown once, no warning, nothing fetched twice; and a daemon under that rate brings a
/// second burst the same way.
#[test]
fn under_a_low_rate_limit_a_burst_arrives_once_within_one_sync() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(
        &root.path().join("relay"),
        &["--max-requests-per-second", "10", "--request-burst", "10"],
    );
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "slow");
    for i in 0..14 {
        alice.ok(&["send", "slow", &format!("burst {i}")]);
    }
    // One sync takes the 14 envelopes and acknowledges them all: 14 acknowledgements in one
    // pipeline, past the burst of 10.
    let r = bob.run(&["sync"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
    let got: Vec<String> = bob.texts("slow").into_iter().map(|(_, t)| t).collect();
    let want: Vec<String> = (0..14).map(|i| format!("burst {i}")).collect();
    assert_eq!(got, want);
    // Nothing is left to fetch again.
    let r = bob.run(&["sync"]);
    assert!(r.ok && !r.stderr.contains("warning"), "{}", r.stderr);
    assert_eq!(bob.texts("slow").len(), 14);

    // A daemon under the same rate paces itself the same way: a second burst arrives once.
    let mut daemon = DaemonProc::start(&bob, &[]);
    for i in 14..28 {
        alice.ok(&["send", "slow", &format!("burst {i}")]);
    }
    let want: Vec<String> = (0..28).map(|i| format!("burst {i}")).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got: Vec<String> = bob.texts("slow").into_iter().map(|(_, t)| t).collect();
        if got.len() >= 28 {
            assert_eq!(got, want);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{got:?}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    daemon.stop();
    let log = daemon.stderr.lock().unwrap().clone();
    assert!(!log.contains("warning"), "{log}");
}

/// A relay connection from 127.0.0.`octet` (its own address, for the per-address limits).
async fn relay_connection_from(addr: &RelayAddress, octet: u8) -> Result<RelayConnection, ConnectError> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet)), 0))
        .unwrap();
    let tcp = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], addr.port)))
        .await
        .unwrap();
    RelayConnection::connect_over(addr, tcp).await
}

/// What one address of the abusive party got: mailboxes made, envelopes stored, and the
/// refusals of its address's budget and of a full relay.
#[derive(Default, Debug, Clone, Copy)]
struct Take {
    created: u64,
    stored: u64,
    limited: u64,
    relay_full: u64,
}

/// One address of the abusive party: from 127.0.0.`octet`, `connections` connections each
/// create mailboxes and fill them, as fast as the relay answers, until `stop`.
async fn abuse_from(addr: RelayAddress, octet: u8, connections: usize, stop: Arc<AtomicBool>) -> Take {
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (addr, stop) = (addr.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut take = Take::default();
            let mut c = relay_connection_from(&addr, octet).await.unwrap();
            let mut own: Vec<MailboxKeys> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let k = MailboxKeys::generate(addr.clone(), &mut OsRng);
                let mut reqs = vec![Request::create(&k, 0)];
                let targets: Vec<[u8; 32]> = own.iter().chain([&k]).map(|k| k.address.send.0).collect();
                reqs.extend((0..20).map(|i| Request::Send {
                    send: targets[i % targets.len()],
                    envelope: random_envelope(),
                    pow: 0,
                }));
                let Ok(answers) = c.pipeline(&reqs).await else { break };
                for (i, r) in answers.iter().enumerate() {
                    match r {
                        Ok(Response::Ok) if i == 0 => take.created += 1,
                        Ok(_) if i > 0 => take.stored += 1,
                        r if refused(r, ErrorCode::RateLimited) => take.limited += 1,
                        r if refused(r, ErrorCode::RelayFull) => take.relay_full += 1,
                        _ => {}
                    }
                }
                if answers.first().is_some_and(|r| r.is_ok()) {
                    own.push(k);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            take
        }));
    }
    let mut sum = Take::default();
    for t in tasks {
        let t = t.await.unwrap();
        sum.created += t.created;
        sum.stored += t.stored;
        sum.limited += t.limited;
        sum.relay_full += t.relay_full;
    }
    sum
}

/// Issue 17, point 5: one abusive party on 30 addresses, each with as many connections as
/// an address may have, creates mailboxes and fills them as fast as the relay answers,
/// while two members talk. Each address's budget (mailboxes per minute, envelopes per
/// second) refuses it with `RateLimited` once spent, so the party cannot fill the relay
/// (3,000 envelopes here; the party's budgets over the test come to about 2,000): the
/// members' every message arrives, once, and no send of theirs fails. With no address
/// budget (the relay before this change) the party fills it within a second, and every
/// send fails with `RelayFull`.
#[test]
fn one_party_on_many_addresses_cannot_fill_the_relay_for_the_members() {
    const ADDRESSES: u8 = 30;
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(
        &root.path().join("relay"),
        &[
            "--max-stored-envelopes",
            "3000",
            "--max-connections-per-address",
            "4",
            "--address-create-rate",
            "6",
            "--address-create-burst",
            "12",
            "--address-store-rate",
            "1",
            "--address-store-burst",
            "40",
            "--stats-interval",
            "1s",
        ],
    );
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "steady");
    let addr: RelayAddress = relay.address.parse().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let party = {
        let (addr, stop) = (addr.clone(), stop.clone());
        std::thread::spawn(move || {
            rt().block_on(async move {
                let runs: Vec<_> = (0..ADDRESSES)
                    .map(|i| tokio::spawn(abuse_from(addr.clone(), 10 + i, 4, stop.clone())))
                    .collect();
                let mut per_address = Vec::new();
                for r in runs {
                    per_address.push(r.await.unwrap());
                }
                per_address
            })
        })
    };
    // The party spends its bursts first; the members talk once it is at its rates.
    std::thread::sleep(Duration::from_secs(3));
    for i in 0..10 {
        let r = alice.run(&["send", "steady", &format!("still here {i}")]);
        assert!(
            r.ok && r.stdout.trim() == "sent",
            "send {i} failed: {}{}",
            r.stdout,
            r.stderr
        );
    }
    bob.ok(&["sync"]);
    stop.store(true, Ordering::Relaxed);
    let per_address = party.join().unwrap();

    let got: Vec<String> = bob.texts("steady").into_iter().map(|(_, t)| t).collect();
    let want: Vec<String> = (0..10).map(|i| format!("still here {i}")).collect();
    assert_eq!(got, want, "every message once, in order");
    let stored: u64 = per_address.iter().map(|t| t.stored).sum();
    let created: u64 = per_address.iter().map(|t| t.created).sum();
    let full: u64 = per_address.iter().map(|t| t.relay_full).sum();
    eprintln!("the party: {created} mailboxes, {stored} envelopes stored, {full} sends refused RelayFull");
    for (i, t) in per_address.iter().enumerate() {
        assert!(t.limited > 0, "address {i} was never limited: {t:?}");
        assert!(t.created <= 12 + 6, "address {i} made {} mailboxes", t.created);
    }
    assert_eq!(full, 0, "the party filled the relay");
    assert!(stored < 3000, "{stored}");
    std::thread::sleep(Duration::from_millis(1500));
    let counts = last_counts(&relay.logs());
    assert!(counts["address_limited"] > 0, "{counts:?}");
}

/// Issue 17, point 5: a few addresses cannot hold every connection against the others.
/// Two addresses of one party fill the relay's 24 connections (12 each, within the
/// per-address limit of 16); one more from them is refused, as it would not even things out.
/// Then a member connects: the relay closes the newest connection of an address holding the
/// most and lets the member in; its message is delivered. (Before, the member was refused
/// `TooManyConnections` until the party let go.)
#[test]
fn a_party_holding_every_connection_makes_room_for_a_member() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(
        &root.path().join("relay"),
        &[
            "--max-connections",
            "24",
            "--max-connections-per-address",
            "16",
            "--stats-interval",
            "500ms",
        ],
    );
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "room");
    let addr: RelayAddress = relay.address.parse().unwrap();
    let runtime = rt();
    let held: Vec<RelayConnection> = runtime.block_on(async {
        let mut held = Vec::new();
        for (octet, n) in [(5u8, 12), (6, 12)] {
            for _ in 0..n {
                held.push(relay_connection_from(&addr, octet).await.unwrap());
            }
        }
        // The relay is full: one more from the party is refused.
        let r = relay_connection_from(&addr, 6).await;
        assert!(matches!(&r, Err(e) if e.is(ErrorCode::TooManyConnections)), "{r:?}");
        held
    });
    assert_eq!(held.len(), 24);

    let r = alice.run(&["send", "room", "let me in"]);
    assert!(r.ok && r.stdout.trim() == "sent", "{}{}", r.stdout, r.stderr);
    std::thread::sleep(Duration::from_millis(700));
    let counts = last_counts(&relay.logs());
    assert!(counts["evicted_connections"] >= 1, "{counts:?}");
    // A connection or two of the party's were closed (one per connection the member's
    // command made), no more.
    let alive: Vec<bool> = runtime.block_on(async {
        let mut alive = Vec::new();
        for mut c in held {
            alive.push(matches!(c.request(&Request::Ping).await, Ok(Response::Pong)));
        }
        alive
    });
    let closed = alive.iter().filter(|a| !**a).count();
    assert!((1..=3).contains(&closed), "{alive:?}");
    assert_eq!(
        bob.texts("room").into_iter().map(|(_, t)| t).collect::<Vec<_>>(),
        ["let me in"]
    );
}
