//! What a worker decodes from the coordinator's task stream: the task and the JSON and
//! secure-aggregation setup inside it. Hostile bytes must give errors, never a panic.
#![no_main]

use confide_core::job::LocalTraining;
use confide_core::model::ModelSpec;
use confide_proto::v1::{Task, task::Kind};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(task) = Task::decode(data) else { return };
    let (model, prep, setup) = match &task.kind {
        Some(Kind::Train(t)) => {
            let _ = serde_json::from_str::<LocalTraining>(&t.train_config_json);
            (t.model.clone(), Some(t.preprocessing_json.clone()), t.aggregation.clone())
        }
        Some(Kind::Evaluate(t)) => (t.model.clone(), Some(t.preprocessing_json.clone()), t.aggregation.clone()),
        Some(Kind::Stats(t)) => (None, None, t.aggregation.clone()),
        Some(Kind::TreeLevel(t)) => {
            let _ = serde_json::from_str::<confide_gbdt::GrowingTree>(&t.tree_json);
            (t.model.clone(), None, t.aggregation.clone())
        }
        _ => (None, None, None),
    };
    if let Some(m) = model {
        if let Ok(spec) = serde_json::from_str::<ModelSpec>(&m.spec_json) {
            // Layouts are only built for sane widths; a spec is validated before use.
            if spec.hidden().iter().all(|&h| h <= 4096) {
                let _ = spec.layout(16).len();
            }
        }
    }
    if let Some(p) = prep {
        let _ = serde_json::from_str::<confide_datasets::Preprocessing>(&p);
    }
    if let Some(secure) = setup.and_then(|s| s.secure.map(|x| (x, s.vector_len))) {
        let _ = confide_proto::secagg::params_from(&secure.0, task.round, secure.1);
    }
});
