//! The passphrase-sealed client store as read back from disk (a device
//! thief, or plain corruption, controls the file).
//!
//! A key is derived once with small Argon2 parameters; each input is a blob
//! (header and ciphertext) opened with it. [`VaultKey::for_blob`] is called
//! only where it is cheap: when the header's parameters are outside the
//! documented bounds it must refuse them before running Argon2, and when
//! they are tiny it runs. Both formats are read (1: no place, no generation; 2:
//! bound to a place). Asserts: out-of-bounds parameters give `BadParams`; a blob
//! that opens re-seals (in format 2, at its generation) to a blob that opens to
//! the same state and generation, and not as another place.
#![no_main]

use std::sync::OnceLock;

use backchannel_core::vault::{KdfParams, Place, VaultError, VaultKey};
use libfuzzer_sys::fuzz_target;
use rand_core::OsRng;

/// The passphrase the fixed key and the seeds use.
const PASSPHRASE: &[u8] = b"fuzz passphrase";

/// The fixed key's salt and parameters are those of `seeds/vault/*`.
fn key() -> &'static VaultKey {
    static KEY: OnceLock<VaultKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let seed = include_bytes!("../fixtures/vault-seed.bin");
        VaultKey::for_blob(PASSPHRASE, seed).unwrap()
    })
}

fn header_params(blob: &[u8]) -> Option<KdfParams> {
    // What the header parser reads before it checks the bounds: magic, costs (and flags),
    // salt (and, in format 2, the generation).
    let needed = if blob.starts_with(b"BCVAULT1") {
        8 + 12 + 16
    } else if blob.starts_with(b"BCVAULT2") {
        8 + 16 + 16 + 8
    } else {
        return None;
    };
    if blob.len() < needed {
        return None;
    }
    let u = |i: usize| u32::from_be_bytes(blob[i..i + 4].try_into().unwrap());
    Some(KdfParams {
        m_cost_kib: u(8),
        t_cost: u(12),
        lanes: u(16),
        test_only: blob[7] == b'2' && u(20) & 1 == 1,
    })
}

fuzz_target!(|data: &[u8]| {
    let key = key();
    if let Ok(opened) = key.open(data, Place::STATE) {
        let again = key.seal(&opened.plain, Place::STATE, opened.generation, &mut OsRng);
        let reopened = key.open(&again, Place::STATE).expect("a re-sealed vault opens");
        assert_eq!(
            (reopened.plain.to_vec(), reopened.generation, reopened.format),
            (opened.plain.to_vec(), opened.generation, 2),
            "a re-sealed vault opens to something else"
        );
        let elsewhere = Place::file("0/0");
        assert!(key.open(&again, elsewhere).is_err(), "a state opens as a file");
    }
    if let Some(p) = header_params(data) {
        // vault.rs: MAX_M_COST_KIB (1 GiB), MAX_T_COST, MAX_LANES; and Argon2 needs a lane.
        let out_of_bounds = p.m_cost_kib > 1024 * 1024 || p.t_cost > 16 || p.lanes == 0 || p.lanes > 16;
        if out_of_bounds {
            assert_eq!(VaultKey::for_blob(PASSPHRASE, data).err(), Some(VaultError::BadParams));
        } else if p.m_cost_kib <= 64 && p.t_cost <= 2 && p.lanes <= 2 {
            if let Ok(k) = VaultKey::for_blob(PASSPHRASE, data) {
                let _ = k.open(data, Place::STATE);
            }
        }
    }
});
