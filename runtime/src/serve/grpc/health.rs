//! gRPC's standard health service (`grpc.health.v1.Health`), what Kubernetes' gRPC probes,
//! `grpc_health_probe` and gRPC load balancers ask: `Check` answers SERVING for the server ("")
//! and the inference service while the models are loaded and the server is not shutting down,
//! NOT_SERVING during a shutdown's grace period, and NOT_FOUND for a service not served here.
//! `Watch` (a stream of status changes) answers UNIMPLEMENTED: probes poll `Check`.

use std::sync::Arc;

use axum::http;
use tonic::Status;
use tonic::body::Body;

use super::routed::{Routed, Routes};
use super::service::{SERVICE, unary};
use crate::serve::state::AppState;

const HEALTH: &str = "grpc.health.v1.Health";

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `HealthCheckResponse.ServingStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum ServingStatus {
    Unknown = 0,
    Serving = 1,
    NotServing = 2,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(enumeration = "ServingStatus", tag = "1")]
    pub status: i32,
}

/// The health service's methods.
pub struct Health;

/// The health service on a server's state.
pub type HealthService = Routed<Health>;

/// The status of `service` ("" is the whole server), or NOT_FOUND.
fn check(s: &AppState, service: &str) -> Result<HealthCheckResponse, Status> {
    if !service.is_empty() && service != SERVICE {
        return Err(Status::not_found(format!("no service {service} here: health is reported for \"\" (the server) and {SERVICE}")));
    }
    let status = if s.is_ready() { ServingStatus::Serving } else { ServingStatus::NotServing };
    Ok(HealthCheckResponse { status: status as i32 })
}

impl Routes for Health {
    const NAME: &'static str = HEALTH;

    async fn route(s: Arc<AppState>, req: http::Request<Body>) -> http::Response<Body> {
        let path = req.uri().path().to_string();
        match path.strip_prefix(&format!("/{HEALTH}/")) {
            Some("Check") => unary(req, s.max_body_bytes, |r: HealthCheckRequest| std::future::ready(check(&s, &r.service))).await,
            Some("Watch") => Status::unimplemented(format!("{HEALTH}/Watch is not served here: poll {HEALTH}/Check")).into_http(),
            _ => Status::unimplemented(format!("{path} is not served here: itarflow-rt answers {HEALTH}/Check")).into_http(),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn health_messages_have_the_wire_form_of_grpc_health_v1() {
        // Bytes as protoc writes them: field 1 (length-delimited) "x"; field 1 (varint) 1 and 2.
        let r = HealthCheckRequest::decode(&[0x0a, 0x01, b'x'][..]).unwrap();
        assert_eq!(r.service, "x");
        assert_eq!(HealthCheckResponse { status: ServingStatus::Serving as i32 }.encode_to_vec(), vec![0x08, 0x01]);
        assert_eq!(HealthCheckResponse { status: ServingStatus::NotServing as i32 }.encode_to_vec(), vec![0x08, 0x02]);
    }
}
