//! The owner's side of an anonymous drop box: create it, read its letters, answer
//! them. (The source's side, which needs no home, is `crate::letter`.)

use std::path::{Path, PathBuf};

use backchannel_core::drop::{open_letter, seal_reply, DropAddress, DropKeys, DEFAULT_POW_BITS, MAX_POW_BITS};
use backchannel_core::envelope::PayloadKind;
use backchannel_core::identity::validate_name;
use backchannel_core::mailbox::MailboxKeys;
use backchannel_core::relay_address::RelayAddress;
use rand_core::{OsRng, RngCore};

use super::files::random_folder;
use super::{hex, now_s, payload_digest, protocol, Engine};
use crate::state::{DropBox, LetterAttachment, LetterRecord};
use crate::ClientError;

/// Longest reply text: a sealed reply fits in the envelopes of one fetch, so a source
/// that deletes only whole replies always gets past one (`letter::check_replies`).
pub const MAX_REPLY_TEXT: usize = 48 * 1024;

/// Letters remembered per drop box to recognize a replayed one.
const MAX_SEEN_LETTERS: usize = 4096;

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
    fn drop_box(&self, name: &str) -> Result<&DropBox, ClientError> {
        self.state.drops.get(name).ok_or_else(|| {
            ClientError::Usage(format!(
                "there is no drop box called \"{name}\"; create it with `backchannel drop create {name}`"
            ))
        })
    }

    /// Creates a drop box at our relay whose every envelope costs a sender `pow_bits`
    /// of work, and returns its public `bc-drop:` address.
    pub async fn drop_create(&mut self, name: &str, pow_bits: Option<u8>) -> Result<String, ClientError> {
        validate_name(name).map_err(|e| ClientError::Usage(format!("drop box {e}")))?;
        if self.state.drops.contains_key(name) {
            return Err(ClientError::Usage(format!(
                "you already have a drop box called \"{name}\"; `backchannel drop address {name}` prints its address"
            )));
        }
        let pow_bits = pow_bits.unwrap_or(DEFAULT_POW_BITS);
        if pow_bits > MAX_POW_BITS {
            return Err(ClientError::Usage(format!("--pow-bits can be at most {MAX_POW_BITS}")));
        }
        let keys = DropKeys::generate(&mut OsRng).map_err(protocol)?;
        let relay = self.state.relay.clone();
        let mailbox = self.create_mailbox_with_work(&relay, pow_bits).await?;
        self.state.drops.insert(
            name.to_string(),
            DropBox {
                mailbox,
                keys,
                pow_bits,
                letters: Vec::new(),
                read_upto: 0,
                seen: Default::default(),
            },
        );
        self.save()?;
        self.drop_address(name)
    }

    /// The public address of a drop box.
    pub fn drop_address(&self, name: &str) -> Result<String, ClientError> {
        let d = self.drop_box(name)?;
        Ok(DropAddress {
            mailbox: d.mailbox.address.clone(),
            owner_key: d.keys.public().to_vec(),
            pow_bits: d.pow_bits,
        }
        .to_text())
    }

    /// Opens a letter that arrived in a drop box (attacker input: anyone may write).
    pub(super) fn receive_letter(&mut self, name: &str, keys: &MailboxKeys, sealed: &[u8]) {
        let digest = keys.address.send.digest();
        // Our own relay's addresses: the only place a reply may go.
        let ours: Vec<RelayAddress> = std::iter::once(self.state.relay.clone())
            .chain(self.state.relay_alternates.iter().cloned())
            .collect();
        let Some(d) = self.state.drops.get_mut(name) else {
            return;
        };
        let mut letter = match open_letter(&d.keys, &digest, sealed) {
            Ok(l) => l,
            Err(_) => {
                self.warn(
                    None,
                    format!("discarded a letter to drop box {name} that could not be opened"),
                );
                return;
            }
        };
        // The same sealed letter twice is a replay (by the relay, or of a proof of work
        // the relay no longer remembers): shown once.
        let seen = payload_digest(sealed);
        if d.seen.contains(&seen) {
            return;
        }
        if d.seen.len() >= MAX_SEEN_LETTERS {
            d.seen.pop_front();
        }
        d.seen.push_back(seen);
        let mut refused_reply = false;
        if let Some(r) = &letter.reply {
            // A reply goes out from this device: to the drop box's own relay only, never to
            // a host a stranger names (that would tell it where the owner is).
            if r.mailbox.relay != d.mailbox.address.relay && !ours.contains(&r.mailbox.relay) {
                letter.reply = None;
                refused_reply = true;
            }
        }
        let mut file = None;
        if let Some(f) = letter.file {
            let folder = random_folder();
            match self.home.write_sealed(&folder, "0", &f.data) {
                Ok(()) => file = Some(LetterAttachment { name: f.name, folder }),
                Err(e) => {
                    self.home.remove_sealed(&folder);
                    self.warn(
                        None,
                        format!("could not store the file attached to a letter to drop box {name}: {e}"),
                    );
                }
            }
        }
        let Some(d) = self.state.drops.get_mut(name) else {
            return;
        };
        let id = loop {
            let mut id = [0u8; 4];
            OsRng.fill_bytes(&mut id);
            let id = hex(&id);
            if !d.letters.iter().any(|l| l.id == id) {
                break id;
            }
        };
        d.letters.push(LetterRecord {
            id,
            received_at: now_s(),
            text: letter.text,
            file,
            saved_file: None,
            reply: letter.reply,
            replies: 0,
        });
        if refused_reply {
            self.warn(
                None,
                format!("a letter to drop box {name} asks for replies at another relay; it cannot be answered"),
            );
        }
    }

    /// Letters of a drop box: unread ones, or all. Attached files are written into
    /// `save_to` (created if needed) the first time they are shown.
    pub fn drop_read(&mut self, name: &str, all: bool, save_to: &Path) -> Result<Vec<LetterView>, ClientError> {
        let d = self.drop_box(name)?;
        let start = if all { 0 } else { d.read_upto.min(d.letters.len()) };
        let count = d.letters.len();
        let mut out = Vec::new();
        let mut saved_folders = Vec::new();
        for i in start..count {
            let attachment = self.state.drops.get(name).and_then(|d| d.letters[i].file.clone());
            let saved = match attachment {
                Some(f) => {
                    let id = self.state.drops[name].letters[i].id.clone();
                    let written = self
                        .home
                        .read_sealed(&f.folder, "0")
                        .and_then(|data| save_file(save_to, &id, &f.name, &data));
                    match written {
                        Ok(path) => {
                            saved_folders.push(f.folder);
                            Some(path)
                        }
                        // The letter is still shown; its file stays sealed for the next read.
                        Err(e) => {
                            self.warn(None, format!("the file attached to letter {id} was not saved: {e}"));
                            None
                        }
                    }
                }
                None => None,
            };
            let Some(d) = self.state.drops.get_mut(name) else {
                break;
            };
            let l = &mut d.letters[i];
            if let Some(path) = saved {
                l.saved_file = Some(path.display().to_string());
                l.file = None;
            }
            out.push(LetterView {
                drop: name.to_string(),
                id: l.id.clone(),
                received_at: l.received_at,
                text: l.text.clone(),
                file: l.saved_file.clone(),
                can_reply: l.reply.is_some(),
            });
        }
        if let Some(d) = self.state.drops.get_mut(name) {
            if d.read_upto != count || !saved_folders.is_empty() {
                d.read_upto = count;
                self.save()?;
            }
        }
        // Only once the vault no longer points at them.
        for folder in saved_folders {
            self.home.remove_sealed(&folder);
        }
        Ok(out)
    }

    /// Answers a letter: sealed with the letter's reply key into the mailbox its source
    /// made for the answer. Queued like any message if the relay does not answer.
    pub async fn drop_reply(&mut self, name: &str, id: &str, text: &str) -> Result<(), ClientError> {
        if text.len() > MAX_REPLY_TEXT {
            return Err(ClientError::Usage(format!(
                "a reply can be at most {MAX_REPLY_TEXT} bytes"
            )));
        }
        let d = self.drop_box(name)?;
        let letter = d.letters.iter().find(|l| l.id == id).ok_or_else(|| {
            ClientError::Usage(format!(
                "drop box \"{name}\" has no letter {id}; `backchannel drop read {name} --all` lists them"
            ))
        })?;
        let reply = letter
            .reply
            .clone()
            .ok_or_else(|| ClientError::Usage("the source of that letter did not ask for replies".into()))?;
        let sealed = seal_reply(&reply.key, text, &mut OsRng);
        self.enqueue(&reply.mailbox, PayloadKind::Reply, &sealed)?;
        if let Some(l) = self
            .state
            .drops
            .get_mut(name)
            .and_then(|d| d.letters.iter_mut().find(|l| l.id == id))
        {
            l.replies += 1;
        }
        self.save()?;
        self.undelivered = None;
        if self.flush_outbox().await? > 0 {
            let why = self
                .undelivered
                .take()
                .unwrap_or_else(|| "the relay could not be reached".into());
            return Err(ClientError::Queued(why));
        }
        Ok(())
    }
}

/// Writes an attached file as `<dir>/<letter id>-<name>`, never over an existing file.
fn save_file(dir: &Path, id: &str, name: &str, data: &[u8]) -> Result<PathBuf, ClientError> {
    use std::io::Write as _;
    let io = |e: std::io::Error| ClientError::Usage(format!("cannot save an attached file in {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
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

    use super::MAX_REPLY_TEXT;

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
