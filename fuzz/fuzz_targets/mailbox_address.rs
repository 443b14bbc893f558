//! Mailbox addresses in binary (inside invites and MLS leaves: attacker
//! input) and relay addresses in text (`bc://PIN@HOST:PORT`, from users and
//! from the relay's first line).
//!
//! Asserts: a binary address that decodes re-encodes to the same bytes; a
//! relay address that parses prints to text that parses to the same address.
#![no_main]

use backchannel_core::codec::Reader;
use backchannel_core::mailbox::MailboxAddress;
use backchannel_core::relay_address::RelayAddress;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = MailboxAddress::from_bytes(data) {
        assert_eq!(a.to_bytes(), data, "a mailbox address re-encodes to other bytes");
    }
    // The same decoder as a prefix of a longer structure.
    let mut r = Reader::new(data);
    if let Ok(a) = MailboxAddress::decode(&mut r) {
        let used = data.len() - r.remaining();
        assert_eq!(a.to_bytes(), &data[..used]);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(a) = s.parse::<RelayAddress>() {
            let printed = a.to_string();
            assert_eq!(
                printed.parse::<RelayAddress>(),
                Ok(a),
                "{printed:?} does not parse back"
            );
        }
    }
});
