//! What members send inside a channel and through an invite mailbox:
//! application messages (from a verified member, still checked), join
//! requests (from anyone holding an invite) and the channel info carried in
//! the group context of a welcome.
//!
//! Asserts: each that decodes re-encodes to exactly the same bytes.
#![no_main]

use backchannel_core::channel::ChannelInfo;
use backchannel_core::message::{AppMessage, Body, JoinRequest, MAX_TEXT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = AppMessage::from_bytes(data) {
        if let Body::Text(t) = &m.body {
            assert!(t.len() <= MAX_TEXT);
        }
        assert_eq!(m.to_bytes(), data, "an application message re-encodes to other bytes");
    }
    if let Ok(j) = JoinRequest::from_bytes(data) {
        assert_eq!(j.to_bytes(), data, "a join request re-encodes to other bytes");
    }
    if let Ok(info) = ChannelInfo::from_bytes(data) {
        assert_eq!(info.to_bytes(), data, "channel info re-encodes to other bytes");
    }
});
