//! The worker-facing gRPC service: registration, the task stream, model download and chunked
//! contribution upload. Every field from the network is validated here before it reaches the
//! hub or a job runner; nothing from a request is unwrapped.

use std::pin::Pin;
use std::sync::Arc;

use confide_proto::v1::{
    self as pb, Contribution, DownloadModelRequest, RegisterRequest, RegisterResponse, SubmitAck, SubmitChunk,
    SubscribeRequest, Task, federation_server::Federation, submit_chunk::Part,
};
use prost::Message;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::Shared;
use crate::hub::{AlreadyConnected, Inbound, WorkerInfo};
use crate::service::auth::{self, Caller};

/// Protocol version spoken by this coordinator.
/// Version 2: participant statuses and failure kinds are protobuf enums.
pub const PROTOCOL_VERSION: u32 = 2;

/// The `Federation` service.
#[derive(Debug, Clone)]
pub struct FederationService {
    shared: Arc<Shared>,
}

impl FederationService {
    /// A service over the coordinator's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// Checks an institution id: 1–128 characters of `[A-Za-z0-9._-]`.
pub fn validate_id(what: &str, id: &str) -> Result<(), Status> {
    let ok = !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(Status::invalid_argument(format!("{what} must be 1-128 characters of [A-Za-z0-9._-], got {id:?}"))) }
}

/// Refuses a second process with a connected identity (logged once per live stream).
fn duplicate(e: AlreadyConnected) -> Status {
    if e.first {
        tracing::error!(worker = %e.worker, since = %e.since, "refused a second connection for an identity that is already connected: two processes share one certificate");
    } else {
        tracing::debug!(worker = %e.worker, "duplicate identity refused again");
    }
    Status::already_exists(e.to_string())
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Streams a checkpoint in chunks, verifying its hash first. The file is read and hashed off
/// the async threads; the chunks are cut from that one shared copy as the stream is polled,
/// so a download never holds the model twice.
pub async fn blob_stream(shared: &Arc<Shared>, hash: &str) -> Result<BoxStream<pb::BlobChunk>, Status> {
    let (store, key) = (Arc::clone(shared), hash.to_string());
    let read = tokio::task::spawn_blocking(move || store.store.checkpoints().get_shared(&key))
        .await
        .map_err(|e| Status::internal(format!("checkpoint read failed: {e}")))?;
    let bytes = read.map_err(|e| match e {
        crate::store::StoreError::BadHash(_) => Status::invalid_argument(e.to_string()),
        crate::store::StoreError::Io { .. } => Status::not_found(format!("no checkpoint {hash}")),
        other => Status::data_loss(other.to_string()),
    })?;
    let total = bytes.len() as u64;
    shared.metrics.bytes_out.inc_by(total);
    let chunks = bytes.len().div_ceil(confide_proto::CHUNK_SIZE);
    Ok(Box::pin(tokio_stream::iter((0..chunks).map(move |i| {
        let start = i * confide_proto::CHUNK_SIZE;
        let end = (start + confide_proto::CHUNK_SIZE).min(bytes.len());
        Ok(pb::BlobChunk { data: bytes[start..end].to_vec(), offset: start as u64, total_size: total })
    }))))
}

#[tonic::async_trait]
impl Federation for FederationService {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        let caller = auth::caller(&self.shared, &request)?;
        let remote = request.remote_addr();
        let mut r = request.into_inner();
        validate_id("institution_id", &r.institution_id)?;
        auth::require_institution(&caller, &r.institution_id)?;
        if let Caller::Verified(peer) = &caller {
            // The certificate's key is the institution's signing key: a claimed one must match.
            let key = peer.ed25519.ok_or_else(|| Status::permission_denied("institution certificates must carry an Ed25519 key"))?;
            if !r.signing_public_key.is_empty() && r.signing_public_key != key {
                return Err(Status::invalid_argument("signing_public_key differs from the key in the client certificate"));
            }
            r.signing_public_key = key.to_vec();
        }
        for d in &r.datasets {
            if d.name.is_empty() || d.name.len() > 256 || d.schema_fingerprint.len() != 64 {
                return Err(Status::invalid_argument(format!("dataset offer {:?} needs a name and a 64-hex-digit schema fingerprint", d.name)));
            }
        }
        if let Some(u) = r.unavailable_datasets.iter().find(|u| u.name.is_empty() || u.name.len() > 256) {
            return Err(Status::invalid_argument(format!("unavailable dataset {:?} needs a name of 1-256 bytes", u.name)));
        }
        if !r.signing_public_key.is_empty() && r.signing_public_key.len() != 32 {
            return Err(Status::invalid_argument("signing_public_key must be 32 bytes (Ed25519)"));
        }
        // Before anything is recorded: a duplicate must not overwrite the live worker's offer.
        self.shared.hub.ensure_not_connected(&r.institution_id, remote).map_err(duplicate)?;
        let capabilities = r.capabilities.unwrap_or_default();
        let info_json = serde_json::json!({
            "datasets": r.datasets.iter().map(|d| serde_json::json!({"name": d.name, "schema_fingerprint": d.schema_fingerprint})).collect::<Vec<_>>(),
            "cuda": capabilities.cuda,
            "cuda_devices": capabilities.cuda_devices,
            "worker_version": capabilities.worker_version,
            "min_participants": r.min_participants,
            "unavailable_datasets": r.unavailable_datasets.iter().map(|u| u.display()).collect::<Vec<_>>(),
        });
        let (shared, id) = (Arc::clone(&self.shared), r.institution_id.clone());
        tokio::task::spawn_blocking(move || shared.store.upsert_worker(&id, &info_json.to_string()))
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
            .map_err(|e| Status::internal(e.to_string()))?;
        self.shared.hub.register(WorkerInfo {
            id: r.institution_id.clone(),
            datasets: r.datasets,
            unavailable: r.unavailable_datasets,
            capabilities,
            signing_public_key: r.signing_public_key,
            min_participants: r.min_participants,
            certificate: match &caller {
                Caller::Verified(peer) => peer.der.clone(),
                Caller::Insecure => Vec::new(),
            },
        });
        tracing::info!(worker = %r.institution_id, "worker registered");
        Ok(Response::new(RegisterResponse { worker_id: r.institution_id, protocol_version: PROTOCOL_VERSION }))
    }

    type SubscribeStream = ReceiverStream<Result<Task, Status>>;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = auth::caller(&self.shared, &request)?;
        let remote = request.remote_addr();
        let worker_id = request.into_inner().worker_id;
        validate_id("worker_id", &worker_id)?;
        auth::require_institution(&caller, &worker_id)?;
        if !self.shared.hub.is_registered(&worker_id) {
            return Err(Status::unauthenticated(format!("unknown worker `{worker_id}`: register first")));
        }
        let (rx, generation) = self.shared.hub.connect(&worker_id, remote).map_err(duplicate)?;
        tracing::info!(worker = %worker_id, generation, "worker connected");
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type DownloadModelStream = BoxStream<pb::BlobChunk>;

    async fn download_model(
        &self,
        request: Request<DownloadModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let caller = auth::caller(&self.shared, &request)?;
        let r = request.into_inner();
        auth::require_institution(&caller, &r.worker_id)?;
        if !self.shared.hub.is_registered(&r.worker_id) {
            return Err(Status::unauthenticated(format!("unknown worker `{}`: register first", r.worker_id)));
        }
        // A bank gets only what its own tasks name: never another job's model, the server
        // optimizer's state, or a module of a job it is not in.
        if !self.shared.hub.may_download(&r.worker_id, &r.hash) {
            tracing::warn!(worker = %r.worker_id, hash = %r.hash, "download refused: no task sent to this worker names the blob");
            return Err(Status::permission_denied(format!("blob {} was not named in a task sent to `{}`", r.hash, r.worker_id)));
        }
        Ok(Response::new(blob_stream(&self.shared, &r.hash).await?))
    }

    async fn submit(&self, request: Request<Streaming<SubmitChunk>>) -> Result<Response<SubmitAck>, Status> {
        let caller = auth::caller(&self.shared, &request)?;
        let mut stream = request.into_inner();
        let header = match stream.message().await?.and_then(|c| c.part) {
            Some(Part::Header(h)) => h,
            Some(Part::Data(_)) => return Err(Status::invalid_argument("the first chunk of a submission must be its header")),
            None => return Err(Status::invalid_argument("empty submission")),
        };
        auth::require_institution(&caller, &header.worker_id)?;
        if !self.shared.hub.is_registered(&header.worker_id) {
            return Err(Status::unauthenticated(format!("unknown worker `{}`: register first", header.worker_id)));
        }
        if !(header.audit_head.is_empty()
            || (header.audit_head.len() == 64 && header.audit_head.bytes().all(|b| b.is_ascii_hexdigit())))
        {
            return Err(Status::invalid_argument("audit_head must be empty or a SHA-256 (64 hexadecimal digits)"));
        }
        if !(header.dp_spent_epsilon.is_finite() && header.dp_spent_epsilon >= 0.0) {
            return Err(Status::invalid_argument("dp_spent_epsilon must be a finite number >= 0"));
        }
        let limit = self.shared.config.max_contribution_bytes;
        if header.total_bytes > limit {
            return Err(Status::resource_exhausted(format!(
                "submission of {} bytes exceeds the limit of {limit} bytes",
                header.total_bytes
            )));
        }
        let inbox = self
            .shared
            .hub
            .route(&header.worker_id, &header.task_id, &header.job_id, header.round)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let total = header.total_bytes as usize;
        let mut buf = Vec::with_capacity(total.min(64 << 20));
        while let Some(chunk) = stream.message().await? {
            match chunk.part {
                Some(Part::Data(d)) => {
                    if buf.len() + d.len() > total {
                        return Err(Status::invalid_argument(format!("more bytes than the {total} the header announced")));
                    }
                    buf.extend_from_slice(&d);
                }
                Some(Part::Header(_)) => return Err(Status::invalid_argument("a submission has exactly one header")),
                None => return Err(Status::invalid_argument("empty chunk")),
            }
        }
        if buf.len() != total {
            return Err(Status::invalid_argument(format!("stream ended after {} of {total} announced bytes", buf.len())));
        }
        self.shared.metrics.bytes_in.inc_by(buf.len() as u64);
        if confide_core::sha256_hex(&buf) != header.sha256 {
            return Err(Status::data_loss("submission does not match the SHA-256 in its header"));
        }
        if !header.audit_head.is_empty() {
            // The bank's own record of this upload, for the model card. Losing it loses no
            // contribution: it is logged, not refused.
            let (shared, h) = (self.shared.clone(), header.clone());
            let stored = tokio::task::spawn_blocking(move || {
                shared.store.set_audit_head(&h.job_id, &h.worker_id, h.round, &h.audit_head.to_ascii_lowercase(), h.dp_spent_epsilon)
            })
            .await;
            if let Err(e) = stored.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
                tracing::error!(worker = %header.worker_id, job = %header.job_id, error = %e, "could not store the bank's audit head");
            }
        }
        let contribution = Contribution::decode(buf.as_slice())
            .map_err(|e| Status::invalid_argument(format!("undecodable contribution: {e}")))?;
        let body = contribution.body.ok_or_else(|| Status::invalid_argument("contribution has no body"))?;
        let (ack, ack_rx) = tokio::sync::oneshot::channel();
        inbox
            .send(Inbound { worker_id: header.worker_id, task_id: header.task_id, body, ack })
            .await
            .map_err(|_| Status::failed_precondition("the phase this task belonged to is over"))?;
        match ack_rx.await {
            Ok(Ok(())) => Ok(Response::new(SubmitAck { accepted: true, message: String::new() })),
            Ok(Err(reason)) => Err(Status::invalid_argument(reason)),
            Err(_) => Err(Status::failed_precondition("the phase this task belonged to is over")),
        }
    }
}
