//! Every service's gRPC server: health, reflection, and UNIMPLEMENTED for what is not
//! built yet.

use helix_proto::v1 as pb;
use helix_testkit::{Backend, TestEnv};
use hx::fleet::Role;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const SERVICES: [&str; 8] = [
    "helix.v1.StorageService",
    "helix.v1.SearchService",
    "helix.v1.GraphService",
    "helix.v1.LlmRouterService",
    "helix.v1.OrchestratorService",
    "helix.v1.JobsService",
    "helix.v1.NotificationsService",
    "helix.v1.GatewayService",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_health_reflection_and_its_contract() -> anyhow::Result<()> {
    let env = TestEnv::new(Backend::Embedded).await?;
    let node = env.start(&Role::ALL).await?;
    let channel = Channel::from_shared(node.grpc_url())?.connect().await?;

    let mut health = HealthClient::new(channel.clone());
    for service in SERVICES {
        let reply = health.check(HealthCheckRequest { service: service.to_owned() }).await?.into_inner();
        assert_eq!(reply.status, ServingStatus::Serving as i32, "{service}");
    }

    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection.server_reflection_info(futures::stream::iter([request])).await?.into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = replies.message().await?.and_then(|r| r.message_response)
    else {
        anyhow::bail!("reflection did not list services");
    };
    let listed: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in SERVICES.iter().chain(&["grpc.health.v1.Health"]) {
        assert!(listed.iter().any(|l| l == service), "{service} not in {listed:?}");
    }

    // built: an empty call is refused for what it is
    let mut llm = pb::llm_router_service_client::LlmRouterServiceClient::new(channel.clone());
    let status = llm.generate(pb::GenerateRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = llm.embed(pb::EmbedRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // not built yet: answered UNIMPLEMENTED, never a hang or a fake answer
    let status = llm.update_provider(pb::UpdateProviderRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    let mut notifications = pb::notifications_service_client::NotificationsServiceClient::new(channel);
    let status = notifications.list_notifications(pb::ListNotificationsRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    node.stop().await;
    Ok(())
}
