//! Recommendation comparison on MovieLens latest-small: centralised training vs federated
//! training across K institutions (users split IID, and non-IID by activity) vs each
//! institution alone — same model, same hyper-parameters, same budget (R rounds of one local
//! epoch = R epochs centrally), same per-user 80/20 hold-out.
//!
//! Every party trains with the worker's own code ([`confide_worker::ml::recsys`]); federated
//! rounds aggregate `Σ n·Δ / Σ n` with the coordinator's [`ServerOptimizer`] (FedAvg), in
//! process and in plain sums: secure aggregation yields the same sum to fixed-point precision
//! (the e2e tests run it through the real coordinator). Evaluation sums RMSE/HR@10/NDCG@10
//! contributions exactly as the coordinator does.
//!
//! `cargo run --release -p confide-benches --bin recsys_compare -- [--rounds R] [--institutions K]
//! [--model mf|two_tower|both] [--dim D] [--out DIR]`
//! Writes `recsys_comparison.{csv,md}`, `recsys_per_institution.csv` and one
//! `recsys_rmse_per_round_<model>.png` per model to `benches/results/`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use confide_core::job::{Feedback, LocalOptimizer, LocalTraining, StrategySpec};
use confide_core::metrics::RecommendationEval;
use confide_core::model::{ModelParams, ModelSpec, rec_names};
use confide_core::strategy::ServerOptimizer;
use confide_datasets::partition::{Holdout, PartitionConfig, Scheme, plan_ratings_partition};
use confide_datasets::{Catalogue, DatasetSchema, Ratings, RecommendationPrep, RecommendationSpec, load_ratings};
use confide_report::{Series, Table, line_chart_png};
use confide_worker::ml::Device;
use confide_worker::ml::recsys::{RecData, RecTrainConfig, UserParams, evaluate_recommender, train_recommender};

type BoxError = Box<dyn std::error::Error>;

#[derive(Debug, Clone)]
struct Settings {
    rounds: usize,
    institutions: usize,
    dim: usize,
    models: Vec<ModelSpec>,
    out: PathBuf,
    learning_rate: f64,
    batch_size: usize,
    l2: f64,
    seed: u64,
}

fn parse_args() -> Result<Settings, BoxError> {
    let mut s = Settings {
        rounds: 20,
        institutions: 3,
        dim: 32,
        models: Vec::new(),
        out: PathBuf::from("benches/results"),
        learning_rate: 0.005,
        batch_size: 256,
        l2: 0.05,
        seed: 42,
    };
    let mut model = "both".to_string();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--rounds" => s.rounds = value.parse()?,
            "--institutions" => s.institutions = value.parse()?,
            "--dim" => s.dim = value.parse()?,
            "--model" => model = value.clone(),
            "--out" => s.out = PathBuf::from(value),
            "--lr" => s.learning_rate = value.parse()?,
            "--batch" => s.batch_size = value.parse()?,
            "--l2" => s.l2 = value.parse()?,
            "--seed" => s.seed = value.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let mf = ModelSpec::MatrixFactorization { dim: s.dim };
    let tt = ModelSpec::TwoTower { dim: s.dim, hidden: vec![64, s.dim] };
    s.models = match model.as_str() {
        "mf" => vec![mf],
        "two_tower" => vec![tt],
        "both" => vec![mf, tt],
        other => return Err(format!("unknown --model {other} (mf, two_tower, both)").into()),
    };
    Ok(s)
}

/// One institution's view: its user side and its indexed train/test ratings.
struct Party {
    users: UserParams,
    train: RecData,
    test: RecData,
}

/// The ratings of `rows`, users re-indexed in first-seen order.
fn subset(r: &Ratings, rows: &[usize]) -> Ratings {
    let mut out = Ratings {
        source: r.source.clone(),
        user_ids: Vec::new(),
        user: Vec::new(),
        item: Vec::new(),
        rating: Vec::new(),
        timestamp: Vec::new(),
        line: Vec::new(),
    };
    let mut map = std::collections::HashMap::new();
    for &row in rows {
        let u = r.user[row] as usize;
        let next = map.len() as u32;
        let local = *map.entry(u).or_insert_with(|| {
            out.user_ids.push(r.user_ids[u].clone());
            next
        });
        out.user.push(local);
        out.item.push(r.item[row].clone());
        out.rating.push(r.rating[row]);
        out.timestamp.push(r.timestamp[row]);
        out.line.push(r.line[row]);
    }
    out
}

struct Data {
    ratings: Ratings,
    catalogue: Catalogue,
    spec: RecommendationSpec,
}

impl Data {
    fn party(&self, train: &[usize], test: &[usize], dim: usize, seed: u64) -> Result<Party, BoxError> {
        let mut users = UserParams::new(dim);
        let train = RecData::index(&subset(&self.ratings, train), &self.catalogue, &self.spec, &mut users, seed)?;
        let test = RecData::index(&subset(&self.ratings, test), &self.catalogue, &self.spec, &mut users, seed)?;
        Ok(Party { users, train, test })
    }
}

/// Per-round pooled metrics of one setting.
struct Run {
    label: String,
    per_round: Vec<std::collections::BTreeMap<String, f64>>,
    /// Final RMSE on each institution's own test set.
    per_party_rmse: Vec<f64>,
    seconds: f64,
}

impl Run {
    fn last(&self, metric: &str) -> f64 {
        self.per_round.last().and_then(|m| m.get(metric)).copied().unwrap_or(f64::NAN)
    }

    /// The lowest RMSE over the rounds and its round.
    fn best_rmse(&self) -> (f64, usize) {
        self.per_round
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.get("rmse").map(|&v| (v, i + 1)))
            .fold((f64::INFINITY, 0), |best, x| if x.0 < best.0 { x } else { best })
    }
}

struct Ctx<'a> {
    settings: &'a Settings,
    prep: RecommendationPrep,
    range: (f64, f64),
}

impl Ctx<'_> {
    fn cfg(&self, round: usize, party: usize) -> RecTrainConfig {
        let local = LocalTraining {
            epochs: 1,
            batch_size: self.settings.batch_size,
            learning_rate: self.settings.learning_rate,
            optimizer: LocalOptimizer::Adam,
            prox_mu: 0.0,
            pos_weight: None,
            seed: self.settings.seed ^ (round as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (party as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9),
            l2: self.settings.l2,
            feedback: Feedback::Explicit,
            negatives: 4,
        };
        RecTrainConfig::from(&local)
    }

    fn init(&self, spec: &ModelSpec) -> ModelParams {
        let mut g = ModelParams::init(spec.layout(self.prep.items.len()), self.settings.seed);
        if let Some(b) = g.tensor_mut(rec_names::GLOBAL_BIAS) {
            b[0] = self.prep.mean_rating as f32;
        }
        g
    }

    /// Pooled evaluation sums (as the coordinator adds them) and each party's own RMSE.
    fn eval(&self, spec: &ModelSpec, models: &[&ModelParams], parties: &[Party]) -> Result<(RecommendationEval, Vec<f64>), BoxError> {
        let mut sum = vec![0.0; confide_core::metrics::RECOMMENDATION_EVAL_LEN];
        let mut own = Vec::new();
        for (p, g) in parties.iter().zip(models.iter().cycle()) {
            let e = evaluate_recommender(spec, g, &p.users, &p.train, &p.test, &self.prep, self.range, Device::Cpu)?;
            own.push(e.metrics(self.prep.top_k).get("rmse").copied().unwrap_or(f64::NAN));
            sum.iter_mut().zip(e.to_vec()).for_each(|(s, v)| *s += v);
        }
        Ok((RecommendationEval::from_slice(&sum).ok_or("bad evaluation vector")?, own))
    }

    /// FedAvg across `parties` (one party = centralised training).
    fn federated(&self, label: &str, spec: &ModelSpec, mut parties: Vec<Party>) -> Result<Run, BoxError> {
        let started = Instant::now();
        let mut global = self.init(spec);
        let mut server = ServerOptimizer::new(StrategySpec::default(), global.values.len());
        let mut per_round = Vec::new();
        let mut per_party_rmse = Vec::new();
        for round in 1..=self.settings.rounds {
            let mut update = vec![0.0f64; global.values.len()];
            let mut weight = 0.0;
            for (k, p) in parties.iter_mut().enumerate() {
                let out = train_recommender(spec, &global, &mut p.users, &p.train, &self.cfg(round, k), Device::Cpu)?;
                let n = out.samples as f64;
                for ((u, w), g) in update.iter_mut().zip(&out.shared.values).zip(&global.values) {
                    *u += n * (f64::from(*w) - f64::from(*g));
                }
                weight += n;
            }
            server.step(&mut global, &update, weight)?;
            let (pooled, own) = self.eval(spec, &[&global], &parties)?;
            per_round.push(pooled.metrics(self.prep.top_k));
            per_party_rmse = own;
        }
        Ok(Run { label: label.into(), per_round, per_party_rmse, seconds: started.elapsed().as_secs_f64() })
    }

    /// Every party trains its own model on its own data; metrics pool their test sums.
    fn local_only(&self, label: &str, spec: &ModelSpec, mut parties: Vec<Party>) -> Result<Run, BoxError> {
        let started = Instant::now();
        let mut models: Vec<ModelParams> = parties.iter().map(|_| self.init(spec)).collect();
        let mut per_round = Vec::new();
        let mut per_party_rmse = Vec::new();
        for round in 1..=self.settings.rounds {
            for (k, (p, g)) in parties.iter_mut().zip(models.iter_mut()).enumerate() {
                *g = train_recommender(spec, g, &mut p.users, &p.train, &self.cfg(round, k), Device::Cpu)?.shared;
            }
            let refs: Vec<&ModelParams> = models.iter().collect();
            let (pooled, own) = self.eval(spec, &refs, &parties)?;
            per_round.push(pooled.metrics(self.prep.top_k));
            per_party_rmse = own;
        }
        Ok(Run { label: label.into(), per_round, per_party_rmse, seconds: started.elapsed().as_secs_f64() })
    }
}

fn main() -> Result<(), BoxError> {
    let settings = parse_args()?;
    confide_worker::ml::set_cpu_threads(1);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = root.join("../shared/datasets/movielens_latest_small");
    let schema = DatasetSchema::from_file(root.join("datasets/schemas/movielens_latest_small.toml"))?;
    let spec = schema.recommendation.clone().ok_or("not a ratings schema")?;
    let ratings = load_ratings(shared.join("ratings.csv"), &schema)?;
    let catalogue = Catalogue::from_csv(shared.join("movies.csv"), &spec.item)?;
    let data = Data { ratings, catalogue, spec };
    let user_of: Vec<usize> = data.ratings.user.iter().map(|&u| u as usize).collect();
    let plan = |scheme: Scheme, k: usize| {
        let cfg = PartitionConfig { institutions: Some(k), scheme, test_fraction: 0.2, seed: settings.seed, min_rows: 1, holdout: Holdout::Random };
        plan_ratings_partition(&user_of, &data.ratings.timestamp, &cfg)
    };
    let k = settings.institutions;
    let iid = plan(Scheme::Users, k)?;
    let skew = plan(Scheme::UsersByActivity, k)?;
    let all = plan(Scheme::Users, 1)?;
    let train_all = &all[0].train;
    let mean = train_all.iter().map(|&r| f64::from(data.ratings.rating[r])).sum::<f64>() / train_all.len() as f64;
    let prep = RecommendationPrep {
        mean_rating: mean,
        rating_std: 0.0,
        users: data.ratings.user_ids.len() as u64,
        items: data.catalogue.ids().to_vec(),
        relevant_from: data.spec.relevant_from,
        ranking_negatives: 99,
        top_k: 10,
        eval_seed: settings.seed,
        feedback: Feedback::Explicit,
    };
    let ctx = Ctx { settings: &settings, prep, range: (data.spec.min_rating, data.spec.max_rating) };
    println!(
        "MovieLens latest-small: {} ratings, {} users, {} catalogue items; {} train / {} test; mean rating {mean:.3}",
        data.ratings.len(),
        data.ratings.user_ids.len(),
        data.catalogue.len(),
        train_all.len(),
        all[0].test.len()
    );
    let bank_sizes = |p: &[confide_datasets::partition::InstitutionRows]| {
        p.iter().map(|i| format!("{}", i.train.len() + i.test.len())).collect::<Vec<_>>().join("/")
    };
    println!("ratings per bank: IID {} · by activity {}", bank_sizes(&iid), bank_sizes(&skew));

    // The global-mean baseline (predict μ for everyone).
    let mut table = Table::new([
        "model", "setting", "institutions", "rounds", "RMSE", "ΔRMSE vs central", "best RMSE (round)", "MAE", "HR@10", "NDCG@10", "seconds",
    ]);
    let mut per_bank = Table::new(["model", "split", "institution", "test ratings", "local-only RMSE", "federated RMSE", "federated − local"]);
    let mut baseline = RecommendationEval::default();
    for &r in &all[0].test {
        baseline.add_rating(mean, f64::from(data.ratings.rating[r]));
    }
    let base_rmse = baseline.metrics(10)["rmse"];
    table.push_row(["global mean", "predict μ", "-", "-", &format!("{base_rmse:.4}"), "", "", &format!("{:.4}", baseline.metrics(10)["mae"]), "", "", ""])?;

    std::fs::create_dir_all(&settings.out)?;
    let mut charts = Vec::new();
    for spec in &settings.models {
        let mut series = Vec::new();
        let parties = |p: &[confide_datasets::partition::InstitutionRows]| -> Result<Vec<Party>, BoxError> {
            p.iter().map(|i| data.party(&i.train, &i.test, settings.dim, settings.seed)).collect()
        };
        let runs = vec![
            ctx.federated("centralised", spec, parties(&all)?)?,
            ctx.federated("federated IID", spec, parties(&iid)?)?,
            ctx.federated("federated non-IID (activity)", spec, parties(&skew)?)?,
            ctx.local_only("local-only IID (pooled)", spec, parties(&iid)?)?,
            ctx.local_only("local-only non-IID (pooled)", spec, parties(&skew)?)?,
        ];
        let central = runs[0].last("rmse");
        for run in &runs {
            let inst = if run.label == "centralised" { "1".to_string() } else { k.to_string() };
            table.push_row([
                spec.label(),
                run.label.clone(),
                inst,
                settings.rounds.to_string(),
                format!("{:.4}", run.last("rmse")),
                if run.label == "centralised" { String::new() } else { format!("{:+.4}", run.last("rmse") - central) },
                { let (v, r) = run.best_rmse(); format!("{v:.4} ({r})") },
                format!("{:.4}", run.last("mae")),
                format!("{:.4}", run.last("hr@10")),
                format!("{:.4}", run.last("ndcg@10")),
                format!("{:.1}", run.seconds),
            ])?;
            eprintln!("{} {}: RMSE {:.4} HR@10 {:.4} ({:.1} s)", spec.label(), run.label, run.last("rmse"), run.last("hr@10"), run.seconds);
            let points = run.per_round.iter().enumerate().filter_map(|(i, m)| m.get("rmse").map(|&v| ((i + 1) as f64, v))).collect();
            series.push(Series::new(run.label.clone(), points));
        }
        charts.push((spec.clone(), series));
        // Each institution on its own test set: its own model vs the federated one.
        for (split, fed, alone, plan) in [("IID", &runs[1], &runs[3], &iid), ("non-IID (activity)", &runs[2], &runs[4], &skew)] {
            for (i, inst) in plan.iter().enumerate() {
                let (l, f) = (alone.per_party_rmse[i], fed.per_party_rmse[i]);
                per_bank.push_row([spec.label(), split.into(), inst.name.clone(), inst.test.len().to_string(), format!("{l:.4}"), format!("{f:.4}"), format!("{:+.4}", f - l)])?;
            }
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let (l, f) = (mean(&alone.per_party_rmse), mean(&fed.per_party_rmse));
            per_bank.push_row([spec.label(), split.into(), "average of institutions".into(), String::new(), format!("{l:.4}"), format!("{f:.4}"), format!("{:+.4}", f - l)])?;
        }
    }
    println!("{}", table.to_terminal());
    println!("{}", per_bank.to_terminal());
    table.write_csv(&settings.out.join("recsys_comparison.csv"))?;
    per_bank.write_csv(&settings.out.join("recsys_per_institution.csv"))?;
    let md = format!(
        "# Recommendation: centralised vs federated vs local-only (MovieLens latest-small)\n\n\
         Same per-user 80/20 hold-out (seed {seed}) for every setting; {k} institutions; {r} rounds × 1 local epoch \
         (centralised: {r} epochs); Adam lr {lr}, batch {b}, L2 {l2}, dim {d}; FedAvg. HR@10/NDCG@10: each held-out rating ≥ 4 \
         ranked against 99 sampled items its user has not rated. Pooled = each institution's own model on its own test set, \
         sums added across institutions. Best RMSE = lowest over the rounds (the table's RMSE is the last round's).\n\n{}\n\n\
         ## Each institution on its own test set\n\n{}\n\nGenerated by `cargo run --release -p confide-benches --bin recsys_compare`.\n",
        table.to_markdown(),
        per_bank.to_markdown(),
        seed = settings.seed,
        r = settings.rounds,
        lr = settings.learning_rate,
        b = settings.batch_size,
        l2 = settings.l2,
        d = settings.dim,
    );
    std::fs::write(settings.out.join("recsys_comparison.md"), md)?;
    for (spec, series) in &charts {
        line_chart_png(
            &settings.out.join(format!("recsys_rmse_per_round_{}.png", spec.kind_name())),
            &format!("MovieLens latest-small, {}: test RMSE per round", spec.label()),
            "round",
            "RMSE",
            series,
        )?;
    }
    println!("wrote {}", settings.out.display());
    Ok(())
}
