//! The client's handling of a delivered MLS message: [`Channel::process`]
//! on bob's copy of a three-member channel (alice, bob, carol; the default
//! post-quantum suite), then, for application data, the
//! [`AppMessage`] decoder, as the client engine does.
//!
//! Bob's state is the fixture `fixtures/channel_process.bin`, restored
//! fresh for every input; the seeds are real messages for that epoch
//! (application messages from alice and carol, commits adding, removing
//! and updating, a leave proposal). Asserts: `process` returns a message
//! or a [`Rejection`], never panics; an accepted message names a current
//! member as its sender; a message accepted once is refused the second
//! time (no replay).
#![no_main]

use std::sync::OnceLock;

use backchannel_core::channel::{Channel, Provider, Received};
use backchannel_core::message::AppMessage;
use backchannel_fuzz::MlsFixture;
use libfuzzer_sys::fuzz_target;

fn fixture() -> &'static MlsFixture {
    static F: OnceLock<MlsFixture> = OnceLock::new();
    F.get_or_init(|| {
        MlsFixture::from_bytes(include_bytes!("../fixtures/channel_process.bin"))
            .expect("fixtures/channel_process.bin is damaged; regenerate it with `cargo run --example seeds`")
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let provider = Provider::from_snapshot(f.snapshot.clone()).unwrap();
    let mut channel = Channel::load(&provider, &f.group_id)
        .unwrap()
        .expect("the fixture holds bob's channel");
    let members = channel.members();
    let Ok(received) = channel.process(&provider, data) else {
        return;
    };
    match received {
        Received::Application { sender, plaintext, .. } => {
            assert!(members.contains(&sender), "an application message from a non-member");
            let _ = AppMessage::from_bytes(&plaintext);
            assert!(
                channel.process(&provider, data).is_err(),
                "a replayed application message was accepted"
            );
        }
        Received::Proposal { sender, .. } => {
            assert!(
                sender.is_some_and(|s| members.contains(&s)),
                "a proposal from a non-member"
            );
        }
        Received::Commit { committer, .. } => {
            if let Some(c) = committer {
                assert!(members.contains(&c), "a commit from a non-member");
            }
            let _ = channel.members();
            let _ = channel.info();
        }
    }
});
