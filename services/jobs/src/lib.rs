//! The jobs service: the durable job queue (priority, retry with backoff, dead-letter), cron schedules, workers.
//!
//! Its contract is `proto/helix/v1/jobs.proto`. Not built yet: the server is up,
//! reports SERVING to health checks and answers every method UNIMPLEMENTED.

use helix_proto::v1::jobs_service_server::{JobsService, JobsServiceServer};
use helix_runtime::{HelixConfig, ServiceContext};
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "jobs";
pub const GRPC_SERVICE: &str = helix_proto::service_names::JOBS;

pub struct JobsServiceApi;

impl JobsService for JobsServiceApi {}

/// The jobs gRPC service, ready to be served.
pub async fn start(_ctx: &ServiceContext) -> helix_runtime::Result<JobsServiceServer<JobsServiceApi>> {
    Ok(JobsServiceServer::new(JobsServiceApi))
}

/// Runs the jobs service alone in this process until `shutdown` is cancelled.
pub async fn serve(config: HelixConfig, shutdown: CancellationToken) -> helix_runtime::Result<()> {
    helix_runtime::serve_alone(config, shutdown, GRPC_SERVICE, |ctx| async move {
        Ok(tonic::service::Routes::new(start(&ctx).await?))
    })
    .await
}
