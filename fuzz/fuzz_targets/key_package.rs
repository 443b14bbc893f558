//! A join request arriving in an invite mailbox (anyone holding the invite
//! can send one): [`JoinRequest`] decoding, then [`validate_key_package`]
//! on the key package inside, as the client engine does; and
//! `validate_key_package` on the raw input too.
//!
//! Asserts: a key package that validates describes a member with a
//! mailbox, whose fingerprint is that of its identity key.
#![no_main]

use std::sync::OnceLock;

use backchannel_core::channel::{validate_key_package, Provider};
use backchannel_core::identity::Fingerprint;
use backchannel_core::message::JoinRequest;
use libfuzzer_sys::fuzz_target;

fn provider() -> &'static Provider {
    static P: OnceLock<Provider> = OnceLock::new();
    P.get_or_init(|| Provider::new().unwrap())
}

fn check(bytes: &[u8]) {
    if let Ok(valid) = validate_key_package(provider(), bytes) {
        assert!(valid.member.mailbox.is_some());
        assert_eq!(valid.member.fingerprint, Fingerprint::of(&valid.member.identity_key));
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(j) = JoinRequest::from_bytes(data) {
        check(&j.key_package);
    } else {
        check(data);
    }
});
