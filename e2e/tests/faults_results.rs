//! Wrong results are not reported as success, over real processes: a learning rate of 1e30
//! makes training diverge, and the job fails saying so with a hint, instead of completing
//! with an AUC near 0.5.

use std::time::Duration;

use confide_e2e::{Cluster, telco_job};

#[test]
fn a_learning_rate_that_makes_training_diverge_fails_the_job_with_a_hint() {
    let (cluster, _) = Cluster::telco_federation(3, 64);
    cluster.wait_workers(3, Duration::from_secs(60));
    let job = cluster.submit(&telco_job("diverging", "kind = \"logistic_regression\"", 5, "").replace("learning_rate = 0.05", "learning_rate = 1e30"));
    let done = cluster.wait_finished(&job, Duration::from_secs(180));
    assert_eq!(done["status"], "failed", "{done:#}\n{}", cluster.logs());
    let error = done["error"].as_str().unwrap_or_default();
    // The banks' training loss sits near 30 from the first round (saturated log loss).
    assert!(error.starts_with("diverged at round 1: train loss "), "{error}");
    assert!(error.ends_with(" (a coin flip scores 0.6931); lower the learning rate"), "{error}");
    assert_eq!(done["rounds_completed"], 0, "the diverged round is not committed: {done:#}");
    let get = String::from_utf8_lossy(&cluster.confide(&["job", "get", &job]).stdout).to_string();
    assert!(get.contains(&format!("error    {error}")), "{get}");
}
