//! A relay's identity and its credential (docs/protocol.md, "Relay identity").
//!
//! A relay has a long-term *identity certificate* (self-signed; SHA-256 of its DER is the
//! PIN users hold) and short-lived keys it uses on the wire: the TLS certificate of its
//! handshakes and its *forward key* (what a client seals forwarded frames to). The identity
//! key signs a [`Credential`] that names both; the relay sends its identity certificate and
//! credential in its hello, and a client accepts the connection only if [`check`] passes:
//! the identity certificate is the PIN's, the credential's signature verifies under it, the
//! credential is within its validity, and the TLS certificate of this very connection is the
//! one it names. The TLS and forward keys can then change (at every start of the relay)
//! without a new PIN.
//!
//! Signatures are TLS 1.3 signature schemes, made and checked by rustls's provider (the
//! identity key of a relay made before this change is its old certificate's ECDSA P-256
//! key): no primitive of our own.

use rustls::pki_types::CertificateDer;
use rustls::SignatureScheme;

use crate::codec::{DecodeError, Reader, Writer};
use crate::relay_address::Pin;

/// What the identity key signs, before the credential's body.
pub const CREDENTIAL_LABEL: &[u8] = b"backchannel/v1/relay-credential";

/// The credential format's version.
const CREDENTIAL_VERSION: u8 = 1;

/// HPKE KEM id of a forward key: DHKEM(X25519, HKDF-SHA256) (RFC 9180).
pub const FORWARD_KEM_X25519: u16 = 0x0020;

/// HPKE KEM id of a forward key: X-Wing (draft-connolly-cfrg-xwing-kem-06), the only one
/// clients seal to (`crate::forward`).
pub const FORWARD_KEM_XWING: u16 = 0x647a;

/// Longest identity certificate a hello carries (ours are about 400 bytes).
pub const MAX_IDENTITY_CERT: usize = 2048;

/// Longest credential a hello carries (an X-Wing forward key alone is 1,216 bytes).
pub const MAX_CREDENTIAL: usize = 2048;

/// The identity key's statement about the keys a relay uses on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// SHA-256 of the DER of the TLS certificate the relay presents (computed as a PIN is,
    /// [`Pin::of_certificate`]).
    pub tls_cert_digest: [u8; 32],
    /// The forward key's HPKE KEM id ([`FORWARD_KEM_X25519`]).
    pub forward_kem: u16,
    /// The forward key (public).
    pub forward_key: Vec<u8>,
    /// Valid from (Unix seconds).
    pub not_before: u64,
    /// Valid until (Unix seconds).
    pub not_after: u64,
    /// The TLS 1.3 signature scheme of `signature`.
    pub scheme: u16,
    /// The identity key's signature over [`CREDENTIAL_LABEL`] and the body.
    pub signature: Vec<u8>,
}

/// Why a relay's identity was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// The identity certificate is not the one the PIN names.
    #[error("the relay's identity does not match the pin")]
    NotThePin,
    /// The credential could not be read.
    #[error("the relay's credential is malformed")]
    Malformed,
    /// The signature does not verify under the identity certificate.
    #[error("the relay's credential is not signed by its identity")]
    BadSignature,
    /// The credential names another TLS certificate than this connection's.
    #[error("the relay's credential names another TLS certificate")]
    OtherCertificate,
    /// Not valid now.
    #[error("the relay's credential is not valid now")]
    Expired,
}

impl Credential {
    /// What the identity key signs: the label, then the body.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.put(CREDENTIAL_LABEL);
        self.body(&mut w);
        w.into_vec()
    }

    fn body(&self, w: &mut Writer) {
        w.u8(CREDENTIAL_VERSION)
            .put(&self.tls_cert_digest)
            .u16(self.forward_kem)
            .bytes16(&self.forward_key)
            .u64(self.not_before)
            .u64(self.not_after);
    }

    /// The credential as a hello carries it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.body(&mut w);
        w.u16(self.scheme).bytes16(&self.signature);
        w.into_vec()
    }

    /// Reads a credential; anything but exactly one is [`IdentityError::Malformed`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let parse = |r: &mut Reader<'_>| -> Result<Self, DecodeError> {
            if r.u8()? != CREDENTIAL_VERSION {
                return Err(DecodeError::Invalid("credential version"));
            }
            Ok(Self {
                tls_cert_digest: r.array()?,
                forward_kem: r.u16()?,
                forward_key: r.bytes16()?.to_vec(),
                not_before: r.u64()?,
                not_after: r.u64()?,
                scheme: r.u16()?,
                signature: r.bytes16()?.to_vec(),
            })
        };
        let mut r = Reader::new(bytes);
        let c = parse(&mut r).map_err(|_| IdentityError::Malformed)?;
        r.finish().map_err(|_| IdentityError::Malformed)?;
        Ok(c)
    }
}

/// Checks a relay's identity as a client does after the hello: `identity_cert` is the
/// PIN's, `credential` is signed by it and valid at `now` (Unix seconds), and names
/// `tls_cert`, the certificate this connection's handshake presented (whose key rustls has
/// already seen sign the handshake). Returns the credential, for its forward key.
pub fn check(
    pin: &Pin,
    identity_cert: &[u8],
    credential: &[u8],
    tls_cert: &[u8],
    now: u64,
) -> Result<Credential, IdentityError> {
    let c = check_signed(pin, identity_cert, credential, now)?;
    if c.tls_cert_digest != Pin::of_certificate(tls_cert).0 {
        return Err(IdentityError::OtherCertificate);
    }
    Ok(c)
}

/// Checks a relay's identity as a client does before it seals a forwarded request to it
/// (`crate::forward`): `identity_cert` is the PIN's, `credential` is signed by it, valid at
/// `now`, and names an X-Wing forward key. The credential comes through the client's home
/// relay, which cannot forge it; which TLS certificate it names does not matter here.
pub fn check_forward(
    pin: &Pin,
    identity_cert: &[u8],
    credential: &[u8],
    now: u64,
) -> Result<Credential, IdentityError> {
    let c = check_signed(pin, identity_cert, credential, now)?;
    if c.forward_kem != FORWARD_KEM_XWING || c.forward_key.len() != crate::forward::FORWARD_KEY_LEN {
        return Err(IdentityError::Malformed);
    }
    Ok(c)
}

/// The checks [`check`] and [`check_forward`] share: the PIN, the signature, the validity.
fn check_signed(pin: &Pin, identity_cert: &[u8], credential: &[u8], now: u64) -> Result<Credential, IdentityError> {
    if Pin::of_certificate(identity_cert) != *pin {
        return Err(IdentityError::NotThePin);
    }
    let c = Credential::from_bytes(credential)?;
    if !verify_signature(identity_cert, c.scheme, &c.signed_bytes(), &c.signature) {
        return Err(IdentityError::BadSignature);
    }
    if now < c.not_before || now > c.not_after {
        return Err(IdentityError::Expired);
    }
    Ok(c)
}

/// Whether `signature` (TLS 1.3 scheme `scheme`) over `message` verifies under the key of
/// `identity_cert`, with rustls's provider's algorithms.
pub fn verify_signature(identity_cert: &[u8], scheme: u16, message: &[u8], signature: &[u8]) -> bool {
    let der = CertificateDer::from(identity_cert);
    let Ok(cert) = webpki::EndEntityCert::try_from(&der) else {
        return false;
    };
    let scheme = SignatureScheme::from(scheme);
    crate::tls::provider()
        .signature_verification_algorithms
        .mapping
        .iter()
        .filter(|(s, _)| *s == scheme)
        .flat_map(|(_, algs)| algs.iter())
        .any(|alg| cert.verify_signature(*alg, message, signature).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_reads_back_and_nothing_else_does() {
        let c = Credential {
            tls_cert_digest: [7; 32],
            forward_kem: FORWARD_KEM_X25519,
            forward_key: vec![9; 32],
            not_before: 1,
            not_after: 2,
            scheme: 0x0403,
            signature: vec![1, 2, 3],
        };
        let bytes = c.to_bytes();
        assert_eq!(Credential::from_bytes(&bytes), Ok(c.clone()));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Credential::from_bytes(&longer), Err(IdentityError::Malformed));
        assert_eq!(
            Credential::from_bytes(&bytes[..bytes.len() - 1]),
            Err(IdentityError::Malformed)
        );
        let mut other_version = bytes;
        other_version[0] = 2;
        assert_eq!(Credential::from_bytes(&other_version), Err(IdentityError::Malformed));
        assert!(c.signed_bytes().starts_with(CREDENTIAL_LABEL));
    }
}
