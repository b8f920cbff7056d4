//! The graph service: the knowledge graph: edges between nodes, traversal, paths.
//!
//! Its contract is `proto/helix/v1/graph.proto`. Not built yet: the server is up,
//! reports SERVING to health checks and answers every method UNIMPLEMENTED.

use helix_proto::v1::graph_service_server::{GraphService, GraphServiceServer};
use helix_runtime::{HelixConfig, ServiceContext};
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "graph";
pub const GRPC_SERVICE: &str = helix_proto::service_names::GRAPH;

pub struct GraphServiceApi;

impl GraphService for GraphServiceApi {}

/// The graph gRPC service, ready to be served.
pub async fn start(_ctx: &ServiceContext) -> helix_runtime::Result<GraphServiceServer<GraphServiceApi>> {
    Ok(GraphServiceServer::new(GraphServiceApi))
}

/// Runs the graph service alone in this process until `shutdown` is cancelled.
pub async fn serve(config: HelixConfig, shutdown: CancellationToken) -> helix_runtime::Result<()> {
    helix_runtime::serve_alone(config, shutdown, GRPC_SERVICE, |ctx| async move {
        Ok(tonic::service::Routes::new(start(&ctx).await?))
    })
    .await
}
