//! `/api/v1/workflows/...` and `/api/scheduler/executions/...`: the workflow engine,
//! answered by the orchestrator. Definitions are TOML or JSON (`definition` as text, or
//! a JSON object); `POST /api/v1/workflows/validate` checks one and returns its plan
//! (the waves) without storing it. Executions start at once (`202`), are listed, read,
//! cancelled, and stream their progress as server-sent events.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use helix_core::Error;
use helix_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiResult, ErrorBody, Json, Path, Query};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowInput {
    /// toml or json; guessed when absent (a definition given as an object is json)
    pub format: Option<String>,
    /// the definition: TOML or JSON text, or a JSON object
    pub definition: Value,
    /// for PUT: the version the change is based on; a stale one is 409
    pub expected_version: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StepBody {
    pub id: String,
    pub name: String,
    /// wait, set, http, store, search, job, llm.generate, notify, workflow
    pub action: String,
    pub depends_on: Vec<String>,
    pub when: Option<String>,
    pub for_each: Option<String>,
    #[serde(rename = "while")]
    pub while_condition: Option<String>,
    pub max_iterations: Option<u32>,
    pub max_retries: u32,
    pub timeout_secs: Option<u32>,
    pub config: Value,
    pub gate: Option<Value>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkflowBody {
    /// empty for a validated, unstored definition
    pub id: String,
    pub name: String,
    pub description: String,
    pub format: String,
    pub definition: String,
    pub steps: Vec<StepBody>,
    pub variables: Value,
    pub tags: Vec<String>,
    /// the plan: step ids by topological level; steps of a wave run in parallel
    pub waves: Vec<Vec<String>>,
    pub version: i64,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowBody>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteInput {
    /// merged over the declared defaults
    pub variables: Option<Map<String, Value>>,
    /// a key used before returns the execution started then
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExecutionStepBody {
    pub step_id: String,
    pub name: String,
    /// pending, running, succeeded, failed, skipped, cancelled
    pub state: String,
    /// attempts started so far
    pub attempt: u32,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExecutionBody {
    pub id: String,
    pub workflow_id: String,
    pub workflow_name: String,
    /// pending, running, succeeded, failed, cancelled
    pub state: String,
    pub variables: Value,
    /// step outputs by step id
    pub results: Value,
    pub error: Option<String>,
    pub steps: Vec<ExecutionStepBody>,
    pub steps_total: u32,
    pub steps_done: u32,
    pub triggered_by: String,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExecutionList {
    /// newest first
    pub executions: Vec<ExecutionBody>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct WorkflowParams {
    pub tag: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ExecutionParams {
    pub workflow_id: Option<String>,
    /// pending, running, succeeded, failed or cancelled
    pub state: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecutionCancelInput {
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProgressBody {
    pub execution_id: String,
    /// from 1, the SSE event id
    pub sequence: u64,
    /// created, started, resumed, step_started, step_completed, step_failed,
    /// step_skipped, log, succeeded, failed, cancelled
    pub kind: String,
    pub step_id: Option<String>,
    pub message: String,
    pub data: Value,
    /// the stream ends after this event
    pub terminal: bool,
    pub at: Option<DateTime<Utc>>,
}

pub(crate) fn time(t: Option<helix_proto::Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos as u32))
}

pub(crate) fn json_or_null(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn text(value: String) -> Option<String> {
    Some(value).filter(|v| !v.is_empty())
}

fn workflow_body(w: pb::Workflow) -> WorkflowBody {
    WorkflowBody {
        steps: w
            .steps
            .into_iter()
            .map(|s| StepBody {
                id: s.id,
                name: s.name,
                action: s.action,
                depends_on: s.depends_on,
                when: text(s.condition),
                for_each: text(s.for_each),
                while_condition: text(s.while_condition),
                max_iterations: Some(s.max_iterations).filter(|n| *n > 0),
                max_retries: s.max_retries,
                timeout_secs: Some(s.timeout_secs).filter(|n| *n > 0),
                config: json_or_null(&s.config_json),
                gate: text(s.gate_json).map(|g| json_or_null(&g)),
            })
            .collect(),
        variables: json_or_null(&w.variables_json),
        waves: w.waves.into_iter().map(|wave| wave.task_ids).collect(),
        created_at: time(w.created_at),
        updated_at: time(w.updated_at),
        id: w.id,
        name: w.name,
        description: w.description,
        format: w.format,
        definition: w.definition,
        tags: w.tags,
        version: w.version,
    }
}

pub fn execution_body(e: pb::Execution) -> ExecutionBody {
    ExecutionBody {
        variables: json_or_null(&e.variables_json),
        results: json_or_null(&e.results_json),
        error: text(e.error),
        steps: e
            .steps
            .into_iter()
            .map(|s| ExecutionStepBody {
                output: text(s.output_json).map(|o| json_or_null(&o)),
                error: text(s.error),
                started_at: time(s.started_at),
                finished_at: time(s.finished_at),
                step_id: s.step_id,
                name: s.name,
                state: s.state,
                attempt: s.attempt,
            })
            .collect(),
        created_at: time(e.created_at),
        started_at: time(e.started_at),
        finished_at: time(e.finished_at),
        id: e.id,
        workflow_id: e.workflow_id,
        workflow_name: e.workflow_name,
        state: e.state,
        steps_total: e.steps_total,
        steps_done: e.steps_done,
        triggered_by: e.triggered_by,
    }
}

/// (format, text) of a definition given as text or as a JSON object.
fn definition(input: &WorkflowInput) -> Result<(String, String), Error> {
    let format = input.format.clone().unwrap_or_default();
    match &input.definition {
        Value::String(text) => Ok((format, text.clone())),
        Value::Object(_) => Ok(("json".into(), input.definition.to_string())),
        _ => Err(Error::invalid("invalid_definition", "definition is TOML or JSON text, or a JSON object")),
    }
}

async fn create_or_validate(state: &AppState, input: &WorkflowInput, validate_only: bool) -> ApiResult<pb::Workflow> {
    let (format, definition) = definition(input)?;
    let request = pb::CreateWorkflowRequest { format, definition, validate_only };
    Ok(state.orchestrator().create_workflow(request).await?.into_inner())
}

#[utoipa::path(post, path = "/api/v1/workflows", tag = "workflows", request_body = WorkflowInput,
    responses((status = 201, body = WorkflowBody), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Json(input): Json<WorkflowInput>,
) -> ApiResult<(StatusCode, Json<WorkflowBody>)> {
    let workflow = create_or_validate(&state, &input, false).await?;
    Ok((StatusCode::CREATED, Json(workflow_body(workflow))))
}

/// Checks a definition and returns its plan (steps and waves) without storing it.
#[utoipa::path(post, path = "/api/v1/workflows/validate", tag = "workflows", request_body = WorkflowInput,
    responses((status = 200, body = WorkflowBody), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn validate(
    State(state): State<AppState>,
    Json(input): Json<WorkflowInput>,
) -> ApiResult<Json<WorkflowBody>> {
    Ok(Json(workflow_body(create_or_validate(&state, &input, true).await?)))
}

#[utoipa::path(get, path = "/api/v1/workflows", tag = "workflows", params(WorkflowParams),
    responses((status = 200, body = WorkflowList), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Query(params): Query<WorkflowParams>,
) -> ApiResult<Json<WorkflowList>> {
    let request = pb::ListWorkflowsRequest {
        tag: params.tag,
        page: Some(pb::PageRequest {
            limit: crate::nodes::page_limit(params.limit)?,
            cursor: params.cursor.unwrap_or_default(),
        }),
    };
    let page = state.orchestrator().list_workflows(request).await?.into_inner();
    Ok(Json(WorkflowList {
        workflows: page.workflows.into_iter().map(workflow_body).collect(),
        next_cursor: text(page.next_cursor),
    }))
}

#[utoipa::path(get, path = "/api/v1/workflows/{id}", tag = "workflows", params(("id" = uuid::Uuid, Path, description = "the workflow's id")),
    responses((status = 200, body = WorkflowBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<WorkflowBody>> {
    Ok(Json(workflow_body(state.orchestrator().get_workflow(pb::GetWorkflowRequest { id }).await?.into_inner())))
}

#[utoipa::path(put, path = "/api/v1/workflows/{id}", tag = "workflows", params(("id" = uuid::Uuid, Path, description = "the workflow's id")), request_body = WorkflowInput,
    responses((status = 200, body = WorkflowBody), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(input): Json<WorkflowInput>,
) -> ApiResult<Json<WorkflowBody>> {
    let (format, definition) = definition(&input)?;
    let request =
        pb::UpdateWorkflowRequest { id, expected_version: input.expected_version.unwrap_or(0), format, definition };
    Ok(Json(workflow_body(state.orchestrator().update_workflow(request).await?.into_inner())))
}

#[utoipa::path(delete, path = "/api/v1/workflows/{id}", tag = "workflows", params(("id" = uuid::Uuid, Path, description = "the workflow's id")),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.orchestrator().delete_workflow(pb::DeleteWorkflowRequest { id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts an execution and answers at once; follow it with GET or the progress stream.
#[utoipa::path(post, path = "/api/v1/workflows/{id}/execute", tag = "workflows", params(("id" = uuid::Uuid, Path, description = "the workflow's id")), request_body = ExecuteInput,
    responses((status = 202, body = ExecutionBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn execute(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(input): Json<ExecuteInput>,
) -> ApiResult<(StatusCode, Json<ExecutionBody>)> {
    let request = pb::ExecuteWorkflowRequest {
        id,
        variables_json: input.variables.map(|v| Value::Object(v).to_string()).unwrap_or_default(),
        idempotency_key: input.idempotency_key.unwrap_or_default(),
    };
    let execution = state.orchestrator().execute_workflow(request).await?.into_inner();
    Ok((StatusCode::ACCEPTED, Json(execution_body(execution))))
}

#[utoipa::path(get, path = "/api/v1/workflows/executions", tag = "workflows", params(ExecutionParams),
    responses((status = 200, body = ExecutionList), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_executions(
    State(state): State<AppState>,
    Query(params): Query<ExecutionParams>,
) -> ApiResult<Json<ExecutionList>> {
    let request = pb::ListExecutionsRequest {
        kind: None,
        workflow_id: params.workflow_id,
        state: params.state,
        page: Some(pb::PageRequest {
            limit: crate::nodes::page_limit(params.limit)?,
            cursor: params.cursor.unwrap_or_default(),
        }),
    };
    let page = state.orchestrator().list_executions(request).await?.into_inner();
    Ok(Json(ExecutionList {
        executions: page.executions.into_iter().map(execution_body).collect(),
        next_cursor: text(page.next_cursor),
    }))
}

#[utoipa::path(get, path = "/api/v1/workflows/executions/{id}", tag = "workflows", params(("id" = uuid::Uuid, Path, description = "the execution's id")),
    responses((status = 200, body = ExecutionBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_execution(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<ExecutionBody>> {
    Ok(Json(execution_body(state.orchestrator().get_execution(pb::GetExecutionRequest { id }).await?.into_inner())))
}

/// Stops a running execution: its running steps are interrupted and it ends `cancelled`.
#[utoipa::path(post, path = "/api/v1/workflows/executions/{id}/cancel", tag = "workflows", params(("id" = uuid::Uuid, Path, description = "the execution's id")), request_body = ExecutionCancelInput,
    responses((status = 200, body = ExecutionBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel_execution(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(input): Json<ExecutionCancelInput>,
) -> ApiResult<Json<ExecutionBody>> {
    let reason = input.reason.unwrap_or_default();
    let request = pb::CancelExecutionRequest { id, reason };
    Ok(Json(execution_body(state.orchestrator().cancel_execution(request).await?.into_inner())))
}

/// The execution's progress as server-sent events (`event: progress`, id = sequence),
/// from the start or after `Last-Event-ID`; the stream ends after the terminal event.
#[utoipa::path(get, path = "/api/scheduler/executions/{id}/progress", tag = "workflows", params(("id" = uuid::Uuid, Path, description = "the execution's id")),
    responses((status = 200, content_type = "text/event-stream", body = String,
            description = "events whose data is a ProgressBody, ids its sequence; ends after the terminal event"),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn progress(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl futures::Stream<Item = Result<Event, std::convert::Infallible>>>> {
    let after_sequence =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
    let request = pb::StreamProgressRequest { id, after_sequence };
    let updates = state.orchestrator_stream().stream_progress(request).await?.into_inner();
    let events = updates.map(|update| {
        let event = update.map(|p| {
            Event::default().event("progress").id(p.sequence.to_string()).json_data(ProgressBody {
                data: json_or_null(&p.data_json),
                at: time(p.at),
                execution_id: p.execution_id,
                sequence: p.sequence,
                kind: p.kind,
                step_id: p.step_id,
                message: p.message,
                terminal: p.terminal,
            })
        });
        Ok(crate::error::sse_event(event))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
