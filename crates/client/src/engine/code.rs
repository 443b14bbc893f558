//! Invites by a code read aloud (`invite --code`, `join CODE`; docs/protocol.md, "Invite
//! codes"). The inviter makes an ordinary single-use invite, a mailbox for the exchange
//! (the *rendezvous*), and a nameplate at its relay holding the rendezvous's address and
//! its SPAKE2 message; the code is the nameplate's number and three words. The joiner takes
//! the nameplate (forwarded through its own relay when the inviter's is another), writes
//! its SPAKE2 message, an X-Wing key and where to answer into the rendezvous, and the
//! inviter answers with the invite sealed under both (`backchannel_core::code`). The joiner
//! then joins with that invite as with any other.
//!
//! A code is tried once: the nameplate is gone when taken, and the inviter ends the code at
//! the first message that does not prove it ("someone tried a wrong code").

use std::time::Duration;

use backchannel_core::code::{About, Code, ExchangeError, Finished, Inviter, Joiner, Message, Record};
use backchannel_core::envelope::{open_envelope, seal_payload, PayloadKind};
use backchannel_core::frame::{ErrorCode, Request, Response, MAX_FETCH};
use backchannel_core::identity::Fingerprint;
use backchannel_core::invite::Invite;
use backchannel_core::mailbox::{MailboxAddress, MailboxKeys};
use backchannel_core::relay_address::RelayAddress;
use rand_core::OsRng;
use zeroize::Zeroizing;

use super::{sends_to, Engine};
use crate::connection::ConnectError;
use crate::transport::Compartment;
use crate::{ClientError, InviteProblem};

/// How long a joiner waits for the inviter's answer once it has written into the
/// rendezvous (the inviter is waiting for it, so it comes in seconds).
const ANSWER_WAIT: Duration = Duration::from_secs(120);

/// Longest single long-poll of an exchange's mailbox.
const POLL: Duration = Duration::from_secs(20);

/// An invite code made and waiting for its joiner ([`Engine::code_invite`]).
pub struct CodeInvite {
    code: Code,
    inviter: Inviter,
    rendezvous: MailboxKeys,
    invite: Zeroizing<String>,
}

impl std::fmt::Debug for CodeInvite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeInvite")
            .field("code", &self.code)
            .finish_non_exhaustive()
    }
}

impl CodeInvite {
    /// The code to read aloud: `7-orbit-velvet-harbor`.
    pub fn text(&self) -> Zeroizing<String> {
        self.code.text()
    }
}

/// The other side, as an exchange by code showed it.
#[derive(Debug, Clone)]
pub struct Exchanged {
    /// The two words both sides show.
    pub confirmation: String,
    /// The other side's fingerprint.
    pub fingerprint: Fingerprint,
    /// The name the joiner chose (from the network: escape it); empty for the inviter.
    pub name: String,
}

/// What a joiner got from an exchange by code.
pub struct CodeJoined {
    /// The invite, to join with.
    pub invite: Zeroizing<String>,
    /// What to show.
    pub exchanged: Exchanged,
}

impl Engine {
    /// Makes a single-use invite to `name` for a code (with `approve`, its joiner waits for
    /// approval): the invite (valid for `ttl`), the
    /// rendezvous mailbox and the nameplate at our relay. Print [`CodeInvite::text`], then
    /// call [`Engine::code_answer`].
    pub async fn code_invite(&mut self, name: &str, ttl: Duration, approve: bool) -> Result<CodeInvite, ClientError> {
        let invite = Zeroizing::new(self.invite(name, 1, ttl, approve).await?);
        let relay = self.session.invite_relay(name)?;
        let rendezvous = self.create_mailbox(&relay).await?;
        let mut code = Code::random(0, &mut OsRng);
        let (inviter, pake) = Inviter::start(&code, &relay.pin, &mut OsRng);
        let record = Record {
            rendezvous: rendezvous.address.clone(),
            pake: pake
                .try_into()
                .map_err(|_| ClientError::protocol(ExchangeError::Crypto))?,
        };
        let key = self.key(&relay, Compartment::Mailbox(rendezvous.id()));
        let made = self
            .request(
                &key,
                &Request::Nameplate {
                    record: record.to_bytes(),
                },
            )
            .await;
        self.release(&key);
        let number = match made {
            Ok(Response::Nameplate { number }) => number,
            Ok(_) => {
                return Err(ConnectError::broken(relay.authority(), crate::connection::Breakage::Unexpected).into())
            }
            Err(e) if e.is(ErrorCode::Malformed) => {
                self.delete_mailbox(&rendezvous).await;
                return Err(InviteProblem::CodesUnsupported.into());
            }
            Err(e) => {
                self.delete_mailbox(&rendezvous).await;
                return Err(e.into());
            }
        };
        code.nameplate = number;
        Ok(CodeInvite {
            code,
            inviter,
            rendezvous,
            invite,
        })
    }

    /// Waits up to `wait` for the joiner of `code` and answers it with the invite. The first
    /// message that does not prove the code ends it: the sender is told, and the error says
    /// someone tried a wrong code.
    pub async fn code_answer(&mut self, code: CodeInvite, wait: Duration) -> Result<Exchanged, ClientError> {
        let CodeInvite {
            code,
            inviter,
            rendezvous,
            invite,
        } = code;
        let got = self.first_message(&rendezvous, wait).await;
        self.delete_mailbox(&rendezvous).await;
        let Some(Message::Hello { pake, key_message }) = got? else {
            // Withdrawn: the nameplate goes now, whatever is left of its lifetime.
            let relay = rendezvous.address.relay.clone();
            let key = self.key(&relay, Compartment::Mailbox(rendezvous.id()));
            let _ = self
                .request(&key, &Request::TakeNameplate { number: code.nameplate })
                .await;
            self.release(&key);
            return Err(InviteProblem::CodeUnused(wait.as_secs()).into());
        };
        match inviter.finish(&pake, &key_message, invite.as_bytes()) {
            Ok(Finished {
                answer,
                confirmation,
                about,
            }) => {
                let about = About::from_bytes(&about).map_err(ClientError::protocol)?;
                self.code_send(&about.reply, &Message::Answer(answer)).await?;
                Ok(Exchanged {
                    confirmation,
                    fingerprint: Fingerprint::of(&about.identity_key),
                    name: about.name,
                })
            }
            Err(_) => {
                // Tell whoever it was (unauthenticated: it changes nothing but saves the
                // real joiner a wait), then end the code loudly.
                if let Some(reply) = About::unchecked_reply(&key_message) {
                    let _ = self.code_send(&reply, &Message::Refused).await;
                }
                Err(InviteProblem::WrongCodeTried.into())
            }
        }
    }

    /// The joiner's side: takes the nameplate of `typed` at `relay` (ours when `None`),
    /// proves the code and receives the invite. Join with it next ([`Engine::join`]).
    pub async fn code_join(&mut self, typed: &str, relay: Option<RelayAddress>) -> Result<CodeJoined, ClientError> {
        self.tick();
        let code = Code::parse(typed).map_err(InviteProblem::from)?;
        let relay = relay.unwrap_or_else(|| self.session.state().relay.clone());
        let key = self.key(&relay, Compartment::Shared);
        let taken = self
            .request(&key, &Request::TakeNameplate { number: code.nameplate })
            .await;
        self.release(&key);
        let record = match taken {
            Ok(Response::Record(r)) => Record::from_bytes(&r).map_err(ClientError::protocol)?,
            Ok(_) => {
                return Err(ConnectError::broken(relay.authority(), crate::connection::Breakage::Unexpected).into())
            }
            Err(e) if e.is(ErrorCode::NoSuchNameplate) => return Err(InviteProblem::CodeUnknown.into()),
            Err(e) if e.is(ErrorCode::Malformed) => return Err(InviteProblem::CodesUnsupported.into()),
            Err(e) => return Err(e.into()),
        };
        if record.rendezvous.relay.pin != relay.pin {
            // The exchange stays at the relay whose PIN the code is bound to.
            return Err(ClientError::protocol(ExchangeError::Malformed));
        }
        let reply = self.create_mailbox(&self.session.place_for_ours(relay.clone())).await?;
        let about = About {
            identity_key: self.session.identity().public_key(),
            name: self.name().to_string(),
            reply: reply.address.clone(),
        };
        let result = async {
            let (joiner, pake, key_message) =
                Joiner::start(&code, &relay.pin, &record.pake, &about.to_bytes(), &mut OsRng)
                    .map_err(ClientError::protocol)?;
            let hello = Message::Hello {
                pake: pake
                    .try_into()
                    .map_err(|_| ClientError::protocol(ExchangeError::Crypto))?,
                key_message,
            };
            self.code_send(&record.rendezvous, &hello).await?;
            let answer = match self.first_message(&reply, ANSWER_WAIT).await {
                // Not an answer of the inviter's: as good as a refusal.
                Err(ClientError::Invite(InviteProblem::WrongCodeTried)) => {
                    return Err(InviteProblem::CodeRefused.into())
                }
                r => r?,
            };
            match answer {
                Some(Message::Answer(answer)) => match joiner.finish(&answer) {
                    Ok((invite, confirmation)) => {
                        let text = String::from_utf8(invite.to_vec())
                            .map_err(|_| ClientError::protocol(ExchangeError::Malformed))?;
                        // A short line names the invite at its relay: fetched and opened.
                        let text = Zeroizing::new(self.resolve_invite(&text).await?);
                        let inviter = Invite::from_text(&text).map_err(InviteProblem::from)?;
                        Ok(CodeJoined {
                            invite: text,
                            exchanged: Exchanged {
                                confirmation,
                                fingerprint: Fingerprint::of(&inviter.inviter_key),
                                name: String::new(),
                            },
                        })
                    }
                    Err(ExchangeError::WrongCode) => Err(InviteProblem::CodeRefused.into()),
                    Err(e) => Err(ClientError::protocol(e)),
                },
                Some(Message::Refused) => Err(InviteProblem::CodeRefused.into()),
                Some(Message::Hello { .. }) => Err(ClientError::protocol(ExchangeError::Malformed)),
                None => Err(InviteProblem::CodeUnanswered.into()),
            }
        }
        .await;
        self.delete_mailbox(&reply).await;
        result
    }

    /// Seals one message of an exchange into the mailbox at `to`.
    async fn code_send(&mut self, to: &MailboxAddress, message: &Message) -> Result<(), ClientError> {
        let envelopes = seal_payload(&to.seal, &to.send, PayloadKind::Code, &message.to_bytes(), &mut OsRng)
            .map_err(ClientError::protocol)?;
        let reqs: Vec<Request> = envelopes
            .into_iter()
            .map(|envelope| Request::Send {
                send: to.send.0,
                pow: 0,
                envelope,
            })
            .collect();
        let key = self.key(&to.relay, sends_to(&reqs));
        let results = self.pipeline(&key, &reqs).await;
        self.release(&key);
        for r in results? {
            match r {
                Ok(_) => {}
                Err(e) if e.is(ErrorCode::NoSuchMailbox) => return Err(InviteProblem::CodeGone.into()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The first message of an exchange that arrives in `mailbox` within `wait`; what is
    /// not one (an envelope that does not open, or of another kind) counts as a wrong code.
    async fn first_message(&mut self, mailbox: &MailboxKeys, wait: Duration) -> Result<Option<Message>, ClientError> {
        let key = self.key(&mailbox.address.relay, Compartment::Mailbox(mailbox.id()));
        let result = async {
            let deadline = tokio::time::Instant::now() + wait;
            let opened = self.open_boxes(&key, std::slice::from_ref(mailbox)).await?;
            if let Some(Err(e)) = opened.into_iter().next() {
                return Err(e.into());
            }
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                let wait_ms = u32::try_from(left.min(POLL).as_millis()).unwrap_or(u32::MAX);
                let resp = self
                    .request(
                        &key,
                        &Request::Fetch {
                            max: MAX_FETCH,
                            wait_ms,
                        },
                    )
                    .await?;
                let Response::Envelopes(list) = resp else {
                    return Err(ConnectError::broken(
                        mailbox.address.relay.authority(),
                        crate::connection::Breakage::Unexpected,
                    )
                    .into());
                };
                let Some(first) = list.first() else { continue };
                let acks: Vec<Request> = list
                    .iter()
                    .map(|d| Request::Ack {
                        mailbox: d.mailbox,
                        seq: d.seq,
                    })
                    .collect();
                let _ = self.pipeline(&key, &acks).await;
                let message = open_envelope(&mailbox.address.seal, &mailbox.address.send, &first.envelope)
                    .ok()
                    .filter(|c| c.kind == PayloadKind::Code && c.count == 1)
                    .and_then(|c| Message::from_bytes(&c.data).ok());
                return match message {
                    Some(m) => Ok(Some(m)),
                    None => Err(InviteProblem::WrongCodeTried.into()),
                };
            }
        }
        .await;
        self.release(&key);
        result
    }
}

impl Engine {
    /// Syncs until the member with `fingerprint` is in channel `name` (the joiner of an
    /// exchange by code, admitted when its request arrives), for up to `wait`: its name then.
    pub async fn await_member(
        &mut self,
        name: &str,
        fingerprint: &Fingerprint,
        wait: Duration,
    ) -> Result<Option<String>, ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.sync(left.min(Duration::from_secs(5))).await?;
            if let Some(m) = self.members(name)?.into_iter().find(|m| m.fingerprint == *fingerprint) {
                return Ok(Some(m.name));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }
}
