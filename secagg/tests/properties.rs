//! Property tests over n, t, vector length, modulus and dropouts injected at every stage:
//! whenever at least t survive, the decoded sum equals the plain (weighted) sum within the
//! quantisation bound; below t, the round aborts cleanly and nothing is revealed.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::{assert_sum, inputs};
use confide_secagg::testing::{DropPoint, Harness, session_params};
use confide_secagg::*;
use proptest::prelude::*;

fn drop_point() -> impl Strategy<Value = Option<DropPoint>> {
    prop_oneof![
        3 => Just(None),
        1 => proptest::sample::select(DropPoint::ALL.to_vec()).prop_map(Some),
    ]
}

/// (n, t, len, bits, drops)
fn complete_case() -> impl Strategy<Value = (u32, usize, usize, u32, Vec<Option<DropPoint>>)> {
    (2u32..=12).prop_flat_map(|n| {
        let t = (n as usize / 2 + 1).max(2)..=n as usize;
        (
            Just(n),
            t,
            1usize..=64,
            prop_oneof![Just(32u32), Just(20), Just(64)],
            proptest::collection::vec(drop_point(), n as usize),
        )
    })
}

fn check_abort_reveals_nothing(h: &Harness) {
    assert_eq!(h.server.stage(), Stage::Aborted);
    assert!(
        !h.server_events
            .iter()
            .any(|e| matches!(e, ServerEvent::Finished(_)))
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn complete_graph_sum_or_clean_abort((n, t, len, bits, drops) in complete_case(), salt in 0u64..1000) {
        let params = session_params(n, t, len, Graph::Complete, bits);
        prop_assume!(params.validate().is_ok());
        let mut h = Harness::new(params.clone(), ClientPolicy::default()).unwrap();
        let inputs = inputs(&params, salt);
        h.set_inputs(&inputs).unwrap();
        let mut unmaskers = 0;
        let mut expected_survivors = Vec::new();
        for (i, d) in drops.iter().enumerate() {
            let id = i as u32 + 1;
            match d {
                Some(p) => {
                    h.drop_at(id, *p);
                    if p.in_sum() { expected_survivors.push(id); }
                }
                None => { unmaskers += 1; expected_survivors.push(id); }
            }
        }
        let result = h.run();
        if unmaskers >= t {
            let out = result.unwrap();
            prop_assert_eq!(&out.survivors, &expected_survivors);
            assert_sum(&params, &inputs, &out);
        } else {
            prop_assert!(matches!(result, Err(AbortReason::TooFewParticipants { .. })), "{:?}", result);
            check_abort_reveals_nothing(&h);
        }
    }

    #[test]
    fn weighted_sum_matches((n, t, len, _bits, drops) in complete_case(), salt in 0u64..1000) {
        let len = len.max(2);
        let mut params = session_params(n, t, len, Graph::Complete, 32);
        params.encoding.clip = 50.0;
        params.encoding.scale = SessionParams::max_scale(n as usize, 50.0, 32);
        let mut h = Harness::new(params.clone(), ClientPolicy::default()).unwrap();
        let raw = inputs(&params, salt);
        let mut weighted: BTreeMap<ParticipantId, Vec<f64>> = BTreeMap::new();
        for (&id, x) in &raw {
            let w = f64::from(id % 5 + 1) * 3.0;
            h.clients.get_mut(&id).unwrap().set_weighted_input(&x[..len - 1], w).unwrap();
            let mut v: Vec<f64> = x[..len - 1].iter().map(|v| v * w).collect();
            v.push(w);
            weighted.insert(id, v);
        }
        let mut unmaskers = 0;
        for (i, d) in drops.iter().enumerate() {
            match d { Some(p) => h.drop_at(i as u32 + 1, *p), None => unmaskers += 1 }
        }
        match h.run() {
            Ok(out) => {
                prop_assert!(unmaskers >= t);
                assert_sum(&params, &weighted, &out);
                let mean = out.weighted_mean().unwrap();
                let tw: f64 = out.survivors.iter().map(|id| weighted[id][len - 1]).sum();
                for (j, m) in mean.iter().enumerate() {
                    let want: f64 = out.survivors.iter().map(|id| weighted[id][j]).sum::<f64>() / tw;
                    prop_assert!((m - want).abs() < 1e-6, "{} vs {}", m, want);
                }
            }
            Err(_) => {
                prop_assert!(unmaskers < t);
                check_abort_reveals_nothing(&h);
            }
        }
    }

    #[test]
    fn sparse_graph_sum_or_clean_abort(
        n in 6u32..=12,
        half_k in 1usize..=5,
        extra_t in 0usize..=2,
        len in 1usize..=64,
        drops in proptest::collection::vec(drop_point(), 12),
        salt in 0u64..1000,
    ) {
        let k = (2 * half_k).min((n as usize - 1) & !1);
        let t = (k.div_ceil(2) + 1 + extra_t).min(k + 1).max(2);
        let params = session_params(n, t, len, Graph::Sparse { k }, 32);
        prop_assume!(params.validate().is_ok());
        let mut h = Harness::new(params.clone(), ClientPolicy::default()).unwrap();
        let inputs = inputs(&params, salt);
        h.set_inputs(&inputs).unwrap();
        let mut any_drop = false;
        for (i, d) in drops.iter().take(n as usize).enumerate() {
            if let Some(p) = d { h.drop_at(i as u32 + 1, *p); any_drop = true; }
        }
        match h.run() {
            Ok(out) => {
                assert_sum(&params, &inputs, &out);
                // Every participant that stayed to the end is in the sum.
                for id in 1..=n {
                    if drops[id as usize - 1].is_none() && out.dropped.contains(&id) {
                        // Only possible if it refused (its neighbourhood fell below t).
                        prop_assert!(h.client_events[&id].iter().any(|e| matches!(e, ClientEvent::Refused(_))));
                    }
                }
            }
            Err(reason) => {
                prop_assert!(any_drop, "no dropouts but aborted: {:?}", reason);
                check_abort_reveals_nothing(&h);
            }
        }
    }
}
