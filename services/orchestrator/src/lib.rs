//! The orchestrator service: the workflow engine. Its contract is
//! `proto/helix/v1/orchestrator.proto`; task decomposition,
//! reasoning, swarms, feedback, event routing and reports answer UNIMPLEMENTED.
//!
//! - [`definition`]: workflows in TOML or JSON, validation (cycles named by their path,
//!   unknown references, bad interpolations) and waves (topological levels).
//! - [`expr`]: `{{var.x}}` / `{{result.step.field}}` interpolation and `when`/`while` conditions.
//! - [`store`]: workflows, executions, each step's result and the progress log in the
//!   service's database; changes announced as `helix.workflow.*` through the outbox.
//! - [`engine`]: durable runs under a lease, resumed after a restart without re-running
//!   finished steps; parallel steps, loops, retries, timeouts, quality gates, cancel.
//! - [`scheduler`]: named task graphs run by the engine, previews, the built-in templates.
//! - [`tasks`]: free-standing scheduler tasks driven by hand: ready, run, complete, fail.
//! - [`actions`]: wait, set, http, store, search, job, llm.generate, notify, workflow; the gates.

pub mod actions;
pub mod definition;
pub mod engine;
pub mod expr;
pub mod grpc;
pub mod scheduler;
pub mod store;
pub mod tasks;

use std::sync::Arc;

use helix_proto::v1::orchestrator_service_server::OrchestratorServiceServer;
use helix_runtime::db::Database;
use helix_runtime::{HelixConfig, ServiceContext};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub use grpc::OrchestratorApi;

pub const SERVICE: &str = "orchestrator";
pub const GRPC_SERVICE: &str = helix_proto::service_names::ORCHESTRATOR;

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// Brings this service's database schema up to date (`hx migrate`).
pub async fn migrate(config: &HelixConfig) -> helix_runtime::Result<()> {
    Database::connect(config, SERVICE).await?.migrate(&SQLITE, &POSTGRES).await
}

/// The orchestrator gRPC service, ready to be served; executions left running by an
/// earlier process resume.
pub async fn start(ctx: &ServiceContext) -> helix_runtime::Result<OrchestratorServiceServer<OrchestratorApi>> {
    let db = Database::open(ctx, SERVICE, &SQLITE, &POSTGRES).await?;
    let outbox = helix_runtime::outbox::Outbox::start(ctx, SERVICE, db.clone());
    let store = Arc::new(store::Store::new(db, outbox));
    let engine = engine::Engine::new(ctx, store)?;
    ctx.tasks.spawn(engine.clone().resume_loop());
    Ok(OrchestratorServiceServer::new(OrchestratorApi::new(engine, ctx.shutdown.clone(), ctx.tasks.clone())))
}

/// Runs the orchestrator service alone in this process until `shutdown` is cancelled.
pub async fn serve(config: HelixConfig, shutdown: CancellationToken) -> helix_runtime::Result<()> {
    helix_runtime::serve_alone(config, shutdown, GRPC_SERVICE, |ctx| async move {
        Ok(tonic::service::Routes::new(start(&ctx).await?))
    })
    .await
}
