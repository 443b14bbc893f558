//! A connection to one relay: TLS 1.3, then WebSocket, then request/response frames. The
//! relay's hello proves that the TLS certificate is vouched for by the identity the
//! address's PIN names (`relay_identity::check`).

use std::sync::Arc;
use std::time::Duration;

use backchannel_core::forward::{self, AnswerKey, SESSION_LEN};
use backchannel_core::frame::{
    decode_response, encode_request, forwardable, hello_identity, hello_version, ErrorCode, Request, Response,
    ResponseAssembler, PROTOCOL_VERSION,
};
use backchannel_core::relay_address::RelayAddress;
use backchannel_core::relay_identity::{self, IdentityError};

use crate::socks::ProxyAddr;
use futures_util::{SinkExt, StreamExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Time allowed to connect and complete the handshakes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed for a relay to answer a request, beyond any long-poll wait it
/// asked for: a relay (or a path through Tor) that stops answering without
/// closing the connection is treated as a broken connection.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// A relay could not be reached or spoke wrongly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// TCP connection failed.
    #[error("the relay at {relay} is unreachable; check that it is running and the address is right")]
    Unreachable {
        /// The relay's host and port.
        relay: String,
        /// The connect error, when there was one (none after a timeout).
        #[source]
        source: Option<std::io::Error>,
    },
    /// The SOCKS5 proxy failed or refused.
    #[error("the proxy {proxy} could not connect to the relay ({source}); check that the proxy (e.g. Tor) is running")]
    Proxy {
        /// The proxy's address.
        proxy: String,
        /// What the proxy said, or how talking to it failed (a
        /// [`SocksError`](crate::socks::SocksError) inside, see `get_ref`).
        #[source]
        source: std::io::Error,
    },
    /// The certificate does not match the pin.
    #[error("the relay at {0} presented a different key than its address pins; someone may be intercepting the connection, or the relay was reinstalled: get its current address from its operator")]
    PinMismatch(String),
    /// The relay's credential for its TLS key is not valid at this device's time.
    #[error("the relay at {0} presented a credential that is not valid now; check this device's clock, or ask the relay's operator to restart it (a relay's credential lasts five years from its start)")]
    StaleCredential(String),
    /// The relay speaks a newer protocol version than this client.
    #[error("the relay at {0} speaks a newer protocol; upgrade backchannel on this device")]
    RelayNewer(String),
    /// The relay speaks an older protocol version than this client.
    #[error("the relay at {0} is older than this client; ask its operator to upgrade it")]
    RelayOlder(String),
    /// The relay refused a request.
    #[error("the relay refused: {0}")]
    Refused(ErrorCode, u64),
    /// The relay broke the protocol or closed the connection.
    #[error("the connection to the relay at {relay} failed; try again")]
    Broken {
        /// The relay's host and port.
        relay: String,
        /// What went wrong on the connection.
        #[source]
        why: Breakage,
    },
}

/// How a connection to a relay broke (the source of [`ConnectError::Broken`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Breakage {
    /// TLS could not be set up on this side.
    #[error("TLS could not be configured")]
    TlsSetup(#[source] rustls::Error),
    /// The TLS handshake failed (not on the pin: that is [`ConnectError::PinMismatch`]).
    #[error("the TLS handshake failed")]
    Handshake(#[source] std::io::Error),
    /// The WebSocket upgrade, a read or a write failed.
    #[error("the WebSocket connection failed")]
    WebSocket(#[source] Box<tokio_tungstenite::tungstenite::Error>),
    /// The relay sent a frame this client cannot decode.
    #[error("the relay's answer could not be decoded")]
    Garbled(#[source] backchannel_core::frame::FrameError),
    /// The relay sent an answer that does not fit the request.
    #[error("the relay's answer did not fit the request")]
    Unexpected,
    /// The relay closed the connection.
    #[error("the relay closed the connection")]
    Closed,
    /// The relay did not answer in time.
    #[error("the relay did not answer in time")]
    Timeout,
    /// The task that held the connection ended.
    #[error("the connection's task ended")]
    TaskEnded,
}

impl From<tokio_tungstenite::tungstenite::Error> for Breakage {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        Breakage::WebSocket(Box::new(e))
    }
}

impl ConnectError {
    /// A broken connection to `relay`, with why.
    pub fn broken(relay: impl Into<String>, why: Breakage) -> Self {
        ConnectError::Broken {
            relay: relay.into(),
            why,
        }
    }

    /// Whether this is a relay refusal with `code`.
    pub fn is(&self, code: ErrorCode) -> bool {
        matches!(self, ConnectError::Refused(c, _) if *c == code)
    }
}

#[derive(Debug)]
/// Takes note of the certificate the relay presents; whether it is the relay's is decided
/// after the hello, from the identity and credential the hello carries
/// (`relay_identity::check`). rustls still checks that the relay holds the certificate's key
/// (its handshake signature, `verify_tls13_signature`). Nothing is sent on the connection
/// before that check but the WebSocket upgrade, which carries nothing of the user's.
struct PinVerifier {
    presented: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.presented.lock() {
            Ok(mut presented) => {
                *presented = Some(end_entity.to_vec());
                Ok(ServerCertVerified::assertion())
            }
            Err(_) => Err(rustls::Error::General("the certificate could not be kept".into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not accepted".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// An open, pinned connection to a relay.
/// What a connection checks the relay's identity against.
#[derive(Clone, Copy)]
enum Expect {
    /// The address's PIN.
    Pin(backchannel_core::relay_address::Pin),
    /// The first 16 bytes of the PIN (a short drop address).
    Prefix([u8; 16]),
}

pub struct RelayConnection {
    ws: Ws,
    nonce: [u8; 32],
    next_id: u32,
    authority: String,
    /// The relay's identity certificate and credential, from its hello.
    identity: (Vec<u8>, Vec<u8>),
    /// Where this connection's requests are forwarded to, if anywhere
    /// ([`RelayConnection::forward_to`]).
    forward: Option<Forwarding>,
}

/// The session a forwarded request is sealed in ([`RelayConnection::outgoing`]): a commit's
/// deposit and its claim in `current` (then a fresh one for the next commit), anything else
/// in a fresh one of its own.
fn session_for(req: &Request, current: &mut [u8; SESSION_LEN]) -> [u8; SESSION_LEN] {
    match req {
        Request::Deposit { .. } => *current,
        Request::ClaimCommit { .. } => std::mem::replace(current, crate::session::random_id()),
        _ => crate::session::random_id(),
    }
}

/// A connection to our home relay that forwards to another relay (docs/protocol.md,
/// "Forwarding").
struct Forwarding {
    /// The destination relay.
    to: RelayAddress,
    /// Its forward key, from its credential (checked against its PIN).
    key: Vec<u8>,
    /// The session of the commit being deposited, at the destination (which keeps a deposit
    /// per session): a commit's parts and its claim share it, and nothing else does.
    session: [u8; SESSION_LEN],
}

impl std::fmt::Debug for RelayConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayConnection(..)")
    }
}

/// `connect` done within [`CONNECT_TIMEOUT`], or the relay is unreachable.
async fn within_connect_timeout(
    authority: &str,
    connect: impl std::future::Future<Output = Result<RelayConnection, ConnectError>>,
) -> Result<RelayConnection, ConnectError> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .unwrap_or_else(|_| {
            Err(ConnectError::Unreachable {
                relay: authority.to_string(),
                source: None,
            })
        })
}

impl RelayConnection {
    /// Connects to `addr` directly, checking the pin, and reads the relay's hello.
    pub async fn connect(addr: &RelayAddress) -> Result<Self, ConnectError> {
        Self::connect_via(addr, None).await
    }

    /// Connects to `addr`, through a SOCKS5 proxy if one is given (each
    /// connection with its own isolation username, so that Tor gives it its
    /// own circuit), checking the pin, and reads the relay's hello.
    pub async fn connect_via(addr: &RelayAddress, proxy: Option<&ProxyAddr>) -> Result<Self, ConnectError> {
        let authority = addr.authority();
        within_connect_timeout(
            &authority,
            Self::connect_inner(addr, Expect::Pin(addr.pin()), proxy, &authority),
        )
        .await
    }

    /// Connects to the relay at `host:port` whose PIN starts with `prefix` (a short address
    /// carries the first 16 bytes), through a SOCKS5 proxy if one is given; its whole address,
    /// with the PIN it proved, is then [`RelayConnection::address`].
    pub async fn connect_by_prefix(
        host: &str,
        port: u16,
        prefix: [u8; 16],
        proxy: Option<&ProxyAddr>,
    ) -> Result<Self, ConnectError> {
        let addr = RelayAddress {
            pin: [0; 32],
            host: host.to_string(),
            port,
        };
        let authority = addr.authority();
        within_connect_timeout(
            &authority,
            Self::connect_inner(&addr, Expect::Prefix(prefix), proxy, &authority),
        )
        .await
    }

    /// The address of the relay this connection reached, with the PIN its identity proved.
    pub fn address(&self, host: &str, port: u16) -> RelayAddress {
        RelayAddress {
            pin: backchannel_core::relay_address::Pin::of_certificate(&self.identity.0).0,
            host: host.to_string(),
            port,
        }
    }

    /// Connects to `addr` over `tcp`, a connection the caller made to it (from an address
    /// of its choosing, say), checking the pin, and reads the relay's hello.
    pub async fn connect_over(addr: &RelayAddress, tcp: TcpStream) -> Result<Self, ConnectError> {
        let authority = addr.authority();
        within_connect_timeout(&authority, Self::handshake(Expect::Pin(addr.pin()), tcp, &authority)).await
    }

    async fn connect_inner(
        addr: &RelayAddress,
        expect: Expect,
        proxy: Option<&ProxyAddr>,
        authority: &str,
    ) -> Result<Self, ConnectError> {
        let tcp =
            match proxy {
                None => TcpStream::connect((addr.host.as_str(), addr.port)).await.map_err(|e| {
                    ConnectError::Unreachable {
                        relay: authority.to_string(),
                        source: Some(e),
                    }
                })?,
                Some(p) => {
                    let isolation = crate::session::hex(&crate::session::random_id::<16>());
                    crate::socks::connect(p, &addr.host, addr.port, &isolation)
                        .await
                        .map_err(|source| ConnectError::Proxy {
                            proxy: p.to_string(),
                            source,
                        })?
                }
            };
        Self::handshake(expect, tcp, authority).await
    }

    /// TLS (the certificate checked against the PIN), the WebSocket upgrade and the hello.
    async fn handshake(expect: Expect, tcp: TcpStream, authority: &str) -> Result<Self, ConnectError> {
        // X25519MLKEM768 only (`core::tls`).
        let provider = Arc::new(backchannel_core::tls::provider());
        let presented = Arc::new(std::sync::Mutex::new(None));
        let verifier = PinVerifier {
            presented: presented.clone(),
            provider: provider.clone(),
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ConnectError::broken(authority, Breakage::TlsSetup(e)))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let _ = tcp.set_nodelay(true);
        // An address, not a name: rustls then sends no SNI, so the ClientHello names nothing
        // (the certificate is checked against the PIN only, `PinVerifier`).
        let name = ServerName::IpAddress(std::net::IpAddr::from([0, 0, 0, 0]).into());
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| ConnectError::broken(authority, Breakage::Handshake(e)))?;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(1024 * 1024))
            .max_frame_size(Some(1024 * 1024));
        let url = format!("wss://{authority}/v1");
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, tls, Some(ws_config))
            .await
            .map_err(|e| ConnectError::broken(authority, e.into()))?;
        let mut conn = Self {
            ws,
            nonce: [0; 32],
            next_id: 1,
            authority: authority.to_string(),
            identity: (Vec::new(), Vec::new()),
            forward: None,
        };
        // The relay's version first, from the prefix every version keeps: a relay of
        // another version is told apart before the rest of its hello is parsed.
        let first = match conn.ws.next().await {
            Some(Ok(Message::Binary(b))) => b,
            Some(Err(e)) => return Err(ConnectError::broken(&conn.authority, e.into())),
            Some(Ok(_)) => return Err(ConnectError::broken(&conn.authority, Breakage::Unexpected)),
            None => return Err(ConnectError::broken(&conn.authority, Breakage::Closed)),
        };
        let tls_cert = presented.lock().ok().and_then(|p| p.clone()).unwrap_or_default();
        let verify = |identity: &[u8], credential: &[u8], authority: &str| {
            let now = crate::engine::now_ms() / 1000;
            let pin = match expect {
                Expect::Pin(pin) => pin,
                // The PIN the identity gives, if it starts as the short address says.
                Expect::Prefix(prefix) => {
                    let pin = backchannel_core::relay_address::Pin::of_certificate(identity);
                    if pin.0[..16] != prefix {
                        return Err(ConnectError::PinMismatch(authority.to_string()));
                    }
                    pin
                }
            };
            match relay_identity::check(&pin, identity, credential, &tls_cert, now) {
                Ok(_) => Ok(()),
                Err(IdentityError::Expired) => Err(ConnectError::StaleCredential(authority.to_string())),
                Err(_) => Err(ConnectError::PinMismatch(authority.to_string())),
            }
        };
        if let Some(version) = hello_version(&first) {
            // A relay of version 5 or later proves its identity in the prefix those versions
            // keep, before its word on versions is taken ("upgrade this device" from someone
            // on the path who is not the relay would be a lure). Earlier relays cannot.
            if version != PROTOCOL_VERSION {
                if let Some((identity, credential)) = hello_identity(&first) {
                    verify(&identity, &credential, &conn.authority)?;
                }
            }
            conn.check_version(version)?;
        }
        let frame = decode_response(&first).map_err(|e| ConnectError::broken(&conn.authority, Breakage::Garbled(e)))?;
        match (frame.id, frame.response) {
            (
                _,
                Response::Hello {
                    nonce,
                    identity,
                    credential,
                    ..
                },
            ) => {
                verify(&identity, &credential, &conn.authority)?;
                conn.nonce = nonce;
                conn.identity = (identity, credential);
                Ok(conn)
            }
            (_, Response::Error { code, detail }) => Err(ConnectError::Refused(code, detail)),
            _ => Err(ConnectError::broken(&conn.authority, Breakage::Unexpected)),
        }
    }

    /// Refuses a relay of another protocol version, naming the side to upgrade.
    fn check_version(&self, relay: u8) -> Result<(), ConnectError> {
        match relay.cmp(&PROTOCOL_VERSION) {
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Greater => Err(ConnectError::RelayNewer(self.authority.clone())),
            std::cmp::Ordering::Less => Err(ConnectError::RelayOlder(self.authority.clone())),
        }
    }

    /// A refusal, or the version error it stands for: a relay that could not parse a
    /// request answers `Malformed` with its protocol version as the detail (0 from
    /// relays before that rule, which says nothing).
    fn refusal(&self, code: ErrorCode, detail: u64) -> ConnectError {
        if code == ErrorCode::Malformed && detail != 0 {
            if let Err(e) = self.check_version(u8::try_from(detail).unwrap_or(u8::MAX)) {
                return e;
            }
        }
        ConnectError::Refused(code, detail)
    }

    /// The per-connection nonce that open proofs sign.
    pub fn nonce(&self) -> &[u8; 32] {
        &self.nonce
    }

    /// The relay's identity certificate and credential, as its hello presented them
    /// (checked against the address's PIN).
    pub fn identity(&self) -> (&[u8], &[u8]) {
        (&self.identity.0, &self.identity.1)
    }

    /// Makes this connection (to our home relay) forward every forwardable request to the
    /// relay at `to` (docs/protocol.md, "Forwarding"): asks the home relay for `to`'s
    /// identity and credential, checks them against `to`'s PIN as if connected to it, and
    /// seals each request to its forward key from then on. `Ping` and `Paced` still go to
    /// the home relay itself.
    pub async fn forward_to(mut self, to: &RelayAddress) -> Result<Self, ConnectError> {
        let answer = self.request(&Request::Identify { relay: to.clone() }).await;
        let (identity, credential) = match answer {
            Ok(Response::Identity { identity, credential }) => (identity, credential),
            Err(e) if e.is(ErrorCode::Unreachable) => {
                return Err(ConnectError::Unreachable {
                    relay: to.authority(),
                    source: None,
                })
            }
            Err(e) => return Err(e),
            Ok(_) => return Err(ConnectError::broken(&self.authority, Breakage::Unexpected)),
        };
        let now = crate::engine::now_ms() / 1000;
        let credential = match relay_identity::check_forward(&to.pin(), &identity, &credential, now) {
            Ok(c) => c,
            Err(IdentityError::Expired) => return Err(ConnectError::StaleCredential(to.authority())),
            Err(_) => return Err(ConnectError::PinMismatch(to.authority())),
        };
        self.forward = Some(Forwarding {
            to: to.clone(),
            key: credential.forward_key,
            session: crate::session::random_id::<SESSION_LEN>(),
        });
        Ok(self)
    }

    /// The frame `req` goes out as, and the key of its sealed answer when it is forwarded.
    ///
    /// Each forwarded request has a fresh encapsulation and, but for a commit's deposit and
    /// its claim, a fresh session: the destination cannot tell that two of them came from one
    /// sender, or one connection. A claim ends its session.
    fn outgoing(&mut self, id: u32, req: &Request) -> Result<(Vec<u8>, Option<AnswerKey>), ConnectError> {
        let authority = self.authority.clone();
        let Some(f) = self
            .forward
            .as_mut()
            .filter(|_| !matches!(req, Request::Ping | Request::Paced))
        else {
            return Ok((encode_request(id, req), None));
        };
        if !forwardable(req) {
            return Err(ConnectError::broken(authority, Breakage::Unexpected));
        }
        let session = session_for(req, &mut f.session);
        let (sealed, key) = forward::seal(&f.key, &f.to.pin, &session, req)
            .map_err(|_| ConnectError::broken(f.to.authority(), Breakage::Unexpected))?;
        let frame = encode_request(
            id,
            &Request::Forward {
                to: f.to.clone(),
                sealed,
            },
        );
        Ok((frame, Some(key)))
    }

    /// The answer to a request that went out with `key`: the destination's, opened.
    fn incoming(&self, resp: Response, key: Option<&AnswerKey>) -> Result<Response, ConnectError> {
        let (Some(key), Some(f)) = (key, self.forward.as_ref()) else {
            return match resp {
                Response::Error { code, detail } => Err(self.refusal(code, detail)),
                other => Ok(other),
            };
        };
        match resp {
            Response::Sealed(sealed) => match forward::open_answer(key, &sealed) {
                Ok(Response::Error { code, detail }) => Err(self.refusal(code, detail)),
                Ok(other) => Ok(other),
                Err(_) => Err(ConnectError::broken(f.to.authority(), Breakage::Unexpected)),
            },
            // The home relay could not reach the destination: as if we could not.
            Response::Error {
                code: ErrorCode::Unreachable,
                ..
            } => Err(ConnectError::Unreachable {
                relay: f.to.authority(),
                source: None,
            }),
            // The destination's forward key changed (it restarted): this connection is done
            // for; the next one asks for the new key.
            Response::Error {
                code: ErrorCode::Unsealed,
                ..
            } => Err(ConnectError::broken(f.to.authority(), Breakage::Closed)),
            Response::Error { code, detail } => Err(self.refusal(code, detail)),
            _ => Err(ConnectError::broken(&self.authority, Breakage::Unexpected)),
        }
    }

    /// Reads one whole response (a fetch's envelopes span several frames).
    async fn read_response(&mut self) -> Result<(u32, Response), ConnectError> {
        let broken = |why| ConnectError::broken(&self.authority, why);
        let mut asm = ResponseAssembler::default();
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    let frame = decode_response(&b).map_err(|e| broken(Breakage::Garbled(e)))?;
                    if let Some(done) = asm.push(frame).map_err(|e| broken(Breakage::Garbled(e)))? {
                        return Ok(done);
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) | None => return Err(broken(Breakage::Closed)),
                Some(Ok(_)) => return Err(broken(Breakage::Unexpected)),
                Some(Err(e)) => return Err(broken(e.into())),
            }
        }
    }

    /// Sends raw bytes as one frame and returns the relay's answer (for tests
    /// that play a hostile client).
    pub async fn send_raw(&mut self, bytes: Vec<u8>) -> Result<Response, ConnectError> {
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .map_err(|e| ConnectError::broken(&self.authority, e.into()))?;
        Ok(self.read_response().await?.1)
    }

    /// Sends one request and waits for its response; a refusal becomes `Err`.
    pub async fn request(&mut self, req: &Request) -> Result<Response, ConnectError> {
        let mut out = self.pipeline(std::slice::from_ref(req)).await?;
        out.pop()
            .unwrap_or_else(|| Err(ConnectError::broken(&self.authority, Breakage::Unexpected)))
    }

    /// Sends several requests back to back, then reads their responses in order.
    pub async fn pipeline(&mut self, reqs: &[Request]) -> Result<Vec<Result<Response, ConnectError>>, ConnectError> {
        let wait: u64 = reqs
            .iter()
            .map(|r| match r {
                Request::Fetch { wait_ms, .. } => u64::from(*wait_ms),
                _ => 0,
            })
            .sum();
        let deadline = RESPONSE_TIMEOUT + Duration::from_millis(wait);
        match tokio::time::timeout(deadline, self.pipeline_inner(reqs)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::broken(&self.authority, Breakage::Timeout)),
        }
    }

    async fn pipeline_inner(&mut self, reqs: &[Request]) -> Result<Vec<Result<Response, ConnectError>>, ConnectError> {
        let first = self.next_id;
        let mut keys = Vec::with_capacity(reqs.len());
        for req in reqs {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            let (frame, key) = self.outgoing(id, req)?;
            keys.push(key);
            self.ws
                .feed(Message::Binary(frame.into()))
                .await
                .map_err(|e| ConnectError::broken(&self.authority, e.into()))?;
        }
        self.ws
            .flush()
            .await
            .map_err(|e| ConnectError::broken(&self.authority, e.into()))?;
        let mut out = Vec::with_capacity(reqs.len());
        for i in 0..reqs.len() {
            let (id, resp) = self.read_response().await?;
            if id != first.wrapping_add(i as u32) {
                return Err(ConnectError::broken(&self.authority, Breakage::Unexpected));
            }
            let key = keys.get(i).and_then(Option::as_ref);
            out.push(self.incoming(resp, key));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The destination sees each forwarded request's session: only a commit's deposit and
    /// its claim share one, so it cannot tie two sends (or a send and a commit) to one sender.
    #[test]
    fn only_a_commits_deposit_and_claim_share_a_session() {
        let mut current = crate::session::random_id();
        let send = Request::Send {
            send: [1; 32],
            envelope: backchannel_core::envelope::Envelope::from_bytes(&[0; backchannel_core::envelope::ENVELOPE_SIZE])
                .unwrap_or_else(|_| unreachable!()),
            pow: 0,
        };
        let part = |part| Request::Deposit {
            part,
            total: 2,
            bytes: vec![1],
        };
        let claim = Request::ClaimCommit {
            send: [1; 32],
            epoch: 1,
            key: [2; 32],
            next: [3; 32],
            digest: [4; 32],
        };
        let sends: Vec<_> = (0..3).map(|_| session_for(&send, &mut current)).collect();
        let deposit = [session_for(&part(0), &mut current), session_for(&part(1), &mut current)];
        let claimed = session_for(&claim, &mut current);
        let next = session_for(&part(0), &mut current);
        assert_eq!(deposit[0], deposit[1]);
        assert_eq!(claimed, deposit[0], "a claim names its deposit's session");
        assert_ne!(next, claimed, "the next commit has a session of its own");
        let mut all = sends.clone();
        all.push(claimed);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 4, "every send in a session of its own");
    }
}
