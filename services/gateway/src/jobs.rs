//! `/api/v1/jobs/...`: the job queue, answered by the jobs service. The original
//! system's routes (`GET /api/v1/jobs`, `/stats`, `/dead-letter`, `/{id}`, `POST
//! /{id}/retry`, `/{id}/cancel`, `/purge`) plus `POST /api/v1/jobs` to enqueue, which
//! answers 201 with the job (`id`, `state`, ...). The worker protocol (lease,
//! heartbeat, complete, fail) is gRPC only. Schedules: `/api/v1/jobs/schedules[/{id}]`
//! (create, list, get, update with PUT, delete) and `POST .../{id}/trigger`.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use helix_core::Error;
use helix_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiResult, ErrorBody, Json, Path, Query};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobInput {
    /// what to do: `echo`, `sleep`, `fail`, `http.request`, or a kind of your workers;
    /// 1-64 characters of a-z 0-9 . _ -
    pub kind: String,
    /// default `default`
    pub queue: Option<String>,
    /// the handler's input, a JSON object
    pub payload: Option<Map<String, Value>>,
    /// higher runs first; default 0
    pub priority: Option<i32>,
    /// attempts before the dead-letter queue: default 3, at most 100
    pub max_attempts: Option<u32>,
    /// not before this time (RFC 3339)
    pub run_at: Option<DateTime<Utc>>,
    /// not before this many seconds from now (instead of run_at)
    pub delay_secs: Option<u32>,
    /// seconds one attempt may run: default 300
    pub timeout_secs: Option<u32>,
    /// a key used before returns the job enqueued then, not a new one
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobBody {
    pub id: String,
    pub kind: String,
    pub queue: String,
    pub payload: Map<String, Value>,
    /// pending, running, completed, failed (waiting for a retry), dead, cancelled
    pub state: String,
    pub priority: i32,
    /// leases so far: the fencing token of the current one
    pub attempt: u32,
    /// failed attempts so far
    pub retries: u32,
    pub max_attempts: u32,
    pub last_error: Option<String>,
    pub result: Option<Map<String, Value>>,
    pub timeout_secs: u32,
    pub idempotency_key: Option<String>,
    pub schedule_id: Option<String>,
    pub worker_id: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    pub progress: f64,
    pub progress_message: Option<String>,
    pub run_at: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    /// newest first
    pub jobs: Vec<JobBody>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct JobParams {
    /// pending, running, completed, failed, dead or cancelled
    pub state: Option<String>,
    pub kind: Option<String>,
    pub queue: Option<String>,
    /// default 50, at most 1000
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct DeadLetterParams {
    pub kind: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct StatsParams {
    /// only this queue
    pub queue: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct Counts {
    pub pending: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub dead: u64,
    pub cancelled: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KindStats {
    pub kind: String,
    #[serde(flatten)]
    pub counts: Counts,
    /// mean run time of completed jobs
    pub mean_duration_secs: f64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueueStats {
    pub queue: String,
    #[serde(flatten)]
    pub counts: Counts,
}

/// Counted from one snapshot: the numbers agree with each other.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobStatsBody {
    pub total: u64,
    #[serde(flatten)]
    pub counts: Counts,
    pub by_queue: Vec<QueueStats>,
    pub by_kind: Vec<KindStats>,
    pub oldest_pending_at: Option<DateTime<Utc>>,
    /// workers holding a lease
    pub active_workers: u32,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeInput {
    /// completed, cancelled, dead; default completed and cancelled
    #[serde(default)]
    pub states: Vec<String>,
    /// only jobs finished before this time (RFC 3339)
    pub finished_before: Option<DateTime<Utc>>,
    pub kind: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Purged {
    pub purged: u64,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryInput {
    /// count attempts from zero again
    #[serde(default)]
    pub reset_retries: bool,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobCancelInput {
    pub reason: Option<String>,
}

fn time(t: Option<helix_proto::Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos as u32))
}

fn object(text: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

fn text(value: String) -> Option<String> {
    Some(value).filter(|v| !v.is_empty())
}

pub fn job_body(job: pb::Job) -> JobBody {
    JobBody {
        payload: object(&job.payload_json).unwrap_or_default(),
        result: object(&job.result_json),
        lease_expires_at: time(job.lease_expires_at),
        run_at: time(job.run_at),
        created_at: time(job.created_at),
        updated_at: time(job.updated_at),
        started_at: time(job.started_at),
        finished_at: time(job.finished_at),
        id: job.id,
        kind: job.kind,
        queue: job.queue,
        state: job.state,
        priority: job.priority,
        attempt: job.attempt,
        retries: job.retries,
        max_attempts: job.max_attempts,
        last_error: text(job.last_error),
        timeout_secs: job.timeout_secs,
        idempotency_key: text(job.idempotency_key),
        schedule_id: text(job.schedule_id),
        worker_id: text(job.worker_id),
        cancel_requested: job.cancel_requested,
        progress: job.progress,
        progress_message: text(job.progress_message),
    }
}

fn timestamp(t: DateTime<Utc>) -> helix_proto::Timestamp {
    helix_proto::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

fn job_list(page: pb::ListJobsResponse) -> JobList {
    JobList { jobs: page.jobs.into_iter().map(job_body).collect(), next_cursor: text(page.next_cursor) }
}

fn enqueue_request(input: JobInput) -> Result<pb::EnqueueJobRequest, Error> {
    let run_at = match (input.run_at, input.delay_secs) {
        (Some(_), Some(_)) => return Err(Error::invalid("invalid_run_at", "give run_at or delay_secs, not both")),
        (Some(at), None) => Some(at),
        (None, Some(secs)) => Some(Utc::now() + chrono::Duration::seconds(i64::from(secs))),
        (None, None) => None,
    };
    Ok(pb::EnqueueJobRequest {
        kind: input.kind,
        queue: input.queue.unwrap_or_default(),
        payload_json: input.payload.map(|p| Value::Object(p).to_string()).unwrap_or_default(),
        priority: input.priority.unwrap_or(0),
        max_attempts: input.max_attempts,
        run_at: run_at.map(timestamp),
        timeout_secs: input.timeout_secs,
        idempotency_key: input.idempotency_key.unwrap_or_default(),
    })
}

#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", request_body = JobInput,
    responses((status = 201, body = JobBody), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn enqueue(
    State(state): State<AppState>,
    Json(input): Json<JobInput>,
) -> ApiResult<(StatusCode, Json<JobBody>)> {
    let job = state.jobs().enqueue_job(enqueue_request(input)?).await?.into_inner();
    Ok((StatusCode::CREATED, Json(job_body(job))))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkJobsInput {
    /// 1 to 1000 jobs, enqueued all or none
    pub jobs: Vec<JobInput>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkBody {
    /// in the order given
    pub jobs: Vec<JobBody>,
}

#[utoipa::path(post, path = "/api/v1/jobs/bulk", tag = "jobs", request_body = BulkJobsInput,
    responses((status = 201, body = BulkBody), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn enqueue_bulk(
    State(state): State<AppState>,
    Json(input): Json<BulkJobsInput>,
) -> ApiResult<(StatusCode, Json<BulkBody>)> {
    let jobs = input.jobs.into_iter().map(enqueue_request).collect::<Result<Vec<_>, Error>>()?;
    let jobs = state.jobs().enqueue_jobs(pb::EnqueueJobsRequest { jobs }).await?.into_inner().jobs;
    Ok((StatusCode::CREATED, Json(BulkBody { jobs: jobs.into_iter().map(job_body).collect() })))
}

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(JobParams),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, Query(params): Query<JobParams>) -> ApiResult<Json<JobList>> {
    let request = pb::ListJobsRequest {
        state: params.state,
        kind: params.kind,
        queue: params.queue,
        page: Some(pb::PageRequest {
            limit: crate::nodes::page_limit(params.limit)?,
            cursor: params.cursor.unwrap_or_default(),
        }),
    };
    Ok(Json(job_list(state.jobs().list_jobs(request).await?.into_inner())))
}

#[utoipa::path(get, path = "/api/v1/jobs/dead-letter", tag = "jobs", params(DeadLetterParams),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn dead_letter(
    State(state): State<AppState>,
    Query(params): Query<DeadLetterParams>,
) -> ApiResult<Json<JobList>> {
    let request = pb::ListDeadLetterJobsRequest {
        kind: params.kind,
        page: Some(pb::PageRequest {
            limit: crate::nodes::page_limit(params.limit)?,
            cursor: params.cursor.unwrap_or_default(),
        }),
    };
    Ok(Json(job_list(state.jobs().list_dead_letter_jobs(request).await?.into_inner())))
}

#[utoipa::path(get, path = "/api/v1/jobs/stats", tag = "jobs", params(StatsParams),
    responses((status = 200, body = JobStatsBody), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn stats(State(state): State<AppState>, Query(params): Query<StatsParams>) -> ApiResult<Json<JobStatsBody>> {
    let s = state.jobs().get_job_stats(pb::GetJobStatsRequest { queue: params.queue }).await?.into_inner();
    Ok(Json(JobStatsBody {
        total: s.total,
        counts: Counts {
            pending: s.pending,
            running: s.running,
            completed: s.completed,
            failed: s.failed,
            dead: s.dead,
            cancelled: s.cancelled,
        },
        by_queue: s
            .by_queue
            .into_iter()
            .map(|q| QueueStats {
                queue: q.queue,
                counts: Counts {
                    pending: q.pending,
                    running: q.running,
                    completed: q.completed,
                    failed: q.failed,
                    dead: q.dead,
                    cancelled: q.cancelled,
                },
            })
            .collect(),
        by_kind: s
            .by_kind
            .into_iter()
            .map(|k| KindStats {
                kind: k.kind,
                counts: Counts {
                    pending: k.pending,
                    running: k.running,
                    completed: k.completed,
                    failed: k.failed,
                    dead: k.dead,
                    cancelled: k.cancelled,
                },
                mean_duration_secs: k.mean_duration_secs,
            })
            .collect(),
        oldest_pending_at: time(s.oldest_pending_at),
        active_workers: s.active_workers,
    }))
}

#[utoipa::path(post, path = "/api/v1/jobs/purge", tag = "jobs", request_body = PurgeInput,
    responses((status = 200, body = Purged), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn purge(State(state): State<AppState>, Json(input): Json<PurgeInput>) -> ApiResult<Json<Purged>> {
    let request = pb::PurgeJobsRequest {
        states: input.states,
        finished_before: input.finished_before.map(timestamp),
        kind: input.kind,
    };
    let purged = state.jobs().purge_jobs(request).await?.into_inner().purged;
    Ok(Json(Purged { purged }))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = JobBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<JobBody>> {
    Ok(Json(job_body(state.jobs().get_job(pb::GetJobRequest { id }).await?.into_inner())))
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", tag = "jobs", params(("id" = uuid::Uuid, Path)),
    request_body(content = RetryInput, description = "optional"),
    responses((status = 200, body = JobBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the job is not failed, dead or cancelled", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(input): Json<RetryInput>,
) -> ApiResult<Json<JobBody>> {
    let reset_retries = input.reset_retries;
    let job = state.jobs().retry_job(pb::RetryJobRequest { id, reset_retries }).await?.into_inner();
    Ok(Json(job_body(job)))
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = uuid::Uuid, Path)),
    request_body(content = JobCancelInput, description = "optional"),
    responses((status = 200, description = "cancelled, or (running) flagged: its worker stops within 2 s", body = JobBody),
        (status = 404, body = ErrorBody), (status = 409, description = "the job already finished", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(input): Json<JobCancelInput>,
) -> ApiResult<Json<JobBody>> {
    let reason = input.reason.unwrap_or_default();
    let job = state.jobs().cancel_job(pb::CancelJobRequest { id, reason }).await?.into_inner();
    Ok(Json(job_body(job)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleInput {
    /// unique; 1-128 characters
    pub name: String,
    /// five fields (minute hour day month weekday) or six with seconds first; or interval_secs
    pub cron: Option<String>,
    /// fire every this many seconds (instead of cron)
    pub interval_secs: Option<u32>,
    /// UTC only (default)
    pub timezone: Option<String>,
    pub kind: String,
    pub queue: Option<String>,
    pub payload: Option<Map<String, Value>>,
    pub priority: Option<i32>,
    pub max_attempts: Option<u32>,
    /// default true
    pub enabled: Option<bool>,
    /// let runs overlap: enqueue while the previous job runs, though never while it still
    /// waits to start (default false: a tick waits for the previous run to finish)
    pub allow_overlap: Option<bool>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleUpdate {
    pub name: Option<String>,
    pub cron: Option<String>,
    pub interval_secs: Option<u32>,
    pub timezone: Option<String>,
    pub payload: Option<Map<String, Value>>,
    pub priority: Option<i32>,
    pub max_attempts: Option<u32>,
    pub enabled: Option<bool>,
    pub allow_overlap: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScheduleBody {
    pub id: String,
    pub name: String,
    pub cron: Option<String>,
    pub interval_secs: Option<u32>,
    pub timezone: String,
    pub kind: String,
    pub queue: String,
    pub payload: Map<String, Value>,
    pub priority: i32,
    pub max_attempts: u32,
    pub enabled: bool,
    pub allow_overlap: bool,
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_job_id: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleBody>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ScheduleParams {
    pub enabled: Option<bool>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

fn schedule_body(s: pb::JobSchedule) -> ScheduleBody {
    ScheduleBody {
        payload: object(&s.payload_json).unwrap_or_default(),
        next_run_at: time(s.next_run_at),
        last_run_at: time(s.last_run_at),
        created_at: time(s.created_at),
        updated_at: time(s.updated_at),
        id: s.id,
        name: s.name,
        cron: text(s.cron),
        interval_secs: Some(s.interval_secs).filter(|n| *n > 0),
        timezone: s.timezone,
        kind: s.kind,
        queue: s.queue,
        priority: s.priority,
        max_attempts: s.max_attempts,
        enabled: s.enabled,
        allow_overlap: s.allow_overlap,
        last_job_id: text(s.last_job_id),
    }
}

#[utoipa::path(post, path = "/api/v1/jobs/schedules", tag = "jobs", request_body = ScheduleInput,
    responses((status = 201, body = ScheduleBody), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_schedule(
    State(state): State<AppState>,
    Json(input): Json<ScheduleInput>,
) -> ApiResult<(StatusCode, Json<ScheduleBody>)> {
    let request = pb::CreateJobScheduleRequest {
        name: input.name,
        cron: input.cron.unwrap_or_default(),
        timezone: input.timezone.unwrap_or_default(),
        kind: input.kind,
        queue: input.queue.unwrap_or_default(),
        payload_json: input.payload.map(|p| Value::Object(p).to_string()).unwrap_or_default(),
        priority: input.priority.unwrap_or(0),
        max_attempts: input.max_attempts,
        enabled: input.enabled,
        allow_overlap: input.allow_overlap.unwrap_or(false),
        interval_secs: input.interval_secs.unwrap_or(0),
    };
    let schedule = state.jobs().create_job_schedule(request).await?.into_inner();
    Ok((StatusCode::CREATED, Json(schedule_body(schedule))))
}

#[utoipa::path(get, path = "/api/v1/jobs/schedules", tag = "jobs", params(ScheduleParams),
    responses((status = 200, body = ScheduleList), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_schedules(
    State(state): State<AppState>,
    Query(params): Query<ScheduleParams>,
) -> ApiResult<Json<ScheduleList>> {
    let request = pb::ListJobSchedulesRequest {
        enabled: params.enabled,
        page: Some(pb::PageRequest {
            limit: crate::nodes::page_limit(params.limit)?,
            cursor: params.cursor.unwrap_or_default(),
        }),
    };
    let page = state.jobs().list_job_schedules(request).await?.into_inner();
    Ok(Json(ScheduleList {
        schedules: page.schedules.into_iter().map(schedule_body).collect(),
        next_cursor: text(page.next_cursor),
    }))
}

#[utoipa::path(get, path = "/api/v1/jobs/schedules/{id}", tag = "jobs", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = ScheduleBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_schedule(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<ScheduleBody>> {
    let schedule = state.jobs().get_job_schedule(pb::GetJobScheduleRequest { id }).await?.into_inner();
    Ok(Json(schedule_body(schedule)))
}

#[utoipa::path(put, path = "/api/v1/jobs/schedules/{id}", tag = "jobs", params(("id" = uuid::Uuid, Path)),
    request_body = ScheduleUpdate,
    responses((status = 200, body = ScheduleBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_schedule(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(input): Json<ScheduleUpdate>,
) -> ApiResult<Json<ScheduleBody>> {
    let request = pb::UpdateJobScheduleRequest {
        id,
        name: input.name,
        cron: input.cron,
        timezone: input.timezone,
        payload_json: input.payload.map(|p| Value::Object(p).to_string()),
        priority: input.priority,
        max_attempts: input.max_attempts,
        enabled: input.enabled,
        allow_overlap: input.allow_overlap,
        interval_secs: input.interval_secs,
    };
    let schedule = state.jobs().update_job_schedule(request).await?.into_inner();
    Ok(Json(schedule_body(schedule)))
}

#[utoipa::path(delete, path = "/api/v1/jobs/schedules/{id}", tag = "jobs", params(("id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete_schedule(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.jobs().delete_job_schedule(pb::DeleteJobScheduleRequest { id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/jobs/schedules/{id}/trigger", tag = "jobs", params(("id" = uuid::Uuid, Path)),
    responses((status = 201, description = "the job enqueued now", body = JobBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn trigger_schedule(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<JobBody>)> {
    let job = state.jobs().trigger_job_schedule(pb::TriggerJobScheduleRequest { id }).await?.into_inner();
    Ok((StatusCode::CREATED, Json(job_body(job))))
}
