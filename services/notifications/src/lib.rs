//! The notifications service: notifications, channels and adapters, alert rules, outbound webhooks.
//!
//! Its contract is `proto/helix/v1/notifications.proto`. Not built yet: the server is up,
//! reports SERVING to health checks and answers every method UNIMPLEMENTED.

use helix_proto::v1::notifications_service_server::{NotificationsService, NotificationsServiceServer};
use helix_runtime::{HelixConfig, ServiceContext};
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "notifications";
pub const GRPC_SERVICE: &str = helix_proto::service_names::NOTIFICATIONS;

pub struct NotificationsServiceApi;

impl NotificationsService for NotificationsServiceApi {}

/// The notifications gRPC service, ready to be served.
pub async fn start(
    _ctx: &ServiceContext,
) -> helix_runtime::Result<NotificationsServiceServer<NotificationsServiceApi>> {
    Ok(NotificationsServiceServer::new(NotificationsServiceApi))
}

/// Runs the notifications service alone in this process until `shutdown` is cancelled.
pub async fn serve(config: HelixConfig, shutdown: CancellationToken) -> helix_runtime::Result<()> {
    helix_runtime::serve_alone(config, shutdown, GRPC_SERVICE, |ctx| async move {
        Ok(tonic::service::Routes::new(start(&ctx).await?))
    })
    .await
}
