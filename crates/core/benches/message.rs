//! Per-message cost: one application message of 100 B and of 4 KiB created by
//! one member and read by the other, through the whole path a client takes,
//! against a baseline measured in the same group: Ed25519 sign + verify and
//! ChaCha20-Poly1305 seal + open of the same bytes.
//!
//! The channel has two members and has seen `MAX_PAST_EPOCHS` commits (its
//! steady state; `path_new_channel` measures it before any).
//!
//! Path, sender: `AppMessage::to_bytes`, `Channel::encrypt` (MLS private
//! message, padded to 64 bytes, signed), `seal_payload` into 4096-byte
//! envelopes. Receiver: `open_envelope` for each envelope, `Reassembler::push`,
//! `Channel::process` (MLS decrypt and verify), `AppMessage::from_bytes`.
//!
//! After the criterion group, the bench measures the ratio path / baseline
//! again by interleaving the two (so that load from other processes hits
//! both alike) and prints it.
//!
//! `cargo bench -p backchannel-core --bench message`; BENCHMARKS.md has the figures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use backchannel_core::aead;
use backchannel_core::channel::{key_package, validate_key_package, Channel, ChannelInfo, Provider, Received, Suite};
use backchannel_core::envelope::{open_envelope, seal_payload, PayloadKind, Reassembler};
use backchannel_core::identity::Identity;
use backchannel_core::mailbox::{MailboxAddress, MailboxKeys};
use backchannel_core::message::{AppMessage, Body};
use backchannel_core::relay_address::RelayAddress;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _};
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::types::{HashType, SignatureScheme};
use openmls_traits::OpenMlsProvider;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest as _, Sha256};

/// Text lengths: a short message and one that needs two envelopes.
const SIZES: [(usize, &str); 2] = [(100, "100B"), (4096, "4KiB")];

/// Commits before measuring, so that the channel is in its steady state: a
/// member keeps the secrets of `channel::MAX_PAST_EPOCHS` past epochs.
const STEADY_UPDATES: usize = backchannel_core::channel::MAX_PAST_EPOCHS;

fn relay() -> RelayAddress {
    RelayAddress {
        pin: [0; 32],
        host: "127.0.0.1".into(),
        port: 1,
    }
}

struct Member {
    id: Identity,
    provider: Provider,
    mailbox: MailboxAddress,
    channel: Option<Channel>,
    group_id: Vec<u8>,
}

impl Member {
    /// The member's group, as the client gets it for each message.
    fn load(&mut self) -> Channel {
        // The channel this member made or joined goes to the provider's cache first.
        if let Some(ch) = self.channel.take() {
            self.group_id = ch.group_id();
            ch.keep(&self.provider);
        }
        Channel::load(&self.provider, &self.group_id).unwrap().unwrap()
    }
}

fn member(name: &str, rng: &mut StdRng) -> Member {
    Member {
        id: Identity::generate(name, rng).unwrap(),
        provider: Provider::new().unwrap(),
        mailbox: MailboxKeys::generate(relay(), rng).address.clone(),
        channel: None,
        group_id: Vec::new(),
    }
}

/// Alice creates a post-quantum channel and admits Bob; then they take
/// turns committing `updates` key updates (each one keeps the epoch it ends
/// among the past epochs whose secrets a member stores).
fn pair(rng: &mut StdRng, updates: usize) -> (Member, Member) {
    let mut alice = member("alice", rng);
    let mut bob = member("bob", rng);
    let info = ChannelInfo {
        name: "bench".into(),
        sequencer: MailboxKeys::generate(relay(), rng).address.clone(),
        created_at: 1,
        disappear_after: 0,
        expires_at: 0,
    };
    let suite = Suite::PostQuantum;
    let mut ch = Channel::create(&alice.provider, &alice.id, &info, &alice.mailbox, suite, false).unwrap();
    let kp = key_package(&bob.provider, &bob.id, &bob.mailbox, suite).unwrap();
    let valid = validate_key_package(&alice.provider, &kp).unwrap();
    let out = ch.add(&alice.provider, &alice.id, vec![valid]).unwrap();
    ch.merge_pending(&alice.provider).unwrap();
    alice.channel = Some(ch);
    let (ch, _) = Channel::join(&bob.provider, out.welcome.as_ref().unwrap()).unwrap();
    bob.channel = Some(ch);
    for i in 0..updates {
        let (from, to) = if i % 2 == 0 {
            (&mut alice, &mut bob)
        } else {
            (&mut bob, &mut alice)
        };
        let ch = from.channel.as_mut().unwrap();
        let out = ch.self_update(&from.provider, &from.id, None).unwrap();
        ch.merge_pending(&from.provider).unwrap();
        let r = to.channel.as_mut().unwrap().process(&to.provider, &out.commit).unwrap();
        assert!(matches!(r, Received::Commit { .. }));
    }
    (alice, bob)
}

/// The whole path for one message: Alice writes `text`, Bob reads it.
struct Path {
    alice: Member,
    bob: Member,
    reassembler: Reassembler,
    rng: StdRng,
    /// Whether each side gives its group back to the provider's cache after use; without,
    /// every message decodes both groups again, as the client did before the cache.
    keep: bool,
}

impl Path {
    fn new(seed: u64, updates: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let (alice, bob) = pair(&mut rng, updates);
        Self {
            alice,
            bob,
            reassembler: Reassembler::default(),
            rng,
            keep: true,
        }
    }

    fn run(&mut self, text: &str) -> AppMessage {
        // Sender.
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        let msg = AppMessage {
            id,
            sent_at: 1_760_000_000_000,
            body: Body::Text(text.to_owned()),
        };
        // Each side takes its group from the provider and gives it back, as the client
        // does for every message (`Channel::load`, `Channel::keep`).
        let a = &mut self.alice;
        let mut ch = a.load();
        let ct = ch.encrypt(&a.provider, &a.id, &msg.to_bytes()).unwrap();
        if self.keep {
            ch.keep(&a.provider);
        }
        let to = &self.bob.mailbox;
        let envs = seal_payload(&to.seal, &to.send, PayloadKind::Mls, &ct, &mut self.rng).unwrap();
        // Receiver.
        let b = &mut self.bob;
        let mut whole = None;
        for e in &envs {
            let chunk = open_envelope(&b.mailbox.seal, &b.mailbox.send, e).unwrap();
            whole = self.reassembler.push(chunk).unwrap();
        }
        let whole = whole.unwrap();
        let mut ch = b.load();
        let received = ch.process(&b.provider, &whole.payload).unwrap();
        if self.keep {
            ch.keep(&b.provider);
        }
        match received {
            Received::Application { plaintext, .. } => AppMessage::from_bytes(&plaintext).unwrap(),
            other => panic!("expected an application message, got {other:?}"),
        }
    }
}

/// Ed25519 sign + verify (ed25519-dalek) and ChaCha20-Poly1305 seal + open of
/// the same bytes the MLS layer encrypts (the serialized `AppMessage`), each by the
/// implementation the crypto provider uses (`backchannel_core::aead` for the AEAD).
struct Baseline {
    key: SigningKey,
    aead_key: [u8; 32],
    counter: u64,
}

impl Baseline {
    fn new() -> Self {
        Self {
            key: SigningKey::from_bytes(&[7; 32]),
            aead_key: [9u8; 32],
            counter: 0,
        }
    }

    fn run(&mut self, bytes: &[u8]) -> Vec<u8> {
        let sig = self.key.sign(bytes);
        self.key.verifying_key().verify(bytes, &sig).unwrap();
        self.counter += 1;
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.counter.to_be_bytes());
        let ct = aead::seal(&self.aead_key, &n, b"", bytes).unwrap();
        aead::open(&self.aead_key, &n, b"", &ct).unwrap()
    }
}

fn text(len: usize) -> String {
    "x".repeat(len)
}

/// The bytes the baseline signs and encrypts: the message as MLS sees it.
fn app_bytes(text: &str) -> Vec<u8> {
    AppMessage {
        id: [1; 16],
        sent_at: 1_760_000_000_000,
        body: Body::Text(text.to_owned()),
    }
    .to_bytes()
}

fn per_message(c: &mut Criterion) {
    let mut g = c.benchmark_group("per_message");
    for (len, label) in SIZES {
        let t = text(len);
        let bytes = app_bytes(&t);
        let mut path = Path::new(len as u64, STEADY_UPDATES);
        let mut base = Baseline::new();
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("path/{label}"), |b| b.iter(|| path.run(black_box(&t))));
        g.bench_function(format!("baseline/{label}"), |b| b.iter(|| base.run(black_box(&bytes))));
    }
    // The same path in a channel that has had no commit since Bob joined:
    // fewer past epochs in the state that openmls stores after every message.
    let t = text(100);
    let mut fresh = Path::new(7, 0);
    g.throughput(Throughput::Bytes(100));
    g.bench_function("path_new_channel/100B", |b| b.iter(|| fresh.run(black_box(&t))));
    // The path with each group decoded from the store for every message (no cache).
    let mut reloading = Path::new(100, STEADY_UPDATES);
    reloading.keep = false;
    g.bench_function("path_reloading/100B", |b| b.iter(|| reloading.run(black_box(&t))));
    g.finish();
    paired_ratio();
}

/// Interleaves rounds of the path and of the baseline and prints the median
/// ratio of their per-message times. Runs only when measuring (not in test
/// mode or while profiling), and only if the filter names no other group.
fn paired_ratio() {
    let named = support::filter().is_none_or(|f| f.contains("per_message") || f.contains("ratio"));
    if !support::measuring() || !named {
        return;
    }
    const ROUNDS: usize = 21;
    const ROUND: Duration = Duration::from_millis(100);
    // The two sizes through the client's path, then 100 B with each group decoded again
    // for every message (the client before its cache of loaded groups).
    let runs = SIZES.iter().map(|&(len, label)| (len, label.to_owned(), true)).chain([(
        100,
        "100B_reloading".to_owned(),
        false,
    )]);
    for (len, label, keep) in runs {
        let t = text(len);
        let bytes = app_bytes(&t);
        let mut path = Path::new(1000 + len as u64, STEADY_UPDATES);
        path.keep = keep;
        let mut base = Baseline::new();
        // Warm up, and size each round to about ROUND.
        let per_path = time_per(|| drop(black_box(path.run(&t))), ROUND);
        let per_base = time_per(|| drop(black_box(base.run(&bytes))), ROUND);
        let n_path = (ROUND.as_secs_f64() / per_path).max(1.0) as usize;
        let n_base = (ROUND.as_secs_f64() / per_base).max(1.0) as usize;
        let mut ratios = Vec::with_capacity(ROUNDS);
        let mut paths = Vec::with_capacity(ROUNDS);
        let mut bases = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let p = run_n(n_path, || drop(black_box(path.run(&t))));
            let b = run_n(n_base, || drop(black_box(base.run(&bytes))));
            ratios.push(p / b);
            paths.push(p);
            bases.push(b);
        }
        println!(
            "per_message/ratio/{label}: path {:.1} µs / baseline {:.1} µs = {:.2} (median of {ROUNDS} interleaved rounds)",
            median(&mut paths) * 1e6,
            median(&mut bases) * 1e6,
            median(&mut ratios),
        );
    }
}

/// Seconds per call of `f`, run for about `budget`.
fn time_per(mut f: impl FnMut(), budget: Duration) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        f();
        n += 1;
    }
    start.elapsed().as_secs_f64() / n as f64
}

/// Seconds per call of `f` over `n` calls.
fn run_n(n: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_secs_f64() / n as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The primitives behind the figures: Ed25519 in ed25519-dalek (our
/// `Identity` signs with it), in libcrux (openmls' provider before
/// `crypto_provider`) and through the channels' provider (`provider`: dalek
/// behind the trait, which takes the public key as bytes); SHA-256 and
/// HKDF-Expand the same three ways; and one HPKE seal + open to an X-Wing key
/// (what a commit does once per recipient of a path secret) next to the
/// classical X25519 suite.
fn primitives(c: &mut Criterion) {
    let bytes = app_bytes(&text(100));
    let provider = Provider::new().unwrap();
    let crypto = provider.crypto();
    let libcrux = openmls_libcrux_crypto::CryptoProvider::new().unwrap();
    let key = SigningKey::from_bytes(&[7; 32]);
    let public = key.verifying_key();
    let sig = key.sign(&bytes);
    let mut g = c.benchmark_group("primitives");
    g.bench_function("ed25519_sign/dalek", |b| b.iter(|| key.sign(black_box(&bytes))));
    g.bench_function("ed25519_sign/libcrux", |b| {
        b.iter(|| {
            libcrux
                .sign(SignatureScheme::ED25519, black_box(&bytes), &[7; 32])
                .unwrap()
        })
    });
    g.bench_function("ed25519_sign/provider", |b| {
        b.iter(|| {
            crypto
                .sign(SignatureScheme::ED25519, black_box(&bytes), &[7; 32])
                .unwrap()
        })
    });
    g.bench_function("ed25519_verify/dalek", |b| {
        b.iter(|| public.verify(black_box(&bytes), &sig).unwrap())
    });
    g.bench_function("ed25519_verify/dalek_strict", |b| {
        b.iter(|| public.verify_strict(black_box(&bytes), &sig).unwrap())
    });
    g.bench_function("ed25519_verify/libcrux", |b| {
        b.iter(|| {
            libcrux
                .verify_signature(
                    SignatureScheme::ED25519,
                    black_box(&bytes),
                    public.as_bytes(),
                    &sig.to_bytes(),
                )
                .unwrap()
        })
    });
    g.bench_function("ed25519_verify/provider", |b| {
        b.iter(|| {
            crypto
                .verify_signature(
                    SignatureScheme::ED25519,
                    black_box(&bytes),
                    public.as_bytes(),
                    &sig.to_bytes(),
                )
                .unwrap()
        })
    });
    // SHA-256 of 4 KiB (tree and parent hashes are SHA-256 over tree nodes).
    let block = vec![0x5a_u8; 4096];
    g.bench_function("sha256_4KiB/libcrux", |b| {
        b.iter(|| libcrux.hash(HashType::Sha2_256, black_box(&block)).unwrap())
    });
    g.bench_function("sha256_4KiB/provider", |b| {
        b.iter(|| crypto.hash(HashType::Sha2_256, black_box(&block)).unwrap())
    });
    g.bench_function("sha256_4KiB/sha2", |b| b.iter(|| Sha256::digest(black_box(&block))));
    // One ExpandWithLabel of the secret tree: 32 bytes from a 32-byte secret.
    let info = [&[0u8, 32, 12][..], b"MLS 1.0 key", &[4, 0, 0, 0, 7]].concat();
    g.bench_function("hkdf_expand_32B/libcrux", |b| {
        b.iter(|| {
            libcrux
                .hkdf_expand(HashType::Sha2_256, &[3; 32], black_box(&info), 32)
                .unwrap()
        })
    });
    g.bench_function("hkdf_expand_32B/provider", |b| {
        b.iter(|| {
            crypto
                .hkdf_expand(HashType::Sha2_256, &[3; 32], black_box(&info), 32)
                .unwrap()
        })
    });
    // The randomness openmls draws for each message it encrypts (the 4-byte reuse guard).
    g.bench_function("random_4B/libcrux", |b| b.iter(|| libcrux.random_array::<4>().unwrap()));
    g.bench_function("random_4B/provider", |b| {
        b.iter(|| provider.rand().random_array::<4>().unwrap())
    });
    g.bench_function("random_4B/os", |b| {
        b.iter(|| {
            let mut out = [0u8; 4];
            rand::rngs::OsRng.fill_bytes(&mut out);
            out
        })
    });
    let mut std_rng = StdRng::from_entropy();
    // ChaCha20-Poly1305 seal + open: RustCrypto's (AVX2) against AWS-LC's, which the
    // provider, the envelopes and the relay's records use.
    for (len, label) in [(100usize, "100B"), (4096, "4KiB")] {
        let bytes = vec![0x42u8; len];
        let rc = ChaCha20Poly1305::new(&[9u8; 32].into());
        let nonce = [0u8; 12];
        g.bench_function(format!("chacha20poly1305/{label}/rustcrypto"), |b| {
            b.iter(|| {
                let ct = rc
                    .encrypt(Nonce::from_slice(&nonce), black_box(bytes.as_slice()))
                    .unwrap();
                rc.decrypt(Nonce::from_slice(&nonce), ct.as_slice()).unwrap()
            })
        });
        g.bench_function(format!("chacha20poly1305/{label}/aws_lc"), |b| {
            b.iter(|| {
                let ct = aead::seal(&[9u8; 32], &nonce, b"", black_box(&bytes)).unwrap();
                aead::open(&[9u8; 32], &nonce, b"", &ct).unwrap()
            })
        });
        // The relay's sealed envelopes in its body file, each under a fresh key: key setup
        // counts, as it does there.
        g.bench_function(format!("aes256gcm/{label}/aws_lc"), |b| {
            b.iter(|| {
                let mut buf = black_box(&bytes).clone();
                let tag = aead::Cipher::Aes256Gcm
                    .seal_detached(&[9u8; 32], &nonce, b"", &mut buf)
                    .unwrap();
                aead::Cipher::Aes256Gcm
                    .open_detached(&[9u8; 32], &nonce, b"", &mut buf, &tag)
                    .unwrap();
                buf
            })
        });
    }
    g.bench_function("random_4B/chacha12", |b| {
        b.iter(|| {
            let mut out = [0u8; 4];
            std_rng.fill_bytes(&mut out);
            out
        })
    });
    for (suite, label) in [(Suite::PostQuantum, "xwing"), (Suite::Classical, "x25519")] {
        let cs = suite.ciphersuite();
        let pair = crypto.derive_hpke_keypair(cs.hpke_config(), &[5; 64]).unwrap();
        let secret = [6u8; 32];
        g.bench_function(format!("hpke_keygen/{label}"), |b| {
            b.iter(|| {
                crypto
                    .derive_hpke_keypair(cs.hpke_config(), black_box(&[5; 64]))
                    .unwrap()
            })
        });
        g.bench_function(format!("hpke_seal/{label}"), |b| {
            b.iter(|| {
                crypto
                    .hpke_seal(cs.hpke_config(), &pair.public, b"info", b"", black_box(&secret))
                    .unwrap()
            })
        });
        let ct = crypto
            .hpke_seal(cs.hpke_config(), &pair.public, b"info", b"", &secret)
            .unwrap();
        g.bench_function(format!("hpke_open/{label}"), |b| {
            b.iter(|| {
                crypto
                    .hpke_open(cs.hpke_config(), black_box(&ct), &pair.private, b"info", b"")
                    .unwrap()
            })
        });
        // Forwarding (docs/protocol.md, "The per-frame seal"): one whole frame sealed to a
        // relay's forward key with a fresh encapsulation, and opened by that relay.
        let frame = vec![0x42u8; backchannel_core::frame::FRAME_SIZE];
        g.bench_function(format!("forward_frame/{label}"), |b| {
            b.iter(|| {
                let ct = crypto
                    .hpke_seal(cs.hpke_config(), &pair.public, b"forward", b"", black_box(&frame))
                    .unwrap();
                crypto
                    .hpke_open(cs.hpke_config(), &ct, &pair.private, b"forward", b"")
                    .unwrap()
            })
        });
    }
    // The baseline of a forwarded frame: the same bytes sealed and opened with the AEAD
    // alone (what a relay already does to every envelope at rest, and TLS on every record).
    let frame = vec![0x42u8; backchannel_core::frame::FRAME_SIZE];
    let aead = ChaCha20Poly1305::new(&[9u8; 32].into());
    g.bench_function("forward_frame/aead_only", |b| {
        b.iter(|| {
            let nonce = Nonce::from_slice(&[0u8; 12]);
            let ct = aead.encrypt(nonce, black_box(frame.as_slice())).unwrap();
            aead.decrypt(nonce, ct.as_slice()).unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = per_message, primitives
}
criterion_main!(benches);
