//! Byte formats: envelopes (seal, open, reassembly), what padding to a fixed
//! size costs, safety numbers, relay frames, and the drop-box proof of work
//! (the relay's check, and one hash of a sender's search).
//!
//! `cargo bench -p backchannel-core --bench formats`; BENCHMARKS.md has the figures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use backchannel_core::envelope::{
    decode_chunk, open_envelope, seal_payload, Envelope, PayloadKind, Reassembler, CHUNK_DATA,
};
use backchannel_core::frame::{
    decode_request, decode_response, encode_request, encode_response, Delivery, Request, Response,
};
use backchannel_core::mailbox::{MailboxId, SealKey, SendCapability};
use backchannel_core::safety_number::safety_number;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

fn keys() -> (SealKey, SendCapability) {
    (SealKey([3; 32]), SendCapability([4; 32]))
}

/// Seal into envelopes, open them and reassemble the payload, for payloads of
/// one, two and four envelopes.
fn envelopes(c: &mut Criterion) {
    let (key, send) = keys();
    let mut rng = StdRng::seed_from_u64(1);
    let mut g = c.benchmark_group("envelope");
    for len in [100usize, 4096, 4 * CHUNK_DATA] {
        let payload = vec![0x5a; len];
        let envs = seal_payload(&key, &send, PayloadKind::Mls, &payload, &mut rng).unwrap();
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("seal/{len}B/{}env", envs.len()), |b| {
            b.iter(|| seal_payload(&key, &send, PayloadKind::Mls, black_box(&payload), &mut rng).unwrap())
        });
        g.bench_function(format!("open+reassemble/{len}B/{}env", envs.len()), |b| {
            b.iter(|| {
                let mut r = Reassembler::default();
                let mut out = None;
                for e in black_box(&envs) {
                    out = r.push(open_envelope(&key, &send, e).unwrap()).unwrap();
                }
                out.unwrap()
            })
        });
    }
    g.finish();
}

/// What the fixed envelope size costs: sealing 100 bytes into a 4096-byte
/// envelope against sealing the same 100 bytes alone with the same AEAD, and
/// the padding check on a decrypted chunk.
fn padding(c: &mut Criterion) {
    let (key, send) = keys();
    let mut rng = StdRng::seed_from_u64(2);
    let payload = vec![0x5a; 100];
    let cipher = XChaCha20Poly1305::new(key.0.as_ref().into());
    let nonce = XNonce::from([7u8; 24]);
    let unpadded = cipher.encrypt(&nonce, payload.as_slice()).unwrap();
    let env = seal_payload(&key, &send, PayloadKind::Mls, &payload, &mut rng)
        .unwrap()
        .remove(0);
    // A decrypted chunk: header, 100 bytes, zeros to the chunk size.
    let chunk_plain = {
        let mut p = vec![1u8, 1];
        p.extend_from_slice(&[9; 16]);
        p.extend_from_slice(&0u16.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
        p.extend_from_slice(&100u32.to_be_bytes());
        p.extend_from_slice(&100u16.to_be_bytes());
        p.extend_from_slice(&payload);
        p.resize(backchannel_core::envelope::CHUNK_SIZE, 0);
        p
    };
    assert!(decode_chunk(&chunk_plain).is_ok());

    let mut g = c.benchmark_group("padding");
    g.bench_function("seal/100B/padded-envelope", |b| {
        b.iter(|| seal_payload(&key, &send, PayloadKind::Mls, black_box(&payload), &mut rng).unwrap())
    });
    g.bench_function("seal/100B/unpadded-xchacha", |b| {
        b.iter(|| {
            let mut n = [0u8; 24];
            rng.fill_bytes(&mut n);
            cipher
                .encrypt(XNonce::from_slice(&n), black_box(payload.as_slice()))
                .unwrap()
        })
    });
    g.bench_function("open/100B/padded-envelope", |b| {
        b.iter(|| open_envelope(&key, &send, black_box(&env)).unwrap())
    });
    g.bench_function("open/100B/unpadded-xchacha", |b| {
        b.iter(|| cipher.decrypt(&nonce, black_box(unpadded.as_slice())).unwrap())
    });
    g.bench_function("decode_chunk/100B", |b| {
        b.iter(|| decode_chunk(black_box(&chunk_plain)).unwrap())
    });
    g.finish();
}

fn safety_numbers(c: &mut Criterion) {
    let mut g = c.benchmark_group("safety_number");
    g.bench_function("two keys", |b| {
        b.iter(|| safety_number(black_box(&[1; 32]), black_box(&[2; 32])))
    });
    g.finish();
}

fn frames(c: &mut Criterion) {
    let env = Envelope::from_bytes(&[0xa5; backchannel_core::envelope::ENVELOPE_SIZE]).unwrap();
    let send = Request::Send {
        send: [4; 32],
        envelope: env.clone(),
        pow: 0,
    };
    let fetch = Request::Fetch {
        max: 15,
        wait_ms: 25_000,
    };
    let delivery = Response::Envelopes(vec![Delivery {
        mailbox: MailboxId([6; 32]),
        seq: 42,
        envelope: env,
    }]);
    let send_frame = encode_request(7, &send);
    let fetch_frame = encode_request(8, &fetch);
    let delivery_frame = encode_response(7, &delivery).remove(0);

    let mut g = c.benchmark_group("frame");
    g.bench_function("encode/send", |b| b.iter(|| encode_request(7, black_box(&send))));
    g.bench_function("decode/send", |b| {
        b.iter(|| decode_request(black_box(&send_frame)).unwrap())
    });
    g.bench_function("encode/fetch", |b| b.iter(|| encode_request(8, black_box(&fetch))));
    g.bench_function("decode/fetch", |b| {
        b.iter(|| decode_request(black_box(&fetch_frame)).unwrap())
    });
    g.bench_function("encode/delivery", |b| {
        b.iter(|| encode_response(7, black_box(&delivery)))
    });
    g.bench_function("decode/delivery", |b| {
        b.iter(|| decode_response(black_box(&delivery_frame)).unwrap())
    });
    // A full fetch answer: 15 envelopes, 15 frames.
    let full = Response::Envelopes(
        (0..15)
            .map(|i| Delivery {
                mailbox: MailboxId([6; 32]),
                seq: i,
                envelope: Envelope::from_bytes(&[i as u8; backchannel_core::envelope::ENVELOPE_SIZE]).unwrap(),
            })
            .collect(),
    );
    g.bench_function("encode/delivery x15", |b| {
        b.iter(|| encode_response(7, black_box(&full)))
    });
    g.finish();
}

/// The relay checks a drop-box proof with one SHA-256 over the envelope and one over
/// 40 bytes; a sender makes 2^bits of the second kind on average (`solve` is that loop).
fn proof_of_work(c: &mut Criterion) {
    use backchannel_core::pow::{challenge, check, solve, work};
    let env = Envelope::from_bytes(&[0x5a; backchannel_core::envelope::ENVELOPE_SIZE]).unwrap();
    let ch = challenge(&[7; 32], &env);
    let nonce = solve(&ch, 12);
    let mut g = c.benchmark_group("pow");
    g.bench_function("relay check (challenge + proof)", |b| {
        b.iter(|| check(&challenge(black_box(&[7; 32]), black_box(&env)), 12, black_box(nonce)))
    });
    g.bench_function("one hash of the search", |b| {
        b.iter(|| work(black_box(&ch), black_box(nonce)))
    });
    g.sample_size(10);
    g.bench_function("solve 16 bits", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            solve(
                &challenge(&[7; 32], &Envelope::from_bytes(&[i as u8; 4096]).unwrap()),
                16,
            )
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = envelopes, padding, safety_numbers, frames, proof_of_work
}
criterion_main!(benches);
