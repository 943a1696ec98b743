//! Setup for the secure-aggregation benchmarks: rounds of `confide-secagg` driven through its
//! in-memory harness up to the point that is timed (a client about to mask its input, or the
//! server about to receive the last unmasking message).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use confide_secagg::testing::{DropPoint, Harness, session_params};
use confide_secagg::{
    ClientMessage, ClientPolicy, Graph, MessageKind, ParticipantId, SessionParams,
};

/// Complete-graph parameters for `n` participants, vectors of `d` elements, 32-bit modulus,
/// threshold `⌊2n/3⌋ + 1`.
pub fn complete_params(n: u32, d: usize) -> SessionParams {
    session_params(n, 2 * n as usize / 3 + 1, d, Graph::Complete, 32)
}

/// SecAgg+ parameters: degree `k`, threshold `⌈k/2⌉ + 1`.
pub fn sparse_params(n: u32, d: usize, k: usize) -> SessionParams {
    session_params(n, k.div_ceil(2) + 1, d, Graph::Sparse { k }, 32)
}

/// A deterministic input vector.
pub fn input(id: ParticipantId, d: usize) -> Vec<f64> {
    (0..d)
        .map(|i| ((i as u64 * 31 + u64::from(id) * 17) % 200) as f64 / 100.0 - 1.0)
        .collect()
}

/// The `⌊fraction·n⌋` highest ids: the participants that drop out (after sharing their keys, the
/// case that costs the server the most).
pub fn dropouts(n: u32, fraction: f64) -> Vec<ParticipantId> {
    let k = (f64::from(n) * fraction).floor() as u32;
    (n - k + 1..=n).collect()
}

/// A round where every client has exchanged keys and waits for its input (no messages in flight).
pub fn masking_round(params: &SessionParams, dropped: &[ParticipantId]) -> Harness {
    let mut h =
        Harness::new(params.clone(), ClientPolicy::default()).unwrap_or_else(|e| panic!("{e}"));
    h.wire = false;
    for &id in dropped {
        h.drop_at(id, DropPoint::AfterShareKeys);
    }
    h.pump();
    h
}

/// Times client 1 masking its input in a round prepared by [`masking_round`].
pub fn time_client_masking(h: &mut Harness) -> Duration {
    let x = input(1, h.server.params().vector_len);
    let Some(client) = h.clients.get_mut(&1) else {
        return Duration::ZERO;
    };
    let start = Instant::now();
    client.set_input(&x).unwrap_or_else(|e| panic!("{e}"));
    start.elapsed()
}

/// A round run up to the server waiting for the last unmasking message, which is returned.
pub fn unmasking_round(
    params: &SessionParams,
    dropped: &[ParticipantId],
) -> (Harness, ClientMessage) {
    let mut h = masking_round(params, dropped);
    let d = params.vector_len;
    let inputs: BTreeMap<ParticipantId, Vec<f64>> = params
        .participants
        .keys()
        .filter(|id| !dropped.contains(id))
        .map(|&id| (id, input(id, d)))
        .collect();
    h.set_inputs(&inputs).unwrap_or_else(|e| panic!("{e}"));
    let mut held = h.run_until_held(MessageKind::UnmaskShares);
    let last = held
        .pop()
        .unwrap_or_else(|| panic!("no unmasking messages"));
    for m in held {
        h.deliver_to_server(m).unwrap_or_else(|e| panic!("{e}"));
    }
    (h, last)
}

/// Times the server handling the last unmasking message (reconstruction, mask removal, decoding)
/// and checks the round finished.
pub fn time_server_unmasking(h: &mut Harness, last: ClientMessage) -> Duration {
    let now = h.clock.now();
    let from = last.sender;
    let start = Instant::now();
    h.server
        .handle_message(from, last, now)
        .unwrap_or_else(|e| panic!("{e}"));
    let elapsed = start.elapsed();
    h.collect();
    if let Err(e) = h.outcome() {
        panic!("round did not finish: {e}");
    }
    elapsed
}
