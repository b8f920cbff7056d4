//! The audit log: who changed what, and who was refused. Every mutating call (POST, PUT,
//! PATCH, DELETE), every read of the credentials (`/api/v1/secrets*`) and every 401/403
//! on any route becomes one row of `audit_log`: time, key id, action (method + route
//! template), resource, status, client address, user agent, request id. Never a secret:
//! no credential header, no query string (it may hold codes), no body — only the route
//! template, the path parameter naming the resource, and what a handler adds to the
//! action with [`AuditDetail`] (a reveal of a credential: `?reveal=true`).
//!
//! Recording is off the request path: [`record`] hands an entry to a bounded queue and
//! one writer task commits what has gathered — every 100 ms or 500 entries — as one
//! multi-row INSERT. The retention task deletes entries older than
//! `gateway.audit_retention_days` once at start and hourly, in bounded batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use helix_core::Error;
use helix_runtime::ServiceContext;
use helix_runtime::db::{self, Database, db_error};
use http::{HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::ApiKeyId;
use crate::error::{ApiResult, Json, Query};

/// Entries waiting for the writer. At the 500-row batches the writer commits, this is
/// seconds of a busy gateway's mutating calls: only a database that stopped keeping up
/// fills it.
const QUEUE: usize = 16_384;
/// Rows of one INSERT: 5,000 parameters, under SQLite's and PostgreSQL's limits.
const BATCH: usize = 500;
/// How long the writer gathers entries after the first before it commits them.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// How long a request waits for room in a full queue before its entry is dropped.
const FULL_WAIT: Duration = Duration::from_millis(50);
/// How long the writer waits at shutdown for the REST server to finish its requests.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Rows one DELETE of the retention task removes, so pruning a long backlog never holds
/// a long lock.
const PRUNE_BATCH: i64 = 1_000;
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Longest user agent and request id kept (both are the client's to choose).
const MAX_TEXT: usize = 256;

/// The audit log of this gateway: the queue to its writer (absent when the log is off)
/// and the database queries read.
#[derive(Clone)]
pub struct AuditLog {
    db: Database,
    queue: Option<mpsc::Sender<Entry>>,
    dropped: Arc<Dropped>,
}

#[derive(Default)]
struct Dropped {
    count: AtomicU64,
    /// unix seconds of the last warning, so a flood warns once every 10 s, not per entry
    warned_at: AtomicI64,
}

/// One row of the log, as the writer inserts it.
struct Entry {
    id: Uuid,
    at: i64,
    actor: String,
    action: String,
    resource_type: Option<String>,
    resource_id: Option<String>,
    status: u16,
    client_ip: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
}

impl AuditLog {
    /// Starts the writer (when `gateway.audit` is on) and the retention task on the
    /// context's tasks.
    pub fn start(ctx: &ServiceContext, db: Database) -> Self {
        let queue = ctx.config.gateway.audit.then(|| {
            let (sender, receiver) = mpsc::channel(QUEUE);
            ctx.tasks.spawn(write_entries(db.clone(), receiver, ctx.shutdown.clone()));
            sender
        });
        // entries written while the log was on still age out when it is off
        ctx.tasks.spawn(keep_retention(db.clone(), ctx.config.gateway.audit_retention_days, ctx.shutdown.clone()));
        Self { db, queue, dropped: Arc::default() }
    }

    /// Queues `entry`. A full queue means the database is falling behind: the request
    /// waits up to [`FULL_WAIT`] for room — a flood of calls (say, guessed keys, exactly
    /// what the log must show) is slowed down instead of erasing its own trail — and
    /// past that the entry is dropped and counted, so a stalled database never stalls
    /// the API.
    async fn push(&self, queue: &mpsc::Sender<Entry>, entry: Entry) {
        let entry = match queue.try_send(entry) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Closed(_)) => return,
            Err(mpsc::error::TrySendError::Full(entry)) => entry,
        };
        if let Err(mpsc::error::SendTimeoutError::Timeout(_)) = queue.send_timeout(entry, FULL_WAIT).await {
            let dropped = self.dropped.count.fetch_add(1, Ordering::Relaxed) + 1;
            let now = Utc::now().timestamp();
            let last = self.dropped.warned_at.load(Ordering::Relaxed);
            if now - last >= 10
                && self.dropped.warned_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            {
                tracing::warn!(dropped, "audit queue full: entries dropped since start");
            }
        }
    }
}

/// Words a handler adds to its call's recorded action, after `?` (a response extension):
/// a fixed text of the handler's, never anything of the request.
#[derive(Debug, Clone, Copy)]
pub struct AuditDetail(pub &'static str);

/// Routes whose reads are recorded too: the credentials.
const READS_RECORDED: &str = "/api/v1/secrets";

/// Records the request when it mutates, reads credentials, or was refused. Sits outside the key check, so
/// it sees that check's 401 and 403 answers, and reads the caller's key id from the
/// response (`auth::ApiKeyId`), which the key check puts there once it knows the key.
pub async fn record(State(log): State<AuditLog>, request: Request, next: Next) -> Response {
    let Some(queue) = log.queue.as_ref() else { return next.run(request).await };
    let id = Uuid::now_v7();
    let at = Utc::now().timestamp_micros();
    let (mut parts, body) = request.into_parts();
    // cheap handles only (Arcs and shared bytes): most requests are reads that are never recorded
    let method = parts.method.clone();
    let template = parts.extensions.get::<MatchedPath>().cloned();
    let client = parts.extensions.get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let user_agent = parts.headers.get(http::header::USER_AGENT).cloned();
    let request_id = parts.headers.get("x-request-id").cloned();
    let params = RawPathParams::from_request_parts(&mut parts, &()).await.ok();
    let response = next.run(Request::from_parts(parts, body)).await;

    let status = response.status();
    let mutating =
        method == Method::POST || method == Method::PUT || method == Method::PATCH || method == Method::DELETE;
    let template = template.as_ref().map_or("", MatchedPath::as_str);
    let recorded_read = template.starts_with(READS_RECORDED);
    if !(mutating || recorded_read || status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN) {
        return response;
    }
    let resource_type = resource_type(template);
    let resource_id = params.as_ref().and_then(|p| p.iter().next().map(|(_, value)| value.to_owned())).or_else(|| {
        // a creation names what it created in Location, when the handler says so
        let location = response.headers().get(http::header::LOCATION)?.to_str().ok()?;
        let last = location.split(['?', '#']).next()?.trim_end_matches('/').rsplit('/').next()?;
        Some(last.to_owned()).filter(|s| !s.is_empty())
    });
    let entry = Entry {
        id,
        at,
        actor: response.extensions().get::<ApiKeyId>().map_or_else(|| "anonymous".to_owned(), |k| k.0.clone()),
        action: match response.extensions().get::<AuditDetail>() {
            Some(AuditDetail(detail)) => format!("{method} {template}?{detail}"),
            None => format!("{method} {template}"),
        },
        resource_type,
        resource_id: resource_id.map(|id| bounded(id.as_bytes())),
        status: status.as_u16(),
        client_ip: client.map(|ip| ip.to_string()),
        user_agent: user_agent.as_ref().map(HeaderValue::as_bytes).map(bounded),
        request_id: request_id.as_ref().map(HeaderValue::as_bytes).map(bounded),
    };
    log.push(queue, entry).await;
    response
}

/// What a route acts on: the template's fixed segments after the API prefix (`/api/v1`,
/// `/api`, `/v1`) up to its first parameter, joined by `.` — `/api/v1/nodes/{id}` is
/// `nodes`, `/api/v1/graph/edges/{id}` is `graph.edges`, `/api/v1/nodes/bulk` is
/// `nodes.bulk`. The first parameter is the resource's id.
fn resource_type(template: &str) -> Option<String> {
    let path = template.trim_start_matches('/');
    let path = path.strip_prefix("api/").unwrap_or(path);
    let path = path.strip_prefix("v1/").unwrap_or(path);
    let fixed: Vec<&str> =
        path.split('/').take_while(|segment| !segment.starts_with('{')).filter(|s| !s.is_empty()).collect();
    Some(fixed.join(".")).filter(|t| !t.is_empty())
}

/// The client's text, lossily decoded and cut to [`MAX_TEXT`] bytes at a character boundary.
fn bounded(bytes: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    if text.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The one writer: gathers what arrives for [`FLUSH_EVERY`] after the first entry (or
/// until [`BATCH`] are waiting) and commits it as one INSERT. At shutdown it keeps
/// taking entries until the REST server has finished (the queue closes) or
/// [`DRAIN_GRACE`] passes, then writes what is queued.
async fn write_entries(db: Database, mut queue: mpsc::Receiver<Entry>, shutdown: CancellationToken) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut drain_until: Option<Instant> = None;
    let shutdown = &shutdown;
    loop {
        let stop = async move {
            match drain_until {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => shutdown.cancelled().await,
            }
        };
        let received = tokio::select! {
            received = queue.recv_many(&mut batch, BATCH) => received,
            () = stop => {
                if drain_until.is_none() {
                    drain_until = Some(Instant::now() + DRAIN_GRACE);
                    continue;
                }
                while batch.len() < BATCH && let Ok(entry) = queue.try_recv() {
                    batch.push(entry);
                }
                insert(&db, &mut batch).await;
                if queue.is_empty() {
                    return;
                }
                continue;
            }
        };
        if received == 0 {
            return; // every sender is gone: the REST server has stopped
        }
        let deadline = Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            let room = BATCH - batch.len();
            tokio::select! {
                received = queue.recv_many(&mut batch, room) => if received == 0 { break },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        insert(&db, &mut batch).await;
    }
}

/// Inserts `batch` as one statement and empties it; a failing database is tried three
/// times before the entries are given up (and counted in the log).
async fn insert(db: &Database, batch: &mut Vec<Entry>) {
    if batch.is_empty() {
        return;
    }
    const COLUMNS: usize = 10;
    let sql = format!(
        "INSERT INTO audit_log (id, at, actor, action, resource_type, resource_id, status, client_ip, user_agent, \
         request_id) VALUES {}",
        db::value_rows(db.backend, batch.len(), COLUMNS)
    );
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=3 {
        let mut query = sqlx::query(&sql);
        for entry in batch.iter() {
            query = query
                .bind(entry.id.to_string())
                .bind(entry.at)
                .bind(entry.actor.clone())
                .bind(entry.action.clone())
                .bind(entry.resource_type.clone())
                .bind(entry.resource_id.clone())
                .bind(i64::from(entry.status))
                .bind(entry.client_ip.clone())
                .bind(entry.user_agent.clone())
                .bind(entry.request_id.clone());
        }
        match query.execute(&db.writer).await {
            Ok(_) => break,
            Err(error) if attempt < 3 => {
                tracing::warn!(%error, attempt, "audit entries not written, retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(error) => tracing::error!(%error, lost = batch.len(), "audit entries not written"),
        }
    }
    batch.clear();
}

/// Deletes entries older than `retention_days`, [`PRUNE_BATCH`] rows per statement;
/// returns how many went.
pub async fn prune(db: &Database, retention_days: u32) -> helix_core::Result<u64> {
    let cutoff = Utc::now() - chrono::Duration::days(i64::from(retention_days));
    let cutoff = cutoff.timestamp_micros();
    let sql = format!("DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE at < $1 LIMIT {PRUNE_BATCH})");
    let mut deleted = 0;
    loop {
        let done = sqlx::query(&sql).bind(cutoff).execute(&db.writer).await.map_err(db_error)?.rows_affected();
        deleted += done;
        if done < PRUNE_BATCH as u64 {
            return Ok(deleted);
        }
    }
}

/// Prunes once at start, then hourly. Every gateway replica runs it: the deletes are
/// idempotent, and a replica's restart does not reset the others' schedule.
async fn keep_retention(db: Database, retention_days: u32, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match prune(&db, retention_days).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, retention_days, "audit entries past retention deleted"),
            Err(error) => tracing::warn!(code = error.code(), "audit retention failed, trying again in an hour"),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditParams {
    /// key id, or `anonymous`
    pub actor: Option<String>,
    /// `METHOD /route/{template}` exactly, or a prefix ending in `*` (`DELETE *`, `POST /api/v1/keys*`)
    pub action: Option<String>,
    /// `type` or `type/id` (`nodes`, `nodes/0190...`)
    pub resource: Option<String>,
    /// a status code, or `success` (below 400), `denied` (401, 403), `error` (other 4xx, 5xx)
    pub outcome: Option<String>,
    /// RFC 3339; entries at or after
    pub since: Option<String>,
    /// RFC 3339; entries before
    pub until: Option<String>,
    /// 1-1000, default 100
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: String,
    pub at: DateTime<Utc>,
    /// the API key's id, or `anonymous`
    pub actor: String,
    /// method and route template: `DELETE /api/v1/nodes/{id}`
    pub action: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    /// the answer's status code
    pub status: u16,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// newest first
    pub entries: Vec<AuditEntry>,
    /// pass as `cursor` for the next page; absent on the last page
    pub next_cursor: Option<String>,
}

/// The audit log, newest first, filtered (admin).
#[utoipa::path(get, path = "/api/v1/audit/query", tag = "audit", params(AuditParams),
    responses((status = 200, body = AuditPage), (status = 400, body = crate::ErrorBody),
        (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("bearer" = [])))]
pub async fn query(State(state): State<AppState>, Query(params): Query<AuditParams>) -> ApiResult<Json<AuditPage>> {
    let limit = match params.limit {
        None => 100,
        Some(n @ 1..=1000) => n,
        Some(_) => return Err(Error::invalid("invalid_limit", "limit must be from 1 to 1000").into()),
    };
    let after = match params.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(cursor) => {
            Some(Uuid::parse_str(cursor).map_err(|_| Error::invalid("invalid_cursor", "the cursor is not valid"))?)
        }
    };
    let (sql, args) = filtered(&params)?;
    let (entries, next_cursor) =
        db::newest_first(&state.audit.db.pool, sql, args, after, limit, entry_from_row, |e: &AuditEntry| {
            Uuid::parse_str(&e.id).unwrap_or_default()
        })
        .await?;
    Ok(Json(AuditPage { entries, next_cursor }))
}

/// The SELECT with the filters' conditions. Text is bound; numbers (status codes, times)
/// are parsed here and written into the statement, as both backends then compare them
/// as integers.
fn filtered(params: &AuditParams) -> Result<(String, Vec<String>), Error> {
    let mut sql =
        "SELECT id, at, actor, action, resource_type, resource_id, status, client_ip, user_agent, request_id \
                   FROM audit_log WHERE 1 = 1"
            .to_owned();
    let mut args = Vec::new();
    let mut bind = |sql: &mut String, condition: &str, value: &str| {
        args.push(value.to_owned());
        sql.push_str(&condition.replace("$?", &format!("${}", args.len())));
    };
    if let Some(actor) = &params.actor {
        bind(&mut sql, " AND actor = $?", actor);
    }
    match params.action.as_deref().map(|a| (a, a.strip_suffix('*'))) {
        None => {}
        // substr counts characters on both backends, and unlike LIKE needs no escaping of `_` and `%`
        Some((_, Some(prefix))) => {
            let condition = format!(" AND substr(action, 1, {}) = $?", prefix.chars().count());
            bind(&mut sql, &condition, prefix);
        }
        Some((action, None)) => bind(&mut sql, " AND action = $?", action),
    }
    if let Some(resource) = params.resource.as_deref() {
        match resource.split_once('/') {
            Some((kind, id)) => {
                bind(&mut sql, " AND resource_type = $?", kind);
                bind(&mut sql, " AND resource_id = $?", id);
            }
            None => bind(&mut sql, " AND resource_type = $?", resource),
        }
    }
    match params.outcome.as_deref() {
        None => {}
        Some("success") => sql.push_str(" AND status < 400"),
        Some("denied") => sql.push_str(" AND status IN (401, 403)"),
        Some("error") => sql.push_str(" AND status >= 400 AND status NOT IN (401, 403)"),
        Some(code) => match code.parse::<u16>() {
            Ok(code @ 100..=599) => sql.push_str(&format!(" AND status = {code}")),
            _ => {
                return Err(Error::invalid(
                    "invalid_outcome",
                    "outcome must be a status code, success, denied or error",
                ));
            }
        },
    }
    for (text, op) in [(&params.since, ">="), (&params.until, "<")] {
        if let Some(text) = text {
            let time = DateTime::parse_from_rfc3339(text)
                .map_err(|_| Error::invalid("invalid_time", "since and until must be RFC 3339 times"))?;
            sql.push_str(&format!(" AND at {op} {}", time.timestamp_micros()));
        }
    }
    Ok((sql, args))
}

fn entry_from_row(row: &sqlx::any::AnyRow) -> helix_core::Result<AuditEntry> {
    let status: i64 = row.try_get("status").map_err(db_error)?;
    Ok(AuditEntry {
        id: row.try_get("id").map_err(db_error)?,
        at: db::from_micros(row.try_get("at").map_err(db_error)?),
        actor: row.try_get("actor").map_err(db_error)?,
        action: row.try_get("action").map_err(db_error)?,
        resource_type: row.try_get("resource_type").map_err(db_error)?,
        resource_id: row.try_get("resource_id").map_err(db_error)?,
        status: u16::try_from(status).unwrap_or_default(),
        client_ip: row.try_get("client_ip").map_err(db_error)?,
        user_agent: row.try_get("user_agent").map_err(db_error)?,
        request_id: row.try_get("request_id").map_err(db_error)?,
    })
}
