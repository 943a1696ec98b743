//! Bad input is refused with a clear error and loses nothing: malformed job files and
//! contributions that do not fit. Broken local data (a missing file or column, NaN, a
//! non-numeric value) never reaches a task: the worker refuses it at start and whenever the file
//! changes (`faults_bank_data.rs`).

use std::time::Duration;

use confide_e2e::{Cluster, partition_telco, telco, telco_job};
use confide_proto::v1::{
    self as pb, Contribution, PlainVector, RegisterRequest, SubmitChunk, SubmitHeader, SubscribeRequest, contribution::Body,
    federation_client::FederationClient, submit_chunk::Part, task::Kind,
};
use prost::Message;

#[test]
fn malformed_job_files_are_refused_naming_the_field() {
    let cluster = Cluster::start();
    let cases = [
        ("rounds = 8", "rounds = \"eight\"", "rounds"),
        ("learning_rate = 0.05", "learning_rate = -3.0", "training.learning_rate"),
        ("seed = 7", "seed = 7\nlearnig_rate = 1", "learnig_rate"),
        ("kind = \"logistic_regression\"", "kind = \"random_forest\"", "random_forest"),
    ];
    for (from, to, field) in cases {
        let text = telco_job("bad", "kind = \"logistic_regression\"", 8, "").replace(from, to);
        let path = cluster.dir.path().join("bad.toml");
        std::fs::write(&path, text).expect("write");
        let out = cluster.confide(&["job", "submit", path.to_str().expect("utf-8")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "bad job file must exit 2: {err}");
        assert!(err.contains(field) && err.contains("bad.toml"), "error must name the file and `{field}`: {err}");
    }
    let missing_schema = telco_job("bad", "kind = \"logistic_regression\"", 8, "").replace("schema = ", "# schema = ");
    std::fs::write(cluster.dir.path().join("bad.toml"), missing_schema).expect("write");
    let out = cluster.confide(&["job", "submit", cluster.dir.path().join("bad.toml").to_str().expect("utf-8")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("schema"));
    // Nothing was stored.
    let list = cluster.confide(&["job", "list"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 1, "only the header line");
}

async fn submit_raw(client: &mut FederationClient<tonic::transport::Channel>, header: SubmitHeader, payload: Vec<u8>) -> Result<pb::SubmitAck, tonic::Status> {
    let mut chunks = vec![SubmitChunk { part: Some(Part::Header(header)) }];
    chunks.extend(payload.chunks(1 << 20).map(|c| SubmitChunk { part: Some(Part::Data(c.to_vec())) }));
    client.submit(tokio_stream::iter(chunks)).await.map(|r| r.into_inner())
}

fn header_for(task: &pb::Task, worker: &str, payload: &[u8]) -> SubmitHeader {
    SubmitHeader {
        worker_id: worker.into(),
        task_id: task.task_id.clone(),
        job_id: task.job_id.clone(),
        round: task.round,
        total_bytes: payload.len() as u64,
        sha256: confide_core::sha256_hex(payload),
        audit_head: String::new(),
        dp_spent_epsilon: 0.0,
    }
}

/// A hand-driven participant sends contributions of the wrong shape, with NaN, for the wrong
/// round, oversized, and before registering: each is refused with a clear status, and the job
/// still completes with the three honest workers (plain aggregation, which they allow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_contributions_are_refused_and_the_round_survives() {
    let mut cluster = Cluster::start();
    let partition = partition_telco(&cluster.dir.path().join("partition"), 3, 9);
    // Plain vectors leave a bank only by its own choice (a debugging federation). Three honest
    // banks: each still refuses a round of fewer than its floor of three, in plain mode too.
    for bank in ["bank1", "bank2", "bank3"] {
        cluster.add_telco_worker_with_config(bank, &partition, "[policy]\nallow_plain_aggregation = true\n", &[]);
    }
    cluster.issue("institution", "mallory", &[]);
    let mut client = FederationClient::new(cluster.channel_as("mallory").await);

    // Unregistered senders are refused outright.
    let payload = Contribution { body: Some(Body::Plain(PlainVector { values: vec![1.0] })) }.encode_to_vec();
    let fake = pb::Task { task_id: "t".into(), job_id: "j".into(), round: 1, kind: None, terms: None };
    let err = submit_raw(&mut client, header_for(&fake, "mallory", &payload), payload.clone()).await.expect_err("unknown worker");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");

    let (_, schema) = telco();
    let fingerprint = confide_datasets::DatasetSchema::from_file(&schema).expect("schema").fingerprint();
    client
        .register(RegisterRequest {
            institution_id: "mallory".into(),
            datasets: vec![pb::DatasetOffer { name: "telco_churn".into(), schema_fingerprint: fingerprint }],
            capabilities: None,
            signing_public_key: vec![],
            min_participants: 3,
            unavailable_datasets: vec![],
        })
        .await
        .expect("register");
    let mut tasks = client.subscribe(SubscribeRequest { worker_id: "mallory".into() }).await.expect("subscribe").into_inner();
    // Every honest bank is connected before the job starts (each refuses a round of fewer than
    // three institutions, plain mode included).
    let waiting = tokio::task::spawn_blocking(move || {
        cluster.wait_workers(4, Duration::from_secs(60));
        cluster
    });
    let cluster = waiting.await.expect("join");

    let job_toml = telco_job("hostile", "kind = \"logistic_regression\"", 2, "insecure_plain_aggregation = true")
        .replace("[training]", "[selection]\nmin_workers = 2\nround_deadline_secs = 5\n\n[training]");
    let job = cluster.submit(&job_toml);

    let task = tasks.message().await.expect("stream").expect("a task");
    let Some(Kind::Stats(stats)) = &task.kind else { panic!("first task is the statistics phase: {task:?}") };
    let len = stats.aggregation.as_ref().expect("setup").vector_len as usize;

    let send = |values: Vec<f64>| Contribution { body: Some(Body::Plain(PlainVector { values })) }.encode_to_vec();
    // Wrong shape.
    let p = send(vec![1.0; len + 1]);
    let err = submit_raw(&mut client, header_for(&task, "mallory", &p), p).await.expect_err("shape");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains(&format!("needs {len}")), "{err}");
    // NaN.
    let mut v = vec![1.0; len];
    v[3] = f64::NAN;
    let p = send(v);
    let err = submit_raw(&mut client, header_for(&task, "mallory", &p), p).await.expect_err("NaN");
    assert!(err.message().contains("not finite"), "{err}");
    // Wrong round.
    let p = send(vec![1.0; len]);
    let mut h = header_for(&task, "mallory", &p);
    h.round += 7;
    let err = submit_raw(&mut client, h, p.clone()).await.expect_err("round");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    // Someone else's task id.
    let mut h = header_for(&task, "mallory", &p);
    h.task_id = "not-a-task".into();
    assert_eq!(submit_raw(&mut client, h, p.clone()).await.expect_err("task").code(), tonic::Code::FailedPrecondition);
    // Oversized announcement.
    let mut h = header_for(&task, "mallory", &p);
    h.total_bytes = 1 << 40;
    assert_eq!(submit_raw(&mut client, h, p.clone()).await.expect_err("size").code(), tonic::Code::ResourceExhausted);
    // A single message over the gRPC limit.
    let big = SubmitChunk { part: Some(Part::Data(vec![0u8; 5 << 20])) };
    let err = client
        .submit(tokio_stream::iter(vec![SubmitChunk { part: Some(Part::Header(header_for(&task, "mallory", &p))) }, big]))
        .await
        .expect_err("oversized message");
    assert!(matches!(err.code(), tonic::Code::ResourceExhausted | tonic::Code::OutOfRange | tonic::Code::Internal), "{err}");
    // A reported privacy spend that is not a number, or negative.
    for bad in [f64::NAN, f64::INFINITY, -1.0] {
        let mut h = header_for(&task, "mallory", &p);
        h.dp_spent_epsilon = bad;
        let err = submit_raw(&mut client, h, p.clone()).await.expect_err("dp_spent_epsilon");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}: {err}");
        assert!(err.message().contains("dp_spent_epsilon"), "{err}");
    }
    // Announced size and content disagree.
    let mut h = header_for(&task, "mallory", &p);
    h.sha256 = "0".repeat(64);
    assert_eq!(submit_raw(&mut client, h, p.clone()).await.expect_err("hash").code(), tonic::Code::DataLoss);

    // Mallory then goes silent; the honest banks carry the job through the deadline.
    drop(tasks);
    let done = tokio::task::spawn_blocking(move || {
        let done = cluster.wait_finished(&job, Duration::from_secs(120));
        (done, cluster.logs())
    })
    .await
    .expect("join");
    assert_eq!(done.0["status"], "completed", "{:#}\n{}", done.0, done.1);
}
