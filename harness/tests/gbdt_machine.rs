//! Tree jobs (`kind = "gbdt"`) in memory, as a specification: the coordinator's `JobMachine`
//! and honest banks running the worker's real `TaskMachine`s and its real tree code, with secure
//! aggregation, on a virtual clock.
//!
//! The federation must grow exactly the trees the in-process reference grows from the same
//! banks (`confide_gbdt::train::train_in_process`, histograms summed in memory): banks sum
//! gradients on secure aggregation's fixed-point grid, so masking changes nothing.

use confide_core::model::GbdtSpec;
use confide_gbdt::{FeatureSet, GbdtModel, GrowParams, LocalBooster, Node};
use confide_harness::fixture::{self, FakeCompute, Phase};
use confide_harness::honest::HonestBank;
use confide_harness::{Bank, Federation};
use confide_proto::v1::task::Kind;
use confide_worker::config::PolicyConfig;

fn compute(i: usize) -> FakeCompute {
    FakeCompute::new(60 + 20 * i, i as u64, 0.0)
}

fn honest(n: usize) -> Vec<Box<dyn Bank>> {
    (1..=n).map(|i| HonestBank::with_defaults(&format!("bank{i}"), compute(i)).boxed()).collect()
}

fn gbdt_toml(trees: u64, model: &str) -> String {
    format!(
        "name = \"harness-trees\"\ndataset = \"toy\"\n[model]\nkind = \"gbdt\"\n{model}\n[training]\nrounds = {trees}\nlearning_rate = 0.3\n\
         [selection]\nmin_workers = 3\n"
    )
}

fn head(f: &Federation) -> GbdtModel {
    GbdtModel::from_bytes(f.store.head_model().expect("a head model")).expect("a tree checkpoint")
}

/// The reference: the same banks' rows boosted in process on the federation's feature space.
fn reference(features: &FeatureSet, banks: usize, trees: u64, spec: &GbdtSpec) -> GbdtModel {
    let schema = fixture::schema();
    let mut boosters: Vec<LocalBooster> = (1..=banks)
        .map(|i| {
            let table = compute(i).table;
            let raw = features.raw_matrix(&table, &schema).expect("raw rows");
            LocalBooster::new(features, raw, table.labels.clone(), 0.0, 1.0)
        })
        .collect();
    let params = GrowParams::new(spec, 0.3);
    confide_gbdt::train::train_in_process(features, &mut boosters, &params, trees, 1.0, 1.0, 42).expect("reference trains")
}

fn leaf_values(model: &GbdtModel) -> Vec<f32> {
    model.trees.iter().flat_map(|t| &t.nodes).filter_map(|n| if let Node::Leaf { value, .. } = n { Some(*value) } else { None }).collect()
}

fn splits(model: &GbdtModel) -> Vec<(u32, u16, bool)> {
    model
        .trees
        .iter()
        .flat_map(|t| &t.nodes)
        .filter_map(|n| if let Node::Split { feature, bin_split, default_left, .. } = n { Some((*feature, *bin_split, *default_left)) } else { None })
        .collect()
}

#[test]
fn a_tree_job_grows_the_reference_trees_level_by_level_under_secure_aggregation() {
    let model = "max_depth = 3\nmin_leaf_rows = 10";
    let mut f = Federation::new(fixture::job(&gbdt_toml(4, model)), honest(3));
    f.run();
    f.completed();
    assert_eq!(f.store.rounds.len(), 4, "one committed round per tree");
    let federated = head(&f);
    assert_eq!(federated.trees.len(), 4);
    let spec = GbdtSpec { max_depth: 3, min_leaf_rows: 10, ..GbdtSpec::default() };
    let expected = reference(&federated.features, 3, 4, &spec);
    assert_eq!(splits(&federated), splits(&expected), "the same splits as the in-process reference");
    // Banks sum gradients on secure aggregation's own 2⁻¹⁶ grid, so the masked sums carry them
    // without rounding: the federation's leaves are the reference's, bit for bit.
    assert_eq!(leaf_values(&federated), leaf_values(&expected));
    let gains = |m: &GbdtModel| -> Vec<f64> {
        m.trees.iter().flat_map(|t| &t.nodes).filter_map(|n| if let Node::Split { gain, .. } = n { Some(*gain) } else { None }).collect()
    };
    for (a, b) in gains(&federated).iter().zip(gains(&expected)) {
        assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "gain {a} vs reference {b}");
    }
    for t in &federated.trees {
        assert!(t.depth() <= 3);
    }
    // Every round's metrics say what its tree is; the evaluation scored the ensemble.
    for r in &f.store.rounds {
        assert!(r.metrics["tree_leaves"] >= 2.0, "{:?}", r.metrics);
        assert!(r.metrics.contains_key("auc"), "{:?}", r.metrics);
        assert_eq!(r.participants.len(), 3);
    }
}

#[test]
fn every_tree_level_is_one_secure_sum_of_histograms_for_the_open_nodes() {
    let model = "max_depth = 2\nmin_leaf_rows = 10";
    let mut f = Federation::new(fixture::job(&gbdt_toml(1, model)), honest(3));
    f.run();
    f.completed();
    // The statistics carried the fine histograms; then at most max_depth level tasks per bank.
    let tasks: Vec<_> = f.assigned.iter().filter(|(bank, _)| bank == "bank1").map(|(_, t)| t.clone()).collect();
    let stats = tasks.iter().filter(|t| matches!(&t.kind, Some(Kind::Stats(s)) if s.fine_histograms)).count();
    let levels: Vec<u32> = tasks
        .iter()
        .filter_map(|t| match &t.kind {
            Some(Kind::TreeLevel(l)) => Some(serde_json::from_str::<confide_gbdt::GrowingTree>(&l.tree_json).expect("tree").depth),
            _ => None,
        })
        .collect();
    assert_eq!(stats, 1, "federated binning rides on the statistics phase");
    assert_eq!(levels, vec![0, 1], "one task per level");
    assert!(tasks.iter().all(|t| Phase::of(t.kind.as_ref().expect("kind")).is_some()));
}

#[test]
fn a_leaf_floor_the_federations_rows_cannot_meet_fails_the_job_with_that_reason() {
    // 60 + 80 + 100 = 240 rows, and every leaf must describe 1000.
    let mut f = Federation::new(fixture::job(&gbdt_toml(2, "min_leaf_rows = 1000")), honest(3));
    f.run();
    let failure = f.failure();
    assert!(failure.contains("leaf floor") && failure.contains("min_leaf_rows = 1000"), "{failure}");
    assert!(f.store.rounds.is_empty(), "no degenerate model is committed");
}

#[test]
fn count_protection_refuses_root_histograms_over_a_set_differing_by_one_bank() {
    // A root level's per-bin row counts are the same for every tree: after a tree over banks
    // 1–4, root histograms over banks 1–3 would give bank 4's counts by subtraction, so the
    // honest banks refuse to unmask that sum and no tree is grown without bank 4.
    let run = |policy: PolicyConfig| {
        let banks = (1..=4).map(|i| HonestBank::new(&format!("bank{i}"), compute(i), policy.clone()).boxed()).collect();
        let mut f = Federation::new(fixture::job(&gbdt_toml(3, "max_depth = 2\nmin_leaf_rows = 10")), banks);
        f.run_until(|f| f.store.rounds.len() == 1);
        f.disconnect("bank4");
        f.run();
        f
    };
    let protected = run(PolicyConfig::default());
    assert_eq!(protected.store.rounds.len(), 1, "no tree grown over the smaller set");
    let reasons = protected.failed_attempt_reasons().join("\n");
    assert!(reasons.contains("tree level 0") && reasons.contains("bank1 refused: policy refusal"), "{reasons}");
    // Without count protection the same dropout only shrinks the federation.
    let tolerant = run(PolicyConfig { protect_counts: false, ..PolicyConfig::default() });
    tolerant.completed();
    assert_eq!(tolerant.store.rounds.len(), 3);
    assert_eq!(tolerant.store.rounds[2].participants.iter().filter(|p| p.status.contributed()).count(), 3);
}

#[test]
fn a_bank_dropping_mid_tree_is_left_out_of_the_later_levels_and_shown_as_dropped() {
    let policy = PolicyConfig { protect_counts: false, ..PolicyConfig::default() };
    let banks = (1..=4).map(|i| HonestBank::new(&format!("bank{i}"), compute(i), policy.clone()).boxed()).collect();
    let mut f = Federation::new(fixture::job(&gbdt_toml(2, "max_depth = 3\nmin_leaf_rows = 10")), banks);
    let at_level = |f: &Federation, depth: u32| {
        f.assigned.iter().any(|(bank, t)| {
            bank == "bank4"
                && matches!(&t.kind, Some(Kind::TreeLevel(l)) if serde_json::from_str::<confide_gbdt::GrowingTree>(&l.tree_json).is_ok_and(|g| g.depth == depth))
        })
    };
    f.run_until(|f| at_level(f, 1));
    f.disconnect("bank4");
    f.run();
    f.completed();
    let first = &f.store.rounds[0];
    let status = |bank: &str| first.participants.iter().find(|p| p.worker_id == bank).map(|p| p.status);
    assert_eq!(status("bank4"), Some(confide_core::outcome::ParticipantStatus::Dropped), "{:?}", first.participants);
    assert!(["bank1", "bank2", "bank3"].iter().all(|b| status(b).is_some_and(|s| s.contributed())), "{:?}", first.participants);
    // The levels after the dropout were asked of the three banks whose histograms were in the sum.
    let level2: Vec<&str> = f
        .assigned
        .iter()
        .filter(|(_, t)| t.round == 1 && matches!(&t.kind, Some(Kind::TreeLevel(l)) if l.tree_json.contains("\"depth\":2")))
        .map(|(b, _)| b.as_str())
        .collect();
    assert!(!level2.is_empty() && !level2.contains(&"bank4"), "{level2:?}");
    // Level 1 derived one child from the root's sum over four banks: without bank 4's part it
    // was asked again of the three, for every open node.
    let level1: Vec<confide_gbdt::GrowingTree> = f
        .assigned
        .iter()
        .filter(|(b, t)| b == "bank1" && t.round == 1)
        .filter_map(|(_, t)| match &t.kind {
            Some(Kind::TreeLevel(l)) => serde_json::from_str::<confide_gbdt::GrowingTree>(&l.tree_json).ok().filter(|g| g.depth == 1),
            _ => None,
        })
        .collect();
    assert_eq!(level1.len(), 2, "level 1 asked twice");
    assert!(level1[0].sent.len() < level1[0].frontier.len() && level1[1].sent == level1[1].frontier, "{level1:?}");
    assert_eq!(head(&f).trees.len(), 2);
}
