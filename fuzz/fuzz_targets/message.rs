//! What members send inside a channel and through an invite mailbox:
//! application messages (from a verified member, still checked), join
//! requests (from anyone holding an invite), the channel info carried in
//! the group context of a welcome, the trail in a message's MLS
//! authenticated data, and the roles in a group context.
//!
//! Asserts: each that decodes re-encodes to exactly the same bytes (channel
//! info of version 1, which has no lifecycle fields, re-encodes as version 2
//! and must decode from there to the same info); file parts and offers stay
//! within their limits.
#![no_main]

use backchannel_core::channel::ChannelInfo;
use backchannel_core::roles::{Roles, MAX_ADMINS};
use backchannel_core::message::{valid_file_name, AppMessage, Body, JoinRequest, Trail, MAX_PART, MAX_PARTS, MAX_TEXT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = AppMessage::from_bytes(data) {
        match &m.body {
            Body::Text(t) => assert!(t.len() <= MAX_TEXT),
            Body::Part { data, .. } => assert!(data.len() <= MAX_PART),
            Body::File(f) => {
                assert!(valid_file_name(&f.name));
                assert!(f.part_size as usize <= MAX_PART && f.parts() <= MAX_PARTS);
            }
            Body::Close => {}
        }
        assert_eq!(m.to_bytes(), data, "an application message re-encodes to other bytes");
    }
    if let Ok(j) = JoinRequest::from_bytes(data) {
        assert_eq!(j.to_bytes(), data, "a join request re-encodes to other bytes");
    }
    if let Some(t) = Trail::from_bytes(data) {
        assert_eq!(t.to_bytes(), data, "a trail re-encodes to other bytes");
    }
    if let Ok(r) = Roles::from_bytes(data) {
        assert!(!r.admins().is_empty() && r.admins().len() <= MAX_ADMINS);
        assert_eq!(r.to_bytes(), data, "roles re-encode to other bytes");
    }
    if let Ok(info) = ChannelInfo::from_bytes(data) {
        // Versions 1 and 2 both decode, and each value has one encoding.
        assert_eq!(info.to_bytes(), data, "channel info re-encodes to other bytes");
    }
});
