//! `bc://<PIN>@<HOST>:<PORT>`: where a relay is and which key it must present.
//!
//! The PIN is the SHA-256 digest of the relay's TLS certificate (DER),
//! written in lowercase RFC 4648 base32 without padding (52 characters).
//! Clients refuse a relay whose certificate does not hash to the PIN, so a
//! relay address is all a client needs to reach the right relay and no one
//! else, without any certificate authority.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::codec::{DecodeError, Reader, Writer};

/// The scheme prefix of a relay address.
pub const SCHEME: &str = "bc://";

/// The SHA-256 digest of a relay's certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pin(pub [u8; 32]);

impl Pin {
    /// The pin of a DER-encoded certificate.
    pub fn of_certificate(der: &[u8]) -> Self {
        Pin(Sha256::digest(der).into())
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::BASE32_NOPAD.encode(&self.0).to_ascii_lowercase())
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pin({self})")
    }
}

/// A relay address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RelayAddressError {
    /// The text does not have the `bc://PIN@HOST:PORT` shape.
    #[error("the relay address must look like bc://PIN@HOST:PORT, as printed by `backchannel relay`")]
    Shape,
    /// The PIN is not 52 base32 characters.
    #[error("the relay address has a damaged PIN; copy it again from the relay's first line of output")]
    Pin,
    /// The port is not a number from 1 to 65535.
    #[error("the relay address has an invalid port; copy it again from the relay's first line of output")]
    Port,
}

/// Where a relay listens and the pin of its certificate.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct RelayAddress {
    /// Certificate pin.
    pub pin: [u8; 32],
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl RelayAddress {
    /// The pin as a [`Pin`].
    pub fn pin(&self) -> Pin {
        Pin(self.pin)
    }

    /// `HOST:PORT`, with brackets around IPv6 literals.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Appends the binary form (pin, host, port).
    pub fn encode(&self, w: &mut Writer) {
        w.put(&self.pin).bytes16(self.host.as_bytes()).u16(self.port);
    }

    /// Appends the host and port as a short address carries them: `host (u8 length) |
    /// port (u16)` (the PIN, whole or its first 16 bytes, goes elsewhere).
    pub fn encode_place(&self, w: &mut Writer) {
        let host = self.host.as_bytes();
        w.u8(host.len().min(255) as u8)
            .put(&host[..host.len().min(255)])
            .u16(self.port);
    }

    /// Reads what [`RelayAddress::encode_place`] wrote: the host and the port.
    pub fn decode_place(r: &mut Reader<'_>) -> Result<(String, u16), DecodeError> {
        let len = usize::from(r.u8()?);
        let host = std::str::from_utf8(r.take(len)?)
            .map_err(|_| DecodeError::Invalid("relay host"))?
            .to_string();
        if host.is_empty() || host.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(DecodeError::Invalid("relay host"));
        }
        Ok((host, r.u16()?))
    }

    /// Reads the binary form.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let pin = r.array()?;
        let host = r.string16()?;
        if host.is_empty() || host.len() > 255 {
            return Err(DecodeError::Invalid("relay host"));
        }
        let port = r.u16()?;
        Ok(Self { pin, host, port })
    }
}

impl fmt::Display for RelayAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}@{}", self.pin(), self.authority())
    }
}

impl fmt::Debug for RelayAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelayAddress({self})")
    }
}

impl FromStr for RelayAddress {
    type Err = RelayAddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.trim().strip_prefix(SCHEME).ok_or(RelayAddressError::Shape)?;
        let (pin, hostport) = rest.split_once('@').ok_or(RelayAddressError::Shape)?;
        let pin_bytes = data_encoding::BASE32_NOPAD
            .decode(pin.to_ascii_uppercase().as_bytes())
            .map_err(|_| RelayAddressError::Pin)?;
        let pin: [u8; 32] = pin_bytes.try_into().map_err(|_| RelayAddressError::Pin)?;
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, p) = v6.split_once("]:").ok_or(RelayAddressError::Shape)?;
            // Only an IPv6 literal goes in brackets (and so prints back the same way).
            h.parse::<std::net::Ipv6Addr>().map_err(|_| RelayAddressError::Shape)?;
            (h, p)
        } else {
            let (h, p) = hostport.rsplit_once(':').ok_or(RelayAddressError::Shape)?;
            if h.contains([':', '[', ']']) {
                return Err(RelayAddressError::Shape);
            }
            (h, p)
        };
        if host.is_empty() || host.len() > 255 || host.contains(['/', '@', ' ']) {
            return Err(RelayAddressError::Shape);
        }
        let port: u16 = port.parse().map_err(|_| RelayAddressError::Port)?;
        if port == 0 {
            return Err(RelayAddressError::Port);
        }
        Ok(Self {
            pin,
            host: host.to_string(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        let a = RelayAddress {
            pin: [7; 32],
            host: "127.0.0.1".into(),
            port: 4433,
        };
        let s = a.to_string();
        assert!(s.starts_with("bc://"));
        assert_eq!(s.parse::<RelayAddress>(), Ok(a));
    }

    #[test]
    fn ipv6_round_trips() {
        let a = RelayAddress {
            pin: [1; 32],
            host: "::1".into(),
            port: 9,
        };
        assert_eq!(a.to_string().parse::<RelayAddress>(), Ok(a));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics_and_parsed_addresses_round_trip(s in ".{0,120}") {
            if let Ok(a) = s.parse::<RelayAddress>() {
                proptest::prop_assert_eq!(a.to_string().parse::<RelayAddress>(), Ok(a));
            }
        }

        #[test]
        fn addresses_round_trip(pin in proptest::prelude::any::<[u8; 32]>(), host in "[a-z0-9.-]{1,40}", port in 1u16..) {
            let a = RelayAddress { pin, host, port };
            proptest::prop_assert_eq!(a.to_string().parse::<RelayAddress>(), Ok(a));
        }
    }

    #[test]
    fn a_host_with_stray_brackets_or_colons_is_refused() {
        let pin = RelayAddress {
            pin: [1; 32],
            host: "h".into(),
            port: 9,
        }
        .to_string();
        let pin = pin
            .trim_start_matches("bc://")
            .split('@')
            .next()
            .unwrap_or_default()
            .to_string();
        for bad in ["a:b]:44", "[a:b]:44", "[notv6]", "a[b"] {
            let text = format!("bc://{pin}@{bad}:33");
            assert_eq!(text.parse::<RelayAddress>(), Err(RelayAddressError::Shape), "{text}");
        }
    }

    #[test]
    fn rejects_damage() {
        assert_eq!("http://x".parse::<RelayAddress>(), Err(RelayAddressError::Shape));
        assert_eq!("bc://abc@h:1".parse::<RelayAddress>(), Err(RelayAddressError::Pin));
        let good = RelayAddress {
            pin: [1; 32],
            host: "h".into(),
            port: 9,
        }
        .to_string();
        let bad_port = good.replace(":9", ":0");
        assert_eq!(bad_port.parse::<RelayAddress>(), Err(RelayAddressError::Port));
    }
}
