//! The NATS JetStream store: many stateless relay processes over one
//! JetStream cluster act as one relay (docs/deployment.md, "A cluster").
//!
//! Three streams hold everything, all file-backed and replicated:
//!
//! - `BC_ENVELOPES`, subjects `bc.env.<receive id>`: one message per stored
//!   envelope. The stream's limits are the relay's quotas (messages per subject is
//!   the mailbox quota, messages the relay's), both "discard new", so a full
//!   mailbox refuses rather than drops; `max_age` is the envelope lifetime. A
//!   send is answered Ok only after JetStream acknowledged the write, which it
//!   does once a quorum of the replicas has it. Each publish carries a
//!   `Nats-Msg-Id` derived from the capability and the envelope, so a retried
//!   send within the duplicate window is stored once.
//! - `BC_META`, one message per subject (the latest value), at most
//!   [`NatsConfig::meta_bytes`] in all, "discard new" (a full stream refuses records,
//!   as "relay full"): `bc.box.<receive id>`
//!   (recipient key (32) || send digest (32) || proof-of-work bits (1); a record
//!   written before drop boxes has no last byte and reads as 0), `bc.snd.<send
//!   digest>` (receive id),
//!   `bc.clm.<receive id>` (the sequencer's next epoch and last token or lock, then the
//!   commit it holds with that grant, if any: [`super::HeldCommit`]), `bc.clm.<receive
//!   id>-<slot>` (the commits of the sequencer's latest epochs, one per slot) and
//!   `bc.tls` (the relay identity shared by every relay on the cluster). Creating
//!   and claiming are compare-and-set writes (`Nats-Expected-Last-Subject-Sequence`).
//! - `BC_USES`, subjects `bc.use.<receive id>`, one empty message per mailbox, written
//!   again when the mailbox is used; `max_age` is the idle lifetime, so a mailbox
//!   unused that long has none, and the idle sweep deletes it (`touch`, `expire_idle`;
//!   docs/protocol.md, "Idle mailboxes").
//!
//! - `KV_BC_NAMEPLATES`, the KV bucket `BC_NAMEPLATES` (subjects `$KV.BC_NAMEPLATES.<number>`,
//!   one message per subject, `max_age` the nameplate lifetime): a nameplate's expiry (u64
//!   BE) and record. Made with a compare-and-set write on the subject's last sequence (a
//!   number another relay took meanwhile is lost, and the next candidate tried), taken
//!   with a KV purge that names the sequence read, so of relays racing for one nameplate
//!   only one purge is accepted, and only that one hands out the record
//!   (`nameplate_create`, `nameplate_take`).
//! - `KV_BC_BUNDLES`, the KV bucket `BC_BUNDLES` (subjects `$KV.BC_BUNDLES.<name in hex>`, one
//!   message per subject, `max_age` the bundle lifetime, at most [`NatsConfig::meta_bytes`]
//!   in all, "discard new"): a bundle's expiry (u64 BE) and the bundle, the layout of
//!   [`super::bundle`]. Published with a compare-and-set write on the subject's last
//!   sequence, after [`super::bundle::judge`] of the value read: of relays racing to publish
//!   different bundles under one name, one write is accepted, and the others read it again
//!   and are refused `BundleTaken` (`bundle_publish`, `bundle_get`).
//!
//! Every read goes to the stream leader (`STREAM.MSG.GET`, not direct get), so a relay
//! does not answer from a follower that lags. A leader cut off from its quorum does not
//! know it at once, though: for up to about 20 s it still answers reads, so a relay in a
//! minority may hand out an envelope that the majority's relays have already had
//! acknowledged and deleted (docs/reliability.md, "Partitions": seen in 3 of 14 runs).
//! Delivery is at least once anyway; the client shows each message once. An acknowledged envelope is deleted
//! without JetStream's secure erase (see [`NatsStore::remove`]). After a send the relay publishes
//! an empty core-NATS message on `bc.new.<receive id>`; every relay listens there
//! and wakes its long-polls, so a member on relay 1 sees at once what was sent
//! through relay 2. Likewise `bc.gone.<send digest>` after a delete clears the
//! other relays' capability caches.
//!
//! A send to a drop box (a mailbox whose record demands proof of work) is checked
//! in the sending request's own task, before anything is published: a refused one
//! stores nothing. The capability cache keeps the difficulty with the receive id,
//! so only a cache miss reads `bc.box` as well as `bc.snd`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use async_nats::ServerAddr;
use backchannel_core::envelope::Envelope;
use backchannel_core::frame::Delivery;
use backchannel_core::mailbox::MailboxId;
use backchannel_core::pow::ProvenWork;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use super::bundle::{decode_dated, encode_dated};
use super::{ClaimProof, Claims, HeldCommit, MailboxStore, Quota, Stats, StoreError};

const ENVELOPES: &str = "BC_ENVELOPES";
const META: &str = "BC_META";
/// When each mailbox was last used: `bc.use.<hex id>`, one empty message per mailbox,
/// replaced at each use; the stream's `max_age` is the idle lifetime, so JetStream drops the
/// record of a mailbox unused that long, and the idle sweep deletes a mailbox that has none
/// (and whose record is older than the lifetime: one made since has none yet).
const USES: &str = "BC_USES";
const USE_SUBJECTS: &str = "bc.use.*";
/// The KV bucket of nameplates, and its stream, as JetStream's KV API names them.
const NAMEPLATE_BUCKET: &str = "BC_NAMEPLATES";
const NAMEPLATES: &str = "KV_BC_NAMEPLATES";
const NAMEPLATE_SUBJECTS: &str = "$KV.BC_NAMEPLATES.>";
/// The KV bucket of bundles, and its stream.
const BUNDLE_BUCKET: &str = "BC_BUNDLES";
const BUNDLES: &str = "KV_BC_BUNDLES";
const BUNDLE_SUBJECTS: &str = "$KV.BC_BUNDLES.>";
/// The idle sweep lists every mailbox, so it runs at most this often (or an eighth of the
/// idle lifetime, if that is shorter).
const IDLE_SWEEP_EVERY: Duration = Duration::from_secs(3600);
const ENVELOPE_SUBJECTS: &str = "bc.env.*";
const NOTE_SUBJECTS: &str = "bc.new.*";
/// Notices that a mailbox was deleted: `bc.gone.<hex send digest>`.
const GONE_SUBJECTS: &str = "bc.gone.*";
const IDENTITY_SUBJECT: &str = "bc.tls";
/// The subject a readiness check writes (one message, replaced each time): a write that
/// only a quorum acknowledges ([`NatsStore::ready`]).
const READY_SUBJECT: &str = "bc.rdy";
/// The subject `relay rotate-key --store nats` writes (one message, replaced each time);
/// every relay of the cluster rotates its wire keys when its sequence grows.
const ROTATE_SUBJECT: &str = "bc.rot";
/// How long a readiness check waits for its write's acknowledgement.
const READY_TIMEOUT: Duration = Duration::from_millis(1500);
/// How often the relay pings its NATS node; two unanswered pings and it takes another.
const PING_INTERVAL: Duration = Duration::from_secs(2);
/// How long one NATS operation may take before the request fails with a storage error.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits, by default, for the cluster while it elects a stream leader
/// (after a node is lost): a failed operation is tried again, with pauses of 100 ms doubling
/// up to 1 s, as long as the next try can end within this (docs/reliability.md, "Failover";
/// `--nats-patience`).
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(20);
/// The pause before a publish that no stream answered is sent again.
const NO_RESPONDERS_PAUSE: Duration = Duration::from_millis(100);
/// Retried sends within this window are stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a starting relay waits for the cluster to accept its streams.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);
/// Compare-and-set attempts before a claim gives up.
const CAS_ATTEMPTS: usize = 32;
/// How long a relay trusts a capability -> mailbox lookup. A mailbox deleted through
/// another relay may take this long to refuse sends here; what is sent meanwhile
/// expires unread.
const SENDER_CACHE_TTL: Duration = Duration::from_secs(10);
/// Entries each in-memory map may hold before it is cleared (a few MiB at most).
const CACHE_MAX: usize = 1 << 16;

/// How to reach the cluster and how to lay out the streams.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:port`); the client fails over between them.
    pub urls: Vec<String>,
    /// Replicas of each stream; `None`: 3, or the cluster's size if smaller.
    pub replicas: Option<usize>,
    /// Envelope quotas.
    pub quota: Quota,
    /// Envelope lifetime.
    pub ttl: Duration,
    /// Most bytes of the record stream (`BC_META`: mailboxes, claims and the commits
    /// they hold): past it, writes are refused as "relay full" ([`DEFAULT_META_BYTES`]).
    pub meta_bytes: u64,
    /// How long a request waits for the cluster to answer again ([`DEFAULT_PATIENCE`]).
    pub patience: Duration,
    /// A mailbox unused this long is deleted ([`crate::Limits::idle_mailbox_lifetime`]).
    pub idle_lifetime: Duration,
}

/// The default bound of the record stream: room for the commits held by many thousands
/// of sequencers (each holds at most 17 of 512 KiB, the claim record's and 16 slots) and
/// millions of mailbox records. Anyone may make a mailbox and claim it, so without a
/// bound a client could fill the cluster's disk with held commits.
pub const DEFAULT_META_BYTES: u64 = 1024 * 1024 * 1024;

/// Where a send capability leads: the mailbox, and the bits of work each send
/// to it must prove (0: an ordinary mailbox).
#[derive(Debug, Clone, Copy)]
struct Target {
    id: MailboxId,
    pow_bits: u8,
}

type SenderCache = HashMap<[u8; 32], (Target, Instant)>;

/// Mailboxes and envelopes in a NATS JetStream cluster.
pub struct NatsStore {
    client: async_nats::Client,
    js: jetstream::Context,
    envelopes: stream::Stream,
    meta: stream::Stream,
    /// When each mailbox was last used ([`USES`]).
    uses: stream::Stream,
    /// Nameplates ([`NAMEPLATES`]).
    nameplates: stream::Stream,
    /// Bundles ([`BUNDLES`]).
    bundles: stream::Stream,
    /// When this relay last ran the idle sweep, and how often it may.
    idle_sweep: Mutex<Option<Instant>>,
    idle_every: Duration,
    listener: Mutex<Option<JoinHandle<()>>>,
    /// Send-capability digest -> receive id and difficulty, as read recently (see
    /// [`SENDER_CACHE_TTL`]).
    senders: Arc<Mutex<SenderCache>>,
    /// Sequence -> mailbox of envelopes this relay handed out, so their acks need no read.
    delivered: Mutex<HashMap<u64, MailboxId>>,
    /// How long a request waits for the cluster ([`NatsConfig::patience`]).
    patience: Duration,
}

impl std::fmt::Debug for NatsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NatsStore(..)")
    }
}

impl Drop for NatsStore {
    fn drop(&mut self) {
        if let Ok(mut l) = self.listener.lock() {
            if let Some(task) = l.take() {
                task.abort();
            }
        }
    }
}

/// What went wrong with the cluster. The messages are fixed text; the NATS
/// client's own error, which can name subjects (and so mailbox ids), is only a source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// No `--nats` URL was given.
    #[error("no --nats URL was given; give the cluster's servers with --nats")]
    NoUrl,
    /// A `--nats` URL does not parse.
    #[error("a --nats URL is not valid; write it as nats://host:port")]
    BadUrl(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// None of the servers could be reached.
    #[error("could not connect to any --nats server")]
    Unreachable,
    /// The client or the cluster reported an error.
    #[error("the NATS client reported an error")]
    Client(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The cluster answered a request with an error.
    #[error("the cluster refused the request")]
    Refused,
    /// No answer in time.
    #[error("no answer from the cluster in time")]
    Timeout,
    /// A publish was not acknowledged in time: no quorum of the stream's replicas has it.
    #[error("no acknowledgement from a quorum of the cluster in time")]
    NoQuorum,
    /// The relay identity stored in the cluster disappeared while it was being read.
    #[error("the relay identity vanished from the cluster")]
    IdentityVanished,
    /// A claim lost to concurrent claims every time it was tried.
    #[error("the claim kept losing to concurrent claims")]
    Contended,
    /// A compare-and-set write other than a claim's lost to concurrent writes every time.
    #[error("the record kept changing under concurrent writes")]
    Raced,
}

fn nats_error(doing: &'static str, e: NatsError) -> StoreError {
    StoreError::Nats {
        doing,
        source: Arc::new(e),
    }
}

fn client_error(doing: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    nats_error(doing, NatsError::Client(Box::new(e)))
}

fn hex(b: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(b)
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    data_encoding::HEXLOWER.decode(s.as_bytes()).ok()?.try_into().ok()
}

fn envelope_subject(id: &MailboxId) -> String {
    format!("bc.env.{}", hex(&id.0))
}

fn box_subject(id: &MailboxId) -> String {
    format!("bc.box.{}", hex(&id.0))
}

fn sender_subject(digest: &[u8; 32]) -> String {
    format!("bc.snd.{}", hex(digest))
}

fn claim_subject(id: &MailboxId) -> String {
    format!("bc.clm.{}", hex(&id.0))
}

/// Where the commit of `epoch` at sequencer `id` is kept after its grant: one subject per
/// slot ([`HeldCommit::slot`]), matched by the meta stream's `bc.clm.*`.
fn held_subject(id: &MailboxId, epoch: u64) -> String {
    format!("bc.clm.{}-{}", hex(&id.0), HeldCommit::slot(epoch))
}

/// A nameplate's subject in the KV bucket (its key is the number in decimal).
fn nameplate_subject(number: u32) -> String {
    format!("$KV.{NAMEPLATE_BUCKET}.{number}")
}

/// A bundle's subject in the KV bucket (its key is the name in hex).
fn bundle_subject(name: &[u8; 16]) -> String {
    format!("$KV.{BUNDLE_BUCKET}.{}", hex(name))
}

/// The header JetStream's KV API marks each message with: PUT, DEL or PURGE.
const KV_OPERATION: &str = "KV-Operation";

fn note_subject(id: &MailboxId) -> String {
    format!("bc.new.{}", hex(&id.0))
}

/// Runs `f` with the operation deadline.
async fn timed<T, E: std::error::Error + Send + Sync + 'static>(
    doing: &'static str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| client_error(doing, e)),
        Err(_) => Err(nats_error(doing, NatsError::Timeout)),
    }
}

/// The whole error text, sources included (JetStream's own description is a source):
/// only to tell a full stream from a failure, never logged.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A compare-and-set write lost: another writer got there first.
enum Cas {
    Done,
    Lost,
}

impl NatsStore {
    /// Connects to the cluster and creates the streams if they don't exist yet, the
    /// nameplate and bundle buckets with the default lifetimes
    /// ([`crate::Limits::nameplate_lifetime`], [`crate::Limits::bundle_lifetime`]).
    /// Must be called inside a Tokio runtime; the store's methods are futures on it.
    pub async fn connect(config: &NatsConfig) -> Result<Self, StoreError> {
        Self::connect_with_limits(config, &crate::Limits::DEFAULT).await
    }

    /// [`NatsStore::connect`], with nameplates kept for `limits.nameplate_lifetime` and
    /// bundles for `limits.bundle_lifetime` (the buckets' `max_age`, which follows the last
    /// relay to start).
    pub async fn connect_with_limits(config: &NatsConfig, limits: &crate::Limits) -> Result<Self, StoreError> {
        let nameplate_lifetime = limits.nameplate_lifetime;
        let client = connect_client(&config.urls).await?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(OP_TIMEOUT);
        // 3, or the cluster's size if it advertises fewer servers. A cluster that
        // advertises none (no_advertise) gets 3, and stream creation says so if it is
        // smaller: never a silent single replica.
        let replicas = config
            .replicas
            .unwrap_or_else(|| match client.server_info().connect_urls.len() {
                0 => 3,
                n => n.min(3),
            });
        let envelopes = ensure_stream(
            &js,
            stream::Config {
                name: ENVELOPES.into(),
                subjects: vec![ENVELOPE_SUBJECTS.into()],
                storage: stream::StorageType::File,
                num_replicas: replicas,
                retention: stream::RetentionPolicy::Limits,
                discard: stream::DiscardPolicy::New,
                discard_new_per_subject: true,
                max_messages_per_subject: i64::from(config.quota.per_mailbox),
                max_messages: i64::try_from(config.quota.total).unwrap_or(i64::MAX),
                max_age: config.ttl,
                duplicate_window: DUPLICATE_WINDOW,
                allow_direct: false,
                ..Default::default()
            },
        )
        .await?;
        let meta = ensure_stream(
            &js,
            stream::Config {
                name: META.into(),
                subjects: vec![
                    "bc.box.*".into(),
                    "bc.snd.*".into(),
                    "bc.clm.*".into(),
                    IDENTITY_SUBJECT.into(),
                    READY_SUBJECT.into(),
                    ROTATE_SUBJECT.into(),
                ],
                storage: stream::StorageType::File,
                num_replicas: replicas,
                retention: stream::RetentionPolicy::Limits,
                max_messages_per_subject: 1,
                // Refuse when full (never drop another record); a record replacing its
                // subject's last one is refused too when the stream is at its bound.
                discard: stream::DiscardPolicy::New,
                max_bytes: i64::try_from(config.meta_bytes).unwrap_or(i64::MAX),
                allow_direct: false,
                ..Default::default()
            },
        )
        .await?;
        // A cluster written by a relay before idle expiry has mailboxes but no use records:
        // each is marked used now, once, when the stream is made.
        // (A cluster that cannot answer now is taken as one without: marking is harmless.)
        let uses_existed = tokio::time::timeout(OP_TIMEOUT, js.get_stream(USES))
            .await
            .is_ok_and(|r| r.is_ok());
        let uses = ensure_stream(
            &js,
            stream::Config {
                name: USES.into(),
                subjects: vec![USE_SUBJECTS.into()],
                storage: stream::StorageType::File,
                num_replicas: replicas,
                retention: stream::RetentionPolicy::Limits,
                max_messages_per_subject: 1,
                max_age: config.idle_lifetime,
                allow_direct: false,
                ..Default::default()
            },
        )
        .await?;
        // A KV bucket as JetStream's KV API makes one (so `nats kv` reads it), but read from
        // the stream leader, as every other record is.
        let nameplates = ensure_stream(
            &js,
            stream::Config {
                name: NAMEPLATES.into(),
                description: Some("backchannel nameplates".into()),
                subjects: vec![NAMEPLATE_SUBJECTS.into()],
                storage: stream::StorageType::File,
                num_replicas: replicas,
                retention: stream::RetentionPolicy::Limits,
                max_messages_per_subject: 1,
                max_age: nameplate_lifetime.max(Duration::from_secs(1)),
                discard: stream::DiscardPolicy::New,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: false,
                ..Default::default()
            },
        )
        .await?;
        let bundles = ensure_stream(
            &js,
            stream::Config {
                name: BUNDLES.into(),
                description: Some("backchannel bundles".into()),
                subjects: vec![BUNDLE_SUBJECTS.into()],
                storage: stream::StorageType::File,
                num_replicas: replicas,
                retention: stream::RetentionPolicy::Limits,
                max_messages_per_subject: 1,
                max_age: limits.bundle_lifetime.max(Duration::from_secs(1)),
                // Anyone may publish: bounded as the record stream is, and refused when full.
                max_bytes: i64::try_from(config.meta_bytes).unwrap_or(i64::MAX),
                discard: stream::DiscardPolicy::New,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: false,
                ..Default::default()
            },
        )
        .await?;
        let store = Self {
            client,
            js,
            envelopes,
            meta,
            uses,
            nameplates,
            bundles,
            idle_sweep: Mutex::new(None),
            idle_every: (config.idle_lifetime / 8).min(IDLE_SWEEP_EVERY),
            listener: Mutex::new(None),
            senders: Arc::new(Mutex::new(HashMap::new())),
            delivered: Mutex::new(HashMap::new()),
            patience: config.patience,
        };
        if !uses_existed {
            let boxes = store.mailboxes().await?;
            store.mark_used(&boxes).await?;
            tracing::info!(mailboxes = boxes.len(), "marked every mailbox used, for the idle sweep");
        }
        Ok(store)
    }

    /// Every mailbox the cluster holds (by its record's subject).
    async fn mailboxes(&self) -> Result<Vec<MailboxId>, StoreError> {
        let meta = self.meta.clone();
        timed("listing mailboxes", async move {
            let mut subjects = meta.info_with_subjects("bc.box.*").await?;
            let mut out = Vec::new();
            while let Some(s) = subjects.next().await {
                let (subject, _) = s?;
                if let Some(id) = subject.strip_prefix("bc.box.").and_then(unhex32) {
                    out.push(MailboxId(id));
                }
            }
            Ok::<_, async_nats::jetstream::stream::InfoError>(out)
        })
        .await
    }

    /// Marks mailboxes used now: their use records are written again (all published, then
    /// all acknowledged).
    async fn mark_used(&self, ids: &[MailboxId]) -> Result<(), StoreError> {
        const DOING: &str = "marking mailboxes used";
        for chunk in ids.chunks(256) {
            let mut acks = Vec::with_capacity(chunk.len());
            for id in chunk {
                let subject = format!("bc.use.{}", hex(&id.0));
                acks.push(timed(DOING, self.js.send_publish(subject, PublishMessage::build())).await?);
            }
            for ack in acks {
                match tokio::time::timeout(OP_TIMEOUT, ack).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(client_error(DOING, e)),
                    Err(_) => return Err(nats_error(DOING, NatsError::Timeout)),
                }
            }
        }
        Ok(())
    }

    /// Deletes the mailboxes that have no use record (unused for the idle lifetime) and
    /// whose own record was written before `before` (one made since has none yet). Runs at
    /// most every [`IDLE_SWEEP_EVERY`] on this relay: it lists every mailbox.
    async fn do_expire_idle(&self, before: u64) -> Result<u64, StoreError> {
        {
            let mut last = self.idle_sweep.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < self.idle_every) {
                return Ok(0);
            }
            *last = Some(Instant::now());
        }
        let uses = self.uses.clone();
        let used: std::collections::HashSet<[u8; 32]> = timed("listing used mailboxes", async move {
            let mut subjects = uses.info_with_subjects(USE_SUBJECTS).await?;
            let mut out = std::collections::HashSet::new();
            while let Some(s) = subjects.next().await {
                let (subject, _) = s?;
                if let Some(id) = subject.strip_prefix("bc.use.").and_then(unhex32) {
                    out.insert(id);
                }
            }
            Ok::<_, async_nats::jetstream::stream::InfoError>(out)
        })
        .await?;
        let mut gone = 0;
        for id in self.mailboxes().await? {
            if used.contains(&id.0) {
                continue;
            }
            let made =
                match tokio::time::timeout(OP_TIMEOUT, self.meta.get_last_raw_message_by_subject(&box_subject(&id)))
                    .await
                {
                    Ok(Ok(m)) => u64::try_from(m.time.unix_timestamp()).unwrap_or(0),
                    // Deleted meanwhile, or unreadable now: the next sweep sees it again.
                    _ => continue,
                };
            if made < before {
                self.do_delete(id).await?;
                gone += 1;
            }
        }
        Ok(gone)
    }

    /// The relay identity kept in the cluster: the one stored there, or `mine` stored as
    /// it if there is none yet (the first relay to start wins).
    pub async fn shared_identity(&self, mine: Zeroizing<Vec<u8>>) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        patiently(self.patience, |_| self.identity_or(&mine)).await
    }

    /// The sequence of the latest key rotation asked of the cluster's relays (0: none).
    pub async fn rotation_asked(&self) -> Result<u64, StoreError> {
        Ok(self.latest(ROTATE_SUBJECT).await?.map_or(0, |(seq, _)| seq))
    }

    /// One try of [`Self::shared_identity`] (tried again, a value stored by the earlier try
    /// is read back as the cluster's).
    async fn identity_or(&self, mine: &Zeroizing<Vec<u8>>) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        if let Some((_, v)) = self.latest(IDENTITY_SUBJECT).await? {
            return Ok(Zeroizing::new(v.to_vec()));
        }
        match self.put_if(IDENTITY_SUBJECT, Bytes::copy_from_slice(mine), 0).await? {
            Cas::Done => Ok(mine.clone()),
            Cas::Lost => match self.latest(IDENTITY_SUBJECT).await? {
                Some((_, v)) => Ok(Zeroizing::new(v.to_vec())),
                None => Err(nats_error("reading the relay identity", NatsError::IdentityVanished)),
            },
        }
    }

    /// The latest value on a meta subject and its sequence, from the stream leader.
    async fn latest(&self, subject: &str) -> Result<Option<(u64, Bytes)>, StoreError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match tokio::time::timeout(OP_TIMEOUT, self.meta.get_last_raw_message_by_subject(subject)).await {
            Ok(Ok(m)) => Ok(Some((m.sequence, m.payload))),
            Ok(Err(e)) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Ok(Err(e)) => Err(client_error("reading a record", e)),
            Err(_) => Err(nats_error("reading a record", NatsError::Timeout)),
        }
    }

    /// The last message on a subject of the KV bucket `bucket`, from the stream leader: its
    /// sequence, and its value if it is one (not a purge or delete marker).
    async fn kv_latest(
        bucket: &stream::Stream,
        subject: &str,
        doing: &'static str,
    ) -> Result<Option<(u64, Option<Bytes>)>, StoreError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let m = match tokio::time::timeout(OP_TIMEOUT, bucket.get_last_raw_message_by_subject(subject)).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Ok(Err(e)) => return Err(client_error(doing, e)),
            Err(_) => return Err(nats_error(doing, NatsError::Timeout)),
        };
        // A KV delete or purge, or a marker JetStream left: no value.
        let marker = m.headers.get(KV_OPERATION).is_some_and(|op| op.as_str() != "PUT")
            || m.headers.get(async_nats::header::NATS_MARKER_REASON).is_some();
        Ok(Some((m.sequence, (!marker).then_some(m.payload))))
    }

    /// The last message on a nameplate's subject, from the stream leader: its sequence, and
    /// its expiry and record if it is a nameplate (not a purge marker).
    async fn nameplate_latest(&self, subject: &str) -> Result<Option<(u64, Option<(u64, Bytes)>)>, StoreError> {
        let Some((seq, value)) = Self::kv_latest(&self.nameplates, subject, "reading a nameplate").await? else {
            return Ok(None);
        };
        let Some(value) = value else {
            return Ok(Some((seq, None)));
        };
        let (expires, _) = decode_dated(&value).ok_or_else(|| corrupt("nameplate"))?;
        Ok(Some((seq, Some((expires, value.slice(8..))))))
    }

    /// Publishes a bundle ([`MailboxStore::bundle_publish`]): a compare-and-set write of
    /// what [`super::bundle::judge`] makes of the value read, read again after a lost race.
    async fn do_bundle_publish(
        &self,
        name: &[u8; 16],
        bundle: &[u8],
        expires_at: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        const DOING: &str = "publishing a bundle";
        let subject = bundle_subject(name);
        for _ in 0..CAS_ATTEMPTS {
            let (expected, stored) = Self::kv_latest(&self.bundles, &subject, DOING)
                .await?
                .unwrap_or((0, None));
            let at = super::bundle::judge(stored.as_deref(), bundle, expires_at, now)?;
            let msg = PublishMessage::build()
                .payload(Bytes::from(encode_dated(at, bundle)))
                .header(KV_OPERATION, "PUT")
                .expected_last_subject_sequence(expected);
            match self.publish(DOING, &subject, msg).await? {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => continue,
                Err(e) => return Err(full_or(DOING, e)),
            }
        }
        Err(nats_error(DOING, NatsError::Raced))
    }

    /// The bundle under `name` ([`MailboxStore::bundle_get`]).
    async fn do_bundle_get(&self, name: &[u8; 16], now: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some((_, Some(value))) = Self::kv_latest(&self.bundles, &bundle_subject(name), "reading a bundle").await?
        else {
            return Ok(None);
        };
        // Expired (and not yet dropped by the stream's max_age) or damaged: none.
        Ok(decode_dated(&value)
            .filter(|(at, _)| super::bundle::live(*at, now))
            .map(|(_, bundle)| bundle.to_vec()))
    }

    async fn do_nameplate_create(&self, record: &[u8], expires_at: u64, candidates: &[u32]) -> Result<u32, StoreError> {
        let now = crate::now_secs();
        for number in candidates {
            let subject = nameplate_subject(*number);
            // Free: never used, taken (a purge marker), or expired (and not yet dropped by
            // the stream's max_age). The write names what it saw, so a relay that took the
            // number meanwhile wins and this one tries the next.
            let expected = match self.nameplate_latest(&subject).await? {
                None => 0,
                Some((seq, None)) => seq,
                Some((seq, Some((at, _)))) if at < now => seq,
                Some(_) => continue,
            };
            let msg = PublishMessage::build()
                .payload(Bytes::from(encode_dated(expires_at, record)))
                .header(KV_OPERATION, "PUT")
                .expected_last_subject_sequence(expected);
            match self.publish("allocating a nameplate", &subject, msg).await? {
                Ok(_) => return Ok(*number),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => continue,
                Err(e) => return Err(full_or("allocating a nameplate", e)),
            }
        }
        Err(StoreError::RelayFull)
    }

    async fn do_nameplate_take(&self, number: u32, now: u64) -> Result<Option<Vec<u8>>, StoreError> {
        const DOING: &str = "taking a nameplate";
        let subject = nameplate_subject(number);
        let Some((seq, Some((expires, record)))) = self.nameplate_latest(&subject).await? else {
            return Ok(None);
        };
        // A KV purge (the record's bytes go from the stream), only if the nameplate is still
        // the message read: of racing takes, one purge names the right sequence.
        let msg = PublishMessage::build()
            .header(KV_OPERATION, "PURGE")
            .header(async_nats::header::NATS_ROLLUP, "sub")
            .expected_last_subject_sequence(seq);
        match self.publish(DOING, &subject, msg).await? {
            Ok(_) if expires >= now => Ok(Some(record.to_vec())),
            // Expired: gone, and answered as gone.
            Ok(_) => Ok(None),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(client_error(DOING, e)),
        }
    }

    /// Writes `value` on `subject` if its last sequence is `expected` (0: no value yet).
    async fn put_if(&self, subject: &str, value: Bytes, expected: u64) -> Result<Cas, StoreError> {
        let msg = PublishMessage::build()
            .payload(value)
            .expected_last_subject_sequence(expected);
        match self.publish("writing a record", subject, msg).await? {
            Ok(_) => Ok(Cas::Done),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(Cas::Lost),
            Err(e) => Err(full_or("writing a record", e)),
        }
    }

    /// Publishes `msg` on `subject` and waits for the stream's acknowledgement: `Ok` with
    /// the stream's answer, or a storage error if there was none in time.
    ///
    /// A publish that no stream answered (no responders, which async-nats reports as
    /// `StreamNotFound`) reached nobody and stored nothing, so it is sent again until
    /// [`OP_TIMEOUT`]. That is a stream whose leader is being elected, or whose leader's
    /// interest has not yet reached the node this relay talks to: both happen for a
    /// moment after a cluster or a stream starts, and after a node is lost.
    async fn publish(
        &self,
        doing: &'static str,
        subject: &str,
        msg: PublishMessage,
    ) -> Result<Result<PublishAck, PublishError>, StoreError> {
        let deadline = Instant::now() + OP_TIMEOUT;
        loop {
            let ack = timed(doing, self.js.send_publish(subject.to_string(), msg.clone())).await?;
            match tokio::time::timeout(OP_TIMEOUT, ack).await {
                Ok(Err(e)) if e.kind() == PublishErrorKind::StreamNotFound && Instant::now() < deadline => {
                    tokio::time::sleep(NO_RESPONDERS_PAUSE).await;
                }
                Ok(answer) => return Ok(answer),
                Err(_) => return Err(nats_error(doing, NatsError::NoQuorum)),
            }
        }
    }

    async fn purge(&self, subject: &str) -> Result<(), StoreError> {
        timed("deleting", async {
            self.meta.purge().filter(subject).await.map(|_| ())
        })
        .await
    }

    /// The mailbox behind a send capability (whose digest is `digest`).
    async fn target(&self, digest: &[u8; 32]) -> Result<Option<Target>, StoreError> {
        if let Ok(cache) = self.senders.lock() {
            if let Some((target, at)) = cache.get(digest) {
                if at.elapsed() < SENDER_CACHE_TTL {
                    return Ok(Some(*target));
                }
            }
        }
        let id = match self.latest(&sender_subject(digest)).await? {
            Some((_, v)) => MailboxId(v.as_ref().try_into().map_err(|_| corrupt("sender record"))?),
            None => return Ok(None),
        };
        // The mailbox record is written before the sender record and purged after it:
        // a sender record without one is a mailbox being deleted.
        let pow_bits = match self.latest(&box_subject(&id)).await? {
            Some((_, v)) if v.len() >= 64 => v.get(64).copied().unwrap_or(0),
            Some(_) => return Err(corrupt("mailbox record")),
            None => return Ok(None),
        };
        let target = Target { id, pow_bits };
        if let Ok(mut cache) = self.senders.lock() {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(*digest, (target, Instant::now()));
        }
        Ok(Some(target))
    }

    fn forget_sender(&self, digest: &[u8; 32]) {
        if let Ok(mut cache) = self.senders.lock() {
            cache.remove(digest);
        }
    }

    async fn do_create(
        &self,
        id: MailboxId,
        recipient: [u8; 32],
        digest: [u8; 32],
        pow_bits: u8,
        again: Again,
    ) -> Result<(), StoreError> {
        let mut record = Vec::with_capacity(65);
        record.extend_from_slice(&recipient);
        record.extend_from_slice(&digest);
        record.push(pow_bits);
        // Tried again, a record already there that is this very one was written by the
        // earlier try (whose answer was lost to a failover): the creation goes on. (A client
        // that sends the same creation twice is told the mailbox exists, as by the embedded
        // store.)
        if let Cas::Lost = self.put_if(&box_subject(&id), Bytes::from(record.clone()), 0).await? {
            if !again.0
                || self
                    .latest(&box_subject(&id))
                    .await?
                    .is_none_or(|(_, v)| v.as_ref() != record)
            {
                return Err(StoreError::MailboxExists);
            }
        }
        match self
            .put_if(&sender_subject(&digest), Bytes::copy_from_slice(&id.0), 0)
            .await
        {
            Ok(Cas::Done) => Ok(()),
            Ok(Cas::Lost)
                if again.0
                    && self
                        .latest(&sender_subject(&digest))
                        .await?
                        .is_some_and(|(_, v)| v.as_ref() == id.0) =>
            {
                Ok(())
            }
            Ok(Cas::Lost) => {
                self.purge(&box_subject(&id)).await?;
                Err(StoreError::MailboxExists)
            }
            Err(e) => {
                let _ = self.purge(&box_subject(&id)).await;
                Err(e)
            }
        }
    }

    async fn do_send(
        &self,
        send: [u8; 32],
        envelope: Envelope,
        work: ProvenWork,
    ) -> Result<(MailboxId, u64), StoreError> {
        let digest: [u8; 32] = Sha256::digest(send).into();
        let Some(Target { id, pow_bits }) = self.target(&digest).await? else {
            return Err(StoreError::NoSuchMailbox);
        };
        // Checked before anything is published; the caller hashed the proof in its own
        // task (the relays' tasks run in parallel).
        if !work.meets(pow_bits) {
            return Err(StoreError::WorkRequired);
        }
        // The same envelope to the same mailbox is the same send: a retry.
        let mut h = Sha256::new();
        h.update(b"backchannel nats msg id");
        h.update(id.0);
        h.update(envelope.as_bytes());
        let msg_id = hex(&h.finalize()[..16]);
        let msg = PublishMessage::build()
            .payload(Bytes::copy_from_slice(envelope.as_bytes()))
            .message_id(msg_id);
        let seq = match self.publish("storing an envelope", &envelope_subject(&id), msg).await? {
            Ok(a) => a.sequence,
            Err(e) if describe(&e).contains("per subject") => return Err(StoreError::MailboxFull),
            Err(e) => return Err(full_or("storing an envelope", e)),
        };
        // Wake long-polls on every relay (best effort: they also poll).
        let _ = self.client.publish(note_subject(&id), Bytes::new()).await;
        Ok((id, seq))
    }

    async fn do_fetch(&self, ids: &[MailboxId], max: usize) -> Result<Vec<Delivery>, StoreError> {
        use async_nats::jetstream::stream::RawMessageErrorKind;
        let mut out = Vec::new();
        for id in ids {
            let subject = envelope_subject(id);
            let mut from = 1;
            while out.len() < max {
                let get = self
                    .envelopes
                    .raw_message_builder()
                    .sequence(from)
                    .next_by_subject(&subject);
                let m = match tokio::time::timeout(OP_TIMEOUT, get.send()).await {
                    Ok(Ok(m)) => m,
                    Ok(Err(e)) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
                    Ok(Err(e)) => return Err(client_error("fetching envelopes", e)),
                    Err(_) => return Err(nats_error("fetching envelopes", NatsError::Timeout)),
                };
                if m.subject.as_str() != subject {
                    break;
                }
                if let Ok(mut d) = self.delivered.lock() {
                    if d.len() >= CACHE_MAX {
                        d.clear();
                    }
                    d.insert(m.sequence, *id);
                }
                out.push(Delivery {
                    mailbox: *id,
                    seq: m.sequence,
                    envelope: Envelope::from_bytes(&m.payload).map_err(|_| corrupt("envelope"))?,
                });
                from = m.sequence.saturating_add(1);
            }
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// The commit held for `epoch` at the sequencer behind `send`, for a member with its key.
    async fn do_held_commit(&self, send: [u8; 32], epoch: u64, key: [u8; 32]) -> Result<Arc<[u8]>, StoreError> {
        let id = self.mailbox_of(send).await?;
        let (claims, latest) = match self.latest(&claim_subject(&id)).await? {
            Some((_, v)) => decode_claims(&v)?,
            None => (Claims::NEW, None),
        };
        let held = match latest.filter(|h| h.epoch == epoch) {
            Some(h) => Some(h),
            None => match self.latest(&held_subject(&id, epoch)).await? {
                Some((_, v)) => Some(HeldCommit::decode(&v)?),
                None => None,
            },
        };
        HeldCommit::judge_fetch(&claims, held.as_ref(), epoch, &key)
    }

    /// Deletes one envelope if it is in mailbox `id`.
    async fn do_ack(&self, id: MailboxId, seq: u64) -> Result<(), StoreError> {
        use async_nats::jetstream::stream::RawMessageErrorKind;
        let handed_out = self.delivered.lock().ok().and_then(|mut d| d.remove(&seq));
        let mine = match handed_out {
            Some(owner) => owner == id,
            // Not fetched through this relay: read which mailbox it is in.
            None => match tokio::time::timeout(OP_TIMEOUT, self.envelopes.get_raw_message(seq)).await {
                Ok(Ok(m)) => m.subject.as_str() == envelope_subject(&id),
                Ok(Err(e)) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(()),
                Ok(Err(e)) => return Err(client_error("acknowledging an envelope", e)),
                Err(_) => return Err(nats_error("acknowledging an envelope", NatsError::Timeout)),
            },
        };
        if !mine {
            // Not this mailbox's: as if absent.
            return Ok(());
        }
        self.remove(seq).await
    }

    /// Deletes one envelope. Not JetStream's secure erase (`no_erase: false`), which
    /// rewrites the message on every replica and here ran at under 200 deletes/s
    /// against 5,000 without it; the replicas' raft logs keep a copy either way
    /// until they are compacted (README, "What the cluster holds").
    async fn remove(&self, seq: u64) -> Result<(), StoreError> {
        let request = serde_json::json!({ "seq": seq, "no_erase": true });
        let subject = format!("STREAM.MSG.DELETE.{ENVELOPES}");
        let answer: serde_json::Value = timed("deleting", self.js.request(subject, &request)).await?;
        if answer.get("success").and_then(serde_json::Value::as_bool) == Some(true) {
            return Ok(());
        }
        match answer.get("error") {
            // Deleted meanwhile (a second ack, or expiry): gone is what was asked.
            Some(e) if e.get("err_code").and_then(serde_json::Value::as_u64) == Some(10037) => Ok(()),
            Some(e) if e.to_string().contains("no message found") => Ok(()),
            Some(_) | None => Err(nats_error("deleting an envelope", NatsError::Refused)),
        }
    }

    async fn do_delete(&self, id: MailboxId) -> Result<(), StoreError> {
        // First make the mailbox unreachable for senders (here and, by the notice, at the
        // other relays), then remove its records, then its envelopes: a send racing the
        // delete finds no mailbox rather than landing in a purged one.
        if let Some((_, v)) = self.latest(&box_subject(&id)).await? {
            if let Some(digest) = v.get(32..64).and_then(|d| <[u8; 32]>::try_from(d).ok()) {
                self.purge(&sender_subject(&digest)).await?;
                self.forget_sender(&digest);
                // Best effort; a relay that misses it trusts its cache for at most the TTL.
                let _ = self
                    .client
                    .publish(format!("bc.gone.{}", hex(&digest)), Bytes::new())
                    .await;
            }
        }
        self.purge(&box_subject(&id)).await?;
        // Only a sequencer (a mailbox with claims) has commits in slots.
        if self.latest(&claim_subject(&id)).await?.is_some() {
            for epoch in 0..HeldCommit::KEPT {
                self.purge(&held_subject(&id, epoch)).await?;
            }
        }
        self.purge(&claim_subject(&id)).await?;
        timed("deleting", async {
            self.envelopes.purge().filter(envelope_subject(&id)).await.map(|_| ())
        })
        .await?;
        if let Ok(mut d) = self.delivered.lock() {
            d.retain(|_, owner| *owner != id);
        }
        Ok(())
    }

    async fn do_claim(
        &self,
        send: [u8; 32],
        epoch: u64,
        proof: ClaimProof,
        commit: Option<Arc<[u8]>>,
    ) -> Result<(), StoreError> {
        let id = self.mailbox_of(send).await?;
        let subject = claim_subject(&id);
        let held = HeldCommit::of_grant(epoch, &proof, commit);
        for _ in 0..CAS_ATTEMPTS {
            let (seq, (claims, latest)) = match self.latest(&subject).await? {
                Some((seq, v)) => (seq, decode_claims(&v)?),
                None => (0, (Claims::NEW, None)),
            };
            let Some(claims) = claims.judge(epoch, &proof)? else {
                // The winner's claim again: the commit the grant holds (never this request's,
                // which any member of the next epoch could send) goes to its slot again, in
                // case a relay died between the grant and that write.
                return self.keep_held(&id, latest.filter(|h| h.epoch == epoch).as_ref()).await;
            };
            // The grant and its commit in one record: never one without the other. The
            // latest epoch's commit is read there; earlier ones from their slots.
            let record = encode_claims(&claims, held.as_ref());
            match self.put_if(&subject, Bytes::from(record), seq).await? {
                Cas::Done => {
                    // Best effort: the sequencer's members open it too.
                    let _ = self.mark_used(&[id]).await;
                    return self.keep_held(&id, held.as_ref()).await;
                }
                Cas::Lost => continue,
            }
        }
        Err(nats_error("claiming an epoch", NatsError::Contended))
    }

    /// The mailbox a send capability leads to (a sequencer, for claims and held commits).
    async fn mailbox_of(&self, send: [u8; 32]) -> Result<MailboxId, StoreError> {
        let digest: [u8; 32] = Sha256::digest(send).into();
        match self.target(&digest).await? {
            Some(Target { id, .. }) => Ok(id),
            None => Err(StoreError::NoSuchMailbox),
        }
    }

    /// Writes a granted commit to its epoch's slot (only a winner does, after its grant).
    async fn keep_held(&self, id: &MailboxId, held: Option<&HeldCommit>) -> Result<(), StoreError> {
        let Some(h) = held else {
            return Ok(());
        };
        let msg = PublishMessage::build().payload(Bytes::from(h.encode()));
        match self
            .publish("keeping a commit", &held_subject(id, h.epoch), msg)
            .await?
        {
            Ok(_) => Ok(()),
            Err(e) => Err(full_or("keeping a commit", e)),
        }
    }

    async fn do_stats(&self) -> Result<Stats, StoreError> {
        let mut envelopes = self.envelopes.clone();
        let env = timed("reading counts", async {
            envelopes.info().await.map(|i| i.state.messages)
        })
        .await?;
        let meta = self.meta.clone();
        let mailboxes = timed("reading counts", async {
            let mut subjects = meta.info_with_subjects("bc.box.*").await?;
            let mut n = 0u64;
            while let Some(s) = subjects.next().await {
                s?;
                n += 1;
            }
            Ok::<u64, async_nats::jetstream::stream::InfoError>(n)
        })
        .await?;
        Ok(Stats {
            mailboxes,
            envelopes: env,
        })
    }
}

/// Bit 63 of the claim record's next epoch: the claims are locked. The record keeps the
/// layout of version 1 (next epoch (u64) ‖ last token or lock (32)), frozen because relays
/// of one cluster may run different releases during a rolling upgrade: a relay of an
/// earlier release reads a locked record as a next epoch no client reaches, so it grants
/// nothing there (a claim of an earlier client is answered EpochConflict) and never
/// misreads it as a grant. [`Claims::judge`] refuses epochs that would reach this bit.
const LOCKED: u64 = 1 << 63;

/// The claim record: the 40 bytes above, then the commit held with the grant, if any
/// ([`HeldCommit::encode`]). A relay of an earlier release reads a record with a commit
/// as corrupt and answers its claims `Storage`: it never misreads one (the protocol
/// version that brought held commits already has every relay of a cluster upgraded
/// together, docs/deployment.md).
fn encode_claims(c: &Claims, held: Option<&HeldCommit>) -> Vec<u8> {
    let held = held.map(HeldCommit::encode).unwrap_or_default();
    let mut v = Vec::with_capacity(40 + held.len());
    let next = c.next_epoch | if c.locked { LOCKED } else { 0 };
    v.extend_from_slice(&next.to_be_bytes());
    v.extend_from_slice(&c.last);
    v.extend_from_slice(&held);
    v
}

fn decode_claims(v: &[u8]) -> Result<(Claims, Option<HeldCommit>), StoreError> {
    const WHAT: &str = "claim record";
    let held = match v.get(40..) {
        Some([]) => None,
        Some(rest) => Some(HeldCommit::decode(rest)?),
        None => return Err(corrupt(WHAT)),
    };
    let v = v.get(..40).ok_or_else(|| corrupt(WHAT))?;
    let next = v
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(WHAT))?;
    let last: [u8; 32] = v
        .get(8..40)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| corrupt(WHAT))?;
    Ok((
        Claims {
            next_epoch: next & !LOCKED,
            last,
            locked: next & LOCKED != 0,
        },
        held,
    ))
}

/// A refused publish: "relay full" when a stream is at its bound, the client's error otherwise.
fn full_or(doing: &'static str, e: PublishError) -> StoreError {
    let text = describe(&e);
    if text.contains("maximum messages") || text.contains("maximum bytes") {
        StoreError::RelayFull
    } else {
        client_error(doing, e)
    }
}

fn corrupt(what: &'static str) -> StoreError {
    StoreError::corrupt(what)
}

async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> Result<stream::Stream, StoreError> {
    let name = config.name.clone();
    // A cluster that just started may not place a replicated stream yet, and two relays
    // starting together may both try to create it (the loser finds it): keep trying for
    // a while before giving up.
    let deadline = tokio::time::Instant::now() + STARTUP_PATIENCE;
    loop {
        match timed("opening a stream", js.get_or_create_stream(config.clone())).await {
            Ok(mut s) => {
                let have = &s.cached_info().config;
                let mut subjects = have.subjects.clone();
                subjects.sort();
                let mut wanted = config.subjects.clone();
                wanted.sort();
                // The idle lifetime of the use records, and the nameplate and bundle
                // lifetimes, follow the relay's flags; the other streams' ages are left as
                // they were made.
                let same_age =
                    ![USES, NAMEPLATES, BUNDLES].contains(&config.name.as_str()) || have.max_age == config.max_age;
                if have.max_bytes == config.max_bytes
                    && have.discard == config.discard
                    && subjects == wanted
                    && same_age
                {
                    return Ok(s);
                }
                // Made by an earlier release (the record stream had no bound, or no
                // readiness subject), or with another bound: this relay's applies from now on.
                timed("updating a stream", js.update_stream(config.clone())).await?;
                s.info().await.map_err(|e| client_error("updating a stream", e))?;
                return Ok(s);
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                // The error's fixed description only (never the client's text).
                tracing::warn!(stream = %name, error = %e, "could not open the stream yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether an operation is being tried again by [`patiently`] (its earlier try may have
/// written before its answer was lost).
#[derive(Clone, Copy)]
struct Again(bool);

/// Whether a store error may pass once the cluster has a leader again: no answer in time,
/// no quorum, or an error the client or cluster reported (no responders, a leader gone).
fn transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Nats { source, .. }
        if matches!(**source, NatsError::Timeout | NatsError::NoQuorum | NatsError::Client(_) | NatsError::Refused))
}

/// Runs `op` until it gives an answer that is not [`transient`], or until another try could
/// not end within `patience` (and in any case for at most `patience` and one [`OP_TIMEOUT`]):
/// a request waits through a leader election rather than fail. Every operation of the store may run twice: sends carry a message id (the
/// stream stores one), creations and claims recognise their own earlier write, and reads,
/// acknowledgements and deletions give the same result again.
async fn patiently<T, Fut>(patience: Duration, op: impl Fn(Again) -> Fut) -> Result<T, StoreError>
where
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(100);
    let mut again = Again(false);
    let tries = async {
        loop {
            match op(again).await {
                Err(e) if transient(&e) && started.elapsed() + pause + OP_TIMEOUT <= patience => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    again = Again(true);
                }
                answer => return answer,
            }
        }
    };
    // One try is several NATS requests, each with its own deadline: the whole is bounded
    // too (25 s by default), so that the client hears the refusal before it stops waiting
    // for an answer (30 s).
    match tokio::time::timeout(patience + OP_TIMEOUT, tries).await {
        Ok(answer) => answer,
        Err(_) => Err(nats_error("waiting for the cluster", NatsError::Timeout)),
    }
}

impl MailboxStore for NatsStore {
    async fn create(
        &self,
        id: MailboxId,
        recipient_key: [u8; 32],
        send_digest: [u8; 32],
        pow_bits: u8,
    ) -> Result<(), StoreError> {
        patiently(self.patience, |again| {
            self.do_create(id, recipient_key, send_digest, pow_bits, again)
        })
        .await
    }

    async fn send(
        &self,
        send: [u8; 32],
        envelope: Envelope,
        _expires_at: u64,
        work: ProvenWork,
    ) -> Result<(MailboxId, u64), StoreError> {
        // Expiry is the stream's max_age, the same for every envelope.
        patiently(self.patience, |_| self.do_send(send, envelope.clone(), work)).await
    }

    async fn recipient_key(&self, id: MailboxId) -> Result<Option<[u8; 32]>, StoreError> {
        let subject = box_subject(&id);
        let record = patiently(self.patience, |_| self.latest(&subject)).await?;
        Ok(match record {
            Some((_, v)) => Some(
                v.get(..32)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| corrupt("mailbox record"))?,
            ),
            None => None,
        })
    }

    async fn fetch(&self, ids: &[MailboxId], max: usize) -> Result<Vec<Delivery>, StoreError> {
        patiently(self.patience, |_| self.do_fetch(ids, max)).await
    }

    async fn ack(&self, id: MailboxId, seq: u64) -> Result<(), StoreError> {
        patiently(self.patience, |_| self.do_ack(id, seq)).await
    }

    async fn delete(&self, id: MailboxId) -> Result<(), StoreError> {
        patiently(self.patience, |_| self.do_delete(id)).await
    }

    async fn claim(
        &self,
        send: [u8; 32],
        epoch: u64,
        proof: ClaimProof,
        commit: Option<Arc<[u8]>>,
    ) -> Result<(), StoreError> {
        patiently(self.patience, |_| self.do_claim(send, epoch, proof, commit.clone())).await
    }

    async fn held_commit(&self, send: [u8; 32], epoch: u64, key: [u8; 32]) -> Result<Arc<[u8]>, StoreError> {
        patiently(self.patience, |_| self.do_held_commit(send, epoch, key)).await
    }

    async fn expire(&self, _now: u64) -> Result<u64, StoreError> {
        // JetStream removes envelopes past the stream's max_age itself.
        Ok(0)
    }

    async fn nameplate_create(&self, record: Vec<u8>, expires_at: u64) -> Result<u32, StoreError> {
        let candidates = super::nameplate_candidates(&mut rand_core::OsRng)?;
        // Tried again, a try whose answer was lost may have made a nameplate nobody will
        // hear of: it expires unused.
        patiently(self.patience, |_| {
            self.do_nameplate_create(&record, expires_at, &candidates)
        })
        .await
    }

    /// At most once: a take whose answer was lost to a failover purged the nameplate, and its
    /// retry finds none (the joiner is told the code is gone, and asks for another).
    async fn nameplate_take(&self, number: u32, now: u64) -> Result<Option<Vec<u8>>, StoreError> {
        patiently(self.patience, |_| self.do_nameplate_take(number, now)).await
    }

    /// Tried again, a publish whose answer was lost finds its own bundle, the same: a refresh.
    async fn bundle_publish(
        &self,
        name: [u8; 16],
        bundle: Vec<u8>,
        expires_at: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        patiently(self.patience, |_| {
            self.do_bundle_publish(&name, &bundle, expires_at, now)
        })
        .await
    }

    async fn bundle_get(&self, name: [u8; 16], now: u64) -> Result<Option<Vec<u8>>, StoreError> {
        patiently(self.patience, |_| self.do_bundle_get(&name, now)).await
    }

    /// Marks them used now (JetStream dates the records; `now` is this relay's clock).
    async fn touch(&self, ids: &[MailboxId], _now: u64) -> Result<(), StoreError> {
        patiently(self.patience, |_| self.mark_used(ids)).await
    }

    async fn expire_idle(&self, before: u64) -> Result<u64, StoreError> {
        self.do_expire_idle(before).await
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        patiently(self.patience, |_| self.do_stats()).await
    }

    /// One write on [`READY_SUBJECT`], acknowledged only once a quorum of the record
    /// stream's replicas has it: a stream leader that has lost its quorum (and may still
    /// answer reads) cannot acknowledge it. Tried once, not patiently.
    async fn ready(&self) -> Result<(), StoreError> {
        let msg = PublishMessage::build().payload(Bytes::from_static(b"1"));
        let ack = async {
            let sent = self
                .js
                .send_publish(READY_SUBJECT.to_string(), msg)
                .await
                .map_err(|e| client_error("checking the cluster's quorum", e))?;
            sent.await.map_err(|e| client_error("checking the cluster's quorum", e))
        };
        match tokio::time::timeout(READY_TIMEOUT, ack).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(nats_error("checking the cluster's quorum", NatsError::Timeout)),
        }
    }

    fn forward_deliveries(&self, notify: broadcast::Sender<MailboxId>) {
        let client = self.client.clone();
        let senders = self.senders.clone();
        let task = tokio::spawn(async move {
            // Resubscribes after a failure; the client reconnects on its own.
            loop {
                let subs = tokio::try_join!(client.subscribe(NOTE_SUBJECTS), client.subscribe(GONE_SUBJECTS));
                match subs {
                    Ok((new, gone)) => {
                        let mut both = futures_util::stream::select(new, gone);
                        while let Some(m) = both.next().await {
                            let subject = m.subject.as_str();
                            if let Some(id) = subject.strip_prefix("bc.new.").and_then(unhex32) {
                                let _ = notify.send(MailboxId(id));
                            } else if let Some(digest) = subject.strip_prefix("bc.gone.").and_then(unhex32) {
                                if let Ok(mut cache) = senders.lock() {
                                    cache.remove(&digest);
                                }
                            }
                        }
                    }
                    Err(_) => tracing::warn!("could not listen for the other relays' notices; retrying"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        if let Ok(mut l) = self.listener.lock() {
            if let Some(old) = l.replace(task) {
                old.abort();
            }
        }
    }
}

/// Asks every relay of the cluster at `urls` to rotate its wire keys (`relay rotate-key
/// --store nats`): a record on [`ROTATE_SUBJECT`], which each relay watches
/// ([`NatsStore::rotation_asked`]). Touches nothing else of the cluster.
pub async fn request_rotation(urls: &[String]) -> Result<(), StoreError> {
    let client = connect_client(urls).await?;
    let js = jetstream::new(client);
    let ack = async {
        js.send_publish(
            ROTATE_SUBJECT.to_string(),
            PublishMessage::build().payload(Bytes::from_static(b"1")),
        )
        .await
        .map_err(|e| client_error("asking for a key rotation", e))?
        .await
        .map_err(|e| client_error("asking for a key rotation", e))
    };
    match tokio::time::timeout(OP_TIMEOUT, ack).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(nats_error("asking for a key rotation", NatsError::NoQuorum)),
    }
}

/// A client of the cluster at `urls`, connected (or an error after a bounded wait).
async fn connect_client(urls: &[String]) -> Result<async_nats::Client, StoreError> {
    let mut addrs: Vec<ServerAddr> = Vec::new();
    for u in urls {
        addrs.push(
            u.parse()
                .map_err(|e: std::io::Error| nats_error("reading the --nats URLs", NatsError::BadUrl(Box::new(e))))?,
        );
    }
    if addrs.is_empty() {
        return Err(nats_error("reading the --nats URLs", NatsError::NoUrl));
    }
    let client = async_nats::ConnectOptions::new()
        .name("backchannel-relay")
        .connection_timeout(OP_TIMEOUT)
        .request_timeout(Some(OP_TIMEOUT))
        // A node cut off by the network (its packets dropped, the connection silent, not
        // closed) is noticed after two unanswered pings, and the client moves to another
        // node: with the default of a minute between pings the relay stayed on the silent
        // one for about three minutes (`partitions::a_relay_whose_node_is_cut_off_…`).
        .ping_interval(PING_INTERVAL)
        .retry_on_initial_connect()
        // Our own notices come back to us otherwise: the relay wakes its own
        // long-polls directly.
        .no_echo()
        .connect(addrs)
        .await
        .map_err(|e| client_error("connecting", e))?;
    // `retry_on_initial_connect` returns at once: wait (bounded) for the first connection.
    let mut waited = Duration::ZERO;
    while client.connection_state() != async_nats::connection::State::Connected {
        if waited > 3 * OP_TIMEOUT {
            return Err(nats_error("connecting", NatsError::Unreachable));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The claim record: a locked one round-trips, one of an earlier release reads as
    /// unlocked, a locked one reads to an earlier release as an epoch nobody claims, and
    /// one with a held commit keeps the 40 bytes in front of it.
    #[test]
    fn claim_records_keep_their_layout() {
        let c = Claims {
            next_epoch: 9,
            last: [5; 32],
            locked: true,
        };
        let v = encode_claims(&c, None);
        assert_eq!(v.len(), 40);
        assert_eq!(decode_claims(&v).unwrap(), (c, None));
        let old = [&9u64.to_be_bytes()[..], &[5; 32]].concat();
        assert_eq!(old, encode_claims(&Claims { locked: false, ..c }, None));
        assert_eq!(decode_claims(&old).unwrap(), (Claims { locked: false, ..c }, None));
        // What an earlier relay reads as the next epoch of a locked record.
        let seen = u64::from_be_bytes(v[..8].try_into().unwrap());
        assert!(seen > 1 << 62, "{seen}");
        let held = HeldCommit {
            epoch: 8,
            opened: [7; 32],
            bytes: Arc::from(&b"commit"[..]),
        };
        let with = encode_claims(&c, Some(&held));
        assert_eq!(with[..40], v[..]);
        assert_eq!(decode_claims(&with).unwrap(), (c, Some(held)));
        assert!(decode_claims(&[0; 41]).is_err());
        assert!(decode_claims(&[0; 39]).is_err());
    }
}
