//! The search service: full-text and vector search over knowledge nodes, hybrid ranking, embeddings; fed by node events.
//!
//! Its contract is `proto/helix/v1/search.proto`. Not built yet: the server is up,
//! reports SERVING to health checks and answers every method UNIMPLEMENTED.

use helix_proto::v1::search_service_server::{SearchService, SearchServiceServer};
use helix_runtime::{HelixConfig, ServiceContext};
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "search";
pub const GRPC_SERVICE: &str = helix_proto::service_names::SEARCH;

pub struct SearchServiceApi;

impl SearchService for SearchServiceApi {}

/// The search gRPC service, ready to be served.
pub async fn start(_ctx: &ServiceContext) -> helix_runtime::Result<SearchServiceServer<SearchServiceApi>> {
    Ok(SearchServiceServer::new(SearchServiceApi))
}

/// Runs the search service alone in this process until `shutdown` is cancelled.
pub async fn serve(config: HelixConfig, shutdown: CancellationToken) -> helix_runtime::Result<()> {
    helix_runtime::serve_alone(config, shutdown, GRPC_SERVICE, |ctx| async move {
        Ok(tonic::service::Routes::new(start(&ctx).await?))
    })
    .await
}
