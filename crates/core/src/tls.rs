//! The TLS policy of every link between a client and a relay (docs/protocol.md,
//! "Connection"): TLS 1.3 whose one key exchange is the hybrid X25519MLKEM768, so that a
//! recording of a link, broken later by a quantum computer, gives up nothing the handshake
//! protects (capabilities, receive ids, claims, the mailbox graph). rustls holds no I/O:
//! this is policy, kept here so that the client and the relay cannot drift apart.

/// The crypto provider of every client and relay TLS configuration: aws-lc-rs's, with
/// X25519MLKEM768 as its only key exchange group. A peer that offers only classical groups
/// fails the handshake; no connection falls back to a classical exchange.
pub fn provider() -> rustls::crypto::CryptoProvider {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768];
    p
}

/// The TLS code point of X25519MLKEM768 (draft-ietf-tls-ecdhe-mlkem), as it appears in a
/// ClientHello's `supported_groups` and `key_share`.
pub const X25519MLKEM768_CODE: u16 = 0x11ec;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_group_is_the_hybrid() {
        let p = provider();
        assert_eq!(p.kx_groups.len(), 1);
        assert_eq!(u16::from(p.kx_groups[0].name()), X25519MLKEM768_CODE);
    }
}
