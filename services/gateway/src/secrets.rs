//! `/api/v1/secrets`: the credentials Helix reads — which are set, where each comes from
//! (the environment wins over the vault), when the vault's copy changed — and, for
//! admins, storing and removing them in the vault. Never a value, except
//! `GET /api/v1/secrets/{key}?reveal=true` with a key that carries `secrets:read` on a
//! server whose `vault.allow_reveal` is on (docs/decisions/0010).
//!
//! The environment is consulted only for the names Helix reads (`helix_vault::KNOWN` and
//! the variables the configuration's `api_key_env` settings name); any other name is the
//! vault's or unset, so these routes never read an arbitrary variable of the process.
//! Every call is in the audit log (`audit::record` records GETs of these routes too); a
//! reveal's action is `GET /api/v1/secrets/{key}?reveal=true`.
//!
//! `/api/v1/secrets/status` is a route of its own: a credential named `status` is
//! stored and read with `hx keychain`, not through `/api/v1/secrets/{key}`.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use helix_core::{Error, ErrorKind};
use helix_runtime::HelixConfig;
use helix_vault::{Credentials, Origin, SecretString, Vault, VaultError};
use http::{HeaderValue, StatusCode};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::audit::AuditDetail;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody, Json, Path, Query};
use crate::scopes::Scope;

/// The longest value stored through the API: credentials are tokens and keys, not files.
const MAX_VALUE_BYTES: usize = 64 * 1024;

/// What the secrets routes read: the process's credentials, the names Helix reads, and
/// whether values may be revealed at all.
#[derive(Clone)]
pub struct Secrets {
    credentials: Credentials,
    /// (name, who reads it): `KNOWN`, then the configuration's `api_key_env` names
    read: Arc<Vec<(String, String)>>,
    allow_reveal: bool,
}

impl Secrets {
    pub fn new(config: &HelixConfig, credentials: Credentials) -> Self {
        let mut read: Vec<(String, String)> =
            helix_vault::KNOWN.iter().map(|k| (k.name.to_owned(), k.used_by.to_owned())).collect();
        let mut add = |name: &str, used_by: String| {
            if !read.iter().any(|(n, _)| n == name) {
                read.push((name.to_owned(), used_by));
            }
        };
        for (provider, settings) in &config.llm.providers {
            if let Some(name) = &settings.api_key_env {
                add(name, format!("llm-router: {provider} (llm.providers.{provider}.api_key_env)"));
            }
        }
        if let Some(name) = config.search.openai.as_ref().and_then(|o| o.api_key_env.as_deref()) {
            add(name, "search: OpenAI-compatible embeddings (search.openai.api_key_env)".to_owned());
        }
        Self { credentials, read: Arc::new(read), allow_reveal: config.vault.allow_reveal }
    }

    fn vault(&self) -> Result<&Arc<Vault>, Error> {
        self.credentials.vault().ok_or_else(|| Error::unavailable("this gateway runs without a credential vault"))
    }

    fn used_by(&self, name: &str) -> Option<&str> {
        self.read.iter().find(|(n, _)| n == name).map(|(_, used_by)| used_by.as_str())
    }

    /// Where the value of `name` comes from: the environment only for names Helix reads.
    fn origin(&self, name: &str) -> Origin {
        if self.used_by(name).is_some() {
            return self.credentials.origin(name);
        }
        match self.credentials.vault().is_some_and(|v| v.get(name).is_some()) {
            true => Origin::Vault,
            false => Origin::Unset,
        }
    }

    /// The value the services use, under the same rule as [`Secrets::origin`].
    fn value(&self, name: &str) -> Option<SecretString> {
        match self.used_by(name) {
            Some(_) => self.credentials.get(name),
            None => self.credentials.vault()?.get(name),
        }
    }

    fn info(&self, name: &str) -> SecretInfo {
        let origin = self.origin(name);
        SecretInfo {
            name: name.to_owned(),
            set: origin != Origin::Unset,
            origin: origin.into(),
            used_by: self.used_by(name).map(str::to_owned),
            changed_at: self.credentials.changed_at(name),
        }
    }

    /// Every name Helix reads, then every other name the vault holds, sorted by name.
    fn all(&self) -> Vec<SecretInfo> {
        let mut names: Vec<String> = self.read.iter().map(|(n, _)| n.clone()).collect();
        if let Some(vault) = self.credentials.vault() {
            names.extend(vault.entries().into_iter().map(|e| e.name));
        }
        names.sort();
        names.dedup();
        names.iter().map(|name| self.info(name)).collect()
    }
}

/// Where a credential's value comes from; the environment wins over the vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SecretOrigin {
    Environment,
    Vault,
    Unset,
}

impl From<Origin> for SecretOrigin {
    fn from(origin: Origin) -> Self {
        match origin {
            Origin::Environment => Self::Environment,
            Origin::Vault => Self::Vault,
            Origin::Unset => Self::Unset,
        }
    }
}

/// A credential as these routes show it: never its value.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretInfo {
    pub name: String,
    pub set: bool,
    pub origin: SecretOrigin,
    /// who reads it; null for a name only the vault knows
    pub used_by: Option<String>,
    /// when the vault's copy last changed; null when the vault holds none (it may still
    /// be set in the environment)
    pub changed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretList {
    /// every name Helix reads, then every other name the vault holds, sorted by name
    pub secrets: Vec<SecretInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VaultStatus {
    /// the sealed file
    pub path: String,
    /// false until the first secret is stored (a missing file is an empty vault)
    pub exists: bool,
    /// where its key comes from: a key file, the passphrase, the OS keyring or a
    /// generated key file (never the key)
    pub key_source: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretsStatus {
    pub vault: VaultStatus,
    /// whether this server answers values at all (`vault.allow_reveal`)
    pub allow_reveal: bool,
    pub secrets: Vec<SecretInfo>,
}

/// One credential; `value` only on a permitted reveal.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretDetail {
    pub name: String,
    pub set: bool,
    pub origin: SecretOrigin,
    pub used_by: Option<String>,
    pub changed_at: Option<DateTime<Utc>>,
    /// the value the services use; present only with `?reveal=true`, a key carrying
    /// `secrets:read` and `vault.allow_reveal` on
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    pub value: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SecretParams {
    /// answer the value too (needs `secrets:read` and `vault.allow_reveal`)
    pub reveal: Option<bool>,
}

/// A value to store.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretInput {
    /// 1 byte to 64 KiB, not blank
    #[schema(value_type = String)]
    pub value: SecretString,
}

/// What a store or a removal left: where the services' value comes from now.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretChange {
    pub name: String,
    pub set: bool,
    pub origin: SecretOrigin,
    pub changed_at: Option<DateTime<Utc>>,
    /// the environment sets this name too, and wins over the vault
    pub environment_wins: bool,
    pub message: String,
}

/// Secrets are the deployment's, not a namespace's: a key limited to namespaces is refused.
fn whole_deployment(caller: &Caller) -> Result<(), Error> {
    match caller.namespaces() {
        None => Ok(()),
        Some(_) => Err(Error::new(
            ErrorKind::PermissionDenied,
            "namespace_limited",
            "this API key is limited to namespaces; credentials belong to the whole deployment",
        )),
    }
}

fn checked_name(name: &str) -> Result<(), Error> {
    match helix_vault::valid_name(name) {
        true => Ok(()),
        false => Err(Error::invalid(
            "invalid_secret_name",
            "a secret's name is a letter or '_', then letters, digits, '_', '.' or '-', at most 128 characters",
        )),
    }
}

/// Marks an answer as never to be stored by a cache.
fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn vault_error(error: VaultError) -> Error {
    match error {
        VaultError::InvalidName(_) => Error::invalid("invalid_secret_name", error.to_string()),
        VaultError::EmptyValue => Error::invalid("empty_value", error.to_string()),
        // the sentence names the file and the cause, never a value
        other => Error::internal(format!("the vault could not be written: {other}")),
    }
}

/// Every credential Helix reads and every name in the vault: set or not, from where,
/// when the vault's copy changed. Never a value (admin).
#[utoipa::path(get, path = "/api/v1/secrets", tag = "secrets",
    responses((status = 200, body = SecretList)),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Response> {
    whole_deployment(&caller)?;
    Ok(no_store(Json(SecretList { secrets: state.secrets.all() }).into_response()))
}

/// As `GET /api/v1/secrets`, with the vault's file, whether it exists, its key source
/// and whether this server reveals values (admin).
#[utoipa::path(get, path = "/api/v1/secrets/status", tag = "secrets",
    responses((status = 200, body = SecretsStatus), (status = 503, body = ErrorBody, description = "no vault in this process")),
    security(("bearer" = [])))]
pub async fn status(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Response> {
    whole_deployment(&caller)?;
    let secrets = &state.secrets;
    let vault = secrets.vault()?;
    let status = SecretsStatus {
        vault: VaultStatus {
            path: vault.path().display().to_string(),
            exists: vault.exists(),
            key_source: vault.key_source().to_string(),
        },
        allow_reveal: secrets.allow_reveal,
        secrets: secrets.all(),
    };
    Ok(no_store(Json(status).into_response()))
}

/// One credential: set or not, from where, when the vault's copy changed; its value only
/// with `?reveal=true`, a key that carries `secrets:read` (never implied by `admin`) and
/// `vault.allow_reveal` on (admin).
#[utoipa::path(get, path = "/api/v1/secrets/{key}", tag = "secrets",
    params(("key" = String, Path, description = "the credential's name, e.g. OPENAI_API_KEY"), SecretParams),
    responses((status = 200, body = SecretDetail),
        (status = 400, body = ErrorBody, description = "an invalid name (`invalid_secret_name`)"),
        (status = 403, body = ErrorBody, description = "a reveal this server does not allow (`reveal_disabled`), \
            or by a key without `secrets:read` (`secrets_scope_required`); a namespace-limited key \
            (`namespace_limited`)"),
        (status = 404, body = ErrorBody, description = "a reveal of a name that is not set (`secret_not_set`)")),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(params): Query<SecretParams>,
) -> Response {
    let reveal = params.reveal == Some(true);
    let mut response = match detail(&state.secrets, &caller, &name, reveal) {
        Ok(detail) => Json(detail).into_response(),
        Err(error) => ApiError(error).into_response(),
    };
    if reveal {
        response.extensions_mut().insert(AuditDetail("reveal=true"));
    }
    no_store(response)
}

fn detail(secrets: &Secrets, caller: &Caller, name: &str, reveal: bool) -> Result<SecretDetail, Error> {
    whole_deployment(caller)?;
    checked_name(name)?;
    let SecretInfo { name, set, origin, used_by, changed_at } = secrets.info(name);
    let value = match reveal {
        false => None,
        true => {
            let scoped = caller.grants().allows(Scope::SecretsRead);
            if !secrets.allow_reveal {
                let also = if scoped { "" } else { ", and this API key lacks the scope secrets:read as well" };
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    "reveal_disabled",
                    format!(
                        "this server does not reveal values (vault.allow_reveal / HELIX_VAULT_ALLOW_REVEAL is off){also}"
                    ),
                ));
            }
            if !scoped {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    "secrets_scope_required",
                    "revealing a value needs an API key that carries the scope secrets:read itself (admin does not imply it)",
                ));
            }
            let value = secrets.value(&name).ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    "secret_not_set",
                    format!("{name} is set neither in the environment nor in the vault"),
                )
            })?;
            Some(value.expose_secret().to_owned())
        }
    };
    Ok(SecretDetail { name, set, origin, used_by, changed_at, value })
}

/// Stores a value in the vault (admin). A name the environment also sets is stored, and
/// the answer says the environment wins.
#[utoipa::path(put, path = "/api/v1/secrets/{key}", tag = "secrets",
    params(("key" = String, Path, description = "the credential's name, e.g. OPENAI_API_KEY")),
    request_body = SecretInput,
    responses((status = 200, body = SecretChange),
        (status = 400, body = ErrorBody, description = "an invalid name (`invalid_secret_name`), an empty or blank \
            value (`empty_value`), a value over 64 KiB (`value_too_large`)"),
        (status = 500, body = ErrorBody, description = "the vault file could not be written"),
        (status = 503, body = ErrorBody, description = "no vault in this process")),
    security(("bearer" = [])))]
pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Json(input): Json<SecretInput>,
) -> ApiResult<Response> {
    whole_deployment(&caller)?;
    checked_name(&name)?;
    let value = input.value;
    if value.expose_secret().trim().is_empty() {
        return Err(Error::invalid("empty_value", "a secret's value cannot be empty or blank").into());
    }
    if value.expose_secret().len() > MAX_VALUE_BYTES {
        return Err(Error::invalid("value_too_large", "a secret's value is at most 64 KiB").into());
    }
    let vault = state.secrets.vault()?.clone();
    let stored = name.clone();
    tokio::task::spawn_blocking(move || vault.set(&stored, value))
        .await
        .map_err(|e| Error::internal(format!("the vault write did not finish: {e}")))?
        .map_err(vault_error)?;
    let change = change(&state.secrets, &name, "stored in the vault");
    tracing::info!(name = %name, origin = ?change.origin, "secret stored in the vault");
    Ok(no_store(Json(change).into_response()))
}

/// Removes a value from the vault (admin). The environment may still set the name.
#[utoipa::path(delete, path = "/api/v1/secrets/{key}", tag = "secrets",
    params(("key" = String, Path, description = "the credential's name, e.g. OPENAI_API_KEY")),
    responses((status = 200, body = SecretChange),
        (status = 400, body = ErrorBody, description = "an invalid name (`invalid_secret_name`)"),
        (status = 404, body = ErrorBody, description = "the vault holds no such name (`secret_not_in_vault`)"),
        (status = 500, body = ErrorBody, description = "the vault file could not be written"),
        (status = 503, body = ErrorBody, description = "no vault in this process")),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    whole_deployment(&caller)?;
    checked_name(&name)?;
    let vault = state.secrets.vault()?.clone();
    let removed = name.clone();
    let was_there = tokio::task::spawn_blocking(move || vault.remove(&removed))
        .await
        .map_err(|e| Error::internal(format!("the vault write did not finish: {e}")))?
        .map_err(vault_error)?;
    if !was_there {
        return Err(Error::new(ErrorKind::NotFound, "secret_not_in_vault", format!("the vault holds no {name}")).into());
    }
    let change = change(&state.secrets, &name, "removed from the vault");
    tracing::info!(name = %name, origin = ?change.origin, "secret removed from the vault");
    Ok(no_store((StatusCode::OK, Json(change)).into_response()))
}

fn change(secrets: &Secrets, name: &str, done: &str) -> SecretChange {
    let info = secrets.info(name);
    let environment_wins = info.origin == SecretOrigin::Environment;
    let message = match (environment_wins, info.set) {
        (true, _) => format!("{done}; {name} is also set in the environment, which wins over the vault"),
        (false, true) => format!("{done}; services read credentials when they start"),
        (false, false) => format!("{done}; {name} is now unset"),
    };
    SecretChange {
        name: info.name,
        set: info.set,
        origin: info.origin,
        changed_at: info.changed_at,
        environment_wins,
        message,
    }
}
