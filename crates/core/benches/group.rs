//! Group operations in post-quantum channels of 10, 100 and 1,000 members:
//! add one member (commit + welcome, then merge), remove one (commit, merge),
//! process a commit as another member, join from a welcome; and, for scale,
//! load a channel from storage, list its members, and one application
//! message (create + process).
//!
//! Each size is built once (one commit adds every member), then every
//! iteration restores the same state from a storage snapshot
//! (`Provider::from_snapshot` + `Channel::load`, outside the timing).
//!
//! Two tree states are measured, because the cost of a commit depends on it:
//! * `sparse`: right after the building commit, no other member has ever
//!   committed, so every node off the founder's path is blank and a commit
//!   by the founder encrypts its path secrets to every other member, one
//!   HPKE (X-Wing) encapsulation each.
//! * `populated`: then the members at leaves 2, 4, 8, … each commit an
//!   update once (as members do when they rotate their mailbox), so every
//!   node on the founder's copath holds a key and the founder's commit
//!   encrypts to about log2(N) nodes.
//!
//! Building the 1,000-member channel takes tens of seconds; a filter that
//! names other sizes only (`cargo bench -p backchannel-core --bench group --
//! members_10/`) skips it.
//!
//! `cargo bench -p backchannel-core --bench group`; BENCHMARKS.md has the figures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use backchannel_core::channel::{
    key_package, validate_key_package, Channel, ChannelInfo, Provider, Received, Suite, ValidKeyPackage,
};
use backchannel_core::identity::{Fingerprint, Identity};
use backchannel_core::mailbox::{MailboxAddress, MailboxKeys};
use backchannel_core::relay_address::RelayAddress;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode};
use rand::rngs::StdRng;
use rand::SeedableRng;

const SIZES: [usize; 3] = [10, 100, 1000];
const SUITE: Suite = Suite::PostQuantum;

type Snapshot = Vec<(Vec<u8>, Vec<u8>)>;

fn relay() -> RelayAddress {
    RelayAddress {
        pin: [0; 32],
        host: "127.0.0.1".into(),
        port: 1,
    }
}

fn mailbox(rng: &mut StdRng) -> MailboxAddress {
    MailboxKeys::generate(relay(), rng).address.clone()
}

/// A member whose state the bench keeps.
struct Member {
    id: Identity,
    provider: Provider,
    channel: Channel,
}

/// A channel state to start every iteration from.
struct State {
    founder_snap: Snapshot,
    other_snap: Snapshot,
    /// The founder adding the joiner, from this state.
    add_commit: Vec<u8>,
    welcome: Vec<u8>,
}

struct Fixture {
    group_id: Vec<u8>,
    founder: Identity,
    /// Removed by the remove bench: the member at the highest leaf below the
    /// last one that never committed (leaf N - 2 or N - 3).
    remove_target: Fingerprint,
    /// The member who joins: its key package, and its storage holding the private keys.
    joiner_kp: ValidKeyPackage,
    joiner_snap: Snapshot,
    sparse: State,
    populated: State,
}

fn restore(snap: &Snapshot, group_id: &[u8]) -> (Provider, Channel) {
    let p = Provider::from_snapshot(snap.clone()).unwrap();
    let ch = Channel::load(&p, group_id).unwrap().unwrap();
    (p, ch)
}

/// Leaves whose members commit once to populate the tree: 2, 4, 8, … below `n`.
fn committers(n: usize) -> Vec<usize> {
    std::iter::successors(Some(2usize), |l| Some(l * 2))
        .take_while(|&l| l < n)
        .collect()
}

fn state(group_id: &[u8], founder: &Identity, founder_p: &Provider, other_p: &Provider, kp: &ValidKeyPackage) -> State {
    let founder_snap = founder_p.snapshot();
    let (p, mut ch) = restore(&founder_snap, group_id);
    let out = ch.add(&p, founder, vec![kp.clone()]).unwrap();
    State {
        founder_snap,
        other_snap: other_p.snapshot(),
        add_commit: out.commit,
        welcome: out.welcome.unwrap(),
    }
}

fn build(n: usize) -> Fixture {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(n as u64);
    let founder_id = Identity::generate("founder", &mut rng).unwrap();
    let founder_p = Provider::new().unwrap();
    let info = ChannelInfo {
        name: "bench".into(),
        sequencer: mailbox(&mut rng),
        created_at: 1,
        disappear_after: 0,
        expires_at: 0,
    };
    let mut founder_ch = Channel::create(&founder_p, &founder_id, &info, &mailbox(&mut rng), SUITE, false).unwrap();
    let group_id = founder_ch.group_id();

    // Key packages for leaves 1..n; kept members get their own storage.
    let kept_leaves: Vec<usize> = committers(n).into_iter().chain([n - 1]).collect();
    let target_leaf = (1..n - 1).rev().find(|l| !kept_leaves.contains(l)).unwrap();
    let throwaway = Provider::new().unwrap();
    let mut kept: Vec<(usize, Identity, Provider)> = Vec::new();
    let mut kps = Vec::with_capacity(n - 1);
    let mut remove_target = None;
    for leaf in 1..n {
        let id = Identity::generate(&format!("member-{leaf}"), &mut rng).unwrap();
        if leaf == target_leaf {
            remove_target = Some(id.fingerprint());
        }
        let own = kept_leaves.contains(&leaf).then(|| Provider::new().unwrap());
        let kp = key_package(own.as_ref().unwrap_or(&throwaway), &id, &mailbox(&mut rng), SUITE).unwrap();
        kps.push(validate_key_package(&founder_p, &kp).unwrap());
        if let Some(p) = own {
            kept.push((leaf, id, p));
        }
    }
    let out = founder_ch.add(&founder_p, &founder_id, kps).unwrap();
    founder_ch.merge_pending(&founder_p).unwrap();
    let welcome = out.welcome.unwrap();
    let mut kept: Vec<(usize, Member)> = kept
        .into_iter()
        .map(|(leaf, id, provider)| {
            let (channel, _) = Channel::join(&provider, &welcome).unwrap();
            (leaf, Member { id, provider, channel })
        })
        .collect();
    assert_eq!(founder_ch.members().len(), n);
    for (leaf, m) in &kept {
        let me = m.id.fingerprint();
        let at = m
            .channel
            .members()
            .into_iter()
            .find(|x| x.fingerprint == me)
            .unwrap()
            .leaf;
        assert_eq!(at as usize, *leaf);
    }

    let joiner_id = Identity::generate("joiner", &mut rng).unwrap();
    let joiner_p = Provider::new().unwrap();
    let joiner_kp = key_package(&joiner_p, &joiner_id, &mailbox(&mut rng), SUITE).unwrap();
    let joiner_kp = validate_key_package(&founder_p, &joiner_kp).unwrap();
    let other_p = &kept.last().unwrap().1.provider;
    let sparse = state(&group_id, &founder_id, &founder_p, other_p, &joiner_kp);

    // Populate: each committer updates once; everyone kept processes it.
    for c in committers(n) {
        let i = kept.iter().position(|(leaf, _)| *leaf == c).unwrap();
        let out = {
            let m = &mut kept[i].1;
            let out = m.channel.self_update(&m.provider, &m.id, None).unwrap();
            m.channel.merge_pending(&m.provider).unwrap();
            out
        };
        let r = founder_ch.process(&founder_p, &out.commit).unwrap();
        assert!(matches!(r, Received::Commit { .. }));
        for (j, (_, m)) in kept.iter_mut().enumerate() {
            if j != i {
                m.channel.process(&m.provider, &out.commit).unwrap();
            }
        }
    }
    let other = kept.pop().unwrap().1;
    let populated = state(&group_id, &founder_id, &founder_p, &other.provider, &joiner_kp);
    eprintln!(
        "members_{n}: built in {:.1} s (storage snapshot {:.1} MB, welcome {:.0} KB)",
        started.elapsed().as_secs_f64(),
        founder_p
            .snapshot()
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>() as f64
            / 1e6,
        populated.welcome.len() as f64 / 1e3,
    );
    Fixture {
        group_id,
        founder: founder_id,
        remove_target: remove_target.unwrap(),
        joiner_kp,
        joiner_snap: joiner_p.snapshot(),
        sparse,
        populated,
    }
}

/// Whether the command line's filter could select benchmarks of this size
/// (building 1,000 members is slow, so skip it when the filter names another size).
fn wanted(n: usize) -> bool {
    match support::filter() {
        Some(f) if f.contains("members_") => {
            let mine = format!("members_{n}");
            f.match_indices(&mine)
                .any(|(at, _)| !f[at + mine.len()..].starts_with(|c: char| c.is_ascii_digit()))
        }
        _ => true,
    }
}

fn group_ops(c: &mut Criterion) {
    for n in SIZES {
        if !wanted(n) {
            continue;
        }
        let fx = build(n);
        let mut g = c.benchmark_group(format!("members_{n}"));
        g.sampling_mode(SamplingMode::Flat).sample_size(10);
        if n >= 1000 {
            g.warm_up_time(Duration::from_millis(200))
                .measurement_time(Duration::from_secs(2));
        } else {
            g.warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(2));
        }
        for (name, st) in [("sparse", &fx.sparse), ("populated", &fx.populated)] {
            g.bench_function(BenchmarkId::new("add", name), |b| {
                b.iter_batched(
                    || (restore(&st.founder_snap, &fx.group_id), fx.joiner_kp.clone()),
                    |((p, mut ch), kp)| {
                        let out = ch.add(&p, &fx.founder, vec![kp]).unwrap();
                        ch.merge_pending(&p).unwrap();
                        (p, ch, out)
                    },
                    BatchSize::PerIteration,
                )
            });
            g.bench_function(BenchmarkId::new("remove", name), |b| {
                b.iter_batched(
                    || restore(&st.founder_snap, &fx.group_id),
                    |(p, mut ch)| {
                        let out = ch.remove(&p, &fx.founder, &[fx.remove_target]).unwrap();
                        ch.merge_pending(&p).unwrap();
                        (p, ch, out)
                    },
                    BatchSize::PerIteration,
                )
            });
            g.bench_function(BenchmarkId::new("process_commit", name), |b| {
                b.iter_batched(
                    || restore(&st.other_snap, &fx.group_id),
                    |(p, mut ch)| {
                        let r = ch.process(&p, &st.add_commit).unwrap();
                        assert!(matches!(r, Received::Commit { .. }));
                        (p, ch, r)
                    },
                    BatchSize::PerIteration,
                )
            });
            g.bench_function(BenchmarkId::new("join", name), |b| {
                b.iter_batched(
                    || Provider::from_snapshot(fx.joiner_snap.clone()).unwrap(),
                    |p| {
                        let (ch, _) = Channel::join(&p, &st.welcome).unwrap();
                        (p, ch)
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        // What a client pays per incoming MLS message besides MLS itself: it
        // loads the channel from storage (crates/client engine `load_group`).
        g.bench_function(BenchmarkId::new("load", "populated"), |b| {
            b.iter_batched(
                || Provider::from_snapshot(fx.populated.founder_snap.clone()).unwrap(),
                |p| {
                    let ch = Channel::load(&p, &fx.group_id).unwrap().unwrap();
                    (p, ch)
                },
                BatchSize::PerIteration,
            )
        });
        // One 100-byte application message, MLS only: the founder encrypts,
        // the last member processes.
        {
            let (fp, mut fch) = restore(&fx.populated.founder_snap, &fx.group_id);
            let (op, mut och) = restore(&fx.populated.other_snap, &fx.group_id);
            // `Channel::process` lists the members (our code, O(N)) once per
            // application message and twice per commit.
            g.bench_function(BenchmarkId::new("members", "populated"), |b| b.iter(|| fch.members()));
            let text = [b'x'; 100];
            g.bench_function(BenchmarkId::new("message_100B", "populated"), |b| {
                b.iter(|| {
                    let ct = fch.encrypt(&fp, &fx.founder, &text).unwrap();
                    match och.process(&op, &ct).unwrap() {
                        Received::Application { plaintext, .. } => plaintext,
                        other => panic!("expected an application message, got {other:?}"),
                    }
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, group_ops);
criterion_main!(benches);
