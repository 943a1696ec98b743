//! # confide-secagg — secure aggregation for cross-silo federated learning
//!
//! This crate implements the secure aggregation protocol of Bonawitz et al., *Practical Secure
//! Aggregation for Privacy-Preserving Machine Learning* (CCS 2017), with the optional sparse
//! SecAgg+ masking graph of Bell et al. (CCS 2020). The server learns the sum of the surviving
//! participants' input vectors and nothing else; it can finish despite dropouts as long as at
//! least `t` participants (per neighbourhood) stay until the end.
//!
//! It is **sans-IO** (in the style of `quinn-proto`): no sockets, no threads, no clock. The
//! caller moves messages between [`Client`]s and a [`Server`] (the coordinator carries the bytes
//! of [`ClientMessage::encode`] / [`ServerMessage::encode`] opaquely, e.g. inside gRPC messages)
//! and passes the current time in as a [`std::time::Instant`].
//!
//! ## Protocol
//!
//! | stage | client sends | server replies |
//! | --- | --- | --- |
//! | [`Stage::AdvertiseKeys`] | two fresh X25519 public keys `c_pk`, `s_pk`, signed with the bank's Ed25519 identity | every participant's signed keys (the whole directory: its hash seeds a SecAgg+ graph, see [`graph`]) |
//! | [`Stage::ShareKeys`] | `t`-of-`n` Shamir shares of its self-mask seed `b_u` and mask key `s_u`, each peer's pair encrypted with ChaCha20-Poly1305 under HKDF(X25519(c_u, c_v)) | the ciphertexts addressed to it |
//! | [`Stage::MaskedInput`] | `y_u = x_u + PRG(b_u) + Σ_{v>u} PRG(s_uv) − Σ_{v<u} PRG(s_uv)` mod 2^b | the survivor and dropped lists |
//! | [`Stage::ConsistencyCheck`] | its signature over those lists | all the signatures |
//! | [`Stage::Unmasking`] | shares of `b_v` for survivors, of `s_v` for dropped peers | — (the server outputs the sum) |
//!
//! Clients verify every key advertisement against the registry in [`SessionParams`] (so the
//! server cannot substitute keys), reject duplicate and low-order keys, derive the masking graph
//! from the signed directory (not from the server's session id), verify the consistency
//! signatures (which bind that directory), and *refuse* ([`Refusal`]) if a peer is listed both as survivor and dropped, if
//! fewer than `t` remain, or if fewer than their [`ClientPolicy::min_participants`] remain.
//!
//! Inputs are fixed-point encoded ([`FixedPoint`]: clip, scale, unbiased stochastic rounding)
//! into Z_{2^b}; [`SessionParams::validate`] enforces the headroom `n·⌈clip·scale⌉ < 2^(b−1)`, so
//! the decoded sum never wraps. **Quantisation bound:** each element of [`Output::sum`] is within
//! `survivors / scale` of the exact sum of the clipped inputs.
//!
//! ## How to drive it
//!
//! Server (coordinator), per round:
//! 1. [`Server::new`]`(params, now)` — the round starts in [`Stage::AdvertiseKeys`]; the server
//!    sends nothing first (clients advertise on creation).
//! 2. For every received byte string from participant `from` (authenticated by the transport):
//!    [`Server::handle_message`]`(from, `[`ClientMessage::decode`]`(bytes)?, now)`. Errors are
//!    informational (the offending message had no effect, or its sender was dropped).
//! 3. After every call, drain [`Server::poll_transmit`] (send `msg.encode()` to the named
//!    participant) and [`Server::poll_event`] ([`ServerEvent::Finished`] carries the [`Output`];
//!    [`ServerEvent::Aborted`] means nothing was revealed).
//! 4. Arm a timer for [`Server::poll_timeout`] and call [`Server::handle_timeout`]`(now)` when it
//!    fires (then drain again). Late participants are dropped; below `t` the round aborts.
//!
//! Client (worker), per round:
//! 1. [`Client::new`]`(params, me, identity, policy, fresh_random_seed)`, then send what
//!    [`Client::poll_transmit`] yields (the key advertisement).
//! 2. Call [`Client::set_input`] or [`Client::set_weighted_input`] whenever the local update is
//!    ready (before or after the key exchange; the masked input is sent once both are there).
//! 3. For every server message: [`Client::handle_message`]`(`[`ServerMessage::decode`]`(bytes)?, now)`,
//!    then drain [`Client::poll_transmit`] and [`Client::poll_event`]. [`ClientEvent::Done`]
//!    ends the client's part; [`ClientEvent::Refused`], [`ClientEvent::Failed`] and
//!    [`ClientEvent::Aborted`] end it without revealing anything more.
//! 4. Optionally honour [`Client::poll_timeout`] / [`Client::handle_timeout`].
//!
//! [`testing::Harness`] wires N clients and a server together in memory with a virtual clock;
//! it is the reference for the above and is used by the tests, fuzzers and benchmarks.
#![forbid(unsafe_code)]

pub mod client;
pub mod crypto;
mod encoding;
pub mod error;
pub mod graph;
pub mod params;
pub mod server;
pub mod testing;
pub mod wire;

/// A participant's id: its Shamir x-coordinate, `1..=u32::MAX` (0 is reserved).
pub type ParticipantId = u32;

pub use client::{Client, ClientEvent};
pub use crypto::SHARE_CIPHERTEXT_LEN;
pub use error::{AbortReason, Error, MessageKind, Refusal, Stage};
pub use graph::NeighbourGraph;
pub use params::{
    ClientPolicy, ConfigError, FixedPoint, Graph, MAX_PARTICIPANTS, MAX_VECTOR_LEN, SessionParams,
};
pub use server::{Output, Server, ServerEvent};
pub use wire::{
    ClientMessage, ClientPayload, DecodeError, EncryptedShares, KeyAdvertisement, MaskedVector,
    ServerMessage, ServerPayload, SignedKeys, UnmaskShares,
};
