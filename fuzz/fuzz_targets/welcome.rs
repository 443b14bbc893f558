//! A welcome arriving in a joiner's mailbox ([`Channel::join`], attacker
//! input until it verifies).
//!
//! The joiner's state (its key package's private keys) is the fixture
//! `fixtures/welcome.bin`, restored fresh for every input; the seed is the
//! real welcome alice sent it. Asserts: `join` returns a channel or an
//! error, never panics; a channel it returns has the channel info and the
//! joiner among its members, and names its sender among them.
#![no_main]

use std::sync::OnceLock;

use backchannel_core::channel::{Channel, Provider};
use backchannel_fuzz::MlsFixture;
use libfuzzer_sys::fuzz_target;

fn fixture() -> &'static MlsFixture {
    static F: OnceLock<MlsFixture> = OnceLock::new();
    F.get_or_init(|| {
        MlsFixture::from_bytes(include_bytes!("../fixtures/welcome.bin"))
            .expect("fixtures/welcome.bin is damaged; regenerate it with `cargo run --example seeds`")
    })
}

fuzz_target!(|data: &[u8]| {
    let provider = Provider::from_snapshot(fixture().snapshot.clone()).unwrap();
    let Ok((channel, sender)) = Channel::join(&provider, data) else {
        return;
    };
    assert!(channel.info().is_ok(), "a joined channel without channel info");
    let members = channel.members();
    assert!(members.iter().any(|m| m.name == "joiner"), "the joiner is not a member");
    assert!(members.contains(&sender), "the welcome's sender is not a member");
});
