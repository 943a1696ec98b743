//! Adapter between a [`super::phase::Phase`] and the secure-aggregation server state machine
//! (`confide_secagg::Server`): maps institutions to participant ids, chooses each phase's
//! fixed-point encoding, relays protocol messages, and turns the server's events into
//! participant outcomes and the phase's sum. Pure: time comes in as arguments.
//!
//! Encodings: statistics and evaluation vectors are small and hold large counts and sums, so
//! they use a 64-bit ring with a fixed resolution; model updates use the job's modulus (32 bits
//! by default) with a range of `rows × update_clip`, which keeps the weighted mean's error near
//! `10·m²/2^31` per parameter for `m` contributors. Institution-level DP updates
//! ([`Encoding::NoisyUpdate`]) use the grid and clip of [`confide_core::discrete_noise::NoisePlan::choose`]:
//! every bank's noisy coordinate is an exact grid value the clip covers, and n of them cannot wrap.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use confide_core::discrete_noise::NoisePlan;
use confide_core::job::{JobSpec, PrivacyMode};
use confide_core::contribution::TRAIN_EXTRAS;
use confide_proto::v1 as pb;
use confide_secagg::{
    ClientMessage, FixedPoint, Graph, ParticipantId, Server, ServerEvent, SessionParams, Stage,
};

use super::errors::PhaseError;
use crate::hub::WorkerInfo;

/// What a phase's vector holds, which decides its fixed-point encoding.
#[derive(Debug, Clone, Copy)]
pub enum Encoding {
    /// Preprocessing counts, sums and sums of squares.
    Statistics,
    /// Sample-weighted model update, then Σ weight and Σ weight·loss; `rows` is the
    /// federation's row count (an upper bound on any institution's weight).
    WeightedUpdate {
        /// Rows across the federation.
        rows: u64,
    },
    /// Histogram counts and metric sums.
    Counts,
    /// A tree level's gradient, hessian and row-count histograms, on the grid banks round their
    /// gradients to ([`confide_gbdt::train::GRID`]): every bank's sums are exact grid values,
    /// so the masked sum is the pooled rows' sum without rounding.
    Histograms,
    /// Institution-level DP: each bank's clipped update on the grid plus its discrete Gaussian
    /// noise share, then weight 1 and loss 0 (see [`confide_core::discrete_noise`]).
    NoisyUpdate,
}

/// Resolution (1/scale) of the 64-bit encodings.
const STATISTICS_SCALE: f64 = 256.0;
const COUNTS_SCALE: f64 = 65_536.0;
/// 1 / [`confide_gbdt::train::GRID`]: with 64-bit ring elements the range stays above the banks'
/// default `min_exact_clip` (10⁹) up to 256 banks.
const HISTOGRAM_SCALE: f64 = 1.0 / confide_gbdt::train::GRID;

impl Encoding {
    /// Modulus bits and fixed-point encoding for `n` participants and vectors of `vector_len`.
    fn fixed_point(self, spec: &JobSpec, n: usize, vector_len: usize) -> Result<(u32, FixedPoint), String> {
        // Largest clip for which n·⌈clip·scale⌉ stays below 2^62 (half the 64-bit headroom).
        let wide = |scale: f64| FixedPoint { clip: 2f64.powi(62) / (n.max(1) as f64) / scale, scale };
        Ok(match self {
            Encoding::Statistics => (64, wide(STATISTICS_SCALE)),
            Encoding::Counts => (64, wide(COUNTS_SCALE)),
            Encoding::Histograms => (64, wide(HISTOGRAM_SCALE)),
            Encoding::WeightedUpdate { rows } => {
                let bits = spec.secure_aggregation.modulus_bits;
                let clip = rows.max(1) as f64 * spec.secure_aggregation.update_clip;
                (bits, FixedPoint { clip, scale: SessionParams::max_scale(n, clip, bits) })
            }
            Encoding::NoisyUpdate => {
                let plan = noise_plan(spec, vector_len.saturating_sub(TRAIN_EXTRAS), n)?;
                (spec.secure_aggregation.modulus_bits, FixedPoint { clip: plan.encoding_clip(), scale: plan.scale() })
            }
        })
    }
}

/// The noise plan of an institution-level DP job's training round with `participants` banks
/// and `parameters` model parameters: the finest grid the job's modulus holds without
/// wrapping. Fails, naming what to change, when the ring is too small or the job is not in
/// institution mode.
pub fn noise_plan(spec: &JobSpec, parameters: usize, participants: usize) -> Result<NoisePlan, String> {
    let p = spec.privacy.as_ref().filter(|p| p.mode == PrivacyMode::Institution).ok_or("the job is not institution-level DP")?;
    NoisePlan::choose(
        p.clip_norm,
        p.sigma(),
        parameters.max(1),
        participants,
        p.dropout_allowance,
        spec.secure_aggregation.modulus_bits,
    )
    .map_err(|e| format!("institution-level differential privacy: {e}"))
}

/// For submit: refuses an institution-level DP job whose ring cannot hold the noisy sum of up to
/// `max_participants` banks (the most the integrator expects in one round, e.g. the registered
/// workers) for a model of `parameters` parameters. Other jobs pass. More banks need more room,
/// so a job that passes here passes every smaller round too.
pub fn check_institution_ring(spec: &JobSpec, parameters: usize, max_participants: usize) -> Result<(), String> {
    match &spec.privacy {
        Some(p) if p.mode == PrivacyMode::Institution => {
            let n = max_participants.max(spec.selection.min_workers);
            noise_plan(spec, parameters, n).map(|_| ())
        }
        _ => Ok(()),
    }
}

/// The threshold for `holders` share holders: at least `⌊2h/3⌋ + 1` (what banks demand: a
/// bare majority falls to one colluding bank and a split view at unmasking) and at least
/// `⌈fraction·h⌉`.
pub fn threshold(holders: usize, fraction: f64) -> usize {
    // The epsilon keeps ⌈(2/3)·3⌉ at 2 despite f64 rounding.
    let by_fraction = (fraction * holders as f64 - 1e-9).ceil().max(0.0) as usize;
    by_fraction.max(2 * holders / 3 + 1).clamp(2.min(holders), holders)
}

/// The masking graph for `n` participants when the job asks for `sparse_neighbours` (0 =
/// automatic): complete below [`confide_secagg::params::COMPLETE_GRAPH_LIMIT`] participants
/// (banks refuse a sparse one there) and, above it, automatic; otherwise at least the
/// recommended degree (banks refuse less), capped below `n`.
pub fn graph(n: usize, sparse_neighbours: u32) -> Graph {
    let limit = confide_secagg::params::COMPLETE_GRAPH_LIMIT;
    let recommended = Graph::recommended_degree(n);
    match sparse_neighbours as usize {
        _ if n < limit => Graph::Complete,
        0 if n == limit => Graph::Complete,
        k => Graph::Sparse { k: k.max(recommended).min(n.saturating_sub(1) & !1) },
    }
}

/// Secure summation of one phase.
pub struct SecurePhase {
    server: Server,
    worker_of: BTreeMap<ParticipantId, String>,
    id_of: BTreeMap<String, ParticipantId>,
    stage: Stage,
    /// Participants whose message for the current stage arrived.
    responded: BTreeSet<ParticipantId>,
    /// Participants the driver knows are gone (failed, disconnected).
    gone: BTreeSet<ParticipantId>,
    /// Participants the server dropped.
    dropped: BTreeSet<ParticipantId>,
    outbox: VecDeque<(String, Vec<u8>)>,
    new_dropped: Vec<(String, String)>,
    contributed: Vec<String>,
    result: Option<Result<Vec<f64>, String>>,
}

impl std::fmt::Debug for SecurePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurePhase").field("stage", &self.stage).field("participants", &self.worker_of).finish()
    }
}

impl SecurePhase {
    /// Sets up the server for `participants` (sorted ids 1..=n) and one
    /// [`pb::AggregationSetup`] per participant. Fails when a participant has no registered
    /// signing key, or the parameters break a protocol rule. `session_id` must be fresh for
    /// every phase (the caller draws it from its seeded generator).
    #[allow(clippy::too_many_arguments)] // each is a distinct input of one session's setup
    pub fn new(
        spec: &JobSpec,
        participants: &[String],
        workers: &[WorkerInfo],
        vector_len: usize,
        encoding: Encoding,
        round: u64,
        session_id: [u8; 32],
        now: Instant,
    ) -> Result<(Self, Vec<(String, pb::AggregationSetup)>), String> {
        let mut sorted: Vec<&String> = participants.iter().collect();
        sorted.sort();
        let mut keys = BTreeMap::new();
        let mut worker_of = BTreeMap::new();
        let mut identities = BTreeMap::new();
        for (i, w) in sorted.iter().enumerate() {
            let id = i as ParticipantId + 1;
            let info = workers.iter().find(|x| &x.id == *w).ok_or_else(|| format!("worker `{w}` is not connected"))?;
            let bytes: [u8; 32] = info
                .signing_public_key
                .as_slice()
                .try_into()
                .map_err(|_| format!("worker `{w}` registered no Ed25519 signing key"))?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| format!("worker `{w}` registered an invalid signing key"))?;
            keys.insert(id, key);
            worker_of.insert(id, (*w).clone());
            identities.insert(id, ((*w).clone(), info.certificate.clone()));
        }
        let n = keys.len();
        let graph = graph(n, spec.secure_aggregation.sparse_neighbours);
        let (modulus_bits, fixed) = encoding.fixed_point(spec, n, vector_len)?;
        let mut params = SessionParams {
            session_id,
            round,
            participants: keys,
            threshold: 0,
            vector_len,
            modulus_bits,
            encoding: fixed,
            graph,
            stage_timeout: std::time::Duration::from_secs(spec.secure_aggregation.stage_timeout_secs),
        };
        params.threshold = threshold(params.holders(), spec.secure_aggregation.threshold_fraction);
        let server = Server::new(params.clone(), now).map_err(|e| e.to_string())?;
        let min = spec.selection.min_workers as u32;
        let setups = worker_of
            .iter()
            .map(|(id, w)| {
                let secure = confide_proto::secagg::setup_for(&params, *id, &identities, min);
                (w.clone(), pb::AggregationSetup { insecure_plain: false, vector_len: vector_len as u64, secure: Some(secure), participants: n as u32 })
            })
            .collect();
        let id_of = worker_of.iter().map(|(id, w)| (w.clone(), *id)).collect();
        let phase = Self {
            server,
            worker_of,
            id_of,
            stage: Stage::AdvertiseKeys,
            responded: BTreeSet::new(),
            gone: BTreeSet::new(),
            dropped: BTreeSet::new(),
            outbox: VecDeque::new(),
            new_dropped: Vec::new(),
            contributed: Vec::new(),
            result: None,
        };
        Ok((phase, setups))
    }

    /// Feeds one protocol message from `from`.
    pub fn handle_message(&mut self, from: &str, bytes: &[u8], now: Instant) -> Result<(), PhaseError> {
        let id = *self.id_of.get(from).ok_or_else(|| PhaseError::NotParticipant(from.into()))?;
        let msg = ClientMessage::decode(bytes).map_err(|e| PhaseError::SecAgg(e.to_string()))?;
        let result = self.server.handle_message(id, msg, now).map_err(|e| PhaseError::SecAgg(e.to_string()));
        if result.is_ok() {
            self.responded.insert(id);
        }
        self.pump(now);
        result
    }

    /// The driver learned that `worker` is gone (it reported a failure or disconnected).
    pub fn drop_participant(&mut self, worker: &str, now: Instant) {
        if let Some(id) = self.id_of.get(worker) {
            self.gone.insert(*id);
            self.pump(now);
        }
    }

    /// When the server's current stage times out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.server.poll_timeout()
    }

    /// Advances the server's clock.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.server.handle_timeout(now);
        self.pump(now);
    }

    /// The phase deadline passed before the protocol finished: nothing is revealed.
    pub fn abort_at_deadline(&mut self) {
        if self.result.is_none() {
            self.result = Some(Err(format!("round deadline passed during secure aggregation ({:?})", self.stage)));
        }
    }

    /// Next message to relay: (worker, encoded `ServerMessage`).
    pub fn poll_transmit(&mut self) -> Option<(String, Vec<u8>)> {
        self.outbox.pop_front()
    }

    /// Participants the server dropped since the last call, with the reason.
    pub fn take_dropped(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.new_dropped)
    }

    /// Participants whose input is in the sum (once finished).
    pub fn take_contributed(&mut self) -> Vec<String> {
        std::mem::take(&mut self.contributed)
    }

    /// The sum, or why there is none, once the protocol ended.
    pub fn take_result(&mut self) -> Option<Result<Vec<f64>, String>> {
        self.result.take()
    }

    /// Drains the server, then closes the current stage early when everyone still expected
    /// has answered and only participants known to be gone are missing (instead of waiting for
    /// the stage timeout).
    fn pump(&mut self, now: Instant) {
        loop {
            while let Some((id, msg)) = self.server.poll_transmit() {
                if let Some(w) = self.worker_of.get(&id) {
                    self.outbox.push_back((w.clone(), msg.encode()));
                }
            }
            while let Some(ev) = self.server.poll_event() {
                match ev {
                    ServerEvent::StageAdvanced(stage) => {
                        self.stage = stage;
                        self.responded.clear();
                    }
                    ServerEvent::Dropped { id, stage } => {
                        self.dropped.insert(id);
                        if let Some(w) = self.worker_of.get(&id) {
                            self.new_dropped.push((w.clone(), format!("dropped from secure aggregation at {stage:?}")));
                        }
                    }
                    ServerEvent::Finished(out) => {
                        self.contributed = out.survivors.iter().filter_map(|id| self.worker_of.get(id).cloned()).collect();
                        self.result = Some(Ok(out.sum));
                    }
                    ServerEvent::Aborted(reason) => {
                        self.result = Some(Err(format!("secure aggregation aborted, nothing revealed: {reason}")));
                    }
                    _ => {}
                }
            }
            if matches!(self.stage, Stage::Finished | Stage::Aborted) {
                return;
            }
            let expected: Vec<ParticipantId> =
                self.worker_of.keys().copied().filter(|id| !self.dropped.contains(id)).collect();
            let missing: Vec<&ParticipantId> = expected.iter().filter(|id| !self.responded.contains(id)).collect();
            let only_gone_missing = !missing.is_empty() && missing.iter().all(|id| self.gone.contains(id));
            match self.server.poll_timeout() {
                Some(deadline) if only_gone_missing => self.server.handle_timeout(deadline.max(now)),
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_above_two_thirds_and_tolerates_dropouts() {
        let default = confide_core::job::SecureAggregationSpec::default().threshold_fraction;
        assert_eq!(threshold(3, default), 3);
        assert_eq!(threshold(4, default), 3);
        assert_eq!(threshold(5, default), 4);
        assert_eq!(threshold(6, default), 5);
        assert_eq!(threshold(10, default), 7);
        assert_eq!(threshold(10, 0.9), 9);
        assert_eq!(threshold(19, default), 13, "k = 18: 19 holders");
        for h in 2..200 {
            assert!(threshold(h, default) > 2 * h / 3, "h = {h}");
        }
    }

    #[test]
    fn the_graph_meets_the_banks_sparse_floors() {
        assert_eq!(graph(10, 0), Graph::Complete);
        assert_eq!(graph(10, 18), Graph::Complete, "banks refuse a sparse graph below 64");
        assert_eq!(graph(64, 0), Graph::Complete);
        assert_eq!(graph(64, 18), Graph::Sparse { k: 18 });
        assert_eq!(graph(1000, 18), Graph::Sparse { k: Graph::recommended_degree(1000) }, "raised to the recommended degree");
        assert_eq!(graph(1000, 100), Graph::Sparse { k: 100 });
        assert_eq!(graph(65, 0), Graph::Sparse { k: Graph::recommended_degree(65) });
        assert_eq!(Graph::recommended_degree(64) as u32, confide_core::job::MIN_SPARSE_NEIGHBOURS);
    }

    fn institution_job(extra: &str) -> JobSpec {
        let text = format!(
            "name = \"dp\"\ndataset = \"d\"\n[model]\nkind = \"mlp\"\nhidden = [8]\n[training]\nrounds = 10\nbatch_size = 64\nlearning_rate = 0.1\n\
             {extra}\n[privacy]\nmode = \"institution\"\nnoise_multiplier = 1.0\nclip_norm = 0.5\ndropout_allowance = 1\n"
        );
        JobSpec::from_toml(&text).expect("valid DP job")
    }

    #[test]
    fn an_institution_dp_round_gets_an_exact_grid_whose_noisy_sum_cannot_wrap() {
        let spec = institution_job("");
        let (bits, fixed) = Encoding::NoisyUpdate.fixed_point(&spec, 5, 1000 + TRAIN_EXTRAS).expect("encoding");
        assert_eq!(bits, spec.secure_aggregation.modulus_bits);
        assert_eq!(fixed.scale.log2().fract(), 0.0, "the scale is a power of two");
        assert!(fixed.scale >= 1.0 && fixed.clip >= 1.0, "weight 1 is exact and within the clip");
        assert!(5.0 * fixed.max_abs_encoded() < 2f64.powi(bits as i32 - 1), "{fixed:?}");
        let plan = noise_plan(&spec, 1000, 5).expect("plan");
        assert_eq!(plan.noise_shares, 4);
        assert!(plan.clip_norm / plan.gamma <= fixed.clip * fixed.scale);
    }

    #[test]
    fn a_ring_too_small_for_the_noisy_sum_is_refused_at_submit_naming_the_fix() {
        let small = institution_job("[secure_aggregation]\nmodulus_bits = 16");
        let err = check_institution_ring(&small, 100_000, 1000).expect_err("16 bits cannot hold 1000 banks' noise");
        assert!(err.contains("modulus_bits"), "{err}");
        check_institution_ring(&institution_job(""), 100_000, 10).expect("32 bits hold it");
        let mut plain = small;
        plain.privacy = None;
        check_institution_ring(&plain, 100_000, 1000).expect("not DP: no noise to hold");
    }
}
