//! The masking graph: who shares pairwise masks and Shamir shares with whom.
//!
//! For [`Graph::Complete`] every pair is connected. For [`Graph::Sparse`] (SecAgg+, Bell et al.
//! 2020) the participants are placed on a ring in an order derived deterministically from the
//! session id (a ChaCha20-keyed Fisher–Yates shuffle), and each is connected to its `k/2`
//! nearest ring neighbours on either side (a Harary graph H_{k,n}): exactly `k`-regular, and
//! identical on every party because it depends only on the session id and the registry.

use std::collections::{BTreeMap, BTreeSet};

use rand_core::RngCore;

use crate::ParticipantId;
use crate::crypto::Drbg;
use crate::params::{Graph, SessionParams};

/// The neighbourhoods of one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighbourGraph {
    all: BTreeSet<ParticipantId>,
    /// `None` for the complete graph.
    sparse: Option<BTreeMap<ParticipantId, BTreeSet<ParticipantId>>>,
}

impl NeighbourGraph {
    /// Derives the graph of `params` (which should be valid).
    pub fn new(params: &SessionParams) -> NeighbourGraph {
        let all = params.ids();
        let sparse = match params.graph {
            Graph::Complete => None,
            Graph::Sparse { k } => Some(harary(&params.session_id, &all, k)),
        };
        NeighbourGraph { all, sparse }
    }

    /// Whether `a` and `b` (distinct) share masks.
    pub fn are_neighbours(&self, a: ParticipantId, b: ParticipantId) -> bool {
        if a == b || !self.all.contains(&a) || !self.all.contains(&b) {
            return false;
        }
        match &self.sparse {
            None => true,
            Some(adj) => adj.get(&a).is_some_and(|s| s.contains(&b)),
        }
    }

    /// The neighbours of `id` (excluding `id`), ascending.
    pub fn neighbours(&self, id: ParticipantId) -> Vec<ParticipantId> {
        match &self.sparse {
            None if self.all.contains(&id) => {
                self.all.iter().copied().filter(|&v| v != id).collect()
            }
            None => Vec::new(),
            Some(adj) => adj
                .get(&id)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
        }
    }

    /// `id` and its neighbours: the holders of `id`'s shares, ascending.
    pub fn closed_neighbourhood(&self, id: ParticipantId) -> BTreeSet<ParticipantId> {
        let mut set: BTreeSet<ParticipantId> = self.neighbours(id).into_iter().collect();
        if self.all.contains(&id) {
            set.insert(id);
        }
        set
    }

    /// Whether `b` is `a` or one of its neighbours.
    pub fn in_closed_neighbourhood(&self, a: ParticipantId, b: ParticipantId) -> bool {
        a == b && self.all.contains(&a) || self.are_neighbours(a, b)
    }
}

/// Harary graph H_{k,n} over a session-seeded random ring order.
fn harary(
    session_id: &[u8; 32],
    ids: &BTreeSet<ParticipantId>,
    k: usize,
) -> BTreeMap<ParticipantId, BTreeSet<ParticipantId>> {
    let mut ring: Vec<ParticipantId> = ids.iter().copied().collect();
    let mut rng = Drbg::derive(session_id, b"graph", &[]);
    // Fisher–Yates with rejection sampling (unbiased).
    for i in (1..ring.len()).rev() {
        let j = uniform_below(&mut rng, i as u64 + 1) as usize;
        ring.swap(i, j);
    }
    let n = ring.len();
    let half = k / 2;
    let mut adj: BTreeMap<ParticipantId, BTreeSet<ParticipantId>> = BTreeMap::new();
    for (pos, &id) in ring.iter().enumerate() {
        let entry = adj.entry(id).or_default();
        for step in 1..=half.min(n.saturating_sub(1)) {
            for &other in [ring.get((pos + step) % n), ring.get((pos + n - step) % n)]
                .into_iter()
                .flatten()
            {
                if other != id {
                    entry.insert(other);
                }
            }
        }
    }
    adj
}

/// Uniform integer in `0..bound` (bound ≥ 1) by rejection sampling.
fn uniform_below(rng: &mut Drbg, bound: u64) -> u64 {
    let zone = u64::MAX - (u64::MAX % bound);
    loop {
        let x = rng.next_u64();
        if x < zone {
            return x % bound;
        }
    }
}
