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
    /// The blob announced is larger than the limit (nothing was allocated for it).
    #[error("model download: {announced} bytes announced, at most {limit} accepted")]
    TooLarge {
        /// The announced size.
        announced: u64,
        /// The limit.
        limit: u64,
    },
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

/// Downloads checkpoint `hash`, refusing an announced size over `max_bytes` and any hash
/// mismatch. The bytes stream into one buffer allocated once at the announced size
/// ([`BlobBuffer`]), so a download never holds the blob twice.
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
    let mut buf = BlobBuffer::new(max_bytes);
    while let Some(chunk) = stream.message().await? {
        buf.push(chunk)?;
    }
    buf.finish(hash)
}

/// A blob being assembled from its chunks: allocated once, at the first chunk's announced
/// size (after checking it against the limit), then filled in order.
#[derive(Debug)]
pub struct BlobBuffer {
    /// Largest announced size accepted.
    max_bytes: u64,
    /// The announced size (from the first chunk) and the bytes so far.
    buf: Option<(u64, Vec<u8>)>,
}

impl BlobBuffer {
    /// An empty buffer accepting blobs of at most `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        Self { max_bytes, buf: None }
    }

    /// Appends one chunk; every chunk must announce the same total and continue where the
    /// previous one ended.
    pub fn push(&mut self, chunk: BlobChunk) -> Result<(), TransferError> {
        let BlobChunk { data, offset, total_size } = chunk;
        let (total, buf) = match &mut self.buf {
            Some((total, buf)) => (*total, buf),
            None => {
                if total_size > self.max_bytes {
                    return Err(TransferError::TooLarge { announced: total_size, limit: self.max_bytes });
                }
                let size = usize::try_from(total_size)
                    .map_err(|_| TransferError::TooLarge { announced: total_size, limit: usize::MAX as u64 })?;
                let mut buf = Vec::new();
                buf.try_reserve_exact(size).map_err(|_| TransferError::Malformed(format!("cannot allocate {size} bytes")))?;
                let (total, buf) = self.buf.insert((total_size, buf));
                (*total, buf)
            }
        };
        if total_size != total {
            return Err(TransferError::Malformed("chunks disagree on the total size".into()));
        }
        if offset != buf.len() as u64 || buf.len() as u64 + data.len() as u64 > total {
            return Err(TransferError::Malformed(format!("chunk at offset {offset} out of order or past the end")));
        }
        // Within the capacity reserved above: no reallocation, no second copy.
        buf.extend_from_slice(&data);
        Ok(())
    }

    /// The complete blob, verified against `hash`.
    pub fn finish(self, hash: &str) -> Result<Vec<u8>, TransferError> {
        let Some((total, buf)) = self.buf else {
            return Err(TransferError::Malformed("stream ended before the first chunk".into()));
        };
        if buf.len() as u64 != total {
            return Err(TransferError::Malformed(format!("stream ended after {} bytes of {total}", buf.len())));
        }
        let actual = confide_core::sha256_hex(&buf);
        if actual != hash {
            return Err(TransferError::HashMismatch { expected: hash.into(), actual });
        }
        Ok(buf)
    }
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

/// Uploads one contribution in chunks, its header carrying `audit_head` (the hash of the bank's
/// audit record of this upload; empty without an audit log) and `dp_spent_epsilon` (the bank's
/// cumulative ε for the job on the task's dataset, 0 when not DP). Errors carry the coordinator's
/// reason for a refusal.
pub async fn submit(
    client: &mut FederationClient<Channel>,
    to: &TaskAddress,
    contribution: &Contribution,
    audit_head: &str,
    dp_spent_epsilon: f64,
) -> Result<(), TransferError> {
    let bytes = contribution.encode_to_vec();
    let header = SubmitHeader {
        worker_id: to.worker_id.clone(),
        task_id: to.task_id.clone(),
        job_id: to.job_id.clone(),
        round: to.round,
        total_bytes: bytes.len() as u64,
        sha256: confide_core::sha256_hex(&bytes),
        audit_head: audit_head.to_string(),
        dp_spent_epsilon,
    };
    let mut chunks = vec![SubmitChunk { part: Some(Part::Header(header)) }];
    chunks.extend(bytes.chunks(confide_proto::CHUNK_SIZE).map(|c| SubmitChunk { part: Some(Part::Data(c.to_vec())) }));
    let ack = client.submit(tokio_stream::iter(chunks)).await?.into_inner();
    if !ack.accepted {
        return Err(TransferError::Rpc(tonic::Status::failed_precondition(ack.message)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(data: &[u8], offset: u64, total_size: u64) -> BlobChunk {
        BlobChunk { data: data.to_vec(), offset, total_size }
    }

    #[test]
    fn a_blob_fills_one_buffer_of_the_announced_size() {
        let blob = b"hello, world";
        let mut buf = BlobBuffer::new(64);
        buf.push(chunk(&blob[..5], 0, 12)).expect("first");
        let capacity = buf.buf.as_ref().map(|(_, b)| b.capacity());
        buf.push(chunk(&blob[5..], 5, 12)).expect("second");
        assert_eq!(buf.buf.as_ref().map(|(_, b)| b.capacity()), capacity, "no reallocation");
        assert_eq!(buf.finish(&confide_core::sha256_hex(blob)).expect("complete"), blob);
    }

    #[test]
    fn oversized_inconsistent_short_or_tampered_blobs_are_refused() {
        let err = BlobBuffer::new(10).push(chunk(b"x", 0, 11)).expect_err("announced too large");
        assert!(matches!(err, TransferError::TooLarge { announced: 11, limit: 10 }), "{err}");
        let mut b = BlobBuffer::new(10);
        b.push(chunk(b"ab", 0, 4)).expect("first");
        assert!(b.push(chunk(b"cd", 2, 5)).is_err(), "total changed");
        assert!(b.push(chunk(b"cd", 3, 4)).is_err(), "gap");
        assert!(b.push(chunk(b"cde", 2, 4)).is_err(), "past the end");
        assert!(b.finish("00").is_err(), "short");
        let mut b = BlobBuffer::new(10);
        b.push(chunk(b"ab", 0, 2)).expect("whole");
        assert!(matches!(b.finish(&"0".repeat(64)), Err(TransferError::HashMismatch { .. })));
        assert!(BlobBuffer::new(10).finish("00").is_err(), "no chunk at all");
    }
}
