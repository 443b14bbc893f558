//! The sans-I/O protocol core of backchannel.
//!
//! Nothing in this crate opens a socket, touches a file or reads a clock:
//! callers pass bytes, the current time and a random number generator in,
//! and get bytes and events out. One exception: inside MLS, openmls draws
//! randomness from the libcrux provider's own CSPRNG, and so does HPKE when
//! it seals a drop box letter. The relay and the client engine drive it;
//! tests drive it in memory.
//!
//! | module | concept |
//! |---|---|
//! | [`relay_address`] | `bc://PIN@HOST:PORT`, the pinned relay address |
//! | [`mailbox`] | anonymous mailboxes, capabilities, open proofs |
//! | [`envelope`] | fixed-size sealed envelopes, chunking, reassembly |
//! | [`frame`] | client/relay wire frames |
//! | [`pow`] | proof of work that drop boxes demand of every envelope |
//! | [`identity`] | identity keys and fingerprints |
//! | [`channel`] | channels as MLS groups |
//! | [`crypto_provider`] | the cryptography openmls uses: ed25519-dalek, sha2, hkdf, libcrux |
//! | [`storage`] | the MLS state store (postcard, zeroized) |
//! | [`invite`] | `bc-invite:` lines |
//! | [`drop`](mod@drop) | drop boxes: `bc-drop:` addresses, sealed letters, replies, `bc-receipt:` lines |
//! | [`message`] | what members say inside a channel, and join requests |
//! | [`safety_number`] | 60-digit numbers to compare aloud |
//! | [`courier`] | courier bundles: sealed envelopes carried by hand on a file |
//! | [`vault`] | passphrase-sealed client state |
//!
//! Names of encoders and decoders, one convention for the whole crate:
//! - a whole value as bytes: `to_bytes` / `from_bytes` (envelopes, messages, join
//!   requests, channel info, mailbox addresses);
//! - a whole value as a line of text: `to_text` / `from_text` (invites, drop
//!   addresses, receipts);
//! - a part of a larger encoding, read from or written to a [`codec::Reader`] or
//!   [`codec::Writer`]: `encode` / `decode`;
//! - a frame on the wire, whose first bytes say what it is: `encode_request` /
//!   `decode_request` and `encode_response` / `decode_response` in [`frame`];
//! - a sealed format (a bundle, a letter, a vault): `seal_*` / `open_*`.
//!
//! Every decoder takes untrusted bytes and returns an error, never panics.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod aead;
pub mod channel;
pub mod code;
pub mod codec;
pub mod courier;
pub mod crypto_provider;
pub mod drop;
pub mod envelope;
pub mod forward;
pub mod frame;
pub mod identity;
pub mod invite;
pub mod mailbox;
pub mod message;
pub mod pow;
pub mod relay_address;
pub mod relay_identity;
pub mod roles;
pub mod safety_number;
pub mod storage;
pub mod tls;
pub mod vault;
