//! Proofs of work the relay has accepted, so that one solved envelope cannot be
//! sent to a drop box again and again for the price of one.
//!
//! A proof binds an envelope to a drop box's send capability
//! ([`backchannel_core::pow::challenge`]); the relay remembers the challenges of the
//! latest [`CAPACITY`] proofs of at least [`REMEMBERED_BITS`] bits that it accepted,
//! in memory, and refuses the same envelope again with `WorkRequired`. What it does
//! not cover (docs/threat-model.md): a restart forgets, another relay of a cluster
//! has its own memory, a proof of fewer bits is not remembered, and evicting the
//! memory costs [`CAPACITY`] proofs of [`REMEMBERED_BITS`] bits. The owner's client
//! also drops a letter it has read before, so a replay that gets through is not
//! shown twice.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use backchannel_core::pow::Proof;

/// How many accepted proofs are remembered (32 bytes each, twice: 16 MiB at most).
pub const CAPACITY: usize = 1 << 18;

/// Proofs below this work are not remembered: anyone can make them for any
/// mailbox of their own, and they would push out the ones that cost something.
pub const REMEMBERED_BITS: u32 = 16;

/// The remembered challenges, oldest first for eviction.
#[derive(Default)]
pub struct SpentProofs {
    inner: Mutex<Remembered>,
}

/// The set to look up, and the same challenges in the order they came.
#[derive(Default)]
struct Remembered {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

impl SpentProofs {
    /// The challenge to remember for a send, given its checked proof
    /// ([`pow::prove`](backchannel_core::pow::prove)), if it is worth remembering.
    pub fn key(proof: Option<Proof>) -> Option<[u8; 32]> {
        proof.filter(|p| p.work.bits() >= REMEMBERED_BITS).map(|p| p.challenge)
    }

    /// Marks `key` spent; false if it already was (the send is a replay).
    pub fn spend(&self, key: [u8; 32]) -> bool {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Remembered { set, order } = &mut *guard;
        if !set.insert(key) {
            return false;
        }
        order.push_back(key);
        if order.len() > CAPACITY {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        true
    }

    /// Forgets `key` again: the store refused the send, so the proof was not used.
    pub fn refund(&self, key: &[u8; 32]) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Remembered { set, order } = &mut *guard;
        if set.remove(key) {
            if let Some(pos) = order.iter().rposition(|k| k == key) {
                order.remove(pos);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use backchannel_core::envelope::Envelope;
    use backchannel_core::pow;
    use sha2::{Digest, Sha256};

    use super::*;

    /// The proof the relay checks for a send ([`pow::prove`], as `server.rs` calls it).
    fn proof(send: &[u8; 32], envelope: &Envelope, nonce: u64) -> Option<Proof> {
        pow::prove(&Sha256::digest(send).into(), envelope, nonce)
    }

    #[test]
    fn a_proof_is_spent_once_refunded_again_and_the_oldest_forgotten() {
        let spent = SpentProofs::default();
        assert!(spent.spend([1; 32]));
        assert!(!spent.spend([1; 32]));
        spent.refund(&[1; 32]);
        assert!(spent.spend([1; 32]));
        for i in 0..CAPACITY as u32 {
            let mut k = [0xee; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            assert!(spent.spend(k));
        }
        // [1; 32] was the oldest: it is forgotten, the newest is not.
        assert!(spent.spend([1; 32]));
        let mut newest = [0xee; 32];
        newest[..4].copy_from_slice(&(CAPACITY as u32 - 1).to_le_bytes());
        assert!(!spent.spend(newest));
    }

    #[test]
    fn only_proofs_of_real_work_are_remembered() {
        let envelope = Envelope::from_bytes(&[7u8; backchannel_core::envelope::ENVELOPE_SIZE]).unwrap();
        let send = [3u8; 32];
        assert_eq!(SpentProofs::key(proof(&send, &envelope, 0)), None);
        let digest: [u8; 32] = Sha256::digest(send).into();
        let challenge = pow::challenge(&digest, &envelope);
        let weak = (1..).find(|n| pow::work(&challenge, *n) < REMEMBERED_BITS).unwrap();
        assert_eq!(SpentProofs::key(proof(&send, &envelope, weak)), None);
        let strong = pow::solve(&challenge, REMEMBERED_BITS as u8);
        assert_eq!(SpentProofs::key(proof(&send, &envelope, strong)), Some(challenge));
    }
}
