//! Real Helix nodes for tests: services spawned in-process on port 0, against the
//! embedded backends (SQLite, in-process bus) or the fleet backends (a fresh PostgreSQL
//! database, an isolated NATS subject prefix and a Qdrant per node). Nothing of ours is
//! mocked; Qdrant, which cannot be installed here, is [`fake_qdrant`].
//!
//! An unreachable PostgreSQL or NATS fails the test: CI must prove the fleet column.

pub mod fake_qdrant;
pub mod llm;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use helix_events::EventBus;
use helix_runtime::HelixConfig;
use helix_runtime::config::Secret;
use hx::fleet::{Node, Role};
use sqlx::Connection;
use tempfile::TempDir;

/// Where PostgreSQL is for tests; every test node gets a fresh database on it.
pub fn postgres_url() -> String {
    std::env::var("HELIX_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub fn nats_url() -> String {
    std::env::var("HELIX_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite files under a temporary HELIX_HOME and the in-process bus
    Embedded,
    /// A fresh PostgreSQL database, NATS JetStream under a unique subject prefix, and a
    /// Qdrant (the test's own [`FakeQdrant`](fake_qdrant::FakeQdrant)) for vectors
    Fleet,
}

/// The backends and home of a test deployment; outlives restarts of its nodes.
pub struct TestEnv {
    pub backend: Backend,
    pub config: HelixConfig,
    pub admin_key: String,
    home: TempDir,
    database: Option<String>,
    qdrant: Option<fake_qdrant::FakeQdrant>,
}

/// The sentence-embedding model tests search with: `HELIX_MODEL_DIR`, else the
/// repository's `models/all-minilm-l6-v2` (`make model` fetches it). Tests need the real
/// model: a search service told to use a directory without it does not start.
pub fn model_dir() -> PathBuf {
    std::env::var_os("HELIX_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-minilm-l6-v2"))
}

impl TestEnv {
    pub async fn new(backend: Backend) -> anyhow::Result<Self> {
        let home = tempfile::tempdir()?;
        let unique = uuid::Uuid::now_v7().simple().to_string();
        let admin_key = format!("hx_test_{unique}");
        let mut config = HelixConfig { home: home.path().to_owned(), ..HelixConfig::default() };
        config.grpc.addr = "127.0.0.1:0".parse()?;
        config.gateway.addr = "127.0.0.1:0".parse()?;
        config.metrics.addr = "127.0.0.1:0".parse()?;
        config.gateway.admin_key = Some(Secret::new(admin_key.clone()));
        // one fleet token for every node and `hx` process of this environment
        config.grpc.token = Some(Secret::new(format!("test-grpc-{unique}")));
        config.log.level = "warn".to_owned();
        config.search.model_dir = Some(model_dir());
        let mut database = None;
        let mut qdrant = None;
        if backend == Backend::Fleet {
            let name = format!("helix_test_{unique}");
            let mut admin = sqlx::PgConnection::connect(&postgres_url())
                .await
                .with_context(|| format!("PostgreSQL at {} is required for fleet tests", postgres_url()))?;
            sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str()).await?;
            config.database_url = Some(replace_database(&postgres_url(), &name));
            config.events.nats_url = Some(nats_url());
            config.events.prefix = format!("t{unique}");
            database = Some(name);
            let fake = fake_qdrant::FakeQdrant::start().await?;
            config.qdrant_url = Some(fake.url.clone());
            qdrant = Some(fake);
        }
        Ok(Self { backend, config, admin_key, home, database, qdrant })
    }

    /// The fleet backend's Qdrant.
    pub fn qdrant(&self) -> Option<&fake_qdrant::FakeQdrant> {
        self.qdrant.as_ref()
    }

    pub fn home(&self) -> PathBuf {
        self.home.path().to_owned()
    }

    /// Starts the given services in this process.
    pub async fn start(&self, roles: &[Role]) -> anyhow::Result<Node> {
        Ok(Node::start(self.config.clone(), roles).await?)
    }

    /// A gRPC channel to `url` carrying this environment's fleet token, connected when
    /// it returns (an error: nothing answers there yet).
    pub async fn grpc(&self, url: &str) -> anyhow::Result<helix_runtime::grpc::GrpcChannel> {
        let metrics = helix_runtime::metrics::Metrics::new();
        let timeout = std::time::Duration::from_secs(120);
        Ok(helix_runtime::grpc::connect(url, timeout, metrics, self.config.grpc.token.as_ref()).await?)
    }

    /// A bus connection of its own to this environment's events.
    pub async fn bus(&self) -> anyhow::Result<Arc<dyn EventBus>> {
        Ok(helix_events::connect(&self.config.events, "test").await?)
    }

    /// The environment variables that make an `hx` process use these backends.
    pub fn process_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("HELIX_HOME", self.home.path().display().to_string()),
            ("HELIX_ADMIN_KEY", self.admin_key.clone()),
            ("HELIX_GRPC_TOKEN", self.config.grpc.token.as_ref().map_or_else(String::new, |t| t.expose().to_owned())),
            ("HELIX_LOG", "warn".to_owned()),
            ("HELIX_METRICS_ADDR", "127.0.0.1:0".to_owned()),
            ("HELIX_MODEL_DIR", model_dir().display().to_string()),
        ];
        if let Some(url) = &self.config.database_url {
            env.push(("HELIX_DATABASE_URL", url.clone()));
        }
        if let Some(url) = &self.config.qdrant_url {
            env.push(("HELIX_QDRANT_URL", url.clone()));
        }
        if let Some(url) = &self.config.events.nats_url {
            env.push(("HELIX_NATS_URL", url.clone()));
            env.push(("HELIX_EVENTS_PREFIX", self.config.events.prefix.clone()));
        }
        env
    }
}

impl Drop for TestEnv {
    /// Removes what the fleet backends kept for this environment: its database and its
    /// NATS streams, so repeated runs do not pile them up on the shared servers.
    fn drop(&mut self) {
        let Some(name) = self.database.take() else { return };
        let events = self.config.events.clone();
        // Drop runs inside the test's runtime: a thread of its own may block.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                if let Ok(bus) = helix_events::NatsBus::connect(&events, "testkit-cleanup").await {
                    let _ = bus.delete_streams().await;
                }
                let mut admin = sqlx::PgConnection::connect(&postgres_url()).await.ok()?;
                sqlx::Executor::execute(&mut admin, format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await
                    .ok()
            })
        })
        .join();
    }
}

fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(head, _)| head);
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// A whole Helix (all eight services in this process) and an HTTP client for its gateway.
pub struct TestHelix {
    pub env: TestEnv,
    pub node: Option<Node>,
    pub base_url: String,
    pub http: reqwest::Client,
}

impl TestHelix {
    pub async fn start(backend: Backend) -> anyhow::Result<Self> {
        let env = TestEnv::new(backend).await?;
        let node = env.start(&Role::ALL).await?;
        let base_url = node.gateway_url().expect("gateway role runs");
        Ok(Self { env, node: Some(node), base_url, http: reqwest::Client::new() })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// A request to the gateway carrying the admin key.
    pub fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(&self.env.admin_key)
    }

    /// Issues another admin-scoped API key under the chosen id `id` (straight into the
    /// gateway's key table: `POST /api/v1/keys` picks ids itself) and returns the key.
    pub async fn create_api_key(&self, id: &str) -> anyhow::Result<String> {
        use sha2::Digest;
        let key = helix_gateway::generate_key();
        let db = helix_runtime::db::Database::connect(&self.env.config, "gateway").await?;
        sqlx::query("INSERT INTO api_keys (id, name, key_hash, scopes, created_at) VALUES ($1, $1, $2, 'admin', $3)")
            .bind(id)
            .bind(hex::encode(sha2::Sha256::digest(key.as_bytes())))
            .bind(unix_micros())
            .execute(&db.pool)
            .await?;
        db.pool.close().await;
        Ok(key)
    }

    /// Stops every service and starts them again on the same home and databases.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(node) = self.node.take() {
            node.stop().await;
        }
        let node = self.env.start(&Role::ALL).await?;
        self.base_url = node.gateway_url().expect("gateway role runs");
        self.node = Some(node);
        Ok(())
    }

    pub async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.stop().await;
        }
    }
}

fn unix_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}
