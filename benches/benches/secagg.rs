//! Criterion benchmarks for `confide-secagg`: mask-expansion throughput against the raw ChaCha20
//! keystream, and the real client-masking / server-unmasking paths at small sizes. The large grid
//! (n up to 500, d up to 10^6) is timed once by `src/bin/secagg_grid.rs`; see `RESULTS.md`.

use std::hint::black_box;
use std::time::Duration;

use confide_benches::secagg::{
    complete_params, dropouts, masking_round, time_client_masking, time_server_unmasking,
    unmasking_round,
};
use confide_secagg::crypto::{add_mask, raw_keystream};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

/// Keystream bytes per iteration of the throughput benchmarks.
const BYTES: usize = 4 << 20;

fn mask_expansion(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask_expansion");
    g.throughput(Throughput::Bytes(BYTES as u64));
    let key = [7u8; 32];
    let mut buf = vec![0u8; BYTES];
    g.bench_function("raw_chacha20_apply_keystream", |b| {
        b.iter(|| raw_keystream(black_box(&key), black_box(&mut buf)))
    });
    let mut acc32 = vec![0u64; BYTES / 4];
    g.bench_function("add_mask_z2^32_words", |b| {
        b.iter(|| add_mask(black_box(&mut acc32), black_box(&key), 32, false))
    });
    let mut acc64 = vec![0u64; BYTES / 8];
    g.bench_function("add_mask_z2^64_words", |b| {
        b.iter(|| add_mask(black_box(&mut acc64), black_box(&key), 64, true))
    });
    g.finish();
}

fn protocol(c: &mut Criterion) {
    let d = 100_000;
    let n = 10;
    let mut g = c.benchmark_group("secagg_n10_d1e5");
    let params = complete_params(n, d);
    g.bench_function("client_masking", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| time_client_masking(&mut masking_round(&params, &[])))
                .sum()
        })
    });
    for (label, frac) in [("0", 0.0), ("10", 0.1), ("30", 0.3)] {
        let dropped = dropouts(n, frac);
        g.bench_function(format!("server_unmasking_dropout_{label}pct"), |b| {
            b.iter_batched(
                || unmasking_round(&params, &dropped),
                |(mut h, last)| time_server_unmasking(&mut h, last),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = mask_expansion, protocol
}
criterion_main!(benches);
