//! The gateway: the one public door. It owns the REST API (`/api/v1/...`), API keys and
//! the OpenAPI document, and answers every request by calling the owning service over
//! gRPC — it keeps no knowledge of its own.

mod aliases;
mod audit;
mod auth;
mod edge;
mod error;
mod graph;
mod health;
mod jobs;
mod keys;
mod llm;
mod llm_admin;
mod nodes;
mod openapi;
mod pairing;
pub mod ratelimit;
mod scheduler;
mod scheduler_tasks;
pub mod scopes;
mod search;
mod secrets;
mod tower_log;
mod workflows;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{delete, get, post, put};
use helix_proto::service_names;
use helix_proto::v1::gateway_service_server::{GatewayService, GatewayServiceServer};
use helix_proto::v1::graph_service_client::GraphServiceClient;
use helix_proto::v1::jobs_service_client::JobsServiceClient;
use helix_proto::v1::llm_router_service_client::LlmRouterServiceClient;
use helix_proto::v1::orchestrator_service_client::OrchestratorServiceClient;
use helix_proto::v1::search_service_client::SearchServiceClient;
use helix_proto::v1::storage_service_client::StorageServiceClient;
use helix_runtime::config::GatewayConfig;
use helix_runtime::db::Database;
use helix_runtime::grpc::GrpcChannel;
use helix_runtime::metrics::Metrics;
use helix_runtime::{HelixConfig, ServiceContext};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use aliases::RouteAliases;
pub use audit::prune as prune_audit_log;
pub use auth::{KeyStore, Malformed, check_format, generate_key, write_key_file};
pub use edge::serve_http;
pub use error::{ErrorBody, ErrorDetail};
pub use nodes::{BulkCreated, NodeBody, NodeList};
use openapi::SharedResponses;

pub const SERVICE: &str = "gateway";
pub const GRPC_SERVICE: &str = service_names::GATEWAY;

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// Brings this service's database schema up to date (`hx migrate`).
pub async fn migrate(config: &HelixConfig) -> helix_runtime::Result<()> {
    Database::connect(config, SERVICE).await?.migrate(&SQLITE, &POSTGRES).await
}

/// What every handler can reach: the key store and a channel to each service.
#[derive(Clone)]
pub struct AppState {
    keys: KeyStore,
    audit: audit::AuditLog,
    bus: Arc<dyn helix_events::EventBus>,
    pair_throttle: pairing::ConfirmThrottle,
    storage: GrpcChannel,
    search: GrpcChannel,
    graph: GrpcChannel,
    jobs: GrpcChannel,
    /// with the LLM call deadline as its timeout, not the REST one: answers take minutes
    llm: GrpcChannel,
    orchestrator: GrpcChannel,
    /// for progress streams, which last as long as an execution
    orchestrator_stream: GrpcChannel,
    /// (name in /health, gRPC service name, channel) of every service the gateway calls
    services: Vec<(&'static str, &'static str, GrpcChannel)>,
    tower: Arc<tower_log::TowerLog>,
    started_at: chrono::DateTime<chrono::Utc>,
    /// the process's credentials, for `/api/v1/secrets`
    secrets: secrets::Secrets,
}

impl AppState {
    fn storage(&self) -> StorageServiceClient<GrpcChannel> {
        StorageServiceClient::new(self.storage.clone()).max_decoding_message_size(64 * 1024 * 1024)
    }

    fn graph(&self) -> GraphServiceClient<GrpcChannel> {
        GraphServiceClient::new(self.graph.clone()).max_decoding_message_size(64 * 1024 * 1024)
    }

    fn jobs(&self) -> JobsServiceClient<GrpcChannel> {
        JobsServiceClient::new(self.jobs.clone()).max_decoding_message_size(64 * 1024 * 1024)
    }

    fn llm(&self) -> LlmRouterServiceClient<GrpcChannel> {
        LlmRouterServiceClient::new(self.llm.clone()).max_decoding_message_size(64 * 1024 * 1024)
    }

    fn orchestrator(&self) -> OrchestratorServiceClient<GrpcChannel> {
        OrchestratorServiceClient::new(self.orchestrator.clone()).max_decoding_message_size(64 * 1024 * 1024)
    }

    fn orchestrator_stream(&self) -> OrchestratorServiceClient<GrpcChannel> {
        OrchestratorServiceClient::new(self.orchestrator_stream.clone())
    }

    fn search(&self) -> SearchServiceClient<GrpcChannel> {
        SearchServiceClient::new(self.search.clone()).max_decoding_message_size(64 * 1024 * 1024)
    }
}

/// The gateway's own gRPC API (pairing, keys, audit, ...): not built yet, every method
/// answers UNIMPLEMENTED.
pub struct GatewayApi;

impl GatewayService for GatewayApi {}

/// A started gateway: its REST router and its gRPC service, ready to be served.
pub struct Gateway {
    pub http: Router,
    pub grpc: GatewayServiceServer<GatewayApi>,
}

/// Opens the key store (creating the admin key on first start) and builds the router.
pub async fn start(ctx: &ServiceContext) -> helix_runtime::Result<Gateway> {
    let config = &ctx.config;
    let db = Database::open(ctx, SERVICE, &SQLITE, &POSTGRES).await?;
    let audit = audit::AuditLog::start(ctx, db.clone());
    let preset = config.gateway.admin_key.as_ref().map(|k| k.expose());
    let limiter = ratelimit::KeyLimiter::new(config.gateway.default_requests_per_minute, config.gateway.default_burst);
    let keys = KeyStore::new(db, ctx.bus.clone(), preset, limiter);
    match keys.bootstrap(preset).await? {
        auth::Bootstrap::Generated(key) => {
            let path = config.home.join("admin.key");
            auth::write_key_file(&path, &key)?;
            // stdout, once: the operator's only chance to see the key besides the file
            println!("admin key: {key}");
            tracing::info!(path = %path.display(), "created the admin key");
        }
        auth::Bootstrap::Preset => tracing::info!("admin key taken from configuration"),
        auth::Bootstrap::Existing => {}
    }

    let timeout = Duration::from_secs(config.gateway.request_timeout_secs);
    let connect = |url: &str| ctx.channel(url, timeout);
    let e = &config.endpoints;
    let storage = connect(&e.storage)?;
    let search = connect(&e.search)?;
    let graph = connect(&e.graph)?;
    let jobs = connect(&e.jobs)?;
    // the router's own deadline ends a call first; this only catches a router that hangs
    let llm_timeout = Duration::from_millis(config.llm.deadline_ms) + Duration::from_secs(10);
    let llm = ctx.channel(&e.llm_router, llm_timeout)?;
    let orchestrator = connect(&e.orchestrator)?;
    let orchestrator_stream = ctx.channel(&e.orchestrator, Duration::from_secs(24 * 3600))?;
    let services = vec![
        ("storage", service_names::STORAGE, storage.clone()),
        ("search", service_names::SEARCH, search.clone()),
        ("graph", service_names::GRAPH, graph.clone()),
        ("llm-router", service_names::LLM_ROUTER, llm.clone()),
        ("orchestrator", service_names::ORCHESTRATOR, orchestrator.clone()),
        ("jobs", service_names::JOBS, jobs.clone()),
        ("notifications", service_names::NOTIFICATIONS, connect(&e.notifications)?),
    ];
    let tower = Arc::new(tower_log::TowerLog::default());
    ctx.tasks.spawn(tower_log::follow(ctx.bus.clone(), tower.clone(), ctx.shutdown.clone()));
    ctx.tasks.spawn(auth::follow(keys.clone(), ctx.shutdown.clone()));
    let state = AppState {
        keys,
        audit,
        bus: ctx.bus.clone(),
        pair_throttle: pairing::ConfirmThrottle::default(),
        storage,
        search,
        graph,
        jobs,
        llm,
        orchestrator,
        orchestrator_stream,
        services,
        tower,
        started_at: chrono::Utc::now(),
        secrets: secrets::Secrets::new(config, ctx.credentials.clone()),
    };
    let http = router(state, &config.gateway, ctx.metrics.clone());
    Ok(Gateway { http, grpc: GatewayServiceServer::new(GatewayApi) })
}

/// The REST API: every route, then the edge's middleware (`edge::layers`).
pub fn router(state: AppState, config: &GatewayConfig, metrics: Arc<Metrics>) -> Router {
    let api = Router::new()
        .route("/api/v1/keys", post(keys::create).get(keys::list))
        .route("/api/v1/keys/{id}", get(keys::get).delete(keys::revoke))
        .route("/api/v1/keys/{id}/rotate", post(keys::rotate))
        .route("/api/v1/pair/initiate", post(pairing::initiate))
        .route("/api/v1/pair/confirm", post(pairing::confirm))
        .route("/api/v1/nodes", post(nodes::create).get(nodes::list))
        .route("/api/v1/nodes/bulk", post(nodes::bulk_create))
        .route("/api/v1/nodes/{id}", get(nodes::get).put(nodes::update).delete(nodes::delete))
        .route("/api/v1/recall", get(nodes::recall))
        .route("/api/v1/search", post(search::search).get(search::search_get))
        .route("/api/search", post(search::search))
        .route("/api/v1/search/suggest", get(search::suggest))
        .route("/api/v1/search/similar/{id}", get(search::similar))
        .route("/api/v1/search/reindex", post(search::reindex))
        .route("/api/v1/search/index", post(search::index_documents))
        .route("/api/v1/search/index/{id}", delete(search::remove_document))
        .route("/api/v1/search/stats", get(search::stats))
        .route("/api/v1/graph/edges", post(graph::create_edge).get(graph::list_edges))
        .route("/api/v1/graph/edges/{id}", get(graph::get_edge).delete(graph::delete_edge))
        .route("/api/v1/graph/export", get(graph::export))
        .route("/api/v1/graph/path", get(graph::path))
        .route("/api/v1/graph/stats", get(graph::stats))
        .route("/api/v1/graph/traverse", post(graph::traverse))
        .route("/api/v1/graph/nodes", put(graph::upsert_nodes))
        .route("/api/v1/graph/nodes/{id}", delete(graph::remove_node))
        .route("/api/v1/graph/{id}", get(graph::neighborhood))
        .route("/api/v1/jobs", post(jobs::enqueue).get(jobs::list))
        .route("/api/v1/jobs/bulk", post(jobs::enqueue_bulk))
        .route("/api/v1/jobs/stats", get(jobs::stats))
        .route("/api/v1/jobs/dead-letter", get(jobs::dead_letter))
        .route("/api/v1/jobs/purge", post(jobs::purge))
        .route("/api/v1/jobs/schedules", post(jobs::create_schedule).get(jobs::list_schedules))
        .route(
            "/api/v1/jobs/schedules/{id}",
            get(jobs::get_schedule).put(jobs::update_schedule).delete(jobs::delete_schedule),
        )
        .route("/api/v1/jobs/schedules/{id}/trigger", post(jobs::trigger_schedule))
        .route("/api/v1/jobs/{id}", get(jobs::get))
        .route("/api/v1/jobs/{id}/retry", post(jobs::retry))
        .route("/api/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/v1/workflows", post(workflows::create).get(workflows::list))
        .route("/api/v1/workflows/validate", post(workflows::validate))
        .route("/api/v1/workflows/executions", get(workflows::list_executions))
        .route("/api/v1/workflows/executions/{id}", get(workflows::get_execution))
        .route("/api/v1/workflows/executions/{id}/cancel", post(workflows::cancel_execution))
        .route("/api/v1/workflows/executions/{id}/progress", get(workflows::progress))
        .route("/api/v1/workflows/{id}", get(workflows::get).put(workflows::update).delete(workflows::delete))
        .route("/api/v1/workflows/{id}/execute", post(workflows::execute))
        .route("/api/scheduler/executions", get(workflows::list_executions))
        .route("/api/scheduler/executions/{id}", get(workflows::get_execution))
        .route("/api/scheduler/executions/{id}/cancel", post(workflows::cancel_execution))
        .route("/api/scheduler/executions/{id}/progress", get(workflows::progress))
        .route("/api/v1/scheduler/workflows", post(scheduler::create).get(scheduler::list))
        .route("/api/scheduler/workflows", post(scheduler::create).get(scheduler::list))
        .route("/api/v1/scheduler/workflows/{name}", get(scheduler::get).delete(scheduler::delete))
        .route("/api/scheduler/workflows/{name}", get(scheduler::get).delete(scheduler::delete))
        .route("/api/v1/scheduler/workflows/{name}/preview", post(scheduler::preview))
        .route("/api/scheduler/workflows/{name}/preview", post(scheduler::preview))
        .route("/api/v1/scheduler/workflows/{name}/run", post(scheduler::run))
        .route("/api/scheduler/workflows/{name}/run", post(scheduler::run))
        .route("/api/v1/scheduler/templates", get(scheduler::templates))
        .route("/api/scheduler/templates", get(scheduler::templates))
        .route("/api/v1/scheduler/templates/{name}/preview", post(scheduler::preview_template))
        .route("/api/scheduler/templates/{name}/preview", post(scheduler::preview_template))
        .route("/api/v1/scheduler/templates/{name}/instantiate", post(scheduler::instantiate))
        .route("/api/scheduler/templates/{name}/instantiate", post(scheduler::instantiate))
        .route("/api/v1/scheduler/tasks", post(scheduler_tasks::add))
        .route("/api/v1/scheduler/tasks/ready", get(scheduler_tasks::ready))
        .route("/api/v1/scheduler/tasks/waves", get(scheduler_tasks::waves))
        .route("/api/scheduler/waves", get(scheduler_tasks::waves))
        .route("/api/v1/scheduler/tasks/{id}", get(scheduler_tasks::get))
        .route("/api/v1/scheduler/tasks/{id}/run", post(scheduler_tasks::run))
        .route("/api/v1/scheduler/tasks/{id}/complete", post(scheduler_tasks::complete))
        .route("/api/v1/scheduler/tasks/{id}/fail", post(scheduler_tasks::fail))
        .route("/api/v1/scheduler/stats", get(scheduler_tasks::stats))
        .route("/api/scheduler/stats", get(scheduler_tasks::stats))
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/v1/chat/completions", post(llm::chat_completions))
        .route("/v1/messages", post(llm::messages))
        .route("/v1/models", get(llm::models))
        .route("/api/generate", post(llm::generate))
        .route("/api/budget", get(llm::budget))
        .route("/v1/embeddings", post(llm::embeddings))
        .route("/api/v1/rate-limits", get(llm_admin::rate_limits).put(llm_admin::set_rate_limit))
        .route("/api/v1/llm/budget", get(llm_admin::get_budget).put(llm_admin::set_budget))
        .route("/api/v1/llm/usage", get(llm_admin::usage))
        .route("/api/analytics/dashboard", get(llm_admin::dashboard))
        .route("/api/analytics/trends", get(llm_admin::trends))
        .route("/api/analytics/providers", get(llm_admin::providers))
        .route("/api/analytics/token-usage", get(llm_admin::token_usage))
        .route("/api/board", get(tower_log::board))
        .route("/tower", get(tower_log::tower))
        .route("/api/v1/audit/query", get(audit::query))
        .route("/api/v1/secrets", get(secrets::list))
        .route("/api/v1/secrets/status", get(secrets::status))
        .route("/api/v1/secrets/{key}", get(secrets::get).put(secrets::put).delete(secrets::delete))
        .route_layer(axum::middleware::from_fn_with_state(state.keys.clone(), auth::require_key));
    let routes = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .merge(api)
        // outside every route's own layers (the key check among them), so it sees their refusals
        .route_layer(axum::middleware::from_fn_with_state(state.audit.clone(), audit::record))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed);
    edge::layers(routes, config, metrics).with_state(state)
}

/// Runs the gateway alone in this process: REST on `gateway.addr`, gRPC on `grpc.addr`.
pub async fn serve(config: HelixConfig, shutdown: CancellationToken) -> helix_runtime::Result<()> {
    let http_listener = helix_runtime::listen(helix_runtime::Listener::Gateway, config.gateway.addr).await?;
    let rest = shutdown.clone();
    helix_runtime::serve_alone(config, shutdown, GRPC_SERVICE, |ctx| async move {
        let gateway = start(&ctx).await?;
        tracing::info!(addr = %http_listener.local_addr()?, "serving rest");
        let edge = ctx.config.gateway.clone();
        ctx.tasks.spawn(async move {
            if let Err(error) = serve_http(http_listener, gateway.http, &edge, rest).await {
                tracing::error!(%error, "rest server failed");
            }
        });
        Ok(tonic::service::Routes::new(gateway.grpc))
    })
    .await
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Helix", description = "The Helix REST API, served by the gateway."),
    paths(
        health::health, health::ready,
        keys::create, keys::list, keys::get, keys::revoke, keys::rotate, pairing::initiate, pairing::confirm,
        nodes::create, nodes::bulk_create, nodes::get, nodes::update, nodes::delete, nodes::list, nodes::recall,
        tower_log::tower, tower_log::board, search::search, search::search_get, search::suggest, search::similar, search::reindex,
        search::index_documents, search::remove_document, search::stats,
        graph::create_edge, graph::get_edge, graph::delete_edge, graph::list_edges, graph::neighborhood, graph::export,
        graph::path, graph::stats, graph::traverse, graph::upsert_nodes, graph::remove_node,
        jobs::enqueue, jobs::enqueue_bulk, jobs::list, jobs::stats, jobs::dead_letter, jobs::purge, jobs::get, jobs::retry, jobs::cancel,
        jobs::create_schedule, jobs::list_schedules, jobs::get_schedule, jobs::update_schedule, jobs::delete_schedule,
        jobs::trigger_schedule,
        llm::chat_completions, llm::messages, llm::models, llm::generate, llm::budget, llm::embeddings,
        llm_admin::rate_limits, llm_admin::set_rate_limit, llm_admin::get_budget, llm_admin::set_budget,
        llm_admin::usage, llm_admin::dashboard, llm_admin::trends, llm_admin::providers, llm_admin::token_usage,
        workflows::create, workflows::validate, workflows::list, workflows::get, workflows::update, workflows::delete,
        workflows::execute, workflows::list_executions, workflows::get_execution, workflows::cancel_execution,
        workflows::progress,
        scheduler::create, scheduler::list, scheduler::get, scheduler::delete, scheduler::preview, scheduler::run,
        scheduler::templates, scheduler::preview_template, scheduler::instantiate,
        scheduler_tasks::add, scheduler_tasks::get, scheduler_tasks::ready, scheduler_tasks::run,
        scheduler_tasks::complete, scheduler_tasks::fail, scheduler_tasks::waves, scheduler_tasks::stats,
        audit::query,
        secrets::list, secrets::status, secrets::get, secrets::put, secrets::delete,
        openapi_json,
    ),
    // the data of server-sent events, which no operation names as its body
    components(schemas(search::ReindexProgress, workflows::ProgressBody)),
    modifiers(&BearerAuth, &SharedResponses, &RouteAliases),
    tags((name = "keys", description = "API keys and device pairing"), (name = "audit", description = "who did what, and every refused credential"), (name = "secrets", description = "the credentials Helix reads: where each comes from, the vault"), (name = "nodes", description = "knowledge nodes"), (name = "health"), (name = "search"), (name = "graph"), (name = "jobs", description = "the durable job queue"), (name = "llm", description = "OpenAI- and Anthropic-compatible LLM calls, budget"), (name = "workflows", description = "the workflow engine: definitions, executions, progress"), (name = "scheduler", description = "named task graphs and templates: preview and run with the workflow engine; free-standing tasks driven by hand"), (name = "observability"), (name = "meta"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The OpenAPI 3.1 document of this API, generated from the handlers' types.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI 3.1 document")), security(("bearer" = [])))]
pub async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
