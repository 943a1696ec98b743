//! Error, refusal and abort types for the whole crate, and the [`Stage`] / [`MessageKind`]
//! vocabulary they use to name where a fault happened.
//!
//! Every error names the fault (and, where there is one, the participant that caused it) so that
//! a coordinator or worker can log it and decide whom to blame. Decoding faults live in
//! [`DecodeError`] (re-exported from [`crate::wire`]); configuration faults in [`crate::params::ConfigError`].

use crate::ParticipantId;
use crate::params::ConfigError;

/// The protocol stages, in order (Bonawitz et al. rounds 0–4), plus the two terminal states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// Round 0: every participant advertises two signed X25519 public keys.
    AdvertiseKeys,
    /// Round 1: participants exchange encrypted Shamir shares through the server.
    ShareKeys,
    /// Round 2: participants send their masked input vectors.
    MaskedInput,
    /// Round 3: participants sign the survivor / dropped sets they were told about.
    ConsistencyCheck,
    /// Round 4: participants reveal the shares the server needs to remove the masks.
    Unmasking,
    /// The round completed and produced an output.
    Finished,
    /// The round was abandoned; nothing was revealed.
    Aborted,
}

impl Stage {
    /// Wire code of the stage (used in the abort message).
    pub(crate) fn code(self) -> u8 {
        match self {
            Stage::AdvertiseKeys => 0,
            Stage::ShareKeys => 1,
            Stage::MaskedInput => 2,
            Stage::ConsistencyCheck => 3,
            Stage::Unmasking => 4,
            Stage::Finished => 5,
            Stage::Aborted => 6,
        }
    }

    /// Inverse of [`Stage::code`].
    pub(crate) fn from_code(code: u8) -> Option<Stage> {
        Some(match code {
            0 => Stage::AdvertiseKeys,
            1 => Stage::ShareKeys,
            2 => Stage::MaskedInput,
            3 => Stage::ConsistencyCheck,
            4 => Stage::Unmasking,
            5 => Stage::Finished,
            6 => Stage::Aborted,
            _ => return None,
        })
    }
}

/// Which message a fault concerns (the payload variant, without its contents).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    /// [`crate::ClientPayload::AdvertiseKeys`]
    AdvertiseKeys,
    /// [`crate::ClientPayload::ShareKeys`]
    ShareKeys,
    /// [`crate::ClientPayload::MaskedInput`]
    MaskedInput,
    /// [`crate::ClientPayload::ConsistencySignature`]
    ConsistencySignature,
    /// [`crate::ClientPayload::UnmaskShares`]
    UnmaskShares,
    /// [`crate::ServerPayload::KeyDirectory`]
    KeyDirectory,
    /// [`crate::ServerPayload::ForwardedShares`]
    ForwardedShares,
    /// [`crate::ServerPayload::ConsistencyRequest`]
    ConsistencyRequest,
    /// [`crate::ServerPayload::UnmaskRequest`]
    UnmaskRequest,
    /// [`crate::ServerPayload::Abort`]
    Abort,
}

/// Why a client refused to continue. A refusal is final for the round: the client sends nothing
/// more, so a misbehaving server cannot learn anything from it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The server listed `peer` both as a survivor and as dropped (it would learn both the self
    /// mask and the pairwise mask key of that peer, i.e. its input).
    #[error("participant {peer} is listed both as a survivor and as dropped")]
    PeerBothSurvivorAndDropped {
        /// The doubly listed participant.
        peer: ParticipantId,
    },
    /// Fewer than `threshold` participants (in this client's neighbourhood) are left.
    #[error("only {have} participants left at stage {stage:?}, the threshold is {threshold}")]
    BelowThreshold {
        /// Stage at which the count was taken.
        stage: Stage,
        /// Participants (in the neighbourhood, this client included) that remain.
        have: usize,
        /// The session threshold `t`.
        threshold: usize,
    },
    /// Fewer participants than this client's [`crate::ClientPolicy::min_participants`].
    #[error("only {have} participants at stage {stage:?}, policy demands at least {minimum}")]
    BelowPolicyMinimum {
        /// Stage at which the count was taken.
        stage: Stage,
        /// Participants counted (this client included).
        have: usize,
        /// The policy minimum.
        minimum: usize,
    },
    /// The survivor list does not contain this client although it sent its masked input.
    #[error("this client is missing from the survivor list")]
    NotListedAsSurvivor,
    /// A neighbour this client exchanged shares with is neither a survivor nor dropped.
    #[error("participant {peer} is neither listed as a survivor nor as dropped")]
    PeerUnaccounted {
        /// The missing participant.
        peer: ParticipantId,
    },
    /// A neighbour listed as survivor or dropped never sent this client its shares.
    #[error("participant {peer} is listed but never shared keys with this client")]
    PeerWithoutShares {
        /// The unexpected participant.
        peer: ParticipantId,
    },
}

/// Why the server abandoned a round. Nothing about any input is revealed by an abort.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AbortReason {
    /// Fewer than `threshold` participants completed `stage`.
    #[error("only {have} participants completed stage {stage:?}, the threshold is {threshold}")]
    TooFewParticipants {
        /// The stage that closed with too few responders.
        stage: Stage,
        /// Participants that completed it.
        have: usize,
        /// The session threshold `t`.
        threshold: usize,
    },
    /// Under a sparse graph some registered participants did not advertise keys: the graph is
    /// seeded by the whole directory, which the server may not choose a subset of.
    #[error("{have} of {participants} participants advertised keys; a sparse graph needs all")]
    IncompleteDirectory {
        /// Participants that advertised.
        have: usize,
        /// Registered participants.
        participants: usize,
    },
    /// Fewer than `threshold` shares of a secret of `owner` arrived, so its mask cannot be removed.
    #[error("only {have} shares of the secret of participant {owner} arrived, {threshold} needed")]
    NotEnoughShares {
        /// Participant whose secret could not be rebuilt.
        owner: ParticipantId,
        /// Shares received.
        have: usize,
        /// The session threshold `t`.
        threshold: usize,
    },
    /// The shares of `owner`'s mask key combine to a key that does not match its advertised
    /// public key: some participant sent a wrong share.
    #[error("the reconstructed mask key of participant {owner} does not match its advertisement")]
    InconsistentShares {
        /// Participant whose key failed to reconstruct.
        owner: ParticipantId,
    },
    /// The secret-sharing library rejected the shares.
    #[error("secret sharing failed: {0}")]
    SecretSharing(String),
}

/// Everything that can go wrong while driving a [`crate::Client`] or [`crate::Server`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The session parameters are unusable.
    #[error("invalid session parameters: {0}")]
    Config(#[from] ConfigError),
    /// Bytes could not be decoded into a message.
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    /// The message belongs to another session.
    #[error("message for another session")]
    WrongSession,
    /// The message belongs to another round of this session.
    #[error("message for round {got}, this is round {expected}")]
    WrongRound {
        /// This round.
        expected: u64,
        /// The round named in the message.
        got: u64,
    },
    /// The transport says the message came from `actual` but it claims to be from `claimed`.
    #[error("message claims sender {claimed} but arrived from {actual}")]
    WrongSender {
        /// Sender written in the message.
        claimed: ParticipantId,
        /// Sender according to the (authenticated) transport.
        actual: ParticipantId,
    },
    /// A server message addressed to another participant.
    #[error("message addressed to participant {recipient}")]
    WrongRecipient {
        /// The addressee written in the message.
        recipient: ParticipantId,
    },
    /// The signing key given to a client is not the one registered for its id.
    #[error("the signing key does not match participant {0}'s registered verifying key")]
    IdentityMismatch(ParticipantId),
    /// The client got no server message within its deadline.
    #[error("no message from the server before the deadline (stage {0:?})")]
    TimedOut(Stage),
    /// The participant is not in the session's registry.
    #[error("participant {0} is not part of this session")]
    UnknownParticipant(ParticipantId),
    /// A message that does not belong to the current stage (late, early or replayed).
    #[error("{got:?} message received during stage {stage:?}")]
    OutOfStage {
        /// Current stage.
        stage: Stage,
        /// The kind of message received.
        got: MessageKind,
    },
    /// The participant already sent its message for this stage (replay or duplicate).
    #[error("participant {from} already sent its message for stage {stage:?}")]
    Duplicate {
        /// The sender.
        from: ParticipantId,
        /// The stage.
        stage: Stage,
    },
    /// The participant was dropped earlier (missed a stage) and may not take part any more.
    #[error("participant {from} is no longer part of the round (stage {stage:?})")]
    NotActive {
        /// The sender.
        from: ParticipantId,
        /// The current stage.
        stage: Stage,
    },
    /// The state machine already finished, aborted or failed.
    #[error("the round is over ({0:?})")]
    Terminated(Stage),
    /// A signature by `signer` does not verify against its registered key.
    #[error("bad signature from participant {signer}")]
    BadSignature {
        /// The participant whose signature failed.
        signer: ParticipantId,
    },
    /// `participant` advertised a public key already used in this round.
    #[error("participant {participant} advertised a duplicate public key")]
    DuplicateKey {
        /// The offending participant.
        participant: ParticipantId,
    },
    /// A key agreement with `participant`'s key gives a non-contributory (all-zero) secret.
    #[error("participant {participant} advertised a low-order (non-contributory) public key")]
    NonContributoryKey {
        /// The offending participant.
        participant: ParticipantId,
    },
    /// The key directory altered or omitted this client's own advertisement.
    #[error("the key directory does not contain this client's own keys unchanged")]
    OwnKeysAltered,
    /// The encrypted shares from `sender` failed authentication (tampered or wrong key).
    #[error("shares from participant {sender} failed to decrypt")]
    Decrypt {
        /// The participant that (allegedly) encrypted the shares.
        sender: ParticipantId,
    },
    /// A share from `sender` is not a canonical field element.
    #[error("participant {sender} sent a malformed share")]
    MalformedShare {
        /// The participant that sent the share.
        sender: ParticipantId,
    },
    /// A list sent by `sender` is not the set the protocol requires (missing, extra or unsorted
    /// entries, or a peer outside its neighbourhood).
    #[error("participant {sender} sent an unexpected set of entries: {detail}")]
    UnexpectedEntries {
        /// The sender (the server is reported as 0).
        sender: ParticipantId,
        /// What was wrong.
        detail: &'static str,
    },
    /// A masked vector of the wrong length or modulus.
    #[error(
        "participant {sender} sent a vector of {got} elements mod 2^{bits}, expected {expected} mod 2^{expected_bits}"
    )]
    VectorShape {
        /// The sender.
        sender: ParticipantId,
        /// Elements received.
        got: usize,
        /// Elements expected.
        expected: usize,
        /// Modulus bits received.
        bits: u8,
        /// Modulus bits expected.
        expected_bits: u32,
    },
    /// The input vector has the wrong length.
    #[error("input has {got} elements, the session expects {expected}")]
    InputLength {
        /// Elements given.
        got: usize,
        /// Elements expected.
        expected: usize,
    },
    /// An input value (or the weight) is NaN or infinite, or the weight is negative.
    #[error("input element {index} is not a finite number (or the weight is negative)")]
    NonFiniteInput {
        /// Position of the offending element.
        index: usize,
    },
    /// The input was already set (and possibly already used).
    #[error("the input was already set for this round")]
    InputAlreadySet,
    /// The client refused to continue.
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    /// A key agreement produced an all-zero secret with `participant`.
    #[error("key agreement with participant {participant} is non-contributory")]
    KeyAgreement {
        /// The peer.
        participant: ParticipantId,
    },
    /// The secret-sharing library rejected the operation.
    #[error("secret sharing failed: {0}")]
    SecretSharing(String),
}

/// A fault in received bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended while reading `what`.
    #[error("truncated while reading {what}")]
    Truncated {
        /// Field being read.
        what: &'static str,
    },
    /// Unknown version byte.
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// Unknown message tag.
    #[error("unknown message tag {0:#04x}")]
    UnknownTag(u8),
    /// A count above its limit.
    #[error("{what} has {len} entries, the limit is {max}")]
    TooLong {
        /// Field.
        what: &'static str,
        /// Count found.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Bytes left after the message.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    /// A value that is not in canonical form.
    #[error("non-canonical {what}")]
    NotCanonical {
        /// Field.
        what: &'static str,
    },
}
