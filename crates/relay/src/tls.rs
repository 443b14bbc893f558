//! The relay's identity: a self-signed certificate made on first start and kept in the
//! data directory (or in the NATS cluster), so restarts keep the same pin; and the keys it
//! uses on the wire, made at each start and vouched for by the identity
//! ([`TlsIdentity::wire_keys`], docs/protocol.md, "Relay identity").

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use backchannel_core::relay_address::Pin;
use backchannel_core::relay_identity::Credential;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::SignatureScheme;
use zeroize::Zeroizing;

use crate::RelayError;

/// The relay's TLS private key in the data directory (DER).
pub const TLS_KEY_FILE: &str = "relay-key.der";
/// The relay's self-signed certificate in the data directory (DER); its SHA-256 is the PIN.
pub const TLS_CERT_FILE: &str = "relay-cert.der";

/// How long a credential made at start stays valid: a relay running longer must be
/// restarted to make a new one (key rollover while running is issue 21's).
pub const CREDENTIAL_LIFETIME: std::time::Duration = std::time::Duration::from_secs(5 * 365 * 86_400);

/// What a relay uses on the wire (docs/protocol.md, "Relay identity"): a TLS certificate
/// made at start, and what its hello carries to vouch for it.
pub struct WireKeys {
    /// The TLS configuration with the fresh certificate.
    pub server_config: Arc<rustls::ServerConfig>,
    /// The fresh TLS certificate (DER).
    pub tls_cert: Vec<u8>,
    /// The identity certificate (its SHA-256 is the PIN).
    pub identity_cert: Vec<u8>,
    /// The identity's credential for the TLS certificate and the forward key.
    pub credential: Vec<u8>,
    /// The forward key pair of this run (docs/protocol.md, "Forwarding"), in memory only.
    pub forward: Arc<backchannel_core::forward::ForwardKeys>,
    /// The identity key, which signs this relay's proof when it forwards
    /// ([`WireKeys::forwarder_proof`]).
    identity_key: Arc<dyn rustls::sign::SigningKey>,
}

impl WireKeys {
    /// These keys with another identity certificate and credential in the hello: only for
    /// tests that play a relay replaying another relay's hello.
    #[doc(hidden)]
    pub fn replaying(&self, identity_cert: Vec<u8>, credential: Vec<u8>) -> Self {
        Self {
            server_config: self.server_config.clone(),
            tls_cert: self.tls_cert.clone(),
            identity_cert,
            credential,
            forward: self.forward.clone(),
            identity_key: self.identity_key.clone(),
        }
    }

    /// The proof a forwarding connection sends first ([`Request::Forwarder`]): the identity
    /// certificate and the identity key's signature over the label and the destination's
    /// hello `nonce`.
    ///
    /// [`Request::Forwarder`]: backchannel_core::frame::Request::Forwarder
    pub fn forwarder_proof(&self, nonce: &[u8; 32]) -> Result<backchannel_core::frame::Request, RelayError> {
        let signer = self
            .identity_key
            .choose_scheme(SCHEMES)
            .ok_or_else(|| RelayError::Tls("no signature scheme for the identity key".into()))?;
        let mut message = backchannel_core::forward::FORWARDER_LABEL.to_vec();
        message.extend_from_slice(nonce);
        let signature = signer.sign(&message).map_err(|e| RelayError::Tls(e.to_string()))?;
        Ok(backchannel_core::frame::Request::Forwarder {
            identity: self.identity_cert.clone(),
            scheme: u16::from(signer.scheme()),
            signature,
        })
    }
}

/// The schemes an identity key may sign with.
const SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
];

/// The relay's certificate and key, loaded or freshly made: its identity.
pub struct TlsIdentity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsIdentity({})", self.pin())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

impl TlsIdentity {
    /// Loads the identity from `dir`, creating it on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, RelayError> {
        let key_path = dir.join(TLS_KEY_FILE);
        let cert_path = dir.join(TLS_CERT_FILE);
        if key_path.exists() && cert_path.exists() {
            let key = fs::read(&key_path).map_err(|e| RelayError::io("reading the relay key", e))?;
            let cert = fs::read(&cert_path).map_err(|e| RelayError::io("reading the relay certificate", e))?;
            return Ok(Self {
                cert: CertificateDer::from(cert),
                key: PrivatePkcs8KeyDer::from(key),
            });
        }
        let made = Self::generate()?;
        write_private(&key_path, made.key.secret_pkcs8_der())
            .map_err(|e| RelayError::io("writing the relay key", e))?;
        write_private(&cert_path, made.cert.as_ref())
            .map_err(|e| RelayError::io("writing the relay certificate", e))?;
        Ok(made)
    }

    /// A fresh self-signed identity. Its certificate carries nothing a prober could match
    /// across relays: a random name, an empty subject, and validity from the start of this
    /// year (clients check only its hash, the PIN). Relays made before keep theirs, and so
    /// their PIN.
    pub fn generate() -> Result<Self, RelayError> {
        use rand_core::{OsRng, RngCore};
        let failed = |_| RelayError::Tls("could not generate the relay certificate".into());
        let mut label = [0u8; 8];
        OsRng.fill_bytes(&mut label);
        let name: String = label.iter().map(|b| format!("{b:02x}")).collect();
        let mut params = rcgen::CertificateParams::new(vec![name]).map_err(failed)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let year = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(2026, |d| 1970 + (d.as_secs() / 31_556_952) as i32);
        params.not_before = rcgen::date_time_ymd(year, 1, 1);
        params.not_after = rcgen::date_time_ymd(year + 25, 1, 1);
        let key_pair = rcgen::KeyPair::generate().map_err(failed)?;
        let cert = params.self_signed(&key_pair).map_err(failed)?;
        Ok(Self {
            cert: CertificateDer::from(cert.der().to_vec()),
            key: PrivatePkcs8KeyDer::from(key_pair.serialize_der()),
        })
    }

    /// The identity as one value (certificate length, certificate, key), for a
    /// store that shares it between relays.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let cert = self.cert.as_ref();
        let mut out = Zeroizing::new(Vec::with_capacity(4 + cert.len() + 128));
        out.extend_from_slice(&(cert.len() as u32).to_be_bytes());
        out.extend_from_slice(cert);
        out.extend_from_slice(self.key.secret_pkcs8_der());
        out
    }

    /// Reads [`TlsIdentity::to_bytes`]'s form.
    pub fn from_bytes(b: &[u8]) -> Result<Self, RelayError> {
        let bad = || RelayError::Tls("the shared relay identity is damaged".into());
        let len = b
            .get(..4)
            .and_then(|l| l.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(bad)? as usize;
        let cert = b.get(4..4usize.checked_add(len).ok_or_else(bad)?).ok_or_else(bad)?;
        let key = b.get(4 + len..).filter(|k| !k.is_empty()).ok_or_else(bad)?;
        let identity = Self {
            cert: CertificateDer::from(cert.to_vec()),
            key: PrivatePkcs8KeyDer::from(key.to_vec()),
        };
        // A certificate and key that don't make a server configuration are refused now.
        identity.server_config()?;
        Ok(identity)
    }

    /// The keys this relay uses on the wire until it stops, vouched for by this identity: a
    /// fresh TLS certificate, and a credential for it signed by the identity key (valid
    /// from a day before `now`, Unix seconds, for [`CREDENTIAL_LIFETIME`]).
    pub fn wire_keys(&self, now: u64) -> Result<WireKeys, RelayError> {
        let tls = Self::generate()?;
        let failed = |what: &str| RelayError::Tls(format!("could not sign the relay credential: {what}"));
        let forward = backchannel_core::forward::ForwardKeys::generate()
            .map_err(|e| RelayError::Tls(format!("could not make the forward key: {e}")))?;
        let mut credential = Credential {
            tls_cert_digest: Pin::of_certificate(tls.cert.as_ref()).0,
            forward_kem: backchannel_core::relay_identity::FORWARD_KEM_XWING,
            forward_key: forward.public().to_vec(),
            not_before: now.saturating_sub(86_400),
            not_after: now.saturating_add(CREDENTIAL_LIFETIME.as_secs()),
            scheme: 0,
            signature: Vec::new(),
        };
        let key = backchannel_core::tls::provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(self.key.clone_key()))
            .map_err(|e| failed(&e.to_string()))?;
        let signer = key
            .choose_scheme(SCHEMES)
            .ok_or_else(|| failed("no signature scheme for the identity key"))?;
        credential.scheme = u16::from(signer.scheme());
        credential.signature = signer
            .sign(&credential.signed_bytes())
            .map_err(|e| failed(&e.to_string()))?;
        Ok(WireKeys {
            server_config: tls.server_config()?,
            tls_cert: tls.cert.to_vec(),
            identity_cert: self.cert.to_vec(),
            credential: credential.to_bytes(),
            forward: Arc::new(forward),
            identity_key: key,
        })
    }

    /// The pin clients check.
    pub fn pin(&self) -> Pin {
        Pin::of_certificate(self.cert.as_ref())
    }

    /// A rustls server configuration (TLS 1.3 only).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, RelayError> {
        // X25519MLKEM768 only (`core::tls`): a client that offers only classical groups
        // fails the handshake.
        let provider = Arc::new(backchannel_core::tls::provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| RelayError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], PrivateKeyDer::Pkcs8(self.key.clone_key()))
            .map_err(|e| RelayError::Tls(e.to_string()))?;
        // No session tickets: clients never resume (a resumed session would
        // link a client's connections), and tickets would be the only
        // post-handshake records whose size is not one frame.
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{ServerName, UnixTime};
    use rustls::{ClientConnection, DigitallySignedStruct, NamedGroup, ServerConnection, SignatureScheme};

    /// Accepts any certificate (the pin is not what these tests look at).
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
            Err(rustls::Error::General("TLS 1.2".into()))
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// Runs a handshake in memory between a client with `provider` and the relay's server
    /// configuration: the group it agreed on, or the error.
    fn handshake(provider: rustls::crypto::CryptoProvider) -> Result<Option<NamedGroup>, rustls::Error> {
        let identity = TlsIdentity::generate().unwrap();
        let provider = Arc::new(provider);
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth();
        let name = ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into());
        let mut client = ClientConnection::new(Arc::new(config), name)?;
        let mut server = ServerConnection::new(identity.server_config().unwrap())?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
            }
            server.process_new_packets()?;
            let mut back = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut back).unwrap();
            }
            let mut rd = &back[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
            }
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(server.negotiated_key_exchange_group().map(|g| g.name()));
            }
        }
        Err(rustls::Error::General("the handshake did not finish".into()))
    }

    /// Issue 16, point 5: the relay's key exchange is X25519MLKEM768, and a client that
    /// offers only classical groups (a recording of which a quantum computer would open)
    /// is refused.
    #[test]
    fn the_relay_speaks_only_the_hybrid_post_quantum_key_exchange() {
        assert_eq!(
            handshake(backchannel_core::tls::provider()).unwrap(),
            Some(NamedGroup::X25519MLKEM768)
        );
        let classical = rustls::crypto::ring::default_provider();
        assert!(handshake(classical).is_err(), "a classical client is refused");
        let mut x25519 = rustls::crypto::aws_lc_rs::default_provider();
        x25519.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
        assert!(handshake(x25519).is_err(), "so is one offering X25519 alone");
    }

    /// A credential the identity made vouches for its fresh TLS certificate under the PIN,
    /// and for nothing else: not under another PIN, not for another TLS certificate, not
    /// when signed by another identity, not outside its validity.
    #[test]
    fn a_home_relay_cannot_pass_on_another_forward_key_than_the_destination_signed() {
        use backchannel_core::relay_identity::{check_forward, Credential, IdentityError};
        let now = 1_800_000_000;
        let identity = TlsIdentity::generate().unwrap();
        let keys = identity.wire_keys(now).unwrap();
        let pin = identity.pin();
        let c = check_forward(&pin, &keys.identity_cert, &keys.credential, now).unwrap();
        assert_eq!(
            c.forward_key,
            keys.forward.public(),
            "the credential names this run's forward key"
        );
        // A home relay that swaps in a key of its own breaks the signature.
        let mut swapped = Credential::from_bytes(&keys.credential).unwrap();
        swapped.forward_key = backchannel_core::forward::ForwardKeys::generate()
            .unwrap()
            .public()
            .to_vec();
        assert_eq!(
            check_forward(&pin, &keys.identity_cert, &swapped.to_bytes(), now),
            Err(IdentityError::BadSignature)
        );
        // Another relay's genuine credential is not this PIN's.
        let other = TlsIdentity::generate().unwrap();
        let other_keys = other.wire_keys(now).unwrap();
        assert_eq!(
            check_forward(&pin, &other_keys.identity_cert, &other_keys.credential, now),
            Err(IdentityError::NotThePin)
        );
        // Out of its validity.
        assert_eq!(
            check_forward(&pin, &keys.identity_cert, &keys.credential, now + 6 * 365 * 86_400),
            Err(IdentityError::Expired)
        );
    }

    #[test]
    fn a_credential_vouches_for_its_own_tls_certificate_only() {
        use backchannel_core::relay_identity::{check, IdentityError};
        let now = 1_800_000_000;
        let identity = TlsIdentity::generate().unwrap();
        let keys = identity.wire_keys(now).unwrap();
        let pin = identity.pin();
        assert_ne!(
            Pin::of_certificate(&keys.tls_cert),
            pin,
            "the TLS key is not the identity's"
        );
        let c = check(&pin, &keys.identity_cert, &keys.credential, &keys.tls_cert, now).unwrap();
        assert_eq!(c.tls_cert_digest, Pin::of_certificate(&keys.tls_cert).0);

        let other = TlsIdentity::generate().unwrap();
        let other_keys = other.wire_keys(now).unwrap();
        assert_eq!(
            check(&other.pin(), &keys.identity_cert, &keys.credential, &keys.tls_cert, now),
            Err(IdentityError::NotThePin)
        );
        assert_eq!(
            check(&pin, &keys.identity_cert, &keys.credential, &other_keys.tls_cert, now),
            Err(IdentityError::OtherCertificate)
        );
        // Another identity's credential under this identity's certificate.
        assert_eq!(
            check(
                &pin,
                &keys.identity_cert,
                &other_keys.credential,
                &other_keys.tls_cert,
                now
            ),
            Err(IdentityError::BadSignature)
        );
        let mut flipped = keys.credential.clone();
        flipped[5] ^= 1;
        assert_eq!(
            check(&pin, &keys.identity_cert, &flipped, &keys.tls_cert, now),
            Err(IdentityError::BadSignature)
        );
        let later = now + CREDENTIAL_LIFETIME.as_secs() + 1;
        assert_eq!(
            check(&pin, &keys.identity_cert, &keys.credential, &keys.tls_cert, later),
            Err(IdentityError::Expired)
        );
        assert_eq!(
            check(
                &pin,
                &keys.identity_cert,
                &keys.credential,
                &keys.tls_cert,
                now - 2 * 86_400
            ),
            Err(IdentityError::Expired)
        );
    }
}
