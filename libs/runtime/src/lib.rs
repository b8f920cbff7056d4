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
pub use helix_vault::Credentials;
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
    #[error("the credential vault cannot be opened, so this process does not start: {0}")]
    Vault(String),
    /// A listener could not be opened: which one, where, why, and the variable that moves it.
    #[error("{}", listen_message(*listener, *addr, io))]
    Listen { listener: Listener, addr: std::net::SocketAddr, io: std::io::Error },
}

/// The TCP listeners a Helix process opens, each moved by its own variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// the REST API (`hx up`, `hx serve gateway`)
    Gateway,
    /// every service's gRPC
    Grpc,
    /// `/metrics`, `/livez`, `/readyz`
    Metrics,
}

impl Listener {
    /// What a user calls it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Gateway => "REST gateway",
            Self::Grpc => "gRPC listener",
            Self::Metrics => "metrics/admin listener (/metrics, /livez, /readyz)",
        }
    }

    /// The environment variable that sets its address.
    pub fn variable(self) -> &'static str {
        match self {
            Self::Gateway => "HELIX_GATEWAY_ADDR",
            Self::Grpc => "HELIX_GRPC_ADDR",
            Self::Metrics => "HELIX_METRICS_ADDR",
        }
    }

    /// Its key in the configuration file.
    pub fn config_key(self) -> &'static str {
        match self {
            Self::Gateway => "gateway.addr",
            Self::Grpc => "grpc.addr",
            Self::Metrics => "metrics.addr",
        }
    }
}

/// Opens `listener` on `addr`; a failure names the listener, the address, why, and the
/// variable that moves it (a second `hx up` on the same machine, a port another program
/// holds).
pub async fn listen(listener: Listener, addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|io| Error::Listen { listener, addr, io })
}

fn listen_message(listener: Listener, addr: std::net::SocketAddr, io: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let why = match io.kind() {
        ErrorKind::AddrInUse => "the address is in use (another Helix, or another program, listens there)".to_owned(),
        ErrorKind::PermissionDenied => "not allowed (ports below 1024 need privileges)".to_owned(),
        ErrorKind::AddrNotAvailable => "this machine has no such address".to_owned(),
        _ => io.to_string(),
    };
    let mut free = addr;
    free.set_port(if addr.port() == 0 || addr.port() == u16::MAX { 0 } else { addr.port() + 1 });
    format!(
        "the {} cannot listen on {addr}: {why}. Set {variable} ({key} in the config file) to a free address, \
         e.g. {variable}={free}",
        listener.describe(),
        variable = listener.variable(),
        key = listener.config_key(),
    )
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
    /// Every credential a service reads: the environment first, then the vault opened
    /// once for the process ([`open_credentials`]).
    pub credentials: Credentials,
}

impl ServiceContext {
    /// A context whose bus is observed (metrics, spans) and checked by `/readyz`.
    pub fn new(config: HelixConfig, bus: Arc<dyn EventBus>, credentials: Credentials) -> Self {
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
            credentials,
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

/// The credentials of this process: the environment, then the vault of `config.home` and
/// `config.vault`, opened once here and shared by every service of the process. A
/// missing vault file is an empty vault; one that exists but cannot be opened (no key,
/// a wrong key or passphrase, a damaged file) is an error that names the file and what
/// to set.
pub fn open_credentials(config: &HelixConfig) -> Result<Credentials> {
    use helix_vault::{BlobError, VaultError};
    let vault = helix_vault::Vault::open(&config.home, &config.vault).map_err(|error| {
        let hint = match &error {
            VaultError::Sealed { source: BlobError::UnsupportedVersion(_), .. } => "",
            VaultError::Sealed { source: BlobError::WrongKeyOrAltered, .. } => {
                ". Set HELIX_VAULT_KEY_FILE or HELIX_VAULT_PASSPHRASE to what it was sealed with; if the file is \
                 damaged, restore it or move it away (HELIX_VAULT_PATH names another) to start with an empty vault"
            }
            VaultError::Sealed { .. } | VaultError::Payload { .. } | VaultError::Io { .. } => {
                ". Restore the file, or move it away (HELIX_VAULT_PATH names another) to start with an empty vault"
            }
            _ => "",
        };
        Error::Vault(format!("{error}{hint}"))
    })?;
    tracing::debug!(vault = %vault.path().display(), key = %vault.key_source(), exists = vault.exists(), "credential vault open");
    Ok(Credentials::new(Some(Arc::new(vault))))
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
    let credentials = open_credentials(&config)?;
    let token = grpc::fleet_token(&config, Some(config.grpc.addr), &credentials)?;
    config.grpc.token = Some(token.clone());
    let max_connections = config.grpc.max_connections;
    let bus = helix_events::connect(&config.events, grpc_service).await?;
    let listener = listen(Listener::Grpc, config.grpc.addr).await?;
    let admin_listener = listen(Listener::Metrics, config.metrics.addr).await?;
    let ctx = ServiceContext::new(config, bus, credentials);
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
