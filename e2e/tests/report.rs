//! `confide job report` on a real finished federation job: three bank workers train a small
//! churn MLP for three rounds, then the CLI writes `report.md` and `metrics.png`. The chart must
//! be a valid PNG of the documented size, and the markdown must show every round's federated
//! metric values exactly as `confide job get --json` reports them.

use std::time::Duration;

use confide_e2e::{Cluster, telco_job};

const BANKS: usize = 3;
const ROUNDS: u64 = 3;

/// A metric value as the report writes it (four decimals; integers such as `examples` as is).
fn as_reported(value: f64) -> String {
    if value.fract() == 0.0 { format!("{value:.0}") } else { format!("{value:.4}") }
}

#[test]
fn job_report_writes_a_chart_and_every_rounds_metrics() {
    let (cluster, _) = Cluster::telco_federation(BANKS, 5);
    let job = cluster.submit(&telco_job("report-e2e", "kind = \"mlp\"\nhidden = [8]", ROUNDS, ""));
    let done = cluster.wait_finished(&job, Duration::from_secs(180));
    assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());

    let dir = cluster.dir.path().join("report");
    let out = cluster.confide(&["job", "report", &job, "--output", dir.to_str().expect("utf-8")]);
    assert!(out.status.success(), "report: {}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("report.md") && printed.contains("metrics.png"), "{printed}");
    let csv = std::fs::read_to_string(dir.join("rounds.csv")).expect("rounds.csv exists");
    assert_eq!(csv.lines().count(), 1 + ROUNDS as usize, "a header and a line per round: {csv}");

    // The chart decodes as a PNG of the size confide-report draws.
    let file = std::fs::File::open(dir.join("metrics.png")).expect("metrics.png exists");
    let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().expect("a valid PNG header");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut pixels).expect("a valid PNG frame");
    assert_eq!((frame.width, frame.height), (confide_report::CHART_WIDTH, confide_report::CHART_HEIGHT));
    assert!(pixels.iter().any(|&b| b != 255), "the chart is not blank");

    // Every round's metrics, as `job get --json` has them, appear in that round's table row.
    let markdown = std::fs::read_to_string(dir.join("report.md")).expect("report.md exists");
    assert!(markdown.contains("| status | completed |"), "{markdown}");
    assert!(markdown.contains(&format!("| rounds | {ROUNDS} of {ROUNDS} completed |")), "{markdown}");
    assert!(markdown.contains("round budget reached"), "stop reason: {markdown}");
    let rounds = done["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), ROUNDS as usize);
    for r in rounds {
        let number = r["round"].as_u64().expect("round number");
        let row = markdown
            .lines()
            .find(|l| l.starts_with(&format!("| {number} | completed |")))
            .unwrap_or_else(|| panic!("no table row for round {number}:\n{markdown}"));
        assert!(row.contains(&format!("| {BANKS}/{BANKS} |")), "every bank took part in round {number}: {row}");
        let metrics = r["metrics"].as_object().expect("metrics");
        assert!(metrics.contains_key("auc") && metrics.contains_key("train_loss"), "{r:#}");
        for (name, value) in metrics.iter().filter(|(name, _)| name.as_str() != "contributors") {
            let shown = as_reported(value.as_f64().expect("number"));
            assert!(row.contains(&format!("| {shown} |")), "round {number} {name} = {shown} missing from: {row}");
        }
    }
    let last_auc = rounds.last().and_then(|r| r["metrics"]["auc"].as_f64()).expect("final auc");
    assert!(markdown.contains(&format!("| auc | {} |", as_reported(last_auc))), "final AUC in the summary: {markdown}");
}
