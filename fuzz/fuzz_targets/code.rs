//! An exchange by invite code (attacker input on both sides): a typed code, the nameplate's
//! record the relay hands over, and the messages that arrive in the rendezvous and reply
//! mailboxes, fed to a real inviter and a real joiner.
//!
//! The first byte picks what the rest is. Asserts: what decodes encodes back to the same
//! bytes; a typed code that parses prints a code that parses to the same; an inviter given
//! hostile bytes refuses them (it never seals the invite for a joiner that did not prove the
//! code), and a joiner given hostile bytes never gets an invite out of them.
#![no_main]

use backchannel_core::code::{About, Code, ExchangeError, Inviter, Joiner, Message, Record};
use libfuzzer_sys::fuzz_target;
use rand_core::OsRng;

const PIN: [u8; 32] = [5; 32];

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(s) = std::str::from_utf8(rest) {
                if let Ok(code) = Code::parse(s) {
                    assert_eq!(Code::parse(&code.text()).as_ref(), Ok(&code), "a code does not read back");
                }
            }
        }
        1 => {
            if let Ok(r) = Record::from_bytes(rest) {
                assert_eq!(r.to_bytes(), rest, "a record does not encode back");
            }
            if let Ok(a) = About::from_bytes(rest) {
                assert_eq!(a.to_bytes(), rest, "an about does not encode back");
            }
            if let Ok(m) = Message::from_bytes(rest) {
                assert_eq!(m.to_bytes(), rest, "a message does not encode back");
            }
            let _ = About::unchecked_reply(rest);
        }
        2 => {
            // Toward the inviter: a hello that did not come from the code's holder.
            let code = Code::random(1, &mut OsRng);
            let (inviter, _) = Inviter::start(&code, &PIN, &mut OsRng);
            let (pake, key) = rest.split_at(rest.len().min(33));
            assert!(
                matches!(
                    inviter.finish(pake, key, b"invite"),
                    Err(ExchangeError::WrongCode | ExchangeError::Malformed)
                ),
                "the inviter answered a message nobody holding the code made"
            );
        }
        _ => {
            // Toward the joiner: a first message and an answer that no inviter made.
            let code = Code::random(1, &mut OsRng);
            let (theirs, answer) = rest.split_at(rest.len().min(33));
            if let Ok((joiner, _, _)) = Joiner::start(&code, &PIN, theirs, b"about", &mut OsRng) {
                assert!(joiner.finish(answer).is_err(), "the joiner opened an answer nobody sealed");
            }
        }
    }
});
