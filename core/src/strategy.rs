//! Server optimizers: how an averaged client update becomes the next global model.
//!
//! Workers contribute `n_k · (w_k − w)`; the coordinator learns only the sum over institutions
//! and the summed weight, divides, and hands the pseudo-gradient Δ to [`ServerOptimizer::step`]:
//! FedAvg/FedProx take `w ← w + η·Δ`; FedAdam and FedYogi keep first and second moments
//! (Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2). The moments are
//! part of the durable checkpoint, so a resumed job continues with the same optimizer state.

use std::collections::HashMap;

use crate::job::{AdaptiveSpec, StrategySpec};
use crate::model::{ModelError, ModelParams, ParamLayout, TensorSpec};

/// Moment buffers of an adaptive server optimizer (empty for FedAvg/FedProx).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServerState {
    /// First moment m_t, one value per parameter.
    pub m: Vec<f32>,
    /// Second moment v_t, one value per parameter.
    pub v: Vec<f32>,
}

impl ServerState {
    fn layout(len: usize) -> ParamLayout {
        ParamLayout {
            tensors: vec![
                TensorSpec { name: "server.m".into(), shape: vec![len] },
                TensorSpec { name: "server.v".into(), shape: vec![len] },
            ],
        }
    }

    /// Serialises as a safetensors file (`server.m`, `server.v`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let values = self.m.iter().chain(&self.v).copied().collect();
        ModelParams { layout: Self::layout(self.m.len()), values }.to_safetensors(None)
    }

    /// Reads the state of a model with `len` parameters.
    pub fn from_bytes(bytes: &[u8], len: usize) -> Result<Self, ModelError> {
        let params = ModelParams::from_safetensors(bytes, &Self::layout(len))?;
        let (m, v) = params.values.split_at(len);
        Ok(Self { m: m.to_vec(), v: v.to_vec() })
    }
}

/// Errors applying an update.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum StrategyError {
    /// The update does not have the model's length.
    #[error("update has {found} values, model has {expected}")]
    Length {
        /// Values received.
        found: usize,
        /// Values expected.
        expected: usize,
    },
    /// The aggregate is NaN/Inf, or the summed weight is not positive.
    #[error("aggregate is not usable: {0}")]
    NotFinite(String),
}

/// Applies a [`StrategySpec`] round after round.
#[derive(Debug, Clone)]
pub struct ServerOptimizer {
    spec: StrategySpec,
    state: ServerState,
}

impl ServerOptimizer {
    /// A fresh optimizer for a model with `len` parameters.
    pub fn new(spec: StrategySpec, len: usize) -> Self {
        let state = if Self::is_adaptive(&spec) {
            ServerState { m: vec![0.0; len], v: vec![0.0; len] }
        } else {
            ServerState::default()
        };
        Self { spec, state }
    }

    /// Resumes from a saved state.
    pub fn with_state(spec: StrategySpec, state: ServerState) -> Self {
        Self { spec, state }
    }

    /// True when the strategy keeps moments that must be checkpointed.
    pub fn is_adaptive(spec: &StrategySpec) -> bool {
        matches!(spec, StrategySpec::FedAdam(_) | StrategySpec::FedYogi(_))
    }

    /// The current moments.
    pub fn state(&self) -> &ServerState {
        &self.state
    }

    /// Turns a summed weighted update and its summed weight into the next global model.
    ///
    /// `weighted_sum[i] = Σ_k n_k · (w_k − w)[i]`, `total_weight = Σ_k n_k`.
    pub fn step(
        &mut self,
        global: &mut ModelParams,
        weighted_sum: &[f64],
        total_weight: f64,
    ) -> Result<(), StrategyError> {
        let len = global.values.len();
        if weighted_sum.len() != len {
            return Err(StrategyError::Length { found: weighted_sum.len(), expected: len });
        }
        if !(total_weight.is_finite() && total_weight > 0.0) {
            return Err(StrategyError::NotFinite(format!("summed weight is {total_weight}")));
        }
        if let Some(i) = weighted_sum.iter().position(|x| !x.is_finite()) {
            return Err(StrategyError::NotFinite(format!("update element {i} is {}", weighted_sum[i])));
        }
        let delta = weighted_sum.iter().map(|s| s / total_weight);
        let mut next = global.values.clone();
        match &self.spec {
            StrategySpec::FedAvg { server_learning_rate: lr }
            | StrategySpec::FedProx { server_learning_rate: lr, .. } => {
                for (w, d) in next.iter_mut().zip(delta) {
                    *w += (lr * d) as f32;
                }
            }
            StrategySpec::FedAdam(a) | StrategySpec::FedYogi(a) => {
                let yogi = matches!(self.spec, StrategySpec::FedYogi(_));
                let AdaptiveSpec { server_learning_rate: lr, beta1, beta2, tau } = *a;
                if self.state.m.len() != len || self.state.v.len() != len {
                    self.state = ServerState { m: vec![0.0; len], v: vec![0.0; len] };
                }
                for (i, d) in delta.enumerate() {
                    let m = beta1 * self.state.m[i] as f64 + (1.0 - beta1) * d;
                    let v_prev = self.state.v[i] as f64;
                    let d2 = d * d;
                    let v = if yogi {
                        v_prev - (1.0 - beta2) * d2 * (v_prev - d2).signum()
                    } else {
                        beta2 * v_prev + (1.0 - beta2) * d2
                    };
                    self.state.m[i] = m as f32;
                    self.state.v[i] = v as f32;
                    next[i] += (lr * m / (v.max(0.0).sqrt() + tau)) as f32;
                }
            }
        }
        if let Some(i) = next.iter().position(|x| !x.is_finite()) {
            return Err(StrategyError::NotFinite(format!("new parameter {i} is not finite")));
        }
        global.values = next;
        Ok(())
    }

    /// Metadata recorded in checkpoints, naming the strategy.
    pub fn describe(&self) -> HashMap<String, String> {
        let name = match self.spec {
            StrategySpec::FedAvg { .. } => "fedavg",
            StrategySpec::FedProx { .. } => "fedprox",
            StrategySpec::FedAdam(_) => "fedadam",
            StrategySpec::FedYogi(_) => "fedyogi",
        };
        HashMap::from([("strategy".to_string(), name.to_string())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelSpec;

    fn model(values: Vec<f32>) -> ModelParams {
        let layout = ParamLayout { tensors: vec![TensorSpec { name: "w".into(), shape: vec![values.len()] }] };
        ModelParams { layout, values }
    }

    #[test]
    fn fedavg_moves_by_the_sample_weighted_mean() {
        // Two clients: 1 sample with update +3, 3 samples with update −1 → mean 0.
        let mut g = model(vec![1.0, 2.0]);
        let mut opt = ServerOptimizer::new(StrategySpec::default(), 2);
        opt.step(&mut g, &[3.0 * 1.0 - 3.0, 2.0 * 4.0], 4.0).expect("step");
        assert_eq!(g.values, vec![1.0, 4.0]);
    }

    #[test]
    fn fedadam_first_step_moves_each_coordinate_by_about_lr() {
        let spec = StrategySpec::FedAdam(AdaptiveSpec { server_learning_rate: 0.1, beta1: 0.9, beta2: 0.99, tau: 1e-9 });
        let mut g = model(vec![0.0, 0.0]);
        let mut opt = ServerOptimizer::new(spec, 2);
        opt.step(&mut g, &[5.0, -0.5], 1.0).expect("step");
        // m = 0.1·d, v = 0.01·d² ⇒ m/√v = sign(d).
        assert!((g.values[0] - 0.1).abs() < 1e-5 && (g.values[1] + 0.1).abs() < 1e-5, "{:?}", g.values);
    }

    #[test]
    fn fedyogi_second_moment_grows_additively() {
        let spec = StrategySpec::FedYogi(AdaptiveSpec { server_learning_rate: 0.1, beta1: 0.0, beta2: 0.5, tau: 1e-3 });
        let mut g = model(vec![0.0]);
        let mut opt = ServerOptimizer::new(spec, 1);
        opt.step(&mut g, &[2.0], 1.0).expect("step");
        // v = 0 − 0.5·4·sign(0 − 4) = 2.
        assert!((opt.state().v[0] - 2.0).abs() < 1e-6);
    }

    #[test]
    fn bad_aggregates_are_refused_and_model_is_untouched() {
        let mut g = model(vec![1.0]);
        let mut opt = ServerOptimizer::new(StrategySpec::default(), 1);
        assert!(opt.step(&mut g, &[f64::NAN], 1.0).is_err());
        assert!(opt.step(&mut g, &[1.0], 0.0).is_err());
        assert!(matches!(opt.step(&mut g, &[1.0, 2.0], 1.0), Err(StrategyError::Length { .. })));
        assert_eq!(g.values, vec![1.0]);
    }

    #[test]
    fn state_round_trips_through_bytes() {
        let layout = ModelSpec::LogisticRegression.layout(3);
        let spec = StrategySpec::FedAdam(AdaptiveSpec { server_learning_rate: 0.1, beta1: 0.9, beta2: 0.99, tau: 1e-3 });
        let mut g = ModelParams::init(layout, 1);
        let mut opt = ServerOptimizer::new(spec, 4);
        opt.step(&mut g, &[1.0, 2.0, 3.0, 4.0], 2.0).expect("step");
        let back = ServerState::from_bytes(&opt.state().to_bytes(), 4).expect("read");
        assert_eq!(&back, opt.state());
    }
}
