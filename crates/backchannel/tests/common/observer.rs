#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A network observer: a TCP proxy on loopback that sits between a client and
//! the relay, forwards every byte unchanged, and records the TLS record layer
//! it sees going past.
//!
//! The relay speaks TLS 1.3. After the ServerHello every record on the wire has
//! the outer content type 23 (application_data): handshake messages, alerts and
//! WebSocket frames are all encrypted and only distinguished by an inner type
//! the observer cannot read. What a passive observer on the path learns is
//! therefore the *length* of each record and the *time* it crossed, per
//! direction and per connection. Tests use this to check what our traffic
//! shape leaks (for example that every sealed envelope produces records of the
//! same length, whatever the message it carries).
//!
//! The record parser ([`RecordParser`]) does no I/O: it takes bytes in and
//! gives record headers out, one state machine per direction, so headers split
//! across reads and several records in one read are both handled.
//!
//! Ordering guarantee: a chunk's records are pushed into the log *before* the
//! chunk is written on, so once the receiving end has read a record's bytes,
//! [`Observer::records`] already contains it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

/// TLS content type of application_data records: everything after the
/// ServerHello in TLS 1.3.
pub const APPLICATION_DATA: u8 = 23;

/// Length of a TLS record header: content type (1), legacy version (2),
/// length (2, big-endian).
pub const RECORD_HEADER_LEN: usize = 5;

/// Which way a record travelled through the observer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client to relay.
    Up,
    /// Relay to client.
    Down,
}

/// One TLS record header as seen on the wire.
#[derive(Clone, Debug)]
pub struct Record {
    /// Index of the accepted connection, 0-based, in accept order.
    pub conn: usize,
    pub dir: Dir,
    pub content_type: u8,
    /// Length of the record body (not counting the 5-byte header).
    pub len: u16,
    /// When the read that completed the record's header returned.
    pub at: Instant,
}

/// Incremental TLS record header parser for one direction of one connection.
///
/// Feed it the byte stream in whatever chunks it arrives; it returns the
/// `(content_type, len)` of every header completed by that chunk, in order.
/// Bodies are skipped, not buffered.
#[derive(Debug, Default)]
pub struct RecordParser {
    header: [u8; RECORD_HEADER_LEN],
    /// Header bytes collected so far (0..5).
    have: usize,
    /// Body bytes still to skip before the next header starts.
    body_left: usize,
}

impl RecordParser {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<(u8, u16)> {
        let mut headers = Vec::new();
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (RECORD_HEADER_LEN - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == RECORD_HEADER_LEN {
                let len = u16::from_be_bytes([self.header[3], self.header[4]]);
                headers.push((self.header[0], len));
                self.have = 0;
                self.body_left = usize::from(len);
            }
        }
        headers
    }

    /// True when the stream so far ends exactly on a record boundary.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.body_left == 0
    }
}

/// The proxy. Point clients at `127.0.0.1:{port}` instead of the relay.
///
/// Dropping it stops accepting new connections; connections already proxied
/// run until both of their sides close.
pub struct Observer {
    pub port: u16,
    records: Arc<Mutex<Vec<Record>>>,
    /// The first bytes each client sent on each connection (its ClientHello), by connection.
    openings: Openings,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Observer {
    /// Listens on `127.0.0.1:0` and proxies each accepted connection to
    /// `127.0.0.1:target_port`.
    pub fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("observer: bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let records = Arc::new(Mutex::new(Vec::new()));
        let openings: Openings = Arc::new(Mutex::new(BTreeMap::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let records = records.clone();
            let openings = openings.clone();
            let connections = connections.clone();
            let stop = stop.clone();
            thread::Builder::new()
                .name("observer-accept".into())
                .spawn(move || accept_loop(listener, target_port, records, openings, connections, stop))
                .expect("observer: spawn accept thread");
        }
        Observer {
            port,
            records,
            openings,
            connections,
            stop,
        }
    }

    /// A snapshot of every record header seen so far, in arrival order per
    /// direction (directions interleave in the order their reads returned).
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// Forgets the records seen so far (connection indices keep counting).
    pub fn clear(&self) {
        self.records.lock().unwrap().clear();
    }

    /// The first bytes (up to [`OPENING`]) each client sent on each connection so far.
    pub fn openings(&self) -> Vec<Vec<u8>> {
        self.openings.lock().unwrap().values().cloned().collect()
    }

    /// How many client connections have been accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// application_data records (content type 23) whose header arrived at or
    /// after `t`.
    pub fn app_records_since(&self, t: Instant) -> Vec<Record> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.content_type == APPLICATION_DATA && r.at >= t)
            .cloned()
            .collect()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocked `accept` so the thread sees `stop` and exits.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// How many records of each body length.
pub fn lengths_histogram(records: &[Record]) -> BTreeMap<u16, usize> {
    let mut histogram = BTreeMap::new();
    for r in records {
        *histogram.entry(r.len).or_insert(0) += 1;
    }
    histogram
}

/// How many of a client's first bytes on a connection are kept.
pub const OPENING: usize = 4096;

type Openings = Arc<Mutex<BTreeMap<usize, Vec<u8>>>>;

fn accept_loop(
    listener: TcpListener,
    target_port: u16,
    records: Arc<Mutex<Vec<Record>>>,
    openings: Openings,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    for client in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let conn = connections.fetch_add(1, Ordering::SeqCst);
        // If the relay is unreachable, dropping `client` closes it, as a
        // refused connection would look to the client.
        let Ok(relay) = TcpStream::connect(("127.0.0.1", target_port)) else {
            continue;
        };
        // Forward each chunk as soon as it is read; without this Nagle would
        // merge and delay small writes and distort the timing we record.
        let _ = client.set_nodelay(true);
        let _ = relay.set_nodelay(true);
        let (Ok(client2), Ok(relay2)) = (client.try_clone(), relay.try_clone()) else {
            continue;
        };
        spawn_forwarder(conn, Dir::Up, client, relay, records.clone(), Some(openings.clone()));
        spawn_forwarder(conn, Dir::Down, relay2, client2, records.clone(), None);
    }
}

fn spawn_forwarder(
    conn: usize,
    dir: Dir,
    from: TcpStream,
    to: TcpStream,
    records: Arc<Mutex<Vec<Record>>>,
    openings: Option<Openings>,
) {
    let name = format!("observer-{conn}-{dir:?}");
    thread::Builder::new()
        .name(name)
        .spawn(move || forward(conn, dir, from, to, &records, openings.as_ref()))
        .expect("observer: spawn forwarding thread");
}

/// Copies `from` to `to` chunk by chunk, logging record headers on the way.
fn forward(
    conn: usize,
    dir: Dir,
    mut from: TcpStream,
    mut to: TcpStream,
    records: &Mutex<Vec<Record>>,
    openings: Option<&Openings>,
) {
    let mut parser = RecordParser::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let at = Instant::now();
        if let Some(openings) = openings {
            let mut o = openings.lock().unwrap();
            let kept = o.entry(conn).or_default();
            let room = OPENING.saturating_sub(kept.len()).min(n);
            kept.extend_from_slice(&buf[..room]);
        }
        let headers = parser.feed(&buf[..n]);
        if !headers.is_empty() {
            let mut log = records.lock().unwrap();
            log.extend(headers.into_iter().map(|(content_type, len)| Record {
                conn,
                dir,
                content_type,
                len,
                at,
            }));
        }
        if to.write_all(&buf[..n]).is_err() {
            // The receiving side is gone: stop reading from the sender too.
            let _ = from.shutdown(Shutdown::Read);
            break;
        }
    }
    // Propagate the close (EOF) to the other side.
    let _ = to.shutdown(Shutdown::Write);
}
