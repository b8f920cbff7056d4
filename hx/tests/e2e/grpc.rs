//! Every service's gRPC server: health, reflection, UNIMPLEMENTED for what is not built
//! yet, the fleet token on every call but health, and the connection cap.

use std::time::Duration;

use helix_proto::v1 as pb;
use helix_runtime::config::Secret;
use helix_runtime::grpc::GrpcChannel;
use helix_testkit::{Backend, TestEnv};
use hx::fleet::Role;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

crate::on_both_backends!(only_fleet_members_call_grpc);

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
    let channel = node.grpc_channel().await?;

    let mut health = HealthClient::new(channel.clone());
    for service in SERVICES {
        let reply = health.check(HealthCheckRequest { service: service.to_owned() }).await?.into_inner();
        assert_eq!(reply.status, ServingStatus::Serving as i32, "{service}");
    }

    let listed = list_services(channel.clone()).await?;
    for service in SERVICES.iter().chain(&["grpc.health.v1.Health"]) {
        assert!(listed.iter().any(|l| l == service), "{service} not in {listed:?}");
    }

    // built: an empty call is refused for what it is
    let mut llm = pb::llm_router_service_client::LlmRouterServiceClient::new(channel.clone());
    let status = llm.generate(pb::GenerateRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = llm.embed(pb::EmbedRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // not built yet: answered UNIMPLEMENTED, never a hang or a fake answer
    let status = llm.update_provider(pb::UpdateProviderRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    let mut notifications = pb::notifications_service_client::NotificationsServiceClient::new(channel);
    let status = notifications.list_notifications(pb::ListNotificationsRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    node.stop().await;
    Ok(())
}

async fn list_services(channel: GrpcChannel) -> Result<Vec<String>, tonic::Status> {
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection.server_reflection_info(futures::stream::iter([request])).await?.into_inner();
    match replies.message().await?.and_then(|r| r.message_response) {
        Some(MessageResponse::ListServicesResponse(list)) => Ok(list.service.into_iter().map(|s| s.name).collect()),
        other => Err(tonic::Status::internal(format!("not a list of services: {other:?}"))),
    }
}

#[derive(Debug, Clone, Copy)]
enum Call {
    Health,
    Reflection,
    ListNodes,
    CreateNode,
    Gateway,
}

#[derive(Debug, Clone, Copy)]
enum Token {
    None,
    Wrong,
    Right,
}

/// Code of the call's answer, and the Helix error code it carried.
async fn check(channel: GrpcChannel, call: Call) -> (Code, String) {
    let result = match call {
        Call::Health => HealthClient::new(channel)
            .check(HealthCheckRequest { service: "helix.v1.StorageService".into() })
            .await
            .and_then(|r| match r.into_inner().status == ServingStatus::Serving as i32 {
                true => Ok(()),
                false => Err(tonic::Status::internal("not serving")),
            }),
        Call::Reflection => list_services(channel).await.map(drop),
        Call::ListNodes => pb::storage_service_client::StorageServiceClient::new(channel)
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .map(drop),
        Call::CreateNode => pb::storage_service_client::StorageServiceClient::new(channel)
            .create_node(pb::CreateNodeRequest {
                node: Some(pb::NodeDraft { content: "from grpc".into(), ..Default::default() }),
            })
            .await
            .map(drop),
        Call::Gateway => pb::gateway_service_client::GatewayServiceClient::new(channel)
            .get_health(pb::GetHealthRequest::default())
            .await
            .map(drop),
    };
    match result {
        Ok(()) => (Code::Ok, String::new()),
        Err(status) => {
            let code = status.metadata().get(helix_core::error::ERROR_CODE_METADATA);
            (status.code(), code.and_then(|c| c.to_str().ok()).unwrap_or_default().to_owned())
        }
    }
}

/// Whoever reaches the gRPC port without the fleet token may ask for health and
/// nothing else; with the wrong token, nothing else either.
async fn only_fleet_members_call_grpc(backend: Backend) -> anyhow::Result<()> {
    let env = TestEnv::new(backend).await?;
    let node = env.start(&Role::ALL).await?;
    let refused = (Code::Unauthenticated, "unauthenticated");
    let table = [
        (Call::Health, Token::None, (Code::Ok, "")),
        (Call::Health, Token::Wrong, (Code::Ok, "")),
        (Call::Health, Token::Right, (Code::Ok, "")),
        (Call::Reflection, Token::None, refused),
        (Call::Reflection, Token::Wrong, refused),
        (Call::Reflection, Token::Right, (Code::Ok, "")),
        (Call::ListNodes, Token::None, refused),
        (Call::ListNodes, Token::Wrong, refused),
        (Call::ListNodes, Token::Right, (Code::Ok, "")),
        (Call::CreateNode, Token::None, refused),
        (Call::CreateNode, Token::Wrong, refused),
        (Call::CreateNode, Token::Right, (Code::Ok, "")),
        (Call::Gateway, Token::None, refused),
        (Call::Gateway, Token::Wrong, refused),
        // through the check: the gateway's gRPC contract is not built yet
        (Call::Gateway, Token::Right, (Code::Unimplemented, "")),
    ];
    let right = env.config.grpc.token.clone();
    let wrong = Some(Secret::new("not-the-fleet-token-at-all"));
    for (call, token, (code, helix_code)) in table {
        let token = match token {
            Token::None => None,
            Token::Wrong => wrong.as_ref(),
            Token::Right => right.as_ref(),
        };
        let metrics = helix_runtime::metrics::Metrics::new();
        let channel = helix_runtime::grpc::connect(&node.grpc_url(), Duration::from_secs(30), metrics, token).await?;
        let got = check(channel, call).await;
        assert_eq!((got.0, got.1.as_str()), (code, helix_code), "{call:?} with {:?}", token.is_some());
    }
    // nothing the refused calls asked for happened
    let mut storage = pb::storage_service_client::StorageServiceClient::new(node.grpc_channel().await?);
    let page = storage.list_nodes(pb::ListNodesRequest::default()).await?.into_inner();
    assert_eq!(page.nodes.len(), 1, "only the call with the token created a node");
    node.stop().await;
    Ok(())
}

/// A listener holds at most `grpc.max_connections` connections: the next one waits
/// until one closes, and a connection that never speaks is not served in the meantime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_the_next_connection_back() -> anyhow::Result<()> {
    let mut env = TestEnv::new(Backend::Embedded).await?;
    env.config.grpc.max_connections = 1;
    let node = env.start(&[Role::Storage]).await?;
    let silent = tokio::net::TcpStream::connect(node.grpc_addr).await?;
    let mut health = HealthClient::new(node.grpc_channel().await?);
    let ask = || HealthCheckRequest { service: "helix.v1.StorageService".into() };
    let held = tokio::time::timeout(Duration::from_millis(300), health.check(ask())).await;
    assert!(held.is_err(), "served beyond the cap: {held:?}");
    drop(silent);
    let served = tokio::time::timeout(Duration::from_secs(5), health.check(ask())).await??.into_inner();
    assert_eq!(served.status, ServingStatus::Serving as i32);
    node.stop().await;
    Ok(())
}
