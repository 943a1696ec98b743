//! The messages of the protocol ([`ClientMessage`], [`ServerMessage`]) and their byte encoding.
//!
//! Layout (all integers big-endian except vector elements, which are little-endian):
//!
//! ```text
//! version:u8 (=2) | tag:u8 | session_id:[u8;32] | round:u64 | participant:u32 | payload
//! ```
//!
//! `participant` is the sender of a client message and the recipient of a server message. Every
//! list carries an explicit `u32` count checked against a limit *and* against the bytes that are
//! actually left before anything is allocated, participant lists must be strictly increasing
//! (canonical, no duplicates, no id 0), vector elements must be below 2^bits, and trailing bytes
//! are rejected. Decoding never panics; `decode(encode(m)) == m` for every message with
//! in-range values, and `encode(decode(b)) == b` for every accepted `b`.

use crate::ParticipantId;
pub use crate::error::DecodeError;
use crate::error::{MessageKind, Stage};
use crate::params::{MAX_PARTICIPANTS, MAX_VECTOR_LEN, modulus_mask};

/// Wire format version. 2: the key directory holds every participant's advertisement and
/// seeds the SecAgg+ graph (1 seeded it with the session id and sent neighbourhoods only).
pub const WIRE_VERSION: u8 = 2;
/// Longest ciphertext accepted by the decoder.
pub const MAX_CIPHERTEXT_LEN: usize = 1024;

/// A client's two public keys for this round, signed with its long-term identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyAdvertisement {
    /// X25519 key for encrypting shares.
    pub c_pk: [u8; 32],
    /// X25519 key for pairwise masks.
    pub s_pk: [u8; 32],
    /// Ed25519 signature over (session, round, id, c_pk, s_pk).
    pub signature: [u8; 64],
}

/// A participant's advertisement as relayed by the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedKeys {
    /// The advertising participant.
    pub id: ParticipantId,
    /// Its advertisement.
    pub keys: KeyAdvertisement,
}

/// One encrypted pair of Shamir shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedShares {
    /// The receiver (in [`ClientPayload::ShareKeys`]) or the sender (in
    /// [`ServerPayload::ForwardedShares`]).
    pub peer: ParticipantId,
    /// ChaCha20-Poly1305 ciphertext.
    pub ciphertext: Vec<u8>,
}

/// A masked input vector in Z_{2^bits}.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskedVector {
    /// Modulus bits (1..=64); each element takes ⌈bits/8⌉ bytes on the wire.
    pub bits: u8,
    /// The elements, each below 2^bits (reduced on encode).
    pub values: Vec<u64>,
}

/// The shares a client reveals for unmasking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnmaskShares {
    /// Shares of the self-mask seeds of survivors, by owner.
    pub self_mask_shares: Vec<(ParticipantId, [u8; 32])>,
    /// Shares of the mask keys of dropped participants, by owner.
    pub mask_key_shares: Vec<(ParticipantId, [u8; 32])>,
}

/// What a client says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientPayload {
    /// Stage AdvertiseKeys.
    AdvertiseKeys(KeyAdvertisement),
    /// Stage ShareKeys: one ciphertext per neighbour, by receiver.
    ShareKeys(Vec<EncryptedShares>),
    /// Stage MaskedInput.
    MaskedInput(MaskedVector),
    /// Stage ConsistencyCheck: signature over the survivor / dropped lists.
    ConsistencySignature([u8; 64]),
    /// Stage Unmasking.
    UnmaskShares(UnmaskShares),
}

/// A message from a client to the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientMessage {
    /// Session it belongs to.
    pub session_id: [u8; 32],
    /// Round it belongs to.
    pub round: u64,
    /// The sender (must match the transport's authenticated identity).
    pub sender: ParticipantId,
    /// Content.
    pub payload: ClientPayload,
}

/// What the server says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerPayload {
    /// After AdvertiseKeys: every participant's advertisement (the recipient's own included),
    /// from which the recipient derives the masking graph.
    KeyDirectory(Vec<SignedKeys>),
    /// After ShareKeys: ciphertexts addressed to the recipient, by sender.
    ForwardedShares(Vec<EncryptedShares>),
    /// After MaskedInput: who is in the sum and who dropped.
    ConsistencyRequest {
        /// Participants whose masked input is in the aggregate (U3).
        survivors: Vec<ParticipantId>,
        /// Participants that shared keys but whose input is missing (U2 \ U3).
        dropped: Vec<ParticipantId>,
    },
    /// After ConsistencyCheck: the consistency signatures, by signer.
    UnmaskRequest(Vec<(ParticipantId, [u8; 64])>),
    /// The round was aborted at this stage.
    Abort(Stage),
}

/// A message from the server to one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerMessage {
    /// Session it belongs to.
    pub session_id: [u8; 32],
    /// Round it belongs to.
    pub round: u64,
    /// Addressee.
    pub recipient: ParticipantId,
    /// Content.
    pub payload: ServerPayload,
}

mod tag {
    pub const ADVERTISE: u8 = 0x01;
    pub const SHARE_KEYS: u8 = 0x02;
    pub const MASKED_INPUT: u8 = 0x03;
    pub const CONSISTENCY_SIGNATURE: u8 = 0x04;
    pub const UNMASK_SHARES: u8 = 0x05;
    pub const KEY_DIRECTORY: u8 = 0x81;
    pub const FORWARDED_SHARES: u8 = 0x82;
    pub const CONSISTENCY_REQUEST: u8 = 0x83;
    pub const UNMASK_REQUEST: u8 = 0x84;
    pub const ABORT: u8 = 0x85;
}

impl ClientPayload {
    /// The kind of payload.
    pub fn kind(&self) -> MessageKind {
        match self {
            ClientPayload::AdvertiseKeys(_) => MessageKind::AdvertiseKeys,
            ClientPayload::ShareKeys(_) => MessageKind::ShareKeys,
            ClientPayload::MaskedInput(_) => MessageKind::MaskedInput,
            ClientPayload::ConsistencySignature(_) => MessageKind::ConsistencySignature,
            ClientPayload::UnmaskShares(_) => MessageKind::UnmaskShares,
        }
    }
}

impl ServerPayload {
    /// The kind of payload.
    pub fn kind(&self) -> MessageKind {
        match self {
            ServerPayload::KeyDirectory(_) => MessageKind::KeyDirectory,
            ServerPayload::ForwardedShares(_) => MessageKind::ForwardedShares,
            ServerPayload::ConsistencyRequest { .. } => MessageKind::ConsistencyRequest,
            ServerPayload::UnmaskRequest(_) => MessageKind::UnmaskRequest,
            ServerPayload::Abort(_) => MessageKind::Abort,
        }
    }
}

/// Bytes per element for `bits`.
fn element_width(bits: u8) -> usize {
    usize::from(bits).div_ceil(8)
}

struct Writer(Vec<u8>);

impl Writer {
    fn header(tag: u8, session_id: &[u8; 32], round: u64, participant: ParticipantId) -> Writer {
        let mut w = Writer(Vec::with_capacity(64));
        w.0.push(WIRE_VERSION);
        w.0.push(tag);
        w.0.extend_from_slice(session_id);
        w.0.extend_from_slice(&round.to_be_bytes());
        w.0.extend_from_slice(&participant.to_be_bytes());
        w
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn count(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn ids(&mut self, ids: &[ParticipantId]) {
        self.count(ids.len());
        for &id in ids {
            self.u32(id);
        }
    }
    fn shares(&mut self, list: &[EncryptedShares]) {
        self.count(list.len());
        for e in list {
            self.u32(e.peer);
            self.count(e.ciphertext.len());
            self.bytes(&e.ciphertext);
        }
    }
    fn scalars(&mut self, list: &[(ParticipantId, [u8; 32])]) {
        self.count(list.len());
        for (id, s) in list {
            self.u32(*id);
            self.bytes(s);
        }
    }
    fn advertisement(&mut self, k: &KeyAdvertisement) {
        self.bytes(&k.c_pk);
        self.bytes(&k.s_pk);
        self.bytes(&k.signature);
    }
}

/// A bounds-checked cursor over hostile bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated { what });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }
    /// A count, checked against `max` and against the bytes left (each entry ≥ `min_entry`).
    fn count(
        &mut self,
        what: &'static str,
        max: usize,
        min_entry: usize,
    ) -> Result<usize, DecodeError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(DecodeError::TooLong { what, len, max });
        }
        if len.saturating_mul(min_entry) > self.buf.len() {
            return Err(DecodeError::Truncated { what });
        }
        Ok(len)
    }
    fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
    /// A participant id, strictly greater than `prev` (so lists are sorted, unique and nonzero).
    fn id_after(
        &mut self,
        prev: ParticipantId,
        what: &'static str,
    ) -> Result<ParticipantId, DecodeError> {
        let id = self.u32(what)?;
        if id <= prev {
            return Err(DecodeError::NotCanonical { what });
        }
        Ok(id)
    }
    fn ids(&mut self, what: &'static str) -> Result<Vec<ParticipantId>, DecodeError> {
        let n = self.count(what, MAX_PARTICIPANTS, 4)?;
        let mut out = Vec::with_capacity(n);
        let mut prev = 0;
        for _ in 0..n {
            prev = self.id_after(prev, what)?;
            out.push(prev);
        }
        Ok(out)
    }
    fn shares(&mut self, what: &'static str) -> Result<Vec<EncryptedShares>, DecodeError> {
        let n = self.count(what, MAX_PARTICIPANTS, 8)?;
        let mut out = Vec::with_capacity(n);
        let mut prev = 0;
        for _ in 0..n {
            prev = self.id_after(prev, what)?;
            let len = self.count("ciphertext", MAX_CIPHERTEXT_LEN, 1)?;
            out.push(EncryptedShares {
                peer: prev,
                ciphertext: self.take(len, "ciphertext")?.to_vec(),
            });
        }
        Ok(out)
    }
    fn scalars(
        &mut self,
        what: &'static str,
    ) -> Result<Vec<(ParticipantId, [u8; 32])>, DecodeError> {
        let n = self.count(what, MAX_PARTICIPANTS, 36)?;
        let mut out = Vec::with_capacity(n);
        let mut prev = 0;
        for _ in 0..n {
            prev = self.id_after(prev, what)?;
            out.push((prev, self.array(what)?));
        }
        Ok(out)
    }
    fn advertisement(&mut self) -> Result<KeyAdvertisement, DecodeError> {
        Ok(KeyAdvertisement {
            c_pk: self.array("c_pk")?,
            s_pk: self.array("s_pk")?,
            signature: self.array("signature")?,
        })
    }
    /// Version, tag, session, round, participant.
    fn header(&mut self) -> Result<(u8, [u8; 32], u64, ParticipantId), DecodeError> {
        let version = self.u8("version")?;
        if version != WIRE_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let tag = self.u8("tag")?;
        Ok((
            tag,
            self.array("session_id")?,
            self.u64("round")?,
            self.u32("participant")?,
        ))
    }
}

impl ClientMessage {
    /// Serialises the message. Vector elements are reduced modulo 2^bits.
    pub fn encode(&self) -> Vec<u8> {
        let t = match &self.payload {
            ClientPayload::AdvertiseKeys(_) => tag::ADVERTISE,
            ClientPayload::ShareKeys(_) => tag::SHARE_KEYS,
            ClientPayload::MaskedInput(_) => tag::MASKED_INPUT,
            ClientPayload::ConsistencySignature(_) => tag::CONSISTENCY_SIGNATURE,
            ClientPayload::UnmaskShares(_) => tag::UNMASK_SHARES,
        };
        let mut w = Writer::header(t, &self.session_id, self.round, self.sender);
        match &self.payload {
            ClientPayload::AdvertiseKeys(k) => w.advertisement(k),
            ClientPayload::ShareKeys(list) => w.shares(list),
            ClientPayload::MaskedInput(v) => {
                let bits = v.bits.clamp(1, 64);
                let width = element_width(bits);
                let mask = modulus_mask(u32::from(bits));
                w.0.reserve(5 + v.values.len() * width);
                w.0.push(bits);
                w.count(v.values.len());
                for &x in &v.values {
                    let le = (x & mask).to_le_bytes();
                    w.bytes(le.get(..width).unwrap_or(&le));
                }
            }
            ClientPayload::ConsistencySignature(sig) => w.bytes(sig),
            ClientPayload::UnmaskShares(u) => {
                w.scalars(&u.self_mask_shares);
                w.scalars(&u.mask_key_shares);
            }
        }
        w.0
    }

    /// Parses a message from untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<ClientMessage, DecodeError> {
        let mut r = Reader { buf: bytes };
        let (t, session_id, round, sender) = r.header()?;
        let payload = match t {
            tag::ADVERTISE => ClientPayload::AdvertiseKeys(r.advertisement()?),
            tag::SHARE_KEYS => ClientPayload::ShareKeys(r.shares("shares")?),
            tag::MASKED_INPUT => {
                let bits = r.u8("bits")?;
                if !(1..=64).contains(&bits) {
                    return Err(DecodeError::NotCanonical {
                        what: "modulus bits",
                    });
                }
                let width = element_width(bits);
                let n = r.count("vector", MAX_VECTOR_LEN, width)?;
                let mask = modulus_mask(u32::from(bits));
                let data = r.take(n * width, "vector")?;
                let mut values = Vec::with_capacity(n);
                for chunk in data.chunks_exact(width) {
                    let mut le = [0u8; 8];
                    le.get_mut(..width)
                        .ok_or(DecodeError::NotCanonical { what: "element" })?
                        .copy_from_slice(chunk);
                    let v = u64::from_le_bytes(le);
                    if v & !mask != 0 {
                        return Err(DecodeError::NotCanonical { what: "element" });
                    }
                    values.push(v);
                }
                ClientPayload::MaskedInput(MaskedVector { bits, values })
            }
            tag::CONSISTENCY_SIGNATURE => {
                ClientPayload::ConsistencySignature(r.array("signature")?)
            }
            tag::UNMASK_SHARES => ClientPayload::UnmaskShares(UnmaskShares {
                self_mask_shares: r.scalars("self-mask shares")?,
                mask_key_shares: r.scalars("mask-key shares")?,
            }),
            other => return Err(DecodeError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(ClientMessage {
            session_id,
            round,
            sender,
            payload,
        })
    }
}

impl ServerMessage {
    /// Serialises the message.
    pub fn encode(&self) -> Vec<u8> {
        let t = match &self.payload {
            ServerPayload::KeyDirectory(_) => tag::KEY_DIRECTORY,
            ServerPayload::ForwardedShares(_) => tag::FORWARDED_SHARES,
            ServerPayload::ConsistencyRequest { .. } => tag::CONSISTENCY_REQUEST,
            ServerPayload::UnmaskRequest(_) => tag::UNMASK_REQUEST,
            ServerPayload::Abort(_) => tag::ABORT,
        };
        let mut w = Writer::header(t, &self.session_id, self.round, self.recipient);
        match &self.payload {
            ServerPayload::KeyDirectory(list) => {
                w.count(list.len());
                for e in list {
                    w.u32(e.id);
                    w.advertisement(&e.keys);
                }
            }
            ServerPayload::ForwardedShares(list) => w.shares(list),
            ServerPayload::ConsistencyRequest { survivors, dropped } => {
                w.ids(survivors);
                w.ids(dropped);
            }
            ServerPayload::UnmaskRequest(sigs) => {
                w.count(sigs.len());
                for (id, sig) in sigs {
                    w.u32(*id);
                    w.bytes(sig);
                }
            }
            ServerPayload::Abort(stage) => w.0.push(stage.code()),
        }
        w.0
    }

    /// Parses a message from untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<ServerMessage, DecodeError> {
        let mut r = Reader { buf: bytes };
        let (t, session_id, round, recipient) = r.header()?;
        let payload = match t {
            tag::KEY_DIRECTORY => {
                let n = r.count("directory", MAX_PARTICIPANTS, 4 + 128)?;
                let mut list = Vec::with_capacity(n);
                let mut prev = 0;
                for _ in 0..n {
                    prev = r.id_after(prev, "directory")?;
                    list.push(SignedKeys {
                        id: prev,
                        keys: r.advertisement()?,
                    });
                }
                ServerPayload::KeyDirectory(list)
            }
            tag::FORWARDED_SHARES => ServerPayload::ForwardedShares(r.shares("forwarded shares")?),
            tag::CONSISTENCY_REQUEST => ServerPayload::ConsistencyRequest {
                survivors: r.ids("survivors")?,
                dropped: r.ids("dropped")?,
            },
            tag::UNMASK_REQUEST => {
                let n = r.count("signatures", MAX_PARTICIPANTS, 68)?;
                let mut list = Vec::with_capacity(n);
                let mut prev = 0;
                for _ in 0..n {
                    prev = r.id_after(prev, "signatures")?;
                    list.push((prev, r.array("signature")?));
                }
                ServerPayload::UnmaskRequest(list)
            }
            tag::ABORT => {
                let code = r.u8("stage")?;
                ServerPayload::Abort(
                    Stage::from_code(code).ok_or(DecodeError::NotCanonical { what: "stage" })?,
                )
            }
            other => return Err(DecodeError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(ServerMessage {
            session_id,
            round,
            recipient,
            payload,
        })
    }
}
