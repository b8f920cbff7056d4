//! `/api/v1/keys`: API keys issued, listed, rotated and revoked by an admin. A key's
//! secret is shown once, at creation or rotation; only its SHA-256 is stored.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use helix_core::{Error, ErrorKind};
use helix_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::{self, ADMIN_KEY_ID, Caller, db_error, now_micros};
use crate::error::{ApiResult, ErrorBody, Json, Path, Query};
use crate::scopes::Grants;

/// A key as an admin sees it: everything but the secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyBody {
    pub id: String,
    pub name: String,
    /// the secret's first characters, to recognise it
    pub prefix: String,
    pub scopes: Vec<String>,
    /// null: every namespace
    pub namespaces: Option<Vec<String>>,
    /// `api` (created here), `pairing` (a paired device) or `bootstrap` (the admin key)
    pub origin: String,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// the key's own daily LLM budget in USD (the llm-router enforces it)
    pub daily_budget_usd: Option<f64>,
    /// requests per minute; null: the gateway's default
    pub requests_per_minute: Option<u32>,
}

/// A new key's settings.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyInput {
    /// 1-128 characters, no control characters
    pub name: String,
    /// scope names (`nodes:read`, `jobs:write`, `llm:call`, `admin`, ...) or the shorthands
    /// `read` and `write`; at least one
    pub scopes: Vec<String>,
    /// limit the key to these namespaces; absent: every namespace
    pub namespaces: Option<Vec<String>>,
    /// absent: never expires
    pub expires_at: Option<DateTime<Utc>>,
    /// a daily cap on the key's LLM spending, in USD
    pub daily_budget_usd: Option<f64>,
    /// requests per minute (1-1000000); absent: the gateway's default
    pub requests_per_minute: Option<u32>,
}

/// A key and its secret: the only answer that ever carries the secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IssuedKey {
    pub key: KeyBody,
    /// `hx_...`: shown once, store it now
    pub secret: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyBody>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KeyListParams {
    /// 1-1000, default 100
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    /// `api`, `pairing` or `bootstrap`
    pub origin: Option<String>,
    /// list revoked keys too
    pub include_revoked: Option<bool>,
}

/// What a new key may be given, checked before anything is stored.
pub(crate) struct KeySettings {
    pub name: String,
    pub grants: Grants,
    pub namespaces: Option<Vec<String>>,
    pub expires_at: Option<i64>,
    pub daily_budget_usd: Option<f64>,
    pub requests_per_minute: Option<u32>,
    pub origin: &'static str,
}

impl KeySettings {
    pub fn check(input: KeyInput, origin: &'static str, creator: &Caller) -> Result<Self, Error> {
        let name = input.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
            return Err(Error::invalid("invalid_name", "name must be 1-128 characters without control characters"));
        }
        let grants = check_scopes(&input.scopes, creator)?;
        let namespaces = check_namespaces(input.namespaces, creator)?;
        let expires_at = match input.expires_at {
            Some(at) if at <= Utc::now() => {
                return Err(Error::invalid("invalid_expires_at", "expires_at must be in the future"));
            }
            Some(at) if at.timestamp() > 253_402_300_799 => {
                return Err(Error::invalid("invalid_expires_at", "expires_at must be before the year 10000"));
            }
            at => at.map(|at| at.timestamp_micros()),
        };
        if let Some(usd) = input.daily_budget_usd
            && !(usd.is_finite() && (0.0..=1_000_000.0).contains(&usd))
        {
            return Err(Error::invalid("invalid_budget", "daily_budget_usd must be from 0 to 1000000"));
        }
        if input.requests_per_minute.is_some_and(|n| n == 0 || n > 1_000_000) {
            return Err(Error::invalid("invalid_rate_limit", "requests_per_minute must be from 1 to 1000000"));
        }
        Ok(Self {
            name,
            grants,
            namespaces,
            expires_at,
            daily_budget_usd: input.daily_budget_usd,
            requests_per_minute: input.requests_per_minute,
            origin,
        })
    }
}

/// Scopes for a new key: known names, at least one, none the creator lacks.
pub(crate) fn check_scopes(names: &[String], creator: &Caller) -> Result<Grants, Error> {
    if names.is_empty() {
        return Err(Error::invalid("invalid_scopes", "scopes must name at least one scope"));
    }
    let grants = Grants::parse(names).map_err(|e| Error::invalid("invalid_scopes", e))?;
    if !creator.grants().covers(&grants) {
        return Err(Error::new(ErrorKind::PermissionDenied, "forbidden", "a key cannot hand out scopes it lacks"));
    }
    Ok(grants)
}

/// Namespaces for a new key: valid names, within the creator's own.
pub(crate) fn check_namespaces(names: Option<Vec<String>>, creator: &Caller) -> Result<Option<Vec<String>>, Error> {
    let Some(mut names) = names else {
        return match creator.namespaces() {
            // a limited creator's keys are limited the same way
            Some(own) => Ok(Some(own.to_vec())),
            None => Ok(None),
        };
    };
    if names.is_empty() || names.len() > 100 {
        return Err(Error::invalid("invalid_namespaces", "namespaces must list 1-100 namespaces, or be absent"));
    }
    for name in &names {
        helix_core::node::validate_namespace(name)?;
        if name.contains(',') {
            return Err(Error::invalid("invalid_namespace", "a namespace may not contain a comma"));
        }
        creator.check_namespace(name)?;
    }
    names.sort();
    names.dedup();
    Ok(Some(names))
}

/// Stores a new key under `id` and returns its secret.
pub(crate) async fn insert_key(
    state: &AppState,
    id: &str,
    settings: &KeySettings,
    created_by: &str,
) -> Result<String, Error> {
    if let Some(usd) = settings.daily_budget_usd {
        set_key_budget(state, id, Some(usd)).await?;
    }
    let secret = auth::generate_key();
    sqlx::query(
        "INSERT INTO api_keys (id, name, key_hash, scopes, created_at, prefix, namespaces, expires_at, \
         daily_budget_micros, requests_per_minute, origin, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(id)
    .bind(&settings.name)
    .bind(auth::hash(&secret))
    .bind(settings.grants.stored())
    .bind(now_micros())
    .bind(auth::display_prefix(&secret))
    .bind(settings.namespaces.as_ref().map(|n| n.join(",")))
    .bind(settings.expires_at)
    .bind(settings.daily_budget_usd.map(|usd| (usd * 1e6).round() as i64))
    .bind(settings.requests_per_minute.map(i64::from))
    .bind(settings.origin)
    .bind(created_by)
    .execute(&state.keys.db().pool)
    .await
    .map_err(db_error)?;
    Ok(secret)
}

/// The router's per-key daily cap: the one place key budgets are enforced.
async fn set_key_budget(state: &AppState, id: &str, usd: Option<f64>) -> Result<(), Error> {
    let request = pb::SetBudgetRequest {
        key_limits: vec![pb::KeyBudget { api_key_id: id.to_owned(), daily_limit_usd: usd, ..Default::default() }],
        ..Default::default()
    };
    state.llm().set_budget(request).await.map_err(Error::from)?;
    Ok(())
}

pub(crate) async fn load_key(state: &AppState, id: &str) -> Result<KeyBody, Error> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1"))
        .bind(id)
        .fetch_optional(&state.keys.db().pool)
        .await
        .map_err(db_error)?
        .ok_or_else(|| Error::not_found("API key", id))?;
    key_body(&row)
}

const COLUMNS: &str = "id, name, prefix, scopes, namespaces, origin, created_by, created_at, last_used_at, \
                       expires_at, revoked_at, daily_budget_micros, requests_per_minute";

fn key_body(row: &sqlx::any::AnyRow) -> Result<KeyBody, Error> {
    let time = |name: &str| -> Result<Option<DateTime<Utc>>, Error> {
        let micros: Option<i64> = row.try_get(name).map_err(db_error)?;
        Ok(micros.and_then(DateTime::from_timestamp_micros))
    };
    let scopes: String = row.try_get("scopes").map_err(db_error)?;
    let namespaces: Option<String> = row.try_get("namespaces").map_err(db_error)?;
    let rpm: Option<i64> = row.try_get("requests_per_minute").map_err(db_error)?;
    let budget: Option<i64> = row.try_get("daily_budget_micros").map_err(db_error)?;
    Ok(KeyBody {
        id: row.try_get("id").map_err(db_error)?,
        name: row.try_get("name").map_err(db_error)?,
        prefix: row.try_get("prefix").map_err(db_error)?,
        scopes: auth::split_list(&scopes),
        namespaces: namespaces.map(|n| auth::split_list(&n)),
        origin: row.try_get("origin").map_err(db_error)?,
        created_by: row.try_get("created_by").map_err(db_error)?,
        created_at: time("created_at")?.unwrap_or_default(),
        last_used_at: time("last_used_at")?,
        expires_at: time("expires_at")?,
        revoked_at: time("revoked_at")?,
        daily_budget_usd: budget.map(|micros| micros as f64 / 1e6),
        requests_per_minute: rpm.map(|n| n.clamp(0, u32::MAX as i64) as u32),
    })
}

/// Issues a new API key. The secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/keys", tag = "keys", request_body = KeyInput,
    responses((status = 201, body = IssuedKey), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(input): Json<KeyInput>,
) -> ApiResult<(StatusCode, Json<IssuedKey>)> {
    let settings = KeySettings::check(input, "api", &caller)?;
    let id = uuid::Uuid::now_v7().to_string();
    let secret = insert_key(&state, &id, &settings, caller.key_id()).await?;
    Ok((StatusCode::CREATED, Json(IssuedKey { key: load_key(&state, &id).await?, secret })))
}

/// Lists API keys, newest first (never their secrets).
#[utoipa::path(get, path = "/api/v1/keys", tag = "keys", params(KeyListParams),
    responses((status = 200, body = KeyList), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, Query(params): Query<KeyListParams>) -> ApiResult<Json<KeyList>> {
    let limit = match crate::nodes::page_limit(params.limit)? {
        0 => 100,
        n => n,
    };
    if let Some(origin) = &params.origin
        && !matches!(origin.as_str(), "api" | "pairing" | "bootstrap")
    {
        return Err(Error::invalid("invalid_origin", "origin must be api, pairing or bootstrap").into());
    }
    let mut sql = format!("SELECT {COLUMNS} FROM api_keys WHERE 1 = 1");
    let mut binds: Vec<String> = Vec::new();
    if !params.include_revoked.unwrap_or(false) {
        sql.push_str(" AND revoked_at IS NULL");
    }
    if let Some(origin) = params.origin {
        binds.push(origin);
        sql.push_str(&format!(" AND origin = ${}", binds.len()));
    }
    if let Some(cursor) = params.cursor.filter(|c| !c.is_empty()) {
        binds.push(cursor);
        sql.push_str(&format!(" AND id < ${}", binds.len()));
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", limit + 1));
    let mut query = sqlx::query(&sql);
    for bind in &binds {
        query = query.bind(bind);
    }
    let rows = query.fetch_all(&state.keys.db().pool).await.map_err(db_error)?;
    let mut keys = rows.iter().map(key_body).collect::<Result<Vec<_>, _>>()?;
    let next_cursor = match keys.len() > limit as usize {
        true => {
            keys.truncate(limit as usize);
            keys.last().map(|k| k.id.clone())
        }
        false => None,
    };
    Ok(Json(KeyList { keys, next_cursor }))
}

#[utoipa::path(get, path = "/api/v1/keys/{id}", tag = "keys", params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = KeyBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<KeyBody>> {
    Ok(Json(load_key(&state, &id).await?))
}

/// Revokes a key: it stops working on every gateway replica within a second.
#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "keys", params(("id" = String, Path, description = "key id")),
    responses((status = 204, description = "revoked"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    if id == ADMIN_KEY_ID {
        return Err(Error::new(
            ErrorKind::FailedPrecondition,
            "admin_key",
            "the bootstrap admin key cannot be revoked (it would lock the operator out); rotate it instead",
        )
        .into());
    }
    let revoked = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(now_micros())
        .bind(&id)
        .execute(&state.keys.db().pool)
        .await
        .map_err(db_error)?;
    if revoked.rows_affected() == 0 {
        load_key(&state, &id).await?; // 404 for an unknown key; a revoked one is done already
    }
    state.keys.announce_revoked(&id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces a key's secret; the old one stops working at once, its settings stay.
#[utoipa::path(post, path = "/api/v1/keys/{id}/rotate", tag = "keys", params(("id" = String, Path, description = "key id")),
    responses((status = 200, body = IssuedKey), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn rotate(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<IssuedKey>> {
    let secret = auth::generate_key();
    let rotated = sqlx::query("UPDATE api_keys SET key_hash = $1, prefix = $2 WHERE id = $3 AND revoked_at IS NULL")
        .bind(auth::hash(&secret))
        .bind(auth::display_prefix(&secret))
        .bind(&id)
        .execute(&state.keys.db().pool)
        .await
        .map_err(db_error)?;
    if rotated.rows_affected() == 0 {
        return Err(Error::not_found("API key", &id).into());
    }
    state.keys.announce_revoked(&id).await;
    Ok(Json(IssuedKey { key: load_key(&state, &id).await?, secret }))
}
