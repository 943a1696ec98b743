//! Session configuration: [`SessionParams`] (shared by the server and every client of a round),
//! the fixed-point [`FixedPoint`] encoding, the masking [`Graph`] choice, the per-bank
//! [`ClientPolicy`], and the configuration-time checks ([`SessionParams::validate`]), including
//! the headroom check that guarantees the sum cannot wrap around the modulus.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;

use crate::ParticipantId;

/// Most participants a session may have (bounds every list on the wire).
pub const MAX_PARTICIPANTS: usize = 10_000;
/// Longest input vector (elements) a session may have (bounds the masked-input message).
pub const MAX_VECTOR_LEN: usize = 1 << 27;
/// Largest number of participants for which [`SessionParams::recommended`] picks the complete graph.
pub const COMPLETE_GRAPH_LIMIT: usize = 64;

/// Fixed-point encoding of real inputs: each value is clipped to `[-clip, clip]`, multiplied by
/// `scale` and stochastically rounded to an integer (unbiased: `E[round(v)] = v`).
///
/// Quantisation bound: every client's rounding error is below `1/scale` per element, so a decoded
/// sum over `m` survivors differs from the exact sum of the clipped inputs by less than
/// `m / scale` per element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FixedPoint {
    /// Inputs are clipped to `[-clip, clip]` (for the weighted helper this bounds `weight·x` and
    /// the weight itself).
    pub clip: f64,
    /// Multiplier applied before rounding; the resolution is `1/scale`.
    pub scale: f64,
}

impl FixedPoint {
    /// Largest absolute integer one client can contribute per element: `⌈clip·scale⌉`.
    pub fn max_abs_encoded(&self) -> f64 {
        (self.clip * self.scale).ceil()
    }
}

/// Which pairs of participants share pairwise masks (and Shamir shares).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Graph {
    /// Every pair (Bonawitz et al. 2017). Cost O(n) PRG expansions per client.
    Complete,
    /// SecAgg+ (Bell et al. 2020): a random `k`-regular Harary-style ring seeded from the hash
    /// of the signed key directory ([`crate::graph::directory_seed`]), which needs every
    /// participant's advertisement. `k` must be even and below the number of participants. The threshold `t` then applies
    /// to each closed neighbourhood (a participant and its `k` neighbours).
    Sparse {
        /// Degree of every participant.
        k: usize,
    },
}

impl Graph {
    /// A heuristic SecAgg+ degree for `n` participants: the even number near `3·⌈log2 n⌉`,
    /// capped below `n`. Bell et al. show `k = O(log n)` suffices; raise it for more dropout
    /// tolerance.
    pub fn recommended_degree(n: usize) -> usize {
        let log = usize::BITS - n.saturating_sub(1).leading_zeros();
        let k = (3 * log as usize).next_multiple_of(2);
        let cap = n.saturating_sub(1) & !1; // largest even number below n
        k.min(cap)
    }
}

/// What a bank demands before it lets its (masked) update be used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientPolicy {
    /// The client refuses to send its masked input if it received shares from fewer than
    /// `min_participants - 1` peers, and refuses to help unmask if the signed survivor set has
    /// fewer than `min_participants` members. `0` or `1` means no extra demand beyond `t`.
    /// It is also checked against the key directory (refusing before any share leaves), and
    /// [`crate::Client::new`] rejects a minimum that can never be met. With a sparse graph the
    /// key-exchange checks count the client's closed neighbourhood (at most `k + 1`), the
    /// survivor check the whole signed list.
    pub min_participants: usize,
}

/// Everything the server and the clients of one round must agree on.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionParams {
    /// Unique per session (e.g. random); binds every signature, key and mask to the session.
    pub session_id: [u8; 32],
    /// Round number within the session; fresh keys are used every round.
    pub round: u64,
    /// Registry of participants: Shamir x-coordinate (nonzero) → long-term Ed25519 verifying key.
    pub participants: BTreeMap<ParticipantId, VerifyingKey>,
    /// Shamir threshold `t` (per closed neighbourhood for a sparse graph): at least `t`
    /// participants must survive to the end, and any `t` of them can unmask.
    pub threshold: usize,
    /// Number of elements in every input vector (including the weight element when the weighted
    /// helper [`crate::Client::set_weighted_input`] is used).
    pub vector_len: usize,
    /// Arithmetic is in Z_{2^modulus_bits}, 1..=64 (32 is a good default).
    pub modulus_bits: u32,
    /// Fixed-point encoding of the inputs.
    pub encoding: FixedPoint,
    /// Masking graph.
    pub graph: Graph,
    /// How long the server waits for each stage before dropping the participants that are late.
    pub stage_timeout: Duration,
}

/// A [`SessionParams`] that cannot be used, with the reason.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Fewer than two participants.
    #[error("{0} participants; at least 2 are needed")]
    TooFewParticipants(usize),
    /// More than [`MAX_PARTICIPANTS`].
    #[error("{0} participants; at most {MAX_PARTICIPANTS} are supported")]
    TooManyParticipants(usize),
    /// Participant id 0 (reserved: it is the Shamir x-coordinate of the secret).
    #[error("participant id 0 is reserved")]
    ZeroParticipantId,
    /// Two participants share a verifying key.
    #[error("participants {0} and {1} have the same verifying key")]
    DuplicateVerifyingKey(ParticipantId, ParticipantId),
    /// The threshold is outside `(holders/2, holders]` or below 2.
    #[error(
        "threshold {threshold} must satisfy 2 <= t, holders/2 < t <= holders (holders = {holders})"
    )]
    Threshold {
        /// The threshold given.
        threshold: usize,
        /// Share holders per secret (n, or k+1 for a sparse graph).
        holders: usize,
    },
    /// The sparse degree is odd, below 2 or not below `n`.
    #[error("sparse graph degree {k} must be even, >= 2 and < n = {n}")]
    SparseDegree {
        /// The degree given.
        k: usize,
        /// Number of participants.
        n: usize,
    },
    /// Vector length 0 or above [`MAX_VECTOR_LEN`].
    #[error("vector length {0} is outside 1..={MAX_VECTOR_LEN}")]
    VectorLen(usize),
    /// Modulus bits outside 1..=64.
    #[error("modulus bits {0} outside 1..=64")]
    ModulusBits(u32),
    /// Clip or scale not finite and positive.
    #[error("clip {clip} and scale {scale} must be finite and positive")]
    Encoding {
        /// The clip given.
        clip: f64,
        /// The scale given.
        scale: f64,
    },
    /// `n·⌈clip·scale⌉ >= 2^(b-1)`: the sum could wrap around.
    #[error("headroom: {n} participants x {per_client} (= ceil(clip*scale)) must stay below 2^{}", .bits - 1)]
    Headroom {
        /// Number of participants.
        n: usize,
        /// `⌈clip·scale⌉`.
        per_client: f64,
        /// Modulus bits.
        bits: u32,
    },
    /// A zero stage timeout.
    #[error("the stage timeout must be positive")]
    StageTimeout,
}

impl SessionParams {
    /// Parameters with sensible defaults for `participants`: complete graph up to
    /// [`COMPLETE_GRAPH_LIMIT`] participants, else a sparse graph of
    /// [`Graph::recommended_degree`]; threshold `⌊2·holders/3⌋ + 1`; 32-bit modulus; the largest
    /// power-of-two scale that passes the headroom check for `clip`.
    pub fn recommended(
        session_id: [u8; 32],
        round: u64,
        participants: BTreeMap<ParticipantId, VerifyingKey>,
        vector_len: usize,
        clip: f64,
        stage_timeout: Duration,
    ) -> SessionParams {
        let n = participants.len();
        let graph = if n <= COMPLETE_GRAPH_LIMIT {
            Graph::Complete
        } else {
            Graph::Sparse {
                k: Graph::recommended_degree(n),
            }
        };
        let modulus_bits = 32;
        let mut params = SessionParams {
            session_id,
            round,
            participants,
            threshold: 0,
            vector_len,
            modulus_bits,
            encoding: FixedPoint { clip, scale: 1.0 },
            graph,
            stage_timeout,
        };
        params.threshold = (2 * params.holders() / 3 + 1).min(params.holders());
        params.encoding.scale = Self::max_scale(n, clip, modulus_bits);
        params
    }

    /// The largest power-of-two scale for which `n·⌈clip·scale⌉ < 2^(bits-1)`.
    pub fn max_scale(n: usize, clip: f64, bits: u32) -> f64 {
        let limit = 2f64.powi(bits.saturating_sub(1) as i32);
        let mut scale = 2f64.powi(62);
        while scale > f64::MIN_POSITIVE && (n as f64) * (clip * scale).ceil() >= limit {
            scale /= 2.0;
        }
        scale
    }

    /// Number of holders of each participant's shares: `n` for the complete graph, `k + 1` for a
    /// sparse one.
    pub fn holders(&self) -> usize {
        match self.graph {
            Graph::Complete => self.participants.len(),
            Graph::Sparse { k } => (k + 1).min(self.participants.len()),
        }
    }

    /// `2^b − 1`.
    pub(crate) fn modulus_mask(&self) -> u64 {
        modulus_mask(self.modulus_bits)
    }

    /// Checks every configuration rule; call before constructing a client or a server (both do).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self.participants.len();
        if n < 2 {
            return Err(ConfigError::TooFewParticipants(n));
        }
        if n > MAX_PARTICIPANTS {
            return Err(ConfigError::TooManyParticipants(n));
        }
        if self.participants.contains_key(&0) {
            return Err(ConfigError::ZeroParticipantId);
        }
        let mut seen: BTreeMap<[u8; 32], ParticipantId> = BTreeMap::new();
        for (&id, key) in &self.participants {
            if let Some(&other) = seen.get(key.as_bytes()) {
                return Err(ConfigError::DuplicateVerifyingKey(other, id));
            }
            seen.insert(*key.as_bytes(), id);
        }
        if let Graph::Sparse { k } = self.graph
            && (k < 2 || k % 2 != 0 || k >= n)
        {
            return Err(ConfigError::SparseDegree { k, n });
        }
        let holders = self.holders();
        let t = self.threshold;
        if t < 2 || t > holders || 2 * t <= holders {
            return Err(ConfigError::Threshold {
                threshold: t,
                holders,
            });
        }
        if self.vector_len == 0 || self.vector_len > MAX_VECTOR_LEN {
            return Err(ConfigError::VectorLen(self.vector_len));
        }
        if !(1..=64).contains(&self.modulus_bits) {
            return Err(ConfigError::ModulusBits(self.modulus_bits));
        }
        let FixedPoint { clip, scale } = self.encoding;
        if !(clip.is_finite() && scale.is_finite() && clip > 0.0 && scale > 0.0) {
            return Err(ConfigError::Encoding { clip, scale });
        }
        let per_client = self.encoding.max_abs_encoded();
        let limit = 2f64.powi(self.modulus_bits as i32 - 1);
        let total = (n as f64) * per_client;
        if total.is_nan() || total >= limit {
            return Err(ConfigError::Headroom {
                n,
                per_client,
                bits: self.modulus_bits,
            });
        }
        if self.stage_timeout.is_zero() {
            return Err(ConfigError::StageTimeout);
        }
        Ok(())
    }

    /// Fails unless a message names this session and round.
    pub(crate) fn check_session(
        &self,
        session_id: &[u8; 32],
        round: u64,
    ) -> Result<(), crate::Error> {
        if *session_id != self.session_id {
            return Err(crate::Error::WrongSession);
        }
        if round != self.round {
            return Err(crate::Error::WrongRound {
                expected: self.round,
                got: round,
            });
        }
        Ok(())
    }

    /// The participant ids as a set.
    pub(crate) fn ids(&self) -> BTreeSet<ParticipantId> {
        self.participants.keys().copied().collect()
    }
}

/// `2^bits − 1` for `bits` in 1..=64.
pub(crate) fn modulus_mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}
