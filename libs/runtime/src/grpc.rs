//! gRPC serving and connecting, the same for every service: health
//! (`grpc.health.v1`) and reflection come with every server.
//!
//! Services in one process reach each other through the in-process link: the caller's
//! tonic client hands its gRPC request (protobuf body, gRPC framing and status) straight
//! to this process's tonic router, without a socket or an HTTP/2 connection.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::service::Routes;
use tonic::transport::{Endpoint, Server};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};

use crate::metrics::{GrpcLabels, Metrics, code_name, observe_grpc};
use crate::{Error, Result};

/// A connection to a service's gRPC API, over the network or in-process; what every
/// generated client is built on (`StorageServiceClient<GrpcChannel>`).
/// Failures to reach the service are already gRPC statuses (UNAVAILABLE, DEADLINE_EXCEEDED).
pub type GrpcChannel = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, tonic::Status>;

/// The endpoint value meaning "the service runs in this process": see [`LocalLink`].
pub const IN_PROCESS: &str = "in-process";

/// The in-process link: the gRPC router of this process, bound once it is built.
#[derive(Clone, Debug, Default)]
pub struct LocalLink {
    router: Arc<OnceLock<Routes>>,
}

impl LocalLink {
    /// Makes `router` the target of every channel of this link, made before or after.
    pub fn bind(&self, router: Routes) {
        let _ = self.router.set(router);
    }

    fn channel(&self, request_timeout: Duration) -> GrpcChannel {
        let local = LocalService { router: self.router.clone() };
        BoxCloneSyncService::new(tower::timeout::Timeout::new(local, request_timeout).map_err(|error: BoxError| {
            match error.downcast::<tonic::Status>() {
                Ok(status) => *status,
                Err(error) if error.is::<tower::timeout::error::Elapsed>() => {
                    tonic::Status::deadline_exceeded("the call took longer than the request timeout")
                }
                Err(error) => tonic::Status::from_error(error),
            }
        }))
    }
}

#[derive(Clone)]
struct LocalService {
    router: Arc<OnceLock<Routes>>,
}

impl Service<http::Request<Body>> for LocalService {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let router = self.router.get().cloned();
        Box::pin(async move {
            let router =
                router.ok_or_else(|| Box::new(tonic::Status::unavailable("the local grpc server is not up yet")))?;
            let response = router.oneshot(request).await.map_err(|never: Infallible| match never {})?;
            Ok(response)
        })
    }
}

/// A process's gRPC router: its services plus health and reflection.
pub struct GrpcRouter {
    routes: Routes,
    reporter: HealthReporter,
    services: Vec<&'static str>,
}

impl GrpcRouter {
    /// Adds health (reporting `services` SERVING), reflection, and per-call spans and
    /// metrics to `routes`.
    pub async fn new(routes: Routes, services: &[&'static str], metrics: Arc<Metrics>) -> Result<Self> {
        let (reporter, health) = tonic_health::server::health_reporter();
        for name in services {
            reporter.set_service_status(*name, ServingStatus::Serving).await;
        }
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(helix_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| Error::Config(format!("grpc reflection: {e}")))?;
        let routes = routes.add_service(health).add_service(reflection);
        let observed = routes.into_axum_router().layer(axum::middleware::from_fn_with_state(metrics, observe_grpc));
        Ok(Self { routes: Routes::from(observed), reporter, services: services.to_vec() })
    }

    /// The router, for the in-process link.
    pub fn routes(&self) -> Routes {
        self.routes.clone()
    }

    /// Serves on `listener` until `shutdown` is cancelled, then finishes the calls in
    /// flight.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> Result<()> {
        // Nagle's algorithm would hold small responses back for a delayed ACK.
        let incoming = TcpListenerStream::new(listener).map(|conn| {
            conn.inspect(|stream| {
                let _ = stream.set_nodelay(true);
            })
        });
        let Self { routes, reporter, services } = self;
        Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.cancelled().await;
                // tell health checkers first, so balancers stop sending while calls drain
                for name in services {
                    reporter.set_service_status(name, ServingStatus::NotServing).await;
                }
            })
            .await?;
        Ok(())
    }
}

/// A channel to a service's gRPC endpoint: a URL, or [`IN_PROCESS`] with the link of
/// this process. It connects on first use and reconnects by itself, so a caller may be
/// created before the service it calls is up. A call that takes longer than
/// `request_timeout` fails DEADLINE_EXCEEDED.
pub fn channel(
    url: &str,
    local: Option<&LocalLink>,
    request_timeout: Duration,
    metrics: Arc<Metrics>,
) -> Result<GrpcChannel> {
    let inner = match (url, local) {
        (IN_PROCESS, Some(link)) => link.channel(request_timeout),
        (IN_PROCESS, None) => {
            return Err(Error::Config(format!(
                "endpoint {IN_PROCESS:?} names this process, which does not run that service"
            )));
        }
        _ => {
            let endpoint = Endpoint::from_shared(url.to_owned())
                .map_err(|e| Error::Config(format!("invalid endpoint {url:?}: {e}")))?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(5))
                .timeout(request_timeout)
                .http2_keep_alive_interval(Duration::from_secs(30));
            let channel = endpoint.connect_lazy().map_err(|error| tonic::Status::from_error(Box::new(error)));
            BoxCloneSyncService::new(channel)
        }
    };
    Ok(BoxCloneSyncService::new(ObservedChannel { inner, metrics }))
}

/// Carries the caller's trace context in the call's metadata and counts failed calls.
#[derive(Clone)]
struct ObservedChannel {
    inner: GrpcChannel,
    metrics: Arc<Metrics>,
}

impl Service<http::Request<Body>> for ObservedChannel {
    type Response = http::Response<Body>;
    type Error = tonic::Status;
    type Future = BoxFuture<'static, Result<Self::Response, tonic::Status>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        helix_telemetry::inject_headers(request.headers_mut());
        let method = request.uri().path().to_owned();
        let metrics = self.metrics.clone();
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            let code = match &result {
                Ok(response) => response.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok()),
                Err(status) => Some(status.code() as i32),
            };
            if let Some(code) = code.filter(|c| *c != 0) {
                metrics
                    .grpc_client_errors
                    .get_or_create(&GrpcLabels { method, code: code_name(code).to_owned() })
                    .inc();
            }
            result
        })
    }
}
