//! The [`Classifier`] interface training and evaluation use, the built-in network for a
//! [`ModelSpec`], and the transfer of parameters between libtorch variables and the flat
//! [`ModelParams`] every other component uses, matched by tensor name (`fc0.weight`,
//! `fc0.bias`, ...) and checked by shape.

use std::collections::HashMap;

use confide_core::model::{ModelParams, ModelSpec, ParamLayout};
use tch::nn::{self, Module, VarStore};
use tch::{Device, Kind, Tensor};

use super::MlError;

/// A trainable binary classifier over encoded rows: what local training, prediction and
/// evaluation need from a model, whether built in ([`Net`]) or scripted by the job's owner
/// ([`super::ScriptedNet`]).
pub trait Classifier: std::fmt::Debug {
    /// Logits, shape `[rows]`, for a `[rows, input_dim]` batch.
    fn logits(&self, x: &Tensor) -> Result<Tensor, MlError>;
    /// The variable store holding the parameters (optimizers and FedProx anchors use it).
    fn var_store(&self) -> &VarStore;
    /// The current parameters, in the model's layout.
    fn params(&self) -> Result<ModelParams, MlError>;
    /// Switches between training behaviour (dropout active) and evaluation behaviour.
    fn set_training(&mut self, training: bool) -> Result<(), MlError>;
}

/// Builds the model a task names: a built-in family from `spec`, or, for `torchscript`, the
/// scripted `module` (its bytes, already verified against the spec's hash); `params` loaded.
pub fn build_model(
    spec: &ModelSpec,
    module: Option<&[u8]>,
    params: &ModelParams,
    input_dim: usize,
    device: Device,
) -> Result<Box<dyn Classifier>, MlError> {
    match spec {
        ModelSpec::TorchScript(_) => {
            let module = module.ok_or_else(|| {
                MlError::ScriptedModule("the task carries no TorchScript module".into())
            })?;
            Ok(Box::new(super::ScriptedNet::load(module, params, input_dim, device)?))
        }
        _ => Ok(Box::new(Net::new(spec, params, input_dim, device)?)),
    }
}

/// A fully connected binary classifier: `fc0 … fcK` with ReLU between layers and one output
/// logit (logistic regression is the single-layer case).
#[derive(Debug)]
pub struct Net {
    vs: VarStore,
    layers: Vec<nn::Linear>,
    layout: ParamLayout,
}

impl Net {
    /// Builds the network for `spec` reading `input_dim` features, with `params` loaded.
    pub fn new(
        spec: &ModelSpec,
        params: &ModelParams,
        input_dim: usize,
        device: Device,
    ) -> Result<Self, MlError> {
        let layout = spec.layout(input_dim);
        if params.layout != layout {
            return Err(MlError::LayoutMismatch {
                model: spec.label(),
                input_dim,
                detail: describe_difference(&layout, &params.layout),
            });
        }
        super::ensure_cpu_threads();
        let mut vs = VarStore::new(device);
        let root = vs.root();
        let mut layers = Vec::new();
        let mut fan_in = input_dim;
        for (i, out) in spec.hidden().iter().copied().chain(std::iter::once(1)).enumerate() {
            layers.push(nn::linear(
                &root / format!("fc{i}"),
                to_i64(fan_in)?,
                to_i64(out)?,
                Default::default(),
            ));
            fan_in = out;
        }
        load_params_into(&mut vs, params)?;
        Ok(Self { vs, layers, layout })
    }
}

impl Net {
    /// The linear layers, input first (ReLU between them): what DP-SGD's per-example gradient
    /// norms are computed from.
    pub(crate) fn layers(&self) -> &[nn::Linear] {
        &self.layers
    }
}

impl Classifier for Net {
    fn logits(&self, x: &Tensor) -> Result<Tensor, MlError> {
        let last = self.layers.len().saturating_sub(1);
        let mut h = x.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h);
            if i < last {
                h = h.relu();
            }
        }
        Ok(h.squeeze_dim(-1))
    }

    fn var_store(&self) -> &VarStore {
        &self.vs
    }

    fn params(&self) -> Result<ModelParams, MlError> {
        params_from(&self.vs, &self.layout)
    }

    /// A built-in network behaves the same in training and evaluation.
    fn set_training(&mut self, _training: bool) -> Result<(), MlError> {
        Ok(())
    }
}

fn to_i64(n: usize) -> Result<i64, MlError> {
    i64::try_from(n).map_err(|_| MlError::Data(format!("dimension {n} is too large")))
}

fn describe_difference(expected: &ParamLayout, found: &ParamLayout) -> String {
    for (i, want) in expected.tensors.iter().enumerate() {
        match found.tensors.get(i) {
            Some(got) if got == want => {}
            Some(got) => {
                return format!(
                    "tensor {i} is `{}` {:?}, expected `{}` {:?}",
                    got.name, got.shape, want.name, want.shape
                );
            }
            None => return format!("tensor `{}` is missing", want.name),
        }
    }
    format!("{} tensors given, {} expected", found.tensors.len(), expected.tensors.len())
}

fn check_shape(name: &str, var: &Tensor, shape: &[usize]) -> Result<(), MlError> {
    let found = var.size();
    if found.len() != shape.len()
        || found.iter().zip(shape).any(|(&f, &s)| usize::try_from(f).ok() != Some(s))
    {
        return Err(MlError::ShapeMismatch {
            name: name.to_string(),
            expected: shape.to_vec(),
            found,
        });
    }
    Ok(())
}

/// Copies `params` into the variables of `vs`, by name. Every variable must be covered and every
/// tensor must exist with the same shape; nothing is partially loaded on a name mismatch.
pub fn load_params_into(vs: &mut VarStore, params: &ModelParams) -> Result<(), MlError> {
    copy_into_vars(&vs.variables(), params)
}

/// [`load_params_into`] over variables keyed by layout name.
pub(crate) fn copy_into_vars(vars: &HashMap<String, Tensor>, params: &ModelParams) -> Result<(), MlError> {
    for name in vars.keys() {
        if !params.layout.tensors.iter().any(|t| &t.name == name) {
            return Err(MlError::UnexpectedVariable(name.clone()));
        }
    }
    for spec in &params.layout.tensors {
        let var =
            vars.get(&spec.name).ok_or_else(|| MlError::MissingVariable(spec.name.clone()))?;
        check_shape(&spec.name, var, &spec.shape)?;
    }
    if params.values.len() != params.layout.len() {
        return Err(confide_core::model::ModelError::Length {
            found: params.values.len(),
            expected: params.layout.len(),
        }
        .into());
    }
    for (spec, offset) in params.layout.offsets() {
        let mut var = vars
            .get(&spec.name)
            .ok_or_else(|| MlError::MissingVariable(spec.name.clone()))?
            .shallow_clone();
        let src = Tensor::f_from_slice(&params.values[offset..offset + spec.numel()])?
            .f_reshape(var.size())?
            .f_to_device(var.device())?;
        tch::no_grad(|| var.f_copy_(&src))?;
    }
    Ok(())
}

/// Reads the variables of `vs` named in `layout` into flat parameters (on the CPU, as `f32`).
/// Fails on a missing name, a shape mismatch or a non-finite value.
pub fn params_from(vs: &VarStore, layout: &ParamLayout) -> Result<ModelParams, MlError> {
    read_vars(&vs.variables(), layout)
}

/// [`params_from`] over variables keyed by layout name.
pub(crate) fn read_vars(vars: &HashMap<String, Tensor>, layout: &ParamLayout) -> Result<ModelParams, MlError> {
    let mut values = Vec::with_capacity(layout.len());
    for spec in &layout.tensors {
        let var =
            vars.get(&spec.name).ok_or_else(|| MlError::MissingVariable(spec.name.clone()))?;
        check_shape(&spec.name, var, &spec.shape)?;
        let flat =
            tch::no_grad(|| var.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_reshape([-1]))?;
        values.extend(Vec::<f32>::try_from(&flat)?);
    }
    Ok(ModelParams::new(layout.clone(), values)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_round_trip_through_libtorch_by_name() {
        let spec = ModelSpec::Mlp { hidden: vec![4, 3] };
        let params = ModelParams::init(spec.layout(5), 11);
        let net = Net::new(&spec, &params, 5, Device::Cpu).expect("builds");
        assert_eq!(net.params().expect("reads"), params);
        let names: std::collections::BTreeSet<String> =
            net.var_store().variables().into_keys().collect();
        let expected: std::collections::BTreeSet<String> =
            params.layout.tensors.iter().map(|t| t.name.clone()).collect();
        assert_eq!(names, expected);
        // A tensor op runs and gives one logit per row.
        let x = Tensor::ones([7, 5], (Kind::Float, Device::Cpu));
        assert_eq!(net.logits(&x).expect("forward").size(), [7]);
    }

    #[test]
    fn mismatched_layouts_and_shapes_are_refused() {
        let spec = ModelSpec::LogisticRegression;
        let params = ModelParams::init(spec.layout(6), 1);
        let err = Net::new(&spec, &params, 5, Device::Cpu).expect_err("6 inputs vs 5");
        assert!(matches!(err, MlError::LayoutMismatch { input_dim: 5, .. }), "{err}");
        let mlp = ModelSpec::Mlp { hidden: vec![2] };
        assert!(matches!(
            Net::new(&mlp, &params, 6, Device::Cpu),
            Err(MlError::LayoutMismatch { .. })
        ));

        let net =
            Net::new(&spec, &ModelParams::init(spec.layout(5), 1), 5, Device::Cpu).expect("builds");
        let mut vs = VarStore::new(Device::Cpu);
        let _ = nn::linear(vs.root() / "fc0", 5, 1, Default::default());
        assert!(matches!(load_params_into(&mut vs, &params), Err(MlError::ShapeMismatch { .. })));
        let mut renamed = params.clone();
        renamed.layout.tensors[0].name = "fc9.weight".into();
        assert!(matches!(load_params_into(&mut vs, &renamed), Err(MlError::UnexpectedVariable(_))));
        let deeper = ModelSpec::Mlp { hidden: vec![1] }.layout(5);
        assert!(
            matches!(params_from(net.var_store(), &deeper), Err(MlError::MissingVariable(n)) if n == "fc1.weight")
        );
        assert!(matches!(
            params_from(net.var_store(), &mlp.layout(5)),
            Err(MlError::ShapeMismatch { .. })
        ));
    }
}
