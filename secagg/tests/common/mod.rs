//! Helpers shared by the integration tests: deterministic inputs and result checks.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;

use confide_secagg::testing::{Harness, plain_sum};
use confide_secagg::{ClientPolicy, Output, ParticipantId, SessionParams};

/// Deterministic inputs in roughly [-1.2, 1.2] (some get clipped).
pub fn inputs(params: &SessionParams, salt: u64) -> BTreeMap<ParticipantId, Vec<f64>> {
    params
        .participants
        .keys()
        .map(|&id| {
            let v = (0..params.vector_len)
                .map(|i| {
                    let x = (u64::from(id) * 7919 + i as u64 * 104_729 + salt * 31)
                        .wrapping_mul(2_654_435_761)
                        % 2401;
                    (x as f64 / 1000.0) - 1.2
                })
                .collect();
            (id, v)
        })
        .collect()
}

/// Asserts `out.sum` is the plain sum of the survivors' clipped inputs within the documented
/// quantisation bound (survivors / scale per element, plus float slack).
pub fn assert_sum(
    params: &SessionParams,
    inputs: &BTreeMap<ParticipantId, Vec<f64>>,
    out: &Output,
) {
    let expect = plain_sum(
        inputs,
        &out.survivors,
        params.encoding.clip,
        params.vector_len,
    );
    let bound = out.survivors.len() as f64 / params.encoding.scale + 1e-9;
    assert_eq!(out.sum.len(), expect.len());
    for (i, (got, want)) in out.sum.iter().zip(&expect).enumerate() {
        assert!(
            (got - want).abs() <= bound,
            "element {i}: got {got}, want {want}, bound {bound}"
        );
    }
}

/// A harness with inputs set.
pub fn harness(
    params: &SessionParams,
    policy: ClientPolicy,
) -> (Harness, BTreeMap<ParticipantId, Vec<f64>>) {
    let mut h = Harness::new(params.clone(), policy).unwrap();
    let inputs = inputs(params, 1);
    h.set_inputs(&inputs).unwrap();
    (h, inputs)
}

use confide_secagg::{ClientMessage, MessageKind, ServerMessage};

/// Delivers traffic until the server emits messages of `kind`; returns that batch undelivered.
pub fn until_server_sends(
    h: &mut Harness,
    kind: MessageKind,
) -> Vec<(ParticipantId, ServerMessage)> {
    for _ in 0..200 {
        for m in h.take_to_server() {
            let _ = h.deliver_to_server(m);
        }
        let out = h.take_to_clients();
        if out.iter().any(|(_, m)| m.payload.kind() == kind) {
            return out;
        }
        if out.is_empty() {
            h.fire_timeout();
        }
        for (to, m) in out {
            let _ = h.deliver_to_client(to, m);
        }
    }
    panic!("server never sent {kind:?}");
}

/// Delivers traffic until clients emit messages of `kind`; returns that batch undelivered.
pub fn until_clients_send(h: &mut Harness, kind: MessageKind) -> Vec<ClientMessage> {
    for _ in 0..200 {
        let out = h.take_to_server();
        if out.iter().any(|m| m.payload.kind() == kind) {
            return out;
        }
        for m in out {
            let _ = h.deliver_to_server(m);
        }
        let back = h.take_to_clients();
        if back.is_empty() {
            h.fire_timeout();
        }
        for (to, m) in back {
            let _ = h.deliver_to_client(to, m);
        }
    }
    panic!("clients never sent {kind:?}");
}
