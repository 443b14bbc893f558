//! The owner's side of an anonymous drop box: create it, read its letters, answer
//! them. (The source's side, which needs no home, is `crate::letter`.)

use std::path::{Path, PathBuf};

use std::time::Duration;

use backchannel_core::drop::{DropKeys, ShortDropAddress, DEFAULT_POW_BITS, MAX_POW_BITS};
use backchannel_core::frame::{ErrorCode, Request};
use backchannel_core::identity::validate_name;
use rand_core::OsRng;

use super::Engine;
use crate::session::Blobs;
use crate::transport::Compartment;
use crate::{ClientError, Holdup};

/// How long a relay keeps a drop box's keys for its short address after each `drop create`,
/// `drop address` or `drop read` (the relay may keep them less: its `--bundle-lifetime`).
pub const SHORT_ADDRESS_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// A letter as `drop read` shows it.
#[derive(Debug, Clone)]
pub struct LetterView {
    /// The drop box.
    pub drop: String,
    /// Id for `drop reply`.
    pub id: String,
    /// Arrival (Unix s).
    pub received_at: u64,
    /// What the source wrote.
    pub text: String,
    /// Where its attached file was saved.
    pub file: Option<String>,
    /// Whether the source can read a reply.
    pub can_reply: bool,
}

impl Engine {
    /// Creates a drop box at our relay whose every envelope costs a sender `pow_bits`
    /// of work, and returns its public `bc-drop:` address.
    pub async fn drop_create(&mut self, name: &str, pow_bits: Option<u8>) -> Result<String, ClientError> {
        validate_name(name).map_err(|e| ClientError::Usage(format!("drop box {e}")))?;
        if self.session.has_drop(name) {
            return Err(ClientError::Usage(format!(
                "you already have a drop box called \"{name}\"; `backchannel drop address {name}` prints its address"
            )));
        }
        let pow_bits = pow_bits.unwrap_or(DEFAULT_POW_BITS);
        if pow_bits > MAX_POW_BITS {
            return Err(ClientError::Usage(format!("--pow-bits can be at most {MAX_POW_BITS}")));
        }
        let keys = DropKeys::generate(&mut OsRng).map_err(ClientError::protocol)?;
        let relay = self.session.state().relay.clone();
        let mailbox = self.create_mailbox_with_work(&relay, pow_bits).await?;
        self.session.add_drop(name, mailbox, keys, pow_bits);
        self.perform_local()?;
        self.drop_short_address(name).await
    }

    /// The public address of a drop box, whole (some 3,000 characters).
    pub fn drop_address(&self, name: &str) -> Result<String, ClientError> {
        self.session.drop_address(name)
    }

    /// A drop box's short address (at most 120 characters for a host of up to 30), with its
    /// keys published again at its relay for [`SHORT_ADDRESS_LIFETIME`]; the whole address
    /// when the relay is older than short addresses.
    pub async fn drop_short_address(&mut self, name: &str) -> Result<String, ClientError> {
        let address = self.session.drop_box_address(name)?;
        let short = ShortDropAddress::of(&address);
        let relay = address.mailbox.relay.clone();
        // On the drop box's own links: the relay learns nothing it did not know.
        let id = self.session.drop_box(name)?.mailbox.id();
        let key = self.key(&relay, Compartment::Mailbox(id));
        let published = self
            .request(
                &key,
                &Request::Publish {
                    name: short.name,
                    expires_at: self.session.now_s().saturating_add(SHORT_ADDRESS_LIFETIME.as_secs()),
                    bundle: address.bundle(),
                },
            )
            .await;
        self.release(&key);
        match published {
            Ok(_) => Ok(short.to_text()),
            Err(e) if e.is(ErrorCode::Malformed) => Ok(address.to_text()),
            Err(e) => Err(e.into()),
        }
    }

    /// Letters of a drop box: unread ones, or all. Attached files are written into
    /// `save_to` (created if needed) the first time they are shown.
    pub fn drop_read(&mut self, name: &str, all: bool, save_to: &Path) -> Result<Vec<LetterView>, ClientError> {
        let d = self.session.drop_box(name)?;
        let letters = if all {
            d.letters.entries_from(0, &self.session.blobs)?
        } else {
            d.letters.unread_entries(&self.session.blobs)?
        };
        let unread = d.letters.unread() > 0;
        let mut out = Vec::new();
        let mut saved_folders = Vec::new();
        for mut l in letters {
            if let Some(f) = l.file.clone() {
                let written = self
                    .session
                    .blobs
                    .read(&f.folder, "0")
                    .and_then(|data| save_file(save_to, &l.id, &f.name, &data));
                match written {
                    Ok(path) => {
                        let saved = path.display().to_string();
                        let s = &mut self.session;
                        let noted = s.state.drops.get_mut(name).map(|d| {
                            let noted = d.letters.update(
                                &mut s.blobs,
                                |x| x.id == l.id,
                                |x| {
                                    x.saved_file = Some(saved.clone());
                                    x.file = None;
                                },
                            );
                            if matches!(noted, Ok(true)) {
                                d.attachments.retain(|a| *a != f.folder);
                            }
                            noted
                        });
                        // Sealed copies go only once the vault no longer points at them.
                        if matches!(noted, Some(Ok(true))) {
                            saved_folders.push(f.folder);
                        }
                        l.saved_file = Some(saved);
                        l.file = None;
                    }
                    // The letter is still shown; its file stays sealed for the next read.
                    Err(e) => {
                        self.session
                            .warn(None, format!("the file attached to letter {} was not saved: {e}", l.id));
                    }
                }
            }
            out.push(LetterView {
                drop: name.to_string(),
                id: l.id,
                received_at: l.received_at,
                text: l.text,
                file: l.saved_file,
                can_reply: l.reply.is_some(),
            });
        }
        if let Some(d) = self.session.state.drops.get_mut(name) {
            if unread || !saved_folders.is_empty() {
                d.letters.mark_read();
                self.session.save();
            }
        }
        // Deleted once the state that no longer points at them is saved.
        for folder in saved_folders {
            self.session.blobs.remove(&folder);
        }
        self.perform_local()?;
        Ok(out)
    }

    /// Answers a letter: sealed with the letter's reply key into the mailbox its source
    /// made for the answer. Queued like any message if the relay does not answer.
    pub async fn drop_reply(&mut self, name: &str, id: &str, text: &str) -> Result<(), ClientError> {
        self.session.queue_reply(name, id, text)?;
        self.perform_local()?;
        self.undelivered = None;
        if self.flush_outbox().await? > 0 {
            let why = self.undelivered.take().map_or(Holdup::Unreachable, Holdup::Relay);
            return Err(ClientError::Queued(why));
        }
        Ok(())
    }
}

/// Writes an attached file as `<dir>/<letter id>-<name>`, never over an existing file.
fn save_file(dir: &Path, id: &str, name: &str, data: &[u8]) -> Result<PathBuf, ClientError> {
    use std::io::Write as _;
    let io = ClientError::path("save an attached file in", dir);
    crate::home::private_dir(dir).map_err(io)?;
    // The name was checked when the letter was opened (no separators, no "..").
    let mut path = dir.join(format!("{id}-{name}"));
    let mut n = 2;
    while path.exists() {
        path = dir.join(format!("{id}-{n}-{name}"));
        n += 1;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&path).map_err(io)?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(io)?;
    Ok(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use backchannel_core::drop::{seal_reply, ReplyKey};
    use backchannel_core::envelope::{seal_payload, PayloadKind};
    use backchannel_core::frame::MAX_FETCH;
    use backchannel_core::mailbox::MailboxKeys;
    use backchannel_core::relay_address::RelayAddress;
    use rand_core::OsRng;

    use crate::session::drop_box::MAX_REPLY_TEXT;

    #[test]
    fn the_longest_reply_fits_in_one_fetch() {
        let relay = RelayAddress {
            pin: [0; 32],
            host: "127.0.0.1".into(),
            port: 1,
        };
        let to = MailboxKeys::generate(relay, &mut OsRng).address.clone();
        let text = "x".repeat(MAX_REPLY_TEXT);
        let sealed = seal_reply(&ReplyKey::generate(&mut OsRng), &text, &mut OsRng);
        let envelopes = seal_payload(&to.seal, &to.send, PayloadKind::Reply, &sealed, &mut OsRng).unwrap();
        assert!(envelopes.len() <= MAX_FETCH as usize, "{} envelopes", envelopes.len());
    }
}
