//! Pairing a device: an admin asks for a one-time code (`POST /api/v1/pair/initiate`),
//! the device trades it for its own API key (`POST /api/v1/pair/confirm`).
//!
//! The code is 8 characters from RFC 8628 §6.1's 20 consonants (20^8 ≈ 2.6·10^10), shown
//! as `XXXX-XXXX`. Only its SHA-256 is stored. Every wrong guess counts against the
//! pairing it names, or — when it names none — against every pending pairing, since a
//! guess is a guess at each of them; the fifth wrong guess burns a code, so the sixth
//! fails even when right. Confirmation is single use (a guarded UPDATE), throttled per
//! client address, and neither code nor token is ever logged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use helix_core::{Error, ErrorKind};
use helix_events::{Envelope, subjects};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{self, Caller, db_error, now_micros};
use crate::error::{ApiResult, ErrorBody, Json};
use crate::keys::{KeySettings, check_namespaces, check_scopes};
use crate::scopes::Grants;

/// RFC 8628 §6.1: no vowels (no words), no easily confused characters.
const ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
const CODE_LEN: usize = 8;
/// Wrong guesses a code survives.
pub const MAX_ATTEMPTS: i64 = 5;
const DEFAULT_TTL_SECS: u32 = 300;
const MAX_TTL_SECS: u32 = 600;
/// Confirmations one client address may try per minute.
const CONFIRMS_PER_MINUTE: usize = 10;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PairInitiate {
    /// scopes the paired device's key gets; absent: `write` (read and write, never admin)
    pub scopes: Option<Vec<String>>,
    /// limit the device's key to these namespaces; absent: the initiator's own
    pub namespaces: Option<Vec<String>>,
    /// seconds the code is valid, 1-600 (default 300)
    pub ttl_secs: Option<u32>,
    /// a label for the device; the device may give its own at confirmation
    pub device_name: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PairCode {
    pub pairing_id: String,
    /// `XXXX-XXXX`: enter it on the device
    pub code: String,
    pub expires_at: DateTime<Utc>,
    pub scopes: Vec<String>,
    pub namespaces: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PairConfirm {
    /// the code shown at initiation; dashes, spaces and case are ignored
    pub code: String,
    /// the device's name, stored as the key's name
    pub device_name: Option<String>,
    /// the pairing the code belongs to, when known
    pub pairing_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PairedKey {
    /// the device's bearer token (`hx_...`): shown only here
    pub token: String,
    pub key_id: String,
    pub scopes: Vec<String>,
    pub namespaces: Option<Vec<String>>,
}

/// Recent confirmation attempts per client address.
#[derive(Clone, Default)]
pub struct ConfirmThrottle {
    attempts: Arc<Mutex<HashMap<IpAddr, Vec<Instant>>>>,
}

impl ConfirmThrottle {
    fn admit(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut attempts = self.attempts.lock().expect("pairing throttle lock");
        if attempts.len() > 10_000 {
            attempts.retain(|_, times| times.iter().any(|t| now - *t < Duration::from_secs(60)));
        }
        let times = attempts.entry(ip).or_default();
        times.retain(|t| now - *t < Duration::from_secs(60));
        if times.len() >= CONFIRMS_PER_MINUTE {
            return false;
        }
        times.push(now);
        true
    }
}

fn new_code() -> String {
    let mut rng = rand::rng();
    (0..CODE_LEN).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

/// The code as stored and compared: upper case, without separators.
fn normalise(code: &str) -> String {
    code.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_uppercase()).collect()
}

/// A one-time code for a new device.
#[utoipa::path(post, path = "/api/v1/pair/initiate", tag = "keys", request_body = PairInitiate,
    responses((status = 201, body = PairCode), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn initiate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(input): Json<PairInitiate>,
) -> ApiResult<(StatusCode, Json<PairCode>)> {
    let scopes = input.scopes.unwrap_or_else(|| vec!["write".to_owned()]);
    let grants = check_scopes(&scopes, &caller)?;
    let namespaces = check_namespaces(input.namespaces, &caller)?;
    let ttl = input.ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return Err(Error::invalid("invalid_ttl", format!("ttl_secs must be from 1 to {MAX_TTL_SECS}")).into());
    }
    if let Some(name) = &input.device_name
        && (name.chars().count() > 128 || name.chars().any(char::is_control))
    {
        return Err(Error::invalid("invalid_name", "device_name: at most 128 characters, no control characters").into());
    }
    let id = uuid::Uuid::now_v7().to_string();
    let code = new_code();
    let now = now_micros();
    let expires_at = now + i64::from(ttl) * 1_000_000;
    sqlx::query(
        "INSERT INTO pairings (id, code_hash, scopes, namespaces, device_name, created_by, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&id)
    .bind(auth::hash(&code))
    .bind(grants.stored())
    .bind(namespaces.as_ref().map(|n| n.join(",")))
    .bind(input.device_name)
    .bind(caller.key_id())
    .bind(now)
    .bind(expires_at)
    .execute(&state.keys.db().pool)
    .await
    .map_err(|error| match error {
        // 20^8 codes: two pending alike is a one-in-billions accident; the caller retries
        sqlx::Error::Database(e) if e.is_unique_violation() => Error::unavailable("try again"),
        other => db_error(other),
    })?;
    let display = format!("{}-{}", &code[..4], &code[4..]);
    Ok((
        StatusCode::CREATED,
        Json(PairCode {
            pairing_id: id,
            code: display,
            expires_at: DateTime::from_timestamp_micros(expires_at).unwrap_or_default(),
            scopes: grants.names().to_vec(),
            namespaces,
        }),
    ))
}

/// Trades a pairing code for a new API key with the scopes chosen at initiation.
#[utoipa::path(post, path = "/api/v1/pair/confirm", tag = "keys", request_body = PairConfirm,
    responses((status = 201, body = PairedKey), (status = 400, body = ErrorBody),
        (status = 403, description = "wrong, expired, used or burned code", body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, description = "too many tries from this address", body = ErrorBody)),
    security(()))]
pub async fn confirm(
    State(state): State<AppState>,
    connection: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    Json(input): Json<PairConfirm>,
) -> ApiResult<(StatusCode, Json<PairedKey>)> {
    let ip = connection.map(|Extension(ConnectInfo(addr))| addr.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    if !state.pair_throttle.admit(ip) {
        return Err(Error::new(
            ErrorKind::RateLimited,
            "too_many_attempts",
            "too many pairing attempts from this address; wait a minute",
        )
        .into());
    }
    let code = normalise(&input.code);
    let device_name = input.device_name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
    if let Some(name) = &device_name
        && (name.chars().count() > 128 || name.chars().any(char::is_control))
    {
        return Err(Error::invalid("invalid_name", "device_name: at most 128 characters, no control characters").into());
    }
    let refused = || Error::new(ErrorKind::PermissionDenied, "invalid_pairing_code", "the pairing code is not valid");
    let db = &state.keys.db().pool;
    let now = now_micros();
    let found = match code.len() == CODE_LEN {
        true => sqlx::query(
            "SELECT id, code_hash, scopes, namespaces, device_name, created_by FROM pairings \
             WHERE code_hash = $1 AND state = 'pending' AND expires_at > $2 AND attempts < $3",
        )
        .bind(auth::hash(&code))
        .bind(now)
        .bind(MAX_ATTEMPTS)
        .fetch_optional(db)
        .await
        .map_err(db_error)?,
        false => None,
    };
    // the code is found by its SHA-256, never compared as text: how long the lookup takes
    // says nothing of how close a guess came
    let found = found.filter(|row| {
        let id: String = row.try_get("id").unwrap_or_default();
        input.pairing_id.as_deref().is_none_or(|named| named == id)
    });
    let Some(row) = found else {
        count_wrong_guess(&state, input.pairing_id.as_deref(), now).await?;
        return Err(refused().into());
    };
    let id: String = row.try_get("id").map_err(db_error)?;
    let key_id = uuid::Uuid::now_v7().to_string();
    // single use: of two confirmations racing, one UPDATE finds the row pending
    let claimed = sqlx::query(
        "UPDATE pairings SET state = 'used', key_id = $1 WHERE id = $2 AND state = 'pending' AND attempts < $3",
    )
    .bind(&key_id)
    .bind(&id)
    .bind(MAX_ATTEMPTS)
    .execute(db)
    .await
    .map_err(db_error)?;
    if claimed.rows_affected() == 0 {
        return Err(refused().into());
    }
    let scopes: String = row.try_get("scopes").map_err(db_error)?;
    let namespaces: Option<String> = row.try_get("namespaces").map_err(db_error)?;
    let initiator_name: Option<String> = row.try_get("device_name").map_err(db_error)?;
    let created_by: String = row.try_get("created_by").map_err(db_error)?;
    let name = device_name.or(initiator_name).unwrap_or_else(|| "paired device".to_owned());
    let namespaces = namespaces.map(|n| auth::split_list(&n));
    // scopes and namespaces were checked against the initiator at initiation
    let settings = KeySettings {
        name,
        grants: Grants::from_stored(&scopes).map_err(Error::internal)?,
        namespaces,
        expires_at: None,
        daily_budget_usd: None,
        requests_per_minute: None,
        origin: "pairing",
    };
    let token = crate::keys::insert_key(&state, &key_id, &settings, &created_by).await?;
    let event = Envelope::new(
        subjects::GATEWAY_PAIRING_COMPLETED,
        crate::SERVICE,
        serde_json::json!({"pairing_id": id, "client_name": settings.name}),
    );
    if let Err(error) = state.bus.publish(&event).await {
        tracing::warn!(%error, "pairing completed but not announced");
    }
    Ok((
        StatusCode::CREATED,
        Json(PairedKey { token, key_id, scopes: settings.grants.names().to_vec(), namespaces: settings.namespaces }),
    ))
}

/// A wrong guess costs the pairing it named, or every pending one; the last allowed
/// wrong guess burns a code.
async fn count_wrong_guess(state: &AppState, pairing_id: Option<&str>, now: i64) -> Result<(), Error> {
    let db = &state.keys.db().pool;
    let counted = match pairing_id {
        Some(id) => {
            sqlx::query("UPDATE pairings SET attempts = attempts + 1 WHERE id = $1 AND state = 'pending'")
                .bind(id)
                .execute(db)
                .await
        }
        None => {
            sqlx::query("UPDATE pairings SET attempts = attempts + 1 WHERE state = 'pending' AND expires_at > $1")
                .bind(now)
                .execute(db)
                .await
        }
    };
    counted.map_err(db_error)?;
    sqlx::query("UPDATE pairings SET state = 'burned' WHERE state = 'pending' AND attempts >= $1")
        .bind(MAX_ATTEMPTS)
        .execute(db)
        .await
        .map_err(db_error)?;
    Ok(())
}
