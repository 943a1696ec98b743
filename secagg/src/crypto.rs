//! Every cryptographic operation of the protocol, built only from audited crates: X25519 key
//! agreement (x25519-dalek), Ed25519 transcripts (ed25519-dalek), HKDF-SHA-256 key derivation
//! (hkdf), ChaCha20-Poly1305 share encryption (chacha20poly1305), the ChaCha20 mask PRG
//! (chacha20) and Shamir secret sharing over the Ed25519 scalar field (vsss-rs).
//!
//! All derived keys are bound to a domain label, the session id, the round, and whatever else the
//! key is for (sender/receiver, modulus, vector length), so nothing can be replayed across
//! contexts. Secrets are held in [`Zeroizing`] wrappers or zeroizing dalek types.

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use hkdf::Hkdf;
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;
use vsss_rs::curve25519::WrappedScalar;
use vsss_rs::curve25519_dalek::Scalar;
use vsss_rs::{DefaultShare, IdentifierPrimeField, ParticipantIdGeneratorType};
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use crate::ParticipantId;
use crate::error::Error;
use crate::params::SessionParams;

/// Domain-separation prefix of every label.
const DOMAIN: &[u8] = b"confide-secagg/v2/";
/// Plaintext of one encrypted share pair: the self-mask-seed share and the mask-key share.
pub(crate) const SHARE_PLAINTEXT_LEN: usize = 64;
/// Ciphertext length of one share pair (plaintext + Poly1305 tag).
pub const SHARE_CIPHERTEXT_LEN: usize = SHARE_PLAINTEXT_LEN + 16;
/// Bytes of keystream generated per PRG call when expanding masks.
const PRG_BLOCK: usize = 16 * 1024;

/// Builds an unambiguous byte string: the label, then each field prefixed by its length.
pub(crate) fn transcript(label: &[u8], fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        DOMAIN.len() + label.len() + fields.iter().map(|f| f.len() + 4).sum::<usize>(),
    );
    out.extend_from_slice(DOMAIN);
    out.extend_from_slice(label);
    for field in fields {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// HKDF-SHA-256 (salt = session id) → 32 bytes, with `info` = transcript(label, fields).
fn hkdf32(salt: &[u8], ikm: &[u8], label: &[u8], fields: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let mut okm = Zeroizing::new([0u8; 32]);
    let info = transcript(label, fields);
    // 32 bytes is far below HKDF-SHA-256's 8160-byte limit, so expand cannot fail.
    if Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(&info, okm.as_mut())
        .is_err()
    {
        okm.zeroize();
    }
    okm
}

/// A deterministic CSPRNG: the ChaCha20 keystream under a key derived from a seed.
pub(crate) struct Drbg(ChaCha20);

impl Drbg {
    /// A generator keyed by HKDF(seed, label, context).
    pub(crate) fn derive(seed: &[u8; 32], label: &[u8], context: &[&[u8]]) -> Drbg {
        let key = hkdf32(b"drbg", seed, label, context);
        Drbg(ChaCha20::new(key.as_ref().into(), &[0u8; 12].into()))
    }
}

impl RngCore for Drbg {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(0);
        self.0.apply_keystream(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for Drbg {}

impl std::fmt::Debug for Drbg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Drbg(..)")
    }
}

/// A uniformly random scalar (the field element that is secret-shared).
pub(crate) fn random_scalar(rng: &mut Drbg) -> Zeroizing<Scalar> {
    let mut wide = Zeroizing::new([0u8; 64]);
    rng.fill_bytes(wide.as_mut());
    Zeroizing::new(Scalar::from_bytes_mod_order_wide(&wide))
}

/// What an advertisement signature covers: (session, round, id, c_pk, s_pk).
pub(crate) fn advertisement_transcript(
    params: &SessionParams,
    id: ParticipantId,
    c_pk: &[u8; 32],
    s_pk: &[u8; 32],
) -> Vec<u8> {
    transcript(
        b"advertise",
        &[
            &params.session_id,
            &params.round.to_be_bytes(),
            &id.to_be_bytes(),
            c_pk,
            s_pk,
        ],
    )
}

/// What a consistency signature covers: (session, round, graph seed — i.e. the key directory
/// the signer saw —, signer, survivors, dropped).
pub(crate) fn consistency_transcript(
    params: &SessionParams,
    directory: &[u8; 32],
    signer: ParticipantId,
    survivors: &[ParticipantId],
    dropped: &[ParticipantId],
) -> Vec<u8> {
    let list = |ids: &[ParticipantId]| {
        ids.iter()
            .flat_map(|id| id.to_be_bytes())
            .collect::<Vec<u8>>()
    };
    transcript(
        b"consistency",
        &[
            &params.session_id,
            &params.round.to_be_bytes(),
            directory,
            &signer.to_be_bytes(),
            &list(survivors),
            &list(dropped),
        ],
    )
}

/// Verifies `signature` by `signer` (its registered key) over `message`.
pub(crate) fn verify(
    params: &SessionParams,
    signer: ParticipantId,
    message: &[u8],
    signature: &[u8; 64],
) -> Result<(), Error> {
    let key = params
        .participants
        .get(&signer)
        .ok_or(Error::UnknownParticipant(signer))?;
    let sig = ed25519_dalek::Signature::from_bytes(signature);
    key.verify_strict(message, &sig)
        .map_err(|_| Error::BadSignature { signer })
}

/// Whether `pk` is a low-order point (every key agreement with it would be all-zero).
pub(crate) fn is_low_order(pk: &[u8; 32]) -> bool {
    // X25519 clamps scalars to multiples of the cofactor, so the result is zero exactly for
    // points in the small subgroup, whatever (fixed) secret probes it.
    let probe = StaticSecret::from([0x5a; 32]);
    !probe
        .diffie_hellman(&PublicKey::from(*pk))
        .was_contributory()
}

/// X25519 agreement that rejects non-contributory results.
pub(crate) fn agree(
    secret: &StaticSecret,
    peer: ParticipantId,
    peer_pk: &[u8; 32],
) -> Result<SharedSecret, Error> {
    let shared = secret.diffie_hellman(&PublicKey::from(*peer_pk));
    if shared.was_contributory() {
        Ok(shared)
    } else {
        Err(Error::NonContributoryKey { participant: peer })
    }
}

/// The X25519 mask key derived from the shared field element `s_u` (so it can be rebuilt from
/// Shamir shares by the server when `owner` drops out).
pub(crate) fn mask_secret_key(
    params: &SessionParams,
    owner: ParticipantId,
    s: &Scalar,
) -> StaticSecret {
    let bytes = hkdf32(
        &params.session_id,
        s.as_bytes(),
        b"mask-secret-key",
        &[&params.round.to_be_bytes(), &owner.to_be_bytes()],
    );
    StaticSecret::from(*bytes)
}

/// The mask context (round, modulus bits, vector length) every PRG key is bound to.
fn mask_context(params: &SessionParams) -> [u8; 20] {
    let mut ctx = [0u8; 20];
    ctx[..8].copy_from_slice(&params.round.to_be_bytes());
    ctx[8..12].copy_from_slice(&params.modulus_bits.to_be_bytes());
    ctx[12..].copy_from_slice(&(params.vector_len as u64).to_be_bytes());
    ctx
}

/// PRG key of the pairwise mask between `a` and `b` (symmetric in the pair).
pub(crate) fn pairwise_mask_key(
    params: &SessionParams,
    a: ParticipantId,
    b: ParticipantId,
    shared: &SharedSecret,
) -> Zeroizing<[u8; 32]> {
    let (lo, hi) = (a.min(b), a.max(b));
    hkdf32(
        &params.session_id,
        shared.as_bytes(),
        b"pairwise-mask",
        &[&mask_context(params), &lo.to_be_bytes(), &hi.to_be_bytes()],
    )
}

/// PRG key of `owner`'s self mask, derived from the shared field element `b_u`.
pub(crate) fn self_mask_key(
    params: &SessionParams,
    owner: ParticipantId,
    b: &Scalar,
) -> Zeroizing<[u8; 32]> {
    hkdf32(
        &params.session_id,
        b.as_bytes(),
        b"self-mask",
        &[&mask_context(params), &owner.to_be_bytes()],
    )
}

/// Whether `owner` adds (`false`) or subtracts (`true`) the pairwise mask it shares with `peer`:
/// the lower id adds, the higher subtracts, so the pair cancels in the sum.
pub(crate) fn pairwise_sign_negative(owner: ParticipantId, peer: ParticipantId) -> bool {
    owner > peer
}

/// Adds (or subtracts) the PRG expansion of `key` into `acc`, element-wise modulo 2^64. Elements
/// are 32-bit keystream words when `bits <= 32`, 64-bit words otherwise; callers reduce modulo
/// 2^bits at the end (2^bits divides 2^64, so the order of reduction does not matter).
pub fn add_mask(acc: &mut [u64], key: &[u8; 32], bits: u32, negate: bool) {
    let mut cipher = ChaCha20::new(key.into(), &[0u8; 12].into());
    let mut buf = Zeroizing::new(vec![0u8; PRG_BLOCK]);
    let word = if bits <= 32 { 4 } else { 8 };
    for chunk in acc.chunks_mut(PRG_BLOCK / word) {
        let Some(bytes) = buf.get_mut(..chunk.len() * word) else {
            return;
        };
        bytes.fill(0);
        cipher.apply_keystream(bytes);
        match (word, negate) {
            (4, false) => add_words::<4>(chunk, bytes, |a, w| a.wrapping_add(w)),
            (4, true) => add_words::<4>(chunk, bytes, |a, w| a.wrapping_sub(w)),
            (_, false) => add_words::<8>(chunk, bytes, |a, w| a.wrapping_add(w)),
            (_, true) => add_words::<8>(chunk, bytes, |a, w| a.wrapping_sub(w)),
        }
    }
}

#[inline(always)]
fn add_words<const W: usize>(acc: &mut [u64], bytes: &[u8], op: impl Fn(u64, u64) -> u64) {
    for (a, w) in acc.iter_mut().zip(bytes.chunks_exact(W)) {
        let mut le = [0u8; 8];
        le[..W].copy_from_slice(w);
        *a = op(*a, u64::from_le_bytes(le));
    }
}

/// The raw keystream throughput baseline used by the benchmarks: ChaCha20 over `buf`.
pub fn raw_keystream(key: &[u8; 32], buf: &mut [u8]) {
    let mut cipher = ChaCha20::new(key.into(), &[0u8; 12].into());
    cipher.apply_keystream(buf);
}

/// AEAD key and associated data for the share pair sent from `sender` to `receiver`.
fn share_cipher(
    params: &SessionParams,
    sender: ParticipantId,
    receiver: ParticipantId,
    shared: &SharedSecret,
) -> (ChaCha20Poly1305, Vec<u8>) {
    let fields: [&[u8]; 3] = [
        &params.round.to_be_bytes(),
        &sender.to_be_bytes(),
        &receiver.to_be_bytes(),
    ];
    let key = hkdf32(
        &params.session_id,
        shared.as_bytes(),
        b"share-encryption",
        &fields,
    );
    let aad = transcript(
        b"share-aad",
        &[
            &params.session_id,
            &params.round.to_be_bytes(),
            &sender.to_be_bytes(),
            &receiver.to_be_bytes(),
        ],
    );
    (ChaCha20Poly1305::new(key.as_ref().into()), aad)
}

/// Encrypts the share pair for `receiver`. Each key encrypts exactly one message (fresh c-keys
/// per round, direction bound into the key), so a fixed nonce is safe.
pub(crate) fn encrypt_shares(
    params: &SessionParams,
    sender: ParticipantId,
    receiver: ParticipantId,
    shared: &SharedSecret,
    b_share: &Scalar,
    s_share: &Scalar,
) -> Result<Vec<u8>, Error> {
    let (cipher, aad) = share_cipher(params, sender, receiver, shared);
    let mut plain = Zeroizing::new([0u8; SHARE_PLAINTEXT_LEN]);
    plain[..32].copy_from_slice(b_share.as_bytes());
    plain[32..].copy_from_slice(s_share.as_bytes());
    cipher
        .encrypt(
            &[0u8; 12].into(),
            Payload {
                msg: plain.as_ref(),
                aad: &aad,
            },
        )
        .map_err(|_| Error::Decrypt { sender })
}

/// Decrypts the share pair `sender` sent to `receiver`.
pub(crate) fn decrypt_shares(
    params: &SessionParams,
    sender: ParticipantId,
    receiver: ParticipantId,
    shared: &SharedSecret,
    ciphertext: &[u8],
) -> Result<(Zeroizing<Scalar>, Zeroizing<Scalar>), Error> {
    let (cipher, aad) = share_cipher(params, sender, receiver, shared);
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                &[0u8; 12].into(),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::Decrypt { sender })?,
    );
    let (Some(b), Some(s)) = (plain.get(..32), plain.get(32..SHARE_PLAINTEXT_LEN)) else {
        return Err(Error::MalformedShare { sender });
    };
    Ok((scalar_from_bytes(b, sender)?, scalar_from_bytes(s, sender)?))
}

/// Parses a canonical scalar sent by `sender`.
pub(crate) fn scalar_from_bytes(
    bytes: &[u8],
    sender: ParticipantId,
) -> Result<Zeroizing<Scalar>, Error> {
    let mut arr = Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        return Err(Error::MalformedShare { sender });
    }
    arr.copy_from_slice(bytes);
    Option::<Scalar>::from(Scalar::from_canonical_bytes(*arr))
        .map(Zeroizing::new)
        .ok_or(Error::MalformedShare { sender })
}

type ShamirShare =
    DefaultShare<IdentifierPrimeField<WrappedScalar>, IdentifierPrimeField<WrappedScalar>>;

fn identifier(id: ParticipantId) -> IdentifierPrimeField<WrappedScalar> {
    IdentifierPrimeField(WrappedScalar(Scalar::from(u64::from(id))))
}

/// Splits `secret` into `threshold`-of-`holders.len()` Shamir shares, one per holder
/// (x-coordinate = participant id). Returned in the order of `holders`.
pub(crate) fn split(
    secret: &Scalar,
    threshold: usize,
    holders: &[ParticipantId],
    rng: &mut Drbg,
) -> Result<Vec<(ParticipantId, Zeroizing<Scalar>)>, Error> {
    let ids: Vec<_> = holders.iter().map(|&h| identifier(h)).collect();
    let generator = [ParticipantIdGeneratorType::list(&ids)];
    let value = IdentifierPrimeField(WrappedScalar(*secret));
    let mut shares = vsss_rs::shamir::split_secret_with_participant_generator::<ShamirShare>(
        threshold,
        holders.len(),
        &value,
        rng,
        &generator,
    )
    .map_err(|e| Error::SecretSharing(e.to_string()))?;
    let out: Vec<_> = holders
        .iter()
        .zip(&shares)
        .map(|(&h, s)| (h, Zeroizing::new(s.value.0.0)))
        .collect();
    shares.zeroize();
    if out.len() != holders.len() {
        return Err(Error::SecretSharing("wrong number of shares".into()));
    }
    Ok(out)
}

/// Recombines a secret with vsss-rs (the reference for [`combine_with`], used in tests).
#[cfg(test)]
pub(crate) fn combine(
    shares: &[(ParticipantId, Zeroizing<Scalar>)],
) -> Result<Zeroizing<Scalar>, String> {
    use vsss_rs::ReadableShareSet;
    let mut set: Vec<ShamirShare> = shares
        .iter()
        .map(|(h, v)| ShamirShare {
            identifier: identifier(*h),
            value: IdentifierPrimeField(WrappedScalar(**v)),
        })
        .collect();
    let secret = set
        .combine()
        .map(|v| Zeroizing::new(v.0.0))
        .map_err(|e| e.to_string());
    set.zeroize();
    secret
}

/// Lagrange coefficients at x = 0 for the holder set `holders` (the x-coordinates of the shares
/// that will be combined). `None` if the set has a zero or a repeated id.
///
/// The coefficients depend only on the holder set, so the server computes them once per set and
/// reuses them for every secret it rebuilds ([`combine_with`]); vsss-rs's `combine` recomputes
/// the basis (with one field inversion per share) for every secret, which at n = 500 costs
/// ~25 s per round. The unit tests check both give the same secret.
pub(crate) fn lagrange_at_zero(holders: &[ParticipantId]) -> Option<Vec<Scalar>> {
    let mut sorted = holders.to_vec();
    sorted.sort_unstable();
    if sorted.first().is_none_or(|&x| x == 0) || sorted.windows(2).any(|w| w.first() == w.last()) {
        return None;
    }
    let xs: Vec<Scalar> = holders
        .iter()
        .map(|&x| Scalar::from(u64::from(x)))
        .collect();
    let mut numerators = Vec::with_capacity(xs.len());
    let mut denominators = Vec::with_capacity(xs.len());
    for (i, xi) in xs.iter().enumerate() {
        let (mut num, mut den) = (Scalar::ONE, Scalar::ONE);
        for (j, xj) in xs.iter().enumerate() {
            if i != j {
                num *= xj;
                den *= xj - xi;
            }
        }
        numerators.push(num);
        denominators.push(den);
    }
    // Nonzero: the ids are distinct, nonzero and far below the group order.
    Scalar::batch_invert(&mut denominators);
    Some(
        numerators
            .iter()
            .zip(&denominators)
            .map(|(n, d)| n * d)
            .collect(),
    )
}

/// Σ λ_i·y_i: the secret from shares whose holders match the coefficients' holder set, in order.
pub(crate) fn combine_with(
    coefficients: &[Scalar],
    shares: &[(ParticipantId, Zeroizing<Scalar>)],
) -> Zeroizing<Scalar> {
    let mut secret = Zeroizing::new(Scalar::ZERO);
    for (l, (_, y)) in coefficients.iter().zip(shares) {
        *secret += l * **y;
    }
    secret
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shamir_round_trip_with_sparse_ids() {
        let mut rng = Drbg::derive(&[7; 32], b"test", &[]);
        let secret = random_scalar(&mut rng);
        let shares = split(&secret, 3, &[2, 5, 9, 11], &mut rng).unwrap_or_default();
        assert_eq!(shares.len(), 4);
        let picked = vec![shares[0].clone(), shares[2].clone(), shares[3].clone()];
        assert_eq!(*combine(&picked).unwrap_or_default(), *secret);
        let all = shares.clone();
        assert_eq!(*combine(&all).unwrap_or_default(), *secret);
        // Two shares are not enough: the result is unrelated to the secret.
        let two = vec![shares[0].clone(), shares[1].clone()];
        assert_ne!(*combine(&two).unwrap_or_default(), *secret);
    }

    #[test]
    fn cached_lagrange_basis_matches_vsss_combine() {
        let mut rng = Drbg::derive(&[8; 32], b"test", &[]);
        let holders: Vec<ParticipantId> = (1..=40).map(|i| i * 3 + 1).collect();
        let coefficients_for = |shares: &[(ParticipantId, Zeroizing<Scalar>)]| {
            let ids: Vec<_> = shares.iter().map(|(h, _)| *h).collect();
            lagrange_at_zero(&ids).unwrap_or_default()
        };
        for _ in 0..3 {
            let secret = random_scalar(&mut rng);
            let shares = split(&secret, 21, &holders, &mut rng).unwrap_or_default();
            let subset: Vec<_> = shares.iter().skip(5).take(21).cloned().collect();
            assert_eq!(*combine_with(&coefficients_for(&subset), &subset), *secret);
            assert_eq!(*combine(&subset).unwrap_or_default(), *secret);
        }
        assert!(lagrange_at_zero(&[1, 2, 2]).is_none());
        assert!(lagrange_at_zero(&[0, 2]).is_none());
        assert!(lagrange_at_zero(&[]).is_none());
    }

    #[test]
    fn masks_cancel() {
        let key = [3u8; 32];
        for bits in [8, 32, 33, 64] {
            let mut acc = vec![5u64; 10_000];
            add_mask(&mut acc, &key, bits, false);
            assert!(acc.iter().any(|&v| v != 5));
            add_mask(&mut acc, &key, bits, true);
            assert!(acc.iter().all(|&v| v == 5));
        }
    }

    #[test]
    fn low_order_points_are_detected() {
        assert!(is_low_order(&[0u8; 32]));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(is_low_order(&one));
        let pk = PublicKey::from(&StaticSecret::from([9u8; 32]));
        assert!(!is_low_order(pk.as_bytes()));
    }
}
