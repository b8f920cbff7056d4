//! `/api/v1/scheduler/workflows...` and `/api/scheduler/workflows...`: named task graphs
//! (dependencies, priorities, estimates, quality gates) that the orchestrator previews
//! (waves, critical path) and runs with the workflow engine; their executions are read,
//! cancelled and streamed through the routes of `workflows`. The original system's
//! field names are taken where they mean the same: a task's `depends_on` (its
//! `dependencies`), a workflow's `budget` (`budget_usd`); its `deadline` is ours too.
//! What the limits do: the orchestrator's `scheduler` module.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use helix_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiResult, ErrorBody, Json, Path};
use crate::workflows::{ExecuteInput, ExecutionBody, execution_body, json_or_null, time};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GateBody {
    pub name: String,
    /// min_score (on the output's `score`), output_schema (a JSON Schema subset) or llm_review
    pub kind: String,
    #[serde(default)]
    pub threshold: f64,
    /// output_schema: the schema; llm_review: {"rubric"}
    #[serde(default)]
    pub config: Value,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskBody {
    pub task_id: String,
    #[serde(default)]
    pub description: String,
    /// the tasks that must complete first; the original system's `depends_on` is taken
    /// as this
    #[serde(default, alias = "depends_on")]
    pub dependencies: Vec<String>,
    /// higher first among the tasks of a wave
    #[serde(default)]
    pub priority: i32,
    /// a workflow action (wait, http, store, search, llm.generate, ...) run with the
    /// payload as its config, or a job kind; empty passes the payload through
    #[serde(default)]
    pub assignee: String,
    pub estimated_duration_secs: Option<u32>,
    /// what the task is expected to cost, USD: the preview sums it against the budget
    #[serde(default)]
    pub estimated_cost_usd: Option<f64>,
    #[serde(default)]
    pub max_retries: u32,
    #[serde(default)]
    pub payload: Map<String, Value>,
    /// at most one
    #[serde(default)]
    pub quality_gates: Vec<GateBody>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedulerInput {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub tasks: Vec<TaskBody>,
    /// replace a workflow of the same name instead of 409
    #[serde(default)]
    pub replace: bool,
    /// when each run must have ended: at it, unfinished tasks stop and the run fails
    /// naming them; a run started later fails at once
    pub deadline: Option<DateTime<Utc>>,
    /// USD each run may spend on LLM calls (the original's `budget`): each call is capped
    /// at what is left; once spent, no further task starts and the run fails
    #[serde(alias = "budget")]
    pub budget_usd: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SchedulerBody {
    pub name: String,
    pub description: String,
    pub tasks: Vec<TaskBody>,
    pub deadline: Option<DateTime<Utc>>,
    pub budget_usd: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SchedulerList {
    pub workflows: Vec<SchedulerBody>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WaveBody {
    pub index: u32,
    /// by priority, highest first
    pub task_ids: Vec<String>,
    pub estimated_duration_secs: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PreviewBody {
    pub waves: Vec<WaveBody>,
    /// the chain of dependencies with the largest estimated duration
    pub critical_path: Vec<String>,
    pub estimated_duration_secs: u32,
    /// the tasks' `estimated_cost_usd` summed
    pub estimated_cost_usd: f64,
    /// the critical path, started now, ends by the deadline (true without one)
    pub fits_deadline: bool,
    /// the estimated cost is within the budget (true without one)
    pub fits_budget: bool,
    pub warnings: Vec<String>,
}

pub(crate) fn task_pb(t: TaskBody) -> pb::SchedulerTaskSpec {
    pb::SchedulerTaskSpec {
        task_id: t.task_id,
        description: t.description,
        dependencies: t.dependencies,
        priority: t.priority,
        assignee: t.assignee,
        estimated_duration_secs: t.estimated_duration_secs,
        estimated_cost_usd: t.estimated_cost_usd,
        max_retries: t.max_retries,
        quality_gates: t
            .quality_gates
            .into_iter()
            .map(|g| pb::QualityGate {
                name: g.name,
                kind: g.kind,
                threshold: g.threshold,
                config_json: g.config.to_string(),
                blocking: true,
            })
            .collect(),
        payload_json: Value::Object(t.payload).to_string(),
    }
}

pub(crate) fn task_body(t: pb::SchedulerTaskSpec) -> TaskBody {
    TaskBody {
        payload: serde_json::from_str(&t.payload_json).unwrap_or_default(),
        quality_gates: t
            .quality_gates
            .into_iter()
            .map(|g| GateBody {
                config: serde_json::from_str(&g.config_json).unwrap_or(Value::Null),
                name: g.name,
                kind: g.kind,
                threshold: g.threshold,
            })
            .collect(),
        task_id: t.task_id,
        description: t.description,
        dependencies: t.dependencies,
        priority: t.priority,
        assignee: t.assignee,
        estimated_duration_secs: t.estimated_duration_secs,
        estimated_cost_usd: t.estimated_cost_usd,
        max_retries: t.max_retries,
    }
}

fn body(w: pb::SchedulerWorkflow) -> SchedulerBody {
    SchedulerBody {
        name: w.name,
        description: w.description,
        tasks: w.tasks.into_iter().map(task_body).collect(),
        deadline: time(w.deadline),
        budget_usd: w.budget_usd,
    }
}

/// Stores a named task graph; a cycle or an unknown dependency is 400, a taken name 409.
#[utoipa::path(post, path = "/api/v1/scheduler/workflows", tag = "scheduler", request_body = SchedulerInput,
    responses((status = 201, body = SchedulerBody), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Json(input): Json<SchedulerInput>,
) -> ApiResult<(StatusCode, Json<SchedulerBody>)> {
    let request = pb::CreateSchedulerWorkflowRequest {
        name: input.name,
        description: input.description,
        tasks: input.tasks.into_iter().map(task_pb).collect(),
        replace: input.replace,
        deadline: input
            .deadline
            .map(|t| helix_proto::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }),
        budget_usd: input.budget_usd,
        ..Default::default()
    };
    let saved = state.orchestrator().create_scheduler_workflow(request).await?.into_inner();
    Ok((StatusCode::CREATED, Json(body(saved))))
}

#[utoipa::path(get, path = "/api/v1/scheduler/workflows", tag = "scheduler",
    responses((status = 200, body = SchedulerList)), security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<SchedulerList>> {
    let page =
        state.orchestrator().list_scheduler_workflows(pb::ListSchedulerWorkflowsRequest::default()).await?.into_inner();
    Ok(Json(SchedulerList { workflows: page.workflows.into_iter().map(body).collect() }))
}

#[utoipa::path(get, path = "/api/v1/scheduler/workflows/{name}", tag = "scheduler", params(("name" = String, Path, description = "the task graph's name")),
    responses((status = 200, body = SchedulerBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<SchedulerBody>> {
    let w = state.orchestrator().get_scheduler_workflow(pb::GetSchedulerWorkflowRequest { name }).await?.into_inner();
    Ok(Json(body(w)))
}

#[utoipa::path(delete, path = "/api/v1/scheduler/workflows/{name}", tag = "scheduler", params(("name" = String, Path, description = "the task graph's name")),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    state.orchestrator().delete_scheduler_workflow(pb::DeleteSchedulerWorkflowRequest { name }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The plan without running it: waves by priority, the critical path, the estimate.
#[utoipa::path(post, path = "/api/v1/scheduler/workflows/{name}/preview", tag = "scheduler", params(("name" = String, Path, description = "the task graph's name")),
    responses((status = 200, body = PreviewBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn preview(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<PreviewBody>> {
    let request = pb::PreviewSchedulerWorkflowRequest { name, ..Default::default() };
    let p = state.orchestrator().preview_scheduler_workflow(request).await?.into_inner();
    Ok(Json(preview_body(p)))
}

pub(crate) fn wave_body(w: pb::SchedulerWave) -> WaveBody {
    WaveBody { index: w.index, task_ids: w.task_ids, estimated_duration_secs: w.estimated_duration_secs }
}

fn preview_body(p: pb::SchedulerPreview) -> PreviewBody {
    PreviewBody {
        waves: p.waves.into_iter().map(wave_body).collect(),
        critical_path: p.critical_path,
        estimated_duration_secs: p.estimated_duration_secs,
        estimated_cost_usd: p.estimated_cost_usd,
        fits_deadline: p.fits_deadline,
        fits_budget: p.fits_budget,
        warnings: p.warnings,
    }
}

/// Runs the task graph with the workflow engine; answers at once with the execution.
#[utoipa::path(post, path = "/api/scheduler/workflows/{name}/run", tag = "scheduler", params(("name" = String, Path, description = "the task graph's name")), request_body = ExecuteInput,
    responses((status = 202, body = ExecutionBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn run(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(input): Json<ExecuteInput>,
) -> ApiResult<(StatusCode, Json<ExecutionBody>)> {
    let request = pb::RunSchedulerWorkflowRequest {
        name,
        variables_json: input.variables.map(|v| Value::Object(v).to_string()).unwrap_or_default(),
        idempotency_key: input.idempotency_key.unwrap_or_default(),
    };
    let execution = state.orchestrator().run_scheduler_workflow(request).await?.into_inner();
    Ok((StatusCode::ACCEPTED, Json(execution_body(execution))))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TemplateParameterBody {
    pub name: String,
    pub description: String,
    pub required: bool,
    /// the value when none is given
    pub default: Value,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TemplateBody {
    pub name: String,
    pub description: String,
    pub parameters: Vec<TemplateParameterBody>,
    /// payloads and descriptions carry `{{param.NAME}}` placeholders until bound
    pub tasks: Vec<TaskBody>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<TemplateBody>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplatePreviewInput {
    /// values of the template's parameters; defaults fill the rest
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstantiateInput {
    /// the scheduler workflow to create; the template's name when absent
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// replace a workflow of the same name instead of 409
    #[serde(default)]
    pub replace: bool,
}

/// The built-in templates: a research pipeline, ETL, a review chain.
#[utoipa::path(get, path = "/api/v1/scheduler/templates", tag = "scheduler",
    responses((status = 200, body = TemplateList)), security(("bearer" = [])))]
pub async fn templates(State(state): State<AppState>) -> ApiResult<Json<TemplateList>> {
    let list = state.orchestrator().list_scheduler_templates(pb::ListSchedulerTemplatesRequest {}).await?.into_inner();
    let templates = list
        .templates
        .into_iter()
        .map(|t| TemplateBody {
            name: t.name,
            description: t.description,
            parameters: t
                .parameters
                .into_iter()
                .map(|p| TemplateParameterBody {
                    default: json_or_null(&p.default_json),
                    name: p.name,
                    description: p.description,
                    required: p.required,
                })
                .collect(),
            tasks: t.tasks.into_iter().map(task_body).collect(),
        })
        .collect();
    Ok(Json(TemplateList { templates }))
}

/// The plan a template makes with these parameters, without storing anything; an
/// unknown or missing required parameter is 400.
#[utoipa::path(post, path = "/api/v1/scheduler/templates/{name}/preview", tag = "scheduler", params(("name" = String, Path, description = "the template's name")),
    request_body = TemplatePreviewInput,
    responses((status = 200, body = PreviewBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn preview_template(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(input): Json<TemplatePreviewInput>,
) -> ApiResult<Json<PreviewBody>> {
    let request = pb::PreviewSchedulerTemplateRequest {
        name,
        parameters_json: Value::Object(input.parameters).to_string(),
        ..Default::default()
    };
    let p = state.orchestrator().preview_scheduler_template(request).await?.into_inner();
    Ok(Json(preview_body(p)))
}

/// Stores the template's tasks, parameters bound, as a named scheduler workflow (run it
/// with `POST /api/v1/scheduler/workflows/{name}/run`); a taken name is 409.
#[utoipa::path(post, path = "/api/v1/scheduler/templates/{name}/instantiate", tag = "scheduler", params(("name" = String, Path, description = "the template's name")),
    request_body = InstantiateInput,
    responses((status = 201, body = SchedulerBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn instantiate(
    State(state): State<AppState>,
    Path(template): Path<String>,
    Json(input): Json<InstantiateInput>,
) -> ApiResult<(StatusCode, Json<SchedulerBody>)> {
    let request = pb::CreateSchedulerWorkflowRequest {
        name: input.name,
        template,
        template_parameters_json: Value::Object(input.parameters).to_string(),
        replace: input.replace,
        ..Default::default()
    };
    let saved = state.orchestrator().create_scheduler_workflow(request).await?.into_inner();
    Ok((StatusCode::CREATED, Json(body(saved))))
}
