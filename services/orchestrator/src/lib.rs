//! The orchestrator service: workflows, the DAG scheduler, task decomposition, reasoning, swarms, feedback, event routing, reports.
//!
//! Its contract is `proto/helix/v1/orchestrator.proto`. Not built yet: the server is up,
//! reports SERVING to health checks and answers every method UNIMPLEMENTED.

use helix_proto::v1::orchestrator_service_server::{OrchestratorService, OrchestratorServiceServer};
use helix_runtime::{HelixConfig, ServiceContext};
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "orchestrator";
pub const GRPC_SERVICE: &str = helix_proto::service_names::ORCHESTRATOR;

pub struct OrchestratorServiceApi;

impl OrchestratorService for OrchestratorServiceApi {}

/// The orchestrator gRPC service, ready to be served.
pub async fn start(_ctx: &ServiceContext) -> helix_runtime::Result<OrchestratorServiceServer<OrchestratorServiceApi>> {
    Ok(OrchestratorServiceServer::new(OrchestratorServiceApi))
}

/// Runs the orchestrator service alone in this process until `shutdown` is cancelled.
pub async fn serve(config: HelixConfig, shutdown: CancellationToken) -> helix_runtime::Result<()> {
    helix_runtime::serve_alone(config, shutdown, GRPC_SERVICE, |ctx| async move {
        Ok(tonic::service::Routes::new(start(&ctx).await?))
    })
    .await
}
