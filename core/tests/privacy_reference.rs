//! The accountant against an independent one: ε for the Poisson-subsampled Gaussian over a grid
//! of sampling rates, noise multipliers, steps and δ, as Google's `dp-accounting` computes it
//! (`fixtures/rdp_reference.json`, made by `fixtures/make_rdp_reference.py`), to three
//! significant digits.

use confide_core::privacy::dp_sgd_epsilon;

#[test]
fn epsilon_matches_dp_accounting_to_three_significant_digits() {
    let text = include_str!("fixtures/rdp_reference.json");
    let fixture: serde_json::Value = serde_json::from_str(text).expect("fixture JSON");
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(cases.len() >= 100, "the grid has {} cases", cases.len());
    let mut worst = 0.0f64;
    for case in cases {
        let get = |k: &str| case[k].as_f64().unwrap_or_else(|| panic!("{k} in {case}"));
        let (q, sigma, steps, delta, expected) = (get("q"), get("sigma"), get("steps") as u64, get("delta"), get("epsilon"));
        let eps = dp_sgd_epsilon(q, sigma, steps, delta).expect("valid parameters");
        let rel = (eps - expected).abs() / expected.abs().max(1e-12);
        worst = worst.max(rel);
        assert!(rel < 5e-4, "q={q} sigma={sigma} steps={steps} delta={delta}: {eps} vs dp-accounting {expected}");
    }
    eprintln!("worst relative difference: {worst:.2e}");
}
