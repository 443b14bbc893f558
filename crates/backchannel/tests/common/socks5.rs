#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A minimal SOCKS5 proxy on loopback for integration tests (RFC 1928
//! CONNECT, RFC 1929 username/password only). It records every username
//! and CONNECT target it sees, connects to the target itself (resolving
//! names with the system resolver, which is fine for tests) and relays
//! bytes both ways. Plain threads and `std::net`, no tokio.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How long the proxy waits for each handshake message before giving up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Reply codes (RFC 1928 section 6).
const REPLY_SUCCEEDED: u8 = 0x00;
const REPLY_HOST_UNREACHABLE: u8 = 0x04;
const REPLY_CONNECTION_REFUSED: u8 = 0x05;
const REPLY_COMMAND_NOT_SUPPORTED: u8 = 0x07;
const REPLY_ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;

#[derive(Default)]
struct Log {
    targets: Mutex<Vec<(String, u16)>>,
    usernames: Mutex<Vec<String>>,
    connections: AtomicUsize,
    stopping: AtomicBool,
}

/// A SOCKS5 proxy listening on `127.0.0.1:port`; stops accepting on drop
/// (connections already relayed run until either side closes).
pub struct Socks5Server {
    pub port: u16,
    log: Arc<Log>,
}

impl Socks5Server {
    /// Binds `127.0.0.1:0` and starts accepting, one thread per connection.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the SOCKS5 test proxy");
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Log::default());
        let shared = log.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                if shared.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let log = shared.clone();
                thread::spawn(move || {
                    // A client that breaks the protocol just loses its connection.
                    let _ = serve(stream, &log);
                });
            }
        });
        Socks5Server { port, log }
    }

    /// The `--proxy` value for this server.
    pub fn url(&self) -> String {
        format!("socks5h://127.0.0.1:{}", self.port)
    }

    /// Every CONNECT target requested, in order, as sent: an IP address in
    /// its usual text form, or the host name exactly as the client sent it.
    pub fn targets(&self) -> Vec<(String, u16)> {
        self.log.targets.lock().unwrap().clone()
    }

    /// Every username that authenticated, in order.
    pub fn usernames(&self) -> Vec<String> {
        self.log.usernames.lock().unwrap().clone()
    }

    /// How many TCP connections the proxy has accepted.
    pub fn connections(&self) -> usize {
        self.log.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Socks5Server {
    fn drop(&mut self) {
        self.log.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag and drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn protocol_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn read_array<const N: usize>(stream: &mut TcpStream) -> io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    stream.read_exact(&mut buf)?;
    Ok(buf)
}

fn read_vec(stream: &mut TcpStream, len: u8) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf)?;
    Ok(buf)
}

/// A reply whose bound address is `bound` (or 0.0.0.0:0 on failure).
fn reply(stream: &mut TcpStream, code: u8, bound: Option<SocketAddr>) -> io::Result<()> {
    let mut out = vec![5, code, 0];
    match bound {
        Some(SocketAddr::V4(a)) => {
            out.push(1);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        Some(SocketAddr::V6(a)) => {
            out.push(4);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        None => out.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0]),
    }
    stream.write_all(&out)
}

fn serve(mut client: TcpStream, log: &Log) -> io::Result<()> {
    client.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;

    // Method selection: only username/password (0x02).
    let [version, count] = read_array::<2>(&mut client)?;
    if version != 5 {
        return Err(protocol_error("not SOCKS5"));
    }
    let methods = read_vec(&mut client, count)?;
    if !methods.contains(&2) {
        client.write_all(&[5, 0xFF])?;
        return Ok(());
    }
    client.write_all(&[5, 2])?;

    // RFC 1929: any credentials are accepted; the username is recorded.
    let [auth_version, user_len] = read_array::<2>(&mut client)?;
    if auth_version != 1 {
        return Err(protocol_error("bad username/password version"));
    }
    let user = read_vec(&mut client, user_len)?;
    let [password_len] = read_array::<1>(&mut client)?;
    read_vec(&mut client, password_len)?;
    log.usernames
        .lock()
        .unwrap()
        .push(String::from_utf8_lossy(&user).into_owned());
    client.write_all(&[1, 0])?;

    // The request.
    let [version, command, _reserved, atyp] = read_array::<4>(&mut client)?;
    if version != 5 {
        return Err(protocol_error("not SOCKS5"));
    }
    let host = match atyp {
        1 => Ipv4Addr::from(read_array::<4>(&mut client)?).to_string(),
        4 => Ipv6Addr::from(read_array::<16>(&mut client)?).to_string(),
        3 => {
            let [len] = read_array::<1>(&mut client)?;
            String::from_utf8(read_vec(&mut client, len)?).map_err(|_| protocol_error("host name is not UTF-8"))?
        }
        _ => return reply(&mut client, REPLY_ADDRESS_TYPE_NOT_SUPPORTED, None),
    };
    let port = u16::from_be_bytes(read_array::<2>(&mut client)?);
    if command != 1 {
        return reply(&mut client, REPLY_COMMAND_NOT_SUPPORTED, None);
    }
    log.targets.lock().unwrap().push((host.clone(), port));

    let addrs: Vec<SocketAddr> = match (host.as_str(), port).to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(_) => return reply(&mut client, REPLY_HOST_UNREACHABLE, None),
    };
    let upstream = match TcpStream::connect(&addrs[..]) {
        Ok(upstream) => upstream,
        Err(_) => return reply(&mut client, REPLY_CONNECTION_REFUSED, None),
    };
    reply(&mut client, REPLY_SUCCEEDED, upstream.local_addr().ok())?;
    client.set_read_timeout(None)?;

    // Relay both ways until each side has finished sending.
    let mut client_in = client.try_clone()?;
    let mut upstream_out = upstream.try_clone()?;
    let forward = thread::spawn(move || pipe(&mut client_in, &mut upstream_out));
    let mut upstream_in = upstream;
    pipe(&mut upstream_in, &mut client);
    let _ = forward.join();
    Ok(())
}

/// Copies `from` to `to`. At end of stream, passes the end on by shutting
/// down `to`'s write half; on an error, tears both sockets down so that the
/// other direction stops too.
fn pipe(from: &mut TcpStream, to: &mut TcpStream) {
    match io::copy(from, to) {
        Ok(_) => {
            let _ = to.shutdown(Shutdown::Write);
        }
        Err(_) => {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        }
    }
}
