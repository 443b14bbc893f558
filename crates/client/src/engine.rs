//! The driver: performs what the [`Session`] decides against the relays (through
//! [`RelayLinks`]) and the home directory. Every user-facing operation is here; the
//! protocol decisions are in [`crate::session`]. Commands that read or change
//! channel state sync first; every state change is saved durably before the network
//! sees its effects (outbox first, then send; a processed envelope before its ack).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backchannel_core::channel::{Channel, ChannelInfo, Suite};
use backchannel_core::frame::{ErrorCode, Request, Response, KEPT_COMMITS, MAX_FETCH};
use backchannel_core::identity::{validate_name, Fingerprint, Identity};
use backchannel_core::invite::{Invite, InviteLine, ShortInvite};
use backchannel_core::mailbox::{MailboxId, MailboxKeys};
use backchannel_core::relay_address::RelayAddress;
use backchannel_core::vault::KdfParams;
use rand_core::OsRng;

use crate::connection::{Breakage, ConnectError, RelayConnection};
use crate::home::{Home, Vault};
use crate::session::commit::{ClaimAnswer, CommitOutcome, Staged, COMMIT_ATTEMPTS};
use crate::session::outbox::{Delivered, FlushReport};
use crate::session::sync::{SyncStep, SYNC_STEPS};
use crate::session::{CommitOp, Effect, Role, Session, Via};
use crate::socks::ProxyAddr;
use crate::state::{ChannelState, ChannelStatus, EventKind, State, COVER_SETTING, FORWARD_SETTING};
use crate::transport::{Compartment, LinkKey, Links, Network, Results, TransportConfig};
use crate::{ClientError, Holdup, InviteProblem};
use backchannel_core::roles::{Act, Roles};

mod beside;
mod code;
mod drop_box;
mod files;

pub use crate::session::approval::WaitingView;
pub use crate::session::courier::ImportReport;
pub use crate::session::drop_box::MAX_REPLY_TEXT;
pub use crate::session::files::FileView;
pub use crate::session::views::{ChannelSummary, MemberView, MessageView};
pub use crate::session::Warning;
pub use crate::state::FileStatus;
pub use code::{CodeInvite, CodeJoined, Exchanged};
pub use drop_box::LetterView;
pub use files::FileProgress;

/// Fetches per sync pass when links are paced.
const PACED_FETCH_ROUNDS: usize = 2;

/// Deletes a saved copy of a received file ([`Effect::DeleteSaved`]); one the user moved
/// or deleted already is not an error.
fn delete_saved(path: &str) {
    let _ = std::fs::remove_file(path);
}

/// The compartment of requests that all send to one mailbox outside our channels.
fn sends_to(reqs: &[Request]) -> Compartment {
    match reqs.first() {
        Some(Request::Send { send, .. }) => Compartment::To(*send),
        _ => Compartment::Shared,
    }
}

/// Most mailboxes whose receive links stay open between fetches (each its own): with more,
/// each fetch opens and closes a connection per mailbox, so that a home stays within the
/// relay's per-address budget however many channels it has.
const MAX_KEPT: usize = 16;

/// Most mailboxes a wait long-polls at once, each on a connection of its own: a quarter of
/// the relay's default connections per address (64), which an organization behind one
/// address shares.
const MAX_WAITING: usize = 16;

/// The time now, in Unix milliseconds (the one clock of the client).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How long a new channel's messages and the channel itself last.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lifetime {
    /// Every member deletes each message this long after it was sent.
    pub disappear: Option<Duration>,
    /// The channel closes on its own this long after it is created.
    pub expires: Option<Duration>,
}

/// An opened home with its session, ready to run operations.
pub struct Engine {
    vault: Box<dyn Vault>,
    pub(crate) session: Session,
    net: Box<dyn Network>,
    transport: TransportConfig,
    warnings: Vec<Warning>,
    /// Why the last outbox flush left something queued.
    undelivered: Option<ConnectError>,
    /// A recipient's mailbox was full at the last flush.
    mailbox_full: bool,
    /// The last fetch pass emptied every opened mailbox.
    drained: bool,
    /// A sync's lifetimes step deleted messages or ended a channel since
    /// [`Engine::take_lapsed`] was last asked (what a UI shows changed with nothing arriving).
    lapsed: bool,
    /// Where the next long poll over several mailboxes starts ([`MAX_WAITING`] at a time).
    wait_from: usize,
    /// Receive links kept open between fetches, one per mailbox (at most [`MAX_KEPT`]).
    kept: Vec<LinkKey>,
    /// The daemon's fetches under cover, once they run beside its commands.
    beside: Option<beside::Beside>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine(..)")
    }
}

impl Engine {
    /// Creates an identity in `dir`, after checking the relay answers with the pinned key.
    /// `relays` are addresses of one relay (the same pin), tried in this order; at least
    /// one must answer. The passphrase's key is derived with `kdf`
    /// ([`KdfParams::default`], but in tests).
    pub async fn init(
        dir: &Path,
        passphrase: &[u8],
        name: &str,
        relays: Vec<RelayAddress>,
        proxy: Option<ProxyAddr>,
        forward: bool,
        kdf: KdfParams,
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
        let mut answered = Err(ConnectError::Unreachable {
            relay: relay.authority(),
            source: None,
        });
        for addr in std::iter::once(&relay).chain(&relay_alternates) {
            match RelayConnection::connect_via(addr, proxy.as_ref()).await {
                Ok(_) => {
                    answered = Ok(());
                    break;
                }
                Err(e @ (ConnectError::PinMismatch(_) | ConnectError::StaleCredential(_))) => return Err(e.into()),
                Err(e) => answered = Err(e),
            }
        }
        answered?;
        let identity = Identity::generate(name, &mut OsRng).map_err(ClientError::protocol)?;
        let mut state = State::new(
            name.to_string(),
            *identity.secret_bytes(),
            relay,
            relay_alternates,
            proxy,
        );
        if !forward {
            state
                .settings
                .insert(crate::state::FORWARD_SETTING.to_string(), "off".to_string());
        }
        Home::create(dir, passphrase, &state.encode()?, kdf)?;
        Ok(identity.fingerprint())
    }

    /// Opens the home in `dir`.
    pub fn open(dir: &Path, passphrase: &[u8]) -> Result<Self, ClientError> {
        let (home, state) = Home::open(dir, passphrase)?;
        let session = Session::new(state, Box::new(home.blobs()), now_ms())?;
        let transport = TransportConfig {
            proxy: session.state().proxy.clone(),
            no_forward: !session.state().forwards(),
            ..TransportConfig::default()
        };
        let net = Box::new(Links::new(addrs_of(session.state()), transport.clone()));
        let mut engine = Self::from_parts(session, Box::new(home), net, transport);
        // Disappearing messages and expired channels go before anything can show them,
        // even if no relay answers today.
        engine.session.apply_lifecycle();
        engine.perform_local()?;
        // The state is now the saved one: what it does not point at beside it was left by a
        // crash, and goes.
        if engine.session.collect_orphans() > 0 {
            engine.session.blobs.settle();
        }
        Ok(engine)
    }

    /// An engine over a session, the vault it saves to and the network it reaches
    /// relays through (the home and [`Links`] for a real client; models in tests).
    pub fn from_parts(
        session: Session,
        vault: Box<dyn Vault>,
        net: Box<dyn Network>,
        transport: TransportConfig,
    ) -> Self {
        Self {
            vault,
            session,
            net,
            transport,
            drained: false,
            lapsed: false,
            wait_from: 0,
            kept: Vec::new(),
            beside: None,
            warnings: Vec::new(),
            undelivered: None,
            mailbox_full: false,
        }
    }

    /// How many mailboxes a sync fetches (each on a connection of its own without cover).
    pub fn mailbox_count(&self) -> usize {
        self.session.mailboxes().len()
    }

    /// Our fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.session.fingerprint()
    }

    /// Our name.
    pub fn name(&self) -> &str {
        self.session.identity().name()
    }

    /// The proxy connections go through, if any.
    pub fn proxy(&self) -> Option<&ProxyAddr> {
        self.transport.proxy.as_ref()
    }

    /// The home's settings (`config get`), each with its value: `forward` (on, off), `proxy`
    /// (its address, or none), `cover` (the daemon's rate, or off) and `relays` (our relay's
    /// addresses, in the order they are tried).
    pub fn settings(&self) -> Vec<(String, String)> {
        let state = self.session.state();
        let relays: Vec<String> = std::iter::once(&state.relay)
            .chain(&state.relay_alternates)
            .map(ToString::to_string)
            .collect();
        vec![
            (
                FORWARD_SETTING.to_string(),
                if state.forwards() { "on" } else { "off" }.to_string(),
            ),
            (
                "proxy".to_string(),
                state.proxy.as_ref().map_or("none".to_string(), ToString::to_string),
            ),
            (
                COVER_SETTING.to_string(),
                state.setting(COVER_SETTING).unwrap_or("off").to_string(),
            ),
            ("relays".to_string(), relays.join(" ")),
        ]
    }

    /// Changes a setting (`config set`) and saves the home; what it changes applies to this
    /// engine's next connections. A `cover` rate is taken as given (the caller checks it as
    /// `daemon --cover` would).
    pub fn set_setting(&mut self, key: &str, value: &str) -> Result<(), ClientError> {
        let bad = |what: &str| ClientError::Usage(format!("{key} must be {what}, not \"{value}\""));
        match key {
            FORWARD_SETTING => {
                let on = match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(bad("on or off")),
                };
                let settings = &mut self.session.state.settings;
                if on {
                    settings.remove(FORWARD_SETTING);
                } else {
                    settings.insert(FORWARD_SETTING.to_string(), "off".to_string());
                }
                self.transport.no_forward = !on;
            }
            "proxy" => {
                let proxy = match value {
                    "none" => None,
                    v => Some(v.parse::<ProxyAddr>().map_err(|_| bad("socks5h://HOST:PORT or none"))?),
                };
                self.session.state.proxy = proxy.clone();
                self.transport.proxy = proxy;
            }
            COVER_SETTING => {
                let settings = &mut self.session.state.settings;
                if value == "off" {
                    settings.remove(COVER_SETTING);
                } else {
                    settings.insert(COVER_SETTING.to_string(), value.to_string());
                }
            }
            "relays" => {
                // Addresses of our own relay only (the same PIN: relays sharing a cluster):
                // our mailboxes live there, so a home cannot move to another relay this way.
                let addrs = value
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|a| !a.is_empty())
                    .map(str::parse::<RelayAddress>)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| bad("one or more relay addresses (bc://PIN@HOST:PORT)"))?;
                let pin = self.session.state.relay.pin;
                let Some(first) = addrs.first().cloned() else {
                    return Err(bad("one or more relay addresses (bc://PIN@HOST:PORT)"));
                };
                if addrs.iter().any(|a| a.pin != pin) {
                    return Err(ClientError::Usage(
                        "relays must be addresses of your own relay (the same PIN as now): your mailboxes \
                         live there, so a home cannot move to another relay"
                            .into(),
                    ));
                }
                self.session.state.relay = first;
                self.session.state.relay_alternates = addrs.into_iter().skip(1).collect();
                self.net.set_ours(addrs_of(self.session.state()));
            }
            _ => {
                return Err(ClientError::Usage(format!(
                    "there is no setting called \"{key}\"; the settings are forward, proxy, cover and relays"
                )))
            }
        }
        self.net.configure(self.transport.clone());
        self.session.save();
        self.perform_local().map(|_| ())
    }

    /// Sends through `proxy` from now on (overrides the one set at `init`).
    pub fn set_proxy(&mut self, proxy: ProxyAddr) {
        self.transport.proxy = Some(proxy);
        self.net.configure(self.transport.clone());
    }

    /// Turns on cover traffic: from now on every link to a relay sends one
    /// frame per `period` (a filler when nothing is queued). A cover mailbox that an
    /// earlier release made (its dummies went there) is deleted at its relay first; one
    /// that cannot be is kept for the next time.
    pub async fn enable_cover(&mut self, period: Duration) -> Result<(), ClientError> {
        let relay = self.session.state().relay.clone();
        let old = std::mem::take(&mut self.session.state.cover);
        let had = old.len();
        for keys in old {
            if !self.delete_mailbox(&keys).await {
                self.session.state.cover.push(keys);
            }
        }
        if had != self.session.state().cover.len() {
            self.session.save();
            self.perform_local()?;
        }
        self.transport.cover = Some(period);
        // Links opened before now were direct; reopen them paced, and start the stream now.
        self.net.configure(self.transport.clone());
        let key = self.key(&relay, Compartment::Shared);
        self.net.connect_all(&key).await?;
        Ok(())
    }

    /// Warnings gathered since the last call.
    pub fn take_warnings(&mut self) -> Vec<Warning> {
        std::mem::take(&mut self.warnings)
    }

    /// Tells the session the time: every operation starts with it.
    fn tick(&mut self) {
        self.session.set_now(now_ms());
    }

    pub(crate) fn save(&mut self) -> Result<(), ClientError> {
        let bytes = self.session.encode()?;
        self.vault.save(&bytes)?;
        // Sealed data the saved state no longer points at can go now.
        self.session.blobs.settle();
        Ok(())
    }

    /// Performs the session's effects that need no network (saves, warnings, deleting a
    /// saved copy), in order; a deletion at the relay asked for is left queued in the state
    /// for the next sync. Returns whether one was asked for.
    fn perform_local(&mut self) -> Result<bool, ClientError> {
        let mut delete = false;
        while let Some(effect) = self.session.poll_effect() {
            match effect {
                Effect::Save => self.save()?,
                Effect::Warn(w) => self.warnings.push(w),
                Effect::DeleteDoomed => delete = true,
                Effect::DeleteSaved(path) => delete_saved(&path),
                Effect::Show { .. } => {}
            }
        }
        Ok(delete)
    }

    /// Performs the session's effects in order, the deletions at the relays included.
    async fn perform(&mut self) -> Result<(), ClientError> {
        if self.perform_local()? {
            self.delete_doomed().await;
            self.save()?;
        }
        Ok(())
    }

    /// The links for `compartment`'s requests to `relay` (docs/protocol.md, "Unlinkable
    /// links"): links of its own, or, under cover, the relay's paced links in the
    /// compartment's turn.
    fn key(&self, relay: &RelayAddress, compartment: Compartment) -> LinkKey {
        LinkKey {
            relay: self.session.link_key(relay),
            compartment,
        }
    }

    /// Closes the links of `key` once their work is done, so that a later compartment's
    /// work never finds them open; paced links stay (their stream must not pause, and
    /// each turn connects afresh anyway).
    fn release(&mut self, key: &LinkKey) {
        if self.transport.cover.is_none() {
            self.net.forget(key);
        }
    }

    /// Sends requests on the links of `key`, answers in order.
    async fn pipeline(&mut self, key: &LinkKey, reqs: &[Request]) -> Result<Results, ConnectError> {
        self.net.pipeline(key, reqs).await
    }

    /// Sends one request on the links of `key`; a refusal becomes `Err`.
    async fn request(&mut self, key: &LinkKey, req: &Request) -> Result<Response, ConnectError> {
        self.pipeline(key, std::slice::from_ref(req))
            .await?
            .pop()
            .unwrap_or_else(|| Err(ConnectError::broken(key.relay.authority(), Breakage::Unexpected)))
    }

    /// Opens our mailboxes on the links of `key` so that fetches there return their
    /// envelopes.
    async fn open_boxes(
        &mut self,
        key: &LinkKey,
        boxes: &[MailboxKeys],
    ) -> Result<Vec<Result<(), ConnectError>>, ConnectError> {
        self.net.open(key, boxes).await
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
        let req = Request::create(&keys, pow_bits);
        // Created on a connection of its own: nothing ties it to the mailbox it replaces.
        let key = self.key(relay, Compartment::Mailbox(keys.id()));
        let created = self.request(&key, &req).await;
        self.release(&key);
        created?;
        Ok(keys)
    }

    /// Deletes a mailbox at its relay; false if the relay could not be asked (try again later).
    async fn delete_mailbox(&mut self, keys: &MailboxKeys) -> bool {
        let key = self.key(&keys.address.relay, Compartment::Mailbox(keys.id()));
        let deleted = match self
            .open_boxes(&key, std::slice::from_ref(keys))
            .await
            .map(|mut v| v.pop())
        {
            Ok(Some(Ok(()))) => self
                .request(&key, &Request::Delete { mailbox: keys.id() })
                .await
                .is_ok(),
            // Already gone (deleted before, or expired at the relay).
            Ok(Some(Err(e))) if e.is(ErrorCode::NoSuchMailbox) => true,
            _ => false,
        };
        self.release(&key);
        deleted
    }

    /// Deletes the mailboxes of ended channels at their relays; those a relay
    /// could not be asked about stay queued for the next sync.
    async fn delete_doomed(&mut self) {
        let doomed = self.session.take_doomed();
        if doomed.is_empty() {
            return;
        }
        let mut unreachable: Vec<RelayAddress> = Vec::new();
        let mut keep = Vec::new();
        for k in doomed {
            let key = self.session.link_key(&k.address.relay);
            if unreachable.contains(&key) || !self.delete_mailbox(&k).await {
                unreachable.push(key);
                keep.push(k);
            }
        }
        self.session.doomed_kept(keep);
    }

    // ---- outbox ----

    /// Sends what the outbox holds; returns how many items remain queued.
    async fn flush_outbox(&mut self) -> Result<usize, ClientError> {
        if self.session.outbox_is_empty() {
            return Ok(0);
        }
        let deliveries = self.session.outbox_deliveries();
        // Each delivery goes on its compartment's send link: one channel's fan-out shares
        // one, never with another channel's (`Session::send_compartments`). Taken one
        // compartment after the other (each mailbox's items keep their order: a mailbox is
        // in one compartment), each compartment's links closed before the next one's open.
        let compartments = self.session.send_compartments(&deliveries);
        let mut order: Vec<usize> = (0..deliveries.len()).collect();
        let link = |i: usize| {
            (
                deliveries.get(i).map(|d| self.session.link_key(&d.relay)),
                compartments.get(i),
            )
        };
        order.sort_by_key(|i| link(*i));
        let mut outcomes: Vec<Option<Delivered>> = (0..deliveries.len()).map(|_| None).collect();
        let mut unreachable: Vec<RelayAddress> = Vec::new();
        // Mailboxes that refused an envelope in this pass (see `Session::must_wait`).
        let mut refused: Vec<[u8; 32]> = Vec::new();
        let mut current: Option<LinkKey> = None;
        for i in order {
            let (Some(d), Some(compartment)) = (deliveries.get(i), compartments.get(i)) else {
                continue;
            };
            if self.session.must_wait(i, &unreachable, &refused) {
                continue;
            }
            let key = self.key(&d.relay, compartment.clone());
            if current.as_ref() != Some(&key) {
                if let Some(done) = current.replace(key.clone()) {
                    self.release(&done);
                }
            }
            let outcome = match self.pipeline(&key, &d.requests).await {
                Ok(results) => {
                    let results: Vec<Result<(), ConnectError>> = results.into_iter().map(|r| r.map(|_| ())).collect();
                    if results
                        .iter()
                        .any(|r| matches!(r, Err(e) if !e.is(ErrorCode::NoSuchMailbox)))
                    {
                        refused.push(d.send);
                    }
                    Delivered::Answered(results)
                }
                Err(e) => {
                    // Under cover the paced link connects again at its next turn.
                    self.release(&key);
                    unreachable.push(key.relay.clone());
                    Delivered::Unreachable(e)
                }
            };
            if let Some(slot) = outcomes.get_mut(i) {
                *slot = Some(outcome);
            }
        }
        if let Some(done) = current {
            self.release(&done);
        }
        let FlushReport {
            queued,
            undelivered,
            mailbox_full,
        } = self.session.delivered(outcomes);
        if undelivered.is_some() {
            self.undelivered = undelivered;
        }
        self.mailbox_full |= mailbox_full;
        self.perform().await?;
        Ok(queued)
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
    /// pending proposals. Waits up to `wait` for something to arrive. Performs the
    /// session's [`SYNC_STEPS`] in their order, then saves; returns how many messages
    /// and events arrived.
    pub async fn sync(&mut self, wait: Duration) -> Result<usize, ClientError> {
        self.tick();
        let mut before = self.session.history_len();
        for step in SYNC_STEPS {
            match step {
                SyncStep::KeepLinks => {
                    if self.transport.cover.is_some() {
                        let relay = self.session.state().relay.clone();
                        let key = self.key(&relay, Compartment::Shared);
                        self.net.connect_all(&key).await?;
                    }
                }
                SyncStep::Flush => {
                    self.flush_outbox().await?;
                }
                SyncStep::ResumeCommits => self.resume_staged_commits().await?,
                SyncStep::Fetch => {
                    before = self.session.history_len();
                    if self.fetching_beside() {
                        self.take_fetched_within(wait).await?;
                    } else {
                        self.fetch_all(wait).await?;
                    }
                    self.catch_up_behind().await?;
                    self.tick();
                }
                SyncStep::Lifetimes => {
                    self.lapsed |= self.session.apply_lifecycle();
                    self.perform().await?;
                }
                SyncStep::Admit => self.admit().await?,
                SyncStep::CommitProposals => self.commit_proposals().await?,
                SyncStep::SealUnsent => {
                    let sealed = self.session.seal_unsent();
                    self.perform().await?;
                    sealed?;
                    self.flush_outbox().await?;
                }
                SyncStep::ExpireInvites => {
                    self.session.expire_invites();
                    self.perform().await?;
                }
                SyncStep::ExpireRetired => {
                    // Only once a fetch came back empty: nothing is left in them.
                    if std::mem::take(&mut self.drained) {
                        self.session.expire_retired();
                        self.perform().await?;
                    }
                }
                SyncStep::Rotate => self.rotate_old_mailboxes().await,
                SyncStep::DeleteDoomed => self.delete_doomed().await,
            }
        }
        self.save()?;
        let after = self.session.history_len();
        Ok(after.saturating_sub(before))
    }

    /// Fetches every mailbox we read, and processes and acknowledges what arrived; waits up
    /// to `wait` for something to arrive. Each of our mailboxes is fetched on links of its
    /// own (one set per relay under cover), closed after (docs/protocol.md, "Unlinkable
    /// links"), so no connection opens two of them.
    async fn fetch_all(&mut self, wait: Duration) -> Result<(), ClientError> {
        let groups = self.fetch_groups();
        // Links kept open for mailboxes we no longer read are closed.
        let current: Vec<LinkKey> = groups.iter().map(|(k, _)| k.clone()).collect();
        for gone in self
            .kept
            .iter()
            .filter(|k| !current.contains(k))
            .cloned()
            .collect::<Vec<_>>()
        {
            self.release(&gone);
        }
        self.kept.retain(|k| current.contains(k));
        if groups.len() <= 1 || wait.is_zero() || self.transport.cover.is_some() {
            // Paced links (cover: each mailbox in its turn), or one mailbox: a long poll on each.
            self.fetch_pass(&groups, wait).await?;
            return Ok(());
        }
        if self.fetch_pass(&groups, Duration::ZERO).await? > 0 {
            return Ok(());
        }
        // Nothing yet: a long poll on several mailboxes at once, each on its own links, up
        // to the relay's per-address budget (the others are looked at by each pass).
        let start = self.wait_from % groups.len();
        self.wait_from = self.wait_from.wrapping_add(MAX_WAITING);
        let waits: Vec<(LinkKey, Vec<MailboxKeys>)> = groups
            .iter()
            .cycle()
            .skip(start)
            .take(groups.len().min(MAX_WAITING))
            .map(|(key, boxes)| (key.clone(), boxes.iter().map(|(k, _)| k.clone()).collect()))
            .collect();
        if self.net.wait_any(&waits, wait).await? {
            self.fetch_pass(&groups, Duration::ZERO).await?;
        }
        Ok(())
    }

    /// Our mailboxes, by the links they are fetched on (one each).
    fn fetch_groups(&self) -> Vec<(LinkKey, Vec<(MailboxKeys, Role)>)> {
        let mut groups: BTreeMap<LinkKey, Vec<(MailboxKeys, Role)>> = BTreeMap::new();
        for (k, r) in self.session.mailboxes() {
            let key = self.key(&k.address.relay, Compartment::Mailbox(k.id()));
            groups.entry(key).or_default().push((k, r));
        }
        groups.into_iter().collect()
    }

    /// Tells the user that the relay no longer holds a mailbox we read (`role`'s).
    fn missing_mailbox(&mut self, role: &Role) {
        if let Role::Channel(name) = role {
            self.session
                .warn(Some(name), "the relay no longer holds this channel's mailbox (deleted, or expired unused for the relay's idle lifetime, at least 90 days)");
        }
    }

    /// One fetch of each group, in turn, each on its links. With up to [`MAX_KEPT`]
    /// groups their links stay open for the next pass (each only ever serves its own
    /// mailbox); with more, each group's are closed before the next group's open.
    /// Returns how many envelopes arrived.
    async fn fetch_pass(
        &mut self,
        groups: &[(LinkKey, Vec<(MailboxKeys, Role)>)],
        wait: Duration,
    ) -> Result<usize, ClientError> {
        let mut fetched = 0;
        let mut drained = true;
        let mut failure = None;
        let keep = groups.len() <= MAX_KEPT;
        for (key, boxes) in groups {
            let r = match self.fetch_relay(key, boxes.clone(), wait).await {
                // The receive link broke (the relay closed an idle link, or this address
                // died): once more on a fresh link, which opens the mailboxes again and
                // fails over to another address of the relay.
                Err(ClientError::Relay(ConnectError::Broken { .. })) => {
                    self.fetch_relay(key, boxes.clone(), wait).await
                }
                r => r,
            };
            if keep && r.is_ok() {
                if !self.kept.contains(key) {
                    self.kept.push(key.clone());
                }
            } else {
                self.release(key);
                self.kept.retain(|k| k != key);
            }
            // One mailbox that fails (its relay down, say) does not keep the others from
            // being fetched: the first failure is the pass's, once all were tried.
            match r {
                Ok((n, empty)) => {
                    fetched += n;
                    drained &= empty;
                }
                Err(e) => {
                    drained = false;
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if drained {
            self.drained = true;
        }
        Ok(fetched)
    }

    /// Fetches the mailboxes of one group on the links of `key`: how many envelopes
    /// arrived, and whether the last fetch came back empty.
    async fn fetch_relay(
        &mut self,
        key: &LinkKey,
        boxes: Vec<(MailboxKeys, Role)>,
        wait: Duration,
    ) -> Result<(usize, bool), ClientError> {
        let relay = &key.relay;
        let keys: Vec<MailboxKeys> = boxes.iter().map(|(k, _)| k.clone()).collect();
        let results = self.open_boxes(key, &keys).await?;
        let mut routes: HashMap<MailboxId, (MailboxKeys, Role)> = HashMap::new();
        for ((k, role), r) in boxes.into_iter().zip(results) {
            match r {
                Ok(_) => {
                    routes.insert(k.id(), (k, role));
                }
                Err(e) if e.is(ErrorCode::NoSuchMailbox) => self.missing_mailbox(&role),
                Err(e) => return Err(e.into()),
            }
        }
        self.perform_local()?;
        if routes.is_empty() {
            return Ok((0, true));
        }
        // What fetches beside the commands took in and still owe (cover turned off since).
        if let Some(acks) = self.beside.as_mut().and_then(|b| b.unacked.remove(key)) {
            self.pipeline(key, &acks).await?;
        }
        let mut fetched = 0;
        let mut drained = false;
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
            let resp = self
                .request(
                    key,
                    &Request::Fetch {
                        max: MAX_FETCH,
                        wait_ms,
                    },
                )
                .await?;
            let Response::Envelopes(list) = resp else {
                return Err(ConnectError::broken(relay.authority(), Breakage::Unexpected).into());
            };
            if list.is_empty() {
                drained = true;
                break;
            }
            fetched += list.len();
            self.tick();
            let acks = self.take_in_envelopes(list, &routes)?;
            self.perform().await?;
            self.pipeline(key, &acks).await?;
            // Stop fetching from mailboxes that closed during processing.
            let active: Vec<MailboxId> = self.session.mailboxes().iter().map(|(k, _)| k.id()).collect();
            routes.retain(|id, _| active.contains(id));
            if routes.is_empty() {
                break;
            }
        }
        // Processed envelopes were saved above; save again only if a kept message moved.
        if self.session.retry_deferred() {
            self.save()?;
        }
        self.perform().await?;
        Ok((fetched, drained))
    }

    /// Reads fetched envelopes (those of a mailbox not in `routes` are dropped) and saves
    /// what they changed; returns their acknowledgements, to send only now that it is
    /// durable (a crash before re-delivers, never loses).
    fn take_in_envelopes(
        &mut self,
        list: Vec<backchannel_core::frame::Delivery>,
        routes: &HashMap<MailboxId, (MailboxKeys, Role)>,
    ) -> Result<Vec<Request>, ClientError> {
        let mut acks = Vec::with_capacity(list.len());
        for d in list {
            acks.push(Request::Ack {
                mailbox: d.mailbox,
                seq: d.seq,
            });
            if let Some((keys, role)) = routes.get(&d.mailbox) {
                self.session.receive(keys, role, &d.envelope, Via::Relay);
            }
        }
        self.save()?;
        Ok(acks)
    }

    // ---- commits ----

    /// Stages, claims and sends one commit; retries when another member won the epoch.
    ///
    /// When the epoch was won by a commit this device refuses, the channel's recoverer
    /// ([`Session::recoverer`]) moves the sequencer to a fresh one with its next commit,
    /// claimed there only, and carries on; anyone else is told who will.
    async fn commit(&mut self, name: &str, op: CommitOp) -> Result<(), ClientError> {
        let mut recovering = false;
        for _ in 0..COMMIT_ATTEMPTS {
            self.session.active(name)?;
            let step = if recovering {
                self.session.recovery_step(name, &op)?
            } else {
                op.clone()
            };
            let fresh_at = if recovering {
                self.session.sequencer_relay(name)
            } else {
                self.session.fresh_mailbox_for(name, &step)?
            };
            let fresh = match fresh_at {
                Some(relay) => Some(self.create_mailbox(&relay).await?),
                None => None,
            };
            let staged = self.session.stage_commit(name, &step, fresh.clone(), recovering);
            // Durable before the claim goes out.
            self.perform_local()?;
            let Some(staged) = staged? else {
                // Nothing to commit after all (the member is gone, no proposal waits): the
                // mailbox made for it goes with the doomed ones at the next sync.
                if let Some(unused) = fresh {
                    self.session.doom(unused);
                    self.perform_local()?;
                }
                return Ok(());
            };
            if self.claim_and_finish(staged).await? {
                if recovering {
                    self.session.recovered(name);
                    self.perform_local()?;
                    recovering = false;
                    // A move alone was made on the way to `op`: now `op` itself.
                    if matches!(step, CommitOp::MoveSequencer) && !matches!(op, CommitOp::MoveSequencer) {
                        continue;
                    }
                }
                return Ok(());
            }
            // Lost the epoch: the winner's commit (and any proposal it carries) may be in
            // the mailbox already; if not, read it at the sequencer (or, from a sequencer
            // that holds none, wait for it in the mailbox), and try again.
            let before = self.session.epoch(name);
            self.fetch_all(Duration::ZERO).await?;
            if self.session.epoch(name) == before {
                match self.catch_up(name).await? {
                    CatchUp::Moved => {}
                    CatchUp::NotHeld => self.fetch_all(Duration::from_millis(500)).await?,
                    CatchUp::Refused => {
                        let me = self.session.identity().public_key();
                        match self.session.recoverer(name) {
                            Some(r) if r.identity_key == me => recovering = true,
                            r => {
                                return Err(ClientError::RefusedWinner(
                                    name.to_string(),
                                    r.map(|m| m.name).unwrap_or_default(),
                                ))
                            }
                        }
                    }
                }
            }
        }
        Err(ClientError::Contended(name.to_string()))
    }

    /// Reads the commit that won channel `name`'s current epoch from its sequencer, in
    /// parts, and merges it (through every check a commit from the mailbox passes).
    async fn catch_up(&mut self, name: &str) -> Result<CatchUp, ClientError> {
        // Returns whether the channel moved on, the sequencer held nothing to read, or this
        // device refused what it held.
        let Some(source) = self.session.held_commit_source(name) else {
            return Ok(CatchUp::NotHeld);
        };
        let key = self.key(&source.relay, Compartment::Channel(name.to_string()));
        let read = self.read_held(&key, &source).await;
        self.release(&key);
        let Some(commit) = read? else {
            return Ok(CatchUp::NotHeld);
        };
        self.tick();
        let refused = self.session.read_held_commit(name, &commit);
        self.perform().await?;
        Ok(if refused {
            CatchUp::Refused
        } else if self.session.epoch(name) != Some(source.epoch) {
            CatchUp::Moved
        } else {
            CatchUp::NotHeld
        })
    }

    /// Reads the commit `source` names, in parts, on the links of `key`; `None` when the
    /// sequencer holds none for that epoch (or the key does not open it).
    async fn read_held(
        &mut self,
        key: &LinkKey,
        source: &crate::session::commit::HeldCommitSource,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let mut commit = Vec::new();
        let mut total = 1u16;
        let mut part = 0u16;
        while part < total {
            match self.request(key, &source.fetch(part)).await {
                Ok(Response::Commit { total: t, bytes }) if part == 0 || t == total => {
                    total = t;
                    commit.extend_from_slice(&bytes);
                }
                Ok(_) => return Err(ConnectError::broken(key.relay.authority(), Breakage::Unexpected).into()),
                Err(e) if e.is(ErrorCode::EpochConflict) || e.is(ErrorCode::NoSuchMailbox) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            part += 1;
        }
        Ok(Some(commit))
    }

    /// For each channel a later message showed to be behind: reads the commit it missed
    /// at the sequencer (a relay that withheld it from the mailbox, or a committer whose
    /// device died before sending it), then the messages that waited for it.
    async fn catch_up_behind(&mut self) -> Result<(), ClientError> {
        // One epoch at a time, as far back as the sequencer keeps commits.
        for _ in 0..KEPT_COMMITS {
            let behind = self.session.behind_channels();
            if behind.is_empty() {
                break;
            }
            let mut moved = false;
            for name in behind {
                let r = self.catch_up(&name).await;
                moved |= matches!(r, Ok(CatchUp::Moved));
                self.isolate(&name, r.map(|_| ()))?;
            }
            if self.session.retry_deferred() {
                self.save()?;
            }
            if !moved {
                break;
            }
        }
        self.perform().await
    }

    /// Claims the staged commit's epoch; on success merges and sends it.
    /// Returns false if another member won the epoch (the staged commit is dropped).
    async fn claim_and_finish(&mut self, staged: Staged) -> Result<bool, ClientError> {
        let claim = staged.claim().clone();
        let key = self.key(&claim.relay, Compartment::Channel(staged.channel().to_string()));
        let answers = self.pipeline(&key, &claim.requests).await;
        self.release(&key);
        let mut answers = answers?;
        let last = answers
            .pop()
            .unwrap_or_else(|| Err(ConnectError::broken(claim.relay.authority(), Breakage::Unexpected)));
        // The parts, and the lock of a new sequencer: any refusal there fails the claim.
        if let Some(Err(e)) = answers.into_iter().find(Result::is_err) {
            return Err(e.into());
        }
        let answer = match last {
            Ok(_) => ClaimAnswer::Granted,
            Err(e) if e.is(ErrorCode::EpochConflict) => ClaimAnswer::Conflict,
            // The claim key did not open the sequencer's lock.
            Err(e) if e.is(ErrorCode::NoSuchMailbox) => return Err(ClientError::Split(staged.channel().to_string())),
            Err(e) => return Err(e.into()),
        };
        self.tick();
        let outcome = self.session.claim_answered(staged, answer);
        self.perform_local()?;
        match outcome? {
            CommitOutcome::Done => {
                self.flush_outbox().await?;
                self.perform().await?;
                Ok(true)
            }
            CommitOutcome::Lost(unused) => {
                if let Some(fresh) = unused {
                    // Unused now; if the relay cannot be asked, a later sync deletes it.
                    if !self.delete_mailbox(&fresh).await {
                        self.session.doom(fresh);
                        self.perform_local()?;
                    }
                }
                Ok(false)
            }
        }
    }

    async fn resume_staged_commits(&mut self) -> Result<(), ClientError> {
        for staged in self.session.staged_commits() {
            let name = staged.channel().to_string();
            let r = self.claim_and_finish(staged).await.map(|_| ());
            self.isolate(&name, r)?;
        }
        Ok(())
    }

    async fn admit(&mut self) -> Result<(), ClientError> {
        self.tick();
        let per_channel = self.session.take_admissions();
        self.perform_local()?;
        for (name, kps) in per_channel {
            let r = self.commit(&name, CommitOp::Add(kps)).await;
            self.isolate(&name, r)?;
        }
        Ok(())
    }

    async fn commit_proposals(&mut self) -> Result<(), ClientError> {
        for name in self.session.proposals_waiting() {
            let r = self.commit(&name, CommitOp::Proposals).await;
            self.isolate(&name, r)?;
        }
        Ok(())
    }

    /// Keeps one channel's failed commit from stopping the sync of the others: a relay
    /// that cannot be reached or a store that cannot be written stops the sync, anything
    /// else (the channel's sequencer refused, other members kept winning) becomes a
    /// warning for that channel, and the sync goes on. A command on that channel reports
    /// its own error.
    fn isolate(&mut self, name: &str, r: Result<(), ClientError>) -> Result<(), ClientError> {
        match r {
            Ok(()) => Ok(()),
            Err(e @ (ClientError::Io { .. } | ClientError::Corrupt(_))) => Err(e),
            Err(ClientError::Relay(e)) if !matches!(e, ConnectError::Refused(..)) => Err(ClientError::Relay(e)),
            Err(e) => {
                self.session
                    .warn(Some(name), format!("a change to the channel is waiting: {e}"));
                self.perform_local().map(|_| ())
            }
        }
    }

    /// Rotates every channel mailbox that is due; an admin (anyone, in a channel made
    /// before roles) also moves the channel's sequencer, so that who claims where changes
    /// weekly too. A failure is retried at the next sync.
    async fn rotate_old_mailboxes(&mut self) {
        for name in self.session.rotations_due() {
            // A rotation a removal made due follows a commit that moved the sequencer already.
            let weekly = !self.session.rotation_follows_removal(&name);
            if self.commit(&name, CommitOp::SelfUpdate).await.is_err() {
                continue;
            }
            if weekly
                && self
                    .session
                    .may(&name, Act::ChangeChannel, "move the sequencer")
                    .is_ok()
            {
                let _ = self.commit(&name, CommitOp::MoveSequencer).await;
            }
        }
    }
}

impl Engine {
    // ---- user operations ----

    /// Creates a channel on our relay.
    /// With `members_invite`, members who are not admins may invite too; with `approve`,
    /// every joiner waits for approval (`session::approval`).
    pub async fn channel_new(
        &mut self,
        name: &str,
        suite: Suite,
        lifetime: Lifetime,
        members_invite: bool,
        approve: bool,
    ) -> Result<(), ClientError> {
        self.tick();
        validate_name(name).map_err(|e| ClientError::Usage(format!("channel {e}")))?;
        if self.session.state.channels.contains_key(name) {
            return Err(ClientError::ChannelExists(name.to_string()));
        }
        for (flag, d) in [("--disappear", lifetime.disappear), ("--expires", lifetime.expires)] {
            if d.is_some_and(|d| d.as_secs() == 0) {
                return Err(ClientError::Usage(format!(
                    "{flag} needs a duration of at least one second, like 30s or 7d"
                )));
            }
        }
        let relay = self.session.state.relay.clone();
        let mailbox = self.create_mailbox(&relay).await?;
        let sequencer = self.create_mailbox(&relay).await?;
        let disappear_after = lifetime.disappear.map_or(0, |d| d.as_secs());
        let expires_at = lifetime
            .expires
            .map_or(0, |d| self.session.now_s().saturating_add(d.as_secs()));
        let info = ChannelInfo {
            name: name.to_string(),
            sequencer: sequencer.address.clone(),
            created_at: self.session.now_s(),
            disappear_after,
            expires_at,
        };
        let roles = Roles::new(self.session.identity.public_key(), members_invite).with_approval(approve);
        let group = Channel::create_with(
            &self.session.provider,
            &self.session.identity,
            &info,
            &mailbox.address,
            suite,
            &roles,
        )
        .map_err(ClientError::protocol)?;
        let now_s = self.session.now_s();
        self.session.state.channels.insert(
            name.to_string(),
            ChannelState::new(
                group.group_id(),
                mailbox,
                Some(sequencer),
                disappear_after,
                expires_at,
                now_s,
            ),
        );
        self.save()
    }

    /// Issues an invite; with `approve`, its joiners wait for approval.
    pub async fn invite(&mut self, name: &str, uses: u32, ttl: Duration, approve: bool) -> Result<String, ClientError> {
        self.sync(Duration::ZERO).await?;
        self.session.active(name)?;
        if uses == 0 {
            return Err(ClientError::Usage("--uses must be at least 1".into()));
        }
        let relay = self.session.invite_relay(name)?;
        let mailbox = self.create_mailbox(&relay).await?;
        let id = mailbox.id();
        self.tick();
        if approve {
            self.session.require_approval(id);
        }
        let text = self.session.add_invite(name, mailbox, uses, ttl.as_secs())?;
        self.perform_local()?;
        Ok(self.shorten_invite(text, id).await)
    }

    /// A short line for the invite `text` (at most 160 characters for a host of up to 30):
    /// its body sealed and published at its relay, on the links of its mailbox `id`, until
    /// it expires. The long line when the relay is older than short addresses, or does not
    /// answer (the invite works either way).
    async fn shorten_invite(&mut self, text: String, id: MailboxId) -> String {
        let Ok(invite) = Invite::from_text(&text) else {
            return text;
        };
        let Ok((short, bundle)) = ShortInvite::seal(&invite, &mut OsRng) else {
            return text;
        };
        let key = self.key(&invite.mailbox.relay, Compartment::Mailbox(id));
        let published = self
            .request(
                &key,
                &Request::Publish {
                    name: short.name(),
                    expires_at: invite.expires_at,
                    bundle,
                },
            )
            .await;
        self.release(&key);
        match published {
            Ok(_) => short.to_text(),
            Err(_) => text,
        }
    }

    /// The whole invite line that `text` is: itself, or for a short line the invite fetched
    /// from its relay (through ours when it is another) and opened with the line.
    pub async fn resolve_invite(&mut self, text: &str) -> Result<String, ClientError> {
        let short = match InviteLine::from_text(text) {
            Ok(InviteLine::Short(short)) => short,
            _ => return Ok(text.to_string()),
        };
        let key = self.key(&short.relay, Compartment::Shared);
        let got = self.request(&key, &Request::Bundle { name: short.name() }).await;
        self.release(&key);
        match got {
            Ok(Response::Record(bundle)) => Ok(short.open(&bundle).map_err(InviteProblem::from)?.to_text()),
            Ok(_) => Err(ConnectError::broken(short.relay.authority(), Breakage::Unexpected).into()),
            Err(e) if e.is(ErrorCode::NoSuchBundle) || e.is(ErrorCode::Malformed) => {
                Err(InviteProblem::NotAtRelay.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The entries of channel `name` from history position `from` on, and the positions
    /// the history spans ([`Session::history_from`]); nothing is marked read.
    pub fn history_from(&self, name: &str, from: u64) -> Result<(Vec<MessageView>, std::ops::Range<u64>), ClientError> {
        self.session.history_from(name, from)
    }

    /// Whether messages disappeared or a channel ended in a sync since the last call.
    pub fn take_lapsed(&mut self) -> bool {
        std::mem::take(&mut self.lapsed)
    }

    /// How many things wait to go out: messages not yet sealed, and mailboxes whose sealed
    /// envelopes no relay has accepted yet (what `ui` shows as queued).
    pub fn queued(&self) -> usize {
        let out = &self.session.state().outbox;
        out.unsent.len() + out.sealed.len()
    }

    /// The joiners waiting to join `name` for approval.
    pub async fn pending(&mut self, name: &str) -> Result<Vec<WaitingView>, ClientError> {
        self.refresh().await?;
        self.session.waiting(name)
    }

    /// Admits the joiner `who` waiting to join `name` (a name, or the start of its
    /// fingerprint); returns its name once it is a member.
    pub async fn admit_waiting(&mut self, name: &str, who: &str) -> Result<String, ClientError> {
        self.refresh().await?;
        self.tick();
        let (joiner, key) = self.session.approve(name, who)?;
        self.admit().await?;
        self.perform().await?;
        // The admission checks the invite again: one that expired or is used up admits
        // nobody (the warning says which).
        if !self
            .members(name)?
            .iter()
            .any(|m| m.fingerprint == Fingerprint::of(&key))
        {
            return Err(ClientError::Usage(format!(
                "{joiner} was not admitted: the invite they came by has expired or is used up; send them a new one"
            )));
        }
        Ok(joiner)
    }

    /// Refuses the joiner `who` waiting to join `name`; returns its name.
    pub async fn refuse_waiting(&mut self, name: &str, who: &str) -> Result<String, ClientError> {
        self.refresh().await?;
        self.tick();
        let joiner = self.session.refuse(name, who)?;
        self.perform_local()?;
        Ok(joiner)
    }

    /// Redeems an invite: sends a join request. Waits up to `wait` for the welcome.
    pub async fn join(
        &mut self,
        invite: &str,
        local_name: Option<String>,
        wait: Duration,
    ) -> Result<Option<String>, ClientError> {
        let invite = &self.resolve_invite(invite).await?;
        self.tick();
        let redeeming = self.session.redeem(invite, local_name)?;
        let relay = redeeming.relay().clone();
        // Our mailbox in the channel lives on our own relay (forwarding), or on the
        // inviter's without it.
        let mailbox = self.create_mailbox(&self.session.place_for_ours(relay.clone())).await?;
        let reqs = self.session.join_request(&redeeming, &mailbox)?;
        let key = self.key(&relay, sends_to(&reqs));
        let results = self.pipeline(&key, &reqs).await;
        self.release(&key);
        let results = results?;
        for r in results {
            match r {
                Ok(_) => {}
                Err(e) if e.is(ErrorCode::NoSuchMailbox) => {
                    self.delete_mailbox(&mailbox).await;
                    return Err(InviteProblem::UsedUp.into());
                }
                Err(e) if e.is(ErrorCode::MailboxFull) => {
                    return Err(InviteProblem::MailboxFull.into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.session.join_sent(redeeming, mailbox);
        self.perform_local()?;
        let deadline = tokio::time::Instant::now() + wait;
        let known = self.session.channel_names();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.sync(left.min(Duration::from_secs(5))).await?;
            if let Some(new) = self.session.channel_names().into_iter().find(|k| !known.contains(k)) {
                return Ok(Some(new));
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
        self.tick();
        let unsent = self.session.write_message(name, text)?;
        self.perform_local()?;
        let synced = self.refresh().await;
        // In the history after what the sync brought in, even if it failed.
        self.session.record_own(&unsent);
        self.save()?;
        if let Err(e) = &synced {
            if !matches!(e, ClientError::Relay(_)) {
                return synced.map(|_| ());
            }
        }
        if synced.is_ok() {
            // Without a sync the epoch we know may be stale: the message waits, sealed later.
            let sealed = self.session.seal_unsent();
            self.perform().await?;
            sealed?;
        }
        if synced.is_ok()
            && self.session.has_unsent(Some(name))
            && self.session.load_group(name)?.has_pending_proposals()
        {
            // MLS allows no application message while proposals are pending; sync tried
            // to commit them and failed (its warning said why). The message waits, saved,
            // and goes once a commit carries them.
            return Err(ClientError::Queued(Holdup::ProposalsWaiting));
        }
        self.undelivered = None;
        let queued = self.flush_outbox().await?;
        if queued > 0 || synced.is_err() || self.session.has_unsent(None) {
            let why = match (synced, self.undelivered.take()) {
                (Ok(_), _) if self.session.is_behind(name) => Holdup::Behind,
                (Err(e), _) => Holdup::Sync(Box::new(e)),
                (Ok(_), Some(why)) => Holdup::Relay(why),
                (Ok(_), None) => Holdup::Unreachable,
            };
            return Err(ClientError::Queued(why));
        }
        Ok(())
    }

    /// Messages of a channel: unread ones, or all.
    pub fn read(&mut self, name: &str, all: bool) -> Result<Vec<MessageView>, ClientError> {
        self.tick();
        self.session.apply_lifecycle();
        let r = self.session.read(name, all);
        self.perform_local()?;
        r
    }

    /// Our channels.
    pub fn channels(&self) -> Vec<ChannelSummary> {
        self.session.channels()
    }

    /// Members of a channel.
    pub fn members(&self, name: &str) -> Result<Vec<MemberView>, ClientError> {
        self.session.members(name)
    }

    /// The channel's epoch and channel code (compare it with the other members after a
    /// sync: a different code in the same epoch means the channel was split).
    pub fn channel_code(&self, name: &str) -> Result<(u64, String), ClientError> {
        self.session.channel_code(name)
    }

    /// The safety number with a member; with `confirm`, marks them verified.
    pub fn verify(&mut self, name: &str, who: &str, confirm: bool) -> Result<(String, MemberView), ClientError> {
        let r = self.session.verify(name, who, confirm);
        self.perform_local()?;
        r
    }

    /// Removes a member.
    pub async fn remove(&mut self, name: &str, who: &str) -> Result<String, ClientError> {
        self.sync(Duration::ZERO).await?;
        self.session.active(name)?;
        let m = self.session.find_member(name, who)?;
        if m.identity_key == self.session.identity.public_key() {
            return Err(ClientError::Usage("to remove yourself, use `backchannel leave`".into()));
        }
        self.session.may(name, Act::RemoveOther, "remove members")?;
        match self.commit(name, CommitOp::Remove(vec![m.fingerprint])).await {
            Ok(()) => {}
            // Others kept winning (a member committing first, again and again, so as not to
            // be removed): the removal goes out as a proposal, which every commit must carry.
            Err(ClientError::Contended(_)) => {
                self.session.propose_removal(name, &m.fingerprint)?;
                self.perform_local()?;
                self.flush_outbox().await?;
                self.perform().await?;
                return Err(ClientError::RemovalWaiting(name.to_string(), m.name));
            }
            Err(e) => return Err(e),
        }
        self.session
            .event(name, EventKind::Removed, format!("you removed {}", m.name));
        self.save()?;
        Ok(m.name)
    }

    /// Makes a member an admin of a channel (or, with `revoke`, no longer one). Returns
    /// the member's name, and whether anything changed.
    pub async fn admin(&mut self, name: &str, who: &str, revoke: bool) -> Result<(String, bool), ClientError> {
        self.sync(Duration::ZERO).await?;
        self.session.active(name)?;
        let m = self.session.find_member(name, who)?;
        let Some(roles) = self.session.roles_with(name, &m, revoke)? else {
            return Ok((m.name, false));
        };
        self.commit(name, CommitOp::Roles(roles)).await?;
        self.save()?;
        Ok((m.name, true))
    }

    /// Leaves a channel: asks the others to remove us, then wipes it here.
    pub async fn leave(&mut self, name: &str) -> Result<(), ClientError> {
        self.sync(Duration::ZERO).await?;
        self.session.queue_leave(name)?;
        self.perform_local()?;
        self.flush_outbox().await?;
        self.session.wipe(name, ChannelStatus::Left);
        self.perform().await?;
        self.save()
    }

    /// Closes a channel for everyone.
    pub async fn close(&mut self, name: &str) -> Result<(), ClientError> {
        self.sync(Duration::ZERO).await?;
        self.session.queue_close(name)?;
        self.perform_local()?;
        self.flush_outbox().await?;
        self.session.wipe(name, ChannelStatus::Closed);
        self.perform().await?;
        self.session
            .event(name, EventKind::Closed, "you closed the channel".into());
        self.save()
    }

    /// Our own receiving mailbox for a channel (for tests that play a hostile sender).
    pub fn debug_mailbox(&self, name: &str) -> Result<MailboxKeys, ClientError> {
        Ok(self.session.channel(name)?.mailbox.clone())
    }

    /// A channel's sequencer, its current epoch and that epoch's claim key (for tests that
    /// play a removed member's old device).
    pub fn debug_sequencer(
        &self,
        name: &str,
    ) -> Result<(backchannel_core::mailbox::MailboxAddress, u64, [u8; 32]), ClientError> {
        let group = self.session.load_group(name)?;
        let info = group.info().map_err(ClientError::protocol)?;
        let key = group.claim_key(&self.session.provider).map_err(ClientError::protocol)?;
        Ok((info.sequencer, group.epoch(), key))
    }

    /// Rotates our keys in a channel (post-compromise security) with a self-update commit.
    pub async fn update_keys(&mut self, name: &str) -> Result<(), ClientError> {
        self.sync(Duration::ZERO).await?;
        self.commit(name, CommitOp::SelfUpdate).await
    }

    /// Seals everything waiting to go to `name`'s other members into one bundle. The
    /// messages stay queued for the relay too: each member is shown each message once,
    /// however many ways it arrives. Returns the bundle and how many envelopes it holds.
    pub fn courier_export(&mut self, name: &str) -> Result<(Vec<u8>, usize), ClientError> {
        self.tick();
        let r = self.session.courier_export(name);
        self.perform_local()?;
        r
    }

    /// Delivers the envelopes of a bundle that are addressed to this member's channels.
    /// A bundle that was modified is refused as a whole, before anything is delivered.
    pub async fn courier_import(&mut self, file: &[u8]) -> Result<ImportReport, ClientError> {
        self.tick();
        let r = self.session.courier_import(file);
        self.perform().await?;
        r
    }
}

/// What reading a channel's held commit came to ([`Engine::catch_up`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CatchUp {
    /// The channel moved on to the next epoch.
    Moved,
    /// The sequencer holds no commit of this epoch (none won it yet, or a client of an
    /// earlier release won it without one): the mailbox brings it, if anything does.
    NotHeld,
    /// This device refused the commit that won the epoch.
    Refused,
}

/// Our own relay's addresses, in the order they are tried.
fn addrs_of(state: &State) -> Vec<RelayAddress> {
    std::iter::once(&state.relay)
        .chain(&state.relay_alternates)
        .cloned()
        .collect()
}
