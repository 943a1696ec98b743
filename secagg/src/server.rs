//! The server (coordinator) state machine.
//!
//! [`Server`] relays keys and ciphertexts it cannot read, adds every masked vector into a single
//! accumulator as it arrives (memory independent of the number of participants), enforces stage
//! deadlines from the caller-supplied clock, and at the end rebuilds exactly what the dropouts
//! require (mask keys of dropped participants, self-mask seeds of survivors) to remove the masks
//! and decode the sum. One type per stage; each consumes itself when the stage closes (all
//! expected participants answered, or the deadline passed) and returns the next.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::time::Instant;

use vsss_rs::curve25519_dalek::Scalar;
use x25519_dalek::PublicKey;
use zeroize::Zeroizing;

use crate::ParticipantId;
use crate::client::require_sorted;
use crate::crypto::{self, SHARE_CIPHERTEXT_LEN};
use crate::encoding;
use crate::error::{AbortReason, Error, MessageKind, Stage};
use crate::graph::NeighbourGraph;
use crate::params::SessionParams;
use crate::wire::{
    ClientMessage, ClientPayload, EncryptedShares, KeyAdvertisement, MaskedVector, ServerMessage,
    ServerPayload, SignedKeys, UnmaskShares,
};

/// The result of a successful round.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// Σ over survivors of their (clipped, fixed-point) inputs, per element. Error bound:
    /// `survivors.len() / scale` per element.
    pub sum: Vec<f64>,
    /// Participants whose inputs are in `sum`, ascending.
    pub survivors: Vec<ParticipantId>,
    /// All other participants, ascending.
    pub dropped: Vec<ParticipantId>,
}

impl Output {
    /// For inputs given with [`crate::Client::set_weighted_input`]: Σw·x / Σw per element (the
    /// last element of `sum` is Σw). `None` if the total weight is not positive.
    pub fn weighted_mean(&self) -> Option<Vec<f64>> {
        let (&total, values) = self.sum.split_last()?;
        (total > 0.0).then(|| values.iter().map(|v| v / total).collect())
    }
}

/// Something the caller of a [`Server`] should know.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A stage closed and the next one began.
    StageAdvanced(Stage),
    /// A participant missed `stage` (deadline) or sent an invalid message in it, and is out of
    /// the round from then on.
    Dropped {
        /// The participant.
        id: ParticipantId,
        /// The stage it failed.
        stage: Stage,
    },
    /// The round completed.
    Finished(Output),
    /// The round was abandoned; nothing was revealed.
    Aborted(AbortReason),
}

/// Who is expected to answer in a stage and who did.
#[derive(Debug, Default)]
struct Roster {
    alive: BTreeSet<ParticipantId>,
    responded: BTreeSet<ParticipantId>,
}

impl Roster {
    fn new(alive: BTreeSet<ParticipantId>) -> Roster {
        Roster {
            alive,
            responded: BTreeSet::new(),
        }
    }
    fn complete(&self) -> bool {
        self.responded.len() == self.alive.len()
    }
}

struct CollectKeys {
    adverts: BTreeMap<ParticipantId, KeyAdvertisement>,
    seen: HashSet<[u8; 32]>,
}

struct CollectShares {
    adverts: BTreeMap<ParticipantId, KeyAdvertisement>,
    inbox: BTreeMap<ParticipantId, Vec<EncryptedShares>>,
}

struct CollectMasked {
    adverts: BTreeMap<ParticipantId, KeyAdvertisement>,
    u2: BTreeSet<ParticipantId>,
    acc: Vec<u64>,
}

struct CollectSignatures {
    adverts: BTreeMap<ParticipantId, KeyAdvertisement>,
    survivors: Vec<ParticipantId>,
    dropped: Vec<ParticipantId>,
    acc: Vec<u64>,
    signatures: BTreeMap<ParticipantId, [u8; 64]>,
}

type ShareList = Vec<(ParticipantId, Zeroizing<Scalar>)>;

struct CollectUnmask {
    adverts: BTreeMap<ParticipantId, KeyAdvertisement>,
    survivors: Vec<ParticipantId>,
    dropped: Vec<ParticipantId>,
    acc: Vec<u64>,
    self_mask_shares: BTreeMap<ParticipantId, ShareList>,
    mask_key_shares: BTreeMap<ParticipantId, ShareList>,
}

enum ServerState {
    CollectKeys(CollectKeys),
    CollectShares(CollectShares),
    CollectMasked(CollectMasked),
    CollectSignatures(CollectSignatures),
    CollectUnmask(CollectUnmask),
    Finished,
    Aborted,
}

impl ServerState {
    fn stage(&self) -> Stage {
        match self {
            ServerState::CollectKeys(_) => Stage::AdvertiseKeys,
            ServerState::CollectShares(_) => Stage::ShareKeys,
            ServerState::CollectMasked(_) => Stage::MaskedInput,
            ServerState::CollectSignatures(_) => Stage::ConsistencyCheck,
            ServerState::CollectUnmask(_) => Stage::Unmasking,
            ServerState::Finished => Stage::Finished,
            ServerState::Aborted => Stage::Aborted,
        }
    }
}

/// The message kind each stage accepts.
fn expected_kind(stage: Stage) -> Option<MessageKind> {
    Some(match stage {
        Stage::AdvertiseKeys => MessageKind::AdvertiseKeys,
        Stage::ShareKeys => MessageKind::ShareKeys,
        Stage::MaskedInput => MessageKind::MaskedInput,
        Stage::ConsistencyCheck => MessageKind::ConsistencySignature,
        Stage::Unmasking => MessageKind::UnmaskShares,
        Stage::Finished | Stage::Aborted => return None,
    })
}

struct Ctx {
    params: SessionParams,
    /// The masking graph: complete from the start, a sparse one once the key directory fixes
    /// its seed (not read before).
    graph: NeighbourGraph,
    /// The [`crate::graph::directory_seed`] of the key directory sent (zero before).
    directory: [u8; 32],
    roster: Roster,
    deadline: Instant,
    outbox: VecDeque<(ParticipantId, ServerMessage)>,
    events: VecDeque<ServerEvent>,
}

impl Ctx {
    fn send(&mut self, to: ParticipantId, payload: ServerPayload) {
        let msg = ServerMessage {
            session_id: self.params.session_id,
            round: self.params.round,
            recipient: to,
            payload,
        };
        self.outbox.push_back((to, msg));
    }
}

/// The aggregator's side of a secure-aggregation round. See the crate docs for the call order.
pub struct Server {
    ctx: Ctx,
    state: ServerState,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("stage", &self.stage())
            .field("alive", &self.ctx.roster.alive.len())
            .field("responded", &self.ctx.roster.responded.len())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Starts a round at stage [`Stage::AdvertiseKeys`] with its deadline `now + stage_timeout`.
    /// The server sends nothing first: clients advertise their keys as soon as they are created.
    pub fn new(params: SessionParams, now: Instant) -> Result<Server, Error> {
        params.validate()?;
        let graph = NeighbourGraph::new(&params, &[0; 32]);
        let roster = Roster::new(params.ids());
        let deadline = now + params.stage_timeout;
        Ok(Server {
            ctx: Ctx {
                params,
                graph,
                directory: [0; 32],
                roster,
                deadline,
                outbox: VecDeque::new(),
                events: VecDeque::new(),
            },
            state: ServerState::CollectKeys(CollectKeys {
                adverts: BTreeMap::new(),
                seen: HashSet::new(),
            }),
        })
    }

    /// The current stage.
    pub fn stage(&self) -> Stage {
        self.state.stage()
    }

    /// The session parameters.
    pub fn params(&self) -> &SessionParams {
        &self.ctx.params
    }

    /// Processes `msg`, which the (authenticated) transport says came from `from`. Messages from
    /// the wrong session/round/sender, out of stage, duplicated, or from dropped participants are
    /// rejected without effect; an invalid message for the current stage drops its sender.
    pub fn handle_message(
        &mut self,
        from: ParticipantId,
        msg: ClientMessage,
        now: Instant,
    ) -> Result<(), Error> {
        let params = &self.ctx.params;
        params.check_session(&msg.session_id, msg.round)?;
        if !params.participants.contains_key(&from) {
            return Err(Error::UnknownParticipant(from));
        }
        if msg.sender != from {
            return Err(Error::WrongSender {
                claimed: msg.sender,
                actual: from,
            });
        }
        let stage = self.stage();
        let Some(expected) = expected_kind(stage) else {
            return Err(Error::Terminated(stage));
        };
        if msg.payload.kind() != expected {
            return Err(Error::OutOfStage {
                stage,
                got: msg.payload.kind(),
            });
        }
        if self.ctx.roster.responded.contains(&from) {
            return Err(Error::Duplicate { from, stage });
        }
        if !self.ctx.roster.alive.contains(&from) {
            return Err(Error::NotActive { from, stage });
        }
        let ctx = &mut self.ctx;
        let result = match (&mut self.state, msg.payload) {
            (ServerState::CollectKeys(s), ClientPayload::AdvertiseKeys(a)) => {
                s.accept(ctx, from, a)
            }
            (ServerState::CollectShares(s), ClientPayload::ShareKeys(list)) => {
                s.accept(ctx, from, list)
            }
            (ServerState::CollectMasked(s), ClientPayload::MaskedInput(v)) => {
                s.accept(ctx, from, &v)
            }
            (ServerState::CollectSignatures(s), ClientPayload::ConsistencySignature(sig)) => {
                s.accept(ctx, from, sig)
            }
            (ServerState::CollectUnmask(s), ClientPayload::UnmaskShares(u)) => {
                s.accept(ctx, from, &u)
            }
            (_, payload) => Err(Error::OutOfStage {
                stage,
                got: payload.kind(),
            }),
        };
        match &result {
            Ok(()) => {
                ctx.roster.responded.insert(from);
            }
            Err(_) => {
                ctx.roster.alive.remove(&from);
                ctx.events
                    .push_back(ServerEvent::Dropped { id: from, stage });
            }
        }
        if self.ctx.roster.complete() {
            self.close_stage(now);
        }
        result
    }

    /// When the current stage's deadline expires (`None` once the round is over).
    pub fn poll_timeout(&self) -> Option<Instant> {
        expected_kind(self.stage()).map(|_| self.ctx.deadline)
    }

    /// Closes the current stage if `now` is at or past its deadline: everyone who has not
    /// answered is dropped, and the round continues if at least `t` remain (else aborts).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|d| now >= d) {
            self.close_stage(now);
        }
    }

    /// The next message to send, with its addressee.
    pub fn poll_transmit(&mut self) -> Option<(ParticipantId, ServerMessage)> {
        self.ctx.outbox.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.ctx.events.pop_front()
    }

    fn close_stage(&mut self, now: Instant) {
        let stage = self.stage();
        let ctx = &mut self.ctx;
        let roster = std::mem::take(&mut ctx.roster);
        for &id in roster.alive.difference(&roster.responded) {
            ctx.events.push_back(ServerEvent::Dropped { id, stage });
        }
        let responders = roster.responded;
        let threshold = ctx.params.threshold;
        let state = std::mem::replace(&mut self.state, ServerState::Aborted);
        if responders.len() < threshold {
            let reason = AbortReason::TooFewParticipants {
                stage,
                have: responders.len(),
                threshold,
            };
            self.abort(stage, reason, &responders);
            return;
        }
        let next = match state {
            ServerState::CollectKeys(s) => s.finish(ctx, &responders),
            ServerState::CollectShares(s) => Ok(s.finish(ctx, &responders)),
            ServerState::CollectMasked(s) => Ok(s.finish(ctx, &responders)),
            ServerState::CollectSignatures(s) => Ok(s.finish(ctx, &responders)),
            ServerState::CollectUnmask(s) => s.finish(ctx).map(|output| {
                ctx.events.push_back(ServerEvent::Finished(output));
                ServerState::Finished
            }),
            ServerState::Finished | ServerState::Aborted => return,
        };
        match next {
            Ok(next) => {
                self.state = next;
                let stage = self.state.stage();
                if expected_kind(stage).is_some() {
                    ctx.roster = Roster::new(responders);
                    ctx.deadline = now + ctx.params.stage_timeout;
                    ctx.events.push_back(ServerEvent::StageAdvanced(stage));
                }
            }
            // An incomplete directory is refused while the advertisers wait; reconstruction
            // failures happen after every client has finished, with nobody to notify.
            Err(reason) if stage == Stage::AdvertiseKeys => self.abort(stage, reason, &responders),
            Err(reason) => self.abort(stage, reason, &BTreeSet::new()),
        }
    }

    fn abort(&mut self, stage: Stage, reason: AbortReason, notify: &BTreeSet<ParticipantId>) {
        for &id in notify {
            self.ctx.send(id, ServerPayload::Abort(stage));
        }
        self.state = ServerState::Aborted;
        self.ctx.events.push_back(ServerEvent::Aborted(reason));
    }
}

impl CollectKeys {
    fn accept(
        &mut self,
        ctx: &mut Ctx,
        from: ParticipantId,
        a: KeyAdvertisement,
    ) -> Result<(), Error> {
        let transcript = crypto::advertisement_transcript(&ctx.params, from, &a.c_pk, &a.s_pk);
        crypto::verify(&ctx.params, from, &transcript, &a.signature)?;
        if crypto::is_low_order(&a.c_pk) || crypto::is_low_order(&a.s_pk) {
            return Err(Error::NonContributoryKey { participant: from });
        }
        if a.c_pk == a.s_pk || self.seen.contains(&a.c_pk) || self.seen.contains(&a.s_pk) {
            return Err(Error::DuplicateKey { participant: from });
        }
        self.seen.insert(a.c_pk);
        self.seen.insert(a.s_pk);
        self.adverts.insert(from, a);
        Ok(())
    }

    /// Sends every advertiser the whole directory, from which it (and the server) derive the
    /// graph. A sparse graph needs every registered participant's advertisement: were the
    /// server free to leave some out, it could choose among subsets until the graph suits it.
    fn finish(
        self,
        ctx: &mut Ctx,
        u1: &BTreeSet<ParticipantId>,
    ) -> Result<ServerState, AbortReason> {
        let n = ctx.params.participants.len();
        if matches!(ctx.params.graph, crate::params::Graph::Sparse { .. }) && u1.len() < n {
            return Err(AbortReason::IncompleteDirectory {
                have: u1.len(),
                participants: n,
            });
        }
        let directory: Vec<SignedKeys> = u1
            .iter()
            .filter_map(|&v| {
                self.adverts.get(&v).map(|keys| SignedKeys {
                    id: v,
                    keys: keys.clone(),
                })
            })
            .collect();
        ctx.directory = crate::graph::directory_seed(&ctx.params, &directory);
        ctx.graph = NeighbourGraph::new(&ctx.params, &ctx.directory);
        for &u in u1 {
            ctx.send(u, ServerPayload::KeyDirectory(directory.clone()));
        }
        Ok(ServerState::CollectShares(CollectShares {
            adverts: self.adverts,
            inbox: BTreeMap::new(),
        }))
    }
}

impl CollectShares {
    fn accept(
        &mut self,
        ctx: &mut Ctx,
        from: ParticipantId,
        list: Vec<EncryptedShares>,
    ) -> Result<(), Error> {
        require_sorted(list.iter().map(|e| e.peer), from)?;
        let expected = ctx
            .graph
            .neighbours(from)
            .into_iter()
            .filter(|v| self.adverts.contains_key(v));
        if !expected.eq(list.iter().map(|e| e.peer)) {
            return Err(Error::UnexpectedEntries {
                sender: from,
                detail: "shares must go to exactly the neighbours that advertised keys",
            });
        }
        if list
            .iter()
            .any(|e| e.ciphertext.len() != SHARE_CIPHERTEXT_LEN)
        {
            return Err(Error::UnexpectedEntries {
                sender: from,
                detail: "share ciphertext of the wrong length",
            });
        }
        for e in list {
            self.inbox.entry(e.peer).or_default().push(EncryptedShares {
                peer: from,
                ciphertext: e.ciphertext,
            });
        }
        Ok(())
    }

    fn finish(mut self, ctx: &mut Ctx, u2: &BTreeSet<ParticipantId>) -> ServerState {
        for &v in u2 {
            let mut list = self.inbox.remove(&v).unwrap_or_default();
            list.retain(|e| u2.contains(&e.peer));
            list.sort_by_key(|e| e.peer);
            ctx.send(v, ServerPayload::ForwardedShares(list));
        }
        ServerState::CollectMasked(CollectMasked {
            adverts: self.adverts,
            u2: u2.clone(),
            acc: vec![0; ctx.params.vector_len],
        })
    }
}

impl CollectMasked {
    fn accept(
        &mut self,
        ctx: &mut Ctx,
        from: ParticipantId,
        v: &MaskedVector,
    ) -> Result<(), Error> {
        let params = &ctx.params;
        if u32::from(v.bits) != params.modulus_bits || v.values.len() != params.vector_len {
            return Err(Error::VectorShape {
                sender: from,
                got: v.values.len(),
                expected: params.vector_len,
                bits: v.bits,
                expected_bits: params.modulus_bits,
            });
        }
        for (a, x) in self.acc.iter_mut().zip(&v.values) {
            *a = a.wrapping_add(*x);
        }
        Ok(())
    }

    fn finish(self, ctx: &mut Ctx, u3: &BTreeSet<ParticipantId>) -> ServerState {
        let survivors: Vec<ParticipantId> = u3.iter().copied().collect();
        let dropped: Vec<ParticipantId> = self.u2.difference(u3).copied().collect();
        for &u in u3 {
            ctx.send(
                u,
                ServerPayload::ConsistencyRequest {
                    survivors: survivors.clone(),
                    dropped: dropped.clone(),
                },
            );
        }
        ServerState::CollectSignatures(CollectSignatures {
            adverts: self.adverts,
            survivors,
            dropped,
            acc: self.acc,
            signatures: BTreeMap::new(),
        })
    }
}

impl CollectSignatures {
    fn accept(&mut self, ctx: &mut Ctx, from: ParticipantId, sig: [u8; 64]) -> Result<(), Error> {
        let transcript = crypto::consistency_transcript(
            &ctx.params,
            &ctx.directory,
            from,
            &self.survivors,
            &self.dropped,
        );
        crypto::verify(&ctx.params, from, &transcript, &sig)?;
        self.signatures.insert(from, sig);
        Ok(())
    }

    fn finish(self, ctx: &mut Ctx, u4: &BTreeSet<ParticipantId>) -> ServerState {
        let signatures: Vec<(ParticipantId, [u8; 64])> = self
            .signatures
            .iter()
            .filter(|(id, _)| u4.contains(id))
            .map(|(&id, &sig)| (id, sig))
            .collect();
        for &u in u4 {
            ctx.send(u, ServerPayload::UnmaskRequest(signatures.clone()));
        }
        ServerState::CollectUnmask(CollectUnmask {
            adverts: self.adverts,
            survivors: self.survivors,
            dropped: self.dropped,
            acc: self.acc,
            self_mask_shares: BTreeMap::new(),
            mask_key_shares: BTreeMap::new(),
        })
    }
}

impl CollectUnmask {
    fn accept(
        &mut self,
        ctx: &mut Ctx,
        from: ParticipantId,
        u: &UnmaskShares,
    ) -> Result<(), Error> {
        let graph = &ctx.graph;
        let want_b = self
            .survivors
            .iter()
            .filter(|&&v| graph.in_closed_neighbourhood(from, v));
        let want_s = self
            .dropped
            .iter()
            .filter(|&&v| graph.are_neighbours(from, v));
        if !want_b.eq(u.self_mask_shares.iter().map(|(id, _)| id))
            || !want_s.eq(u.mask_key_shares.iter().map(|(id, _)| id))
        {
            return Err(Error::UnexpectedEntries {
                sender: from,
                detail: "unmasking shares must cover exactly the survivors / dropped neighbours",
            });
        }
        let parse = |list: &[(ParticipantId, [u8; 32])]| -> Result<ShareList, Error> {
            list.iter()
                .map(|(owner, bytes)| Ok((*owner, crypto::scalar_from_bytes(bytes, from)?)))
                .collect()
        };
        let b = parse(&u.self_mask_shares)?;
        let s = parse(&u.mask_key_shares)?;
        for (owner, share) in b {
            self.self_mask_shares
                .entry(owner)
                .or_default()
                .push((from, share));
        }
        for (owner, share) in s {
            self.mask_key_shares
                .entry(owner)
                .or_default()
                .push((from, share));
        }
        Ok(())
    }

    /// Removes the masks and decodes the sum.
    fn finish(mut self, ctx: &mut Ctx) -> Result<Output, AbortReason> {
        let params = &ctx.params;
        let bits = params.modulus_bits;
        let threshold = params.threshold;
        let mut bases: BTreeMap<Vec<ParticipantId>, Vec<Scalar>> = BTreeMap::new();
        let mut rebuild = |shares: Option<&ShareList>, owner: ParticipantId| {
            let shares = shares.map(Vec::as_slice).unwrap_or_default();
            // Any `t` shares determine the polynomial; more only cost interpolation time.
            let Some(shares) = shares.get(..threshold) else {
                return Err(AbortReason::NotEnoughShares {
                    owner,
                    have: shares.len(),
                    threshold,
                });
            };
            let holders: Vec<ParticipantId> = shares.iter().map(|(h, _)| *h).collect();
            if !bases.contains_key(&holders) {
                let basis = crypto::lagrange_at_zero(&holders).ok_or_else(|| {
                    AbortReason::SecretSharing("repeated or zero share holder".into())
                })?;
                bases.insert(holders.clone(), basis);
            }
            let basis = bases.get(&holders).map(Vec::as_slice).unwrap_or_default();
            Ok(crypto::combine_with(basis, shares))
        };
        for &v in &self.dropped {
            let secret = rebuild(self.mask_key_shares.get(&v), v)?;
            let s_sk = crypto::mask_secret_key(params, v, &secret);
            let advert = self
                .adverts
                .get(&v)
                .ok_or(AbortReason::InconsistentShares { owner: v })?;
            if PublicKey::from(&s_sk).as_bytes() != &advert.s_pk {
                return Err(AbortReason::InconsistentShares { owner: v });
            }
            for &u in self
                .survivors
                .iter()
                .filter(|&&u| ctx.graph.are_neighbours(u, v))
            {
                let pk = self.adverts.get(&u).map(|a| a.s_pk).unwrap_or_default();
                let shared = crypto::agree(&s_sk, u, &pk)
                    .map_err(|_| AbortReason::InconsistentShares { owner: v })?;
                let key = crypto::pairwise_mask_key(params, u, v, &shared);
                crypto::add_mask(
                    &mut self.acc,
                    &key,
                    bits,
                    !crypto::pairwise_sign_negative(u, v),
                );
            }
        }
        for &u in &self.survivors {
            let secret = rebuild(self.self_mask_shares.get(&u), u)?;
            crypto::add_mask(
                &mut self.acc,
                &crypto::self_mask_key(params, u, &secret),
                bits,
                true,
            );
        }
        let sum = encoding::decode(&self.acc, params.encoding, bits);
        let survivors_set: BTreeSet<ParticipantId> = self.survivors.iter().copied().collect();
        Ok(Output {
            sum,
            dropped: params.ids().difference(&survivors_set).copied().collect(),
            survivors: self.survivors,
        })
    }
}
