//! Moving bytes to and from the coordinator: chunked model download (verified against its
//! content hash) and chunked contribution upload (header, then 1 MiB pieces), so neither is
//! bound by the gRPC message limit.

use confide_proto::v1::{
    BlobChunk, Contribution, DownloadModelRequest, SubmitChunk, SubmitHeader, federation_client::FederationClient,
    submit_chunk::Part,
};
use prost::Message;
use tonic::transport::Channel;

/// A transfer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The coordinator refused or the connection broke.
    #[error("coordinator: {0}")]
    Rpc(#[from] tonic::Status),
    /// The stream's chunks do not add up to a consistent blob.
    #[error("model download: {0}")]
    Malformed(String),
    /// The downloaded bytes do not hash to the requested checkpoint.
    #[error("model download: content hashes to {actual}, expected {expected}")]
    HashMismatch {
        /// Requested hash.
        expected: String,
        /// Hash of what arrived.
        actual: String,
    },
}

/// Downloads checkpoint `hash`, refusing more than `max_bytes` and any hash mismatch.
pub async fn download_model(
    client: &mut FederationClient<Channel>,
    worker_id: &str,
    hash: &str,
    max_bytes: u64,
) -> Result<Vec<u8>, TransferError> {
    let mut stream = client
        .download_model(DownloadModelRequest { worker_id: worker_id.into(), hash: hash.into() })
        .await?
        .into_inner();
    let mut buf: Vec<u8> = Vec::new();
    let mut total: Option<u64> = None;
    while let Some(BlobChunk { data, offset, total_size }) = stream.message().await? {
        if total_size > max_bytes {
            return Err(TransferError::Malformed(format!("{total_size} bytes announced, at most {max_bytes} expected")));
        }
        match total {
            None => {
                total = Some(total_size);
                buf.reserve(total_size as usize);
            }
            Some(t) if t != total_size => return Err(TransferError::Malformed("chunks disagree on the total size".into())),
            Some(_) => {}
        }
        if offset != buf.len() as u64 || buf.len() as u64 + data.len() as u64 > total_size {
            return Err(TransferError::Malformed(format!("chunk at offset {offset} out of order or past the end")));
        }
        buf.extend_from_slice(&data);
    }
    if Some(buf.len() as u64) != total {
        return Err(TransferError::Malformed(format!("stream ended after {} bytes of {:?}", buf.len(), total)));
    }
    let actual = confide_core::sha256_hex(&buf);
    if actual != hash {
        return Err(TransferError::HashMismatch { expected: hash.into(), actual });
    }
    Ok(buf)
}

/// Identifies the task a contribution answers.
#[derive(Debug, Clone)]
pub struct TaskAddress {
    /// This worker.
    pub worker_id: String,
    /// The task.
    pub task_id: String,
    /// Its job.
    pub job_id: String,
    /// Its round.
    pub round: u64,
}

/// Uploads one contribution in chunks. Errors carry the coordinator's reason for a refusal.
pub async fn submit(
    client: &mut FederationClient<Channel>,
    to: &TaskAddress,
    contribution: &Contribution,
) -> Result<(), TransferError> {
    let bytes = contribution.encode_to_vec();
    let header = SubmitHeader {
        worker_id: to.worker_id.clone(),
        task_id: to.task_id.clone(),
        job_id: to.job_id.clone(),
        round: to.round,
        total_bytes: bytes.len() as u64,
        sha256: confide_core::sha256_hex(&bytes),
    };
    let mut chunks = vec![SubmitChunk { part: Some(Part::Header(header)) }];
    chunks.extend(bytes.chunks(confide_proto::CHUNK_SIZE).map(|c| SubmitChunk { part: Some(Part::Data(c.to_vec())) }));
    let ack = client.submit(tokio_stream::iter(chunks)).await?.into_inner();
    if !ack.accepted {
        return Err(TransferError::Rpc(tonic::Status::failed_precondition(ack.message)));
    }
    Ok(())
}
