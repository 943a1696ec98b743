//! The wire form of a secure-aggregation session ([`v1::SecureAggregationSetup`]) and its
//! conversion to and from [`confide_secagg::SessionParams`]. Every field from the network is
//! checked; the secagg crate's own `validate` then enforces the protocol's rules.

use std::collections::BTreeMap;
use std::time::Duration;

use confide_secagg::{FixedPoint, Graph, ParticipantId, SessionParams};

use crate::v1;

/// A setup that cannot be turned into session parameters.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum SetupError {
    /// A field has an impossible value.
    #[error("secure aggregation setup: {0}")]
    Invalid(String),
    /// The parameters break a protocol rule.
    #[error("secure aggregation setup: {0}")]
    Config(#[from] confide_secagg::ConfigError),
}

/// Builds the wire setup for participant `me` from the session's parameters, with each
/// participant's institution id and certificate (empty without TLS).
pub fn setup_for(
    params: &SessionParams,
    me: ParticipantId,
    institutions: &BTreeMap<ParticipantId, (String, Vec<u8>)>,
    min_participants: u32,
) -> v1::SecureAggregationSetup {
    v1::SecureAggregationSetup {
        session_id: params.session_id.to_vec(),
        participant_id: me,
        threshold: params.threshold as u32,
        modulus_bits: params.modulus_bits,
        clip: params.encoding.clip,
        scale: params.encoding.scale,
        sparse_neighbours: match params.graph {
            Graph::Complete => 0,
            Graph::Sparse { k } => k as u32,
        },
        stage_timeout_ms: params.stage_timeout.as_millis() as u64,
        peers: params
            .participants
            .iter()
            .map(|(id, key)| {
                let (institution_id, certificate) = institutions.get(id).cloned().unwrap_or_default();
                v1::SecAggPeer { participant_id: *id, institution_id, verifying_key: key.to_bytes().to_vec(), certificate }
            })
            .collect(),
        min_participants,
    }
}

/// Reads a wire setup back into session parameters for a vector of `vector_len` elements.
pub fn params_from(setup: &v1::SecureAggregationSetup, round: u64, vector_len: u64) -> Result<SessionParams, SetupError> {
    let invalid = |m: String| SetupError::Invalid(m);
    let session_id: [u8; 32] =
        setup.session_id.as_slice().try_into().map_err(|_| invalid(format!("session id has {} bytes, 32 expected", setup.session_id.len())))?;
    let mut participants = BTreeMap::new();
    for p in &setup.peers {
        let bytes: [u8; 32] = p
            .verifying_key
            .as_slice()
            .try_into()
            .map_err(|_| invalid(format!("participant {} has a {}-byte key, 32 expected", p.participant_id, p.verifying_key.len())))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| invalid(format!("participant {} has an invalid Ed25519 key", p.participant_id)))?;
        if participants.insert(p.participant_id, key).is_some() {
            return Err(invalid(format!("participant {} is listed twice", p.participant_id)));
        }
    }
    let vector_len = usize::try_from(vector_len).map_err(|_| invalid("vector length overflows".into()))?;
    if !(setup.clip.is_finite() && setup.clip > 0.0 && setup.scale.is_finite() && setup.scale > 0.0) {
        return Err(invalid(format!("clip {} and scale {} must be positive numbers", setup.clip, setup.scale)));
    }
    let params = SessionParams {
        session_id,
        round,
        participants,
        threshold: setup.threshold as usize,
        vector_len,
        modulus_bits: setup.modulus_bits,
        encoding: FixedPoint { clip: setup.clip, scale: setup.scale },
        graph: match setup.sparse_neighbours {
            0 => Graph::Complete,
            k => Graph::Sparse { k: k as usize },
        },
        stage_timeout: Duration::from_millis(setup.stage_timeout_ms),
    };
    params.validate()?;
    Ok(params)
}
