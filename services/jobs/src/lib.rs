//! The jobs service: the durable job queue (priority, retry with backoff, dead-letter,
//! cancel, purge, stats) and the worker protocol. Its contract is
//! `proto/helix/v1/jobs.proto`.
//!
//! - **The database is the queue** ([`store`]): SQLite in the embedded default,
//!   PostgreSQL in the fleet, where any number of replicas share it (leases take rows
//!   `FOR UPDATE SKIP LOCKED`). Every state change is one guarded UPDATE with its event
//!   (`helix.job.*`) in the outbox of the same transaction.
//! - **Leases with fencing.** A worker leases jobs for 15 s and heartbeats; each lease
//!   bumps the job's `attempt`, the token the worker must send back: a worker whose
//!   lease lapsed cannot complete, fail or extend the job afterwards.
//! - **The reaper** ([`reap`]) runs on every replica every second and puts jobs whose
//!   lease lapsed back in their queue (counting a failed attempt), or in the dead-letter
//!   queue when that was their last.
//! - **Schedules** ([`schedule`]): cron expressions or intervals; every replica ticks
//!   each second and a tick fires once, claimed by a conditional UPDATE.
//! - **Workers** ([`worker`]) lease over gRPC, in any process: `hx worker`, or the
//!   in-process worker a jobs service starts for `jobs.worker_kinds` (the built-in
//!   `echo`, `sleep`, `fail`, `http.request`).

pub mod grpc;
pub mod job;
pub mod schedule;
pub mod store;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use helix_proto::v1::jobs_service_server::JobsServiceServer;
use helix_runtime::db::Database;
use helix_runtime::{HelixConfig, ServiceContext};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub use grpc::JobsApi;
pub use store::JobStore;

/// The name events carry as their source and the health service reports.
pub const SERVICE: &str = "jobs";
pub const GRPC_SERVICE: &str = helix_proto::service_names::JOBS;

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// How often the reaper looks for lapsed leases. With the 15 s default lease, a dead
/// worker's jobs run again within about 16 s.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Brings this service's database schema up to date (`hx migrate`).
pub async fn migrate(config: &HelixConfig) -> helix_runtime::Result<()> {
    Database::connect(config, SERVICE).await?.migrate(&SQLITE, &POSTGRES).await
}

/// Opens the queue, starts the outbox relay and the reaper on the context's tasks.
pub async fn open(ctx: &ServiceContext) -> helix_runtime::Result<Arc<JobStore>> {
    let db = Database::open(ctx, SERVICE, &SQLITE, &POSTGRES).await?;
    let outbox = helix_runtime::outbox::Outbox::start(ctx, SERVICE, db.clone());
    let store = JobStore::new(db, outbox);
    ctx.tasks.spawn(reap(store.clone(), ctx.shutdown.clone()));
    ctx.tasks.spawn(tick(store.clone(), ctx.shutdown.clone()));
    Ok(store)
}

/// The jobs gRPC service, ready to be served, and its in-process worker for
/// `jobs.worker_kinds` (none when the list is empty).
pub async fn start(ctx: &ServiceContext) -> helix_runtime::Result<JobsServiceServer<JobsApi>> {
    let store = open(ctx).await?;
    let kinds = &ctx.config.jobs.worker_kinds;
    if !kinds.is_empty() {
        let handlers = worker::builtin(kinds, &ctx.config.outbound).map_err(helix_runtime::Error::Config)?;
        // through gRPC like any worker: the in-process link when this process serves
        // the jobs API (it does: it is starting it), so one code path for all workers
        let channel = ctx.channel(&ctx.config.endpoints.jobs, Duration::from_secs(60))?;
        let mut options = worker::WorkerOptions::new(format!("{}-builtin", worker::default_worker_id()));
        options.concurrency = ctx.config.jobs.worker_concurrency as usize;
        ctx.tasks.spawn(worker::run(channel, options, handlers, ctx.shutdown.clone(), ctx.tasks.clone()));
    }
    Ok(JobsServiceServer::new(JobsApi::new(store)))
}

/// Rescues lapsed leases every [`REAP_EVERY`] until `shutdown`.
async fn reap(store: Arc<JobStore>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REAP_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
        loop {
            match store.reap().await {
                Ok(n) if n >= store::REAP_BATCH as usize => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "reaping lapsed leases failed, will retry");
                    break;
                }
            }
        }
    }
}

/// Fires due schedules every second until `shutdown`; every replica does, and each
/// tick fires once (see [`schedule`]).
async fn tick(store: Arc<JobStore>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return,
        }
        if let Err(error) = store.fire_due().await {
            tracing::warn!(%error, "firing schedules failed, will retry");
        }
    }
}

/// Runs the jobs service alone in this process until `shutdown` is cancelled.
pub async fn serve(config: HelixConfig, shutdown: CancellationToken) -> helix_runtime::Result<()> {
    helix_runtime::serve_alone(config, shutdown, GRPC_SERVICE, |ctx| async move {
        Ok(tonic::service::Routes::new(start(&ctx).await?))
    })
    .await
}
