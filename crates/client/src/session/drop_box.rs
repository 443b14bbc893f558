//! The owner's side of an anonymous drop box: its record, the letters that arrive
//! (attacker input: anyone may write), and replies sealed into the outbox.

use backchannel_core::drop::{open_letter, seal_reply, DropAddress, DropKeys};
use backchannel_core::envelope::PayloadKind;
use backchannel_core::mailbox::MailboxKeys;
use backchannel_core::relay_address::RelayAddress;
use rand_core::OsRng;

use super::files::random_folder;
use super::log::LETTER_BYTES;
use super::Blobs;
use super::{hex, payload_digest, random_id, Session};
use crate::state::{DropBox, LetterAttachment, LetterRecord, Log};
use crate::ClientError;

/// Longest reply text: a sealed reply fits in the envelopes of one fetch, so a source
/// that deletes only whole replies always gets past one (`letter::check_replies`).
pub const MAX_REPLY_TEXT: usize = 48 * 1024;

/// Letters remembered per drop box to recognize a replayed one.
const MAX_SEEN_LETTERS: usize = 4096;

/// Most letters per drop box whose attached file is sealed beside the vault, unsaved
/// (each at most `MAX_LETTER_FILE`, 8 MiB): past it, a letter arrives without its file.
pub const MAX_ATTACHMENTS: u32 = 32;

impl Session {
    /// A drop box of ours, by name.
    pub(crate) fn drop_box(&self, name: &str) -> Result<&DropBox, ClientError> {
        self.state.drops.get(name).ok_or_else(|| {
            ClientError::Usage(format!(
                "there is no drop box called \"{name}\"; create it with `backchannel drop create {name}`"
            ))
        })
    }

    /// Whether a drop box of that name exists.
    pub(crate) fn has_drop(&self, name: &str) -> bool {
        self.state.drops.contains_key(name)
    }

    /// Records a new drop box whose mailbox the relay has made.
    pub(crate) fn add_drop(&mut self, name: &str, mailbox: MailboxKeys, keys: DropKeys, pow_bits: u8) {
        self.state.drops.insert(
            name.to_string(),
            DropBox {
                mailbox,
                keys,
                pow_bits,
                letters: Log::new(),
                attachments: Vec::new(),
                seen: Default::default(),
            },
        );
        self.save();
    }

    /// The public address of a drop box.
    pub fn drop_address(&self, name: &str) -> Result<String, ClientError> {
        Ok(self.drop_box_address(name)?.to_text())
    }

    /// A drop box's whole address (what its short address names).
    pub fn drop_box_address(&self, name: &str) -> Result<DropAddress, ClientError> {
        let d = self.drop_box(name)?;
        Ok(DropAddress {
            mailbox: d.mailbox.address.clone(),
            owner_key: d.keys.public().to_vec(),
            pow_bits: d.pow_bits,
        })
    }

    /// Opens a letter that arrived in a drop box (attacker input: anyone may write).
    pub(crate) fn receive_letter(&mut self, name: &str, keys: &MailboxKeys, sealed: &[u8]) {
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
        let full = self
            .state
            .drops
            .get(name)
            .is_some_and(|d| d.attachments.len() >= MAX_ATTACHMENTS as usize);
        if letter.file.is_some() && full {
            letter.file = None;
            self.warn(
                None,
                format!(
                    "discarded the file attached to a letter to drop box {name}: {MAX_ATTACHMENTS} attached \
                     files wait to be saved; `backchannel drop read {name}` saves them"
                ),
            );
        }
        if let Some(f) = letter.file {
            let folder = random_folder();
            match self.blobs.write(&folder, "0", &f.data) {
                Ok(()) => file = Some(LetterAttachment { name: f.name, folder }),
                Err(e) => {
                    self.blobs.remove(&folder);
                    self.warn(
                        None,
                        format!("could not store the file attached to a letter to drop box {name}: {e}"),
                    );
                }
            }
        }
        let now = self.now_s();
        let Some(d) = self.state.drops.get_mut(name) else {
            return;
        };
        // Six random bytes: a clash among the letters kept is unlikely, and the newest
        // letter with an id is the one `drop reply` answers. Only the vault's letters
        // are searched.
        let id = loop {
            let id = hex(&random_id::<6>());
            if !d.letters.tail.iter().any(|l| l.id == id) {
                break id;
            }
        };
        if let Some(f) = &file {
            d.attachments.push(f.folder.clone());
        }
        let record = LetterRecord {
            id,
            received_at: now,
            text: letter.text,
            file,
            saved_file: None,
            reply: letter.reply,
            replies: 0,
        };
        let (dropped, gone) = d.letters.push(record, &mut self.blobs, LETTER_BYTES);
        for l in gone {
            if let Some(f) = l.file {
                self.blobs.remove(&f.folder);
                d.attachments.retain(|a| *a != f.folder);
            }
        }
        if dropped > 0 {
            self.warn(
                None,
                format!(
                    "deleted the {dropped} oldest letters of drop box {name}: this device keeps at most {} MiB \
                     of a drop box's letters",
                    LETTER_BYTES / (1024 * 1024)
                ),
            );
        }
        if refused_reply {
            self.warn(
                None,
                format!("a letter to drop box {name} asks for replies at another relay; it cannot be answered"),
            );
        }
    }

    /// Seals a reply to letter `id` of drop box `name` into the outbox.
    pub(crate) fn queue_reply(&mut self, name: &str, id: &str, text: &str) -> Result<(), ClientError> {
        if text.len() > MAX_REPLY_TEXT {
            return Err(ClientError::Usage(format!(
                "a reply can be at most {MAX_REPLY_TEXT} bytes"
            )));
        }
        let d = self.drop_box(name)?;
        let letter = d.letters.find(&self.blobs, |l| l.id == id)?.ok_or_else(|| {
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
        if let Some(d) = self.state.drops.get_mut(name) {
            // The reply is queued whether or not its count is written.
            let _ = d.letters.update(&mut self.blobs, |l| l.id == id, |l| l.replies += 1);
        }
        self.save();
        Ok(())
    }
}
