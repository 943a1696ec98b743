//! The client (one bank) state machine.
//!
//! [`Client`] owns the per-round secrets (the two X25519 key pairs, the self-mask seed `b_u` and
//! the mask-key field element `s_u`), the received Shamir shares and the encoded input. It is
//! sans-IO: the caller feeds it [`ServerMessage`]s with [`Client::handle_message`] and sends what
//! [`Client::poll_transmit`] returns. Internally each stage is its own type that consumes itself
//! and returns the next one; any fault while processing the message of the current stage is
//! final (the client refuses or fails and sends nothing more), while messages that do not belong
//! to the current stage (replays, wrong session/round/recipient) are rejected without changing
//! the state.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::time::Instant;

use ed25519_dalek::{Signer, SigningKey};
use rand_core::RngCore;
use vsss_rs::curve25519_dalek::Scalar;
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};
use zeroize::Zeroizing;

use crate::ParticipantId;
use crate::crypto::{self, Drbg};
use crate::encoding;
use crate::error::{Error, Refusal, Stage};
use crate::graph::NeighbourGraph;
use crate::params::{ClientPolicy, SessionParams};
use crate::wire::{
    ClientMessage, ClientPayload, EncryptedShares, KeyAdvertisement, MaskedVector, ServerMessage,
    ServerPayload, SignedKeys, UnmaskShares,
};

/// The id used in errors about lists the server sent.
pub const SERVER: ParticipantId = 0;

/// Something the caller of a [`Client`] should know.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The client sent its message for a stage and now waits for the server to close it.
    StageAdvanced(Stage),
    /// Shares are exchanged; the masked input goes out as soon as [`Client::set_input`] (or
    /// [`Client::set_weighted_input`]) is called.
    InputNeeded,
    /// The client sent its unmasking shares; its part of the round is complete.
    Done,
    /// The client refused to go on (see [`Refusal`]); nothing more is sent.
    Refused(Refusal),
    /// A fault in the current stage's message (bad signature, tampered ciphertext, …); nothing
    /// more is sent.
    Failed(Error),
    /// The server aborted the round at the given stage.
    Aborted(Stage),
}

/// Pairwise material for one neighbour.
struct PeerSecrets {
    /// Agreement on the c-keys (share encryption).
    c_shared: SharedSecret,
    /// PRG key of the pairwise mask.
    mask_key: Zeroizing<[u8; 32]>,
}

/// The two shares a client holds of a peer's secrets: (self-mask seed share, mask-key share).
type SharePair = (Zeroizing<Scalar>, Zeroizing<Scalar>);

/// Stage 0: advertised keys, waiting for the key directory.
struct AwaitDirectory {
    c_sk: StaticSecret,
    s_sk: StaticSecret,
    b_secret: Zeroizing<Scalar>,
    s_secret: Zeroizing<Scalar>,
    advert: KeyAdvertisement,
}

/// Stage 1: sent encrypted shares, waiting for the peers' shares.
struct AwaitShares {
    peers: BTreeMap<ParticipantId, PeerSecrets>,
    own: SharePair,
    b_secret: Zeroizing<Scalar>,
}

/// Stage 2: shares received, waiting for the input to be set.
struct ReadyToMask {
    received: BTreeMap<ParticipantId, SharePair>,
    mask_keys: BTreeMap<ParticipantId, Zeroizing<[u8; 32]>>,
    b_secret: Zeroizing<Scalar>,
}

/// Stage 2 done: masked input sent, waiting for the survivor / dropped lists.
struct AwaitConsistency {
    received: BTreeMap<ParticipantId, SharePair>,
}

/// Stage 3 done: signed the lists, waiting for everyone's signatures.
struct AwaitUnmask {
    received: BTreeMap<ParticipantId, SharePair>,
    survivors: Vec<ParticipantId>,
    dropped: Vec<ParticipantId>,
}

enum ClientState {
    AwaitDirectory(Box<AwaitDirectory>),
    AwaitShares(AwaitShares),
    ReadyToMask(ReadyToMask),
    AwaitConsistency(AwaitConsistency),
    AwaitUnmask(AwaitUnmask),
    Done,
    Failed,
}

/// State shared by all stages.
struct Ctx {
    params: SessionParams,
    /// The masking graph: complete from the start, a sparse one once the key directory fixes
    /// its seed (not read before).
    graph: NeighbourGraph,
    /// The [`crate::graph::directory_seed`] of the key directory received (zero before).
    directory: [u8; 32],
    me: ParticipantId,
    identity: SigningKey,
    policy: ClientPolicy,
    rng: Drbg,
    input: Option<Zeroizing<Vec<u64>>>,
    outbox: VecDeque<ClientMessage>,
    events: VecDeque<ClientEvent>,
    deadline: Option<Instant>,
}

/// One participant's side of a secure-aggregation round. See the crate docs for the call order.
pub struct Client {
    ctx: Ctx,
    state: ClientState,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("me", &self.ctx.me)
            .field("stage", &self.stage())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Creates the client and queues its key advertisement (poll it with
    /// [`Client::poll_transmit`]). `rng_seed` must be fresh and secret for every round (e.g. from
    /// the OS RNG); all randomness of the round is derived from it.
    pub fn new(
        params: SessionParams,
        me: ParticipantId,
        identity: SigningKey,
        policy: ClientPolicy,
        rng_seed: [u8; 32],
    ) -> Result<Client, Error> {
        params.validate()?;
        let registered = params
            .participants
            .get(&me)
            .ok_or(Error::UnknownParticipant(me))?;
        if registered.as_bytes() != identity.verifying_key().as_bytes() {
            return Err(Error::IdentityMismatch(me));
        }
        // The key-exchange checks count the neighbourhood, which has at most `holders` members.
        if policy.min_participants > params.holders() {
            return Err(Refusal::BelowPolicyMinimum {
                stage: Stage::AdvertiseKeys,
                have: params.holders(),
                minimum: policy.min_participants,
            }
            .into());
        }
        let mut rng = Drbg::derive(
            &rng_seed,
            b"client",
            &[
                &params.session_id,
                &params.round.to_be_bytes(),
                &me.to_be_bytes(),
            ],
        );
        let mut c_bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(c_bytes.as_mut());
        let c_sk = StaticSecret::from(*c_bytes);
        let s_secret = crypto::random_scalar(&mut rng);
        let s_sk = crypto::mask_secret_key(&params, me, &s_secret);
        let b_secret = crypto::random_scalar(&mut rng);
        let c_pk = *PublicKey::from(&c_sk).as_bytes();
        let s_pk = *PublicKey::from(&s_sk).as_bytes();
        let transcript = crypto::advertisement_transcript(&params, me, &c_pk, &s_pk);
        let advert = KeyAdvertisement {
            c_pk,
            s_pk,
            signature: identity.sign(&transcript).to_bytes(),
        };
        let graph = NeighbourGraph::new(&params, &[0; 32]);
        let mut ctx = Ctx {
            params,
            graph,
            directory: [0; 32],
            me,
            identity,
            policy,
            rng,
            input: None,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            deadline: None,
        };
        ctx.send(ClientPayload::AdvertiseKeys(advert.clone()));
        Ok(Client {
            ctx,
            state: ClientState::AwaitDirectory(Box::new(AwaitDirectory {
                c_sk,
                s_sk,
                b_secret,
                s_secret,
                advert,
            })),
        })
    }

    /// This client's id.
    pub fn id(&self) -> ParticipantId {
        self.ctx.me
    }

    /// The stage this client is in: the stage whose server message it waits for (or, while
    /// waiting for its input, [`Stage::MaskedInput`]); [`Stage::Finished`] once its part is done
    /// and [`Stage::Aborted`] after a refusal, failure or abort.
    pub fn stage(&self) -> Stage {
        match self.state {
            ClientState::AwaitDirectory(_) => Stage::AdvertiseKeys,
            ClientState::AwaitShares(_) => Stage::ShareKeys,
            ClientState::ReadyToMask(_) | ClientState::AwaitConsistency(_) => Stage::MaskedInput,
            ClientState::AwaitUnmask(_) => Stage::ConsistencyCheck,
            ClientState::Done => Stage::Finished,
            ClientState::Failed => Stage::Aborted,
        }
    }

    /// Sets the input vector (`vector_len` values; clipped and stochastically rounded). May be
    /// called at any time before the masked-input stage; the masked input is sent as soon as both
    /// the input and the peers' shares are there.
    pub fn set_input(&mut self, values: &[f64]) -> Result<(), Error> {
        if matches!(self.state, ClientState::Done | ClientState::Failed) {
            return Err(Error::Terminated(self.stage()));
        }
        if self.ctx.input.is_some()
            || matches!(
                self.state,
                ClientState::AwaitConsistency(_) | ClientState::AwaitUnmask(_)
            )
        {
            return Err(Error::InputAlreadySet);
        }
        let expected = self.ctx.params.vector_len;
        if values.len() != expected {
            return Err(Error::InputLength {
                got: values.len(),
                expected,
            });
        }
        let encoded = encoding::encode(
            values,
            self.ctx.params.encoding,
            self.ctx.params.modulus_bits,
            &mut self.ctx.rng,
        )?;
        self.ctx.input = Some(encoded);
        if matches!(self.state, ClientState::ReadyToMask(_)) {
            let state = std::mem::replace(&mut self.state, ClientState::Failed);
            if let ClientState::ReadyToMask(ready) = state {
                let next = ready.mask(&mut self.ctx);
                self.state = next;
                self.ctx
                    .events
                    .push_back(ClientEvent::StageAdvanced(self.stage()));
            }
        }
        Ok(())
    }

    /// Weighted helper: encodes `[weight·values..., weight]` (so `vector_len` must be
    /// `values.len() + 1`), letting the server compute the weighted mean Σw·x / Σw
    /// ([`crate::Output::weighted_mean`]). Choose `clip` ≥ max |weight·x| and ≥ max weight.
    pub fn set_weighted_input(&mut self, values: &[f64], weight: f64) -> Result<(), Error> {
        if !weight.is_finite() || weight < 0.0 {
            return Err(Error::NonFiniteInput {
                index: values.len(),
            });
        }
        let mut v: Vec<f64> = values.iter().map(|x| x * weight).collect();
        v.push(weight);
        self.set_input(&v)
    }

    /// Processes a message from the server. `now` arms the client's deadline (see
    /// [`Client::poll_timeout`]).
    pub fn handle_message(&mut self, msg: ServerMessage, now: Instant) -> Result<(), Error> {
        let params = &self.ctx.params;
        params.check_session(&msg.session_id, msg.round)?;
        if msg.recipient != self.ctx.me {
            return Err(Error::WrongRecipient {
                recipient: msg.recipient,
            });
        }
        if matches!(self.state, ClientState::Done | ClientState::Failed) {
            return Err(Error::Terminated(self.stage()));
        }
        if let ServerPayload::Abort(stage) = msg.payload {
            self.state = ClientState::Failed;
            self.ctx.deadline = None;
            self.ctx.events.push_back(ClientEvent::Aborted(stage));
            return Ok(());
        }
        let ctx = &mut self.ctx;
        let state = std::mem::replace(&mut self.state, ClientState::Failed);
        let result = match (state, msg.payload) {
            (ClientState::AwaitDirectory(s), ServerPayload::KeyDirectory(list)) => {
                s.handle(ctx, &list)
            }
            (ClientState::AwaitShares(s), ServerPayload::ForwardedShares(list)) => {
                s.handle(ctx, &list)
            }
            (
                ClientState::AwaitConsistency(s),
                ServerPayload::ConsistencyRequest { survivors, dropped },
            ) => s.handle(ctx, survivors, dropped),
            (ClientState::AwaitUnmask(s), ServerPayload::UnmaskRequest(sigs)) => {
                s.handle(ctx, &sigs)
            }
            (state, payload) => {
                self.state = state;
                return Err(Error::OutOfStage {
                    stage: self.stage(),
                    got: payload.kind(),
                });
            }
        };
        match result {
            Ok(next) => {
                self.state = next;
                self.ctx.deadline = match self.state {
                    ClientState::Done | ClientState::Failed | ClientState::ReadyToMask(_) => None,
                    _ => Some(now + 2 * self.ctx.params.stage_timeout),
                };
                if !matches!(self.state, ClientState::Done) {
                    self.ctx
                        .events
                        .push_back(ClientEvent::StageAdvanced(self.stage()));
                }
                Ok(())
            }
            Err(err) => {
                self.ctx.deadline = None;
                self.ctx.events.push_back(match &err {
                    Error::Refused(r) => ClientEvent::Refused(r.clone()),
                    other => ClientEvent::Failed(other.clone()),
                });
                Err(err)
            }
        }
    }

    /// When the client gives up waiting for the server (twice the stage timeout after the last
    /// server message). `None` before the first server message, while waiting for the input, and
    /// after the round ended for this client; the caller bounds the wait for the first message.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.ctx.deadline
    }

    /// Fails the client with [`Error::TimedOut`] if `now` is past [`Client::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ctx.deadline.is_some_and(|d| now >= d) {
            let stage = self.stage();
            self.state = ClientState::Failed;
            self.ctx.deadline = None;
            self.ctx
                .events
                .push_back(ClientEvent::Failed(Error::TimedOut(stage)));
        }
    }

    /// The next message to send to the server.
    pub fn poll_transmit(&mut self) -> Option<ClientMessage> {
        self.ctx.outbox.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.ctx.events.pop_front()
    }
}

impl Ctx {
    fn send(&mut self, payload: ClientPayload) {
        self.outbox.push_back(ClientMessage {
            session_id: self.params.session_id,
            round: self.params.round,
            sender: self.me,
            payload,
        });
    }

    /// Refuses unless `have` reaches the threshold.
    fn require_threshold(&self, stage: Stage, have: usize) -> Result<(), Error> {
        let threshold = self.params.threshold;
        if have < threshold {
            return Err(Refusal::BelowThreshold {
                stage,
                have,
                threshold,
            }
            .into());
        }
        Ok(())
    }

    /// Refuses unless `have` reaches the policy minimum.
    fn require_policy(&self, stage: Stage, have: usize) -> Result<(), Error> {
        let minimum = self.policy.min_participants;
        if have < minimum {
            return Err(Refusal::BelowPolicyMinimum {
                stage,
                have,
                minimum,
            }
            .into());
        }
        Ok(())
    }
}

/// Fails unless `ids` is strictly increasing (a set in canonical order).
pub(crate) fn require_sorted(
    ids: impl Iterator<Item = ParticipantId>,
    sender: ParticipantId,
) -> Result<(), Error> {
    let mut prev = 0;
    for id in ids {
        if id <= prev {
            return Err(Error::UnexpectedEntries {
                sender,
                detail: "list not strictly increasing or contains id 0",
            });
        }
        prev = id;
    }
    Ok(())
}

impl AwaitDirectory {
    fn handle(self, ctx: &mut Ctx, directory: &[SignedKeys]) -> Result<ClientState, Error> {
        let me = ctx.me;
        require_sorted(directory.iter().map(|e| e.id), SERVER)?;
        if let Some(e) = directory
            .iter()
            .find(|e| !ctx.params.participants.contains_key(&e.id))
        {
            return Err(Error::UnknownParticipant(e.id));
        }
        if matches!(ctx.params.graph, crate::params::Graph::Sparse { .. })
            && directory.len() != ctx.params.participants.len()
        {
            // The whole directory seeds the graph: a subset would let the server choose.
            return Err(Error::UnexpectedEntries {
                sender: SERVER,
                detail: "a sparse graph's key directory must list every participant",
            });
        }
        let mut seen: HashSet<[u8; 32]> = HashSet::new();
        let mut own_found = false;
        // Every advertisement is verified (it seeds the graph), not only the neighbours'.
        for entry in directory {
            let keys = &entry.keys;
            if entry.id == me {
                if *keys != self.advert {
                    return Err(Error::OwnKeysAltered);
                }
                own_found = true;
            } else {
                let transcript =
                    crypto::advertisement_transcript(&ctx.params, entry.id, &keys.c_pk, &keys.s_pk);
                crypto::verify(&ctx.params, entry.id, &transcript, &keys.signature)?;
                if crypto::is_low_order(&keys.c_pk) || crypto::is_low_order(&keys.s_pk) {
                    return Err(Error::NonContributoryKey {
                        participant: entry.id,
                    });
                }
            }
            for pk in [keys.c_pk, keys.s_pk] {
                if !seen.insert(pk) {
                    return Err(Error::DuplicateKey {
                        participant: entry.id,
                    });
                }
            }
        }
        if !own_found {
            return Err(Error::OwnKeysAltered);
        }
        ctx.directory = crate::graph::directory_seed(&ctx.params, directory);
        ctx.graph = NeighbourGraph::new(&ctx.params, &ctx.directory);
        let directory: Vec<&SignedKeys> = directory
            .iter()
            .filter(|e| ctx.graph.in_closed_neighbourhood(me, e.id))
            .collect();
        let holders: Vec<ParticipantId> = directory.iter().map(|e| e.id).collect();
        ctx.require_threshold(Stage::AdvertiseKeys, holders.len())?;
        ctx.require_policy(Stage::AdvertiseKeys, holders.len())?;

        let t = ctx.params.threshold;
        let b_shares = crypto::split(&self.b_secret, t, &holders, &mut ctx.rng)?;
        let s_shares = crypto::split(&self.s_secret, t, &holders, &mut ctx.rng)?;
        let mut peers = BTreeMap::new();
        let mut outgoing = Vec::with_capacity(holders.len());
        let mut own = None;
        for ((entry, (_, b_share)), (_, s_share)) in directory.iter().zip(b_shares).zip(s_shares) {
            if entry.id == me {
                own = Some((b_share, s_share));
                continue;
            }
            let c_shared = crypto::agree(&self.c_sk, entry.id, &entry.keys.c_pk)?;
            let s_shared = crypto::agree(&self.s_sk, entry.id, &entry.keys.s_pk)?;
            let ciphertext =
                crypto::encrypt_shares(&ctx.params, me, entry.id, &c_shared, &b_share, &s_share)?;
            outgoing.push(EncryptedShares {
                peer: entry.id,
                ciphertext,
            });
            let mask_key = crypto::pairwise_mask_key(&ctx.params, me, entry.id, &s_shared);
            peers.insert(entry.id, PeerSecrets { c_shared, mask_key });
        }
        let own = own.ok_or(Error::OwnKeysAltered)?;
        ctx.send(ClientPayload::ShareKeys(outgoing));
        Ok(ClientState::AwaitShares(AwaitShares {
            peers,
            own,
            b_secret: self.b_secret,
        }))
    }
}

impl AwaitShares {
    fn handle(self, ctx: &mut Ctx, forwarded: &[EncryptedShares]) -> Result<ClientState, Error> {
        let me = ctx.me;
        require_sorted(forwarded.iter().map(|e| e.peer), SERVER)?;
        let mut received = BTreeMap::new();
        for e in forwarded {
            let Some(peer) = self.peers.get(&e.peer) else {
                return Err(Error::UnexpectedEntries {
                    sender: SERVER,
                    detail: "shares from a participant outside the key directory",
                });
            };
            let pair =
                crypto::decrypt_shares(&ctx.params, e.peer, me, &peer.c_shared, &e.ciphertext)?;
            received.insert(e.peer, pair);
        }
        received.insert(me, self.own);
        ctx.require_threshold(Stage::ShareKeys, received.len())?;
        ctx.require_policy(Stage::MaskedInput, received.len())?;
        let mask_keys = self
            .peers
            .into_iter()
            .filter(|(id, _)| received.contains_key(id))
            .map(|(id, p)| (id, p.mask_key))
            .collect();
        let ready = ReadyToMask {
            received,
            mask_keys,
            b_secret: self.b_secret,
        };
        if ctx.input.is_some() {
            Ok(ready.mask(ctx))
        } else {
            ctx.events.push_back(ClientEvent::InputNeeded);
            Ok(ClientState::ReadyToMask(ready))
        }
    }
}

impl ReadyToMask {
    /// Masks the input (which must be set) and sends it.
    fn mask(self, ctx: &mut Ctx) -> ClientState {
        let Some(input) = ctx.input.take() else {
            return ClientState::ReadyToMask(self);
        };
        let params = &ctx.params;
        let bits = params.modulus_bits;
        let mut y: Vec<u64> = input.to_vec();
        crypto::add_mask(
            &mut y,
            &crypto::self_mask_key(params, ctx.me, &self.b_secret),
            bits,
            false,
        );
        for (&peer, key) in &self.mask_keys {
            crypto::add_mask(
                &mut y,
                key,
                bits,
                crypto::pairwise_sign_negative(ctx.me, peer),
            );
        }
        let mask = params.modulus_mask();
        y.iter_mut().for_each(|v| *v &= mask);
        ctx.send(ClientPayload::MaskedInput(MaskedVector {
            bits: bits as u8,
            values: y,
        }));
        ClientState::AwaitConsistency(AwaitConsistency {
            received: self.received,
        })
    }
}

impl AwaitConsistency {
    fn handle(
        self,
        ctx: &mut Ctx,
        survivors: Vec<ParticipantId>,
        dropped: Vec<ParticipantId>,
    ) -> Result<ClientState, Error> {
        let me = ctx.me;
        require_sorted(survivors.iter().copied(), SERVER)?;
        require_sorted(dropped.iter().copied(), SERVER)?;
        let s: BTreeSet<ParticipantId> = survivors.iter().copied().collect();
        let d: BTreeSet<ParticipantId> = dropped.iter().copied().collect();
        if let Some(&peer) = s.intersection(&d).next() {
            return Err(Refusal::PeerBothSurvivorAndDropped { peer }.into());
        }
        if let Some(&unknown) = s
            .union(&d)
            .find(|id| !ctx.params.participants.contains_key(id))
        {
            return Err(Error::UnknownParticipant(unknown));
        }
        if !s.contains(&me) {
            return Err(Refusal::NotListedAsSurvivor.into());
        }
        if let Some(&peer) = self
            .received
            .keys()
            .find(|v| !s.contains(v) && !d.contains(v))
        {
            return Err(Refusal::PeerUnaccounted { peer }.into());
        }
        if let Some(&peer) = s
            .union(&d)
            .find(|&&v| ctx.graph.in_closed_neighbourhood(me, v) && !self.received.contains_key(&v))
        {
            return Err(Refusal::PeerWithoutShares { peer }.into());
        }
        let in_neighbourhood = s.iter().filter(|v| self.received.contains_key(v)).count();
        ctx.require_threshold(Stage::ConsistencyCheck, in_neighbourhood)?;
        ctx.require_policy(Stage::ConsistencyCheck, survivors.len())?;
        let transcript =
            crypto::consistency_transcript(&ctx.params, &ctx.directory, me, &survivors, &dropped);
        let signature = ctx.identity.sign(&transcript).to_bytes();
        ctx.send(ClientPayload::ConsistencySignature(signature));
        Ok(ClientState::AwaitUnmask(AwaitUnmask {
            received: self.received,
            survivors,
            dropped,
        }))
    }
}

impl AwaitUnmask {
    fn handle(
        self,
        ctx: &mut Ctx,
        signatures: &[(ParticipantId, [u8; 64])],
    ) -> Result<ClientState, Error> {
        require_sorted(signatures.iter().map(|(id, _)| *id), SERVER)?;
        let mut in_neighbourhood = 0;
        for (signer, sig) in signatures {
            if self.survivors.binary_search(signer).is_err() {
                return Err(Error::UnexpectedEntries {
                    sender: SERVER,
                    detail: "consistency signature from a participant that is not a survivor",
                });
            }
            let transcript = crypto::consistency_transcript(
                &ctx.params,
                &ctx.directory,
                *signer,
                &self.survivors,
                &self.dropped,
            );
            crypto::verify(&ctx.params, *signer, &transcript, sig)?;
            if self.received.contains_key(signer) {
                in_neighbourhood += 1;
            }
        }
        ctx.require_threshold(Stage::Unmasking, in_neighbourhood)?;
        let pick = |ids: &[ParticipantId], which: fn(&SharePair) -> &Zeroizing<Scalar>| {
            ids.iter()
                .filter_map(|id| {
                    self.received
                        .get(id)
                        .map(|pair| (*id, which(pair).to_bytes()))
                })
                .collect::<Vec<_>>()
        };
        let shares = UnmaskShares {
            self_mask_shares: pick(&self.survivors, |p| &p.0),
            mask_key_shares: pick(&self.dropped, |p| &p.1),
        };
        ctx.send(ClientPayload::UnmaskShares(shares));
        ctx.events.push_back(ClientEvent::Done);
        Ok(ClientState::Done)
    }
}
