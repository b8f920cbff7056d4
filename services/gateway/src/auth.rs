//! API keys: issued once, stored only as SHA-256 hashes, checked on every `/api` request
//! against the route table of [`crate::scopes`].
//!
//! A key reads `hx_` + 32 base62 characters + a 6-character base62 CRC32 of those 32
//! (GitHub's token format): secret scanners recognise it, and a mistyped or invented key
//! is refused by its checksum before any lookup.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use helix_core::{Error, ErrorKind};
use helix_events::{Envelope, EventBus, subjects};
use helix_runtime::db::Database;
use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::ratelimit::{Admission, KeyLimiter};
use crate::scopes::{self, Access, Grants, Scope};

/// The bootstrap admin key's fixed id: the insert that creates it wins once, however
/// many gateway replicas start together.
pub const ADMIN_KEY_ID: &str = "admin";
/// How long a verified key is trusted without asking the database again. Revocations
/// also travel as events and evict at once; this bounds a revocation whose event was
/// lost, so a revoked or expired key stops working on every replica within a second.
const CACHE_TTL: Duration = Duration::from_secs(1);
/// How often the last-use times gathered in memory are written: never one write per request.
const LAST_USED_FLUSH: Duration = Duration::from_secs(5);

const PREFIX: &str = "hx_";
const BODY_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new key: 32 random base62 characters (190 bits) and their checksum.
pub fn generate_key() -> String {
    let mut rng = rand::rng();
    let body: String = (0..BODY_LEN).map(|_| BASE62[rng.random_range(0..62)] as char).collect();
    format!("{PREFIX}{body}{}", checksum(&body))
}

fn checksum(body: &str) -> String {
    let mut value = crc32fast::hash(body.as_bytes()) as u64;
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a presented key is not even looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    Shape,
    Checksum,
}

/// Checks a key's shape and checksum without touching the database.
pub fn check_format(key: &str) -> Result<(), Malformed> {
    let Some(rest) = key.strip_prefix(PREFIX) else { return Err(Malformed::Shape) };
    if rest.len() != BODY_LEN + CHECKSUM_LEN || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Malformed::Shape);
    }
    let (body, sum) = rest.split_at(BODY_LEN);
    match checksum(body) == sum {
        true => Ok(()),
        false => Err(Malformed::Checksum),
    }
}

/// The first characters of a key, enough to recognise it in a list, never to use it.
pub fn display_prefix(key: &str) -> String {
    key.chars().take(PREFIX.len() + 6).collect()
}

/// What the gateway knows of a valid key.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub id: String,
    pub grants: Grants,
    /// `None`: every namespace.
    pub namespaces: Option<Vec<String>>,
    pub expires_at: Option<i64>,
    pub requests_per_minute: Option<u32>,
}

/// Who is calling: a request extension every handler behind the key check can read.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<KeyRecord>);

impl Caller {
    pub fn key_id(&self) -> &str {
        &self.0.id
    }

    pub fn grants(&self) -> &Grants {
        &self.0.grants
    }

    /// The namespaces this key is limited to; `None` when it sees them all.
    pub fn namespaces(&self) -> Option<&[String]> {
        self.0.namespaces.as_deref()
    }

    pub fn sees(&self, namespace: &str) -> bool {
        self.namespaces().is_none_or(|allowed| allowed.iter().any(|n| n == namespace))
    }

    /// The namespaces a search covers: the one asked for (if this key sees it), else every
    /// namespace of a limited key, else all (empty).
    pub fn searched(&self, asked: Option<String>) -> Result<Vec<String>, Error> {
        match (asked, self.namespaces()) {
            (Some(asked), _) => self.check_namespace(&asked).map(|()| vec![asked]),
            (None, Some(own)) => Ok(own.to_vec()),
            (None, None) => Ok(Vec::new()),
        }
    }

    /// Refuses a namespace this key may not touch, as the thing not existing would be
    /// refused elsewhere: a limited key learns nothing of other namespaces.
    pub fn check_namespace(&self, namespace: &str) -> Result<(), Error> {
        match self.sees(namespace) {
            true => Ok(()),
            false => Err(Error::new(
                ErrorKind::PermissionDenied,
                "namespace_forbidden",
                format!("this API key may not use namespace {namespace:?}"),
            )),
        }
    }
}

/// The id of the API key a request was authenticated with (a request extension, and a
/// response extension for the layers outside the key check, such as the audit log).
#[derive(Debug, Clone)]
pub struct ApiKeyId(pub String);

/// What bootstrapping produced: a key to show the operator, when one was generated.
pub enum Bootstrap {
    Existing,
    Preset,
    Generated(String),
}

/// key hash → when it was verified, and the key
type VerifiedKeys = Arc<RwLock<HashMap<[u8; 32], (Instant, Arc<KeyRecord>)>>>;

#[derive(Clone)]
pub struct KeyStore {
    db: Database,
    bus: Arc<dyn EventBus>,
    verified: VerifiedKeys,
    /// the configured admin key's hash: a preset key predates the key format
    preset_admin: Option<[u8; 32]>,
    /// key id → last use (µs), written in batches
    touched: Arc<Mutex<HashMap<String, i64>>>,
    pub limiter: KeyLimiter,
}

impl KeyStore {
    pub fn new(db: Database, bus: Arc<dyn EventBus>, preset_admin: Option<&str>, limiter: KeyLimiter) -> Self {
        Self {
            db,
            bus,
            verified: Arc::default(),
            preset_admin: preset_admin.map(digest),
            touched: Arc::default(),
            limiter,
        }
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    /// Makes sure an admin key exists: the preset one (kept in sync with the preset), or
    /// on a store without keys, a new random one.
    pub async fn bootstrap(&self, preset: Option<&str>) -> Result<Bootstrap, Error> {
        let now = now_micros();
        if let Some(key) = preset {
            sqlx::query(
                "INSERT INTO api_keys (id, name, key_hash, scopes, created_at, prefix, origin) \
                 VALUES ($1, 'admin', $2, 'admin', $3, $4, 'bootstrap') \
                 ON CONFLICT (id) DO UPDATE SET key_hash = excluded.key_hash, prefix = excluded.prefix, revoked_at = NULL",
            )
            .bind(ADMIN_KEY_ID)
            .bind(hash(key))
            .bind(now)
            .bind(display_prefix(key))
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
            "INSERT INTO api_keys (id, name, key_hash, scopes, created_at, prefix, origin) \
             VALUES ($1, 'admin', $2, 'admin', $3, $4, 'bootstrap') ON CONFLICT (id) DO NOTHING",
        )
        .bind(ADMIN_KEY_ID)
        .bind(hash(&key))
        .bind(now)
        .bind(display_prefix(&key))
        .execute(&self.db.pool)
        .await
        .map_err(db_error)?;
        Ok(if inserted.rows_affected() == 1 { Bootstrap::Generated(key) } else { Bootstrap::Existing })
    }

    /// The key `key` names, when it is valid now.
    pub async fn verify(&self, key: &str) -> Result<Arc<KeyRecord>, Error> {
        let digest = digest(key);
        let preset = self.preset_admin.is_some_and(|admin| constant_time_eq(&admin, &digest));
        if !preset {
            match check_format(key) {
                Ok(()) => {}
                Err(Malformed::Shape) => {
                    return Err(unauthenticated("malformed_api_key", "the API key is not in Helix's key format"));
                }
                Err(Malformed::Checksum) => {
                    return Err(unauthenticated("malformed_api_key", "the API key's checksum does not match"));
                }
            }
        }
        let cached = self.verified.read().expect("key cache lock").get(&digest).cloned();
        let record = match cached {
            Some((at, record)) if at.elapsed() < CACHE_TTL => record,
            _ => self.load(&digest).await?,
        };
        if record.expires_at.is_some_and(|at| at <= now_micros()) {
            self.verified.write().expect("key cache lock").remove(&digest);
            return Err(unauthenticated("api_key_expired", "the API key has expired"));
        }
        self.touched.lock().expect("last-used lock").insert(record.id.clone(), now_micros());
        Ok(record)
    }

    async fn load(&self, digest: &[u8; 32]) -> Result<Arc<KeyRecord>, Error> {
        let found = sqlx::query(
            "SELECT id, scopes, namespaces, expires_at, requests_per_minute FROM api_keys \
             WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(hex::encode(digest))
        .fetch_optional(&self.db.pool)
        .await
        .map_err(db_error)?;
        let Some(row) = found else {
            self.verified.write().expect("key cache lock").remove(digest);
            return Err(unauthenticated("unauthenticated", "the API key is not valid (unknown or revoked)"));
        };
        let record = Arc::new(record_from_row(&row)?);
        let mut cache = self.verified.write().expect("key cache lock");
        cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
        cache.insert(*digest, (Instant::now(), record.clone()));
        Ok(record)
    }

    /// Forgets every cached verification of the key `id` (it was revoked or rotated).
    pub fn evict(&self, id: &str) {
        self.verified.write().expect("key cache lock").retain(|_, (_, record)| record.id != id);
    }

    /// Tells every replica (this one included) that the key `id` stopped working.
    pub async fn announce_revoked(&self, id: &str) {
        self.evict(id);
        let event = Envelope::new(subjects::GATEWAY_KEY_REVOKED, crate::SERVICE, serde_json::json!({"key_id": id}));
        if let Err(error) = self.bus.publish(&event).await {
            // the cache's one-second bound still ends it on the other replicas
            tracing::warn!(%error, key_id = id, "could not announce a key revocation");
        }
    }

    pub async fn check(&self) -> Result<(), Error> {
        self.db.check().await.map_err(|_| Error::unavailable("the gateway database is unavailable"))
    }

    /// Writes the last-use times gathered since the last flush.
    async fn flush_last_used(&self) {
        let touched = std::mem::take(&mut *self.touched.lock().expect("last-used lock"));
        for (id, at) in touched {
            let written = sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
                .bind(at)
                .bind(&id)
                .execute(&self.db.pool)
                .await;
            if let Err(error) = written {
                tracing::debug!(%error, "last-used time not written");
            }
        }
    }
}

/// Keeps the key cache true on this replica: evicts keys revoked on any replica as their
/// event arrives, and writes last-use times in batches, until `shutdown`.
pub async fn follow(keys: KeyStore, shutdown: CancellationToken) {
    let mut revocations = match keys.bus.tail(subjects::GATEWAY_KEY_REVOKED).await {
        Ok(subscription) => Some(subscription),
        Err(error) => {
            tracing::warn!(%error, "key revocations from other replicas arrive only by cache expiry");
            None
        }
    };
    let mut flush = tokio::time::interval(LAST_USED_FLUSH);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = flush.tick() => keys.flush_last_used().await,
            next = async {
                match revocations.as_mut() {
                    Some(events) => events.next().await,
                    None => std::future::pending().await,
                }
            } => match next {
                Some(Ok(delivery)) => {
                    if let Some(id) = delivery.envelope.payload.get("key_id").and_then(|v| v.as_str()) {
                        keys.evict(id);
                    }
                }
                Some(Err(error)) => tracing::debug!(%error, "key revocation tail"),
                None => revocations = None,
            },
        }
    }
    keys.flush_last_used().await;
}

pub(crate) fn record_from_row(row: &sqlx::any::AnyRow) -> Result<KeyRecord, Error> {
    let id: String = row.try_get("id").map_err(db_error)?;
    let scopes: String = row.try_get("scopes").map_err(db_error)?;
    let namespaces: Option<String> = row.try_get("namespaces").map_err(db_error)?;
    let rpm: Option<i64> = row.try_get("requests_per_minute").map_err(db_error)?;
    let grants =
        Grants::from_stored(&scopes).map_err(|e| Error::internal(format!("stored scopes of key {id}: {e}")))?;
    Ok(KeyRecord {
        id,
        grants,
        namespaces: namespaces.map(|n| split_list(&n)),
        expires_at: row.try_get("expires_at").map_err(db_error)?,
        requests_per_minute: rpm.map(|n| n.clamp(0, u32::MAX as i64) as u32),
    })
}

pub(crate) fn split_list(stored: &str) -> Vec<String> {
    stored.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
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

/// The key a request presents: `Authorization: Bearer <key>`, or `x-api-key: <key>`, the
/// header Anthropic's clients send.
fn presented_key(request: &Request) -> Result<Option<&str>, Error> {
    if let Some(header) = request.headers().get(http::header::AUTHORIZATION) {
        let header = header.to_str().unwrap_or_default();
        return header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(Some)
            .ok_or_else(|| unauthenticated("unauthenticated", "the Authorization header must be 'Bearer <key>'"));
    }
    Ok(request.headers().get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim).filter(|k| !k.is_empty()))
}

/// The guard of every route: looks the route up in [`scopes::ROUTES`], verifies the key,
/// checks its scope and its request rate, and hands the handler a [`Caller`].
pub async fn require_key(State(keys): State<KeyStore>, mut request: Request, next: Next) -> Response {
    let template = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let access = scopes::access(request.method(), &template);
    let needed = match access {
        Some(Access::Public) => return next.run(request).await,
        Some(Access::Authenticated) => None,
        Some(Access::Scoped(scope)) => Some(scope),
        None => {
            tracing::error!(route = %template, method = %request.method(), "route missing from the scope table");
            return ApiError(Error::new(
                ErrorKind::PermissionDenied,
                "route_not_guarded",
                "no scope guards this route",
            ))
            .into_response();
        }
    };
    let key = match presented_key(&request) {
        Ok(Some(key)) => key,
        Ok(None) => {
            return ApiError(unauthenticated(
                "unauthenticated",
                "this route needs an 'Authorization: Bearer <key>' header",
            ))
            .into_response();
        }
        Err(error) => return ApiError(error).into_response(),
    };
    let record = match keys.verify(key).await {
        Ok(record) => record,
        Err(error) => return ApiError(error).into_response(),
    };
    tracing::Span::current().record("key_id", record.id.as_str());
    let key_id = ApiKeyId(record.id.clone());
    if let Some(scope) = needed
        && !record.grants.allows(scope)
    {
        let mut response = ApiError(forbidden(scope, &record.grants)).into_response();
        response.extensions_mut().insert(key_id);
        return response;
    }
    let admission = keys.limiter.admit(&record);
    if let Admission::Refused(refusal) = &admission {
        let mut response = ApiError(Error::new(
            ErrorKind::RateLimited,
            "rate_limited",
            format!("this API key sent more than {} requests a minute; retry later", refusal.limit),
        ))
        .into_response();
        admission.write_headers(response.headers_mut());
        response.extensions_mut().insert(key_id);
        return response;
    }
    request.extensions_mut().insert(key_id.clone());
    request.extensions_mut().insert(Caller(record));
    let mut response = next.run(request).await;
    admission.write_headers(response.headers_mut());
    response.extensions_mut().insert(key_id);
    response
}

fn forbidden(scope: Scope, grants: &Grants) -> Error {
    Error::new(
        ErrorKind::PermissionDenied,
        "forbidden",
        format!("this route needs the scope {scope}; the API key has {}", grants.names().join(", ")),
    )
}

pub(crate) fn unauthenticated(code: &'static str, message: &str) -> Error {
    Error::new(ErrorKind::Unauthenticated, code, message)
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

pub(crate) fn hash(key: &str) -> String {
    hex::encode(digest(key))
}

/// Equal without an early exit, so timing says nothing of where two digests differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

pub(crate) fn db_error(error: sqlx::Error) -> Error {
    tracing::warn!(%error, "gateway database error");
    Error::unavailable("the gateway database is unavailable")
}
