//! One-shot timings of the secure-aggregation grid that is too expensive for criterion:
//! client masking and server unmasking for n ∈ {10, 100, 500}, d ∈ {10^5, 10^6},
//! dropout ∈ {0, 10 %, 30 %}, plus SecAgg+ rows at n = 500. Prints a markdown table.
//!
//! Usage: `secagg_grid [max_n] [max_d]` (defaults 500 and 1000000). A point is skipped (and
//! marked so) when the estimated keystream to generate exceeds `SECAGG_GRID_BUDGET_GB`
//! (default 150 GB), since every surviving client must really mask its input first.

use std::time::Instant;

use confide_benches::secagg::{
    complete_params, dropouts, masking_round, sparse_params, time_client_masking,
    time_server_unmasking, unmasking_round,
};
use confide_secagg::{Graph, SessionParams};

fn main() {
    let mut args = std::env::args().skip(1);
    let max_n: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(500);
    let max_d: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let budget_gb: f64 = std::env::var("SECAGG_GRID_BUDGET_GB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150.0);
    println!("| graph | n | d | dropout | client masking (s) | server unmasking (s) | setup (s) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for n in [10u32, 100, 500].into_iter().filter(|&n| n <= max_n) {
        for d in [100_000usize, 1_000_000]
            .into_iter()
            .filter(|&d| d <= max_d)
        {
            run_point("complete", complete_params(n, d), budget_gb);
            if n == 500 {
                let k = Graph::recommended_degree(n as usize);
                run_point(&format!("sparse k={k}"), sparse_params(n, d, k), budget_gb);
            }
        }
    }
}

/// Peers each client masks with.
fn degree(p: &SessionParams) -> f64 {
    match p.graph {
        Graph::Complete => p.participants.len() as f64 - 1.0,
        Graph::Sparse { k } => k as f64,
    }
}

fn run_point(label: &str, params: SessionParams, budget_gb: f64) {
    let n = params.participants.len() as u32;
    let d = params.vector_len;
    let word_bytes = 4.0;
    let per_client_gb = (degree(&params) + 1.0) * d as f64 * word_bytes / 1e9;
    // Client masking: one client, measured once per (n, d).
    let setup = Instant::now();
    let mut h = masking_round(&params, &[]);
    let setup_s = setup.elapsed().as_secs_f64();
    let client = time_client_masking(&mut h).as_secs_f64();
    drop(h);
    for (pct, frac) in [(0, 0.0), (10, 0.1), (30, 0.3)] {
        let dropped = dropouts(n, frac);
        let survivors = f64::from(n) - dropped.len() as f64;
        let needed_gb = survivors * per_client_gb;
        let client_cell = if pct == 0 {
            format!("{client:.3}")
        } else {
            "〃".into()
        };
        if needed_gb > budget_gb {
            println!(
                "| {label} | {n} | {d} | {pct} % | {client_cell} | not measured (setup needs ~{needed_gb:.0} GB of keystream) | {setup_s:.1} |"
            );
            continue;
        }
        let setup = Instant::now();
        let (mut h, last) = unmasking_round(&params, &dropped);
        let setup_s = setup.elapsed().as_secs_f64();
        let server = time_server_unmasking(&mut h, last).as_secs_f64();
        println!("| {label} | {n} | {d} | {pct} % | {client_cell} | {server:.3} | {setup_s:.1} |");
    }
}
