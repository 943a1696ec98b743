//! Custom models: a TorchScript module scripted in Python by the job's owner, loaded as a
//! trainable module (`tch::TrainableCModule`) whose parameters live in a [`VarStore`], so the
//! same local-training loop, optimizers and FedProx term as the built-in networks apply.
//!
//! libtorch registers a module parameter `deep.0.weight` as the variable `deep_0_weight`; the
//! layout keeps the `named_parameters()` names, and loading maps between the two. A module is
//! refused unless its parameters are exactly the layout's tensors with the layout's shapes, and
//! unless a forward pass on a `[2, input_dim]` batch gives one logit per row. Buffers (e.g.
//! batch-norm statistics) are not federated: they keep the values the module was saved with.

use std::collections::HashMap;

use confide_core::model::{ModelParams, torchscript_var_name};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor, TrainableCModule};

use super::model::{Classifier, copy_into_vars, read_vars};
use super::{MlError, ensure_cpu_threads};

/// A scripted module with the federation's parameters loaded.
pub struct ScriptedNet {
    module: TrainableCModule,
    vs: VarStore,
    /// The module's parameter tensors, keyed by layout name (sharing storage with the module).
    vars: HashMap<String, Tensor>,
    layout: confide_core::model::ParamLayout,
}

impl std::fmt::Debug for ScriptedNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedNet").field("tensors", &self.layout.tensors.len()).finish()
    }
}

impl ScriptedNet {
    /// Loads `module` (the bytes `torch.jit.save` wrote) on `device`, checks its parameters
    /// against `params.layout`, copies `params` in, and probes the forward pass with
    /// `input_dim` inputs.
    pub fn load(module: &[u8], params: &ModelParams, input_dim: usize, device: Device) -> Result<Self, MlError> {
        ensure_cpu_threads();
        let vs = VarStore::new(device);
        let mut module = TrainableCModule::load_data(&mut std::io::Cursor::new(module), vs.root())
            .map_err(|e| MlError::ScriptedModule(format!("cannot load the module: {e}")))?;
        let by_var = vs.variables();
        let mut vars = HashMap::with_capacity(by_var.len());
        for t in &params.layout.tensors {
            let var_name = torchscript_var_name(&t.name);
            let var = by_var.get(&var_name).ok_or_else(|| MlError::MissingVariable(t.name.clone()))?;
            if vars.insert(t.name.clone(), var.shallow_clone()).is_some() {
                return Err(MlError::ScriptedModule(format!("the layout names tensor `{}` twice", t.name)));
            }
        }
        let mapped: std::collections::HashSet<String> =
            params.layout.tensors.iter().map(|t| torchscript_var_name(&t.name)).collect();
        if mapped.len() != vars.len() {
            return Err(MlError::ScriptedModule("layout names collide once dots become underscores".into()));
        }
        if let Some(extra) = by_var.keys().find(|k| !mapped.contains(*k)) {
            return Err(MlError::UnexpectedVariable(extra.clone()));
        }
        copy_into_vars(&vars, params)?;
        module.f_set_eval()?;
        let net = Self { module, vs, vars, layout: params.layout.clone() };
        net.probe(input_dim, device)?;
        Ok(net)
    }

    /// Runs the module on a zero batch of two rows: a wrong input width or output shape is
    /// reported before any training, naming the width.
    fn probe(&self, input_dim: usize, device: Device) -> Result<(), MlError> {
        let width = i64::try_from(input_dim).map_err(|_| MlError::Data("too many columns".into()))?;
        let x = Tensor::f_zeros([2, width], (Kind::Float, device))?;
        let out = tch::no_grad(|| self.logits(&x)).map_err(|e| {
            MlError::ScriptedModule(format!("forward pass on a [2, {input_dim}] batch failed: {e}"))
        })?;
        if out.size() != [2] {
            return Err(MlError::ScriptedModule(format!(
                "forward on a [2, {input_dim}] batch returned shape {:?}; it must return one logit per row ([N] or [N, 1])",
                out.size()
            )));
        }
        Ok(())
    }
}

impl Classifier for ScriptedNet {
    fn logits(&self, x: &Tensor) -> Result<Tensor, MlError> {
        let out = self.module.forward_ts(&[x])?;
        let out = match out.size().as_slice() {
            [_, 1] => out.f_squeeze_dim(-1)?,
            _ => out,
        };
        Ok(if out.kind() == Kind::Float { out } else { out.f_to_kind(Kind::Float)? })
    }

    fn var_store(&self) -> &VarStore {
        &self.vs
    }

    fn params(&self) -> Result<ModelParams, MlError> {
        read_vars(&self.vars, &self.layout)
    }

    fn set_training(&mut self, training: bool) -> Result<(), MlError> {
        if training {
            self.module.f_set_train()?;
        } else {
            self.module.f_set_eval()?;
        }
        Ok(())
    }
}
