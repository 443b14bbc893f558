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
//! | [`storage`] | the MLS state store (postcard, zeroized) |
//! | [`invite`] | `bc-invite:` lines |
//! | [`drop`](mod@drop) | drop boxes: `bc-drop:` addresses, sealed letters, replies, `bc-receipt:` lines |
//! | [`message`] | what members say inside a channel, and join requests |
//! | [`safety_number`] | 60-digit numbers to compare aloud |
//! | [`courier`] | courier bundles: sealed envelopes carried by hand on a file |
//! | [`vault`] | passphrase-sealed client state |
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod channel;
pub mod codec;
pub mod courier;
pub mod drop;
pub mod envelope;
pub mod frame;
pub mod identity;
pub mod invite;
pub mod mailbox;
pub mod message;
pub mod pow;
pub mod relay_address;
pub mod safety_number;
pub mod storage;
pub mod vault;
