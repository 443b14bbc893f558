//! Response frames from a relay, as the client decodes and assembles them.
//!
//! Asserts:
//! - one frame that decodes re-encodes to the same bytes (an envelope frame
//!   with the "more" flag re-encodes as the last frame of its response, so
//!   it is compared with that flag cleared);
//! - the input cut into [`FRAME_SIZE`] frames (the last one zero-padded)
//!   and fed through a [`ResponseAssembler`] never yields more than
//!   [`MAX_FETCH`] envelopes, never yields a response before a frame
//!   without "more", and every response it yields survives
//!   encode → decode → assemble unchanged.
#![no_main]

use backchannel_core::frame::{
    decode_response, encode_response, Response, ResponseAssembler, ResponseFrame, FRAME_SIZE, MAX_FETCH,
};
use libfuzzer_sys::fuzz_target;

/// Byte offset of an envelope frame's flags (after the tag and the request id).
const FLAGS_AT: usize = 5;
/// The "more" flag.
const MORE: u8 = 0x02;

fn single(frame: &[u8]) {
    let Ok(decoded) = decode_response(frame) else {
        return;
    };
    assert_eq!(frame.len(), FRAME_SIZE);
    let frames = encode_response(decoded.id, &decoded.response);
    assert_eq!(frames.len(), 1, "one decoded frame re-encodes to one frame");
    let mut expected = frame.to_vec();
    if decoded.more {
        expected[FLAGS_AT] &= !MORE;
    }
    assert_eq!(frames[0], expected, "a decoded response re-encodes to other bytes");
    let again = decode_response(&frames[0]).map(|f| (f.id, f.response));
    assert_eq!(again, Ok((decoded.id, decoded.response)));
}

fn reassemble(frames: &[Vec<u8>]) -> Option<(u32, Response)> {
    let mut asm = ResponseAssembler::default();
    for f in frames {
        if let Some(done) = asm.push(decode_response(f).ok()?).ok()? {
            return Some(done);
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    single(data);
    if data.len() != FRAME_SIZE {
        let mut f = data[..data.len().min(FRAME_SIZE)].to_vec();
        f.resize(FRAME_SIZE, 0);
        single(&f);
    }

    let mut asm = ResponseAssembler::default();
    for piece in data.chunks(FRAME_SIZE) {
        let mut frame = piece.to_vec();
        frame.resize(FRAME_SIZE, 0);
        let Ok(decoded) = decode_response(&frame) else {
            continue;
        };
        let ResponseFrame { more, .. } = decoded;
        let is_envelopes = matches!(decoded.response, Response::Envelopes(_));
        match asm.push(decoded) {
            Ok(Some((id, resp))) => {
                assert!(
                    !(is_envelopes && more),
                    "a response completed on a frame that announced more"
                );
                if let Response::Envelopes(list) = &resp {
                    assert!(
                        list.len() <= MAX_FETCH as usize,
                        "{} envelopes in one response",
                        list.len()
                    );
                }
                let frames = encode_response(id, &resp);
                assert!(frames.iter().all(|f| f.len() == FRAME_SIZE));
                assert_eq!(
                    reassemble(&frames),
                    Some((id, resp)),
                    "an assembled response does not round-trip"
                );
            }
            Ok(None) => assert!(is_envelopes && more, "the assembler waits after a final frame"),
            // An interleaved or overlong stream: the client drops the connection.
            Err(_) => asm = ResponseAssembler::default(),
        }
    }
});
