//! The llm-router service: one router to every LLM provider: routing, fallbacks, streaming, embeddings, budgets and cost tracking.
//!
//! Its contract is `proto/helix/v1/llm_router.proto`. Not built yet: the server is up,
//! reports SERVING to health checks and answers every method UNIMPLEMENTED.

use helix_proto::v1::llm_router_service_server::{LlmRouterService, LlmRouterServiceServer};
use helix_runtime::{HelixConfig, ServiceContext};
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "llm-router";
pub const GRPC_SERVICE: &str = helix_proto::service_names::LLM_ROUTER;

pub struct LlmRouterServiceApi;

impl LlmRouterService for LlmRouterServiceApi {}

/// The llm-router gRPC service, ready to be served.
pub async fn start(_ctx: &ServiceContext) -> helix_runtime::Result<LlmRouterServiceServer<LlmRouterServiceApi>> {
    Ok(LlmRouterServiceServer::new(LlmRouterServiceApi))
}

/// Runs the llm-router service alone in this process until `shutdown` is cancelled.
pub async fn serve(config: HelixConfig, shutdown: CancellationToken) -> helix_runtime::Result<()> {
    helix_runtime::serve_alone(config, shutdown, GRPC_SERVICE, |ctx| async move {
        Ok(tonic::service::Routes::new(start(&ctx).await?))
    })
    .await
}
