//! A deterministic in-memory harness that drives one [`Server`] and N [`Client`]s with a virtual
//! clock (a base [`Instant`] plus offsets), optionally through the byte encoding, and can silence
//! any client from any stage on ([`DropPoint`]). Used by the tests, the fuzzers and the
//! benchmarks; also the executable reference for the call order described in the crate docs.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;

use crate::error::{AbortReason, Error, MessageKind, Stage};
use crate::params::{ClientPolicy, FixedPoint, Graph, SessionParams};
use crate::{
    Client, ClientEvent, ClientMessage, Output, ParticipantId, Server, ServerEvent, ServerMessage,
};

/// A clock that only moves when told to.
#[derive(Clone, Copy, Debug)]
pub struct VirtualClock {
    base: Instant,
    offset: Duration,
}

impl Default for VirtualClock {
    fn default() -> Self {
        VirtualClock {
            base: Instant::now(),
            offset: Duration::ZERO,
        }
    }
}

impl VirtualClock {
    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.base + self.offset
    }
    /// Moves forward to `t` (never backwards).
    pub fn advance_to(&mut self, t: Instant) {
        if t > self.now() {
            self.offset = t - self.base;
        }
    }
    /// Moves forward by `d`.
    pub fn advance(&mut self, d: Duration) {
        self.offset += d;
    }
}

/// From which point on a client goes silent (its later messages are lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropPoint {
    /// Never sends anything.
    BeforeAdvertise,
    /// Sends its key advertisement only.
    AfterAdvertise,
    /// Also sends its encrypted shares, but no masked input.
    AfterShareKeys,
    /// Also sends its masked input (so it is in the sum), but does not sign.
    AfterMaskedInput,
    /// Also signs the survivor list, but sends no unmasking shares.
    BeforeUnmasking,
}

impl DropPoint {
    /// Every drop point, earliest first.
    pub const ALL: [DropPoint; 5] = [
        DropPoint::BeforeAdvertise,
        DropPoint::AfterAdvertise,
        DropPoint::AfterShareKeys,
        DropPoint::AfterMaskedInput,
        DropPoint::BeforeUnmasking,
    ];

    /// Whether a client dropping here still gets a message of `kind` out.
    pub fn allows(self, kind: MessageKind) -> bool {
        let sent_before = match kind {
            MessageKind::AdvertiseKeys => DropPoint::AfterAdvertise,
            MessageKind::ShareKeys => DropPoint::AfterShareKeys,
            MessageKind::MaskedInput => DropPoint::AfterMaskedInput,
            MessageKind::ConsistencySignature => DropPoint::BeforeUnmasking,
            _ => return false,
        };
        self >= sent_before
    }

    /// Whether the input of a client dropping here ends up in the sum (absent refusals).
    pub fn in_sum(self) -> bool {
        self >= DropPoint::AfterMaskedInput
    }
}

/// The server stage in which client messages of `kind` are accepted.
fn stage_of(kind: MessageKind) -> Stage {
    match kind {
        MessageKind::AdvertiseKeys => Stage::AdvertiseKeys,
        MessageKind::ShareKeys => Stage::ShareKeys,
        MessageKind::MaskedInput => Stage::MaskedInput,
        MessageKind::ConsistencySignature => Stage::ConsistencyCheck,
        _ => Stage::Unmasking,
    }
}

/// The deterministic long-term identity of participant `id` in tests.
pub fn identity(id: ParticipantId) -> SigningKey {
    let mut seed = [0x42u8; 32];
    seed[..4].copy_from_slice(&id.to_be_bytes());
    SigningKey::from_bytes(&seed)
}

/// Parameters for participants `1..=n` with test identities, clip 1, the largest scale that
/// fits `modulus_bits`, and a 60 s stage timeout.
pub fn session_params(
    n: u32,
    threshold: usize,
    vector_len: usize,
    graph: Graph,
    modulus_bits: u32,
) -> SessionParams {
    let participants = (1..=n)
        .map(|id| (id, identity(id).verifying_key()))
        .collect();
    let clip = 1.0;
    SessionParams {
        session_id: [n as u8; 32],
        round: 7,
        participants,
        threshold,
        vector_len,
        modulus_bits,
        encoding: FixedPoint {
            clip,
            scale: SessionParams::max_scale(n as usize, clip, modulus_bits),
        },
        graph,
        stage_timeout: Duration::from_secs(60),
    }
}

/// Σ of the clipped inputs of `ids`.
pub fn plain_sum(
    inputs: &BTreeMap<ParticipantId, Vec<f64>>,
    ids: &[ParticipantId],
    clip: f64,
    len: usize,
) -> Vec<f64> {
    let mut sum = vec![0.0; len];
    for id in ids {
        if let Some(x) = inputs.get(id) {
            for (s, v) in sum.iter_mut().zip(x) {
                *s += v.clamp(-clip, clip);
            }
        }
    }
    sum
}

/// N clients, a server, a virtual clock and a network that can lose messages.
#[derive(Debug)]
pub struct Harness {
    /// The virtual clock.
    pub clock: VirtualClock,
    /// The server.
    pub server: Server,
    /// The clients by id (a client whose construction failed is absent).
    pub clients: BTreeMap<ParticipantId, Client>,
    /// Drop plan.
    pub drops: BTreeMap<ParticipantId, DropPoint>,
    /// Round-trip every message through `encode`/`decode` (default `true`).
    pub wire: bool,
    /// Every server event so far.
    pub server_events: Vec<ServerEvent>,
    /// Every client event so far.
    pub client_events: BTreeMap<ParticipantId, Vec<ClientEvent>>,
    /// Errors returned by `handle_message` calls: `(None, e)` from the server, `(Some(id), e)`
    /// from client `id`.
    pub errors: Vec<(Option<ParticipantId>, Error)>,
    to_server: VecDeque<ClientMessage>,
    to_clients: VecDeque<(ParticipantId, ServerMessage)>,
}

impl Harness {
    /// Creates the server and one client per participant (identities from [`identity`]).
    pub fn new(params: SessionParams, policy: ClientPolicy) -> Result<Harness, Error> {
        let clock = VirtualClock::default();
        let server = Server::new(params.clone(), clock.now())?;
        let mut clients = BTreeMap::new();
        for &id in params.participants.keys() {
            let mut seed = [0x17u8; 32];
            seed[..4].copy_from_slice(&id.to_be_bytes());
            clients.insert(
                id,
                Client::new(params.clone(), id, identity(id), policy, seed)?,
            );
        }
        Ok(Harness {
            clock,
            server,
            clients,
            drops: BTreeMap::new(),
            wire: true,
            server_events: Vec::new(),
            client_events: BTreeMap::new(),
            errors: Vec::new(),
            to_server: VecDeque::new(),
            to_clients: VecDeque::new(),
        })
    }

    /// Sets every client's input (`inputs[id]`).
    pub fn set_inputs(&mut self, inputs: &BTreeMap<ParticipantId, Vec<f64>>) -> Result<(), Error> {
        for (id, x) in inputs {
            if let Some(c) = self.clients.get_mut(id) {
                c.set_input(x)?;
            }
        }
        Ok(())
    }

    /// Silences `id` from `point` on.
    pub fn drop_at(&mut self, id: ParticipantId, point: DropPoint) {
        self.drops.insert(id, point);
    }

    /// Moves everything the parties want to send into the network queues (applying the drop
    /// plan) and records events.
    pub fn collect(&mut self) {
        for (&id, client) in &mut self.clients {
            while let Some(msg) = client.poll_transmit() {
                if self
                    .drops
                    .get(&id)
                    .is_none_or(|p| p.allows(msg.payload.kind()))
                {
                    self.to_server.push_back(msg);
                }
            }
            while let Some(ev) = client.poll_event() {
                self.client_events.entry(id).or_default().push(ev);
            }
        }
        while let Some(m) = self.server.poll_transmit() {
            self.to_clients.push_back(m);
        }
        while let Some(ev) = self.server.poll_event() {
            self.server_events.push(ev);
        }
    }

    /// Takes the queued client → server messages (for tests that tamper with them).
    pub fn take_to_server(&mut self) -> Vec<ClientMessage> {
        self.collect();
        self.to_server.drain(..).collect()
    }

    /// Takes the queued server → client messages.
    pub fn take_to_clients(&mut self) -> Vec<(ParticipantId, ServerMessage)> {
        self.collect();
        self.to_clients.drain(..).collect()
    }

    /// Hands `msg` to the server as if it came from `msg.sender`.
    pub fn deliver_to_server(&mut self, msg: ClientMessage) -> Result<(), Error> {
        let from = msg.sender;
        let msg = if self.wire {
            ClientMessage::decode(&msg.encode())?
        } else {
            msg
        };
        let r = self.server.handle_message(from, msg, self.clock.now());
        if let Err(e) = &r {
            self.errors.push((None, e.clone()));
        }
        self.collect();
        r
    }

    /// Hands `msg` to client `to`.
    pub fn deliver_to_client(
        &mut self,
        to: ParticipantId,
        msg: ServerMessage,
    ) -> Result<(), Error> {
        let msg = if self.wire {
            ServerMessage::decode(&msg.encode())?
        } else {
            msg
        };
        let now = self.clock.now();
        let r = match self.clients.get_mut(&to) {
            Some(c) => c.handle_message(msg, now),
            None => Ok(()),
        };
        if let Err(e) = &r {
            self.errors.push((Some(to), e.clone()));
        }
        self.collect();
        r
    }

    /// Delivers queued messages until the network is quiet; returns how many were delivered.
    pub fn pump(&mut self) -> usize {
        let mut delivered = 0;
        loop {
            self.collect();
            if let Some(msg) = self.to_server.pop_front() {
                let _ = self.deliver_to_server(msg);
            } else if let Some((to, msg)) = self.to_clients.pop_front() {
                let _ = self.deliver_to_client(to, msg);
            } else {
                return delivered;
            }
            delivered += 1;
        }
    }

    /// Like [`Harness::pump`], but keeps client messages of `kind` back and returns them (for
    /// tests and benchmarks that want to time or tamper with the last message of a stage).
    pub fn pump_holding(&mut self, kind: MessageKind) -> Vec<ClientMessage> {
        let mut held = Vec::new();
        loop {
            self.collect();
            if let Some(msg) = self.to_server.pop_front() {
                if msg.payload.kind() == kind {
                    held.push(msg);
                } else {
                    let _ = self.deliver_to_server(msg);
                }
            } else if let Some((to, msg)) = self.to_clients.pop_front() {
                let _ = self.deliver_to_client(to, msg);
            } else {
                return held;
            }
        }
    }

    /// Drives the round (firing deadlines as needed) until the server waits in the stage that
    /// accepts `kind`, and returns the clients' messages of that kind, undelivered.
    pub fn run_until_held(&mut self, kind: MessageKind) -> Vec<ClientMessage> {
        let mut held = Vec::new();
        for _ in 0..32 {
            held.extend(self.pump_holding(kind));
            if self.server.stage() >= stage_of(kind) || !self.fire_timeout() {
                break;
            }
        }
        held
    }

    /// Advances the clock to the server's deadline and fires it. `false` if there is none.
    pub fn fire_timeout(&mut self) -> bool {
        let Some(deadline) = self.server.poll_timeout() else {
            return false;
        };
        self.clock.advance_to(deadline);
        self.server.handle_timeout(self.clock.now());
        self.collect();
        true
    }

    /// Runs the round to its end: delivers everything, fires deadlines when stuck.
    pub fn run(&mut self) -> Result<Output, AbortReason> {
        for _ in 0..32 {
            self.pump();
            if matches!(self.server.stage(), Stage::Finished | Stage::Aborted) {
                break;
            }
            self.fire_timeout();
        }
        self.outcome()
    }

    /// The round's result according to the server events so far.
    pub fn outcome(&self) -> Result<Output, AbortReason> {
        for ev in &self.server_events {
            match ev {
                ServerEvent::Finished(o) => return Ok(o.clone()),
                ServerEvent::Aborted(r) => return Err(r.clone()),
                _ => {}
            }
        }
        Err(AbortReason::SecretSharing("round did not end".into()))
    }
}
