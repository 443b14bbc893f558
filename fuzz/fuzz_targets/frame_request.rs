//! A request frame from a client, as the relay decodes it.
//!
//! Asserts: a frame that decodes re-encodes to exactly the same bytes (the
//! format has one encoding per request), and it is [`FRAME_SIZE`] long.
//! The input is tried as it is (every size) and cut or zero-padded to
//! [`FRAME_SIZE`], so short inputs reach the body decoders too.
#![no_main]

use backchannel_core::frame::{decode_request, encode_request, FRAME_SIZE};
use libfuzzer_sys::fuzz_target;

fn check(frame: &[u8]) {
    if let Ok((id, req)) = decode_request(frame) {
        assert_eq!(frame.len(), FRAME_SIZE);
        let again = encode_request(id, &req);
        assert_eq!(again, frame, "a decoded request re-encodes to other bytes");
        assert_eq!(decode_request(&again), Ok((id, req)));
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() != FRAME_SIZE {
        let mut f = data[..data.len().min(FRAME_SIZE)].to_vec();
        f.resize(FRAME_SIZE, 0);
        check(&f);
    }
});
