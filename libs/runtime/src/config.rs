//! Configuration in layers: compiled defaults, then the TOML file (`HELIX_CONFIG`, or
//! `HELIX_HOME/helix.toml` when it exists), then `HELIX_*` environment variables.
//! Every field has a default, so no file and no variable is a valid configuration.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use helix_events::EventsConfig;
use helix_telemetry::LogConfig;
use serde::Deserialize;

use crate::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HelixConfig {
    /// Data directory: SQLite files, the admin key, local indexes.
    pub home: PathBuf,
    /// `postgres://...` for the fleet; unset means one SQLite file per service under `home`.
    pub database_url: Option<String>,
    /// Run each service's migrations when it starts. A deployment that runs `hx migrate`
    /// once per release (the Helm hook) turns this off.
    pub migrate: bool,
    /// Qdrant's gRPC URL for the search service's vectors; unset means the embedded index.
    pub qdrant_url: Option<String>,
    pub metrics: MetricsConfig,
    pub events: EventsConfig,
    pub log: LogConfig,
    pub grpc: GrpcConfig,
    pub gateway: GatewayConfig,
    pub search: SearchConfig,
    pub jobs: JobsConfig,
    pub llm: LlmConfig,
    pub outbound: OutboundConfig,
    /// The credential vault: where it is and what opens it (`[vault]`).
    pub vault: helix_vault::VaultConfig,
    /// Where each service's gRPC API is reached. Services running in this process
    /// override these with their own bound address.
    pub endpoints: Endpoints,
}

/// The search service's ranking and embedder.
///
/// The embedder settings mirror `helix_embed::EmbedConfig` field for field; they are
/// kept here, not imported, so that every service's configuration does not wait for
/// the model runtime to compile.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// The `k` of reciprocal rank fusion in hybrid search: 1/(k + rank). 60 is the
    /// value of the RRF paper and of Qdrant.
    pub rrf_k: f64,
    /// Vector neighbours less similar than this (cosine) are not hits, in semantic and
    /// hybrid search alike: without a floor every node is somebody's neighbour, and a
    /// search for anything finds everything. 0.2 suits MiniLM; 0 keeps them all.
    pub min_similarity: f64,
    /// Directory of the local model (model.safetensors, config.json, tokenizer.json).
    /// Unset: `HELIX_HOME/models/all-minilm-l6-v2` when it holds one, else the lexical
    /// hashing embedder.
    pub model_dir: Option<PathBuf>,
    /// An OpenAI-compatible embeddings endpoint, used instead of the local model.
    pub openai: Option<OpenAiEmbeddings>,
    /// With `qdrant_url`: the collection's name before the embedder suffix
    /// (`<name>_<embedder>_<dim>`), so deployments sharing a Qdrant stay apart.
    pub qdrant_collection: String,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            rrf_k: 60.0,
            min_similarity: 0.2,
            model_dir: None,
            openai: None,
            qdrant_collection: "helix_nodes".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiEmbeddings {
    /// Base URL up to the API version, e.g. `https://api.openai.com/v1`.
    pub url: String,
    pub model: String,
    /// The environment variable holding the API key (never the key itself).
    pub api_key_env: Option<String>,
    /// The vectors' dimension when known; else learnt from a first request.
    pub dim: Option<usize>,
}

/// The jobs service's own worker, which runs the built-in kinds beside the queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// The kinds the in-process worker of a jobs service runs; empty runs none (every
    /// job then waits for an external worker, `hx worker`).
    pub worker_kinds: Vec<String>,
    /// Jobs the in-process worker runs at once.
    pub worker_concurrency: u32,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            worker_kinds: ["echo", "sleep", "fail", "http.request"].map(str::to_owned).to_vec(),
            worker_concurrency: 8,
        }
    }
}

/// The llm-router: providers, routing, timeouts, budget. Provider keys come from the
/// environment variables each provider's SDK reads (`OPENAI_API_KEY`, ...); the router
/// owns that table, this is only what a deployment overrides.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// Spending cap per UTC day over every provider, in USD (`HELIX_DAILY_BUDGET`).
    pub daily_budget_usd: f64,
    /// `downgrade` (to a cheaper model that fits) or `reject` (402) when a call does not
    /// fit in the budget (`HELIX_BUDGET_ACTION`).
    pub budget_action: String,
    /// A model without a price: `reject` it, or `downgrade` to the provider's cheapest
    /// priced model. Never counted as free.
    pub unpriced_action: String,
    /// The model for calls that name none, `provider/model` or an alias.
    pub default_model: Option<String>,
    /// A pricing table (TOML) replacing the built-in one.
    pub pricing_file: Option<PathBuf>,
    /// Longest wait for a provider's response head or first chunk, per attempt.
    pub attempt_timeout_ms: u64,
    /// Longest a whole call may take, retries and fallbacks included; a request's own
    /// `timeout_ms` may shorten it.
    pub deadline_ms: u64,
    /// Longest silence between two chunks of a stream.
    pub stream_idle_timeout_ms: u64,
    /// Retries of one provider on 429, 5xx, timeouts and refused connections.
    pub max_retries: u32,
    /// Backoff: full jitter over `retry_base_ms * 2^attempt`, capped at `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Consecutive failures that open a provider's circuit, and how long it stays open
    /// before one probe call may try it again.
    pub breaker_failures: u32,
    pub breaker_cooldown_ms: u64,
    /// Overrides per provider, by name (`openai`, `anthropic`, ...); a name the router
    /// does not know is a custom endpoint and needs `base_url`.
    pub providers: BTreeMap<String, LlmProviderConfig>,
    /// Model names that route to several `provider/model` targets by a policy.
    pub aliases: BTreeMap<String, LlmAlias>,
    /// The model of embedding calls that name none (`/v1/embeddings` without `model`).
    pub embedding_model: String,
    /// Daily caps in USD per API key id (`[llm.key_budgets] <key id> = 5.0`), on top of
    /// the global cap; `PUT /api/v1/llm/budget` changes them at run time.
    pub key_budgets: BTreeMap<String, f64>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            daily_budget_usd: 100.0,
            budget_action: "downgrade".to_owned(),
            unpriced_action: "reject".to_owned(),
            default_model: None,
            pricing_file: None,
            attempt_timeout_ms: 60_000,
            deadline_ms: 300_000,
            stream_idle_timeout_ms: 60_000,
            max_retries: 2,
            retry_base_ms: 250,
            retry_max_ms: 8_000,
            breaker_failures: 5,
            breaker_cooldown_ms: 30_000,
            providers: BTreeMap::new(),
            aliases: BTreeMap::new(),
            embedding_model: "openai/text-embedding-3-small".to_owned(),
            key_budgets: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmProviderConfig {
    /// Replaces the default base URL and the SDK's variable (`OPENAI_BASE_URL`, ...).
    pub base_url: Option<String>,
    /// The environment variable holding the key, instead of the provider's usual one.
    pub api_key_env: Option<String>,
    /// The key itself; prefer `api_key_env` (a file is easier to leak than a variable).
    pub api_key: Option<Secret>,
    /// The wire protocol of a custom endpoint: `openai` (default) or `anthropic`.
    pub protocol: Option<String>,
    pub enabled: Option<bool>,
    /// Lower is tried first when a call names no provider.
    pub priority: Option<u32>,
    pub default_model: Option<String>,
    /// Cloudflare's account id (else `CLOUDFLARE_ACCOUNT_ID`).
    pub account_id: Option<String>,
    /// Request limits the router enforces before calling this provider (token buckets;
    /// unset or 0: none). `burst` is the minute bucket's size (default: the per-minute
    /// limit). `PUT /api/v1/rate-limits` overrides them at run time.
    pub requests_per_minute: Option<u32>,
    pub requests_per_hour: Option<u32>,
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmAlias {
    /// `fallback` (in order), `weighted` (random by `weights`, then the rest in
    /// order), `cheapest` (by price) or `latency` (lowest observed first).
    #[serde(default = "default_alias_policy")]
    pub policy: String,
    /// `provider/model` names
    pub targets: Vec<String>,
    #[serde(default)]
    pub weights: Vec<u32>,
}

fn default_alias_policy() -> String {
    "fallback".to_owned()
}

/// The admin HTTP listener every process has: `/metrics`, `/livez`, `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub addr: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { addr: DEFAULT_METRICS_ADDR.parse().expect("valid default address") }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    pub addr: SocketAddr,
    /// The fleet token every gRPC call between services carries (`authorization: Bearer`)
    /// and every gRPC server demands on its TCP listener. Unset with `token_file` unset:
    /// `hx up` generates one into `HELIX_HOME/grpc.token` (0600) at first start.
    pub token: Option<Secret>,
    /// A file holding the fleet token (a mounted Kubernetes Secret); read at start.
    pub token_file: Option<PathBuf>,
    /// Connections a gRPC listener holds at most; more wait in the kernel's backlog.
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub addr: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Seconds a request may take before it is answered 504.
    pub request_timeout_secs: u64,
    /// Preset admin key (a Kubernetes Secret); otherwise one is generated on first start.
    pub admin_key: Option<Secret>,
    /// `development` lets any origin call the API from a browser; `production` only
    /// `cors_origins` (`HELIX_ENV`).
    pub env: DeployEnv,
    /// Origins allowed in production (`HELIX_CORS_ORIGINS`, comma-separated).
    pub cors_origins: Vec<String>,
    /// Requests handled at once; beyond it a request is answered 503 with Retry-After
    /// at once instead of queueing without bound.
    pub concurrency_limit: usize,
    /// Connections the REST listener holds at most; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers, counted from the moment the
    /// connection waits for them: also how long a kept-alive connection may stay idle
    /// between requests, and the bound of a TLS handshake.
    pub header_timeout_secs: u64,
    /// Seconds a request's body may pause between two chunks before the request fails
    /// (400); an unsent body does not hold a connection longer.
    pub idle_timeout_secs: u64,
    /// Requests per minute of a key that has no limit of its own (0: unlimited); the
    /// bucket holds `default_burst`.
    pub default_requests_per_minute: u32,
    pub default_burst: u32,
    /// Days the audit log keeps an entry.
    pub audit_retention_days: u32,
    /// Write the audit log (every mutating call and every refused credential).
    pub audit: bool,
    /// PEM certificate chain and key: the gateway serves HTTPS itself (rustls), for a
    /// LAN without an ingress. Both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// Where a deployment runs, which decides how permissive its browser-facing edges are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployEnv {
    #[default]
    Development,
    Production,
}

impl std::str::FromStr for DeployEnv {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "development" | "dev" => Ok(Self::Development),
            "production" | "prod" => Ok(Self::Production),
            other => Err(format!("{other:?} is neither development nor production")),
        }
    }
}

/// Where outbound HTTP made on a user's behalf may go (the `http.request` job kind,
/// workflow `http` steps, outbound webhooks): public addresses only, unless listed here.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundConfig {
    /// Allow loopback, private, link-local and other non-public addresses (a
    /// single-user laptop may want its own services reachable).
    pub allow_private_networks: bool,
    /// `host` or `host:port` entries reachable even when they resolve to a non-public
    /// address (`HELIX_OUTBOUND_ALLOW`, comma-separated).
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Endpoints {
    pub storage: String,
    pub search: String,
    pub graph: String,
    pub llm_router: String,
    pub orchestrator: String,
    pub jobs: String,
    pub notifications: String,
    pub gateway: String,
}

/// A value that never appears in logs or debug output.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50051";
pub const DEFAULT_GATEWAY_ADDR: &str = "127.0.0.1:9470";
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

impl Default for HelixConfig {
    fn default() -> Self {
        Self {
            home: default_home(),
            database_url: None,
            migrate: true,
            qdrant_url: None,
            metrics: MetricsConfig::default(),
            events: EventsConfig::default(),
            log: LogConfig::default(),
            grpc: GrpcConfig::default(),
            gateway: GatewayConfig::default(),
            search: SearchConfig::default(),
            jobs: JobsConfig::default(),
            llm: LlmConfig::default(),
            outbound: OutboundConfig::default(),
            vault: helix_vault::VaultConfig::default(),
            endpoints: Endpoints::default(),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            addr: DEFAULT_GRPC_ADDR.parse().expect("valid default address"),
            token: None,
            token_file: None,
            max_connections: 4096,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            addr: DEFAULT_GATEWAY_ADDR.parse().expect("valid default address"),
            max_body_bytes: 4 * 1024 * 1024,
            request_timeout_secs: 30,
            admin_key: None,
            env: DeployEnv::Development,
            cors_origins: Vec::new(),
            concurrency_limit: 1024,
            max_connections: 20_000,
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
            default_requests_per_minute: 0,
            default_burst: 100,
            audit_retention_days: 90,
            audit: true,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Default for Endpoints {
    fn default() -> Self {
        let local = format!("http://{DEFAULT_GRPC_ADDR}");
        Self {
            storage: local.clone(),
            search: local.clone(),
            graph: local.clone(),
            llm_router: local.clone(),
            orchestrator: local.clone(),
            jobs: local.clone(),
            notifications: local.clone(),
            gateway: local,
        }
    }
}

fn default_home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".helix")
}

/// Every environment variable Helix reads, and the field it sets.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("HELIX_HOME", "home"),
    ("HELIX_CONFIG", "path of the TOML file"),
    ("HELIX_DATABASE_URL", "database_url"),
    ("HELIX_MIGRATE", "migrate"),
    ("HELIX_QDRANT_URL", "qdrant_url"),
    ("HELIX_METRICS_ADDR", "metrics.addr"),
    ("HELIX_NATS_URL", "events.nats_url"),
    ("HELIX_EVENTS_PREFIX", "events.prefix"),
    ("HELIX_LOG", "log.level"),
    ("HELIX_LOG_FORMAT", "log.format"),
    ("HELIX_GRPC_ADDR", "grpc.addr"),
    ("HELIX_GATEWAY_ADDR", "gateway.addr"),
    ("HELIX_MAX_BODY_BYTES", "gateway.max_body_bytes"),
    ("HELIX_REQUEST_TIMEOUT_SECS", "gateway.request_timeout_secs"),
    ("HELIX_ADMIN_KEY", "gateway.admin_key"),
    ("HELIX_ENV", "gateway.env (development or production)"),
    ("HELIX_CORS_ORIGINS", "gateway.cors_origins (comma-separated)"),
    ("HELIX_GATEWAY_CONCURRENCY", "gateway.concurrency_limit"),
    ("HELIX_GATEWAY_MAX_CONNECTIONS", "gateway.max_connections"),
    ("HELIX_DEFAULT_RATE_LIMIT", "gateway.default_requests_per_minute"),
    ("HELIX_AUDIT", "gateway.audit"),
    ("HELIX_AUDIT_RETENTION_DAYS", "gateway.audit_retention_days"),
    ("HELIX_TLS_CERT", "gateway.tls_cert"),
    ("HELIX_TLS_KEY", "gateway.tls_key"),
    ("HELIX_GRPC_TOKEN", "grpc.token"),
    ("HELIX_GRPC_TOKEN_FILE", "grpc.token_file"),
    ("HELIX_OUTBOUND_ALLOW_PRIVATE", "outbound.allow_private_networks"),
    ("HELIX_OUTBOUND_ALLOW", "outbound.allowed_hosts (comma-separated host or host:port)"),
    ("HELIX_VAULT_PATH", "vault.path"),
    ("HELIX_VAULT_KEY_FILE", "vault.key_file"),
    ("HELIX_VAULT_PASSPHRASE", "vault.passphrase"),
    ("HELIX_VAULT_ALLOW_REVEAL", "vault.allow_reveal"),
    ("HELIX_MODEL_DIR", "search.model_dir"),
    ("HELIX_RRF_K", "search.rrf_k"),
    ("HELIX_MIN_SIMILARITY", "search.min_similarity"),
    ("HELIX_QDRANT_COLLECTION", "search.qdrant_collection"),
    ("HELIX_JOBS_WORKER_KINDS", "jobs.worker_kinds (comma-separated; empty: none)"),
    ("HELIX_JOBS_WORKER_CONCURRENCY", "jobs.worker_concurrency"),
    ("HELIX_DAILY_BUDGET", "llm.daily_budget_usd"),
    ("HELIX_BUDGET_ACTION", "llm.budget_action"),
    ("HELIX_LLM_DEFAULT_MODEL", "llm.default_model"),
    ("HELIX_STORAGE_URL", "endpoints.storage"),
    ("HELIX_SEARCH_URL", "endpoints.search"),
    ("HELIX_GRAPH_URL", "endpoints.graph"),
    ("HELIX_LLM_ROUTER_URL", "endpoints.llm_router"),
    ("HELIX_ORCHESTRATOR_URL", "endpoints.orchestrator"),
    ("HELIX_JOBS_URL", "endpoints.jobs"),
    ("HELIX_NOTIFICATIONS_URL", "endpoints.notifications"),
    ("HELIX_GATEWAY_URL", "endpoints.gateway"),
];

impl HelixConfig {
    /// Loads the configuration of this process from its file and environment.
    pub fn load() -> Result<Self> {
        Self::load_from(|name| std::env::var(name).ok())
    }

    /// Loads with `env` standing in for the process environment (tests pass a table).
    pub fn load_from(env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let home = env("HELIX_HOME").map(PathBuf::from);
        let path = match env("HELIX_CONFIG") {
            Some(path) => Some(PathBuf::from(path)),
            None => Some(home.clone().unwrap_or_else(default_home).join("helix.toml")).filter(|p| p.exists()),
        };
        let mut config = match path {
            Some(path) => Self::from_file(&path)?,
            None => Self::default(),
        };
        if let Some(home) = home {
            config.home = home;
        }
        config.apply_env(&env)?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    fn apply_env(&mut self, env: &impl Fn(&str) -> Option<String>) -> Result<()> {
        fn parse<T: std::str::FromStr>(name: &str, value: &str) -> Result<T>
        where
            T::Err: fmt::Display,
        {
            value.parse().map_err(|e| Error::Config(format!("{name}={value:?}: {e}")))
        }
        fn list(value: &str) -> Vec<String> {
            value.split(',').map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned).collect()
        }
        for &(name, _) in ENV_VARS {
            let Some(value) = env(name) else { continue };
            match name {
                "HELIX_DATABASE_URL" => self.database_url = Some(value).filter(|v| !v.is_empty()),
                "HELIX_MIGRATE" => self.migrate = parse(name, &value)?,
                "HELIX_QDRANT_URL" => self.qdrant_url = Some(value).filter(|v| !v.is_empty()),
                "HELIX_METRICS_ADDR" => self.metrics.addr = parse(name, &value)?,
                "HELIX_NATS_URL" => self.events.nats_url = Some(value).filter(|v| !v.is_empty()),
                "HELIX_EVENTS_PREFIX" => self.events.prefix = value,
                "HELIX_LOG" => self.log.level = value,
                "HELIX_LOG_FORMAT" => self.log.format = parse(name, &value)?,
                "HELIX_GRPC_ADDR" => self.grpc.addr = parse(name, &value)?,
                "HELIX_GATEWAY_ADDR" => self.gateway.addr = parse(name, &value)?,
                "HELIX_MAX_BODY_BYTES" => self.gateway.max_body_bytes = parse(name, &value)?,
                "HELIX_REQUEST_TIMEOUT_SECS" => self.gateway.request_timeout_secs = parse(name, &value)?,
                "HELIX_ADMIN_KEY" => self.gateway.admin_key = Some(Secret(value)).filter(|s| !s.0.is_empty()),
                "HELIX_ENV" => {
                    self.gateway.env = value.parse().map_err(|e| Error::Config(format!("HELIX_ENV: {e}")))?
                }
                "HELIX_CORS_ORIGINS" => self.gateway.cors_origins = list(&value),
                "HELIX_GATEWAY_CONCURRENCY" => self.gateway.concurrency_limit = parse(name, &value)?,
                "HELIX_GATEWAY_MAX_CONNECTIONS" => self.gateway.max_connections = parse(name, &value)?,
                "HELIX_DEFAULT_RATE_LIMIT" => self.gateway.default_requests_per_minute = parse(name, &value)?,
                "HELIX_AUDIT" => self.gateway.audit = parse(name, &value)?,
                "HELIX_AUDIT_RETENTION_DAYS" => self.gateway.audit_retention_days = parse(name, &value)?,
                "HELIX_TLS_CERT" => {
                    self.gateway.tls_cert = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty())
                }
                "HELIX_TLS_KEY" => {
                    self.gateway.tls_key = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty())
                }
                "HELIX_GRPC_TOKEN" => self.grpc.token = Some(Secret(value)).filter(|s| !s.0.is_empty()),
                "HELIX_GRPC_TOKEN_FILE" => {
                    self.grpc.token_file = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty())
                }
                "HELIX_OUTBOUND_ALLOW_PRIVATE" => self.outbound.allow_private_networks = parse(name, &value)?,
                "HELIX_OUTBOUND_ALLOW" => self.outbound.allowed_hosts = list(&value),
                "HELIX_VAULT_PATH" => {
                    self.vault.path = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty())
                }
                "HELIX_VAULT_KEY_FILE" => {
                    self.vault.key_file = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty())
                }
                "HELIX_VAULT_PASSPHRASE" => {
                    self.vault.passphrase = (!value.is_empty()).then(|| helix_vault::SecretString::from(value))
                }
                "HELIX_VAULT_ALLOW_REVEAL" => self.vault.allow_reveal = parse(name, &value)?,
                "HELIX_MODEL_DIR" => {
                    self.search.model_dir = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty())
                }
                "HELIX_RRF_K" => self.search.rrf_k = parse(name, &value)?,
                "HELIX_MIN_SIMILARITY" => self.search.min_similarity = parse(name, &value)?,
                "HELIX_QDRANT_COLLECTION" => self.search.qdrant_collection = value,
                "HELIX_JOBS_WORKER_KINDS" => {
                    self.jobs.worker_kinds =
                        value.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned).collect()
                }
                "HELIX_JOBS_WORKER_CONCURRENCY" => self.jobs.worker_concurrency = parse(name, &value)?,
                "HELIX_DAILY_BUDGET" => self.llm.daily_budget_usd = parse(name, &value)?,
                "HELIX_BUDGET_ACTION" => self.llm.budget_action = value,
                "HELIX_LLM_DEFAULT_MODEL" => self.llm.default_model = Some(value).filter(|v| !v.is_empty()),
                "HELIX_STORAGE_URL" => self.endpoints.storage = value,
                "HELIX_SEARCH_URL" => self.endpoints.search = value,
                "HELIX_GRAPH_URL" => self.endpoints.graph = value,
                "HELIX_LLM_ROUTER_URL" => self.endpoints.llm_router = value,
                "HELIX_ORCHESTRATOR_URL" => self.endpoints.orchestrator = value,
                "HELIX_JOBS_URL" => self.endpoints.jobs = value,
                "HELIX_NOTIFICATIONS_URL" => self.endpoints.notifications = value,
                "HELIX_GATEWAY_URL" => self.endpoints.gateway = value,
                _ => {} // HELIX_HOME and HELIX_CONFIG were read before the file
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        if let Some(url) = &self.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.starts_with("sqlite:"))
        {
            return Err(Error::Config("database_url must start with postgres://, postgresql:// or sqlite:".into()));
        }
        if self.gateway.max_body_bytes < 1024 {
            return Err(Error::Config("gateway.max_body_bytes must be at least 1024".into()));
        }
        if self.gateway.request_timeout_secs == 0 {
            return Err(Error::Config("gateway.request_timeout_secs must be at least 1".into()));
        }
        let gateway = &self.gateway;
        if gateway.concurrency_limit == 0 || gateway.max_connections == 0 || self.grpc.max_connections == 0 {
            return Err(Error::Config("connection and concurrency limits must be at least 1".into()));
        }
        if gateway.header_timeout_secs == 0 || gateway.idle_timeout_secs == 0 {
            return Err(Error::Config("gateway header and idle timeouts must be at least 1 s".into()));
        }
        if gateway.tls_cert.is_some() != gateway.tls_key.is_some() {
            return Err(Error::Config(
                "gateway.tls_cert and gateway.tls_key (HELIX_TLS_CERT, HELIX_TLS_KEY) go together".into(),
            ));
        }
        if gateway.env == DeployEnv::Production && gateway.cors_origins.iter().any(|o| o == "*") {
            return Err(Error::Config("HELIX_CORS_ORIGINS may not be * in production: name the origins".into()));
        }
        if !(self.search.rrf_k.is_finite() && self.search.rrf_k >= 0.0) {
            return Err(Error::Config("search.rrf_k must be a number of at least 0".into()));
        }
        if !(-1.0..=1.0).contains(&self.search.min_similarity) {
            return Err(Error::Config("search.min_similarity must be within -1.0..=1.0".into()));
        }
        if let Some(url) = &self.qdrant_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(Error::Config("qdrant_url must be Qdrant's gRPC URL, http:// or https://".into()));
        }
        let collection = &self.search.qdrant_collection;
        if collection.is_empty() || !collection.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(Error::Config("search.qdrant_collection takes letters, digits, - and _ only".into()));
        }
        if self.jobs.worker_concurrency == 0 || self.jobs.worker_concurrency > 1000 {
            return Err(Error::Config("jobs.worker_concurrency must be from 1 to 1000".into()));
        }
        let llm = &self.llm;
        if !(llm.daily_budget_usd.is_finite() && llm.daily_budget_usd >= 0.0) {
            return Err(Error::Config(
                "llm.daily_budget_usd (HELIX_DAILY_BUDGET) must be a number of at least 0".into(),
            ));
        }
        if !matches!(llm.budget_action.as_str(), "downgrade" | "reject") {
            return Err(Error::Config("llm.budget_action (HELIX_BUDGET_ACTION) must be downgrade or reject".into()));
        }
        if !matches!(llm.unpriced_action.as_str(), "downgrade" | "reject") {
            return Err(Error::Config("llm.unpriced_action must be downgrade or reject".into()));
        }
        if llm.attempt_timeout_ms == 0 || llm.deadline_ms == 0 || llm.stream_idle_timeout_ms == 0 {
            return Err(Error::Config("llm timeouts must be at least 1 ms".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_with_neither_file_nor_environment() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap().to_owned();
        let config = HelixConfig::load_from(|name| (name == "HELIX_HOME").then(|| home.clone())).unwrap();
        assert_eq!(config.home, dir.path());
        assert_eq!(config.gateway.addr.to_string(), DEFAULT_GATEWAY_ADDR);
        assert!(config.database_url.is_none() && config.events.nats_url.is_none());
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("helix.toml");
        std::fs::write(
            &file,
            "database_url = \"sqlite://x.db\"\n[gateway]\naddr = \"0.0.0.0:1\"\nmax_body_bytes = 2048\n",
        )
        .unwrap();
        let vars = [
            ("HELIX_CONFIG", file.to_str().unwrap().to_owned()),
            ("HELIX_GATEWAY_ADDR", "127.0.0.1:2".to_owned()),
            ("HELIX_ADMIN_KEY", "k".to_owned()),
        ];
        let config = HelixConfig::load_from(|n| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone())).unwrap();
        assert_eq!(config.database_url.as_deref(), Some("sqlite://x.db"));
        assert_eq!(config.gateway.addr.to_string(), "127.0.0.1:2");
        assert_eq!(config.gateway.max_body_bytes, 2048);
        assert_eq!(format!("{:?}", config.gateway.admin_key), "Some(Secret(***))");
    }

    #[test]
    fn rejects_bad_values() {
        for (name, value) in
            [("HELIX_GATEWAY_ADDR", "nowhere"), ("HELIX_DATABASE_URL", "mysql://x"), ("HELIX_MAX_BODY_BYTES", "-1")]
        {
            let err = HelixConfig::load_from(|n| (n == name).then(|| value.to_owned())).unwrap_err();
            assert!(err.to_string().contains("database_url") || err.to_string().contains(name), "{err}");
        }
    }
}
