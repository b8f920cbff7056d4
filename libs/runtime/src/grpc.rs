//! gRPC serving and connecting, the same for every service: health
//! (`grpc.health.v1`) and reflection come with every server.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::ServingStatus;

use crate::{Error, Result};

/// Serves `routes` on `listener` until `shutdown` is cancelled, then finishes the calls
/// in flight. `services` are the fully qualified names reported SERVING by health.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    services: &[&'static str],
    shutdown: CancellationToken,
) -> Result<()> {
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

    // Nagle's algorithm would hold small responses back for a delayed ACK.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            let _ = stream.set_nodelay(true);
        })
    });
    let names = services.to_vec();
    Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.cancelled().await;
            // tell health checkers first, so balancers stop sending while calls drain
            for name in names {
                reporter.set_service_status(name, ServingStatus::NotServing).await;
            }
        })
        .await?;
    Ok(())
}

/// A channel to a service's gRPC endpoint. It connects on first use and reconnects by
/// itself, so a caller may be created before the service it calls is up. A call that
/// takes longer than `request_timeout` fails DEADLINE_EXCEEDED.
pub fn channel(url: &str, request_timeout: Duration) -> Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| Error::Config(format!("invalid endpoint {url:?}: {e}")))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(request_timeout)
        .http2_keep_alive_interval(Duration::from_secs(30));
    Ok(endpoint.connect_lazy())
}
