//! A gRPC service as tonic mounts it: the requests under `/{NAME}/` answered by one routing
//! function over the server's state. Each service this server speaks is such a function
//! ([`Routes`]); [`Routed`] makes it a tower service.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http;
use tonic::body::Body;
use tonic::server::NamedService;

use crate::serve::state::AppState;

/// A gRPC service's name and its methods, routed by path.
pub trait Routes: Send + Sync + 'static {
    /// The protobuf service's full name (`package.Service`).
    const NAME: &'static str;

    /// The answer to `req` (one of the service's methods, or UNIMPLEMENTED).
    fn route(s: Arc<AppState>, req: http::Request<Body>) -> impl Future<Output = http::Response<Body>> + Send;
}

/// The service `R` on a server's state; cheap to clone (tonic clones it per connection).
pub struct Routed<R> {
    state: Arc<AppState>,
    routes: PhantomData<fn() -> R>,
}

impl<R> Routed<R> {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state, routes: PhantomData }
    }
}

impl<R> Clone for Routed<R> {
    fn clone(&self) -> Self {
        Self::new(self.state.clone())
    }
}

impl<R: Routes> NamedService for Routed<R> {
    const NAME: &'static str = R::NAME;
}

impl<R: Routes> tower_service::Service<http::Request<Body>> for Routed<R> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let s = self.state.clone();
        Box::pin(async move { Ok(R::route(s, req).await) })
    }
}
