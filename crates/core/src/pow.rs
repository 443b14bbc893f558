//! Proof of work for drop boxes: a mailbox created with a difficulty of
//! `bits` (its address is published, so anyone may send to it) accepts a
//! send only with a nonce that solves a puzzle bound to that exact envelope
//! and that mailbox. Flooding a drop box then costs the flooder CPU for every
//! envelope, while the relay checks each one with two hashes.
//!
//! The puzzle, built only from SHA-256 (no home-made primitive):
//!
//! ```text
//! challenge = SHA-256("backchannel/v1/pow" || send_digest (32) || envelope (4096))
//! proof     = SHA-256(challenge (32) || nonce (u64 little-endian))
//! ```
//!
//! where `send_digest` is SHA-256 of the mailbox's send capability (what the
//! relay stores). A nonce proves `bits` of work when `proof` begins with at
//! least `bits` zero bits. The nonce 0 proves nothing: it is what every send
//! to an ordinary mailbox carries, so the relay hashes nothing for those
//! (and [`solve`] searches from 1).
//!
//! # What it costs
//!
//! Each nonce passes with probability 2^-bits, so solving takes 2^bits
//! hashes of 40 bytes (one SHA-256 compression each) on average, and more
//! with a geometric tail: 20 bits is about a million hashes; about one solver
//! in 20 needs three times the mean or more. Each additional bit doubles the
//! work. Checking costs the relay one SHA-256 over the challenge input
//! (4,146 bytes) and one compression, whatever `bits` is.
//!
//! | bits | expected hashes | hashes for 99 % of solvers |
//! |---|---|---|
//! | 16 | 65,536 | 302,000 |
//! | 20 | 1,048,576 | 4.8 million |
//! | 22 | 4.2 million | 19.3 million |
//! | 32 ([`MAX_POW_BITS`]) | 4.3 billion | 19.8 billion |
//!
//! Measured on one core with SHA extensions (x86 SHA-NI, release build; the
//! `solve_time` test prints it): 80 to 105 ns per hash, so about 5 ms for
//! 16 bits, 0.1 s for 20 bits and 0.4 s for 22 bits on average, and 2.5 µs
//! for the relay's check. A GPU hashes thousands of times faster: the work
//! prices a flood, it does not forbid one. In an unoptimized build the loop
//! is some 40 times slower (about 4 µs per hash).

use sha2::{Digest, Sha256};

use crate::envelope::Envelope;

/// The largest difficulty a mailbox may demand (about 4.3 billion hashes
/// per envelope on average: minutes of one core).
pub const MAX_POW_BITS: u8 = 32;

/// Domain separation for the challenge.
const CONTEXT: &[u8] = b"backchannel/v1/pow";

/// The challenge for sending `envelope` to the mailbox whose send
/// capability has the SHA-256 `send_digest`.
pub fn challenge(send_digest: &[u8; 32], envelope: &Envelope) -> [u8; 32] {
    Sha256::new()
        .chain_update(CONTEXT)
        .chain_update(send_digest)
        .chain_update(envelope.as_bytes())
        .finalize()
        .into()
}

/// The number of leading zero bits of SHA-256(challenge || nonce LE): how
/// many bits of work `nonce` proves for `challenge`. The nonce 0 proves none.
pub fn work(challenge: &[u8; 32], nonce: u64) -> u32 {
    if nonce == 0 {
        return 0;
    }
    let proof = Sha256::new()
        .chain_update(challenge)
        .chain_update(nonce.to_le_bytes())
        .finalize();
    let mut zeros = 0;
    for byte in proof {
        zeros += byte.leading_zeros();
        if byte != 0 {
            break;
        }
    }
    zeros
}

/// Whether `nonce` proves at least `bits` of work for `challenge`. With
/// `bits` 0 every nonce does.
pub fn check(challenge: &[u8; 32], bits: u8, nonce: u64) -> bool {
    bits == 0 || work(challenge, nonce) >= u32::from(bits)
}

/// Bits of work a send's nonce was checked to prove for its envelope and
/// mailbox. Only [`prove`] makes one from a nonce (or [`ProvenWork::NONE`], which
/// claims nothing), so a store that takes a `ProvenWork` cannot be handed a
/// number that no check produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProvenWork(u32);

impl ProvenWork {
    /// No work: what a send with the nonce 0 proves (every send to an ordinary mailbox).
    pub const NONE: ProvenWork = ProvenWork(0);

    /// The bits proven.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether this work meets a mailbox's difficulty of `bits`.
    pub fn meets(self, bits: u8) -> bool {
        self.0 >= u32::from(bits)
    }
}

/// A checked proof of work: the challenge it answers (what a replay memory
/// remembers) and the work its nonce proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proof {
    /// [`challenge`] of the send.
    pub challenge: [u8; 32],
    /// The bits of work the nonce proves for it.
    pub work: ProvenWork,
}

/// The proof check: the challenge for sending `envelope` to the mailbox whose send
/// capability has the SHA-256 `send_digest`, and the work `nonce` proves for it.
/// `None` for the nonce 0, which every send to an ordinary mailbox carries, without
/// hashing anything (its work is [`ProvenWork::NONE`]).
pub fn prove(send_digest: &[u8; 32], envelope: &Envelope, nonce: u64) -> Option<Proof> {
    if nonce == 0 {
        return None;
    }
    let challenge = challenge(send_digest, envelope);
    Some(Proof {
        challenge,
        work: ProvenWork(work(&challenge, nonce)),
    })
}

/// The first nonce in `nonces` (0 skipped) that proves `bits` of work, if
/// any: to split a search across threads, or into slices that can be stopped.
pub fn search(challenge: &[u8; 32], bits: u8, nonces: std::ops::Range<u64>) -> Option<u64> {
    if bits == 0 {
        return Some(0);
    }
    nonces.into_iter().find(|n| check(challenge, bits, *n))
}

/// The smallest nonce that proves `bits` of work for `challenge` (0 when
/// `bits` is 0). Takes 2^bits hashes on average (see the module documentation).
pub fn solve(challenge: &[u8; 32], bits: u8) -> u64 {
    if bits == 0 {
        return 0;
    }
    let mut nonce = 1u64;
    loop {
        if check(challenge, bits, nonce) {
            return nonce;
        }
        // 2^64 nonces: one proves `bits` <= 256 bits of work with certainty
        // short of a SHA-256 break; wrapping keeps this total regardless.
        nonce = nonce.wrapping_add(1).max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::ENVELOPE_SIZE;
    use proptest::prelude::*;

    fn envelope(fill: u8, n: u64) -> Envelope {
        let mut v = vec![fill; ENVELOPE_SIZE];
        v[..8].copy_from_slice(&n.to_be_bytes());
        Envelope::from_bytes(&v).unwrap_or_else(|_| unreachable!())
    }

    fn nth_challenge(i: u64) -> [u8; 32] {
        challenge(&[7; 32], &envelope(1, i))
    }

    /// The checked work is what `work` counts for the challenge, and the nonce 0 proves
    /// nothing without hashing.
    #[test]
    fn prove_checks_the_nonce_against_the_challenge() {
        let e = envelope(3, 9);
        assert_eq!(prove(&[7; 32], &e, 0), None);
        let c = challenge(&[7; 32], &e);
        let nonce = solve(&c, 8);
        let p = prove(&[7; 32], &e, nonce).unwrap_or_else(|| unreachable!());
        assert_eq!(p.challenge, c);
        assert_eq!(p.work.bits(), work(&c, nonce));
        assert!(p.work.meets(8) && !ProvenWork::NONE.meets(1) && ProvenWork::NONE.meets(0));
        // The same nonce for another mailbox proves what it proves there, not here.
        let other = prove(&[8; 32], &e, nonce).unwrap_or_else(|| unreachable!());
        assert_eq!(other.work.bits(), work(&challenge(&[8; 32], &e), nonce));
    }

    proptest! {
        #[test]
        fn a_solved_nonce_checks(digest in any::<[u8; 32]>(), fill in any::<u8>(), n in any::<u64>(), bits in 0u8..=12) {
            let c = challenge(&digest, &envelope(fill, n));
            let nonce = solve(&c, bits);
            prop_assert!(check(&c, bits, nonce));
            prop_assert!(work(&c, nonce) >= u32::from(bits));
            // Every easier difficulty accepts it too, and it is the first that works.
            for easier in 0..=bits {
                prop_assert!(check(&c, easier, nonce));
            }
            if bits > 0 {
                prop_assert!(nonce >= 1);
                prop_assert!((1..nonce).all(|m| !check(&c, bits, m)));
                prop_assert_eq!(search(&c, bits, 1..nonce + 1), Some(nonce));
                prop_assert_eq!(search(&c, bits, 1..nonce), None);
            }
        }

        #[test]
        fn zero_bits_accept_any_nonce_and_nonce_zero_proves_nothing(c in any::<[u8; 32]>(), nonce in any::<u64>(), bits in 1u8..=MAX_POW_BITS) {
            prop_assert!(check(&c, 0, nonce));
            prop_assert_eq!(work(&c, 0), 0);
            prop_assert!(!check(&c, bits, 0));
        }
    }

    /// A nonce solved for `bits` passes `bits + 8` only by the luck of its
    /// extra zero bits (probability 1/256), and not for another envelope or
    /// another mailbox.
    #[test]
    fn a_nonce_is_bound_to_its_difficulty_envelope_and_mailbox() {
        let (mut harder, mut other_envelope, mut other_mailbox) = (0, 0, 0);
        let n = 256;
        for i in 0..n {
            let env = envelope(1, i);
            let c = challenge(&[7; 32], &env);
            let nonce = solve(&c, 6);
            assert!(check(&c, 6, nonce));
            harder += usize::from(check(&c, 14, nonce));
            other_envelope += usize::from(check(&challenge(&[7; 32], &envelope(2, i)), 6, nonce));
            other_mailbox += usize::from(check(&challenge(&[8; 32], &env), 6, nonce));
        }
        // Expected: 1 (harder), 4 (others, 2^-6 each). Deterministic inputs: no flakiness.
        assert!(harder <= 6, "{harder} of {n} nonces solved for 6 bits passed 14");
        assert!(
            other_envelope <= 16,
            "{other_envelope} of {n} nonces passed for another envelope"
        );
        assert!(
            other_mailbox <= 16,
            "{other_mailbox} of {n} nonces passed for another mailbox"
        );
    }

    /// The mean number of hashes to solve `bits` is 2^bits.
    #[test]
    fn solving_takes_two_to_the_bits_hashes_on_average() {
        let n = 512u64;
        let bits = 8;
        let total: u64 = (0..n).map(|i| solve(&nth_challenge(i), bits)).sum();
        let mean = total as f64 / n as f64;
        // 2^8 = 256; the standard error of the mean is about 256 / sqrt(512) = 11.
        assert!((200.0..320.0).contains(&mean), "mean {mean} hashes for 8 bits");
    }

    #[test]
    fn the_challenge_depends_on_every_input() {
        let base = challenge(&[7; 32], &envelope(1, 0));
        assert_ne!(base, challenge(&[6; 32], &envelope(1, 0)));
        assert_ne!(base, challenge(&[7; 32], &envelope(1, 1)));
        let mut bytes = envelope(1, 0).as_bytes().to_vec();
        bytes[ENVELOPE_SIZE - 1] ^= 1;
        assert_ne!(
            base,
            challenge(
                &[7; 32],
                &Envelope::from_bytes(&bytes).unwrap_or_else(|_| unreachable!())
            )
        );
    }
}
