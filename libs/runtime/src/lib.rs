//! What every Helix service runs on, whichever process it lives in: the configuration,
//! the [`ServiceContext`] handed to each service, gRPC serving with health and
//! reflection, and database pools.
//!
//! A service crate never opens its own listener or bus: it receives a context and
//! returns its tonic routes, so the same code runs alone (`hx serve storage`) or beside
//! the other seven (`hx up`).

pub mod admin;
pub mod config;
pub mod db;
pub mod grpc;
pub mod metrics;
pub mod outbound;
pub mod outbox;

use std::sync::Arc;

use helix_events::EventBus;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::HelixConfig;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a service could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("event bus: {0}")]
    Events(#[from] helix_events::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Service(#[from] helix_core::Error),
}

/// Everything a service needs from the process it runs in. Background work a service
/// starts goes on `tasks` and must end when `shutdown` is cancelled, so whoever started
/// the service can wait for it to finish.
#[derive(Clone)]
pub struct ServiceContext {
    pub config: Arc<HelixConfig>,
    pub bus: Arc<dyn EventBus>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    /// How services of this process reach each other without sockets, when several run here.
    pub local: Option<grpc::LocalLink>,
    /// One registry for every service of the process, served on the admin listener.
    pub metrics: Arc<metrics::Metrics>,
    /// What `/readyz` checks.
    pub readiness: admin::Readiness,
}

impl ServiceContext {
    /// A context whose bus is observed (metrics, spans) and checked by `/readyz`.
    pub fn new(config: HelixConfig, bus: Arc<dyn EventBus>) -> Self {
        let metrics = metrics::Metrics::new();
        let bus = metrics::ObservedBus::wrap(bus, metrics.clone());
        let readiness = admin::Readiness::default();
        let checked = bus.clone();
        readiness.add("event bus", move || {
            let bus = checked.clone();
            Box::pin(async move { bus.check().await.map_err(|e| e.to_string()) })
        });
        Self {
            config: Arc::new(config),
            bus,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            local: None,
            metrics,
            readiness,
        }
    }

    /// A gRPC channel to the service at `endpoint` (a URL, or [`grpc::IN_PROCESS`]),
    /// carrying the fleet token of the configuration.
    pub fn channel(&self, endpoint: &str, request_timeout: std::time::Duration) -> Result<grpc::GrpcChannel> {
        let token = self.config.grpc.token.as_ref();
        grpc::channel(endpoint, self.local.as_ref(), request_timeout, self.metrics.clone(), token)
    }

    /// Cancels every task of this context and waits for them to end.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Runs one service alone in this process: its own bus connection, its gRPC server on
/// `config.grpc.addr` (demanding the fleet token, see [`grpc::fleet_token`]), until
/// `shutdown` is cancelled. `hx up` composes services itself; this is the entry each
/// service crate's `serve` uses.
pub async fn serve_alone<F, Fut>(
    mut config: HelixConfig,
    shutdown: tokio_util::sync::CancellationToken,
    grpc_service: &'static str,
    start: F,
) -> Result<()>
where
    F: FnOnce(ServiceContext) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::service::Routes>>,
{
    let token = grpc::fleet_token(&config, Some(config.grpc.addr))?;
    config.grpc.token = Some(token.clone());
    let max_connections = config.grpc.max_connections;
    let bus = helix_events::connect(&config.events, grpc_service).await?;
    let listener = tokio::net::TcpListener::bind(config.grpc.addr).await?;
    let admin_listener = tokio::net::TcpListener::bind(config.metrics.addr).await?;
    let ctx = ServiceContext::new(config, bus);
    let routes = start(ctx.clone()).await?;
    admin::spawn(&ctx, admin_listener);
    tracing::info!(service = grpc_service, addr = %listener.local_addr()?, "serving grpc");
    let served = match grpc::GrpcRouter::new(routes, &[grpc_service], ctx.metrics.clone()).await {
        Ok(router) => router.serve(listener, &token, max_connections, shutdown).await,
        Err(error) => Err(error),
    };
    ctx.stop().await;
    served
}
