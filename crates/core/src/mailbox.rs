//! Anonymous mailboxes: identifiers, capabilities and the keys that go with
//! them.
//!
//! A mailbox is created by its recipient, who registers a random *receive
//! id*, an Ed25519 *recipient key* (to open, fetch, acknowledge and delete)
//! and the SHA-256 of a random *send capability*. Senders know only the send
//! capability and the seal key, never the receive id, so the relay's view of
//! a send and of a receive share no identifier. (The relay maps the digest of
//! a send capability to its mailbox, so a device that holds another member's
//! send capability can be matched to that mailbox by the relay's operator;
//! the capabilities rotate.) Neither names a person. The *seal key* never reaches the relay: senders use it to seal
//! envelopes so that the relay stores only uniform random bytes.

use std::fmt;

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::codec::{DecodeError, Reader, Writer};
use crate::relay_address::RelayAddress;

/// Domain separator for the proof that opens a mailbox on a connection.
const OPEN_CONTEXT: &[u8] = b"backchannel/v1/open-mailbox";

/// A mailbox's receive id: 32 random bytes chosen by the recipient and known
/// only to it and the relay.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct MailboxId(pub [u8; 32]);

impl fmt::Debug for MailboxId {
    // Mailbox ids must not reach logs; Debug shows a placeholder.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MailboxId(..)")
    }
}

/// The secret a sender presents to deliver into a mailbox; it is the only
/// name a sender has for the mailbox.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop, serde::Serialize, serde::Deserialize)]
pub struct SendCapability(pub [u8; 32]);

impl SendCapability {
    /// The digest the relay stores and compares against.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.0).into()
    }
}

impl fmt::Debug for SendCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendCapability(..)")
    }
}

/// The symmetric key under which senders seal envelopes for a mailbox.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop, serde::Serialize, serde::Deserialize)]
pub struct SealKey(pub [u8; 32]);

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(..)")
    }
}

/// Everything a sender needs to deliver into a mailbox.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MailboxAddress {
    /// The relay that holds the mailbox.
    pub relay: RelayAddress,
    /// Names the mailbox to the relay and authorizes delivery.
    pub send: SendCapability,
    /// Seals envelopes for the recipient.
    pub seal: SealKey,
}

impl fmt::Debug for MailboxAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailboxAddress").finish_non_exhaustive()
    }
}

impl MailboxAddress {
    /// Appends the binary form.
    pub fn encode(&self, w: &mut Writer) {
        self.relay.encode(w);
        w.put(&self.send.0).put(&self.seal.0);
    }

    /// The binary form as a vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode(&mut w);
        w.into_vec()
    }

    /// Reads the binary form.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            relay: RelayAddress::decode(r)?,
            send: SendCapability(r.array()?),
            seal: SealKey(r.array()?),
        })
    }

    /// Reads the binary form from a whole slice.
    pub fn from_bytes(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let a = Self::decode(&mut r)?;
        r.finish()?;
        Ok(a)
    }
}

/// A mailbox as its recipient holds it: the address, the receive id and the
/// recipient key.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct MailboxKeys {
    /// What senders get.
    pub address: MailboxAddress,
    /// The receive id (never given to senders).
    id: MailboxId,
    /// Ed25519 secret that opens the mailbox at the relay.
    recipient: [u8; 32],
}

impl Drop for MailboxKeys {
    fn drop(&mut self) {
        self.recipient.zeroize();
    }
}

impl fmt::Debug for MailboxKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailboxKeys").finish_non_exhaustive()
    }
}

impl MailboxKeys {
    /// A fresh mailbox on `relay`.
    pub fn generate(relay: RelayAddress, rng: &mut impl CryptoRngCore) -> Self {
        let mut id = [0u8; 32];
        let mut send = [0u8; 32];
        let mut seal = [0u8; 32];
        let mut recipient = [0u8; 32];
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut send);
        rng.fill_bytes(&mut seal);
        rng.fill_bytes(&mut recipient);
        Self {
            address: MailboxAddress {
                relay,
                send: SendCapability(send),
                seal: SealKey(seal),
            },
            id: MailboxId(id),
            recipient,
        }
    }

    /// Appends the binary form: address, receive id (32), recipient secret
    /// (32). It holds secrets: callers keep it encrypted.
    pub fn encode(&self, w: &mut Writer) {
        self.address.encode(w);
        w.put(&self.id.0).put(&self.recipient);
    }

    /// Reads the binary form.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            address: MailboxAddress::decode(r)?,
            id: MailboxId(r.array()?),
            recipient: r.array()?,
        })
    }

    /// The receive id.
    pub fn id(&self) -> MailboxId {
        self.id
    }

    fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&self.recipient)
    }

    /// The public recipient key registered at creation.
    pub fn recipient_public(&self) -> [u8; 32] {
        self.signing_key().verifying_key().to_bytes()
    }

    /// The proof that opens this mailbox on a connection whose relay nonce is
    /// `nonce`.
    pub fn open_proof(&self, nonce: &[u8; 32]) -> [u8; 64] {
        self.signing_key().sign(&open_message(nonce, &self.id)).to_bytes()
    }
}

fn open_message(nonce: &[u8; 32], id: &MailboxId) -> Vec<u8> {
    let mut m = Vec::with_capacity(OPEN_CONTEXT.len() + 64);
    m.extend_from_slice(OPEN_CONTEXT);
    m.extend_from_slice(nonce);
    m.extend_from_slice(&id.0);
    m
}

/// Checks an open proof against the recipient key registered for `id`.
pub fn verify_open_proof(recipient_public: &[u8; 32], nonce: &[u8; 32], id: &MailboxId, proof: &[u8; 64]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(recipient_public) else {
        return false;
    };
    key.verify(&open_message(nonce, id), &Signature::from_bytes(proof))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay() -> RelayAddress {
        RelayAddress {
            pin: [0; 32],
            host: "localhost".into(),
            port: 1,
        }
    }

    #[test]
    fn open_proof_binds_nonce_and_mailbox() {
        let mut rng = rand_core::OsRng;
        let k = MailboxKeys::generate(relay(), &mut rng);
        let other = MailboxKeys::generate(relay(), &mut rng);
        let nonce = [9u8; 32];
        let proof = k.open_proof(&nonce);
        assert!(verify_open_proof(&k.recipient_public(), &nonce, &k.id(), &proof));
        assert!(!verify_open_proof(&k.recipient_public(), &[8u8; 32], &k.id(), &proof));
        assert!(!verify_open_proof(&k.recipient_public(), &nonce, &other.id(), &proof));
        assert!(!verify_open_proof(&other.recipient_public(), &nonce, &k.id(), &proof));
    }

    #[test]
    fn address_round_trips() {
        let k = MailboxKeys::generate(relay(), &mut rand_core::OsRng);
        let b = k.address.to_bytes();
        assert_eq!(MailboxAddress::from_bytes(&b), Ok(k.address.clone()));
        assert!(MailboxAddress::from_bytes(&b[..b.len() - 1]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn mailbox_keys_round_trip(
            seed in proptest::prelude::any::<[[u8; 32]; 5]>(),
            host in "[a-z0-9.]{1,20}",
            port in 1u16..,
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..70),
        ) {
            let [pin, id, send, seal, recipient] = seed;
            let k = MailboxKeys {
                address: MailboxAddress {
                    relay: RelayAddress { pin, host, port },
                    send: SendCapability(send),
                    seal: SealKey(seal),
                },
                id: MailboxId(id),
                recipient,
            };
            let mut w = Writer::new();
            k.encode(&mut w);
            let bytes = w.into_vec();
            let mut r = Reader::new(&bytes);
            let back = MailboxKeys::decode(&mut r);
            proptest::prop_assert!(r.finish().is_ok());
            let back = back.map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            proptest::prop_assert_eq!(&back.address, &k.address);
            proptest::prop_assert_eq!(back.id(), k.id());
            proptest::prop_assert_eq!(back.recipient_public(), k.recipient_public());
            // Any prefix is refused; longer input leaves the tail unread.
            let cut = tail.len() % bytes.len();
            proptest::prop_assert!(MailboxKeys::decode(&mut Reader::new(&bytes[..cut])).is_err());
            let mut longer = bytes.clone();
            longer.extend_from_slice(&tail);
            let mut r = Reader::new(&longer);
            proptest::prop_assert!(MailboxKeys::decode(&mut r).is_ok());
            proptest::prop_assert_eq!(r.remaining(), tail.len());
        }

        #[test]
        fn arbitrary_addresses_never_panic_and_decoded_ones_round_trip(
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            if let Ok(a) = MailboxAddress::from_bytes(&b) {
                proptest::prop_assert_eq!(MailboxAddress::from_bytes(&a.to_bytes()), Ok(a));
            }
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let k = MailboxKeys::generate(relay(), &mut rand_core::OsRng);
        let s = format!("{k:?} {:?} {:?} {:?}", k.address, k.address.send, k.id());
        assert_ne!(k.id().0, k.address.send.0);
        assert_eq!(
            s,
            "MailboxKeys { .. } MailboxAddress { .. } SendCapability(..) MailboxId(..)"
        );
    }
}
