//! A request frame from a client, as the relay decodes it; and a forwarded
//! request's frame inside its seal, as the destination relay decodes it.
//!
//! Asserts:
//! - a frame that decodes ([`decode_request`]) re-encodes to exactly the same
//!   bytes (the format has one encoding per request), and it is
//!   [`FRAME_SIZE`] long;
//! - an inner frame that decodes ([`decode_inner_request`]) is
//!   [`INNER_FRAME_SIZE`] long, holds a [`forwardable`] request, and
//!   [`encode_inner_request`] gives back exactly its bytes (its request id is 0:
//!   the inner decoder refuses any other, so each request has one encoding
//!   inside a seal); it decodes exactly when the same bytes zero-padded to
//!   [`FRAME_SIZE`] decode as an outer frame with request id 0 to a
//!   forwardable request, and to the same one.
//!
//! The input is tried as it is (every size) and cut or zero-padded to
//! [`FRAME_SIZE`] and to [`INNER_FRAME_SIZE`], so short inputs reach the body
//! decoders too.
#![no_main]

use backchannel_core::frame::{
    decode_inner_request, decode_request, encode_inner_request, encode_request, forwardable, FRAME_SIZE,
    INNER_FRAME_SIZE,
};
use libfuzzer_sys::fuzz_target;

/// Where the request id sits in a frame (after the one-byte tag).
const ID: std::ops::Range<usize> = 1..5;

fn check(frame: &[u8]) {
    if let Ok((id, req)) = decode_request(frame) {
        assert_eq!(frame.len(), FRAME_SIZE);
        let again = encode_request(id, &req);
        assert_eq!(again, frame, "a decoded request re-encodes to other bytes");
        assert_eq!(decode_request(&again), Ok((id, req)));
    }
}

fn check_inner(frame: &[u8]) {
    let inner = decode_inner_request(frame);
    if frame.len() == INNER_FRAME_SIZE {
        // The same bytes as an outer frame: an inner request is an outer one
        // that is forwardable (every forwardable request fits in the inner size)
        // with request id 0 (the one encoding inside a seal).
        let mut outer = frame.to_vec();
        outer.resize(FRAME_SIZE, 0);
        let as_outer = decode_request(&outer)
            .ok()
            .filter(|(id, _)| *id == 0)
            .map(|(_, r)| r)
            .filter(forwardable);
        assert_eq!(
            inner.as_ref().ok(),
            as_outer.as_ref(),
            "the inner and the outer decoder disagree on a forwardable request"
        );
    }
    let Ok(req) = inner else {
        return;
    };
    assert_eq!(frame.len(), INNER_FRAME_SIZE);
    assert!(
        forwardable(&req),
        "an inner frame decodes to a request that is not forwarded"
    );
    assert_eq!(&frame[ID], &[0; 4], "an inner request with a request id other than 0 decodes");
    let again = encode_inner_request(&req).expect("a forwardable request has an inner encoding");
    let mut expected = frame.to_vec();
    expected[ID].fill(0);
    assert_eq!(again, expected, "a decoded inner request re-encodes to other bytes");
    assert_eq!(decode_inner_request(&again), Ok(req));
}

fn sized(data: &[u8], size: usize) -> Vec<u8> {
    let mut f = data[..data.len().min(size)].to_vec();
    f.resize(size, 0);
    f
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() != FRAME_SIZE {
        check(&sized(data, FRAME_SIZE));
    }
    check_inner(data);
    if data.len() != INNER_FRAME_SIZE {
        check_inner(&sized(data, INNER_FRAME_SIZE));
    }
});
