//! API keys: issued once, stored only as SHA-256 hashes, checked on every `/api` request.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use helix_core::{Error, ErrorKind};
use helix_runtime::db::Database;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::error::ApiError;

/// The bootstrap admin key's fixed id: the insert that creates it wins once, however
/// many gateway replicas start together.
const ADMIN_KEY_ID: &str = "admin";
/// How long a verified key is trusted without asking the database again; bounds how
/// long a revoked key keeps working on a replica.
const CACHE_TTL: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct KeyStore {
    db: Database,
    /// key hash → when it was verified, and the key's id
    verified: Arc<RwLock<HashMap<String, (Instant, String)>>>,
}

/// The id of the API key a request was authenticated with (a request extension), so
/// handlers can attribute work to it (the llm-router's per-key budgets and usage).
#[derive(Debug, Clone)]
pub struct ApiKeyId(pub String);

/// What bootstrapping produced: a key to show the operator, when one was generated.
pub enum Bootstrap {
    Existing,
    Preset,
    Generated(String),
}

impl KeyStore {
    pub fn new(db: Database) -> Self {
        Self { db, verified: Arc::default() }
    }

    /// Makes sure an admin key exists: the preset one (kept in sync with the preset), or
    /// on a store without keys, a new random one.
    pub async fn bootstrap(&self, preset: Option<&str>) -> Result<Bootstrap, Error> {
        let now = chrono::Utc::now().timestamp_micros();
        if let Some(key) = preset {
            sqlx::query(
                "INSERT INTO api_keys (id, name, key_hash, scopes, created_at) VALUES ($1, 'admin', $2, 'admin', $3) \
                 ON CONFLICT (id) DO UPDATE SET key_hash = excluded.key_hash, revoked_at = NULL",
            )
            .bind(ADMIN_KEY_ID)
            .bind(hash(key))
            .bind(now)
            .execute(&self.db.pool)
            .await
            .map_err(db_error)?;
            return Ok(Bootstrap::Preset);
        }
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM api_keys")
            .fetch_one(&self.db.pool)
            .await
            .and_then(|row| row.try_get("n"))
            .map_err(db_error)?;
        if count > 0 {
            return Ok(Bootstrap::Existing);
        }
        let key = generate_key();
        let inserted = sqlx::query(
            "INSERT INTO api_keys (id, name, key_hash, scopes, created_at) VALUES ($1, 'admin', $2, 'admin', $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(ADMIN_KEY_ID)
        .bind(hash(&key))
        .bind(now)
        .execute(&self.db.pool)
        .await
        .map_err(db_error)?;
        Ok(if inserted.rows_affected() == 1 { Bootstrap::Generated(key) } else { Bootstrap::Existing })
    }

    /// The id of `key` when it is valid.
    pub async fn verify(&self, key: &str) -> Result<String, Error> {
        let digest = hash(key);
        if let Some((at, id)) = self.verified.read().expect("key cache lock").get(&digest)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(id.clone());
        }
        let found = sqlx::query("SELECT id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL")
            .bind(&digest)
            .fetch_optional(&self.db.pool)
            .await
            .map_err(db_error)?;
        let Some(found) = found else {
            return Err(unauthenticated("the API key is not valid"));
        };
        let id: String = found.try_get("id").map_err(db_error)?;
        let mut cache = self.verified.write().expect("key cache lock");
        cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
        cache.insert(digest, (Instant::now(), id.clone()));
        Ok(id)
    }

    pub async fn check(&self) -> Result<(), Error> {
        self.db.check().await.map_err(|_| Error::unavailable("the gateway database is unavailable"))
    }
}

/// Writes the key where the CLI on this machine finds it, readable by the owner only.
pub fn write_key_file(path: &Path, key: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    #[cfg(unix)]
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    writeln!(file, "{key}")
}

/// Requires `Authorization: Bearer <key>` with a valid key; `x-api-key: <key>` is taken
/// too, the header Anthropic's clients send.
pub async fn require_key(State(keys): State<KeyStore>, mut request: Request, next: Next) -> Result<Response, ApiError> {
    let header = request.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(header) = header else {
        let key = request.headers().get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim);
        if let Some(key) = key.filter(|k| !k.is_empty()) {
            let id = keys.verify(key).await?;
            request.extensions_mut().insert(ApiKeyId(id));
            return Ok(next.run(request).await);
        }
        return Err(unauthenticated("this route needs an 'Authorization: Bearer <key>' header").into());
    };
    let key = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| unauthenticated("the Authorization header must be 'Bearer <key>'"))?;
    let id = keys.verify(key).await?;
    request.extensions_mut().insert(ApiKeyId(id));
    Ok(next.run(request).await)
}

fn unauthenticated(message: &str) -> Error {
    Error::new(ErrorKind::Unauthenticated, "unauthenticated", message)
}

fn generate_key() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!("hx_{}", hex::encode(bytes))
}

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn db_error(error: sqlx::Error) -> Error {
    tracing::warn!(%error, "gateway database error");
    Error::unavailable("the gateway database is unavailable")
}
