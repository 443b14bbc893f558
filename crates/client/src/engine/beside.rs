//! Under cover traffic, the daemon's fetches run *beside* its commands.
//!
//! A paced receive link answers one request per tick, so a sync pass that fetches each
//! mailbox in turn holds the engine for ticks at a time, and every command waits for the
//! pass under way: that wait, on the sender's side and again on the reader's, was most of
//! the latency cover traffic added. Here each of our mailboxes has one fetch queued on its
//! relay's paced receive link at all times, as a job of the mailbox's compartment (so it
//! runs in that mailbox's turn, like any fetch); its answer comes back through a channel
//! to the engine, which holds nothing while it waits. The daemon takes in what came back
//! as soon as it comes ([`Engine::take_fetched`]) and serves commands in between; a sync
//! (the daemon's own, or a command's) takes it in as its fetch step.
//!
//! A fetch's envelopes are processed and saved before they are acknowledged, as in a sync:
//! the acknowledgements go at the head of the mailbox's next fetch, on the same
//! connection's turn, so the next fetch never sees them again. A mailbox is opened with
//! its first fetch; the paced link opens it again at each later turn of its compartment,
//! and every [`REOPEN_EVERY`]th fetch opens it explicitly, to learn if the relay no longer
//! holds it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use backchannel_core::frame::{ErrorCode, Request, Response, MAX_FETCH};
use backchannel_core::mailbox::{MailboxId, MailboxKeys};
use tokio::sync::{mpsc, watch};

use super::Engine;
use crate::connection::{Breakage, ConnectError};
use crate::session::Role;
use crate::transport::{LinkKey, Results};
use crate::ClientError;

/// Every how many fetches of a mailbox it is opened explicitly (its answer says whether
/// the relay still holds it).
const REOPEN_EVERY: u32 = 16;

/// The fetches under way beside the commands, and what they leave to do.
pub(super) struct Beside {
    done_tx: mpsc::UnboundedSender<Fetched>,
    done: mpsc::UnboundedReceiver<Fetched>,
    /// Moves each time a fetch comes back (the daemon waits on it).
    arrivals: Arc<watch::Sender<u64>>,
    /// The mailboxes' link keys with a fetch under way.
    in_flight: HashSet<LinkKey>,
    /// Acknowledgements of envelopes processed and saved, for the mailbox's next fetch.
    pub(super) unacked: HashMap<LinkKey, Vec<Request>>,
    /// Per mailbox, fetches since it was last opened explicitly.
    since_open: HashMap<MailboxId, u32>,
    /// The mailboxes whose last fetch came back empty, since all last did.
    came_back_empty: HashSet<LinkKey>,
    /// No fetch is started any more ([`Engine::settle_fetches`]).
    stopping: bool,
}

impl Beside {
    fn new() -> Self {
        let (done_tx, done) = mpsc::unbounded_channel();
        Self {
            done_tx,
            done,
            arrivals: Arc::new(watch::Sender::new(0)),
            in_flight: HashSet::new(),
            unacked: HashMap::new(),
            since_open: HashMap::new(),
            came_back_empty: HashSet::new(),
            stopping: false,
        }
    }

    /// Whether this fetch of `id` opens it explicitly (counted).
    fn open_due(&mut self, id: MailboxId) -> bool {
        let n = self.since_open.entry(id).or_insert(0);
        let due = *n == 0;
        *n = (*n + 1) % REOPEN_EVERY;
        due
    }
}

/// What one fetch beside the commands brought back.
pub(super) struct Fetched {
    key: LinkKey,
    boxes: Vec<(MailboxKeys, Role)>,
    /// The mailboxes opened before the fetch (one answer each, first).
    opened: Vec<MailboxId>,
    /// How many acknowledgements went before the fetch (one answer each, next).
    acks: usize,
    answers: Result<Results, ConnectError>,
}

impl Engine {
    /// Under cover, starts fetching beside the commands: from now on each of our mailboxes
    /// has a fetch under way on its relay's paced link, and a sync takes in what they bring
    /// instead of fetching. Returns what moves each time one comes back, for the caller to
    /// wait on before [`Engine::take_fetched`]; `None` without cover traffic.
    pub fn fetch_beside(&mut self) -> Option<watch::Receiver<u64>> {
        self.transport.cover?;
        let arrivals = self.beside.get_or_insert_with(Beside::new).arrivals.subscribe();
        self.start_fetches();
        Some(arrivals)
    }

    /// Whether fetches run beside the commands (under cover, once asked to).
    pub(super) fn fetching_beside(&self) -> bool {
        self.beside.is_some() && self.transport.cover.is_some()
    }

    /// Takes in what the fetches beside the commands brought back (processed, saved, their
    /// acknowledgements queued), and starts each mailbox's next. Returns how many messages
    /// and events arrived.
    pub async fn take_fetched(&mut self) -> Result<usize, ClientError> {
        let before = self.session.history_len();
        if self.take_fetched_within(Duration::ZERO).await? > 0 {
            self.catch_up_behind().await?;
        }
        Ok(self.session.history_len().saturating_sub(before))
    }

    /// A sync's fetch step when fetches run beside the commands: what came back, waiting up
    /// to `wait` for an envelope if none did. Starts a fetch for each mailbox without one
    /// (a new mailbox, or one whose last fetch failed). Returns how many envelopes came.
    pub(super) async fn take_fetched_within(&mut self, wait: Duration) -> Result<usize, ClientError> {
        self.start_fetches();
        let deadline = tokio::time::Instant::now() + wait;
        let mut envelopes = 0;
        let mut failure = None;
        while let Some(beside) = self.beside.as_mut() {
            let done = match beside.done.try_recv() {
                Ok(done) => done,
                Err(_) if envelopes > 0 || wait.is_zero() => break,
                Err(_) => match tokio::time::timeout_at(deadline, beside.done.recv()).await {
                    Ok(Some(done)) => done,
                    _ => break,
                },
            };
            // One mailbox that fails does not keep the others' envelopes from being taken
            // in: the first failure is the caller's, once all were.
            match self.take_in(done).await {
                Ok(n) => envelopes += n,
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(envelopes),
        }
    }

    /// Before the daemon stops: takes in the fetches under way (for up to `wait`) and sends
    /// what is owed of acknowledgements, so that nothing processed is fetched again (and
    /// shown as a replay) by the next sync. No fetch starts after this.
    pub async fn settle_fetches(&mut self, wait: Duration) {
        let Some(beside) = self.beside.as_mut() else { return };
        beside.stopping = true;
        let deadline = tokio::time::Instant::now() + wait;
        while let Some(beside) = self.beside.as_mut().filter(|b| !b.in_flight.is_empty()) {
            match tokio::time::timeout_at(deadline, beside.done.recv()).await {
                Ok(Some(done)) => {
                    let _ = self.take_in(done).await;
                }
                _ => break,
            }
        }
        let owed: Vec<(LinkKey, Vec<Request>)> = self
            .beside
            .as_mut()
            .map(|b| b.unacked.drain().collect())
            .unwrap_or_default();
        for (key, acks) in owed {
            let _ = tokio::time::timeout_at(deadline, self.pipeline(&key, &acks)).await;
        }
    }

    /// A fetch for each of our mailboxes that has none under way.
    fn start_fetches(&mut self) {
        if !self.fetching_beside() {
            return;
        }
        for (key, boxes) in self.fetch_groups() {
            self.start_fetch(key, boxes);
        }
    }

    /// Queues the next fetch of `key`'s mailboxes, after the acknowledgements they owe.
    fn start_fetch(&mut self, key: LinkKey, boxes: Vec<(MailboxKeys, Role)>) {
        let Some(beside) = self.beside.as_mut() else { return };
        if beside.stopping || beside.in_flight.contains(&key) {
            return;
        }
        let acks = beside.unacked.remove(&key).unwrap_or_default();
        let opens: Vec<MailboxKeys> = boxes
            .iter()
            .map(|(k, _)| k)
            .filter(|k| beside.open_due(k.id()))
            .cloned()
            .collect();
        let mut reqs = acks.clone();
        reqs.push(Request::Fetch {
            max: MAX_FETCH,
            wait_ms: 0,
        });
        let Some(answers) = self.net.detach(&key, &opens, reqs) else {
            // Not paced, or not connected yet (a sync connects the links): next time.
            if !acks.is_empty() {
                beside.unacked.insert(key, acks);
            }
            for k in &opens {
                beside.since_open.remove(&k.id());
            }
            return;
        };
        beside.in_flight.insert(key.clone());
        let done = beside.done_tx.clone();
        let arrivals = Arc::clone(&beside.arrivals);
        let opened = opens.iter().map(MailboxKeys::id).collect();
        let acks = acks.len();
        tokio::spawn(async move {
            let answers = answers.await;
            let _ = done.send(Fetched {
                key,
                boxes,
                opened,
                acks,
                answers,
            });
            arrivals.send_modify(|n| *n = n.wrapping_add(1));
        });
    }

    /// Processes one fetch's answers and starts the mailbox's next; returns how many
    /// envelopes it brought.
    async fn take_in(&mut self, done: Fetched) -> Result<usize, ClientError> {
        let Fetched {
            key,
            boxes,
            opened,
            acks,
            answers,
        } = done;
        let Some(beside) = self.beside.as_mut() else {
            return Ok(0);
        };
        beside.in_flight.remove(&key);
        let answers = match answers {
            Ok(answers) => answers,
            Err(e) => {
                // Opened again on the next fetch (it may be on another connection).
                for (k, _) in &boxes {
                    beside.since_open.remove(&k.id());
                }
                return Err(e.into());
            }
        };
        self.tick();
        let mut answers = answers.into_iter();
        let ours: HashSet<MailboxId> = self.session.mailboxes().iter().map(|(k, _)| k.id()).collect();
        let mut routes: HashMap<MailboxId, (MailboxKeys, Role)> = HashMap::new();
        for (k, role) in boxes {
            if opened.contains(&k.id()) {
                match answers.next() {
                    Some(Ok(_)) => {}
                    Some(Err(e)) if e.is(ErrorCode::NoSuchMailbox) => {
                        self.missing_mailbox(&role);
                        continue;
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(ConnectError::broken(key.relay.authority(), Breakage::Unexpected).into()),
                }
            }
            // A mailbox given up while its fetch was under way (a channel left) is not read.
            if ours.contains(&k.id()) {
                routes.insert(k.id(), (k, role));
            }
        }
        // An acknowledgement refused leaves its envelope to be fetched again.
        answers.by_ref().take(acks).for_each(drop);
        let list = match answers.next() {
            Some(Ok(Response::Envelopes(list))) => list,
            Some(Err(e)) => return Err(e.into()),
            _ => return Err(ConnectError::broken(key.relay.authority(), Breakage::Unexpected).into()),
        };
        let n = list.len();
        if list.is_empty() {
            self.came_back_empty(&key);
        } else {
            // Acknowledged by the mailbox's next fetch, now that what they brought is saved.
            let acks = self.take_in_envelopes(list, &routes)?;
            if let Some(beside) = self.beside.as_mut() {
                beside.unacked.entry(key.clone()).or_default().extend(acks);
            }
        }
        // Processed envelopes were saved above; save again only if a kept message moved.
        if self.session.retry_deferred() {
            self.save()?;
        }
        self.perform().await?;
        if !routes.is_empty() {
            if let Some((key, boxes)) = self.fetch_groups().into_iter().find(|(k, _)| *k == key) {
                self.start_fetch(key, boxes);
            }
        }
        Ok(n)
    }

    /// Notes that `key`'s last fetch came back empty: once every mailbox's has since all
    /// last did, nothing is left in them (retired mailboxes may then expire).
    fn came_back_empty(&mut self, key: &LinkKey) {
        let groups: HashSet<LinkKey> = self.fetch_groups().into_iter().map(|(k, _)| k).collect();
        let Some(beside) = self.beside.as_mut() else { return };
        beside.came_back_empty.insert(key.clone());
        beside.came_back_empty.retain(|k| groups.contains(k));
        if beside.came_back_empty.len() == groups.len() {
            beside.came_back_empty.clear();
            self.drained = true;
        }
    }
}
