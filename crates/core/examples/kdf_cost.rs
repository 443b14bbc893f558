//! How long the vault's key derivation takes on this machine, for the parameters a new
//! home gets ([`KdfParams::default`]) and a few around them: the figures in BENCHMARKS.md
//! ("The vault's key derivation").
//!
//! `cargo run --release -p backchannel-core --example kdf_cost`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use backchannel_core::vault::{KdfParams, VaultKey};
use rand_core::OsRng;

fn main() {
    let default = KdfParams::default();
    let mut rows = vec![KdfParams {
        m_cost_kib: 19 * 1024,
        t_cost: 2,
        ..default
    }];
    for (m, t) in [(256, 3), (256, 4), (512, 2)] {
        rows.push(KdfParams {
            m_cost_kib: m * 1024,
            t_cost: t,
            ..default
        });
    }
    println!("| memory | passes | lanes | time (median of 3) |");
    println!("|---|---|---|---|");
    for p in rows {
        let mut times: Vec<f64> = (0..3)
            .map(|_| {
                let start = Instant::now();
                VaultKey::create(b"calibration", p, &mut OsRng).expect("derivation");
                start.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let mark = if p == default { " (default)" } else { "" };
        println!(
            "| {} MiB | {} | {} | {:.2} s{mark} |",
            p.m_cost_kib / 1024,
            p.t_cost,
            p.lanes,
            times[1]
        );
    }
}
