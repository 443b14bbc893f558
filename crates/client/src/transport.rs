//! How the engine reaches a relay.
//!
//! Requests are sent in *compartments* ([`Compartment`]): each of our mailboxes is one,
//! and so is our sending in each channel; no connection serves two (docs/protocol.md,
//! "Unlinkable links"). A compartment gets two links (three with cover traffic, below):
//! a *send link* for the requests that deliver into other people's mailboxes (`Send`,
//! `Claim`) and a *receive link* for the requests that concern our own (`Create`, `Open`,
//! `Fetch`, `Ack`, `Delete`). The relay sees a send and a receive on different connections
//! with different ids; through a proxy each connection has its own Tor circuit.
//!
//! A link is either *direct* (requests go out at once, pipelined) or *paced*
//! (cover traffic, for the daemon): the link sends exactly one frame per
//! tick, and under cover a relay has one paced send link and one paced receive link,
//! each serving one compartment per turn of [`TURN_TICKS`] ticks on a fresh connection.
//! A turn that began with nothing waiting is taken over by the first compartment whose
//! requests arrive during it (its connection had shown only fillers), so a request waits
//! about a tick rather than the rest of an idle turn; turn lengths stay as drawn. A turn's
//! compartment runs its first waiting job even when other compartments' jobs wait ahead of
//! it (they wait for their own turns, the oldest first): a daemon's fetches keep one job of
//! each mailbox waiting (`engine/beside.rs`).
//! A paced send link sends a queued request if there is one and otherwise a `Ping`; a
//! paced receive link ticks twice as often (a fetch and an acknowledgement per envelope)
//! and with nothing queued fetches. Every paced connection first declares itself paced
//! ([`Request::Paced`]), so that the relay answers each request at the same delay
//! whether it waited for the store's fsync (a `Send`, `Ack` or `Create`) or not (a
//! `Ping` or `Fetch`). Every frame is the same size (see `backchannel_core::frame`), so a
//! network observer sees one steady stream whatever the user does. The relay tells the
//! filler from real requests, as it always could; no dummy goes into a mailbox, so
//! nothing at the relay ties a member's send turns together (docs/protocol.md, "The
//! cover mailbox").

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use backchannel_core::frame::{ErrorCode, Request, Response};
use backchannel_core::mailbox::{MailboxId, MailboxKeys};
use backchannel_core::relay_address::RelayAddress;
use rand_core::{OsRng, RngCore};
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;

use crate::connection::{Breakage, ConnectError, RelayConnection};
use crate::socks::ProxyAddr;

/// How the client reaches relays.
#[derive(Clone, Debug, Default)]
pub struct TransportConfig {
    /// Connect through this SOCKS5 proxy.
    pub proxy: Option<ProxyAddr>,
    /// Pace every link (cover traffic) with this period between send ticks.
    pub cover: Option<Duration>,
    /// Send to mailboxes on other relays directly rather than through our own relay
    /// (`init --no-forward`; docs/protocol.md, "Forwarding").
    pub no_forward: bool,
}

/// Which requests may share a connection (docs/protocol.md, "Unlinkable links"). Without
/// cover traffic each compartment has links of its own, so that no connection shows the
/// relay two of a member's mailboxes, or its sends in two channels; under cover every
/// request of a relay goes on that relay's one paced stream (`Shared`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Compartment {
    /// All of a relay's requests (cover traffic paces one stream per relay).
    Shared,
    /// One of our own mailboxes: its creation, opening, fetches, acknowledgements and
    /// deletion, and nothing else.
    Mailbox(MailboxId),
    /// What we send in one channel: its fan-out, its claims, the commits read at its
    /// sequencer.
    Channel(String),
    /// What we send to one mailbox that is in none of our channels (a join request, a
    /// welcome, a letter, a reply), by its send capability.
    To([u8; 32]),
}

/// The links a request goes on: a relay (the engine's key for it, `Session::link_key`)
/// and a compartment.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkKey {
    /// The relay.
    pub relay: RelayAddress,
    /// What may share these links.
    pub compartment: Compartment,
}

/// Which link a request travels on.
fn on_send_link(req: &Request) -> bool {
    matches!(
        req,
        Request::Send { .. }
            | Request::Claim { .. }
            | Request::ClaimKeyed { .. }
            | Request::Deposit { .. }
            | Request::ClaimCommit { .. }
            | Request::FetchCommit { .. }
    )
}

/// The answers to pipelined requests, in order.
pub type Results = Vec<Result<Response, ConnectError>>;

/// `reqs` in two groups, those for which `first` holds and the others, each with the
/// requests' places in `reqs` (an empty group is left out): requests that go two ways, put
/// back in order by [`InOrder`].
fn split(reqs: &[Request], first: impl Fn(&Request) -> bool) -> Vec<(bool, Vec<usize>, Vec<Request>)> {
    let (a, b): (Vec<_>, Vec<_>) = reqs.iter().cloned().enumerate().partition(|(_, r)| first(r));
    [(true, a), (false, b)]
        .into_iter()
        .filter(|(_, g)| !g.is_empty())
        .map(|(which, g)| {
            let (idx, batch) = g.into_iter().unzip();
            (which, idx, batch)
        })
        .collect()
}

/// The answers of requests sent in groups ([`split`]), put back in the requests' order.
struct InOrder(Vec<Option<Result<Response, ConnectError>>>);

impl InOrder {
    fn new(n: usize) -> Self {
        Self((0..n).map(|_| None).collect())
    }

    /// The answers of the requests at `places`.
    fn put(&mut self, places: Vec<usize>, answers: Results) {
        for (i, a) in places.into_iter().zip(answers) {
            if let Some(slot) = self.0.get_mut(i) {
                *slot = Some(a);
            }
        }
    }

    /// Every answer, in order; a request left unanswered is a broken connection to `authority`.
    fn finish(self, authority: &str) -> Result<Results, ConnectError> {
        self.0
            .into_iter()
            .map(|r| r.ok_or_else(|| ConnectError::broken(authority, Breakage::Unexpected)))
            .collect()
    }
}

/// Requests queued on a paced link ([`Network::detach`]): their answers, in order, coming
/// without anything of the network borrowed.
pub type Detached = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Results, ConnectError>> + Send>>;

/// A relay operation under way.
pub type NetFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, ConnectError>> + Send + 'a>>;

/// How the engine reaches relays: the real [`Links`], or a model of a relay in tests.
/// A [`LinkKey`]'s relay is always the engine's key for the relay (`Session::link_key`).
pub trait Network: Send {
    /// Sends requests, each on its link, and returns their answers in order.
    fn pipeline<'a>(&'a mut self, key: &'a LinkKey, reqs: &'a [Request]) -> NetFuture<'a, Results>;
    /// Opens mailboxes on the receive link (each once per connection) so that fetches
    /// return their envelopes. One answer per mailbox.
    fn open<'a>(
        &'a mut self,
        key: &'a LinkKey,
        boxes: &'a [MailboxKeys],
    ) -> NetFuture<'a, Vec<Result<(), ConnectError>>>;
    /// Closes the links of `key` (they broke, or their work is done): the next request
    /// connects again.
    fn forget(&mut self, key: &LinkKey);
    /// Connects every link of `key` now (paced streams must not pause).
    fn connect_all<'a>(&'a mut self, _key: &'a LinkKey) -> NetFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
    /// Waits, up to `wait`, until a fetch on one of the given receive links would bring
    /// something: a long poll on each at once (its mailboxes opened first). Returns whether
    /// one did. The links that waited are closed after (what a poll fetched and nobody
    /// acknowledged is fetched again).
    fn wait_any<'a>(&'a mut self, _waits: &'a [(LinkKey, Vec<MailboxKeys>)], _wait: Duration) -> NetFuture<'a, bool> {
        Box::pin(async { Ok(true) })
    }
    /// Under cover: queues `opens` (each mailbox opened) and then `reqs` as one job of
    /// `key`'s compartment on its relay's paced receive link, and returns the future of
    /// their answers (one per mailbox, then one per request), which borrows nothing: the
    /// daemon serves its commands while a fetch waits for its tick. `None` when the link
    /// is not paced and connected, or a request does not go on it.
    fn detach(&mut self, _key: &LinkKey, _opens: &[MailboxKeys], _reqs: Vec<Request>) -> Option<Detached> {
        None
    }
    /// From now on, connect with `config` (links open before are dropped).
    fn configure(&mut self, _config: TransportConfig) {}
    /// From now on, our own relay is reached at `ours`, in order (links open before are
    /// dropped).
    fn set_ours(&mut self, _ours: Vec<RelayAddress>) {}
}

/// The real network: per relay, its [`RelayLinks`], connected lazily. Our own relay
/// (its pin) is reached through every address given at `init`, in order.
pub struct Links {
    ours: Vec<RelayAddress>,
    config: TransportConfig,
    conns: HashMap<LinkKey, RelayLinks>,
    /// Per link key of another relay, the links through our own relay that forward to it.
    forwarded: HashMap<LinkKey, RelayLinks>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Links(..)")
    }
}

impl Links {
    /// Links to relays; `ours` are the addresses of our own relay, tried in order.
    pub fn new(ours: Vec<RelayAddress>, config: TransportConfig) -> Self {
        Self {
            ours,
            config,
            conns: HashMap::new(),
            forwarded: HashMap::new(),
        }
    }

    /// Whether what goes to `relay`'s mailboxes goes through our own relay: it is another
    /// relay, and forwarding is on.
    fn forwards(&self, relay: &RelayAddress) -> bool {
        !self.config.no_forward && self.ours.first().is_some_and(|home| home.pin != relay.pin)
    }

    /// The links through our own relay that forward to `key`'s relay.
    fn forwarding(&mut self, key: &LinkKey) -> &mut RelayLinks {
        let key = self.slot(key);
        let Self {
            ours,
            config,
            forwarded,
            ..
        } = self;
        forwarded
            .entry(key.clone())
            .or_insert_with(|| RelayLinks::forwarding(ours.clone(), key.relay.clone(), config.clone()))
    }

    /// Sends `reqs` for `key`: those that are forwarded through our own relay's links, the
    /// rest on `key`'s own; the answers in order.
    async fn pipeline_split(&mut self, key: &LinkKey, reqs: &[Request]) -> Result<Results, ConnectError> {
        if !self.forwards(&key.relay) {
            return self.links(key).pipeline(reqs, &key.compartment).await;
        }
        let mut out = InOrder::new(reqs.len());
        for (through, idx, batch) in split(reqs, forwarded) {
            let links = if through { self.forwarding(key) } else { self.links(key) };
            let results = links.pipeline(&batch, &key.compartment).await?;
            out.put(idx, results);
        }
        out.finish(&key.relay.authority())
    }

    /// The links `key` uses: its own without cover; under cover, the relay's one set of
    /// paced links, whose turns serve each compartment in its turn.
    fn links(&mut self, key: &LinkKey) -> &mut RelayLinks {
        let key = self.slot(key);
        let Self {
            ours, config, conns, ..
        } = self;
        // The address list is built only when the links are first made, not per request.
        conns
            .entry(key.clone())
            .or_insert_with(|| fresh_links(ours, config, &key.relay))
    }

    /// Where `key`'s links are kept.
    fn slot(&self, key: &LinkKey) -> LinkKey {
        if self.config.cover.is_some() {
            LinkKey {
                relay: key.relay.clone(),
                compartment: Compartment::Shared,
            }
        } else {
            key.clone()
        }
    }
}

/// Links to `relay`, not connected yet: through every address of our own relay, in order,
/// when it is ours.
fn fresh_links(ours: &[RelayAddress], config: &TransportConfig, relay: &RelayAddress) -> RelayLinks {
    let addrs = if ours.first() == Some(relay) {
        ours.to_vec()
    } else {
        vec![relay.clone()]
    };
    RelayLinks::new(addrs, config.clone())
}

/// Whether a request to another relay's mailbox goes through our own relay when forwarding
/// is on: what names a mailbox by its send capability, a `Create` (a channel's new
/// sequencer on its relay), the take of an invite code's nameplate, and the fetch of what a
/// short invite line names. The receive side of our own mailboxes there (made before
/// forwarding) is spoken directly.
fn forwarded(req: &Request) -> bool {
    on_send_link(req)
        || matches!(
            req,
            Request::Create { .. } | Request::TakeNameplate { .. } | Request::Bundle { .. }
        )
}

impl Network for Links {
    fn pipeline<'a>(&'a mut self, key: &'a LinkKey, reqs: &'a [Request]) -> NetFuture<'a, Results> {
        Box::pin(self.pipeline_split(key, reqs))
    }

    fn open<'a>(
        &'a mut self,
        key: &'a LinkKey,
        boxes: &'a [MailboxKeys],
    ) -> NetFuture<'a, Vec<Result<(), ConnectError>>> {
        Box::pin(self.links(key).open(boxes, &key.compartment))
    }

    fn forget(&mut self, key: &LinkKey) {
        let slot = self.slot(key);
        self.conns.remove(&slot);
        self.forwarded.remove(&slot);
    }

    fn connect_all<'a>(&'a mut self, key: &'a LinkKey) -> NetFuture<'a, ()> {
        Box::pin(self.links(key).connect_all())
    }

    fn wait_any<'a>(&'a mut self, waits: &'a [(LinkKey, Vec<MailboxKeys>)], wait: Duration) -> NetFuture<'a, bool> {
        Box::pin(async move {
            // Each waits on links of its own, taken out of the map: they are closed after.
            let mut taken = Vec::with_capacity(waits.len());
            for (key, boxes) in waits {
                let mut links = self
                    .conns
                    .remove(key)
                    .unwrap_or_else(|| fresh_links(&self.ours, &self.config, &key.relay));
                links.open(boxes, &key.compartment).await?;
                taken.push(links);
            }
            if taken.is_empty() {
                return Ok(false);
            }
            let wait_ms = wait.as_millis().min(u32::MAX as u128) as u32;
            let poll = Request::Fetch { max: 1, wait_ms };
            let polls = taken
                .iter_mut()
                .zip(waits)
                .map(|(l, (key, _))| Box::pin(l.request(&poll, &key.compartment)));
            let (first, _, _) = futures_util::future::select_all(polls).await;
            Ok(match first {
                Ok(Response::Envelopes(list)) => !list.is_empty(),
                // A link that broke or was refused: look, rather than wait on.
                _ => true,
            })
        })
    }

    fn detach(&mut self, key: &LinkKey, opens: &[MailboxKeys], reqs: Vec<Request>) -> Option<Detached> {
        if reqs.iter().any(forwarded) {
            return None;
        }
        self.links(key).detach(opens, reqs, &key.compartment)
    }

    fn configure(&mut self, config: TransportConfig) {
        self.config = config;
        self.conns.clear();
        self.forwarded.clear();
    }

    fn set_ours(&mut self, ours: Vec<RelayAddress>) {
        self.ours = ours;
        self.conns.clear();
        self.forwarded.clear();
    }
}

/// How many times requests refused for the relay's rate are sent again in one go.
const RATE_RETRIES: usize = 8;

/// The longest wait for the relay's rate that a command sits through; past it the refusal
/// is the answer (a send stays queued, a fetch waits for the next sync).
const MAX_RATE_WAIT: Duration = Duration::from_secs(5);

/// Receive-link ticks per send tick: a fetch and an acknowledgement per envelope.
pub const RECEIVE_TICKS: u32 = 2;

/// Ticks a paced link keeps one connection, serving one compartment, before it connects
/// afresh (docs/protocol.md, "Unlinkable links"), on average: each turn takes 6 to 10 ticks
/// at random, whatever the user does, so a new connection shows nothing, and the send and
/// receive links' turns do not start together; a request of another compartment waits for
/// the next turn.
pub const TURN_TICKS: u32 = 8;

/// The length of one turn: [`TURN_TICKS`], give or take 2, at random.
fn turn_length() -> u32 {
    TURN_TICKS - 2 + OsRng.next_u32() % 5
}

/// A random wait of less than `period`, before a paced link first connects: the links of
/// one daemon do not open at the same moment.
async fn stagger(period: Duration) {
    let most = period.as_millis().clamp(1, u64::MAX as u128) as u64;
    tokio::time::sleep(Duration::from_millis(OsRng.next_u64() % most)).await;
}

/// What a paced link is asked to send.
enum Work {
    Request(Request),
    /// Opens this mailbox on the connection of the compartment's turn (its proof needs that
    /// connection's nonce), and on each fresh connection of later turns of the compartment.
    Open(MailboxKeys),
}

/// Requests of one compartment, sent one per tick on one connection, in order.
struct Job {
    compartment: Compartment,
    work: VecDeque<(Work, oneshot::Sender<Result<Response, ConnectError>>)>,
}

enum Link {
    Direct(Box<RelayConnection>),
    Paced { jobs: mpsc::UnboundedSender<Job> },
}

/// What a paced link sends when it has nothing real to send.
#[derive(Clone, Copy)]
enum Filler {
    /// A fetch whose answer is ignored (what is not acknowledged is fetched again).
    Fetch,
    /// A keep-alive: on a paced connection answered at the same delay as a send.
    Ping,
}

impl Filler {
    fn request(self) -> Request {
        match self {
            Filler::Fetch => Request::Fetch { max: 1, wait_ms: 0 },
            Filler::Ping => Request::Ping,
        }
    }
}

/// A connection for a paced link: it declares itself paced before anything else, so that
/// every answer on it leaves at the relay's answer floor (docs/protocol.md, "Answer times").
async fn connect_paced(
    addr: &RelayAddress,
    proxy: Option<&ProxyAddr>,
    forward: Option<&RelayAddress>,
) -> Result<RelayConnection, ConnectError> {
    let mut conn = RelayConnection::connect_via(addr, proxy).await?;
    conn.request(&Request::Paced).await?;
    match forward {
        Some(to) => conn.forward_to(to).await,
        None => Ok(conn),
    }
}

/// A connection (not paced) to `addr`, forwarding to `forward` if given.
async fn connect_direct(
    addr: &RelayAddress,
    proxy: Option<&ProxyAddr>,
    forward: Option<&RelayAddress>,
) -> Result<RelayConnection, ConnectError> {
    let conn = RelayConnection::connect_via(addr, proxy).await?;
    match forward {
        Some(to) => conn.forward_to(to).await,
        None => Ok(conn),
    }
}

/// A paced link answers exactly one frame per request: fetches take one
/// envelope and never wait (a long poll would stall the schedule).
fn paced_form(req: Request) -> Request {
    match req {
        Request::Fetch { .. } => Request::Fetch { max: 1, wait_ms: 0 },
        other => other,
    }
}

/// The connection a paced link holds, and what it knows to open on the next ones.
struct Pacer {
    addrs: Vec<RelayAddress>,
    /// The address that last answered.
    at: usize,
    proxy: Option<ProxyAddr>,
    /// The relay our own relay forwards this link's requests to, if any.
    forward: Option<RelayAddress>,
    conn: Option<RelayConnection>,
    /// The compartment of this turn's connection (none: nothing was waiting).
    current: Option<Compartment>,
    /// Ticks left in this turn.
    turn_left: u32,
    /// Each compartment's mailboxes opened before: opened again on each of its turns.
    boxes: HashMap<Compartment, Vec<MailboxKeys>>,
    /// Mailboxes still to open on this turn's connection.
    reopen: VecDeque<MailboxKeys>,
}

impl Pacer {
    fn authority(&self) -> String {
        self.addrs.get(self.at).map(RelayAddress::authority).unwrap_or_default()
    }

    /// Starts a turn for `compartment` on a fresh connection (from the address that last
    /// answered, each address once).
    async fn new_turn(&mut self, compartment: Option<Compartment>) -> Result<(), ConnectError> {
        self.conn = None;
        self.turn_left = turn_length();
        self.reopen = compartment
            .as_ref()
            .and_then(|c| self.boxes.get(c))
            .map(|b| b.iter().cloned().collect())
            .unwrap_or_default();
        self.current = compartment;
        let n = self.addrs.len();
        let mut failure = ConnectError::broken(self.authority(), Breakage::Closed);
        for i in 0..n {
            let at = (self.at + i) % n;
            let Some(addr) = self.addrs.get(at) else { break };
            match connect_paced(addr, self.proxy.as_ref(), self.forward.as_ref()).await {
                Ok(c) => {
                    self.at = at;
                    self.conn = Some(c);
                    return Ok(());
                }
                Err(e) => failure = e,
            }
        }
        Err(failure)
    }

    /// Gives this idle turn's connection to `compartment`: its mailboxes are opened on it,
    /// one a tick, before its work.
    fn take_over(&mut self, compartment: Compartment) {
        self.reopen = self
            .boxes
            .get(&compartment)
            .map(|b| b.iter().cloned().collect())
            .unwrap_or_default();
        self.current = Some(compartment);
    }

    /// Sends one request on this turn's connection; a broken connection is dropped (the
    /// next turn connects again).
    async fn send(&mut self, req: &Request) -> Result<Response, ConnectError> {
        let authority = self.authority();
        let Some(conn) = self.conn.as_mut() else {
            return Err(ConnectError::broken(authority, Breakage::Closed));
        };
        let result = conn.request(req).await;
        if matches!(result, Err(ConnectError::Broken { .. })) {
            self.conn = None;
        }
        result
    }

    /// The request for `work` on this turn's connection.
    fn request(&mut self, work: Work) -> Request {
        match work {
            Work::Request(req) => paced_form(req),
            Work::Open(keys) => {
                let nonce = self.conn.as_ref().map(|c| *c.nonce()).unwrap_or_default();
                let req = Request::open(&keys, &nonce);
                if let Some(c) = &self.current {
                    let known = self.boxes.entry(c.clone()).or_default();
                    if !known.iter().any(|k| k.id() == keys.id()) {
                        known.push(keys);
                    }
                }
                req
            }
        }
    }
}

/// A paced link: one frame per tick, on a connection that serves one compartment for a
/// turn of [`TURN_TICKS`] ticks and is then replaced by a fresh one, for the compartment
/// whose requests wait first (nothing opened when none wait). A job is never split across
/// two connections (a commit's deposit and its claim must share one). With nothing to send,
/// a tick sends `filler`.
async fn pace(mut pacer: Pacer, mut jobs: mpsc::UnboundedReceiver<Job>, period: Duration, filler: Filler) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut queue: VecDeque<Job> = VecDeque::new();
    let mut job: Option<Job> = None;
    loop {
        tick.tick().await;
        loop {
            match jobs.try_recv() {
                Ok(j) => queue.push_back(j),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    if queue.is_empty() && job.is_none() {
                        return;
                    }
                    break;
                }
            }
        }
        // A connection that broke, or never came, is replaced at once rather than at the
        // end of its turn (never while a job runs on it: the job was failed already).
        if pacer.conn.is_none() && job.is_none() {
            pacer.turn_left = 0;
        }
        if pacer.turn_left == 0 && job.is_none() {
            let next = queue.front().map(|j| j.compartment.clone());
            if let Err(e) = pacer.new_turn(next.clone()).await {
                // The relay cannot be reached: the first waiting job fails now, not later.
                if let Some(failed) = queue.pop_front() {
                    let mut first = Some(e);
                    for (_, reply) in failed.work {
                        let err = first.take().unwrap_or_else(|| ConnectError::Unreachable {
                            relay: pacer.authority(),
                            source: None,
                        });
                        let _ = reply.send(Err(err));
                    }
                }
                continue;
            }
        }
        pacer.turn_left = pacer.turn_left.saturating_sub(1);
        // An idle turn (begun with nothing waiting) has shown the relay fillers only: the
        // first compartment with work takes it over at once, rather than waiting for the
        // next turn. The turn's length, and so every connection's timing, stays what it was
        // drawn; the connection still serves one compartment.
        if job.is_none() && pacer.current.is_none() && pacer.conn.is_some() {
            if let Some(c) = queue.front().map(|j| j.compartment.clone()) {
                pacer.take_over(c);
            }
        }
        if let Some(keys) = pacer.reopen.pop_front() {
            let req = pacer.request(Work::Open(keys));
            let _ = pacer.send(&req).await;
            continue;
        }
        // The turn's compartment runs its first waiting job, even behind other compartments'
        // (they wait for their own turns; the oldest gets the next): a daemon's fetches
        // beside its commands keep a job of each mailbox waiting.
        if job.is_none() {
            if let Some(i) = queue
                .iter()
                .position(|j| pacer.current.as_ref() == Some(&j.compartment))
            {
                job = queue.remove(i);
            }
        }
        // A job with nothing left (or nothing at all) is done.
        if job.as_ref().is_some_and(|j| j.work.is_empty()) {
            job = None;
        }
        let next = job.as_mut().and_then(|j| j.work.pop_front());
        match next {
            Some((work, reply)) => {
                let req = pacer.request(work);
                let result = pacer.send(&req).await;
                // A deleted mailbox is not opened again at its compartment's later turns
                // (nor kept in memory for them).
                if matches!((&req, &result), (Request::Delete { .. }, Ok(_))) {
                    if let Some(c) = &pacer.current {
                        pacer.boxes.remove(c);
                    }
                }
                let broken = pacer.conn.is_none();
                let _ = reply.send(result);
                if broken {
                    // What the job still holds cannot go on another connection.
                    if let Some(rest) = job.take() {
                        for (_, reply) in rest.work {
                            let _ = reply.send(Err(ConnectError::broken(pacer.authority(), Breakage::Closed)));
                        }
                    }
                    pacer.turn_left = 0;
                }
                if job.as_ref().is_some_and(|j| j.work.is_empty()) {
                    job = None;
                }
            }
            None => {
                let _ = pacer.send(&filler.request()).await;
            }
        }
    }
}

impl Link {
    /// Connects to `addrs[at]`; paced, the link then connects afresh at each turn, from
    /// the address that last answered.
    async fn connect(
        addrs: &[RelayAddress],
        at: usize,
        proxy: Option<&ProxyAddr>,
        pace_every: Option<Duration>,
        filler: Filler,
        forward: Option<&RelayAddress>,
    ) -> Result<Self, ConnectError> {
        let Some(addr) = addrs.get(at) else {
            return Err(ConnectError::broken("", Breakage::Closed));
        };
        Ok(match pace_every {
            None => Link::Direct(Box::new(connect_direct(addr, proxy, forward).await?)),
            Some(period) => {
                let conn = connect_paced(addr, proxy, forward).await?;
                let (tx, rx) = mpsc::unbounded_channel();
                let pacer = Pacer {
                    addrs: addrs.to_vec(),
                    at,
                    proxy: proxy.cloned(),
                    forward: forward.cloned(),
                    conn: Some(conn),
                    current: None,
                    turn_left: turn_length(),
                    boxes: HashMap::new(),
                    reopen: VecDeque::new(),
                };
                tokio::spawn(pace(pacer, rx, period, filler));
                Link::Paced { jobs: tx }
            }
        })
    }

    /// Sends `work` as one job of `compartment` and waits for its answers, in order.
    async fn run(
        jobs: &mpsc::UnboundedSender<Job>,
        compartment: &Compartment,
        work: Vec<Work>,
        authority: &str,
    ) -> Result<Results, ConnectError> {
        Self::submit(jobs, compartment, work, authority).await
    }

    /// Queues `work` as one job of `compartment` now; the future of its answers, in order,
    /// holds nothing of the link.
    fn submit(
        jobs: &mpsc::UnboundedSender<Job>,
        compartment: &Compartment,
        work: Vec<Work>,
        authority: &str,
    ) -> Detached {
        if work.is_empty() {
            return Box::pin(async { Ok(Vec::new()) });
        }
        let authority = authority.to_string();
        let mut waiting = Vec::with_capacity(work.len());
        let mut queued = VecDeque::with_capacity(work.len());
        for w in work {
            let (reply, rx) = oneshot::channel();
            queued.push_back((w, reply));
            waiting.push(rx);
        }
        let queued = jobs.send(Job {
            compartment: compartment.clone(),
            work: queued,
        });
        Box::pin(async move {
            queued.map_err(|_| ConnectError::broken(&authority, Breakage::TaskEnded))?;
            let mut out = Vec::with_capacity(waiting.len());
            for rx in waiting {
                out.push(
                    rx.await
                        .map_err(|_| ConnectError::broken(&authority, Breakage::TaskEnded))?,
                );
            }
            Ok(out)
        })
    }

    async fn pipeline(
        &mut self,
        reqs: &[Request],
        authority: &str,
        compartment: &Compartment,
    ) -> Result<Results, ConnectError> {
        match self {
            Link::Direct(c) => c.pipeline(reqs).await,
            Link::Paced { jobs } => {
                let work = reqs.iter().cloned().map(Work::Request).collect();
                Self::run(jobs, compartment, work, authority).await
            }
        }
    }
}

/// The links to one relay, opened when first needed.
pub struct RelayLinks {
    /// The relay's addresses (one pin), tried in order from `current` when a link
    /// must be (re)connected.
    addrs: Vec<RelayAddress>,
    /// The address that last answered.
    current: usize,
    config: TransportConfig,
    send: Option<Link>,
    recv: Option<Link>,
    /// Mailboxes opened (or created) on the receive link.
    opened: HashSet<MailboxId>,
    /// The relay that `addrs` (our own relay's) forward every request of these links to
    /// (docs/protocol.md, "Forwarding"): then every request goes on the send link.
    forward: Option<RelayAddress>,
}

impl std::fmt::Debug for RelayLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayLinks(..)")
    }
}

impl RelayLinks {
    /// Links to the relay at `addrs` (addresses of one relay: the same pin); nothing
    /// is connected until a request needs it.
    pub fn new(addrs: Vec<RelayAddress>, config: TransportConfig) -> Self {
        Self {
            addrs,
            current: 0,
            config,
            send: None,
            recv: None,
            opened: HashSet::new(),
            forward: None,
        }
    }

    /// Links to our own relay at `ours` that forward every request to the relay at `to`.
    pub fn forwarding(ours: Vec<RelayAddress>, to: RelayAddress, config: TransportConfig) -> Self {
        Self {
            forward: Some(to),
            ..Self::new(ours, config)
        }
    }

    /// The address in use.
    fn addr(&self) -> Option<&RelayAddress> {
        self.addrs.get(self.current).or(self.addrs.first())
    }

    fn authority(&self) -> String {
        self.addr().map(RelayAddress::authority).unwrap_or_default()
    }

    async fn link(&mut self, send: bool) -> Result<&mut Link, ConnectError> {
        let open = if send { self.send.is_some() } else { self.recv.is_some() };
        if !open {
            let (period, filler) = match (self.config.cover, send) {
                (None, _) => (None, Filler::Ping),
                (Some(p), true) => (Some(p), Filler::Ping),
                (Some(p), false) => (Some(p / RECEIVE_TICKS), Filler::Fetch),
            };
            // Fail over: from the address that last answered, each address once.
            let n = self.addrs.len();
            let mut failure = ConnectError::broken(self.authority(), Breakage::Closed);
            let mut made = None;
            for i in 0..n {
                let at = (self.current + i) % n;
                let forward = self.forward.as_ref();
                match Link::connect(&self.addrs, at, self.config.proxy.as_ref(), period, filler, forward).await {
                    Ok(link) => {
                        self.current = at;
                        made = Some(link);
                        break;
                    }
                    Err(e) => failure = e,
                }
            }
            let link = made.ok_or(failure)?;
            if send {
                self.send = Some(link);
            } else {
                self.recv = Some(link);
            }
        }
        let authority = self.authority();
        let slot = if send { &mut self.send } else { &mut self.recv };
        slot.as_mut().ok_or(ConnectError::broken(authority, Breakage::Closed))
    }

    /// Connects every link now, and reconnects any that dropped: a paced
    /// stream must not pause until the user next sends (that pause, and the
    /// handshake before the send, would show when the user sends).
    pub async fn connect_all(&mut self) -> Result<(), ConnectError> {
        for send in [true, false] {
            let dead = match if send { &self.send } else { &self.recv } {
                Some(Link::Paced { jobs, .. }) => jobs.is_closed(),
                _ => false,
            };
            if dead {
                if send {
                    self.send = None;
                } else {
                    self.recv = None;
                    self.opened.clear();
                }
            }
            let absent = if send { self.send.is_none() } else { self.recv.is_none() };
            if let (true, Some(period)) = (absent, self.config.cover) {
                stagger(period).await;
            }
            self.link(send).await?;
        }
        Ok(())
    }

    /// Sends requests of `compartment`, each on its link, and returns their answers in order.
    pub async fn pipeline(&mut self, reqs: &[Request], compartment: &Compartment) -> Result<Results, ConnectError> {
        let through = self.forward.is_some();
        let mut out = InOrder::new(reqs.len());
        for (send, idx, batch) in split(reqs, |r| through || on_send_link(r)) {
            let reused = if send { self.send.is_some() } else { self.recv.is_some() };
            let mut authority = self.authority();
            let mut attempt = self.link(send).await?.pipeline(&batch, &authority, compartment).await;
            if attempt.is_err() {
                // A broken link is dropped. A send-link batch gets one retry on a fresh
                // connection if the link had sat idle (the relay closes those) or the relay
                // has other addresses (the fresh connection fails over to them): a repeated
                // send shows once (the relay and the client de-duplicate) and a repeated
                // claim is granted again. A receive-link batch is not retried here: its
                // mailboxes were opened on the old connection, so the caller opens them
                // again (the engine's fetch does, once).
                self.drop_link(send);
                let retry = send && (reused || self.addrs.len() > 1);
                if retry {
                    if !reused {
                        // The address that just failed is tried last.
                        self.current = (self.current + 1) % self.addrs.len().max(1);
                    }
                    authority = self.authority();
                    attempt = self.link(send).await?.pipeline(&batch, &authority, compartment).await;
                    if attempt.is_err() {
                        self.drop_link(send);
                    }
                }
            }
            let mut results = attempt?;
            self.retry_rate_limited(send, &batch, &mut results, compartment).await;
            for (req, r) in batch.iter().zip(&results) {
                match (req, r) {
                    (Request::Create { mailbox, .. }, Ok(_)) => {
                        self.opened.insert(*mailbox);
                    }
                    (Request::Delete { mailbox }, Ok(_)) => {
                        self.opened.remove(mailbox);
                    }
                    _ => {}
                }
            }
            out.put(idx, results);
        }
        out.finish(&self.authority())
    }

    /// Requests the relay refused for going over its rate (`RateLimited`, with how long
    /// to wait) are sent again, in their order, on the same link once that time has
    /// passed: up to [`RATE_RETRIES`] times, each wait at most [`MAX_RATE_WAIT`] (a longer
    /// one is left to the caller, as the refusal). Paced links keep their own rate.
    async fn retry_rate_limited(
        &mut self,
        send: bool,
        batch: &[Request],
        results: &mut [Result<Response, ConnectError>],
        compartment: &Compartment,
    ) {
        if self.config.cover.is_some() {
            return;
        }
        for _ in 0..RATE_RETRIES {
            let mut limited = Vec::new();
            let mut wait_ms = 0u64;
            for (i, r) in results.iter().enumerate() {
                if let Err(ConnectError::Refused(ErrorCode::RateLimited, ms)) = r {
                    limited.push(i);
                    wait_ms = wait_ms.max(*ms);
                }
            }
            let wait = Duration::from_millis(wait_ms);
            if limited.is_empty() || wait > MAX_RATE_WAIT {
                return;
            }
            tokio::time::sleep(wait).await;
            // A claim's parts and the claim share state on the connection (its deposit):
            // it goes again whole, which the relay grants again. Anything else: what was
            // refused, in its order.
            let claim = batch
                .iter()
                .any(|r| matches!(r, Request::Deposit { .. } | Request::ClaimCommit { .. }));
            if claim {
                limited = (0..batch.len()).collect();
            }
            let again: Vec<Request> = limited.iter().filter_map(|i| batch.get(*i).cloned()).collect();
            let authority = self.authority();
            let Ok(link) = self.link(send).await else {
                return;
            };
            let Ok(answers) = link.pipeline(&again, &authority, compartment).await else {
                return;
            };
            for (i, a) in limited.into_iter().zip(answers) {
                if let Some(slot) = results.get_mut(i) {
                    *slot = a;
                }
            }
        }
    }

    fn drop_link(&mut self, send: bool) {
        if send {
            self.send = None;
        } else {
            self.recv = None;
            self.opened.clear();
        }
    }

    /// [`Network::detach`] on these links.
    fn detach(&mut self, opens: &[MailboxKeys], reqs: Vec<Request>, compartment: &Compartment) -> Option<Detached> {
        if self.forward.is_some() || reqs.iter().any(on_send_link) {
            return None;
        }
        let Some(Link::Paced { jobs }) = &self.recv else {
            return None;
        };
        if jobs.is_closed() {
            return None;
        }
        let work = opens
            .iter()
            .cloned()
            .map(Work::Open)
            .chain(reqs.into_iter().map(Work::Request))
            .collect();
        Some(Link::submit(jobs, compartment, work, &self.authority()))
    }

    /// Sends one request of `compartment`; a refusal becomes `Err`.
    pub async fn request(&mut self, req: &Request, compartment: &Compartment) -> Result<Response, ConnectError> {
        self.pipeline(std::slice::from_ref(req), compartment)
            .await?
            .pop()
            .unwrap_or_else(|| Err(ConnectError::broken(self.authority(), Breakage::Unexpected)))
    }

    /// Opens mailboxes of `compartment` on the receive link (each once per connection) so
    /// that fetches return their envelopes. One answer per mailbox.
    pub async fn open(
        &mut self,
        boxes: &[MailboxKeys],
        compartment: &Compartment,
    ) -> Result<Vec<Result<(), ConnectError>>, ConnectError> {
        let authority = self.authority();
        let nonce = match self.link(false).await? {
            Link::Direct(c) => *c.nonce(),
            // Paced: opened on the connection of the compartment's turn, and again on each
            // later turn of it.
            Link::Paced { jobs } => {
                let work = boxes.iter().cloned().map(Work::Open).collect();
                let results = Link::run(jobs, compartment, work, &authority).await?;
                return Ok(results.into_iter().map(|r| r.map(|_| ())).collect());
            }
        };
        let todo: Vec<&MailboxKeys> = boxes.iter().filter(|k| !self.opened.contains(&k.id())).collect();
        let reqs: Vec<Request> = todo.iter().map(|k| Request::open(k, &nonce)).collect();
        let results = self.pipeline(&reqs, compartment).await?;
        for (k, r) in todo.iter().zip(&results) {
            if r.is_ok() {
                self.opened.insert(k.id());
            }
        }
        let mut by_id: HashMap<MailboxId, Result<(), ConnectError>> = todo
            .iter()
            .map(|k| k.id())
            .zip(results.into_iter().map(|r| r.map(|_| ())))
            .collect();
        Ok(boxes.iter().map(|k| by_id.remove(&k.id()).unwrap_or(Ok(()))).collect())
    }
}
