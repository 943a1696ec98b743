//! The masking graph: who shares pairwise masks and Shamir shares with whom.
//!
//! For [`Graph::Complete`] every pair is connected. For [`Graph::Sparse`] (SecAgg+, Bell et al.
//! 2020) the participants are placed on a ring in an order derived deterministically from a
//! seed (a ChaCha20-keyed Fisher–Yates shuffle), and each is connected to its `k/2` nearest
//! ring neighbours on either side (a Harary graph H_{k,n}): exactly `k`-regular.
//!
//! The seed is [`directory_seed`]: a hash of every participant's signed key advertisement, not
//! the session id. The server chooses the session id and could try ids until a colluder sits
//! next to a victim; the advertisements carry fresh keys signed by each bank's long-term key,
//! so the server cannot produce another directory without the banks. Every client receives the
//! whole directory, verifies every signature, and derives the graph itself; the seed is bound
//! into the consistency signatures, so clients shown different directories do not unmask.

use std::collections::{BTreeMap, BTreeSet};

use rand_core::RngCore;

use crate::ParticipantId;
use crate::crypto::Drbg;
use crate::params::{Graph, SessionParams};
use crate::wire::SignedKeys;

/// The graph seed of a key directory (every participant's advertisement, ascending by id):
/// SHA-256 over the session, the round and each entry's id, keys and signature.
pub fn directory_seed(params: &SessionParams, directory: &[SignedKeys]) -> [u8; 32] {
    use sha2::Digest;
    let mut entries = Vec::with_capacity(directory.len() * (4 + 128));
    for e in directory {
        entries.extend_from_slice(&e.id.to_be_bytes());
        entries.extend_from_slice(&e.keys.c_pk);
        entries.extend_from_slice(&e.keys.s_pk);
        entries.extend_from_slice(&e.keys.signature);
    }
    let t = crate::crypto::transcript(
        b"graph seed",
        &[&params.session_id, &params.round.to_be_bytes(), &entries],
    );
    sha2::Sha256::digest(&t).into()
}

/// The neighbourhoods of one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighbourGraph {
    all: BTreeSet<ParticipantId>,
    /// `None` for the complete graph.
    sparse: Option<BTreeMap<ParticipantId, BTreeSet<ParticipantId>>>,
}

impl NeighbourGraph {
    /// Derives the graph of `params` (which should be valid) from `seed` (the
    /// [`directory_seed`]; unused by the complete graph).
    pub fn new(params: &SessionParams, seed: &[u8; 32]) -> NeighbourGraph {
        let all = params.ids();
        let sparse = match params.graph {
            Graph::Complete => None,
            Graph::Sparse { k } => Some(harary(seed, &all, k)),
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

/// Harary graph H_{k,n} over a seeded random ring order.
fn harary(
    seed: &[u8; 32],
    ids: &BTreeSet<ParticipantId>,
    k: usize,
) -> BTreeMap<ParticipantId, BTreeSet<ParticipantId>> {
    let mut ring: Vec<ParticipantId> = ids.iter().copied().collect();
    let mut rng = Drbg::derive(seed, b"graph", &[]);
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
