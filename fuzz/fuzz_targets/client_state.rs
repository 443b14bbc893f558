//! The client's state as decoded from the opened vault (postcard).
//!
//! Asserts: a state that decodes encodes to bytes that decode, and encoding
//! those again gives the same bytes (decode ∘ encode is stable).
#![no_main]

use backchannel_client::state::State;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(state) = State::decode(data) else {
        return;
    };
    let once = state.encode().unwrap();
    let again = State::decode(&once).unwrap_or_else(|e| panic!("an encoded state does not decode: {e}"));
    assert_eq!(again.encode().unwrap(), once, "state encoding is not stable");
});
