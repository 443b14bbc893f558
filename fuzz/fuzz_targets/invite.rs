//! Invite lines, as `backchannel join` parses them (attacker input).
//!
//! The input is tried three ways: as text; as the text after `bc-invite:`;
//! and as an invite *body* that this target checksums and base32-encodes
//! itself, so mutations reach the structure behind the checksum.
//! Asserts: an invite that parses prints back to a line that parses to the
//! same invite; a body line built here parses exactly when its body is a
//! well-formed version-2 body, and then prints back to the same line.
#![no_main]

use backchannel_core::invite::{Invite, InviteError, InviteLine, PREFIX};
use backchannel_fuzz::invite_checksum;
use libfuzzer_sys::fuzz_target;

fn text(s: &str) -> Result<Invite, InviteError> {
    // A short line (version 3) reads back to itself, and opens no bundle but its own.
    if let Ok(InviteLine::Short(short)) = InviteLine::from_text(s) {
        let printed = short.to_text();
        assert_eq!(
            InviteLine::from_text(&printed),
            Ok(InviteLine::Short(short.clone())),
            "a short line does not round-trip"
        );
        assert!(short.open(s.as_bytes()).is_err(), "a short line opened text as its bundle");
    }
    let parsed = Invite::from_text(s);
    if let Ok(inv) = &parsed {
        let line = inv.to_text();
        assert!(line.starts_with(PREFIX) && !line.contains(char::is_whitespace));
        assert_eq!(
            Invite::from_text(&line).as_ref(),
            Ok(inv),
            "an invite does not round-trip"
        );
    }
    parsed
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = text(s);
        let _ = text(&format!("{PREFIX}{s}"));
    }
    let mut body = data.to_vec();
    body.extend_from_slice(&invite_checksum(data));
    let line = format!(
        "{PREFIX}{}",
        data_encoding::BASE32_NOPAD.encode(&body).to_ascii_lowercase()
    );
    match text(&line) {
        Ok(inv) => {
            assert_eq!(
                inv.to_text(),
                line,
                "an invite prints differently from the line it came from"
            );
            assert_eq!(
                text(&format!(
                    "  {}\n",
                    line.to_ascii_uppercase().replace("BC-INVITE:", PREFIX)
                )),
                Ok(inv)
            );
        }
        Err(e) => assert!(
            matches!(e, InviteError::Damaged | InviteError::UnknownVersion),
            "a checksummed body failed with {e:?}"
        ),
    }
});
