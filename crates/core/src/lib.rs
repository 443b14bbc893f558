//! The sans-I/O protocol core of backchannel.
//!
//! Nothing in this crate opens a socket, touches a file or reads a clock:
//! callers pass bytes, the current time and a random number generator in,
//! and get bytes and events out. One exception: inside MLS, openmls draws
//! randomness from the libcrux provider's own CSPRNG. The relay and the client engine drive it;
//! tests drive it in memory.
//!
//! | module | concept |
//! |---|---|
//! | [`relay_address`] | `bc://PIN@HOST:PORT`, the pinned relay address |
//! | [`mailbox`] | anonymous mailboxes, capabilities, open proofs |
//! | [`envelope`] | fixed-size sealed envelopes, chunking, reassembly |
//! | [`frame`] | client/relay wire frames |
//! | [`identity`] | identity keys and fingerprints |
//! | [`channel`] | channels as MLS groups |
//! | [`storage`] | the MLS state store (postcard, zeroized) |
//! | [`invite`] | `bc-invite:` lines |
//! | [`message`] | what members say inside a channel, and join requests |
//! | [`safety_number`] | 60-digit numbers to compare aloud |
//! | [`vault`] | passphrase-sealed client state |
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod channel;
pub mod codec;
pub mod envelope;
pub mod frame;
pub mod identity;
pub mod invite;
pub mod mailbox;
pub mod message;
pub mod relay_address;
pub mod safety_number;
pub mod storage;
pub mod vault;
