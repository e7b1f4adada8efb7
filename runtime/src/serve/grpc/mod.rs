//! The Open Inference Protocol over gRPC (KServe v2's `inference.GRPCInferenceService`, as
//! Triton's gRPC clients call it), beside the REST endpoints (`--grpc-port`).
//!
//! - [`messages`]: the service's protobuf messages (prost);
//! - [`tensors`]: inference messages to and from the protocol's requests and outputs, refusals
//!   as gRPC status codes;
//! - [`service`]: the methods (streamed inference too), routed by path;
//! - [`statistics`]: per-model statistics as Triton's `ModelStatistics` messages;
//! - [`config`]: model configurations and the repository index as Triton's messages;
//! - [`routed`]: a service (a routing function by path) as tonic mounts it;
//! - [`health`]: gRPC's standard health service, for Kubernetes' gRPC probes.

pub mod config;
pub mod health;
pub mod messages;
pub mod routed;
pub mod service;
pub mod statistics;
pub mod tensors;

pub use health::HealthService;
pub use service::InferenceService;
