//! A SOCKS5 client (RFC 1928) with username/password authentication
//! (RFC 1929), for reaching relays through Tor or another SOCKS5 proxy.
//!
//! Only `socks5h://` proxies are accepted: the target host name is always
//! sent to the proxy to resolve, never looked up on this machine, so the
//! local DNS resolver never learns which relay is being contacted.
//!
//! The bytes on the wire are built and checked by small pure functions
//! (`encode_*`, `check_*`); [`connect`] only moves them over a TCP stream.
//! The proxy is treated as untrusted input: every byte of its replies is
//! validated, and nothing it sends can make this code panic.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The only URL scheme accepted for `--proxy`.
pub const SCHEME: &str = "socks5h";

/// The SOCKS protocol version byte (RFC 1928).
const SOCKS_VERSION: u8 = 0x05;
/// The username/password sub-negotiation version byte (RFC 1929).
const AUTH_VERSION: u8 = 0x01;
/// Authentication method: username/password (RFC 1928 section 3).
const METHOD_USERNAME_PASSWORD: u8 = 0x02;
/// "No acceptable methods" (RFC 1928 section 3).
const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;
/// The CONNECT command (RFC 1928 section 4).
const CMD_CONNECT: u8 = 0x01;
/// Address types (RFC 1928 section 5).
const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;
/// The password sent with every isolation username. Tor only compares
/// credentials; it never checks them.
const PASSWORD: &[u8] = b"x";
/// Usernames starting with this are read by Tor and Arti as a request for
/// a SOCKS extension (Tor proposal 351), not as an isolation token.
const TOR_EXTENSION_PREFIX: &str = "<torS0X>";

/// The address of a SOCKS5 proxy, written `socks5h://HOST:PORT`.
///
/// `host` is a DNS name, an IPv4 address or an IPv6 address (stored without
/// brackets; it is written `[::1]` in the URL form). It serializes as its
/// URL form and is validated again when deserialized.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProxyAddr {
    /// The proxy's host name or IP address, without brackets.
    pub host: String,
    /// The proxy's TCP port.
    pub port: u16,
}

/// A `--proxy` value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyAddrError {
    /// No `scheme://` prefix.
    #[error("the proxy address must be written socks5h://HOST:PORT, for example socks5h://127.0.0.1:9050 for Tor")]
    MissingScheme,
    /// `socks5://`, which by convention resolves names locally.
    #[error("write socks5h:// instead of socks5://: backchannel requires the proxy to resolve host names (socks5h), never this machine, so that no DNS lookup leaks which relay you contact")]
    LocalResolution,
    /// Another scheme.
    #[error("the proxy scheme \"{0}\" is not supported; only SOCKS5 proxies written socks5h://HOST:PORT can be used")]
    UnsupportedScheme(String),
    /// `socks5h://:9050`.
    #[error("the proxy address has no host; write it as socks5h://HOST:PORT")]
    EmptyHost,
    /// `socks5h://127.0.0.1`.
    #[error("the proxy address has no port; write it as socks5h://HOST:PORT (Tor usually listens on port 9050)")]
    MissingPort,
    /// The port is not a number from 1 to 65535.
    #[error("the proxy port \"{0}\" is not a number from 1 to 65535")]
    InvalidPort(String),
    /// The host is neither a DNS name nor an IP address.
    #[error("the proxy host \"{0}\" is not a host name, an IPv4 address or a bracketed IPv6 address such as [::1]")]
    InvalidHost(String),
    /// Something follows the port.
    #[error("the proxy address must end after the port; remove \"{0}\"")]
    TrailingPath(String),
    /// `socks5h://user:password@host:port`.
    #[error("the proxy address must not contain a username or password; remove the part before \"@\" (backchannel chooses SOCKS usernames itself, to isolate Tor circuits)")]
    Credentials,
}

impl FromStr for ProxyAddr {
    type Err = ProxyAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s.split_once("://").ok_or(ProxyAddrError::MissingScheme)?;
        if !scheme.eq_ignore_ascii_case(SCHEME) {
            return Err(if scheme.eq_ignore_ascii_case("socks5") {
                ProxyAddrError::LocalResolution
            } else {
                ProxyAddrError::UnsupportedScheme(scheme.to_string())
            });
        }
        // Checked first so that no error message repeats a password.
        if rest.contains('@') {
            return Err(ProxyAddrError::Credentials);
        }
        let authority = match rest.find(['/', '?', '#']) {
            Some(at) => {
                let (_, trailing) = rest.split_at(at);
                return Err(ProxyAddrError::TrailingPath(trailing.to_string()));
            }
            None => rest,
        };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (inner, after) = bracketed
                .split_once(']')
                .ok_or_else(|| ProxyAddrError::InvalidHost(authority.to_string()))?;
            if inner.parse::<Ipv6Addr>().is_err() {
                return Err(ProxyAddrError::InvalidHost(format!("[{inner}]")));
            }
            let port = match after.strip_prefix(':') {
                Some(port) => port,
                None if after.is_empty() => return Err(ProxyAddrError::MissingPort),
                None => return Err(ProxyAddrError::InvalidHost(authority.to_string())),
            };
            (inner, port)
        } else {
            let (host, port) = authority.rsplit_once(':').ok_or(if authority.is_empty() {
                ProxyAddrError::EmptyHost
            } else {
                ProxyAddrError::MissingPort
            })?;
            if host.is_empty() {
                return Err(ProxyAddrError::EmptyHost);
            }
            if host.parse::<Ipv4Addr>().is_err() && !is_dns_name(host) {
                return Err(ProxyAddrError::InvalidHost(host.to_string()));
            }
            (host, port)
        };
        if port.is_empty() {
            return Err(ProxyAddrError::MissingPort);
        }
        let port = parse_port(port).ok_or_else(|| ProxyAddrError::InvalidPort(port.to_string()))?;
        Ok(ProxyAddr {
            host: host.to_string(),
            port,
        })
    }
}

/// Digits only (no sign, no spaces), 1 to 65535.
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|&p| p != 0)
}

/// A DNS name: dot-separated non-empty labels of letters, digits, `-` and
/// `_`, at most 253 bytes in all.
fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl fmt::Display for ProxyAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.parse::<Ipv6Addr>().is_ok() {
            write!(f, "{SCHEME}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{SCHEME}://{}:{}", self.host, self.port)
        }
    }
}

impl TryFrom<String> for ProxyAddr {
    type Error = ProxyAddrError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ProxyAddr> for String {
    fn from(addr: ProxyAddr) -> Self {
        addr.to_string()
    }
}

/// The SOCKS5 handshake failed. [`connect`] returns it inside an
/// [`io::Error`] (reachable with `get_ref()` and `downcast_ref`), whose kind
/// is [`SocksError::kind`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocksError {
    /// The TCP connection to the proxy failed.
    #[error("could not connect to the SOCKS5 proxy at {proxy}; check that Tor (or the proxy) is running and listening there: {source}")]
    ProxyUnreachable {
        /// The proxy, as `socks5h://HOST:PORT`.
        proxy: String,
        /// The OS error.
        source: io::Error,
    },
    /// The proxy closed the connection before the handshake finished.
    #[error("the SOCKS5 proxy closed the connection while {0}")]
    Closed(&'static str),
    /// Reading from or writing to the proxy failed.
    #[error("the connection to the SOCKS5 proxy failed while {stage}: {source}")]
    Io {
        /// What was being done.
        stage: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The reply's version byte is not 5.
    #[error("the proxy does not speak SOCKS5 (it sent version byte {got:#04x} while {stage}); check that --proxy points at a SOCKS port, such as Tor's SocksPort, and not at an HTTP or control port")]
    NotSocks5 {
        /// The version byte received.
        got: u8,
        /// What was being done.
        stage: &'static str,
    },
    /// The proxy accepts no offered authentication method.
    #[error("the SOCKS5 proxy accepts none of the offered authentication methods; it must allow username/password authentication (method 2), as Tor does")]
    NoAcceptableMethod,
    /// The proxy chose a method that was not offered.
    #[error("the SOCKS5 proxy chose authentication method {0}, which was not offered (only username/password, method 2, was)")]
    UnofferedMethod(u8),
    /// The username/password reply's version byte is not 1.
    #[error("the SOCKS5 proxy answered the username/password step with version byte {0:#04x} instead of 0x01")]
    BadAuthVersion(u8),
    /// The proxy rejected the credentials.
    #[error(
        "the SOCKS5 proxy rejected the username/password (status {0}); it must accept any credentials, as Tor does"
    )]
    AuthRejected(u8),
    /// The proxy could not or would not connect to the target.
    #[error("the SOCKS5 proxy refused the connection: {}", describe_reply(*.0))]
    Refused(u8),
    /// The reply's reserved byte is not zero.
    #[error("the SOCKS5 proxy sent a malformed reply: the reserved byte is {0:#04x} instead of 0x00")]
    BadReserved(u8),
    /// The reply's bound address has an unknown type.
    #[error("the SOCKS5 proxy sent a malformed reply: unknown address type {0:#04x}")]
    BadAddressType(u8),
    /// The reply's bound address is an empty host name.
    #[error("the SOCKS5 proxy sent a malformed reply: the bound host name is empty")]
    EmptyBoundName,
    /// The target host name is empty.
    #[error("the host to connect to through the SOCKS5 proxy is empty")]
    EmptyHost,
    /// The target host name does not fit in a SOCKS5 request.
    #[error("the host name to connect to is {0} bytes long, but SOCKS5 allows at most 255")]
    HostTooLong(usize),
    /// The target host name contains a control character.
    #[error("the host name to connect to contains a control character")]
    HostControlCharacter,
    /// The target port is 0.
    #[error("cannot connect to port 0 through the SOCKS5 proxy")]
    PortZero,
    /// The isolation username is empty or too long.
    #[error("the SOCKS5 isolation username is {0} bytes long, but it must be 1 to 255 bytes")]
    UsernameLength(usize),
    /// The isolation username would be read as a Tor extension.
    #[error("the SOCKS5 isolation username must not start with \"<torS0X>\", which Tor reads as an extension request")]
    ReservedUsername,
}

impl SocksError {
    /// The [`io::ErrorKind`] this error is reported with.
    pub fn kind(&self) -> io::ErrorKind {
        use io::ErrorKind as K;
        match self {
            SocksError::ProxyUnreachable { source, .. } | SocksError::Io { source, .. } => source.kind(),
            SocksError::Closed(_) => K::UnexpectedEof,
            SocksError::NotSocks5 { .. }
            | SocksError::UnofferedMethod(_)
            | SocksError::BadAuthVersion(_)
            | SocksError::BadReserved(_)
            | SocksError::BadAddressType(_)
            | SocksError::EmptyBoundName => K::InvalidData,
            SocksError::NoAcceptableMethod | SocksError::AuthRejected(_) => K::PermissionDenied,
            SocksError::Refused(code) => reply_kind(*code),
            SocksError::EmptyHost
            | SocksError::HostTooLong(_)
            | SocksError::HostControlCharacter
            | SocksError::PortZero
            | SocksError::UsernameLength(_)
            | SocksError::ReservedUsername => K::InvalidInput,
        }
    }
}

impl From<SocksError> for io::Error {
    fn from(e: SocksError) -> Self {
        io::Error::new(e.kind(), e)
    }
}

/// What a failure reply code means: RFC 1928 section 6, and Tor's
/// onion-service codes (proposal 304, sent with `SocksPort ExtendedErrors`).
fn describe_reply(code: u8) -> String {
    let meaning = match code {
        0x01 => "general SOCKS server failure",
        0x02 => "connection not allowed by ruleset",
        0x03 => "network unreachable",
        0x04 => "host unreachable",
        0x05 => "connection refused",
        0x06 => "TTL expired",
        0x07 => "command not supported",
        0x08 => "address type not supported",
        0xF0 => "onion service descriptor not found",
        0xF1 => "onion service descriptor is invalid",
        0xF2 => "onion service introduction failed",
        0xF3 => "onion service rendezvous failed",
        0xF4 => "onion service requires client authorization",
        0xF5 => "onion service client authorization is wrong",
        0xF6 => "invalid onion service address",
        0xF7 => "onion service introduction timed out",
        _ => "unassigned reply code",
    };
    if code < 0x10 {
        format!("{meaning} (code {code})")
    } else {
        format!("{meaning} (code {code:#04x})")
    }
}

fn reply_kind(code: u8) -> io::ErrorKind {
    use io::ErrorKind as K;
    match code {
        0x02 | 0xF4 | 0xF5 => K::PermissionDenied,
        0x03 => K::NetworkUnreachable,
        0x04 | 0xF0 | 0xF2 | 0xF3 => K::HostUnreachable,
        0x05 => K::ConnectionRefused,
        0x06 | 0xF7 => K::TimedOut,
        0x07 | 0x08 => K::Unsupported,
        0xF6 => K::InvalidInput,
        _ => K::Other,
    }
}

/// Where the proxy should connect. Built from the caller's host string
/// without any lookup: IP literals are sent as addresses, anything else as
/// a name for the proxy to resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target<'a> {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    Name(&'a str),
}

impl<'a> Target<'a> {
    fn new(host: &'a str) -> Result<Self, SocksError> {
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Ok(Target::V4(ip));
        }
        let unbracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = unbracketed.parse::<Ipv6Addr>() {
            return Ok(Target::V6(ip));
        }
        if host.is_empty() {
            return Err(SocksError::EmptyHost);
        }
        if host.len() > 255 {
            return Err(SocksError::HostTooLong(host.len()));
        }
        if host.chars().any(char::is_control) {
            return Err(SocksError::HostControlCharacter);
        }
        Ok(Target::Name(host))
    }
}

/// An isolation username checked to fit RFC 1929 and not to collide with
/// Tor's extension prefix.
#[derive(Debug, Clone, Copy)]
struct Username<'a>(&'a str);

impl<'a> Username<'a> {
    fn new(name: &'a str) -> Result<Self, SocksError> {
        if name.is_empty() || name.len() > 255 {
            return Err(SocksError::UsernameLength(name.len()));
        }
        if name.starts_with(TOR_EXTENSION_PREFIX) {
            return Err(SocksError::ReservedUsername);
        }
        Ok(Username(name))
    }
}

/// The method-selection message: version 5, offering username/password only.
fn encode_greeting() -> [u8; 3] {
    [SOCKS_VERSION, 1, METHOD_USERNAME_PASSWORD]
}

/// The RFC 1929 username/password request.
fn encode_auth(user: Username<'_>) -> Vec<u8> {
    let user = user.0.as_bytes();
    let mut out = Vec::with_capacity(3 + user.len() + PASSWORD.len());
    out.push(AUTH_VERSION);
    out.push(len_u8(user));
    out.extend_from_slice(user);
    out.push(len_u8(PASSWORD));
    out.extend_from_slice(PASSWORD);
    out
}

/// The CONNECT request.
fn encode_connect(target: Target<'_>, port: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(7 + 255);
    out.extend_from_slice(&[SOCKS_VERSION, CMD_CONNECT, 0x00]);
    match target {
        Target::V4(ip) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&ip.octets());
        }
        Target::V6(ip) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&ip.octets());
        }
        Target::Name(name) => {
            out.push(ATYP_DOMAIN);
            out.push(len_u8(name.as_bytes()));
            out.extend_from_slice(name.as_bytes());
        }
    }
    out.extend_from_slice(&port.to_be_bytes());
    out
}

/// The length of a field already checked to be at most 255 bytes.
fn len_u8(field: &[u8]) -> u8 {
    u8::try_from(field.len()).unwrap_or(u8::MAX)
}

/// Checks the method-selection reply.
fn check_method_choice(reply: [u8; 2]) -> Result<(), SocksError> {
    match reply {
        [SOCKS_VERSION, METHOD_USERNAME_PASSWORD] => Ok(()),
        [SOCKS_VERSION, METHOD_NONE_ACCEPTABLE] => Err(SocksError::NoAcceptableMethod),
        [SOCKS_VERSION, method] => Err(SocksError::UnofferedMethod(method)),
        [got, _] => Err(SocksError::NotSocks5 {
            got,
            stage: STAGE_METHOD,
        }),
    }
}

/// Checks the RFC 1929 status reply.
fn check_auth_status(reply: [u8; 2]) -> Result<(), SocksError> {
    match reply {
        [AUTH_VERSION, 0x00] => Ok(()),
        [AUTH_VERSION, status] => Err(SocksError::AuthRejected(status)),
        [got, _] => Err(SocksError::BadAuthVersion(got)),
    }
}

/// How the bound address that follows a successful reply's first four
/// bytes is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BoundAddress {
    /// This many bytes: address and port.
    Fixed(usize),
    /// A length byte, that many bytes of name, then the port.
    Name,
}

/// Checks the first four bytes of the CONNECT reply.
fn check_reply_head(head: [u8; 4]) -> Result<BoundAddress, SocksError> {
    let [version, reply, reserved, atyp] = head;
    if version != SOCKS_VERSION {
        return Err(SocksError::NotSocks5 {
            got: version,
            stage: STAGE_REPLY,
        });
    }
    if reply != 0x00 {
        return Err(SocksError::Refused(reply));
    }
    if reserved != 0x00 {
        return Err(SocksError::BadReserved(reserved));
    }
    match atyp {
        ATYP_IPV4 => Ok(BoundAddress::Fixed(4 + 2)),
        ATYP_IPV6 => Ok(BoundAddress::Fixed(16 + 2)),
        ATYP_DOMAIN => Ok(BoundAddress::Name),
        other => Err(SocksError::BadAddressType(other)),
    }
}

const STAGE_GREETING: &str = "offering authentication methods";
const STAGE_METHOD: &str = "waiting for its choice of authentication method";
const STAGE_AUTH: &str = "sending the isolation username";
const STAGE_AUTH_STATUS: &str = "waiting for it to accept the username";
const STAGE_REQUEST: &str = "sending the CONNECT request";
const STAGE_REPLY: &str = "waiting for its reply to the CONNECT request";
const STAGE_BOUND: &str = "reading the bound address in its reply";

/// Connects to `host:port` through the SOCKS5 proxy at `proxy`, and returns
/// the stream once the proxy has connected it; what is written to it next
/// goes to the target.
///
/// `host` is never resolved on this machine: an IPv4 or IPv6 literal
/// (`[::1]` or `::1`) is sent as an address, anything else is sent as a
/// name for the proxy to resolve. (The proxy's own host, in `proxy`, is
/// resolved locally; it is normally `127.0.0.1`.)
///
/// Only username/password authentication (RFC 1929) is offered, with
/// `isolation` as the username and `"x"` as the password. Tor's
/// `IsolateSOCKSAuth` (on by default) never lets streams with different
/// SOCKS credentials share a circuit, so each distinct `isolation` value
/// gets its own circuits and exit; reuse a value only for connections that
/// may be linked to each other. `isolation` must be 1 to 255 bytes and must
/// not start with `<torS0X>` (Tor proposal 351's extension prefix).
///
/// Errors are [`SocksError`]s inside [`io::Error`]s. There is no timeout
/// here: wrap the call in `tokio::time::timeout`.
pub async fn connect(proxy: &ProxyAddr, host: &str, port: u16, isolation: &str) -> io::Result<TcpStream> {
    let target = Target::new(host)?;
    if port == 0 {
        return Err(SocksError::PortZero.into());
    }
    let user = Username::new(isolation)?;
    let mut stream = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|source| SocksError::ProxyUnreachable {
            proxy: proxy.to_string(),
            source,
        })?;
    handshake(&mut stream, target, port, user).await?;
    Ok(stream)
}

/// Runs the client side of the handshake on `stream`. It reads exactly the
/// bytes of the proxy's replies, so nothing the target sends afterwards is
/// consumed.
async fn handshake<S>(stream: &mut S, target: Target<'_>, port: u16, user: Username<'_>) -> Result<(), SocksError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    write_all(stream, &encode_greeting(), STAGE_GREETING).await?;
    let mut choice = [0u8; 2];
    read_exact(stream, &mut choice, STAGE_METHOD).await?;
    check_method_choice(choice)?;

    write_all(stream, &encode_auth(user), STAGE_AUTH).await?;
    let mut status = [0u8; 2];
    read_exact(stream, &mut status, STAGE_AUTH_STATUS).await?;
    check_auth_status(status)?;

    write_all(stream, &encode_connect(target, port), STAGE_REQUEST).await?;
    let mut head = [0u8; 4];
    read_exact(stream, &mut head, STAGE_REPLY).await?;
    let rest = match check_reply_head(head)? {
        BoundAddress::Fixed(n) => n,
        BoundAddress::Name => {
            let mut len = [0u8; 1];
            read_exact(stream, &mut len, STAGE_BOUND).await?;
            let [len] = len;
            if len == 0 {
                return Err(SocksError::EmptyBoundName);
            }
            usize::from(len) + 2
        }
    };
    let mut bound = vec![0u8; rest];
    read_exact(stream, &mut bound, STAGE_BOUND).await?;
    Ok(())
}

async fn write_all<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8], stage: &'static str) -> Result<(), SocksError> {
    let result = match stream.write_all(bytes).await {
        Ok(()) => stream.flush().await,
        Err(e) => Err(e),
    };
    result.map_err(|source| SocksError::Io { stage, source })
}

async fn read_exact<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    stage: &'static str,
) -> Result<(), SocksError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(SocksError::Closed(stage)),
        Err(source) => Err(SocksError::Io { stage, source }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::future::Future;
    use std::time::Duration;

    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::*;

    // ---- parsing ----

    #[test]
    fn parses_good_addresses() {
        let cases = [
            ("socks5h://127.0.0.1:9050", "127.0.0.1", 9050),
            ("socks5h://localhost:9150", "localhost", 9150),
            (
                "socks5h://tor.example-proxy.internal:1",
                "tor.example-proxy.internal",
                1,
            ),
            ("socks5h://[::1]:9050", "::1", 9050),
            ("socks5h://[2001:db8::7]:65535", "2001:db8::7", 65535),
            ("SOCKS5H://Proxy_1.example:1080", "Proxy_1.example", 1080),
        ];
        for (input, host, port) in cases {
            let addr: ProxyAddr = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                addr,
                ProxyAddr {
                    host: host.to_string(),
                    port
                },
                "{input}"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for input in [
            "socks5h://127.0.0.1:9050",
            "socks5h://localhost:9150",
            "socks5h://[::1]:9050",
        ] {
            let addr: ProxyAddr = input.parse().unwrap();
            assert_eq!(addr.to_string(), input);
            assert_eq!(addr.to_string().parse::<ProxyAddr>().unwrap(), addr);
        }
        let upper: ProxyAddr = "SOCKS5H://h:1".parse().unwrap();
        assert_eq!(upper.to_string(), "socks5h://h:1");
    }

    #[test]
    fn rejects_bad_addresses() {
        use ProxyAddrError as E;
        let cases: &[(&str, ProxyAddrError)] = &[
            ("socks5://127.0.0.1:9050", E::LocalResolution),
            ("SOCKS5://127.0.0.1:9050", E::LocalResolution),
            ("http://127.0.0.1:8080", E::UnsupportedScheme("http".into())),
            ("socks4a://127.0.0.1:9050", E::UnsupportedScheme("socks4a".into())),
            ("127.0.0.1:9050", E::MissingScheme),
            ("socks5h:127.0.0.1:9050", E::MissingScheme),
            ("", E::MissingScheme),
            ("socks5h://", E::EmptyHost),
            ("socks5h://:9050", E::EmptyHost),
            ("socks5h://127.0.0.1", E::MissingPort),
            ("socks5h://127.0.0.1:", E::MissingPort),
            ("socks5h://[::1]", E::MissingPort),
            ("socks5h://[::1]:", E::MissingPort),
            ("socks5h://127.0.0.1:9050/", E::TrailingPath("/".into())),
            ("socks5h://127.0.0.1:9050/tor", E::TrailingPath("/tor".into())),
            ("socks5h://127.0.0.1:9050?x=1", E::TrailingPath("?x=1".into())),
            ("socks5h://127.0.0.1:9050#f", E::TrailingPath("#f".into())),
            ("socks5h://127.0.0.1/:9050", E::TrailingPath("/:9050".into())),
            ("socks5h://user:pw@127.0.0.1:9050", E::Credentials),
            ("socks5h://user:p/w@127.0.0.1:9050", E::Credentials),
            ("socks5h://127.0.0.1:0", E::InvalidPort("0".into())),
            ("socks5h://127.0.0.1:65536", E::InvalidPort("65536".into())),
            ("socks5h://127.0.0.1:+80", E::InvalidPort("+80".into())),
            ("socks5h://127.0.0.1: 80", E::InvalidPort(" 80".into())),
            ("socks5h://127.0.0.1:9050:1", E::InvalidHost("127.0.0.1:9050".into())),
            ("socks5h://::1:9050", E::InvalidHost("::1".into())),
            ("socks5h://[::1]x:9050", E::InvalidHost("[::1]x:9050".into())),
            ("socks5h://[::1:9050", E::InvalidHost("[::1:9050".into())),
            ("socks5h://[127.0.0.1]:9050", E::InvalidHost("[127.0.0.1]".into())),
            ("socks5h://[fe80::1%eth0]:9050", E::InvalidHost("[fe80::1%eth0]".into())),
            ("socks5h://[]:9050", E::InvalidHost("[]".into())),
            ("socks5h://bad host:9050", E::InvalidHost("bad host".into())),
            ("socks5h://a..b:9050", E::InvalidHost("a..b".into())),
            ("socks5h://.a:9050", E::InvalidHost(".a".into())),
        ];
        for (input, expected) in cases {
            assert_eq!(input.parse::<ProxyAddr>().as_ref(), Err(expected), "{input}");
        }
        let long = format!("socks5h://{}:1", "a".repeat(254));
        assert!(matches!(long.parse::<ProxyAddr>(), Err(E::InvalidHost(_))));
    }

    #[test]
    fn socks5_error_explains_dns_leak() {
        let message = "socks5://127.0.0.1:9050".parse::<ProxyAddr>().unwrap_err().to_string();
        assert!(message.contains("socks5h://"), "{message}");
        assert!(message.contains("DNS"), "{message}");
    }

    #[test]
    fn serde_uses_the_validated_url_form() {
        let addr: ProxyAddr = "socks5h://[::1]:9050".parse().unwrap();
        let bytes = postcard::to_allocvec(&addr).unwrap();
        assert_eq!(bytes, postcard::to_allocvec("socks5h://[::1]:9050").unwrap());
        assert_eq!(postcard::from_bytes::<ProxyAddr>(&bytes).unwrap(), addr);
        let bad = postcard::to_allocvec("socks5://127.0.0.1:9050").unwrap();
        assert!(postcard::from_bytes::<ProxyAddr>(&bad).is_err());
    }

    // ---- pure encoders and decoders ----

    #[test]
    fn encodes_requests() {
        assert_eq!(encode_greeting(), [5, 1, 2]);
        assert_eq!(encode_auth(Username::new("iso").unwrap()), b"\x01\x03iso\x01x");
        assert_eq!(
            encode_connect(Target::new("relay.example").unwrap(), 443),
            b"\x05\x01\x00\x03\x0drelay.example\x01\xbb"
        );
        assert_eq!(
            encode_connect(Target::new("10.1.2.3").unwrap(), 80),
            [5, 1, 0, 1, 10, 1, 2, 3, 0, 80]
        );
        let mut v6 = vec![5, 1, 0, 4];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0x23, 0x82]);
        assert_eq!(encode_connect(Target::new("::1").unwrap(), 9090), v6);
        assert_eq!(encode_connect(Target::new("[::1]").unwrap(), 9090), v6);
        let max = "a".repeat(255);
        let encoded = encode_connect(Target::new(&max).unwrap(), 1);
        assert_eq!(encoded.len(), 4 + 1 + 255 + 2);
        assert_eq!(encoded[4], 255);
    }

    #[test]
    fn targets_are_never_resolved() {
        assert_eq!(Target::new("localhost").unwrap(), Target::Name("localhost"));
        assert_eq!(Target::new("abc.onion").unwrap(), Target::Name("abc.onion"));
        // Not valid Rust IP literals, so sent as names for the proxy.
        assert_eq!(Target::new("010.0.0.1").unwrap(), Target::Name("010.0.0.1"));
        assert_eq!(Target::new("[nothost]").unwrap(), Target::Name("[nothost]"));
    }

    #[test]
    fn rejects_bad_inputs() {
        assert!(matches!(Target::new(""), Err(SocksError::EmptyHost)));
        assert!(matches!(
            Target::new(&"a".repeat(256)),
            Err(SocksError::HostTooLong(256))
        ));
        assert!(matches!(
            Target::new("a\0.onion"),
            Err(SocksError::HostControlCharacter)
        ));
        assert!(matches!(Target::new("a\n"), Err(SocksError::HostControlCharacter)));
        assert!(Username::new(&"u".repeat(255)).is_ok());
        assert!(matches!(Username::new(""), Err(SocksError::UsernameLength(0))));
        assert!(matches!(
            Username::new(&"u".repeat(256)),
            Err(SocksError::UsernameLength(256))
        ));
        assert!(matches!(Username::new("<torS0X>0"), Err(SocksError::ReservedUsername)));
    }

    #[test]
    fn method_choice_accepts_only_username_password() {
        for a in 0..=u8::MAX {
            for b in 0..=u8::MAX {
                let r = check_method_choice([a, b]);
                assert_eq!(r.is_ok(), [a, b] == [5, 2], "{a} {b}");
            }
        }
        assert!(matches!(
            check_method_choice([5, 0xFF]),
            Err(SocksError::NoAcceptableMethod)
        ));
        assert!(matches!(
            check_method_choice([5, 0]),
            Err(SocksError::UnofferedMethod(0))
        ));
        assert!(matches!(
            check_method_choice([4, 2]),
            Err(SocksError::NotSocks5 { got: 4, .. })
        ));
    }

    #[test]
    fn auth_status_accepts_only_success() {
        for a in 0..=u8::MAX {
            for b in 0..=u8::MAX {
                assert_eq!(check_auth_status([a, b]).is_ok(), [a, b] == [1, 0], "{a} {b}");
            }
        }
    }

    #[test]
    fn reply_head_is_fully_checked() {
        for rep in 0..=u8::MAX {
            for atyp in 0..=u8::MAX {
                let r = check_reply_head([5, rep, 0, atyp]);
                let expected = match (rep, atyp) {
                    (0, 1) => Some(BoundAddress::Fixed(6)),
                    (0, 3) => Some(BoundAddress::Name),
                    (0, 4) => Some(BoundAddress::Fixed(18)),
                    _ => None,
                };
                assert_eq!(r.ok(), expected, "{rep} {atyp}");
            }
        }
        for byte in 1..=u8::MAX {
            assert!(check_reply_head([5, 0, byte, 1]).is_err());
            if byte != 5 {
                assert!(check_reply_head([byte, 0, 0, 1]).is_err());
            }
        }
        assert!(matches!(
            check_reply_head([0, 0, 0, 1]),
            Err(SocksError::NotSocks5 { got: 0, .. })
        ));
    }

    #[test]
    fn refusal_messages_name_the_code() {
        assert_eq!(
            SocksError::Refused(4).to_string(),
            "the SOCKS5 proxy refused the connection: host unreachable (code 4)"
        );
        assert_eq!(
            SocksError::Refused(0xF0).to_string(),
            "the SOCKS5 proxy refused the connection: onion service descriptor not found (code 0xf0)"
        );
        assert_eq!(
            SocksError::Refused(9).to_string(),
            "the SOCKS5 proxy refused the connection: unassigned reply code (code 9)"
        );
        for code in 1..=u8::MAX {
            assert!(!SocksError::Refused(code).to_string().is_empty());
        }
    }

    // ---- against an in-process proxy ----

    /// A proxy that accepts one connection and runs `script` on it.
    async fn proxy<F, Fut>(script: F) -> (ProxyAddr, JoinHandle<()>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            script(stream).await;
        });
        (
            ProxyAddr {
                host: "127.0.0.1".to_string(),
                port,
            },
            task,
        )
    }

    async fn expect(stream: &mut TcpStream, expected: &[u8]) {
        let mut got = vec![0u8; expected.len()];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
    }

    /// Checks the greeting and the username `user`, accepting both.
    async fn accept_auth(stream: &mut TcpStream, user: &str) {
        expect(stream, &[5, 1, 2]).await;
        stream.write_all(&[5, 2]).await.unwrap();
        let mut auth = vec![1, user.len() as u8];
        auth.extend_from_slice(user.as_bytes());
        auth.extend_from_slice(&[1, b'x']);
        expect(stream, &auth).await;
        stream.write_all(&[1, 0]).await.unwrap();
    }

    async fn run(proxy: &ProxyAddr, host: &str, port: u16, user: &str) -> io::Result<TcpStream> {
        tokio::time::timeout(Duration::from_secs(10), connect(proxy, host, port, user))
            .await
            .unwrap()
    }

    fn socks_error(e: &io::Error) -> &SocksError {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<SocksError>())
            .unwrap()
    }

    #[tokio::test]
    async fn success_with_a_name_then_echo() {
        let (addr, task) = proxy(|mut s| async move {
            accept_auth(&mut s, "circuit-7").await;
            expect(&mut s, b"\x05\x01\x00\x03\x0drelay.example\x01\xbb").await;
            // A bound name, and the target's first bytes in the same segment:
            // the client must read exactly the reply and leave "early".
            s.write_all(b"\x05\x00\x00\x03\x0abound.name\x1f\x90early")
                .await
                .unwrap();
            let mut buf = [0u8; 64];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n]).await.unwrap();
            }
        })
        .await;
        let mut stream = run(&addr, "relay.example", 443, "circuit-7").await.unwrap();
        let mut early = [0u8; 5];
        stream.read_exact(&mut early).await.unwrap();
        assert_eq!(&early, b"early");
        stream.write_all(b"ping").await.unwrap();
        let mut pong = [0u8; 4];
        stream.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"ping");
        drop(stream);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn ipv4_target_with_an_ipv6_bound_address() {
        let (addr, task) = proxy(|mut s| async move {
            accept_auth(&mut s, "u").await;
            expect(&mut s, &[5, 1, 0, 1, 192, 0, 2, 1, 0x1f, 0x90]).await;
            let mut reply = vec![5, 0, 0, 4];
            reply.extend_from_slice(&[0xAB; 16]);
            reply.extend_from_slice(&[0, 1]);
            reply.extend_from_slice(b"!");
            s.write_all(&reply).await.unwrap();
        })
        .await;
        let mut stream = run(&addr, "192.0.2.1", 8080, "u").await.unwrap();
        let mut bang = [0u8; 1];
        stream.read_exact(&mut bang).await.unwrap();
        assert_eq!(&bang, b"!");
        task.await.unwrap();
    }

    #[tokio::test]
    async fn ipv6_target_with_an_ipv4_bound_address() {
        for host in ["::1", "[::1]"] {
            let (addr, task) = proxy(|mut s| async move {
                accept_auth(&mut s, "u").await;
                let mut request = vec![5, 1, 0, 4];
                request.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
                request.extend_from_slice(&[0, 80]);
                expect(&mut s, &request).await;
                s.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 80]).await.unwrap();
            })
            .await;
            run(&addr, host, 80, "u").await.unwrap();
            task.await.unwrap();
        }
    }

    #[tokio::test]
    async fn refusal_codes_are_reported() {
        let cases = [
            (1u8, io::ErrorKind::Other, "general SOCKS server failure (code 1)"),
            (
                2,
                io::ErrorKind::PermissionDenied,
                "connection not allowed by ruleset (code 2)",
            ),
            (3, io::ErrorKind::NetworkUnreachable, "network unreachable (code 3)"),
            (4, io::ErrorKind::HostUnreachable, "host unreachable (code 4)"),
            (5, io::ErrorKind::ConnectionRefused, "connection refused (code 5)"),
            (6, io::ErrorKind::TimedOut, "TTL expired (code 6)"),
            (7, io::ErrorKind::Unsupported, "command not supported (code 7)"),
            (8, io::ErrorKind::Unsupported, "address type not supported (code 8)"),
            (
                0xF2,
                io::ErrorKind::HostUnreachable,
                "onion service introduction failed (code 0xf2)",
            ),
            (0x42, io::ErrorKind::Other, "unassigned reply code (code 0x42)"),
        ];
        for (code, kind, text) in cases {
            let (addr, task) = proxy(move |mut s| async move {
                accept_auth(&mut s, "u").await;
                expect(&mut s, b"\x05\x01\x00\x03\x07x.onion\x00\x50").await;
                // RFC 1928: on failure the address fields are still present.
                s.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await.unwrap();
            })
            .await;
            let err = run(&addr, "x.onion", 80, "u").await.unwrap_err();
            assert_eq!(err.kind(), kind, "{code}");
            assert_eq!(
                err.to_string(),
                format!("the SOCKS5 proxy refused the connection: {text}")
            );
            assert!(matches!(socks_error(&err), SocksError::Refused(c) if *c == code));
            task.await.unwrap();
        }
    }

    #[tokio::test]
    async fn no_acceptable_method() {
        let (addr, task) = proxy(|mut s| async move {
            expect(&mut s, &[5, 1, 2]).await;
            s.write_all(&[5, 0xFF]).await.unwrap();
        })
        .await;
        let err = run(&addr, "x.onion", 80, "u").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(matches!(socks_error(&err), SocksError::NoAcceptableMethod), "{err}");
        assert!(err.to_string().contains("username/password"), "{err}");
        task.await.unwrap();
    }

    #[tokio::test]
    async fn unoffered_method() {
        let (addr, task) = proxy(|mut s| async move {
            expect(&mut s, &[5, 1, 2]).await;
            s.write_all(&[5, 0]).await.unwrap();
        })
        .await;
        let err = run(&addr, "x.onion", 80, "u").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(matches!(socks_error(&err), SocksError::UnofferedMethod(0)), "{err}");
        task.await.unwrap();
    }

    #[tokio::test]
    async fn garbage_from_a_non_socks_server() {
        let (addr, task) = proxy(|mut s| async move {
            expect(&mut s, &[5, 1, 2]).await;
            s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await.unwrap();
        })
        .await;
        let err = run(&addr, "x.onion", 80, "u").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            matches!(socks_error(&err), SocksError::NotSocks5 { got: b'H', .. }),
            "{err}"
        );
        assert!(err.to_string().contains("does not speak SOCKS5"), "{err}");
        task.await.unwrap();
    }

    #[tokio::test]
    async fn malformed_replies() {
        type Check = fn(&SocksError) -> bool;
        let cases: [(&[u8], Check); 6] = [
            (&[2, 0], |e| matches!(e, SocksError::BadAuthVersion(2))),
            (&[1, 1], |e| matches!(e, SocksError::AuthRejected(1))),
            (&[1, 0, 4, 0, 0, 1], |e| {
                matches!(e, SocksError::NotSocks5 { got: 4, .. })
            }),
            (&[1, 0, 5, 0, 7, 1], |e| matches!(e, SocksError::BadReserved(7))),
            (&[1, 0, 5, 0, 0, 2], |e| matches!(e, SocksError::BadAddressType(2))),
            (&[1, 0, 5, 0, 0, 3, 0, 0, 0], |e| {
                matches!(e, SocksError::EmptyBoundName)
            }),
        ];
        for (reply, check) in cases {
            let (addr, task) = proxy(move |mut s| async move {
                expect(&mut s, &[5, 1, 2]).await;
                s.write_all(&[5, 2]).await.unwrap();
                expect(&mut s, b"\x01\x01u\x01x").await;
                // The auth status, then (if it is a success) the CONNECT reply.
                s.write_all(&reply[..2]).await.unwrap();
                if reply.len() > 2 {
                    let mut request = [0u8; 14];
                    s.read_exact(&mut request).await.unwrap();
                    s.write_all(&reply[2..]).await.unwrap();
                }
                // Keep the connection open until the client gives up.
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest).await;
            })
            .await;
            let err = run(&addr, "x.onion", 80, "u").await.unwrap_err();
            let inner = socks_error(&err);
            assert!(check(inner), "{reply:?}: {inner:?}");
            assert_eq!(err.kind(), inner.kind());
            task.await.unwrap();
        }
    }

    #[tokio::test]
    async fn proxy_closes_mid_handshake() {
        // Everything a good proxy sends; it closes after the first `cut` bytes,
        // having read everything the client sent so far (so the close is a
        // clean end of stream, not a reset).
        let good: &'static [u8] = b"\x05\x02\x01\x00\x05\x00\x00\x03\x05bound\x00\x50";
        for cut in 0..good.len() {
            let (addr, task) = proxy(move |mut s| async move {
                expect(&mut s, &[5, 1, 2]).await;
                s.write_all(&good[..cut.min(2)]).await.unwrap();
                if cut >= 2 {
                    expect(&mut s, b"\x01\x01u\x01x").await;
                    s.write_all(&good[2..cut.min(4)]).await.unwrap();
                }
                if cut >= 4 {
                    expect(&mut s, b"\x05\x01\x00\x03\x07x.onion\x00\x50").await;
                    s.write_all(&good[4..cut]).await.unwrap();
                }
            })
            .await;
            let err = run(&addr, "x.onion", 80, "u").await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}: {err}");
            assert!(
                matches!(socks_error(&err), SocksError::Closed(_)),
                "cut at {cut}: {err}"
            );
            assert!(
                err.to_string()
                    .starts_with("the SOCKS5 proxy closed the connection while"),
                "{err}"
            );
            task.await.unwrap();
        }
        // The same conversation in full succeeds.
        let (addr, task) = proxy(move |mut s| async move {
            accept_auth(&mut s, "u").await;
            expect(&mut s, b"\x05\x01\x00\x03\x07x.onion\x00\x50").await;
            s.write_all(&good[4..]).await.unwrap();
        })
        .await;
        run(&addr, "x.onion", 80, "u").await.unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn bad_inputs_fail_before_connecting() {
        // A listener that is never accepted from: a handshake would hang.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = ProxyAddr {
            host: "127.0.0.1".to_string(),
            port: listener.local_addr().unwrap().port(),
        };
        let long = "a".repeat(256);
        let cases = [
            ("", 80, "u"),
            (long.as_str(), 80, "u"),
            ("a\0b", 80, "u"),
            ("x.onion", 0, "u"),
            ("x.onion", 80, ""),
            ("x.onion", 80, long.as_str()),
            ("x.onion", 80, "<torS0X>1"),
        ];
        for (host, port, user) in cases {
            let err = run(&addr, host, port, user).await.unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::InvalidInput,
                "{host:?} {port} {user:?}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn unreachable_proxy() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = ProxyAddr {
            host: "127.0.0.1".to_string(),
            port: listener.local_addr().unwrap().port(),
        };
        drop(listener);
        let err = run(&addr, "x.onion", 80, "u").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("could not connect to the SOCKS5 proxy at {addr}")),
            "{message}"
        );
    }
}
