//! Fixed-point encoding of real vectors into Z_{2^b} and decoding of the aggregate.
//!
//! A value `x` is clipped to `[-clip, clip]`, scaled to `v = x·scale`, and rounded
//! stochastically: `⌊v⌋ + 1` with probability `v − ⌊v⌋`, else `⌊v⌋`, which is unbiased. The
//! integer is stored in two's complement modulo 2^b. The sum of `m` encoded values is decoded by
//! reading it as a signed b-bit integer and dividing by `scale`; the headroom check of
//! [`crate::SessionParams::validate`] guarantees it never wraps, so the error is below `m/scale`.

use rand_core::RngCore;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::params::{FixedPoint, modulus_mask};

/// Encodes `values` (clipped, scaled, stochastically rounded) into Z_{2^bits}.
pub(crate) fn encode(
    values: &[f64],
    encoding: FixedPoint,
    bits: u32,
    rng: &mut impl RngCore,
) -> Result<Zeroizing<Vec<u64>>, Error> {
    let mask = modulus_mask(bits);
    let mut out = Zeroizing::new(Vec::with_capacity(values.len()));
    for (index, &x) in values.iter().enumerate() {
        if !x.is_finite() {
            return Err(Error::NonFiniteInput { index });
        }
        let v = x.clamp(-encoding.clip, encoding.clip) * encoding.scale;
        let floor = v.floor();
        let frac = v - floor;
        // 53 random bits → uniform in [0, 1).
        let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let rounded = if u < frac { floor + 1.0 } else { floor };
        out.push((rounded as i64 as u64) & mask);
    }
    Ok(out)
}

/// Decodes an aggregate in Z_{2^bits} (signed) back to reals.
pub(crate) fn decode(sum: &[u64], encoding: FixedPoint, bits: u32) -> Vec<f64> {
    let mask = modulus_mask(bits);
    sum.iter()
        .map(|&s| {
            let s = i128::from(s & mask);
            let half = 1i128 << (bits - 1);
            let signed = if s >= half { s - (half << 1) } else { s };
            signed as f64 / encoding.scale
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Drbg;

    #[test]
    fn round_trip_within_resolution() {
        let enc = FixedPoint {
            clip: 4.0,
            scale: 1024.0,
        };
        let mut rng = Drbg::derive(&[1; 32], b"t", &[]);
        for bits in [16, 32, 40, 64] {
            let xs = [-4.5, -1.23456, 0.0, 0.5, 3.999, 7.0];
            let encoded = encode(&xs, enc, bits, &mut rng).unwrap_or_default();
            let decoded = decode(&encoded, enc, bits);
            for (x, y) in xs.iter().zip(decoded) {
                assert!(
                    (x.clamp(-4.0, 4.0) - y).abs() < 1.0 / 1024.0,
                    "{bits}: {x} vs {y}"
                );
            }
        }
    }

    #[test]
    fn rejects_nan() {
        let enc = FixedPoint {
            clip: 1.0,
            scale: 2.0,
        };
        let mut rng = Drbg::derive(&[1; 32], b"t", &[]);
        assert_eq!(
            encode(&[0.0, f64::NAN], enc, 32, &mut rng).map(|_| ()),
            Err(Error::NonFiniteInput { index: 1 })
        );
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        let enc = FixedPoint {
            clip: 1.0,
            scale: 1.0,
        };
        let mut rng = Drbg::derive(&[2; 32], b"t", &[]);
        let xs = vec![0.25; 20_000];
        let encoded = encode(&xs, enc, 32, &mut rng).unwrap_or_default();
        let mean = decode(&encoded, enc, 32).iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.25).abs() < 0.02, "{mean}");
    }
}
