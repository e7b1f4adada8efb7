//! gRPC's standard health service (`grpc.health.v1.Health`), what Kubernetes' gRPC probes,
//! `grpc_health_probe` and gRPC clients' own health checking ask: `Check` answers SERVING for the
//! server ("") and the inference service while the models are loaded and the server is not
//! shutting down, NOT_SERVING while warming up and during a shutdown's grace period, and NOT_FOUND
//! for a service not served here. `Watch` (what gRPC clients' health checking and load balancers
//! use) streams the status at once and then at every change (SERVICE_UNKNOWN for a service not
//! served here, the call kept open as the protocol asks); at a shutdown it sends NOT_SERVING and
//! ends, so that open watches do not hold the server's connections past the grace period.

use std::sync::Arc;
use std::time::Duration;

use axum::http;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::server::{Grpc, ServerStreamingService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

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
    /// `Watch` about a service not served here.
    ServiceUnknown = 3,
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

/// Whether health is reported for `service` ("" is the whole server).
fn known(service: &str) -> bool {
    service.is_empty() || service == SERVICE
}

/// The server's status.
fn status(s: &AppState) -> ServingStatus {
    if s.is_ready() { ServingStatus::Serving } else { ServingStatus::NotServing }
}

/// The status of `service`, or NOT_FOUND.
fn check(s: &AppState, service: &str) -> Result<HealthCheckResponse, Status> {
    if !known(service) {
        return Err(Status::not_found(format!("no service {service} here: health is reported for \"\" (the server) and {SERVICE}")));
    }
    Ok(HealthCheckResponse { status: status(s) as i32 })
}

/// How often a watch looks at the server's state.
const WATCH_PERIOD: Duration = Duration::from_millis(100);

/// `Watch`: the status now, then each change, until the client leaves or the server shuts down.
struct Watch(Arc<AppState>);

impl ServerStreamingService<HealthCheckRequest> for Watch {
    type Response = HealthCheckResponse;
    type ResponseStream = ReceiverStream<Result<HealthCheckResponse, Status>>;
    type Future = std::future::Ready<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<HealthCheckRequest>) -> Self::Future {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let s = self.0.clone();
        let service = request.into_inner().service;
        tokio::spawn(async move {
            let mut sent = None;
            loop {
                let now = if known(&service) { status(&s) } else { ServingStatus::ServiceUnknown };
                if sent != Some(now) {
                    if tx.send(Ok(HealthCheckResponse { status: now as i32 })).await.is_err() {
                        return;
                    }
                    sent = Some(now);
                }
                if s.is_shutting_down() {
                    return;
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(WATCH_PERIOD) => {}
                }
            }
        });
        std::future::ready(Ok(Response::new(ReceiverStream::new(rx))))
    }
}

impl Routes for Health {
    const NAME: &'static str = HEALTH;

    async fn route(s: Arc<AppState>, req: http::Request<Body>) -> http::Response<Body> {
        let path = req.uri().path().to_string();
        match path.strip_prefix(&format!("/{HEALTH}/")) {
            Some("Check") => unary(req, s.max_body_bytes, |r: HealthCheckRequest| std::future::ready(check(&s, &r.service))).await,
            Some("Watch") => {
                Grpc::new(ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default())
                    .max_decoding_message_size(s.max_body_bytes)
                    .server_streaming(Watch(s.clone()), req)
                    .await
            }
            _ => Status::unimplemented(format!("{path} is not served here: itarflow-rt answers {HEALTH}/Check and {HEALTH}/Watch"))
                .into_http(),
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
