//! The expiry sweep of the embedded store (issue 17, point 5): its cost is what has
//! expired, not what the store holds. Run:
//! `cargo bench -p backchannel-relay --bench sweep`; BENCHMARKS.md has the figures.
//!
//! For each store size, the store is filled (sends submitted together, so that the writer
//! commits them in batches) with envelopes that expire late, and the sweep that the relay
//! runs every minute is timed when nothing has expired, which is its usual case.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use backchannel_core::envelope::{Envelope, ENVELOPE_SIZE};
use backchannel_core::mailbox::MailboxId;
use backchannel_core::pow::ProvenWork;
use backchannel_relay::store::{EmbeddedStore, MailboxStore};
use criterion::{criterion_group, criterion_main, Criterion};
use sha2::{Digest, Sha256};

/// A store holding `stored` envelopes in 10 mailboxes, all expiring at 1,000,000.
fn filled(dir: &std::path::Path, stored: u32) -> EmbeddedStore {
    let store = EmbeddedStore::open(&dir.join("m.redb"), u32::MAX).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        for b in 0..10u8 {
            let cap = [b; 32];
            MailboxStore::create(&store, MailboxId([b; 32]), [1; 32], Sha256::digest(cap).into(), 0)
                .await
                .unwrap();
        }
        let sends = (0..stored).map(|i| {
            let envelope = Envelope::from_bytes(&[(i % 251) as u8; ENVELOPE_SIZE]).unwrap();
            MailboxStore::send(&store, [(i % 10) as u8; 32], envelope, 1_000_000, ProvenWork::NONE)
        });
        for r in futures_util::future::join_all(sends).await {
            r.unwrap();
        }
    });
    store
}

fn sweep(c: &mut Criterion) {
    let mut g = c.benchmark_group("sweep");
    for stored in [1_000u32, 20_000] {
        let dir = tempfile::tempdir().unwrap();
        let store = filled(dir.path(), stored);
        g.bench_function(format!("nothing_due/{stored}_stored"), |b| {
            b.iter(|| assert_eq!(store.expire(black_box(500_000)).unwrap(), 0))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = sweep
}
criterion_main!(benches);
