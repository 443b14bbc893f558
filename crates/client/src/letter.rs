//! The source's side of a drop box: leave an anonymous letter, and later read the
//! owner's reply. Nothing here needs a home: a source keeps only the receipt.

use backchannel_core::drop::{open_reply, seal_letter, DropAddress, Letter, LetterFile, Receipt, ReplyKey};
use backchannel_core::envelope::{open_envelope, seal_payload, PayloadKind, Reassembler};
use backchannel_core::frame::{ErrorCode, Request, Response, MAX_FETCH};
use backchannel_core::mailbox::MailboxKeys;
use backchannel_core::pow;
use rand_core::OsRng;

use crate::connection::RelayConnection;
use crate::socks::ProxyAddr;
use crate::ClientError;

fn protocol<E: std::fmt::Display>(e: E) -> ClientError {
    ClientError::Protocol(e.to_string())
}

/// Seals `text` (and a file) to the drop box's owner, delivers it with the proof of
/// work the drop box demands, and returns the receipt that reads the owner's reply.
/// `progress` is told before the work for each envelope starts (index, count).
pub async fn send_letter(
    to: &DropAddress,
    text: String,
    file: Option<LetterFile>,
    proxy: Option<&ProxyAddr>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Receipt, ClientError> {
    let mut conn = RelayConnection::connect_via(&to.mailbox.relay, proxy).await?;
    // A fresh mailbox for the answer, at the drop box's relay: nothing ties it to the source.
    let reply_box = MailboxKeys::generate(to.mailbox.relay.clone(), &mut OsRng);
    conn.request(&Request::Create {
        mailbox: reply_box.id(),
        recipient_key: reply_box.recipient_public(),
        send_digest: reply_box.address.send.digest(),
        pow_bits: 0,
    })
    .await?;
    let receipt = Receipt {
        mailbox: reply_box,
        key: ReplyKey::generate(&mut OsRng),
    };
    let letter = Letter {
        text,
        file,
        reply: Some(receipt.reply_to()),
    };
    let sealed = seal_letter(to, &letter, &mut OsRng).map_err(|e| ClientError::Usage(e.to_string()))?;
    let envelopes = seal_payload(
        &to.mailbox.seal,
        &to.mailbox.send,
        PayloadKind::Letter,
        &sealed,
        &mut OsRng,
    )
    .map_err(protocol)?;
    let digest = to.mailbox.send.digest();
    let count = envelopes.len();
    let mut requests = Vec::with_capacity(count);
    for (i, envelope) in envelopes.into_iter().enumerate() {
        progress(i, count);
        let challenge = pow::challenge(&digest, &envelope);
        let bits = to.pow_bits;
        // The work is pure CPU: off the executor, so the connection's keep-alives go on.
        let nonce = tokio::task::spawn_blocking(move || pow::solve(&challenge, bits))
            .await
            .map_err(|_| ClientError::Protocol("the proof of work was interrupted".into()))?;
        requests.push(Request::Send {
            send: to.mailbox.send.0,
            envelope,
            pow: nonce,
        });
    }
    progress(count, count);
    for r in conn.pipeline(&requests).await? {
        match r {
            Ok(_) => {}
            Err(e) if e.is(ErrorCode::NoSuchMailbox) => {
                return Err(ClientError::Usage(
                    "this drop box no longer exists at its relay; ask its owner for a current address".into(),
                ))
            }
            Err(e) if e.is(ErrorCode::MailboxFull) => {
                return Err(ClientError::Usage(
                    "this drop box is full right now; try again later (nothing was delivered)".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(receipt)
}

/// Reads the owner's replies waiting for a receipt. They stay at the relay (a source
/// keeps no state) until the relay's envelope lifetime ends.
pub async fn check_replies(receipt: &Receipt, proxy: Option<&ProxyAddr>) -> Result<Vec<String>, ClientError> {
    let keys = &receipt.mailbox;
    let mut conn = RelayConnection::connect_via(&keys.address.relay, proxy).await?;
    let proof = keys.open_proof(conn.nonce());
    match conn
        .request(&Request::Open {
            mailbox: keys.id(),
            proof,
        })
        .await
    {
        Ok(_) => {}
        Err(e) if e.is(ErrorCode::NoSuchMailbox) => {
            return Err(ClientError::Usage(
                "the relay no longer holds this receipt's mailbox: replies expire with the relay's envelope lifetime"
                    .into(),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    let mut replies = Vec::new();
    let mut assembler = Reassembler::default();
    let mut seen = std::collections::BTreeSet::new();
    // Without acknowledging, a fetch returns the oldest envelopes again: ask for as
    // many as the relay will give at once and stop when nothing new comes.
    loop {
        let Response::Envelopes(list) = conn
            .request(&Request::Fetch {
                max: MAX_FETCH,
                wait_ms: 0,
            })
            .await?
        else {
            return Err(ClientError::Protocol(
                "the relay answered a fetch with something else".into(),
            ));
        };
        let fresh: Vec<_> = list.into_iter().filter(|d| seen.insert(d.seq)).collect();
        if fresh.is_empty() {
            break;
        }
        for d in fresh {
            let Ok(chunk) = open_envelope(&keys.address.seal, &keys.address.send, &d.envelope) else {
                continue;
            };
            if let Ok(Some(whole)) = assembler.push(chunk) {
                if whole.kind == PayloadKind::Reply {
                    if let Ok(text) = open_reply(&receipt.key, &whole.payload) {
                        replies.push(text);
                    }
                }
            }
        }
    }
    Ok(replies)
}
