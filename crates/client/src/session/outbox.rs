//! What goes out: a message the user wrote is kept unsent (durably) until the
//! channel's newest epoch is known, then sealed once into envelopes for each other
//! member, which wait in the outbox until a relay accepts them.

use backchannel_core::envelope::{seal_payload, Envelope, PayloadKind};
use backchannel_core::frame::{ErrorCode, Request};
use backchannel_core::mailbox::MailboxAddress;
use backchannel_core::message::{AppMessage, Body};
use backchannel_core::relay_address::RelayAddress;
use rand_core::OsRng;

use std::collections::HashMap;

use super::{hex, random_id, Session};
use crate::connection::ConnectError;
use crate::state::{ChannelStatus, OutboxItem, StoredMessage, UnsentMessage};
use crate::transport::Compartment;
use crate::ClientError;

/// Envelopes for one mailbox, to send in order to the relay that holds it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The relay the requests go to (the mailbox's own).
    pub relay: RelayAddress,
    /// The mailbox's send capability.
    pub send: [u8; 32],
    /// The requests, one per envelope, in order.
    pub requests: Vec<Request>,
}

/// What a flush of the outbox came to.
#[derive(Debug, Default)]
pub struct FlushReport {
    /// Items still queued.
    pub queued: usize,
    /// Why the last thing left queued was not delivered.
    pub undelivered: Option<ConnectError>,
    /// A recipient's mailbox was full.
    pub mailbox_full: bool,
}

/// The outcome of one [`Delivery`].
#[derive(Debug)]
pub enum Delivered {
    /// The relay answered each request (in order).
    Answered(Vec<Result<(), ConnectError>>),
    /// The relay could not be reached; nothing of it is known to have arrived.
    Unreachable(ConnectError),
}

impl Session {
    /// Seals `payload` for the mailbox `to` into the outbox.
    pub(crate) fn enqueue(
        &mut self,
        to: &MailboxAddress,
        kind: PayloadKind,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        let envs = seal_payload(&to.seal, &to.send, kind, payload, &mut OsRng).map_err(ClientError::protocol)?;
        self.state.outbox.sealed.push(OutboxItem {
            to: to.clone(),
            envelopes: envs.iter().map(|e| e.as_bytes().to_vec()).collect(),
        });
        Ok(())
    }

    /// Keeps a message the user wrote, unsent, until the channel's newest epoch is known.
    /// Returns it (the driver saves before it touches the network).
    pub fn write_message(&mut self, name: &str, text: &str) -> Result<UnsentMessage, ClientError> {
        self.active(name)?;
        let unsent = UnsentMessage {
            channel: name.to_string(),
            id: random_id(),
            sent_at: self.now_ms(),
            text: text.to_string(),
        };
        self.state.outbox.unsent.push(unsent.clone());
        self.save();
        Ok(unsent)
    }

    /// Whether messages written in `name` still wait to be sealed.
    pub fn has_unsent(&self, name: Option<&str>) -> bool {
        self.state
            .outbox
            .unsent
            .iter()
            .any(|u| name.is_none_or(|n| u.channel == n))
    }

    /// Puts our own message into its channel's history, once.
    pub(crate) fn record_own(&mut self, u: &UnsentMessage) {
        let me = self.identity.public_key();
        let my_name = self.identity.name().to_string();
        if !self.state.channels.get_mut(&u.channel).is_some_and(|ch| ch.see(u.id)) {
            return;
        }
        let own = StoredMessage {
            id: hex(&u.id),
            from: my_name,
            from_key: me,
            sent_at: u.sent_at,
            text: u.text.clone(),
            event: None,
        };
        self.record(&u.channel, own);
        if let Some(ch) = self.state.channels.get_mut(&u.channel) {
            ch.history.mark_read();
        }
    }

    /// Encrypts every unsent message whose channel can take one now into the
    /// outbox, in one durable save (so each is sealed exactly once).
    pub fn seal_unsent(&mut self) -> Result<(), ClientError> {
        if self.state.outbox.unsent.is_empty() {
            return Ok(());
        }
        let unsent = std::mem::take(&mut self.state.outbox.unsent);
        let mut keep = Vec::new();
        let mut failed = None;
        for u in unsent {
            if failed.is_some() {
                keep.push(u);
                continue;
            }
            if !self.is_active(&u.channel) {
                // The channel ended before the message could go: say so where it was written.
                let text = format!(
                    "your message sent at {} could not be delivered: the channel ended",
                    u.sent_at
                );
                self.warn(Some(&u.channel), text);
                continue;
            }
            match self.seal_one(&u) {
                Ok(true) => self.record_own(&u),
                Ok(false) => keep.push(u),
                Err(e) => {
                    failed = Some(e);
                    keep.push(u);
                }
            }
        }
        self.state.outbox.unsent = keep;
        self.save();
        failed.map_or(Ok(()), Err)
    }

    /// Seals one unsent message; false if its channel cannot take one now.
    fn seal_one(&mut self, u: &UnsentMessage) -> Result<bool, ClientError> {
        // Sealed now it would go in an epoch the others have left (and a member removed
        // in the change this device missed could read it).
        if self.is_behind(&u.channel) {
            return Ok(false);
        }
        let mut group = self.load_group(&u.channel)?;
        if group.has_pending_proposals() {
            return Ok(false);
        }
        let msg = AppMessage {
            id: u.id,
            sent_at: u.sent_at,
            body: Body::Text(u.text.clone()),
        };
        let ct = self.seal_app(&u.channel, &mut group, &msg)?;
        for to in self.others(&group) {
            self.enqueue(&to, PayloadKind::Mls, &ct)?;
        }
        group.keep(&self.provider);
        Ok(true)
    }

    /// Whether the outbox holds anything.
    pub fn outbox_is_empty(&self) -> bool {
        self.state.outbox.sealed.is_empty()
    }

    /// Takes the outbox for a flush: one [`Delivery`] per item, in order. Give every
    /// outcome back, in the same order, to [`Session::delivered`]; an item whose relay
    /// was unreachable, or whose mailbox refused an earlier envelope in this flush,
    /// is not tried (pass `None`).
    pub fn outbox_deliveries(&self) -> Vec<Delivery> {
        self.state
            .outbox
            .sealed
            .iter()
            .map(|item| Delivery {
                relay: item.to.relay.clone(),
                send: item.to.send.0,
                requests: item
                    .envelopes
                    .iter()
                    .filter_map(|e| Envelope::from_bytes(e).ok())
                    .map(|envelope| Request::Send {
                        send: item.to.send.0,
                        pow: 0,
                        envelope,
                    })
                    .collect(),
            })
            .collect()
    }

    /// The compartment each delivery goes in (docs/protocol.md, "Unlinkable links"): the
    /// channel whose member's mailbox it goes to, else its mailbox alone (a join request,
    /// a welcome, a letter, a reply, a mailbox a member has since left).
    pub fn send_compartments(&self, deliveries: &[Delivery]) -> Vec<Compartment> {
        let mut channel_of: HashMap<[u8; 32], String> = HashMap::new();
        for (name, ch) in &self.state.channels {
            if ch.status != ChannelStatus::Active {
                continue;
            }
            let Ok(group) = self.load_group(name) else {
                continue;
            };
            for m in group.members() {
                if let Some(mailbox) = m.mailbox {
                    channel_of.insert(mailbox.send.0, name.clone());
                }
            }
            group.keep(&self.provider);
        }
        deliveries
            .iter()
            .map(|d| match channel_of.get(&d.send) {
                Some(name) => Compartment::Channel(name.clone()),
                None => Compartment::To(d.send),
            })
            .collect()
    }

    /// Whether the outbox item at `index` must wait this flush: its relay was found
    /// unreachable, or its mailbox refused an earlier envelope (what is queued after it
    /// for the same mailbox waits too, so that it never arrives ahead of it: a file's
    /// parts ahead of its offer, say).
    pub fn must_wait(&self, index: usize, unreachable: &[RelayAddress], refused: &[[u8; 32]]) -> bool {
        self.state.outbox.sealed.get(index).is_none_or(|item| {
            unreachable.contains(&self.link_key(&item.to.relay)) || refused.contains(&item.to.send.0)
        })
    }

    /// Takes the outcome of a flush (one entry per outbox item taken by
    /// [`Session::outbox_deliveries`], `None` for an item not tried) and keeps in the
    /// outbox what was not accepted.
    pub fn delivered(&mut self, outcomes: Vec<Option<Delivered>>) -> FlushReport {
        let items = std::mem::take(&mut self.state.outbox.sealed);
        let mut report = FlushReport::default();
        let mut keep = Vec::new();
        let mut dropped = 0usize;
        let mut outcomes = outcomes.into_iter();
        for mut item in items {
            match outcomes.next().flatten() {
                None => keep.push(item),
                Some(Delivered::Unreachable(e)) => {
                    report.undelivered = Some(e);
                    keep.push(item);
                }
                Some(Delivered::Answered(results)) => {
                    let mut left = Vec::new();
                    for (env, r) in item.envelopes.into_iter().zip(results) {
                        match r {
                            Ok(()) => {}
                            // The recipient's mailbox is gone (it left, was removed, or rotated
                            // long ago): nobody can read it there.
                            Err(e) if e.is(ErrorCode::NoSuchMailbox) => dropped += 1,
                            Err(e) => {
                                report.mailbox_full |= e.is(ErrorCode::MailboxFull);
                                report.undelivered = Some(e);
                                left.push(env);
                            }
                        }
                    }
                    if !left.is_empty() {
                        item.envelopes = left;
                        keep.push(item);
                    }
                }
            }
        }
        if dropped > 0 {
            self.warn(
                None,
                format!("{dropped} envelope(s) were not delivered: the recipient's mailbox no longer exists at the relay (deleted, or expired unused for the relay's idle lifetime, at least 90 days)"),
            );
        }
        report.queued = keep.len();
        // Anything queued while the flush was out (nothing, today) goes after.
        keep.append(&mut self.state.outbox.sealed);
        self.state.outbox.sealed = keep;
        self.save();
        report
    }
}
