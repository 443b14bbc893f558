//! Every user-facing operation. Commands that read or change channel state
//! sync first; every state change is saved durably before the network sees
//! its effects (outbox first, then send).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backchannel_core::channel::{
    key_package, validate_key_package, Channel, ChannelInfo, MemberInfo, OutgoingCommit, Provider, Received, Rejection,
    Suite, ValidKeyPackage,
};
use backchannel_core::envelope::{open_envelope, seal_payload, Envelope, PayloadKind};
use backchannel_core::frame::{ErrorCode, Request, Response, MAX_FETCH};
use backchannel_core::identity::{validate_name, Fingerprint, Identity};
use backchannel_core::invite::Invite;
use backchannel_core::mailbox::{MailboxAddress, MailboxId, MailboxKeys};
use backchannel_core::message::{AppMessage, Body, JoinRequest};
use backchannel_core::relay_address::RelayAddress;
use backchannel_core::safety_number::safety_number;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use crate::connection::{ConnectError, RelayConnection};
use crate::home::Home;
use crate::socks::ProxyAddr;
use crate::state::{
    ChannelState, ChannelStatus, DeferredMls, InviteRecord, OutboxItem, PendingCommit, PendingJoin, RetiredMailbox,
    State, StoredMessage, UnsentMessage, STATE_VERSION,
};
use crate::transport::{RelayLinks, TransportConfig};
use crate::ClientError;

mod courier;
mod drop_box;
mod files;

pub use courier::ImportReport;
pub use drop_box::{LetterView, MAX_REPLY_TEXT};
pub use files::{FileProgress, FileView};

/// How many times a commit that lost its epoch is retried.
const COMMIT_ATTEMPTS: usize = 8;

/// Most MLS messages kept per channel while they wait for their epoch.
const MAX_DEFERRED: usize = 256;

/// Why an MLS message was not taken.
enum Rejected {
    /// It belongs to a later epoch: keep it for when that commit arrives.
    Later,
    /// It will never be readable; the text says why.
    Now(String),
}

/// Fetches per sync pass when links are paced.
const PACED_FETCH_ROUNDS: usize = 2;

/// How long a rotated-out mailbox is still read before it is deleted.
const RETIRED_GRACE: Duration = Duration::from_secs(2 * 86_400);

/// A channel mailbox older than this is rotated (with a key update) at the next sync.
const ROTATE_AFTER: Duration = Duration::from_secs(7 * 86_400);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now_s() -> u64 {
    now_ms() / 1000
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn protocol<E: std::fmt::Display>(e: E) -> ClientError {
    ClientError::Protocol(e.to_string())
}

/// A member as `members` shows it.
#[derive(Debug, Clone)]
pub struct MemberView {
    /// Display name.
    pub name: String,
    /// Fingerprint.
    pub fingerprint: Fingerprint,
    /// Identity key.
    pub identity_key: [u8; 32],
    /// Verified by this member.
    pub verified: bool,
    /// This is us.
    pub you: bool,
}

/// A channel as `channels` shows it.
#[derive(Debug, Clone)]
pub struct ChannelSummary {
    /// Local name.
    pub name: String,
    /// Status.
    pub status: ChannelStatus,
    /// Members (0 when not active).
    pub members: usize,
    /// Unread messages.
    pub unread: usize,
    /// Messages disappear this many seconds after they were sent (0: never).
    pub disappear_after: u64,
    /// The channel closes on its own at this time (Unix s; 0: never).
    pub expires_at: u64,
}

/// A message as `read` shows it.
#[derive(Debug, Clone)]
pub struct MessageView {
    /// Channel.
    pub channel: String,
    /// The stored message or event.
    pub message: StoredMessage,
    /// Whether its sender is verified.
    pub verified: bool,
    /// Fingerprint of the sender.
    pub from_fingerprint: Fingerprint,
    /// The file it offers, for a file received in the channel.
    pub file: Option<FileView>,
}

/// How long a new channel's messages and the channel itself last.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lifetime {
    /// Every member deletes each message this long after it was sent.
    pub disappear: Option<Duration>,
    /// The channel closes on its own this long after it is created.
    pub expires: Option<Duration>,
}

/// Something the user should know that is not an error.
#[derive(Debug, Clone)]
pub struct Warning {
    /// Channel concerned, if any.
    pub channel: Option<String>,
    /// What happened.
    pub text: String,
}

/// How an envelope reached us.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Via {
    /// Fetched from a relay.
    Relay,
    /// Imported from a courier bundle.
    Courier,
}

/// Channel payloads remembered to recognize one carried both by hand and by a relay.
const RECENT_PAYLOADS: usize = 4096;

/// What the client keeps of a payload to recognize it again: the first 16 bytes of its
/// SHA-256 ([`State::recent_payloads`](crate::state::State::recent_payloads), a drop
/// box's `seen` letters).
fn payload_digest(payload: &[u8]) -> [u8; 16] {
    let full: [u8; 32] = Sha256::digest(payload).into();
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&full[..16]);
    digest
}

#[derive(Clone)]
enum Role {
    Channel(String),
    Drop(String),
    Invite(String, MailboxId),
    Join(MailboxId),
}

/// An opened home with its state, ready to run operations.
pub struct Engine {
    home: Home,
    state: State,
    provider: Provider,
    identity: Identity,
    conns: HashMap<RelayAddress, RelayLinks>,
    transport: TransportConfig,
    warnings: Vec<Warning>,
    /// Why the last outbox flush left something queued.
    undelivered: Option<String>,
    /// A recipient's mailbox was full at the last flush.
    mailbox_full: bool,
    admissions: Vec<(String, MailboxId, ValidKeyPackage)>,
    /// The last fetch pass emptied every opened mailbox.
    drained: bool,
    /// Files whose stray parts were already reported (one warning per file, not per part).
    stray_files: std::collections::HashSet<[u8; 16]>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine(..)")
    }
}

impl Engine {
    /// Creates an identity in `dir`, after checking the relay answers with the pinned key.
    /// `relays` are addresses of one relay (the same pin), tried in this order; at least
    /// one must answer.
    pub async fn init(
        dir: &Path,
        passphrase: &[u8],
        name: &str,
        relays: Vec<RelayAddress>,
        proxy: Option<ProxyAddr>,
    ) -> Result<Fingerprint, ClientError> {
        validate_name(name).map_err(|e| ClientError::Usage(e.to_string()))?;
        if Home::exists(dir) {
            return Err(ClientError::AlreadyInitialized(dir.to_path_buf()));
        }
        let mut relays = relays.into_iter();
        let relay = relays
            .next()
            .ok_or_else(|| ClientError::Usage("give the relay's address with --relay".into()))?;
        let relay_alternates: Vec<RelayAddress> = relays.collect();
        if relay_alternates.iter().any(|a| a.pin != relay.pin) {
            return Err(ClientError::Usage(
                "the --relay addresses have different pins: give several addresses only of one relay \
                 (relays sharing one cluster print the same pin)"
                    .into(),
            ));
        }
        let mut answered = Err(ConnectError::Unreachable(relay.authority()));
        for addr in std::iter::once(&relay).chain(&relay_alternates) {
            match RelayConnection::connect_via(addr, proxy.as_ref()).await {
                Ok(_) => {
                    answered = Ok(());
                    break;
                }
                Err(e @ ConnectError::PinMismatch(_)) => return Err(e.into()),
                Err(e) => answered = Err(e),
            }
        }
        answered?;
        let identity = Identity::generate(name, &mut OsRng).map_err(protocol)?;
        let state = State {
            version: STATE_VERSION,
            name: name.to_string(),
            identity_secret: *identity.secret_bytes(),
            relay,
            relay_alternates,
            mls: Vec::new(),
            channels: BTreeMap::new(),
            pending_joins: Vec::new(),
            reassembly: BTreeMap::new(),
            outbox: Vec::new(),
            unsent: Vec::new(),
            deferred: Vec::new(),
            proxy,
            cover: Vec::new(),
            doomed: Vec::new(),
            recent_payloads: Default::default(),
            imported_bundles: Default::default(),
            drops: BTreeMap::new(),
            outgoing_files: Vec::new(),
            incoming_files: Vec::new(),
        };
        Home::create(dir, passphrase, &state)?;
        Ok(identity.fingerprint())
    }

    /// Opens the home in `dir`.
    pub fn open(dir: &Path, passphrase: &[u8]) -> Result<Self, ClientError> {
        let (home, mut state) = Home::open(dir, passphrase)?;
        let provider = Provider::from_snapshot(std::mem::take(&mut state.mls)).map_err(protocol)?;
        let identity = Identity::from_secret(state.name.clone(), &state.identity_secret);
        let transport = TransportConfig {
            proxy: state.proxy.clone(),
            ..TransportConfig::default()
        };
        let mut engine = Self {
            home,
            state,
            provider,
            identity,
            conns: HashMap::new(),
            transport,
            drained: false,
            warnings: Vec::new(),
            undelivered: None,
            mailbox_full: false,
            stray_files: Default::default(),
            admissions: Vec::new(),
        };
        // Disappearing messages and expired channels go before anything can show them,
        // even if no relay answers today.
        if engine.apply_lifecycle() {
            engine.save()?;
        }
        Ok(engine)
    }

    /// Our fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.identity.fingerprint()
    }

    /// Our name.
    pub fn name(&self) -> &str {
        self.identity.name()
    }

    /// The proxy connections go through, if any.
    pub fn proxy(&self) -> Option<&ProxyAddr> {
        self.transport.proxy.as_ref()
    }

    /// Sends through `proxy` from now on (overrides the one set at `init`).
    pub fn set_proxy(&mut self, proxy: ProxyAddr) {
        self.transport.proxy = Some(proxy);
        self.conns.clear();
    }

    /// Turns on cover traffic: from now on every link to a relay sends one
    /// frame per `period` (a dummy when nothing is queued). Creates a cover
    /// mailbox at our relay if there is none.
    pub async fn enable_cover(&mut self, period: Duration) -> Result<(), ClientError> {
        let relay = self.state.relay.clone();
        if !self.state.cover.iter().any(|k| k.address.relay == relay) {
            let keys = self.create_mailbox(&relay).await?;
            self.state.cover.push(keys);
            self.save()?;
        }
        self.transport.cover = Some(period);
        self.transport.cover_boxes = self
            .state
            .cover
            .iter()
            .map(|k| (k.address.relay.clone(), k.clone()))
            .collect();
        // Links opened before now were direct; reopen them paced, and start the stream now.
        self.conns.clear();
        self.conn(&relay).connect_all().await?;
        Ok(())
    }

    /// Warnings gathered since the last call.
    pub fn take_warnings(&mut self) -> Vec<Warning> {
        std::mem::take(&mut self.warnings)
    }

    fn save(&mut self) -> Result<(), ClientError> {
        self.state.mls = self.provider.snapshot();
        let r = self.home.save(&self.state);
        self.state.mls = Vec::new();
        r
    }

    /// Records a rejected input: an event in the channel's history and a warning for stderr.
    fn warn(&mut self, channel: Option<&str>, text: impl Into<String>) {
        let text = text.into();
        if let Some(name) = channel {
            self.event(name, "rejected", text.clone());
        }
        self.warnings.push(Warning {
            channel: channel.map(str::to_string),
            text,
        });
    }

    fn event(&mut self, channel: &str, kind: &str, text: String) {
        if let Some(ch) = self.state.channels.get_mut(channel) {
            let mut id = [0u8; 8];
            OsRng.fill_bytes(&mut id);
            ch.messages.push(StoredMessage {
                id: format!("event-{}", hex(&id)),
                from: String::new(),
                from_key: [0; 32],
                sent_at: now_ms(),
                text,
                event: Some(kind.into()),
            });
        }
    }

    /// The links to `relay` (connected lazily, by the first request that needs them).
    fn conn(&mut self, relay: &RelayAddress) -> &mut RelayLinks {
        let key = self.link_key(relay);
        let ours = key == self.state.relay;
        let (state, transport) = (&self.state, &self.transport);
        // The address list is built only when the links are first made, not per request.
        self.conns.entry(key).or_insert_with(|| {
            let addrs = if ours {
                std::iter::once(&state.relay)
                    .chain(&state.relay_alternates)
                    .cloned()
                    .collect()
            } else {
                vec![relay.clone()]
            };
            RelayLinks::new(addrs, transport.clone())
        })
    }

    /// Which links reach `relay`. Our own relay (its pin) is reached only through the
    /// addresses given at `init`, whatever address a mailbox names: another member
    /// cannot steer our connections to a host of theirs that forwards to our relay. Any
    /// other relay is reached at the address given.
    fn link_key(&self, relay: &RelayAddress) -> RelayAddress {
        if relay.pin == self.state.relay.pin {
            self.state.relay.clone()
        } else {
            relay.clone()
        }
    }

    async fn create_mailbox(&mut self, relay: &RelayAddress) -> Result<MailboxKeys, ClientError> {
        self.create_mailbox_with_work(relay, 0).await
    }

    /// Creates a mailbox whose every envelope must carry `pow_bits` of proof of work.
    async fn create_mailbox_with_work(
        &mut self,
        relay: &RelayAddress,
        pow_bits: u8,
    ) -> Result<MailboxKeys, ClientError> {
        let keys = MailboxKeys::generate(relay.clone(), &mut OsRng);
        let req = Request::Create {
            mailbox: keys.id(),
            recipient_key: keys.recipient_public(),
            send_digest: keys.address.send.digest(),
            pow_bits,
        };
        self.conn(relay).request(&req).await?;
        Ok(keys)
    }

    /// Deletes a mailbox at its relay; false if the relay could not be asked (try again later).
    async fn delete_mailbox(&mut self, keys: &MailboxKeys) -> bool {
        let relay = keys.address.relay.clone();
        let conn = self.conn(&relay);
        match conn.open(std::slice::from_ref(keys)).await.map(|mut v| v.pop()) {
            Ok(Some(Ok(()))) => conn.request(&Request::Delete { mailbox: keys.id() }).await.is_ok(),
            // Already gone (deleted before, or expired at the relay).
            Ok(Some(Err(e))) if e.is(ErrorCode::NoSuchMailbox) => true,
            _ => false,
        }
    }

    /// Deletes the mailboxes of ended channels at their relays; those a relay
    /// could not be asked about stay queued for the next sync.
    async fn delete_doomed(&mut self) {
        if self.state.doomed.is_empty() {
            return;
        }
        let doomed = std::mem::take(&mut self.state.doomed);
        let mut unreachable: Vec<RelayAddress> = Vec::new();
        let mut keep = Vec::new();
        for k in doomed {
            let key = self.link_key(&k.address.relay);
            if unreachable.contains(&key) || !self.delete_mailbox(&k).await {
                unreachable.push(key);
                keep.push(k);
            }
        }
        self.state.doomed = keep;
    }

    fn channel(&self, name: &str) -> Result<&ChannelState, ClientError> {
        self.state
            .channels
            .get(name)
            .ok_or_else(|| ClientError::UnknownChannel(name.to_string()))
    }

    fn is_active(&self, name: &str) -> bool {
        self.state
            .channels
            .get(name)
            .is_some_and(|c| c.status == ChannelStatus::Active)
    }

    fn active(&self, name: &str) -> Result<&ChannelState, ClientError> {
        let ch = self.channel(name)?;
        if ch.status != ChannelStatus::Active {
            return Err(ClientError::ChannelInactive(name.to_string(), ch.status.word()));
        }
        Ok(ch)
    }

    fn load_group(&self, name: &str) -> Result<Channel, ClientError> {
        let ch = self.channel(name)?;
        Channel::load(&self.provider, &ch.group_id)
            .map_err(protocol)?
            .ok_or_else(|| ClientError::ChannelInactive(name.to_string(), "gone"))
    }

    // ---- outbox ----

    fn enqueue(&mut self, to: &MailboxAddress, kind: PayloadKind, payload: &[u8]) -> Result<(), ClientError> {
        let envs = seal_payload(&to.seal, &to.send, kind, payload, &mut OsRng).map_err(protocol)?;
        self.state.outbox.push(OutboxItem {
            to: to.clone(),
            envelopes: envs.iter().map(|e| e.as_bytes().to_vec()).collect(),
        });
        Ok(())
    }

    /// Sends what the outbox holds; returns how many items remain queued.
    async fn flush_outbox(&mut self) -> Result<usize, ClientError> {
        if self.state.outbox.is_empty() {
            return Ok(0);
        }
        let items = std::mem::take(&mut self.state.outbox);
        let mut keep = Vec::new();
        let mut unreachable: Vec<RelayAddress> = Vec::new();
        // Mailboxes that refused an envelope in this pass: what is queued after it for
        // the same mailbox waits too, so that it never arrives ahead of it (a file's
        // parts ahead of its offer, say).
        let mut refused: Vec<[u8; 32]> = Vec::new();
        let mut dropped = 0usize;
        for mut item in items {
            if unreachable.contains(&self.link_key(&item.to.relay)) || refused.contains(&item.to.send.0) {
                keep.push(item);
                continue;
            }
            let reqs: Vec<Request> = item
                .envelopes
                .iter()
                .filter_map(|e| Envelope::from_slice(e).ok())
                .map(|envelope| Request::Send {
                    send: item.to.send.0,
                    pow: 0,
                    envelope,
                })
                .collect();
            let relay = item.to.relay.clone();
            let results = self.conn(&relay).pipeline(&reqs).await;
            match results {
                Ok(results) => {
                    let mut left = Vec::new();
                    for (env, r) in item.envelopes.into_iter().zip(results) {
                        match r {
                            Ok(_) => {}
                            // The recipient's mailbox is gone (it left, was removed, or rotated
                            // long ago): nobody can read it there.
                            Err(e) if e.is(ErrorCode::NoSuchMailbox) => dropped += 1,
                            Err(e) => {
                                self.mailbox_full |= e.is(ErrorCode::MailboxFull);
                                self.undelivered = Some(e.to_string());
                                left.push(env);
                            }
                        }
                    }
                    if !left.is_empty() {
                        refused.push(item.to.send.0);
                        item.envelopes = left;
                        keep.push(item);
                    }
                }
                Err(e) => {
                    self.undelivered = Some(e.to_string());
                    let key = self.link_key(&relay);
                    self.conns.remove(&key);
                    unreachable.push(key);
                    keep.push(item);
                }
            }
        }
        if dropped > 0 {
            self.warn(
                None,
                format!("{dropped} envelope(s) were not delivered: the recipient's mailbox no longer exists"),
            );
        }
        let n = keep.len();
        self.state.outbox.extend(keep);
        self.save()?;
        Ok(n)
    }

    // ---- sync ----

    /// What a command does before it reads or changes state: a sync, unless
    /// links are paced, in which case the daemon that owns this engine syncs
    /// continuously and a sync here would only add ticks of latency.
    pub async fn refresh(&mut self) -> Result<usize, ClientError> {
        if self.transport.cover.is_some() {
            return Ok(0);
        }
        self.sync(Duration::ZERO).await
    }

    /// Fetches and processes everything waiting, admits joiners, commits
    /// pending proposals. Waits up to `wait` for something to arrive.
    pub async fn sync(&mut self, wait: Duration) -> Result<usize, ClientError> {
        if self.transport.cover.is_some() {
            // Keep the paced streams going, reconnecting any that dropped.
            let relay = self.state.relay.clone();
            self.conn(&relay).connect_all().await?;
        }
        self.flush_outbox().await?;
        self.resume_pending_commits().await?;
        let before: usize = self.state.channels.values().map(|c| c.messages.len()).sum();
        self.fetch_all(wait).await?;
        self.apply_lifecycle();
        self.admit().await?;
        self.commit_proposals().await?;
        // Messages written earlier are sealed only now, in the newest epoch we know
        // (never to a member whose removal is already waiting at the relay).
        self.seal_unsent()?;
        self.flush_outbox().await?;
        self.expire_invites().await;
        // Retired mailboxes go only once a fetch came back empty: nothing is left in them.
        if std::mem::take(&mut self.drained) {
            self.expire_retired().await;
        }
        self.rotate_old_mailboxes().await;
        self.delete_doomed().await;
        self.save()?;
        let after: usize = self.state.channels.values().map(|c| c.messages.len()).sum();
        Ok(after.saturating_sub(before))
    }

    fn mailboxes(&self) -> Vec<(MailboxKeys, Role)> {
        let mut out = Vec::new();
        for (name, ch) in &self.state.channels {
            if ch.status == ChannelStatus::Active {
                out.push((ch.mailbox.clone(), Role::Channel(name.clone())));
                for r in &ch.retired {
                    out.push((r.keys.clone(), Role::Channel(name.clone())));
                }
                for inv in &ch.invites {
                    out.push((inv.mailbox.clone(), Role::Invite(name.clone(), inv.mailbox.id())));
                }
            }
        }
        for pj in &self.state.pending_joins {
            out.push((pj.mailbox.clone(), Role::Join(pj.mailbox.id())));
        }
        for (name, d) in &self.state.drops {
            out.push((d.mailbox.clone(), Role::Drop(name.clone())));
        }
        out
    }

    async fn fetch_all(&mut self, wait: Duration) -> Result<(), ClientError> {
        let boxes = self.mailboxes();
        // One group per set of links: every mailbox a receive link has opened is fetched
        // (and so acknowledged) in its group.
        let mut by_relay: BTreeMap<RelayAddress, Vec<(MailboxKeys, Role)>> = BTreeMap::new();
        for (k, r) in boxes {
            by_relay
                .entry(self.link_key(&k.address.relay))
                .or_default()
                .push((k, r));
        }
        for (relay, boxes) in by_relay {
            match self.fetch_relay(&relay, boxes.clone(), wait).await {
                // The receive link broke (the relay closed an idle link, or this address
                // died): once more on a fresh link, which opens the mailboxes again and
                // fails over to another address of the relay.
                Err(ClientError::Relay(ConnectError::Broken(_))) => self.fetch_relay(&relay, boxes, wait).await?,
                r => r?,
            }
        }
        Ok(())
    }

    async fn fetch_relay(
        &mut self,
        relay: &RelayAddress,
        boxes: Vec<(MailboxKeys, Role)>,
        wait: Duration,
    ) -> Result<(), ClientError> {
        let keys: Vec<MailboxKeys> = boxes.iter().map(|(k, _)| k.clone()).collect();
        let results = self.conn(relay).open(&keys).await?;
        let mut routes: HashMap<MailboxId, (MailboxKeys, Role)> = HashMap::new();
        for ((k, role), r) in boxes.into_iter().zip(results) {
            match r {
                Ok(_) => {
                    routes.insert(k.id(), (k, role));
                }
                Err(e) if e.is(ErrorCode::NoSuchMailbox) => {
                    if let Role::Channel(name) = &role {
                        self.warn(Some(name), "the relay no longer holds this channel's mailbox");
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        if routes.is_empty() {
            return Ok(());
        }
        let mut first = true;
        // With cover traffic our own dummies keep arriving: take a bounded
        // number per pass so that the daemon gets back to its callers.
        let mut rounds_left = if self.transport.cover.is_some() {
            PACED_FETCH_ROUNDS
        } else {
            usize::MAX
        };
        loop {
            if rounds_left == 0 {
                break;
            }
            rounds_left -= 1;
            let wait_ms = if first {
                wait.as_millis().min(u32::MAX as u128) as u32
            } else {
                0
            };
            first = false;
            let conn = self.conn(relay);
            let resp = conn
                .request(&Request::Fetch {
                    max: MAX_FETCH,
                    wait_ms,
                })
                .await?;
            let Response::Envelopes(list) = resp else {
                return Err(ConnectError::Broken(relay.authority()).into());
            };
            if list.is_empty() {
                self.drained = true;
                break;
            }
            let mut acks = Vec::with_capacity(list.len());
            for d in list {
                acks.push(Request::Ack {
                    mailbox: d.mailbox,
                    seq: d.seq,
                });
                let Some((keys, role)) = routes.get(&d.mailbox).cloned() else {
                    continue;
                };
                self.handle_envelope(&keys, &role, &d.envelope, Via::Relay).await;
            }
            // Durable before acknowledging: a crash here re-delivers, never loses.
            self.save()?;
            let conn = self.conn(relay);
            conn.pipeline(&acks).await?;
            // Stop fetching from mailboxes that closed during processing.
            let active: Vec<MailboxId> = self.mailboxes().iter().map(|(k, _)| k.id()).collect();
            routes.retain(|id, _| active.contains(id));
            if routes.is_empty() {
                break;
            }
        }
        // Processed envelopes were saved above; save again only if a kept message moved.
        if self.retry_deferred().await {
            self.save()?;
        }
        Ok(())
    }

    async fn handle_envelope(&mut self, keys: &MailboxKeys, role: &Role, env: &Envelope, via: Via) {
        let channel_name = match role {
            Role::Channel(n) | Role::Invite(n, _) => Some(n.clone()),
            Role::Join(_) | Role::Drop(_) => None,
        };
        let chunk = match open_envelope(&keys.address.seal, &keys.address.send, env) {
            Ok(c) => c,
            Err(_) => {
                self.warn(
                    channel_name.as_deref(),
                    "discarded an envelope that failed authentication (forged or corrupted)",
                );
                return;
            }
        };
        let r = self.state.reassembly.entry(keys.id().0).or_default();
        let whole = match r.push(chunk) {
            Ok(Some(w)) => w,
            Ok(None) => return,
            Err(_) => {
                self.warn(channel_name.as_deref(), "discarded a malformed message");
                return;
            }
        };
        match (role, whole.kind) {
            (Role::Channel(name), PayloadKind::Mls) => {
                match self.read_channel_payload(name, &whole.payload, via).await {
                    Ok(()) => {}
                    Err(Rejected::Later) => self.defer(name, whole.payload, via),
                    Err(Rejected::Now(text)) => self.warn(Some(name), text),
                }
            }
            (Role::Invite(name, invite_id), PayloadKind::JoinRequest) => {
                let kp = JoinRequest::from_bytes(&whole.payload)
                    .map_err(protocol)
                    .and_then(|j| validate_key_package(&self.provider, &j.key_package).map_err(protocol));
                match kp {
                    Ok(kp) => self.admissions.push((name.clone(), *invite_id, kp)),
                    Err(_) => self.warn(Some(name), "refused an invalid join request"),
                }
            }
            (Role::Join(id), PayloadKind::Welcome) => self.accept_welcome(*id, &whole.payload).await,
            (Role::Drop(name), PayloadKind::Letter) => self.receive_letter(name, keys, &whole.payload),
            _ => self.warn(channel_name.as_deref(), "discarded a message of an unexpected kind"),
        }
    }

    /// Reads one channel payload through MLS, unless it is the second copy of a message
    /// carried both by courier and by relay (from either path, or both waiting in
    /// `deferred`): that one is skipped without a word.
    async fn read_channel_payload(&mut self, name: &str, payload: &[u8], via: Via) -> Result<(), Rejected> {
        let digest = payload_digest(payload);
        if self.carried_twice(&digest, via) {
            return Ok(());
        }
        self.process_mls(name, payload).await?;
        self.remember_payload(digest, via);
        Ok(())
    }

    /// Whether this channel payload was already processed and one of its two copies
    /// came by courier: the copy that arrives second is the same message, not a replay,
    /// and is skipped without a word. Relay-only repeats still go to MLS, which reports
    /// them as replays.
    fn carried_twice(&self, digest: &[u8; 16], via: Via) -> bool {
        self.state
            .recent_payloads
            .iter()
            .any(|p| &p.digest == digest && (p.by_courier || via == Via::Courier))
    }

    /// Remembers a channel payload once MLS has read it (not before: a copy that
    /// failed, or waits for a later epoch, must not hide the other copy).
    fn remember_payload(&mut self, digest: [u8; 16], via: Via) {
        if self.state.recent_payloads.len() >= RECENT_PAYLOADS {
            self.state.recent_payloads.pop_front();
        }
        self.state.recent_payloads.push_back(crate::state::RecentPayload {
            digest,
            by_courier: via == Via::Courier,
        });
    }

    /// Keeps an MLS message from a later epoch for when its commit arrives.
    fn defer(&mut self, name: &str, payload: Vec<u8>, via: Via) {
        let held = self.state.deferred.iter().filter(|d| d.channel == name).count();
        if held >= MAX_DEFERRED {
            // The epoch in a message's header is not authenticated: bound what it can make us keep.
            if let Some(pos) = self.state.deferred.iter().position(|d| d.channel == name) {
                self.state.deferred.remove(pos);
                self.warn(
                    Some(name),
                    "dropped a message that waited too long for a change to the channel that never arrived",
                );
            }
        }
        self.state.deferred.push(DeferredMls {
            channel: name.to_string(),
            payload,
            by_courier: via == Via::Courier,
        });
    }

    /// Retries the messages kept for a later epoch, until no more can be read.
    /// Returns whether any was read or dropped.
    async fn retry_deferred(&mut self) -> bool {
        let mut changed = false;
        loop {
            let mut progress = false;
            let waiting = std::mem::take(&mut self.state.deferred);
            let mut keep = Vec::new();
            for d in waiting {
                if !self.is_active(&d.channel) {
                    progress = true;
                    continue;
                }
                let via = if d.by_courier { Via::Courier } else { Via::Relay };
                match self.read_channel_payload(&d.channel, &d.payload, via).await {
                    Ok(()) => progress = true,
                    Err(Rejected::Later) => keep.push(d),
                    Err(Rejected::Now(text)) => {
                        progress = true;
                        self.warn(Some(&d.channel), text);
                    }
                }
            }
            // Anything deferred while retrying (none expected) is kept too.
            keep.append(&mut self.state.deferred);
            self.state.deferred = keep;
            changed |= progress;
            if !progress || self.state.deferred.is_empty() {
                return changed;
            }
        }
    }

    /// Processes one MLS message.
    async fn process_mls(&mut self, name: &str, payload: &[u8]) -> Result<(), Rejected> {
        let Ok(mut group) = self.load_group(name) else {
            return Ok(());
        };
        let received = match group.process(&self.provider, payload) {
            Ok(r) => r,
            // A message from a later epoch, or carried ahead of its sender's earlier ones
            // (a courier): kept until what it follows has been read.
            Err(Rejection::FutureEpoch(_) | Rejection::TooFarAhead) => return Err(Rejected::Later),
            Err(rej) => return Err(Rejected::Now(format!("discarded a message: {rej}"))),
        };
        match received {
            Received::Application { sender, plaintext } => {
                let msg = match AppMessage::from_bytes(&plaintext) {
                    Ok(m) => m,
                    Err(_) => {
                        self.warn(
                            Some(name),
                            format!("discarded a malformed message from {}", sender.name),
                        );
                        return Ok(());
                    }
                };
                let Some(ch) = self.state.channels.get_mut(name) else {
                    return Ok(());
                };
                // A part's id is never shown or answered: parts are told apart by their
                // file and index (receive_part), and so stay out of the replay filter.
                if !matches!(msg.body, Body::Part { .. }) && !ch.seen.insert(msg.id) {
                    self.warn(Some(name), "discarded a replayed message");
                    return Ok(());
                }
                match msg.body {
                    Body::Text(text) => ch.messages.push(StoredMessage {
                        id: hex(&msg.id),
                        from: sender.name.clone(),
                        from_key: sender.identity_key,
                        // A sender's clock ahead of ours cannot keep a disappearing message longer.
                        sent_at: msg.sent_at.min(now_ms()),
                        text,
                        event: None,
                    }),
                    Body::Close => {
                        self.wipe(name, ChannelStatus::Closed).await;
                        self.event(name, "closed", format!("{} closed the channel", sender.name));
                    }
                    Body::File(offer) => {
                        let id = hex(&msg.id);
                        ch.messages.push(StoredMessage {
                            id: id.clone(),
                            from: sender.name.clone(),
                            from_key: sender.identity_key,
                            sent_at: msg.sent_at.min(now_ms()),
                            text: files::offer_text(&offer),
                            event: None,
                        });
                        self.receive_offer(name, sender.identity_key, id, offer);
                    }
                    Body::Part { file_id, index, data } => {
                        self.receive_part(name, sender.identity_key, file_id, index, &data);
                    }
                }
            }
            Received::Commit {
                committer,
                added,
                removed,
                self_removed,
            } => {
                let by = committer.map(|c| c.name).unwrap_or_else(|| "a member".into());
                for m in added {
                    self.event(name, "joined", format!("{by} added {}", m.name));
                }
                for m in removed {
                    if m.identity_key != self.identity.public_key() {
                        self.event(name, "removed", format!("{by} removed {}", m.name));
                    }
                }
                if self_removed {
                    self.event(name, "removed", format!("{by} removed you from the channel"));
                    self.wipe(name, ChannelStatus::Removed).await;
                }
            }
            Received::Proposal { .. } => {}
        }
        Ok(())
    }

    /// Ends a channel here and deletes its mailboxes at the relays (or queues that).
    async fn wipe(&mut self, name: &str, status: ChannelStatus) {
        self.end_channel(name, status);
        self.delete_doomed().await;
    }

    /// Ends a channel on this device without the network: deletes its MLS keys, queues
    /// its mailboxes for deletion at the relays, and marks it with `status`. A closed
    /// channel also loses its history: only a tombstone with its name stays, so that a
    /// later send says the channel was closed.
    fn end_channel(&mut self, name: &str, status: ChannelStatus) {
        let Some(ch) = self.state.channels.get_mut(name) else {
            return;
        };
        ch.status = status;
        let staged = ch.pending.take().and_then(|p| p.new_mailbox);
        let sequencer = ch.sequencer.take();
        let mut doomed: Vec<MailboxKeys> = vec![ch.mailbox.clone()];
        doomed.extend(ch.invites.drain(..).map(|i| i.mailbox));
        doomed.extend(ch.retired.drain(..).map(|r| r.keys));
        doomed.extend(staged);
        if status == ChannelStatus::Closed {
            // The sequencer goes only when nobody can commit any more.
            doomed.extend(sequencer);
            ch.messages.clear();
            ch.read_upto = 0;
            ch.seen.clear();
            ch.verified.clear();
        }
        let gid = ch.group_id.clone();
        if let Ok(Some(group)) = Channel::load(&self.provider, &gid) {
            let _ = group.delete(&self.provider);
        }
        self.state.deferred.retain(|d| d.channel != name);
        if status == ChannelStatus::Closed {
            self.prune_files();
        }
        for k in &doomed {
            self.state.reassembly.remove(&k.id().0);
        }
        self.state.doomed.extend(doomed);
    }

    /// Applies the channels' lifetimes: deletes messages older than their channel's
    /// disappearing time, and ends channels whose expiry has passed. Returns whether
    /// anything changed (the caller saves).
    fn apply_lifecycle(&mut self) -> bool {
        let now = now_s();
        let mut changed = false;
        let mut expired = Vec::new();
        for (name, ch) in self.state.channels.iter_mut() {
            if ch.status == ChannelStatus::Active && ch.expires_at != 0 && ch.expires_at <= now {
                expired.push(name.clone());
            }
            if ch.disappear_after == 0 {
                continue;
            }
            let keep_after = now.saturating_sub(ch.disappear_after);
            let before = ch.messages.len();
            let mut read_gone = 0;
            let read_upto = ch.read_upto;
            let mut i = 0;
            ch.messages.retain(|m| {
                let keep = m.sent_at / 1000 > keep_after;
                if !keep && i < read_upto {
                    read_gone += 1;
                }
                i += 1;
                keep
            });
            if ch.messages.len() != before {
                ch.read_upto = ch.read_upto.saturating_sub(read_gone).min(ch.messages.len());
                changed = true;
            }
        }
        for name in expired {
            self.end_channel(&name, ChannelStatus::Closed);
            self.event(&name, "closed", "the channel expired and was closed".into());
            changed = true;
        }
        if changed {
            self.prune_files();
        }
        changed
    }

    async fn accept_welcome(&mut self, join_id: MailboxId, payload: &[u8]) {
        let Some(pos) = self.state.pending_joins.iter().position(|p| p.mailbox.id() == join_id) else {
            return;
        };
        let (group, sender) = match Channel::join(&self.provider, payload) {
            Ok(x) => x,
            Err(_) => {
                self.warn(None, "discarded an invalid welcome");
                return;
            }
        };
        let pj = self.state.pending_joins.remove(pos);
        if sender.identity_key != pj.inviter_key {
            self.warn(None, "discarded a welcome that did not come from the inviter");
            let _ = group.delete(&self.provider);
            self.state.pending_joins.push(pj);
            return;
        }
        let Ok(info) = group.info() else {
            self.warn(None, "discarded a welcome without the channel's description");
            let _ = group.delete(&self.provider);
            self.state.pending_joins.push(pj);
            return;
        };
        let base = pj.local_name.clone().unwrap_or(info.name);
        let mut local = base.clone();
        let mut n = 2;
        while self.state.channels.contains_key(&local) {
            local = format!("{base}-{n}");
            n += 1;
        }
        self.state.channels.insert(
            local.clone(),
            ChannelState {
                group_id: group.group_id(),
                mailbox: pj.mailbox.clone(),
                mailbox_since: now_s(),
                retired: Vec::new(),
                sequencer: None,
                invites: Vec::new(),
                messages: Vec::new(),
                read_upto: 0,
                seen: Default::default(),
                verified: Default::default(),
                status: ChannelStatus::Active,
                pending: None,
                disappear_after: info.disappear_after,
                expires_at: info.expires_at,
            },
        );
        self.event(&local, "joined", format!("you joined; {} admitted you", sender.name));
    }

    // ---- commits ----

    fn others(&self, group: &Channel) -> Vec<MailboxAddress> {
        let me = self.identity.public_key();
        group
            .members()
            .into_iter()
            .filter(|m| m.identity_key != me)
            .filter_map(|m| m.mailbox)
            .collect()
    }

    /// Stages, claims and sends one commit; retries when another member won the epoch.
    async fn commit(&mut self, name: &str, op: CommitOp) -> Result<(), ClientError> {
        for _ in 0..COMMIT_ATTEMPTS {
            self.active(name)?;
            let mut group = self.load_group(name)?;
            let mut new_mailbox = None;
            let recipients = self.others(&group);
            let (out, joiners) = match &op {
                CommitOp::Add(kps) => {
                    let current: Vec<[u8; 32]> = group.members().iter().map(|m| m.identity_key).collect();
                    let fresh: Vec<ValidKeyPackage> = kps
                        .iter()
                        .filter(|k| !current.contains(&k.member.identity_key))
                        .cloned()
                        .collect();
                    if fresh.is_empty() {
                        return Ok(());
                    }
                    let joiners = fresh.iter().filter_map(|k| k.member.mailbox.clone()).collect();
                    (
                        group.add(&self.provider, &self.identity, fresh).map_err(protocol)?,
                        joiners,
                    )
                }
                CommitOp::Remove(fps) => {
                    let present: Vec<Fingerprint> = group
                        .members()
                        .iter()
                        .map(|m| m.fingerprint)
                        .filter(|f| fps.contains(f))
                        .collect();
                    if present.is_empty() {
                        return Ok(());
                    }
                    (
                        group
                            .remove(&self.provider, &self.identity, &present)
                            .map_err(protocol)?,
                        Vec::new(),
                    )
                }
                CommitOp::Proposals => {
                    if !group.has_pending_proposals() {
                        return Ok(());
                    }
                    (
                        group.commit_pending(&self.provider, &self.identity).map_err(protocol)?,
                        Vec::new(),
                    )
                }
                CommitOp::SelfUpdate => {
                    // A fresh mailbox at the same relay: ids and send capability rotate too.
                    let relay = self.channel(name)?.mailbox.address.relay.clone();
                    let fresh = self.create_mailbox(&relay).await?;
                    let out = group.self_update(&self.provider, &self.identity, Some(&fresh.address));
                    new_mailbox = Some(fresh);
                    (out.map_err(protocol)?, Vec::new())
                }
            };
            self.stage(name, &out, recipients, joiners, new_mailbox)?;
            if self.claim_and_finish(name).await? {
                return Ok(());
            }
            // Lost the epoch: wait for the winner's commit and try again.
            self.fetch_all(Duration::from_millis(500)).await?;
        }
        Err(ClientError::Contended(name.to_string()))
    }

    fn stage(
        &mut self,
        name: &str,
        out: &OutgoingCommit,
        recipients: Vec<MailboxAddress>,
        joiners: Vec<MailboxAddress>,
        new_mailbox: Option<MailboxKeys>,
    ) -> Result<(), ClientError> {
        let pending = PendingCommit {
            new_mailbox,
            epoch: out.epoch,
            token: out.token(),
            commit: out.commit.clone(),
            welcome: out.welcome.clone(),
            recipients,
            joiners,
        };
        if let Some(ch) = self.state.channels.get_mut(name) {
            ch.pending = Some(pending);
        }
        self.save()
    }

    /// Claims the staged commit's epoch; on success merges and sends it.
    /// Returns false if another member won the epoch (the staged commit is dropped).
    async fn claim_and_finish(&mut self, name: &str) -> Result<bool, ClientError> {
        let Some(pending) = self.channel(name)?.pending.clone() else {
            return Ok(true);
        };
        let mut group = self.load_group(name)?;
        let seq = group.info().map_err(protocol)?.sequencer;
        let claim = Request::Claim {
            send: seq.send.0,
            epoch: pending.epoch,
            token: pending.token,
        };
        let result = self.conn(&seq.relay).request(&claim).await;
        match result {
            Ok(_) => {
                group.merge_pending(&self.provider).map_err(protocol)?;
                for to in &pending.recipients {
                    self.enqueue(to, PayloadKind::Mls, &pending.commit)?;
                }
                if let Some(w) = &pending.welcome {
                    for to in &pending.joiners {
                        self.enqueue(to, PayloadKind::Welcome, w)?;
                    }
                }
                if let Some(ch) = self.state.channels.get_mut(name) {
                    ch.pending = None;
                    if let Some(fresh) = pending.new_mailbox.clone() {
                        let old = std::mem::replace(&mut ch.mailbox, fresh);
                        ch.mailbox_since = now_s();
                        ch.retired.push(RetiredMailbox {
                            keys: old,
                            until: now_s().saturating_add(RETIRED_GRACE.as_secs()),
                        });
                    }
                }
                self.save()?;
                self.flush_outbox().await?;
                if !group.is_active() {
                    self.wipe(name, ChannelStatus::Removed).await;
                }
                Ok(true)
            }
            Err(e) if e.is(ErrorCode::EpochConflict) => {
                let _ = group.discard_pending(&self.provider);
                if let Some(ch) = self.state.channels.get_mut(name) {
                    ch.pending = None;
                }
                self.save()?;
                if let Some(fresh) = &pending.new_mailbox {
                    // Unused now; if the relay cannot be asked, a later sync deletes it.
                    if !self.delete_mailbox(fresh).await {
                        self.state.doomed.push(fresh.clone());
                        self.save()?;
                    }
                }
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn resume_pending_commits(&mut self) -> Result<(), ClientError> {
        let names: Vec<String> = self
            .state
            .channels
            .iter()
            .filter(|(_, c)| c.pending.is_some() && c.status == ChannelStatus::Active)
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            self.claim_and_finish(&name).await?;
        }
        Ok(())
    }

    async fn admit(&mut self) -> Result<(), ClientError> {
        let requests = std::mem::take(&mut self.admissions);
        let mut per_channel: BTreeMap<String, Vec<ValidKeyPackage>> = BTreeMap::new();
        for (name, invite_id, kp) in requests {
            let Some(ch) = self.state.channels.get_mut(&name) else {
                continue;
            };
            let Some(inv) = ch.invites.iter_mut().find(|i| i.mailbox.id() == invite_id) else {
                continue;
            };
            if inv.expires_at <= now_s() {
                self.warn(
                    Some(&name),
                    format!("refused {}: the invite had expired", kp.member.name),
                );
                continue;
            }
            if inv.uses_left == 0 {
                self.warn(
                    Some(&name),
                    format!("refused {}: the invite was used up", kp.member.name),
                );
                continue;
            }
            inv.uses_left -= 1;
            per_channel.entry(name).or_default().push(kp);
        }
        for (name, kps) in per_channel {
            self.commit(&name, CommitOp::Add(kps)).await?;
        }
        Ok(())
    }

    async fn commit_proposals(&mut self) -> Result<(), ClientError> {
        let names: Vec<String> = self
            .state
            .channels
            .iter()
            .filter(|(_, c)| c.status == ChannelStatus::Active)
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            if self
                .load_group(&name)
                .map(|g| g.has_pending_proposals())
                .unwrap_or(false)
            {
                self.commit(&name, CommitOp::Proposals).await?;
            }
        }
        Ok(())
    }

    /// Deletes rotated-out mailboxes whose grace period is over.
    async fn expire_retired(&mut self) {
        let now = now_s();
        let mut gone = Vec::new();
        for ch in self.state.channels.values_mut() {
            let (old, keep): (Vec<_>, Vec<_>) = ch.retired.drain(..).partition(|r| r.until <= now);
            ch.retired = keep;
            gone.extend(old.into_iter().map(|r| r.keys));
        }
        for k in &gone {
            self.state.reassembly.remove(&k.id().0);
        }
        self.state.doomed.extend(gone);
        self.delete_doomed().await;
    }

    /// Rotates every channel mailbox older than [`ROTATE_AFTER`]; a failure
    /// is retried at the next sync.
    async fn rotate_old_mailboxes(&mut self) {
        let now = now_s();
        let due: Vec<String> = self
            .state
            .channels
            .iter()
            .filter(|(_, c)| c.status == ChannelStatus::Active && c.pending.is_none())
            .filter(|(_, c)| c.mailbox_since.saturating_add(ROTATE_AFTER.as_secs()) <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            let _ = self.commit(&name, CommitOp::SelfUpdate).await;
        }
    }

    /// Deletes invite mailboxes that expired or were used up.
    async fn expire_invites(&mut self) {
        let now = now_s();
        let mut dead = Vec::new();
        for ch in self.state.channels.values_mut() {
            let (keep, gone): (Vec<_>, Vec<_>) = ch
                .invites
                .drain(..)
                .partition(|i| i.uses_left > 0 && i.expires_at > now);
            ch.invites = keep;
            dead.extend(gone.into_iter().map(|i| i.mailbox));
        }
        if !dead.is_empty() {
            self.state.doomed.extend(dead);
            self.delete_doomed().await;
        }
    }

    // ---- user operations ----

    /// Creates a channel on our relay.
    pub async fn channel_new(&mut self, name: &str, suite: Suite, lifetime: Lifetime) -> Result<(), ClientError> {
        validate_name(name).map_err(|e| ClientError::Usage(format!("channel {e}")))?;
        if self.state.channels.contains_key(name) {
            return Err(ClientError::ChannelExists(name.to_string()));
        }
        for (flag, d) in [("--disappear", lifetime.disappear), ("--expires", lifetime.expires)] {
            if d.is_some_and(|d| d.as_secs() == 0) {
                return Err(ClientError::Usage(format!(
                    "{flag} needs a duration of at least one second, like 30s or 7d"
                )));
            }
        }
        let relay = self.state.relay.clone();
        let mailbox = self.create_mailbox(&relay).await?;
        let sequencer = self.create_mailbox(&relay).await?;
        let disappear_after = lifetime.disappear.map_or(0, |d| d.as_secs());
        let expires_at = lifetime.expires.map_or(0, |d| now_s().saturating_add(d.as_secs()));
        let info = ChannelInfo {
            name: name.to_string(),
            sequencer: sequencer.address.clone(),
            created_at: now_s(),
            disappear_after,
            expires_at,
        };
        let group =
            Channel::create(&self.provider, &self.identity, &info, &mailbox.address, suite).map_err(protocol)?;
        self.state.channels.insert(
            name.to_string(),
            ChannelState {
                group_id: group.group_id(),
                mailbox,
                mailbox_since: now_s(),
                retired: Vec::new(),
                sequencer: Some(sequencer),
                invites: Vec::new(),
                messages: Vec::new(),
                read_upto: 0,
                seen: Default::default(),
                verified: Default::default(),
                status: ChannelStatus::Active,
                pending: None,
                disappear_after,
                expires_at,
            },
        );
        self.save()
    }

    /// Issues an invite.
    pub async fn invite(&mut self, name: &str, uses: u32, ttl: Duration) -> Result<String, ClientError> {
        self.sync(Duration::ZERO).await?;
        self.active(name)?;
        if uses == 0 {
            return Err(ClientError::Usage("--uses must be at least 1".into()));
        }
        let group = self.load_group(name)?;
        let relay = group.info().map_err(protocol)?.sequencer.relay;
        let suite = group.suite().unwrap_or_default();
        let mailbox = self.create_mailbox(&relay).await?;
        let expires_at = now_s().saturating_add(ttl.as_secs());
        let invite = Invite {
            mailbox: mailbox.address.clone(),
            expires_at,
            inviter_key: self.identity.public_key(),
            ciphersuite: suite.code(),
        };
        if let Some(ch) = self.state.channels.get_mut(name) {
            ch.invites.push(InviteRecord {
                mailbox,
                uses_left: uses,
                expires_at,
            });
        }
        self.save()?;
        Ok(invite.to_text())
    }

    /// Redeems an invite: sends a join request. Waits up to `wait` for the welcome.
    pub async fn join(
        &mut self,
        invite: &str,
        local_name: Option<String>,
        wait: Duration,
    ) -> Result<Option<String>, ClientError> {
        let invite = Invite::from_text(invite).map_err(|e| ClientError::Invite(e.to_string()))?;
        if invite.expires_at <= now_s() {
            return Err(ClientError::Invite(
                "this invite has expired; ask the inviter for a new one".into(),
            ));
        }
        let Some(suite) = Suite::from_code(invite.ciphersuite) else {
            return Err(ClientError::Invite(
                "this invite uses a ciphersuite this version does not support; upgrade backchannel".into(),
            ));
        };
        if let Some(n) = &local_name {
            validate_name(n).map_err(|e| ClientError::Usage(format!("channel {e}")))?;
            if self.state.channels.contains_key(n) {
                return Err(ClientError::ChannelExists(n.clone()));
            }
        }
        let relay = invite.mailbox.relay.clone();
        let mailbox = self.create_mailbox(&relay).await?;
        let kp = key_package(&self.provider, &self.identity, &mailbox.address, suite).map_err(protocol)?;
        let request = JoinRequest { key_package: kp }.to_bytes();
        let envs = seal_payload(
            &invite.mailbox.seal,
            &invite.mailbox.send,
            PayloadKind::JoinRequest,
            &request,
            &mut OsRng,
        )
        .map_err(protocol)?;
        let reqs: Vec<Request> = envs
            .into_iter()
            .map(|envelope| Request::Send {
                send: invite.mailbox.send.0,
                pow: 0,
                envelope,
            })
            .collect();
        let results = self.conn(&relay).pipeline(&reqs).await?;
        for r in results {
            match r {
                Ok(_) => {}
                Err(e) if e.is(ErrorCode::NoSuchMailbox) => {
                    self.delete_mailbox(&mailbox).await;
                    return Err(ClientError::Invite(
                        "this invite has been used up or withdrawn; ask the inviter for a new one".into(),
                    ));
                }
                Err(e) if e.is(ErrorCode::MailboxFull) => {
                    return Err(ClientError::Invite(
                        "the invite's mailbox is full; try again later".into(),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.state.pending_joins.push(PendingJoin {
            mailbox,
            inviter_key: invite.inviter_key,
            local_name,
            expires_at: invite.expires_at,
        });
        self.save()?;
        let deadline = tokio::time::Instant::now() + wait;
        let known: Vec<String> = self.state.channels.keys().cloned().collect();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.sync(left.min(Duration::from_secs(5))).await?;
            if let Some(new) = self.state.channels.keys().find(|k| !known.contains(k)) {
                return Ok(Some(new.clone()));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Sends a text message. `Err(ClientError::Queued(why))` means it is stored and will go later.
    ///
    /// The message is saved durably before the network is touched; if this
    /// command dies or no relay answers, the next command (or the daemon)
    /// encrypts it in the channel's then-current epoch and sends it, once.
    pub async fn send(&mut self, name: &str, text: &str) -> Result<(), ClientError> {
        self.active(name)?;
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        let unsent = UnsentMessage {
            channel: name.to_string(),
            id,
            sent_at: now_ms(),
            text: text.to_string(),
        };
        self.state.unsent.push(unsent.clone());
        self.save()?;
        let synced = self.refresh().await;
        // In the history after what the sync brought in, even if it failed.
        self.record_own(&unsent);
        self.save()?;
        if let Err(e) = &synced {
            if !matches!(e, ClientError::Relay(_)) {
                return synced.map(|_| ());
            }
        }
        if synced.is_ok() {
            // Without a sync the epoch we know may be stale: the message waits, sealed later.
            self.seal_unsent()?;
        }
        if synced.is_ok()
            && self.state.unsent.iter().any(|u| u.channel == name)
            && self.load_group(name)?.has_pending_proposals()
        {
            // MLS allows no application message while proposals are pending;
            // sync tried to commit them and failed: report why.
            return Err(synced.err().unwrap_or_else(|| ClientError::Contended(name.to_string())));
        }
        self.undelivered = None;
        let queued = self.flush_outbox().await?;
        if queued > 0 || synced.is_err() || !self.state.unsent.is_empty() {
            let why = match (synced, self.undelivered.take()) {
                (Err(e), _) => e.to_string(),
                (Ok(_), Some(why)) => why,
                (Ok(_), None) => "the relay could not be reached".to_string(),
            };
            return Err(ClientError::Queued(why));
        }
        Ok(())
    }

    /// Puts our own message into its channel's history, once.
    fn record_own(&mut self, u: &UnsentMessage) {
        let me = self.identity.public_key();
        let my_name = self.identity.name().to_string();
        if let Some(ch) = self.state.channels.get_mut(&u.channel) {
            if ch.seen.insert(u.id) {
                ch.messages.push(StoredMessage {
                    id: hex(&u.id),
                    from: my_name,
                    from_key: me,
                    sent_at: u.sent_at,
                    text: u.text.clone(),
                    event: None,
                });
                ch.read_upto = ch.messages.len();
            }
        }
    }

    /// Encrypts every unsent message whose channel can take one now into the
    /// outbox, in one durable save (so each is sealed exactly once).
    fn seal_unsent(&mut self) -> Result<(), ClientError> {
        if self.state.unsent.is_empty() {
            return Ok(());
        }
        let unsent = std::mem::take(&mut self.state.unsent);
        let mut keep = Vec::new();
        for u in unsent {
            if !self.is_active(&u.channel) {
                // The channel ended before the message could go: say so where it was written.
                let text = format!(
                    "your message sent at {} could not be delivered: the channel ended",
                    u.sent_at
                );
                self.warn(Some(&u.channel), text);
                continue;
            }
            let mut group = self.load_group(&u.channel)?;
            if group.has_pending_proposals() {
                keep.push(u);
                continue;
            }
            let msg = AppMessage {
                id: u.id,
                sent_at: u.sent_at,
                body: Body::Text(u.text.clone()),
            };
            let ct = group
                .encrypt(&self.provider, &self.identity, &msg.to_bytes())
                .map_err(protocol)?;
            for to in self.others(&group) {
                self.enqueue(&to, PayloadKind::Mls, &ct)?;
            }
            self.record_own(&u);
        }
        self.state.unsent = keep;
        self.save()
    }

    /// Messages of a channel: unread ones, or all.
    pub fn read(&mut self, name: &str, all: bool) -> Result<Vec<MessageView>, ClientError> {
        if self.apply_lifecycle() {
            self.save()?;
        }
        let ch = self.channel(name)?;
        let start = if all { 0 } else { ch.read_upto.min(ch.messages.len()) };
        let me = self.identity.public_key();
        let out: Vec<MessageView> = ch.messages[start..]
            .iter()
            .map(|m| MessageView {
                channel: name.to_string(),
                verified: m.event.is_none() && (m.from_key == me || ch.verified.contains(&m.from_key)),
                from_fingerprint: Fingerprint::of(&m.from_key),
                file: self.file_view(name, &m.id),
                message: m.clone(),
            })
            .collect();
        if !out.is_empty() {
            if let Some(ch) = self.state.channels.get_mut(name) {
                ch.read_upto = ch.messages.len();
            }
            self.save()?;
        }
        Ok(out)
    }

    /// Our channels.
    pub fn channels(&self) -> Vec<ChannelSummary> {
        self.state
            .channels
            .iter()
            .map(|(name, ch)| ChannelSummary {
                name: name.clone(),
                status: ch.status,
                members: if ch.status == ChannelStatus::Active {
                    self.load_group(name).map(|g| g.members().len()).unwrap_or(0)
                } else {
                    0
                },
                unread: ch.messages.len().saturating_sub(ch.read_upto),
                disappear_after: ch.disappear_after,
                expires_at: if ch.status == ChannelStatus::Active {
                    ch.expires_at
                } else {
                    0
                },
            })
            .collect()
    }

    /// Members of a channel.
    pub fn members(&self, name: &str) -> Result<Vec<MemberView>, ClientError> {
        let ch = self.active(name)?;
        let me = self.identity.public_key();
        Ok(self
            .load_group(name)?
            .members()
            .into_iter()
            .map(|m| MemberView {
                verified: m.identity_key == me || ch.verified.contains(&m.identity_key),
                you: m.identity_key == me,
                name: m.name,
                fingerprint: m.fingerprint,
                identity_key: m.identity_key,
            })
            .collect())
    }

    fn find_member(&self, name: &str, who: &str) -> Result<MemberInfo, ClientError> {
        let group = self.load_group(name)?;
        let needle: String = who
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_lowercase();
        let matches: Vec<MemberInfo> = group
            .members()
            .into_iter()
            .filter(|m| {
                m.name == who || (needle.len() >= 4 && m.fingerprint.to_string().replace(' ', "").starts_with(&needle))
            })
            .collect();
        match matches.len() {
            0 => Err(ClientError::UnknownMember(name.to_string(), who.to_string())),
            1 => Ok(matches
                .into_iter()
                .next()
                .ok_or_else(|| ClientError::UnknownMember(name.into(), who.into()))?),
            _ => Err(ClientError::AmbiguousMember(name.to_string(), who.to_string())),
        }
    }

    /// The safety number with a member; with `confirm`, marks them verified.
    pub fn verify(&mut self, name: &str, who: &str, confirm: bool) -> Result<(String, MemberView), ClientError> {
        self.active(name)?;
        let m = self.find_member(name, who)?;
        let number = safety_number(&self.identity.public_key(), &m.identity_key);
        if confirm {
            if let Some(ch) = self.state.channels.get_mut(name) {
                ch.verified.insert(m.identity_key);
            }
            self.save()?;
        }
        let verified = self.channel(name)?.verified.contains(&m.identity_key);
        Ok((
            number,
            MemberView {
                name: m.name,
                fingerprint: m.fingerprint,
                identity_key: m.identity_key,
                verified,
                you: m.identity_key == self.identity.public_key(),
            },
        ))
    }

    /// Removes a member.
    pub async fn remove(&mut self, name: &str, who: &str) -> Result<String, ClientError> {
        self.sync(Duration::ZERO).await?;
        self.active(name)?;
        let m = self.find_member(name, who)?;
        if m.identity_key == self.identity.public_key() {
            return Err(ClientError::Usage("to remove yourself, use `backchannel leave`".into()));
        }
        self.commit(name, CommitOp::Remove(vec![m.fingerprint])).await?;
        self.event(name, "removed", format!("you removed {}", m.name));
        self.save()?;
        Ok(m.name)
    }

    /// Leaves a channel: asks the others to remove us, then wipes it here.
    pub async fn leave(&mut self, name: &str) -> Result<(), ClientError> {
        self.sync(Duration::ZERO).await?;
        self.active(name)?;
        let mut group = self.load_group(name)?;
        let others = self.others(&group);
        if !others.is_empty() {
            let proposal = group.leave(&self.provider, &self.identity).map_err(protocol)?;
            for to in &others {
                self.enqueue(to, PayloadKind::Mls, &proposal)?;
            }
            self.save()?;
            self.flush_outbox().await?;
        }
        self.wipe(name, ChannelStatus::Left).await;
        self.save()
    }

    /// Closes a channel for everyone.
    pub async fn close(&mut self, name: &str) -> Result<(), ClientError> {
        self.sync(Duration::ZERO).await?;
        self.active(name)?;
        let mut group = self.load_group(name)?;
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        let msg = AppMessage {
            id,
            sent_at: now_ms(),
            body: Body::Close,
        };
        let ct = group
            .encrypt(&self.provider, &self.identity, &msg.to_bytes())
            .map_err(protocol)?;
        for to in self.others(&group) {
            self.enqueue(&to, PayloadKind::Mls, &ct)?;
        }
        self.save()?;
        self.flush_outbox().await?;
        self.wipe(name, ChannelStatus::Closed).await;
        self.event(name, "closed", "you closed the channel".into());
        self.save()
    }

    /// Our own receiving mailbox for a channel (for tests that play a hostile sender).
    pub fn debug_mailbox(&self, name: &str) -> Result<MailboxKeys, ClientError> {
        Ok(self.channel(name)?.mailbox.clone())
    }

    /// Rotates our keys in a channel (post-compromise security) with a self-update commit.
    pub async fn update_keys(&mut self, name: &str) -> Result<(), ClientError> {
        self.sync(Duration::ZERO).await?;
        self.commit(name, CommitOp::SelfUpdate).await
    }
}

enum CommitOp {
    Add(Vec<ValidKeyPackage>),
    Remove(Vec<Fingerprint>),
    Proposals,
    SelfUpdate,
}
