//! gRPC serving and connecting, the same for every service: health
//! (`grpc.health.v1`) and reflection come with every server.
//!
//! Services in one process also reach each other through an in-process link: real gRPC
//! (HTTP/2 frames, protobuf) over in-memory pipes instead of loopback TCP, which spares
//! every call two sockets and the cross-thread wake-ups they cost.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::DuplexStream;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::ServingStatus;

use crate::{Error, Result};

/// The endpoint value meaning "the service runs in this process": see [`LocalLink`].
pub const IN_PROCESS: &str = "in-process";
const PIPE_BYTES: usize = 256 * 1024;

/// The client side of the in-process link: every connection is a new in-memory pipe
/// whose other end goes to this process's gRPC server.
#[derive(Clone, Debug)]
pub struct LocalLink {
    connections: mpsc::UnboundedSender<DuplexStream>,
}

/// The server side of the in-process link, handed to [`serve`].
pub struct LocalIncoming {
    connections: mpsc::UnboundedReceiver<DuplexStream>,
}

pub fn local_link() -> (LocalLink, LocalIncoming) {
    let (connections, incoming) = mpsc::unbounded_channel();
    (LocalLink { connections }, LocalIncoming { connections: incoming })
}

impl LocalLink {
    fn channel(&self, endpoint: Endpoint) -> Channel {
        let connections = self.connections.clone();
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
            let (client, server) = tokio::io::duplex(PIPE_BYTES);
            let sent = connections.send(server).map_err(|_| std::io::Error::other("the local grpc server stopped"));
            std::future::ready(sent.map(|()| TokioIo::new(client)))
        }))
    }
}

/// Serves `routes` on `listener` (and on the in-process link, when given) until
/// `shutdown` is cancelled, then finishes the calls in flight. `services` are the fully
/// qualified names reported SERVING by health.
pub async fn serve(
    listener: TcpListener,
    local: Option<LocalIncoming>,
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
    let drained = shutdown.clone();
    let tcp = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_routes(routes.clone())
        .serve_with_incoming_shutdown(incoming, async move {
            drained.cancelled().await;
            // tell health checkers first, so balancers stop sending while calls drain
            for name in names {
                reporter.set_service_status(name, ServingStatus::NotServing).await;
            }
        });
    match local {
        None => tcp.await?,
        Some(local) => {
            let pipes = UnboundedReceiverStream::new(local.connections).map(Ok::<_, std::io::Error>);
            let in_process =
                Server::builder().add_routes(routes).serve_with_incoming_shutdown(pipes, shutdown.cancelled());
            tokio::try_join!(tcp, in_process)?;
        }
    }
    Ok(())
}

/// A channel to a service's gRPC endpoint: a URL, or [`IN_PROCESS`] with the link of
/// this process. It connects on first use and reconnects by itself, so a caller may be
/// created before the service it calls is up. A call that takes longer than
/// `request_timeout` fails DEADLINE_EXCEEDED.
pub fn channel(url: &str, local: Option<&LocalLink>, request_timeout: Duration) -> Result<Channel> {
    let target = if url == IN_PROCESS { "http://in-process.invalid" } else { url };
    let endpoint = Endpoint::from_shared(target.to_owned())
        .map_err(|e| Error::Config(format!("invalid endpoint {url:?}: {e}")))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(request_timeout)
        .http2_keep_alive_interval(Duration::from_secs(30));
    match (url, local) {
        (IN_PROCESS, Some(link)) => Ok(link.channel(endpoint)),
        (IN_PROCESS, None) => {
            Err(Error::Config(format!("endpoint {IN_PROCESS:?} names this process, which does not run that service")))
        }
        _ => Ok(endpoint.connect_lazy()),
    }
}
