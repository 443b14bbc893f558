//! Forwarding for our own users (docs/protocol.md, "Forwarding"): a client sends what goes
//! to a mailbox on another relay to us, sealed to that relay's forward key
//! ([`Request::Forward`]); we pass it on over one connection per destination that all our
//! users share, and hand back the destination's sealed answer. We learn who sends and to
//! which relay, never the mailbox; the destination learns that it came through us, never
//! from whom. We keep no queue: a request the destination did not answer is answered
//! `Unreachable`, and the client keeps its message.
//!
//! Each destination's connection is held by a task of its own ([`run_peer`]). It proves our
//! identity first ([`Request::Forwarder`]), so that the destination counts our requests
//! against the budget it gives this relay rather than a client's. Requests wait in one queue
//! per client connection, served in turn, and a `RateLimited` answer holds them all until
//! the destination takes more: one user who floods a destination delays only their own
//! requests, never everyone else's (`fairness` in the relay's tests).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backchannel_client::{ConnectError, RelayConnection};
use backchannel_core::frame::{ErrorCode, Request, Response};
use backchannel_core::relay_address::RelayAddress;
use tokio::sync::{mpsc, oneshot};

use crate::tls::WireKeys;

/// Destinations with a connection (or a task waiting to make one) at once, at most; a
/// request to one more is answered `Unreachable`.
const MAX_PEERS: usize = 256;

/// A destination's task ends after this long with nothing to forward (its connection closes).
const PEER_IDLE: Duration = Duration::from_secs(300);

/// Requests sent to a destination in one pipeline, at most (the relay runs up to 32 of a
/// connection's at once).
const BATCH: usize = 32;

/// Times a request the destination refused for our rate goes again before the refusal is
/// the answer.
const RATE_TRIES: u8 = 4;

/// The longest wait for a destination's rate.
const MAX_RATE_WAIT: Duration = Duration::from_secs(5);

/// What a client asks of a destination through us.
pub(crate) enum Ask {
    /// Pass on a sealed request.
    Sealed(Vec<u8>),
    /// Its identity certificate and credential.
    Identify,
}

struct Job {
    /// The client connection it came on: its queue.
    source: u64,
    ask: Ask,
    tries: u8,
    reply: oneshot::Sender<Response>,
}

/// Our connections to other relays, one per destination, shared by all our users.
pub(crate) struct Forwarder {
    keys: Arc<WireKeys>,
    private: bool,
    peers: Mutex<HashMap<RelayAddress, mpsc::UnboundedSender<Job>>>,
}

fn unreachable() -> Response {
    Response::Error {
        code: ErrorCode::Unreachable,
        detail: 0,
    }
}

impl Forwarder {
    pub(crate) fn new(keys: Arc<WireKeys>, private: bool) -> Self {
        Self {
            keys,
            private,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Asks the relay at `to` for `source`, a client connection of ours, and waits for its
    /// answer.
    pub(crate) async fn ask(&self, source: u64, to: &RelayAddress, ask: Ask) -> Response {
        let Some(peer) = self.peer(to) else {
            return unreachable();
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            source,
            ask,
            tries: 0,
            reply,
        };
        if peer.send(job).is_err() {
            return unreachable();
        }
        answer.await.unwrap_or_else(|_| unreachable())
    }

    /// The queue of `to`'s task, started if it is not running.
    fn peer(&self, to: &RelayAddress) -> Option<mpsc::UnboundedSender<Job>> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = peers.get(to).filter(|tx| !tx.is_closed()) {
            return Some(tx.clone());
        }
        peers.retain(|_, tx| !tx.is_closed());
        if peers.len() >= MAX_PEERS {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        peers.insert(to.clone(), tx.clone());
        tokio::spawn(run_peer(to.clone(), self.keys.clone(), self.private, rx));
        Some(tx)
    }
}

/// Whether we may connect to `ip` for a client: not into the network we sit in (loopback,
/// private, link-local, unspecified), unless the operator allows it (`--forward-private`).
fn allowed(ip: IpAddr, private: bool) -> bool {
    if private {
        return true;
    }
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast())
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => allowed(IpAddr::V4(v4), private),
            None => {
                let unique_local = (v6.segments()[0] & 0xfe00) == 0xfc00;
                let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
                !(v6.is_loopback() || v6.is_unspecified() || unique_local || link_local)
            }
        },
    }
}

/// Connects to `to` as a client would (its PIN and credential checked), at an address we
/// may connect to, and proves our identity.
async fn connect(to: &RelayAddress, keys: &WireKeys, private: bool) -> Option<RelayConnection> {
    let addrs = tokio::net::lookup_host((to.host.as_str(), to.port)).await.ok()?;
    for addr in addrs.filter(|a| allowed(a.ip(), private)) {
        let at = RelayAddress {
            pin: to.pin,
            host: addr.ip().to_string(),
            port: addr.port(),
        };
        let Ok(mut conn) = RelayConnection::connect(&at).await else {
            continue;
        };
        let Ok(proof) = keys.forwarder_proof(conn.nonce()) else {
            return None;
        };
        if conn.request(&proof).await.is_ok() {
            return Some(conn);
        }
    }
    None
}

/// The queues of one destination's task: one per client connection, served in turn.
#[derive(Default)]
struct Queues {
    by_source: HashMap<u64, VecDeque<Job>>,
    /// Sources with something queued, in the order they are served.
    turn: VecDeque<u64>,
}

impl Queues {
    fn push(&mut self, job: Job) {
        let q = self.by_source.entry(job.source).or_default();
        if q.is_empty() {
            self.turn.push_back(job.source);
        }
        q.push_back(job);
    }

    /// Puts a job back at the head of its queue (it goes first in its source's next turn).
    fn push_front(&mut self, job: Job) {
        let q = self.by_source.entry(job.source).or_default();
        if q.is_empty() {
            self.turn.push_front(job.source);
        }
        q.push_front(job);
    }

    fn is_empty(&self) -> bool {
        self.turn.is_empty()
    }

    /// Up to `n` jobs, one per source in turn.
    fn take(&mut self, n: usize) -> Vec<Job> {
        let mut out = Vec::new();
        while out.len() < n {
            let Some(source) = self.turn.pop_front() else { break };
            let Some(q) = self.by_source.get_mut(&source) else {
                continue;
            };
            if let Some(job) = q.pop_front() {
                out.push(job);
            }
            if q.is_empty() {
                self.by_source.remove(&source);
            } else {
                self.turn.push_back(source);
            }
        }
        out
    }
}

/// Holds the connection to one destination and passes our users' requests on.
async fn run_peer(to: RelayAddress, keys: Arc<WireKeys>, private: bool, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut conn: Option<RelayConnection> = None;
    let mut queues = Queues::default();
    loop {
        if queues.is_empty() {
            match tokio::time::timeout(PEER_IDLE, jobs.recv()).await {
                Ok(Some(job)) => queues.push(job),
                _ => return,
            }
        }
        while let Ok(job) = jobs.try_recv() {
            queues.push(job);
        }
        let batch = queues.take(BATCH);
        let reused = conn.is_some();
        if conn.is_none() {
            conn = connect(&to, &keys, private).await;
        }
        let Some(c) = conn.as_mut() else {
            for job in batch {
                let _ = job.reply.send(unreachable());
            }
            continue;
        };
        let (identify, sealed): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|j| matches!(j.ask, Ask::Identify));
        for job in identify {
            let (identity, credential) = c.identity();
            let _ = job.reply.send(Response::Identity {
                identity: identity.to_vec(),
                credential: credential.to_vec(),
            });
        }
        if sealed.is_empty() {
            continue;
        }
        let reqs: Vec<Request> = sealed
            .iter()
            .filter_map(|j| match &j.ask {
                Ask::Sealed(s) => Some(Request::Sealed { sealed: s.clone() }),
                Ask::Identify => None,
            })
            .collect();
        let mut answers = c.pipeline(&reqs).await;
        if answers.is_err() && reused {
            // The destination closed an idle connection: once more, on a fresh one.
            conn = connect(&to, &keys, private).await;
            answers = match conn.as_mut() {
                Some(c) => c.pipeline(&reqs).await,
                None => Err(ConnectError::Unreachable {
                    relay: String::new(),
                    source: None,
                }),
            };
        }
        let answers = match answers {
            Ok(a) => a,
            Err(_) => {
                conn = None;
                for job in sealed {
                    let _ = job.reply.send(unreachable());
                }
                continue;
            }
        };
        // A seal the destination could not open was made with its key of before a restart
        // that this connection has not noticed yet: connect afresh, so that the next client
        // asks for (and gets) the new credential.
        if answers
            .iter()
            .any(|a| a.as_ref().is_err_and(|e| e.is(ErrorCode::Unsealed)))
        {
            conn = None;
        }
        let mut pause = Duration::ZERO;
        for (mut job, answer) in sealed.into_iter().zip(answers) {
            let response = match answer {
                Ok(r) => r,
                Err(ConnectError::Refused(ErrorCode::RateLimited, ms)) if job.tries < RATE_TRIES => {
                    // Our budget at the destination is spent: this waits its turn again.
                    job.tries += 1;
                    pause = pause.max(Duration::from_millis(ms).min(MAX_RATE_WAIT));
                    queues.push_front(job);
                    continue;
                }
                Err(ConnectError::Refused(code, detail)) => Response::Error { code, detail },
                Err(_) => unreachable(),
            };
            let _ = job.reply.send(response);
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn job(source: u64) -> (Job, oneshot::Receiver<Response>) {
        let (reply, rx) = oneshot::channel();
        (
            Job {
                source,
                ask: Ask::Identify,
                tries: 0,
                reply,
            },
            rx,
        )
    }

    #[test]
    fn queued_requests_are_served_one_source_at_a_time() {
        let mut q = Queues::default();
        let mut keep = Vec::new();
        // A flooder queues 40, then a quiet user one.
        for _ in 0..40 {
            let (j, rx) = job(1);
            q.push(j);
            keep.push(rx);
        }
        let (j, rx) = job(2);
        q.push(j);
        keep.push(rx);
        let first: Vec<u64> = q.take(4).iter().map(|j| j.source).collect();
        assert_eq!(first, vec![1, 2, 1, 1], "the quiet user goes second, not 41st");
        let rest = q.take(100);
        assert_eq!(rest.len(), 37);
        assert!(q.is_empty());
    }

    #[test]
    fn a_client_cannot_make_the_relay_connect_into_its_own_network() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "0.0.0.0",
            "::ffff:127.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!allowed(ip, false), "{ip}");
            assert!(allowed(ip, true), "{ip} with --forward-private");
        }
        for ip in ["192.0.2.1", "2001:db8::1", "8.8.8.8"] {
            assert!(allowed(ip.parse().unwrap(), false), "{ip}");
        }
    }
}
