//! `/health` (is everything this gateway depends on answering?) and `/ready` (may this
//! gateway take traffic?).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use std::collections::BTreeMap;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::Json;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `degraded`
    pub status: &'static str,
    /// every dependency and what its check said: `ok`, or why not
    pub checks: BTreeMap<&'static str, String>,
    /// the dependencies whose check failed
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<&'static str>,
}

#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = Health, description = "names the failing dependencies")))]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let checks = run_checks(&state).await;
    let failing: Vec<_> = checks.iter().filter(|(_, v)| *v != "ok").map(|(k, _)| *k).collect();
    let (code, status) =
        if failing.is_empty() { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "degraded") };
    (code, Json(Health { status, checks, failing }))
}

/// Asks every service's gRPC health and the gateway's database, all at once, each
/// bounded by a timeout: dependency name → `ok` or why not.
pub async fn run_checks(state: &AppState) -> BTreeMap<&'static str, String> {
    let services = state.services.iter().map(|(name, grpc_name, channel)| async move {
        let mut client = HealthClient::new(channel.clone());
        let request = HealthCheckRequest { service: (*grpc_name).to_owned() };
        let verdict = match tokio::time::timeout(CHECK_TIMEOUT, client.check(request)).await {
            Ok(Ok(reply)) if reply.get_ref().status == ServingStatus::Serving as i32 => "ok".to_owned(),
            Ok(Ok(_)) => "not serving".to_owned(),
            Ok(Err(status)) => format!("unreachable: {}", status.message()),
            Err(_) => "timed out".to_owned(),
        };
        (*name, verdict)
    });
    let database = async {
        match state.keys.check().await {
            Ok(()) => ("database", "ok".to_owned()),
            Err(e) => ("database", e.message().to_owned()),
        }
    };
    let (mut checks, database) = tokio::join!(futures::future::join_all(services), database);
    checks.push(database);
    checks.into_iter().collect()
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    pub status: &'static str,
}

#[utoipa::path(get, path = "/ready", tag = "health",
    responses((status = 200, body = Ready), (status = 503, body = Ready)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Ready>) {
    match state.keys.check().await {
        Ok(()) => (StatusCode::OK, Json(Ready { status: "ready" })),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Json(Ready { status: "not ready" })),
    }
}
