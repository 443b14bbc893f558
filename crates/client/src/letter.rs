//! The source's side of a drop box: leave an anonymous letter, and later read the
//! owner's reply. Nothing here needs a home: a source keeps only the receipt.
//!
//! A command line starts from text: [`Draft::new`] reads a `bc-drop:` address (long, or
//! short: [`Draft::resolve`] then fetches the keys it names) and the file to attach,
//! [`Draft::send`] delivers it, and [`read_receipt`] reads the
//! `bc-receipt:` line that [`check_replies`] takes.

use backchannel_core::drop::{
    open_reply, seal_letter, DropAddress, DropError, DropLine, Letter, LetterFile, Receipt, ReplyKey, ShortDropAddress,
    MAX_LETTER_FILE,
};
use backchannel_core::envelope::{open_envelope, seal_payload, PayloadKind, Reassembler};
use backchannel_core::frame::{ErrorCode, Request, Response, MAX_FETCH};
use backchannel_core::mailbox::MailboxKeys;
use backchannel_core::pow;
use rand_core::OsRng;
use std::collections::HashMap;
use std::path::Path;

use crate::connection::RelayConnection;
use crate::socks::ProxyAddr;
use crate::ClientError;

fn protocol(e: impl Into<crate::ProtocolError>) -> ClientError {
    ClientError::protocol(e)
}

/// A letter addressed and ready to seal: what a source gave `drop send`.
pub struct Draft {
    to: DropLine,
    text: String,
    file: Option<LetterFile>,
}

impl Draft {
    /// Reads the drop box's address (a `bc-drop:` line, long or short) and the file to
    /// attach (at most [`MAX_LETTER_FILE`] bytes). A letter needs a text, a file, or both.
    pub fn new(address: &str, text: Option<String>, file: Option<&Path>) -> Result<Self, ClientError> {
        let to = DropLine::from_text(address.trim()).map_err(|e| ClientError::Usage(e.to_string()))?;
        let file = file.map(read_attachment).transpose()?;
        if text.is_none() && file.is_none() {
            return Err(ClientError::Usage("give the letter's text, or --file PATH".into()));
        }
        Ok(Self {
            to,
            text: text.unwrap_or_default(),
            file,
        })
    }

    /// Fetches the drop box's keys that a short address names from its relay (through
    /// `proxy`) and checks them against the address; a long address needs nothing. Returns
    /// the proof of work the drop box demands per envelope, in bits.
    pub async fn resolve(&mut self, proxy: Option<&ProxyAddr>) -> Result<u8, ClientError> {
        if let DropLine::Short(short) = &self.to {
            let full = fetch_drop_address(short, proxy).await?;
            self.to = DropLine::Full(full);
        }
        match &self.to {
            DropLine::Full(to) => Ok(to.pow_bits),
            DropLine::Short(_) => Err(protocol(DropError::BundleMismatch)),
        }
    }

    /// Seals and delivers the letter ([`send_letter`]); returns the receipt that reads
    /// the owner's reply.
    pub async fn send(
        mut self,
        proxy: Option<&ProxyAddr>,
        progress: impl FnMut(usize, usize),
    ) -> Result<Receipt, ClientError> {
        self.resolve(proxy).await?;
        let DropLine::Full(to) = &self.to else {
            return Err(protocol(DropError::BundleMismatch));
        };
        send_letter(to, self.text, self.file, proxy, progress).await
    }
}

/// The drop box address a short one names: its keys from the relay whose PIN starts as the
/// address says, checked against the name it carries and that relay's whole PIN.
async fn fetch_drop_address(short: &ShortDropAddress, proxy: Option<&ProxyAddr>) -> Result<DropAddress, ClientError> {
    let mut conn = RelayConnection::connect_by_prefix(&short.host, short.port, short.pin_prefix, proxy).await?;
    let relay = conn.address(&short.host, short.port);
    let bundle =
        match conn.request(&Request::Bundle { name: short.name }).await {
            Ok(Response::Record(bundle)) => bundle,
            Ok(_) => return Err(protocol(DropError::BundleMismatch)),
            Err(e) if e.is(ErrorCode::NoSuchBundle) => {
                return Err(ClientError::Usage(
                    "the drop box's relay holds nothing under this short address: it has expired (the owner's \
                 backchannel renews it at each `drop read`), or the address is wrong; ask for the long address"
                        .into(),
                ))
            }
            Err(e) if e.is(ErrorCode::Malformed) => return Err(ClientError::Usage(
                "the drop box's relay runs an older backchannel that has no short addresses; ask for the long address"
                    .into(),
            )),
            Err(e) => return Err(e.into()),
        };
    let address = short.check(&bundle).map_err(protocol)?;
    if address.mailbox.relay.pin != relay.pin {
        return Err(protocol(DropError::BundleMismatch));
    }
    Ok(address)
}

/// Reads a file to attach to a letter, refusing one larger than a letter carries.
fn read_attachment(path: &Path) -> Result<LetterFile, ClientError> {
    let cannot = ClientError::path("read", path);
    let len = std::fs::metadata(path).map_err(cannot)?.len();
    if len > MAX_LETTER_FILE as u64 {
        return Err(ClientError::Usage(format!(
            "{} is too large for a letter (at most {} MiB)",
            path.display(),
            MAX_LETTER_FILE >> 20
        )));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    Ok(LetterFile {
        name,
        data: std::fs::read(path).map_err(cannot)?,
    })
}

/// Reads a receipt as `drop send` printed it (a `bc-receipt:` line).
pub fn read_receipt(text: &str) -> Result<Receipt, ClientError> {
    Receipt::from_text(text.trim()).map_err(|e| ClientError::Usage(e.to_string()))
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
    // A fresh mailbox for the answer, at the drop box's relay: nothing ties it to the source.
    let reply_box = MailboxKeys::generate(to.mailbox.relay.clone(), &mut OsRng);
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
            .map_err(|_| ClientError::protocol(crate::ProtocolError::WorkInterrupted))?;
        requests.push(Request::Send {
            send: to.mailbox.send.0,
            envelope,
            pow: nonce,
        });
    }
    progress(count, count);
    // Connect only once the work is done: it can take longer than the relay waits on
    // an idle connection.
    let mut conn = RelayConnection::connect_via(&to.mailbox.relay, proxy).await?;
    conn.request(&Request::create(&receipt.mailbox, 0)).await?;
    for r in conn.pipeline(&requests).await? {
        match r {
            Ok(_) => {}
            Err(e) if e.is(ErrorCode::NoSuchMailbox) => {
                return Err(ClientError::Usage(
                    "this drop box no longer exists at its relay (deleted, or expired after going unread for the relay's idle lifetime); ask its owner for a current address".into(),
                ))
            }
            Err(e) if e.is(ErrorCode::MailboxFull) => {
                return Err(ClientError::Usage(
                    "this drop box is full right now; send the letter again later (it was not delivered whole)".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(receipt)
}

/// Reads the owner's replies waiting for a receipt, in the order they came. Each is
/// handed to `show` and then deleted from the relay (a source keeps no state, so a
/// reply is shown once); `show` must put it where the source will see it before it
/// returns, and an error from it stops the check with that reply and every later one
/// still at the relay. Returns how many were shown.
///
/// Only envelopes of replies shown (and envelopes that do not open) are deleted: a reply
/// whose envelopes have not all arrived stays whole at the relay for the next check. A
/// reply fits in one fetch ([`MAX_REPLY_TEXT`](crate::engine::MAX_REPLY_TEXT)), so such
/// leftovers never keep later replies out of reach.
pub async fn check_replies(
    receipt: &Receipt,
    proxy: Option<&ProxyAddr>,
    mut show: impl FnMut(&str) -> std::io::Result<()>,
) -> Result<usize, ClientError> {
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
    let mut shown = 0;
    loop {
        let Response::Envelopes(list) = conn
            .request(&Request::Fetch {
                max: MAX_FETCH,
                wait_ms: 0,
            })
            .await?
        else {
            return Err(ClientError::protocol(crate::ProtocolError::Refused(
                "the relay answered a fetch with something else",
            )));
        };
        // Each fetch starts again from the oldest envelope not deleted, so each batch is
        // assembled on its own.
        let mut assembler = Reassembler::default();
        let mut pieces: HashMap<[u8; 16], Vec<u64>> = HashMap::new();
        let mut done = Vec::new();
        for d in list {
            let Ok(chunk) = open_envelope(&keys.address.seal, &keys.address.send, &d.envelope) else {
                done.push(d.seq);
                continue;
            };
            let id = chunk.message_id;
            pieces.entry(id).or_default().push(d.seq);
            let whole = match assembler.push(chunk) {
                Ok(Some(whole)) => whole,
                Ok(None) => continue,
                // Inconsistent chunks: nothing to show, nothing to keep.
                Err(_) => {
                    done.extend(pieces.remove(&id).unwrap_or_default());
                    continue;
                }
            };
            if whole.kind == PayloadKind::Reply {
                if let Ok(text) = open_reply(&receipt.key, &whole.payload) {
                    if let Err(e) = show(&text) {
                        acknowledge(&mut conn, keys, &done).await?;
                        return Err(ClientError::Usage(format!(
                            "could not write a reply out ({e}); it stays at the relay for the next check"
                        )));
                    }
                    shown += 1;
                }
            }
            done.extend(pieces.remove(&id).unwrap_or_default());
        }
        if done.is_empty() {
            return Ok(shown);
        }
        acknowledge(&mut conn, keys, &done).await?;
    }
}

/// Deletes envelopes of an opened mailbox at the relay.
async fn acknowledge(conn: &mut RelayConnection, keys: &MailboxKeys, seqs: &[u64]) -> Result<(), ClientError> {
    let acks: Vec<Request> = seqs
        .iter()
        .map(|&seq| Request::Ack {
            mailbox: keys.id(),
            seq,
        })
        .collect();
    for r in conn.pipeline(&acks).await? {
        r?;
    }
    Ok(())
}
