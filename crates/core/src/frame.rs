//! Frames exchanged between a client and a relay over a WebSocket, one frame
//! per binary WebSocket message.
//!
//! Every frame starts with a one-byte tag and a four-byte request id. The
//! relay speaks first, with [`Response::Hello`] (request id 0) carrying the
//! per-connection nonce that mailbox-open proofs sign. Each request gets
//! exactly one response with the same request id; requests may be
//! pipelined. Byte-exact layouts are in `docs/protocol.md`.

use thiserror::Error;

use crate::codec::{DecodeError, Reader, Writer};
use crate::envelope::{Envelope, ENVELOPE_SIZE};
use crate::mailbox::MailboxId;

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u8 = 1;

/// Largest frame a client may send (a `Send` with its envelope fits with room).
pub const MAX_REQUEST_FRAME: usize = 8 * 1024;

/// Most envelopes the relay puts in one [`Response::Envelopes`].
pub const MAX_FETCH: u16 = 15;

/// Largest frame a relay may send.
pub const MAX_RESPONSE_FRAME: usize = 5 + 2 + MAX_FETCH as usize * (32 + 8 + ENVELOPE_SIZE) + 64;

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Create a mailbox with a recipient key and the digest of its send capability.
    Create {
        /// New mailbox id.
        mailbox: MailboxId,
        /// Ed25519 public key that may open it.
        recipient_key: [u8; 32],
        /// SHA-256 of the send capability.
        send_digest: [u8; 32],
    },
    /// Deliver one envelope.
    Send {
        /// Destination.
        mailbox: MailboxId,
        /// Send capability.
        send: [u8; 32],
        /// The sealed envelope.
        envelope: Envelope,
    },
    /// Prove possession of the recipient key for this connection.
    Open {
        /// Mailbox to open.
        mailbox: MailboxId,
        /// Ed25519 signature over the open context, the connection nonce and the id.
        proof: [u8; 64],
    },
    /// Fetch envelopes from the mailboxes opened on this connection, waiting
    /// up to `wait_ms` for one to arrive if none is there.
    Fetch {
        /// At most this many (capped at [`MAX_FETCH`]).
        max: u16,
        /// Long-poll time in milliseconds (capped by the relay).
        wait_ms: u32,
    },
    /// Acknowledge (and so delete) one envelope of an opened mailbox.
    Ack {
        /// Mailbox.
        mailbox: MailboxId,
        /// Sequence number from the delivery.
        seq: u64,
    },
    /// Delete an opened mailbox and everything in it.
    Delete {
        /// Mailbox.
        mailbox: MailboxId,
    },
    /// Claim `epoch` of a sequencer mailbox: granted to exactly one token per
    /// epoch, in order; repeating a granted claim with the same token is granted again.
    Claim {
        /// Sequencer mailbox.
        mailbox: MailboxId,
        /// Its send capability.
        send: [u8; 32],
        /// The epoch being claimed.
        epoch: u64,
        /// Identifies the claimant's commit.
        token: [u8; 32],
    },
    /// Keep-alive.
    Ping,
}

/// Why the relay refused a request. Codes are stable on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame could not be parsed.
    #[error("the relay could not parse a request (client and relay versions may differ)")]
    Malformed,
    /// The frame exceeded [`MAX_REQUEST_FRAME`].
    #[error("a request was larger than the relay accepts")]
    FrameTooLarge,
    /// No such mailbox, or a wrong send capability (deliberately the same answer).
    #[error("the mailbox does not exist at this relay, or the capability is wrong")]
    NoSuchMailbox,
    /// The mailbox id is already taken.
    #[error("a mailbox with this id already exists")]
    MailboxExists,
    /// The open proof did not verify.
    #[error("the proof of mailbox ownership did not verify")]
    BadProof,
    /// The mailbox has not been opened on this connection.
    #[error("the mailbox has not been opened on this connection")]
    NotOpened,
    /// The mailbox holds its maximum number of envelopes.
    #[error("the recipient's mailbox is full; it must collect its messages first")]
    MailboxFull,
    /// This connection has created or opened its maximum number of mailboxes.
    #[error("too many mailboxes on one connection")]
    TooManyMailboxes,
    /// The relay has its maximum number of connections.
    #[error("the relay has too many connections; try again later")]
    TooManyConnections,
    /// The claimed epoch is not the next one; `Response::Error.detail` holds the next epoch.
    #[error("another member changed the channel first")]
    EpochConflict,
    /// The relay's storage failed.
    #[error("the relay could not store the request; try again later")]
    Storage,
}

impl ErrorCode {
    fn to_u16(self) -> u16 {
        match self {
            ErrorCode::Malformed => 1,
            ErrorCode::FrameTooLarge => 2,
            ErrorCode::NoSuchMailbox => 3,
            ErrorCode::MailboxExists => 4,
            ErrorCode::BadProof => 5,
            ErrorCode::NotOpened => 6,
            ErrorCode::MailboxFull => 7,
            ErrorCode::TooManyMailboxes => 8,
            ErrorCode::TooManyConnections => 9,
            ErrorCode::EpochConflict => 10,
            ErrorCode::Storage => 11,
        }
    }

    fn from_u16(v: u16) -> Result<Self, DecodeError> {
        Ok(match v {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::FrameTooLarge,
            3 => ErrorCode::NoSuchMailbox,
            4 => ErrorCode::MailboxExists,
            5 => ErrorCode::BadProof,
            6 => ErrorCode::NotOpened,
            7 => ErrorCode::MailboxFull,
            8 => ErrorCode::TooManyMailboxes,
            9 => ErrorCode::TooManyConnections,
            10 => ErrorCode::EpochConflict,
            11 => ErrorCode::Storage,
            _ => return Err(DecodeError::Invalid("error code")),
        })
    }
}

/// Limits a relay announces in its hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request frame accepted.
    pub max_request_frame: u32,
    /// Most envelopes one mailbox holds.
    pub max_envelopes_per_mailbox: u32,
    /// Most mailboxes one connection may create or open.
    pub max_mailboxes_per_connection: u32,
}

/// One stored envelope handed to its recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The mailbox it sits in.
    pub mailbox: MailboxId,
    /// Its sequence number in that mailbox (increasing).
    pub seq: u64,
    /// The sealed bytes.
    pub envelope: Envelope,
}

/// A response from the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// First frame on every connection.
    Hello {
        /// Protocol version.
        version: u8,
        /// Nonce that open proofs on this connection sign.
        nonce: [u8; 32],
        /// The relay's limits.
        limits: Limits,
    },
    /// The request succeeded.
    Ok,
    /// Envelopes for a fetch (possibly none).
    Envelopes(Vec<Delivery>),
    /// The request failed.
    Error {
        /// Why.
        code: ErrorCode,
        /// Code-specific detail (the next epoch for [`ErrorCode::EpochConflict`]).
        detail: u64,
    },
    /// Answer to [`Request::Ping`].
    Pong,
}

/// A frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Larger than the limit for its direction.
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Not a valid frame.
    #[error("malformed frame: {0}")]
    Malformed(#[from] DecodeError),
}

/// Encodes a request with its id.
pub fn encode_request(id: u32, req: &Request) -> Vec<u8> {
    let mut w = Writer::with_capacity(ENVELOPE_SIZE + 128);
    match req {
        Request::Create {
            mailbox,
            recipient_key,
            send_digest,
        } => {
            w.u8(0x01).u32(id).put(&mailbox.0).put(recipient_key).put(send_digest);
        }
        Request::Send {
            mailbox,
            send,
            envelope,
        } => {
            w.u8(0x02).u32(id).put(&mailbox.0).put(send).put(envelope.as_bytes());
        }
        Request::Open { mailbox, proof } => {
            w.u8(0x03).u32(id).put(&mailbox.0).put(proof);
        }
        Request::Fetch { max, wait_ms } => {
            w.u8(0x04).u32(id).u16(*max).u32(*wait_ms);
        }
        Request::Ack { mailbox, seq } => {
            w.u8(0x05).u32(id).put(&mailbox.0).u64(*seq);
        }
        Request::Delete { mailbox } => {
            w.u8(0x06).u32(id).put(&mailbox.0);
        }
        Request::Claim {
            mailbox,
            send,
            epoch,
            token,
        } => {
            w.u8(0x07).u32(id).put(&mailbox.0).put(send).u64(*epoch).put(token);
        }
        Request::Ping => {
            w.u8(0x08).u32(id);
        }
    }
    w.into_vec()
}

/// Decodes a request frame from a client (attacker input).
pub fn decode_request(frame: &[u8]) -> Result<(u32, Request), FrameError> {
    if frame.len() > MAX_REQUEST_FRAME {
        return Err(FrameError::TooLarge(frame.len()));
    }
    let mut r = Reader::new(frame);
    let tag = r.u8()?;
    let id = r.u32()?;
    let req = match tag {
        0x01 => Request::Create {
            mailbox: MailboxId(r.array()?),
            recipient_key: r.array()?,
            send_digest: r.array()?,
        },
        0x02 => Request::Send {
            mailbox: MailboxId(r.array()?),
            send: r.array()?,
            envelope: Envelope::from_slice(r.take(ENVELOPE_SIZE)?)?,
        },
        0x03 => Request::Open {
            mailbox: MailboxId(r.array()?),
            proof: r.array()?,
        },
        0x04 => Request::Fetch {
            max: r.u16()?,
            wait_ms: r.u32()?,
        },
        0x05 => Request::Ack {
            mailbox: MailboxId(r.array()?),
            seq: r.u64()?,
        },
        0x06 => Request::Delete {
            mailbox: MailboxId(r.array()?),
        },
        0x07 => Request::Claim {
            mailbox: MailboxId(r.array()?),
            send: r.array()?,
            epoch: r.u64()?,
            token: r.array()?,
        },
        0x08 => Request::Ping,
        _ => return Err(DecodeError::Invalid("request tag").into()),
    };
    r.finish()?;
    Ok((id, req))
}

/// Encodes a response with the id of the request it answers.
pub fn encode_response(id: u32, resp: &Response) -> Vec<u8> {
    let mut w = Writer::with_capacity(64);
    match resp {
        Response::Hello { version, nonce, limits } => {
            w.u8(0x81)
                .u32(id)
                .u8(*version)
                .put(nonce)
                .u32(limits.max_request_frame)
                .u32(limits.max_envelopes_per_mailbox)
                .u32(limits.max_mailboxes_per_connection);
        }
        Response::Ok => {
            w.u8(0x82).u32(id);
        }
        Response::Envelopes(list) => {
            let n = list.len().min(MAX_FETCH as usize);
            w.u8(0x83).u32(id).u16(n as u16);
            for d in &list[..n] {
                w.put(&d.mailbox.0).u64(d.seq).put(d.envelope.as_bytes());
            }
        }
        Response::Error { code, detail } => {
            w.u8(0x84).u32(id).u16(code.to_u16()).u64(*detail);
        }
        Response::Pong => {
            w.u8(0x85).u32(id);
        }
    }
    w.into_vec()
}

/// Decodes a response frame from a relay (attacker input for the client).
pub fn decode_response(frame: &[u8]) -> Result<(u32, Response), FrameError> {
    if frame.len() > MAX_RESPONSE_FRAME {
        return Err(FrameError::TooLarge(frame.len()));
    }
    let mut r = Reader::new(frame);
    let tag = r.u8()?;
    let id = r.u32()?;
    let resp = match tag {
        0x81 => Response::Hello {
            version: r.u8()?,
            nonce: r.array()?,
            limits: Limits {
                max_request_frame: r.u32()?,
                max_envelopes_per_mailbox: r.u32()?,
                max_mailboxes_per_connection: r.u32()?,
            },
        },
        0x82 => Response::Ok,
        0x83 => {
            let n = r.u16()?;
            if n > MAX_FETCH {
                return Err(DecodeError::Invalid("envelope count").into());
            }
            let mut list = Vec::with_capacity(n as usize);
            for _ in 0..n {
                list.push(Delivery {
                    mailbox: MailboxId(r.array()?),
                    seq: r.u64()?,
                    envelope: Envelope::from_slice(r.take(ENVELOPE_SIZE)?)?,
                });
            }
            Response::Envelopes(list)
        }
        0x84 => Response::Error {
            code: ErrorCode::from_u16(r.u16()?)?,
            detail: r.u64()?,
        },
        0x85 => Response::Pong,
        _ => return Err(DecodeError::Invalid("response tag").into()),
    };
    r.finish()?;
    Ok((id, resp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_id() -> impl Strategy<Value = MailboxId> {
        any::<[u8; 32]>().prop_map(MailboxId)
    }

    fn arb_envelope() -> impl Strategy<Value = Envelope> {
        (any::<u8>(), any::<u64>()).prop_map(|(b, n)| {
            let mut v = vec![b; ENVELOPE_SIZE];
            v[..8].copy_from_slice(&n.to_be_bytes());
            Envelope::from_slice(&v).unwrap_or_else(|_| unreachable!())
        })
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (arb_id(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(mailbox, recipient_key, send_digest)| {
                Request::Create {
                    mailbox,
                    recipient_key,
                    send_digest,
                }
            }),
            (arb_id(), any::<[u8; 32]>(), arb_envelope()).prop_map(|(mailbox, send, envelope)| Request::Send {
                mailbox,
                send,
                envelope
            }),
            (arb_id(), proptest::collection::vec(any::<u8>(), 64)).prop_map(|(mailbox, p)| {
                let mut proof = [0u8; 64];
                proof.copy_from_slice(&p);
                Request::Open { mailbox, proof }
            }),
            (any::<u16>(), any::<u32>()).prop_map(|(max, wait_ms)| Request::Fetch { max, wait_ms }),
            (arb_id(), any::<u64>()).prop_map(|(mailbox, seq)| Request::Ack { mailbox, seq }),
            arb_id().prop_map(|mailbox| Request::Delete { mailbox }),
            (arb_id(), any::<[u8; 32]>(), any::<u64>(), any::<[u8; 32]>()).prop_map(|(mailbox, send, epoch, token)| {
                Request::Claim {
                    mailbox,
                    send,
                    epoch,
                    token,
                }
            }),
            Just(Request::Ping),
        ]
    }

    fn arb_response() -> impl Strategy<Value = Response> {
        prop_oneof![
            (any::<[u8; 32]>(), any::<(u32, u32, u32)>()).prop_map(|(nonce, (a, b, c))| Response::Hello {
                version: PROTOCOL_VERSION,
                nonce,
                limits: Limits {
                    max_request_frame: a,
                    max_envelopes_per_mailbox: b,
                    max_mailboxes_per_connection: c
                }
            }),
            Just(Response::Ok),
            Just(Response::Pong),
            proptest::collection::vec((arb_id(), any::<u64>(), arb_envelope()), 0..4).prop_map(|v| {
                Response::Envelopes(
                    v.into_iter()
                        .map(|(mailbox, seq, envelope)| Delivery { mailbox, seq, envelope })
                        .collect(),
                )
            }),
            (1u16..=11, any::<u64>()).prop_map(|(c, detail)| Response::Error {
                code: ErrorCode::from_u16(c).unwrap_or(ErrorCode::Malformed),
                detail
            }),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(id in any::<u32>(), req in arb_request()) {
            let bytes = encode_request(id, &req);
            prop_assert!(bytes.len() <= MAX_REQUEST_FRAME);
            prop_assert_eq!(decode_request(&bytes), Ok((id, req)));
        }

        #[test]
        fn responses_round_trip(id in any::<u32>(), resp in arb_response()) {
            let bytes = encode_response(id, &resp);
            prop_assert!(bytes.len() <= MAX_RESPONSE_FRAME);
            prop_assert_eq!(decode_response(&bytes), Ok((id, resp)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..9000)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }

        #[test]
        fn truncation_is_an_error(id in any::<u32>(), req in arb_request(), cut in 1usize..64) {
            let bytes = encode_request(id, &req);
            let cut = cut.min(bytes.len());
            prop_assert!(decode_request(&bytes[..bytes.len() - cut]).is_err());
        }
    }

    #[test]
    fn oversize_request_is_rejected_before_parsing() {
        let big = vec![0x08u8; MAX_REQUEST_FRAME + 1];
        assert_eq!(decode_request(&big), Err(FrameError::TooLarge(MAX_REQUEST_FRAME + 1)));
    }
}
