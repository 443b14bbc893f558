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
//!   encode → decode → assemble unchanged;
//! - a forwarded request's answer inside its seal ([`decode_inner_response`],
//!   tried on the input as it is and cut or zero-padded to
//!   [`INNER_FRAME_SIZE`]): one that decodes is `Ok`, `Pong`, an error or a
//!   commit's part, [`INNER_FRAME_SIZE`] long, and [`encode_inner_response`]
//!   gives back exactly its bytes (its request id is 0: the inner decoder
//!   refuses any other); it decodes exactly when the same bytes zero-padded to
//!   [`FRAME_SIZE`] decode as an outer frame with request id 0 to one of those
//!   four, and to the same response. Any response
//!   the outer decoder gives is inner-encoded to a frame that decodes to it,
//!   or, for the kinds never forwarded, to `Error { Malformed, 0 }`.
#![no_main]

use backchannel_core::frame::{
    decode_inner_response, decode_response, encode_inner_response, encode_response, ErrorCode, Response,
    ResponseAssembler, ResponseFrame, FRAME_SIZE, INNER_FRAME_SIZE, MAX_FETCH,
};
use backchannel_fuzz::forwarded_answer_kind;
use libfuzzer_sys::fuzz_target;

/// Byte offset of an envelope frame's flags (after the tag and the request id).
const FLAGS_AT: usize = 5;
/// The "more" flag.
const MORE: u8 = 0x02;
/// Where the request id sits in a frame (after the one-byte tag).
const ID: std::ops::Range<usize> = 1..5;

fn inner(frame: &[u8]) {
    let decoded = decode_inner_response(frame);
    if frame.len() == INNER_FRAME_SIZE {
        let mut outer = frame.to_vec();
        outer.resize(FRAME_SIZE, 0);
        // An inner answer is an outer one of a forwarded kind with request id 0 (the one
        // encoding inside a seal).
        let as_outer = decode_response(&outer)
            .ok()
            .filter(|f| f.id == 0)
            .map(|f| f.response)
            .filter(forwarded_answer_kind);
        assert_eq!(
            decoded.as_ref().ok(),
            as_outer.as_ref(),
            "the inner and the outer decoder disagree on a forwarded answer"
        );
    }
    let Ok(resp) = decoded else {
        return;
    };
    assert_eq!(frame.len(), INNER_FRAME_SIZE);
    assert!(
        forwarded_answer_kind(&resp),
        "an inner frame decodes to a response that is never forwarded"
    );
    assert_eq!(&frame[ID], &[0; 4], "an inner answer with a request id other than 0 decodes");
    let again = encode_inner_response(&resp);
    let mut expected = frame.to_vec();
    expected[ID].fill(0);
    assert_eq!(again, expected, "a decoded inner response re-encodes to other bytes");
    assert_eq!(decode_inner_response(&again), Ok(resp));
}

/// Any response the client decodes, encoded as a forwarded answer.
fn inner_encoding(resp: &Response) {
    let frame = encode_inner_response(resp);
    assert_eq!(frame.len(), INNER_FRAME_SIZE);
    let expected = if forwarded_answer_kind(resp) {
        resp.clone()
    } else {
        Response::Error {
            code: ErrorCode::Malformed,
            detail: 0,
        }
    };
    assert_eq!(
        decode_inner_response(&frame),
        Ok(expected),
        "an inner-encoded answer does not decode to what it holds"
    );
}

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
    assert_eq!(again.as_ref(), Ok(&(decoded.id, decoded.response.clone())));
    inner_encoding(&decoded.response);
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
    inner(data);
    if data.len() != INNER_FRAME_SIZE {
        let mut f = data[..data.len().min(INNER_FRAME_SIZE)].to_vec();
        f.resize(INNER_FRAME_SIZE, 0);
        inner(&f);
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
