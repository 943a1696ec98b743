//! The data-science team's gRPC service: submit, list, get, watch and cancel jobs; fetch models.

use std::pin::Pin;
use std::sync::Arc;

use confide_proto::v1::{self as pb, admin_server::Admin};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::Shared;
use crate::jobs::{self, SubmitError, views};
use crate::service::auth;
use crate::service::federation::blob_stream;

/// The `Admin` service.
#[derive(Debug, Clone)]
pub struct AdminService {
    shared: Arc<Shared>,
}

impl AdminService {
    /// A service over the coordinator's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        auth::require_admin(&auth::caller(&self.shared, request)?)
    }

    /// Runs store work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
            .map_err(|e| Status::internal(e.to_string()))
    }

    /// A job's view, or `not_found`.
    async fn view(&self, id: &str) -> Result<pb::Job, Status> {
        let key = id.to_string();
        self.blocking(move |s| views::load_job(s, &key)).await?.ok_or_else(|| Status::not_found(format!("no job `{id}`")))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn submit_job(&self, request: Request<pb::SubmitJobRequest>) -> Result<Response<pb::SubmitJobResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let shared = Arc::clone(&self.shared);
        // Validation hashes the custom module and writes checkpoints: off the async threads.
        let submitted = tokio::task::spawn_blocking(move || {
            let files = jobs::ModelFiles { module: &r.model_module, parameters: &r.model_parameters };
            let key = Some(r.idempotency_key.as_str()).filter(|k| !k.is_empty());
            jobs::submit(&shared, &r.spec_toml, &r.schema_toml, files, r.catalogue_items, key)
        })
        .await
        .map_err(|e| Status::internal(format!("submission task failed: {e}")))?
        .map_err(|e| match e {
            SubmitError::Store(e) => Status::internal(e.to_string()),
            other => Status::invalid_argument(other.to_string()),
        })?;
        let reply = match submitted {
            jobs::Submitted::New { job_id, identical, privacy } => {
                tracing::info!(job = %job_id, identical_to = identical.as_ref().map(|e| e.job_id.as_str()), "job submitted");
                if let Some(plan) = &privacy {
                    tracing::info!(job = %job_id, "differential privacy: {plan}");
                }
                let (earlier, at) = identical.map(|e| (e.job_id, e.submitted_at)).unwrap_or_default();
                let privacy = privacy.map(|p| pb::PrivacyPlan {
                    mode: p.mode.name().into(),
                    epsilon: p.epsilon,
                    delta: p.delta,
                    noise_multiplier: p.noise_multiplier,
                    clip_norm: p.clip_norm,
                    planned_rows: p.planned_rows.unwrap_or_default(),
                    evaluation_epsilon: p.evaluation_epsilon,
                    summary: p.to_string(),
                });
                pb::SubmitJobResponse { job_id, identical_job_id: earlier, identical_submitted_at: at, replayed: false, privacy }
            }
            jobs::Submitted::Replayed(e) => {
                tracing::info!(job = %e.job_id, "repeated submission with the same idempotency key: nothing stored");
                pb::SubmitJobResponse {
                    job_id: e.job_id.clone(),
                    identical_job_id: e.job_id,
                    identical_submitted_at: e.submitted_at,
                    replayed: true,
                    privacy: None,
                }
            }
        };
        Ok(Response::new(reply))
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        self.authorize(&request)?;
        let jobs = self.blocking(views::load_jobs).await?;
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        self.authorize(&request)?;
        Ok(Response::new(self.view(&request.into_inner().job_id).await?))
    }

    type WatchJobStream = BoxStream<pb::JobEvent>;

    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        self.authorize(&request)?;
        let id = request.into_inner().job_id;
        // Subscribe before reading history so no event falls between the two.
        let mut live = self.shared.jobs.subscribe(&id);
        let view = self.view(&id).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut last_round = 0;
            for r in &view.rounds {
                last_round = r.round;
                let ev = pb::JobEvent { job_id: id.clone(), round: r.round, kind: Some(pb::job_event::Kind::RoundCompleted(r.clone())) };
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            let finished = |job: pb::Job| pb::JobEvent { job_id: job.id.clone(), round: job.rounds_completed, kind: Some(pb::job_event::Kind::JobFinished(job)) };
            let is_final = crate::store::JobStatus::parse(&view.status).is_final();
            let Some(live) = live.as_mut().filter(|_| !is_final) else {
                let _ = tx.send(Ok(finished(view))).await;
                return;
            };
            // A watcher that joins a waiting or stalled job learns why at once (and not twice,
            // should the change also be in flight on the live channel).
            let mut last_activity = None;
            if !view.activity.is_empty() {
                let activity = pb::JobActivity { activity: view.activity.clone(), reason: view.activity_reason.clone() };
                last_activity = Some(activity.clone());
                let ev = pb::JobEvent { job_id: id.clone(), round: view.rounds_completed, kind: Some(pb::job_event::Kind::ActivityChanged(activity)) };
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            loop {
                match live.recv().await {
                    Ok(ev) => {
                        if let Some(pb::job_event::Kind::RoundCompleted(r)) = &ev.kind
                            && r.round <= last_round {
                                continue;
                            }
                        if let Some(pb::job_event::Kind::ActivityChanged(a)) = &ev.kind {
                            if last_activity.as_ref() == Some(a) {
                                continue;
                            }
                            last_activity = Some(a.clone());
                        }
                        let end = matches!(ev.kind, Some(pb::job_event::Kind::JobFinished(_)));
                        if tx.send(Ok(ev)).await.is_err() || end {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "watcher fell behind");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn cancel_job(&self, request: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        self.authorize(&request)?;
        let id = request.into_inner().job_id;
        let key = id.clone();
        let job = self
            .blocking(move |s| jobs::cancel(s, &key)?.map(|j| views::job_view(s, &j)).transpose())
            .await?
            .ok_or_else(|| Status::not_found(format!("no job `{id}`")))?;
        Ok(Response::new(job))
    }

    type FetchModelStream = BoxStream<pb::BlobChunk>;

    async fn fetch_model(&self, request: Request<pb::FetchModelRequest>) -> Result<Response<Self::FetchModelStream>, Status> {
        self.authorize(&request)?;
        let job = self.view(&request.into_inner().job_id).await?;
        if job.model_hash.is_empty() {
            return Err(Status::failed_precondition("the job has no model yet"));
        }
        Ok(Response::new(blob_stream(&self.shared, &job.model_hash).await?))
    }

    async fn list_workers(&self, request: Request<pb::ListWorkersRequest>) -> Result<Response<pb::ListWorkersResponse>, Status> {
        self.authorize(&request)?;
        let records = self.shared.store.workers().map_err(|e| Status::internal(e.to_string()))?;
        let connected = self.shared.hub.connected();
        let workers = records
            .into_iter()
            .map(|w| {
                let live = connected.iter().find(|c| c.id == w.id);
                pb::WorkerInfo {
                    connected: live.is_some(),
                    datasets: live.map(|c| c.datasets.clone()).unwrap_or_default(),
                    unavailable_datasets: live.map(|c| c.unavailable.clone()).unwrap_or_default(),
                    capabilities: live.map(|c| c.capabilities.clone()),
                    last_seen: w.last_seen,
                    worker_id: w.id,
                }
            })
            .collect();
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }
}
