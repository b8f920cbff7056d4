//! `/api/v1/scheduler/tasks...`, `/api/v1/scheduler/stats` (and the original system's
//! `/api/scheduler/stats`, `/api/scheduler/waves`): the free-standing task graph that
//! workers drive by hand — add, list the ready, run, complete, fail — kept by the
//! orchestrator.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use helix_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiResult, ErrorBody, Json, Path, Query};
use crate::scheduler::{TaskBody, WaveBody, task_body, task_pb, wave_body};
use crate::workflows::{json_or_null, time};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskStateBody {
    pub task_id: String,
    /// pending (waiting on a dependency), ready, running, completed, failed, cancelled
    pub state: String,
    pub priority: i32,
    pub dependencies: Vec<String>,
    /// the tasks that depend on this one
    pub dependents: Vec<String>,
    pub description: String,
    pub assignee: String,
    pub payload: Map<String, Value>,
    /// who ran it (`run`'s `worker`)
    pub worker: String,
    pub attempts: u32,
    /// what `complete` was given
    pub output: Value,
    pub error: String,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

fn task_state_body(t: pb::SchedulerTask) -> TaskStateBody {
    let spec: TaskBody = task_body(t.spec.unwrap_or_default());
    TaskStateBody {
        task_id: t.task_id,
        state: t.state,
        priority: spec.priority,
        dependencies: spec.dependencies,
        dependents: t.dependents,
        description: spec.description,
        assignee: spec.assignee,
        payload: spec.payload,
        worker: t.worker,
        attempts: t.attempts,
        output: json_or_null(&t.output_json),
        error: t.error,
        created_at: time(t.created_at),
        started_at: time(t.started_at),
        finished_at: time(t.finished_at),
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadyList {
    /// highest priority first
    pub tasks: Vec<TaskStateBody>,
    /// the same tasks' ids
    pub task_ids: Vec<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct ReadyParams {
    /// at most this many (default 100, at most 1000)
    pub limit: Option<u32>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunInput {
    /// who takes the task
    #[serde(default)]
    pub worker: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteInput {
    /// the task's result, any JSON
    pub output: Option<Value>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CompleteBody {
    pub task: TaskStateBody,
    /// dependants this completion made ready, highest priority first
    pub newly_ready: Vec<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailInput {
    #[serde(default)]
    pub error: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FailBody {
    pub task: TaskStateBody,
    /// every pending task downstream, now cancelled
    pub cancelled_downstream: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WavesBody {
    pub waves: Vec<WaveBody>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct WavesParams {
    /// a scheduler workflow's waves instead of the free-standing tasks'
    pub workflow: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SchedulerStatsBody {
    pub total_tasks: u64,
    pub pending: u64,
    pub ready: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// waves of the free-standing task graph
    pub waves: u32,
    /// stored scheduler workflows
    pub workflows: u64,
    /// scheduler workflow executions pending or running
    pub active_executions: u64,
}

/// Adds a task to the free-standing graph (or re-declares one nobody has run yet). Its
/// dependencies must exist: an unknown one is 400 `unknown_dependency`, a cycle 400
/// `task_cycle` naming its path; re-declaring a started task is 409.
#[utoipa::path(post, path = "/api/v1/scheduler/tasks", tag = "scheduler", request_body = TaskBody,
    responses((status = 201, body = TaskStateBody), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn add(
    State(state): State<AppState>,
    Json(input): Json<TaskBody>,
) -> ApiResult<(StatusCode, Json<TaskStateBody>)> {
    let request = pb::AddSchedulerTaskRequest { task: Some(task_pb(input)), workflow: String::new() };
    let task = state.orchestrator().add_scheduler_task(request).await?.into_inner();
    Ok((StatusCode::CREATED, Json(task_state_body(task))))
}

#[utoipa::path(get, path = "/api/v1/scheduler/tasks/{id}", tag = "scheduler", params(("id" = String, Path, description = "the task's id")),
    responses((status = 200, body = TaskStateBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get(State(state): State<AppState>, Path(task_id): Path<String>) -> ApiResult<Json<TaskStateBody>> {
    let task = state.orchestrator().get_scheduler_task(pb::GetSchedulerTaskRequest { task_id }).await?.into_inner();
    Ok(Json(task_state_body(task)))
}

/// Tasks whose dependencies are all completed and that nobody runs yet.
#[utoipa::path(get, path = "/api/v1/scheduler/tasks/ready", tag = "scheduler", params(ReadyParams),
    responses((status = 200, body = ReadyList)), security(("bearer" = [])))]
pub async fn ready(State(state): State<AppState>, Query(params): Query<ReadyParams>) -> ApiResult<Json<ReadyList>> {
    let request = pb::ListReadySchedulerTasksRequest { workflow: None, limit: crate::nodes::page_limit(params.limit)? };
    let list = state.orchestrator().list_ready_scheduler_tasks(request).await?.into_inner();
    let tasks: Vec<TaskStateBody> = list.tasks.into_iter().map(task_state_body).collect();
    let task_ids = tasks.iter().map(|t| t.task_id.clone()).collect();
    Ok(Json(ReadyList { tasks, task_ids }))
}

/// ready → running; a task that is not ready (or that another worker took) is 409.
#[utoipa::path(post, path = "/api/v1/scheduler/tasks/{id}/run", tag = "scheduler", params(("id" = String, Path, description = "the task's id")), request_body = RunInput,
    responses((status = 200, body = TaskStateBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn run(
    State(state): State<AppState>,
    Path(task_id): Path<String>,
    Json(input): Json<RunInput>,
) -> ApiResult<Json<TaskStateBody>> {
    let worker = input.worker;
    let task =
        state.orchestrator().run_scheduler_task(pb::RunSchedulerTaskRequest { task_id, worker }).await?.into_inner();
    Ok(Json(task_state_body(task)))
}

/// running (or ready) → completed, exactly once: a second complete is 409.
#[utoipa::path(post, path = "/api/v1/scheduler/tasks/{id}/complete", tag = "scheduler", params(("id" = String, Path, description = "the task's id")), request_body = CompleteInput,
    responses((status = 200, body = CompleteBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn complete(
    State(state): State<AppState>,
    Path(task_id): Path<String>,
    Json(input): Json<CompleteInput>,
) -> ApiResult<Json<CompleteBody>> {
    let output = input.output;
    let request = pb::CompleteSchedulerTaskRequest {
        task_id,
        output_json: output.map(|o| o.to_string()).unwrap_or_default(),
        quality_score: None,
    };
    let done = state.orchestrator().complete_scheduler_task(request).await?.into_inner();
    Ok(Json(CompleteBody { task: task_state_body(done.task.unwrap_or_default()), newly_ready: done.newly_ready }))
}

/// running or pending → failed; everything pending downstream is cancelled.
#[utoipa::path(post, path = "/api/v1/scheduler/tasks/{id}/fail", tag = "scheduler", params(("id" = String, Path, description = "the task's id")), request_body = FailInput,
    responses((status = 200, body = FailBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn fail(
    State(state): State<AppState>,
    Path(task_id): Path<String>,
    Json(input): Json<FailInput>,
) -> ApiResult<Json<FailBody>> {
    let error = input.error;
    let request = pb::FailSchedulerTaskRequest { task_id, error, permanent: true };
    let done = state.orchestrator().fail_scheduler_task(request).await?.into_inner();
    Ok(Json(FailBody {
        task: task_state_body(done.task.unwrap_or_default()),
        cancelled_downstream: done.cancelled_downstream,
    }))
}

/// Topological levels of the free-standing tasks (or of `?workflow=`), each by priority.
#[utoipa::path(get, path = "/api/v1/scheduler/tasks/waves", tag = "scheduler", params(WavesParams),
    responses((status = 200, body = WavesBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn waves(State(state): State<AppState>, Query(params): Query<WavesParams>) -> ApiResult<Json<WavesBody>> {
    let request = pb::GetSchedulerWavesRequest { workflow: params.workflow };
    let waves = state.orchestrator().get_scheduler_waves(request).await?.into_inner().waves;
    Ok(Json(WavesBody { waves: waves.into_iter().map(wave_body).collect() }))
}

#[utoipa::path(get, path = "/api/v1/scheduler/stats", tag = "scheduler",
    responses((status = 200, body = SchedulerStatsBody)), security(("bearer" = [])))]
pub async fn stats(State(state): State<AppState>) -> ApiResult<Json<SchedulerStatsBody>> {
    let s =
        state.orchestrator().get_scheduler_stats(pb::GetSchedulerStatsRequest { workflow: None }).await?.into_inner();
    Ok(Json(SchedulerStatsBody {
        total_tasks: s.total_tasks,
        pending: s.pending,
        ready: s.ready,
        running: s.running,
        completed: s.completed,
        failed: s.failed,
        cancelled: s.cancelled,
        waves: s.waves,
        workflows: s.workflows,
        active_executions: s.active_executions,
    }))
}
