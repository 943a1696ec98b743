//! Confide's wire schema: the `confide.v1` protobuf package and its two gRPC services.
//!
//! - `Federation`: what a bank's worker calls. Workers always dial out; the coordinator hands
//!   them tasks over the server stream of `Subscribe`, and large payloads (models, updates)
//!   travel as chunked streams so they are not bound by the gRPC message limit.
//! - `Admin`: what the data-science team's CLI calls to submit, watch, cancel and fetch jobs.
//!
//! [`outcome`] converts participant statuses and failure kinds between wire and domain.
//! [`secagg`] converts between the wire form of a secure-aggregation setup and the parameters
//! of the `confide-secagg` state machines, so coordinator and worker agree by construction.

#![allow(clippy::all, missing_docs)] // generated code

/// Version 1 of the protocol.
pub mod v1 {
    tonic::include_proto!("confide.v1");
}

pub mod outcome;
pub mod secagg;

/// Size of one chunk of a streamed blob (model or contribution). Well under tonic's 4 MiB default.
pub const CHUNK_SIZE: usize = 1 << 20;
