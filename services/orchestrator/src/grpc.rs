//! The orchestrator's gRPC face for the workflow engine: wire ↔ domain only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use helix_core::node::parse_page;
use helix_core::{Error, ErrorKind, Result};
use helix_proto::v1 as pb;
use helix_proto::v1::orchestrator_service_server::OrchestratorService;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::definition::Definition;
use crate::engine::{self, Engine};
use crate::scheduler::{self, GateSpec, SchedulerSpec, TaskSpec};
use crate::store::{ExecutionFilter, ExecutionRecord, WorkflowRecord};
use crate::tasks::TaskRecord;

pub struct OrchestratorApi {
    engine: Arc<Engine>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// The plan of a spec: waves by priority with their longest estimate, the critical path,
/// against the spec's deadline and budget or those given for this preview.
fn preview_pb(
    spec: &SchedulerSpec,
    deadline: Option<helix_proto::Timestamp>,
    budget_usd: Option<f64>,
) -> Result<pb::SchedulerPreview> {
    let deadline = deadline.map(time).transpose()?.or(spec.deadline);
    let p = scheduler::preview_with(spec, deadline, budget_usd.or(spec.budget_usd), Utc::now())?;
    let secs: HashMap<&str, u32> =
        spec.tasks.iter().map(|t| (t.task_id.as_str(), t.estimated_duration_secs.unwrap_or(0))).collect();
    Ok(pb::SchedulerPreview {
        tasks: spec.tasks.iter().map(task_pb).collect(),
        waves: p
            .waves
            .iter()
            .enumerate()
            .map(|(i, ids)| pb::SchedulerWave {
                index: i as u32,
                estimated_duration_secs: ids.iter().map(|id| secs[id.as_str()]).max(),
                task_ids: ids.clone(),
            })
            .collect(),
        critical_path: p.critical_path,
        estimated_duration_secs: p.estimated_duration_secs,
        estimated_cost_usd: p.estimated_cost_usd,
        fits_deadline: p.fits_deadline,
        fits_budget: p.fits_budget,
        warnings: p.warnings,
    })
}

fn template_pb(t: &scheduler::Template) -> pb::SchedulerTemplate {
    pb::SchedulerTemplate {
        name: t.name.into(),
        description: t.description.into(),
        parameters: t
            .parameters
            .iter()
            .map(|p| pb::SchedulerTemplateParameter {
                name: p.name.into(),
                description: p.description.into(),
                required: p.default.is_none(),
                default_json: p.default.as_ref().map(Value::to_string).unwrap_or_default(),
            })
            .collect(),
        tasks: t.tasks.iter().map(task_pb).collect(),
    }
}

fn parameters(text: &str) -> Result<Map<String, Value>> {
    variables(text).map_err(|_| Error::invalid("invalid_parameters", "template parameters must be a JSON object"))
}

fn task_record_pb(t: TaskRecord) -> pb::SchedulerTask {
    pb::SchedulerTask {
        task_id: t.spec.task_id.clone(),
        workflow: String::new(),
        spec: Some(task_pb(&t.spec)),
        state: t.state,
        dependents: t.dependents,
        wave: 0,
        attempts: t.attempts,
        worker: t.worker,
        output_json: t.output.map(|o| o.to_string()).unwrap_or_default(),
        error: t.error,
        quality_score: None,
        gate_results: Vec::new(),
        created_at: Some(ts(t.created_at)),
        started_at: t.started_at.map(ts),
        finished_at: t.finished_at.map(ts),
    }
}

fn task_spec_from_pb(task: Option<pb::SchedulerTaskSpec>) -> Result<TaskSpec> {
    let task = task.ok_or_else(|| Error::invalid("missing_task", "the request carries no task"))?;
    let mut specs = spec_from_pb(String::new(), String::new(), vec![task])?.tasks;
    specs.pop().ok_or_else(|| Error::internal("a task vanished in conversion"))
}

impl OrchestratorApi {
    pub fn new(engine: Arc<Engine>, shutdown: CancellationToken, tasks: TaskTracker) -> Self {
        Self { engine, shutdown, tasks }
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

fn reply<T>(result: Result<T>) -> Reply<T> {
    result.map(Response::new).map_err(Status::from)
}

fn parse_id(what: &str, id: &str) -> Result<Uuid> {
    id.parse().map_err(|_| Error::invalid("invalid_id", format!("`{id}` is not a {what} id")))
}

fn ts(t: DateTime<Utc>) -> helix_proto::Timestamp {
    helix_proto::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

/// A wire time as a time; one out of range is refused.
fn time(t: helix_proto::Timestamp) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
        .ok_or_else(|| Error::invalid("invalid_deadline", "the deadline is not a time"))
}

fn variables(text: &str) -> Result<Map<String, Value>> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Error::invalid("invalid_variables", "variables must be a JSON object")),
    }
}

fn waves_pb(waves: &[Vec<String>]) -> Vec<pb::SchedulerWave> {
    waves
        .iter()
        .enumerate()
        .map(|(i, ids)| pb::SchedulerWave { index: i as u32, task_ids: ids.clone(), estimated_duration_secs: None })
        .collect()
}

fn workflow_pb(
    id: String,
    format: String,
    definition: String,
    def: &Definition,
    version: i64,
    times: Option<(DateTime<Utc>, DateTime<Utc>)>,
) -> pb::Workflow {
    let waves = crate::definition::waves(def).unwrap_or_default();
    pb::Workflow {
        id,
        name: def.name.clone(),
        description: def.description.clone(),
        format,
        definition,
        steps: def
            .steps
            .iter()
            .map(|s| pb::WorkflowStep {
                id: s.id.clone(),
                name: s.name.clone(),
                action: s.action.clone(),
                depends_on: s.depends_on.clone(),
                condition: s.when.clone().unwrap_or_default(),
                for_each: s
                    .for_each
                    .as_ref()
                    .map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))
                    .unwrap_or_default(),
                while_condition: s.while_condition.clone().unwrap_or_default(),
                max_iterations: s.max_iterations.unwrap_or(0),
                parallel_group: s.parallel_group.clone(),
                max_retries: s.attempts() - 1,
                timeout_secs: s.timeout_secs.unwrap_or(0),
                config_json: Value::Object(s.config.clone()).to_string(),
                gate_json: s.gate.as_ref().map(|g| serde_json::to_string(g).unwrap_or_default()).unwrap_or_default(),
                retry_backoff_ms: s.retry.map_or(0, |r| r.backoff_ms),
            })
            .collect(),
        variables_json: Value::Object(def.variables.clone()).to_string(),
        tags: def.tags.clone(),
        enabled: true,
        version,
        created_at: times.map(|t| ts(t.0)),
        updated_at: times.map(|t| ts(t.1)),
        waves: waves_pb(&waves),
    }
}

fn record_pb(w: WorkflowRecord) -> pb::Workflow {
    workflow_pb(w.id.to_string(), w.format, w.definition, &w.def, w.version, Some((w.created_at, w.updated_at)))
}

pub fn execution_pb(e: ExecutionRecord) -> pb::Execution {
    let done = e.steps.iter().filter(|s| matches!(s.state.as_str(), "succeeded" | "skipped" | "failed")).count();
    pb::Execution {
        id: e.id.to_string(),
        kind: "workflow".into(),
        workflow_id: e.workflow_id.clone(),
        workflow_name: e.workflow_name.clone(),
        state: e.state.clone(),
        variables_json: Value::Object(e.variables.clone()).to_string(),
        results_json: Value::Object(e.results()).to_string(),
        error: e.error.clone(),
        steps_total: e.steps.len() as u32,
        steps_done: done as u32,
        steps: e
            .steps
            .iter()
            .map(|s| pb::ExecutionStep {
                step_id: s.step_id.clone(),
                name: e
                    .plan
                    .steps
                    .iter()
                    .find(|p| p.id == s.step_id)
                    .map(|p| p.display_name().to_owned())
                    .unwrap_or_default(),
                state: s.state.clone(),
                attempt: s.attempt,
                iteration: s.iteration,
                output_json: s.output.as_ref().map(Value::to_string).unwrap_or_default(),
                error: s.error.clone(),
                quality_score: None,
                usage: None,
                started_at: s.started_at.map(ts),
                finished_at: s.finished_at.map(ts),
            })
            .collect(),
        usage: None,
        triggered_by: e.triggered_by.clone(),
        created_at: Some(ts(e.created_at)),
        started_at: e.started_at.map(ts),
        finished_at: e.finished_at.map(ts),
    }
}

fn spec_from_pb(name: String, description: String, tasks: Vec<pb::SchedulerTaskSpec>) -> Result<SchedulerSpec> {
    if let Some(t) = tasks.iter().find(|t| t.estimated_cost_usd.is_some_and(|c| !(c.is_finite() && c >= 0.0))) {
        return Err(Error::invalid(
            "invalid_estimate",
            format!("task `{}`: estimated_cost_usd must be a number of at least 0", t.task_id),
        ));
    }
    let tasks = tasks
        .into_iter()
        .map(|t| {
            let payload = variables(&t.payload_json).map_err(|_| {
                Error::invalid("invalid_payload", format!("task `{}`: payload must be a JSON object", t.task_id))
            })?;
            let gates = t
                .quality_gates
                .into_iter()
                .map(|g| GateSpec {
                    config: serde_json::from_str(&g.config_json).unwrap_or(Value::Null),
                    name: g.name,
                    kind: g.kind,
                    threshold: g.threshold,
                })
                .collect();
            Ok(TaskSpec {
                task_id: t.task_id,
                description: t.description,
                dependencies: t.dependencies,
                priority: t.priority,
                assignee: t.assignee,
                estimated_duration_secs: t.estimated_duration_secs,
                estimated_cost_usd: t.estimated_cost_usd,
                max_retries: t.max_retries,
                payload,
                gates,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SchedulerSpec { name, description, tasks, deadline: None, budget_usd: None })
}

fn task_pb(t: &TaskSpec) -> pb::SchedulerTaskSpec {
    pb::SchedulerTaskSpec {
        task_id: t.task_id.clone(),
        description: t.description.clone(),
        dependencies: t.dependencies.clone(),
        priority: t.priority,
        assignee: t.assignee.clone(),
        estimated_duration_secs: t.estimated_duration_secs,
        estimated_cost_usd: t.estimated_cost_usd,
        max_retries: t.max_retries,
        quality_gates: t
            .gates
            .iter()
            .map(|g| pb::QualityGate {
                name: g.name.clone(),
                kind: g.kind.clone(),
                threshold: g.threshold,
                config_json: g.config.to_string(),
                blocking: true,
            })
            .collect(),
        payload_json: Value::Object(t.payload.clone()).to_string(),
    }
}

fn scheduler_pb(w: &WorkflowRecord) -> Result<pb::SchedulerWorkflow> {
    let spec: SchedulerSpec = serde_json::from_str(&w.definition)
        .map_err(|_| Error::internal("a stored scheduler workflow does not parse"))?;
    Ok(pb::SchedulerWorkflow {
        name: spec.name.clone(),
        description: spec.description.clone(),
        tasks: spec.tasks.iter().map(task_pb).collect(),
        deadline: spec.deadline.map(ts),
        budget_usd: spec.budget_usd,
        created_at: Some(ts(w.created_at)),
        updated_at: Some(ts(w.updated_at)),
        ..Default::default()
    })
}

fn spec_of(w: &WorkflowRecord) -> Result<SchedulerSpec> {
    serde_json::from_str(&w.definition).map_err(|_| Error::internal("a stored scheduler workflow does not parse"))
}

impl OrchestratorApi {
    async fn scheduler_workflow(&self, name: &str) -> Result<WorkflowRecord> {
        self.engine.store.scheduler_workflow(name).await?.ok_or_else(|| Error::not_found("scheduler workflow", name))
    }
}

type ProgressStream = tonic::codegen::BoxStream<pb::ProgressEvent>;

#[tonic::async_trait]
impl OrchestratorService for OrchestratorApi {
    async fn create_workflow(&self, request: Request<pb::CreateWorkflowRequest>) -> Reply<pb::Workflow> {
        let r = request.into_inner();
        let result = async {
            let (format, def, _) = engine::check(&r.format, &r.definition)?;
            if r.validate_only {
                return Ok(workflow_pb(String::new(), format, r.definition, &def, 0, None));
            }
            Ok(record_pb(self.engine.store.create_workflow(&format, &r.definition, &def).await?))
        };
        reply(result.await)
    }

    async fn list_workflows(&self, request: Request<pb::ListWorkflowsRequest>) -> Reply<pb::ListWorkflowsResponse> {
        let r = request.into_inner();
        let result = async {
            let page = r.page.unwrap_or_default();
            let (limit, after) = parse_page(page.limit, Some(&page.cursor))?;
            let (all, next) = self.engine.store.list_workflows(limit, after).await?;
            let workflows = all
                .into_iter()
                .filter(|w| r.tag.as_ref().is_none_or(|t| w.def.tags.contains(t)))
                .map(record_pb)
                .collect();
            Ok(pb::ListWorkflowsResponse { workflows, next_cursor: next.unwrap_or_default() })
        };
        reply(result.await)
    }

    async fn get_workflow(&self, request: Request<pb::GetWorkflowRequest>) -> Reply<pb::Workflow> {
        let result = async {
            let id = parse_id("workflow", &request.get_ref().id)?;
            Ok(record_pb(self.engine.store.get_workflow(id).await?))
        };
        reply(result.await)
    }

    async fn update_workflow(&self, request: Request<pb::UpdateWorkflowRequest>) -> Reply<pb::Workflow> {
        let r = request.into_inner();
        let result = async {
            let id = parse_id("workflow", &r.id)?;
            let (format, def, _) = engine::check(&r.format, &r.definition)?;
            Ok(record_pb(
                self.engine.store.update_workflow(id, r.expected_version, &format, &r.definition, &def).await?,
            ))
        };
        reply(result.await)
    }

    async fn delete_workflow(&self, request: Request<pb::DeleteWorkflowRequest>) -> Reply<pb::Empty> {
        let result = async {
            let id = parse_id("workflow", &request.get_ref().id)?;
            self.engine.store.delete_workflow(id).await?;
            Ok(pb::Empty {})
        };
        reply(result.await)
    }

    async fn execute_workflow(&self, request: Request<pb::ExecuteWorkflowRequest>) -> Reply<pb::Execution> {
        let r = request.into_inner();
        let result = async {
            let id = parse_id("workflow", &r.id)?;
            let vars = variables(&r.variables_json)?;
            let key = Some(r.idempotency_key.as_str()).filter(|k| !k.is_empty());
            Ok(execution_pb(self.engine.execute(id, vars, "api", key).await?))
        };
        reply(result.await)
    }

    async fn list_executions(&self, request: Request<pb::ListExecutionsRequest>) -> Reply<pb::ListExecutionsResponse> {
        let r = request.into_inner();
        let result = async {
            let page = r.page.clone().unwrap_or_default();
            let (limit, after) = parse_page(page.limit, Some(&page.cursor))?;
            if let Some(state) = &r.state
                && !matches!(state.as_str(), "pending" | "running" | "succeeded" | "failed" | "cancelled")
            {
                return Err(Error::invalid(
                    "invalid_state",
                    format!("state `{state}`: pending, running, succeeded, failed or cancelled"),
                ));
            }
            if r.kind.as_deref().is_some_and(|k| k != "workflow") {
                return Ok(pb::ListExecutionsResponse::default());
            }
            let filter = ExecutionFilter { workflow_id: r.workflow_id, state: r.state, limit, after };
            let (executions, next) = self.engine.store.list_executions(&filter).await?;
            Ok(pb::ListExecutionsResponse {
                executions: executions.into_iter().map(execution_pb).collect(),
                next_cursor: next.unwrap_or_default(),
            })
        };
        reply(result.await)
    }

    async fn get_execution(&self, request: Request<pb::GetExecutionRequest>) -> Reply<pb::Execution> {
        let result = async {
            let id = parse_id("execution", &request.get_ref().id)?;
            Ok(execution_pb(self.engine.store.get_execution(id).await?))
        };
        reply(result.await)
    }

    async fn cancel_execution(&self, request: Request<pb::CancelExecutionRequest>) -> Reply<pb::Execution> {
        let result = async {
            let id = parse_id("execution", &request.get_ref().id)?;
            self.engine.cancel(id).await?;
            // the owner stops within a lease renewal; answer with the ended execution when it did
            let deadline = tokio::time::Instant::now() + engine::RENEW_EVERY * 3;
            loop {
                let now = self.engine.store.get_execution(id).await?;
                if now.is_terminal() || tokio::time::Instant::now() >= deadline {
                    return Ok(execution_pb(now));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        reply(result.await)
    }

    async fn create_scheduler_workflow(
        &self,
        request: Request<pb::CreateSchedulerWorkflowRequest>,
    ) -> Reply<pb::SchedulerWorkflow> {
        let r = request.into_inner();
        let result = async {
            let mut spec = if r.template.is_empty() {
                spec_from_pb(r.name, r.description, r.tasks)?
            } else {
                let template = scheduler::template(&r.template)?;
                let name = if r.name.is_empty() { template.name.to_owned() } else { r.name };
                template.instantiate(name, &parameters(&r.template_parameters_json)?)?
            };
            spec.deadline = r.deadline.map(time).transpose()?;
            spec.budget_usd = r.budget_usd;
            let def = spec.definition()?;
            let text = serde_json::to_string(&spec).map_err(|_| Error::internal("serializing a spec failed"))?;
            let store = &self.engine.store;
            let saved = match store.scheduler_workflow(&spec.name).await? {
                Some(_) if !r.replace => {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        "already_exists",
                        format!("scheduler workflow `{}` exists (replace it with \"replace\": true)", spec.name),
                    ));
                }
                Some(old) => store.update_workflow(old.id, old.version, "scheduler", &text, &def).await?,
                None => store.create_workflow("scheduler", &text, &def).await?,
            };
            scheduler_pb(&saved)
        };
        reply(result.await)
    }

    async fn list_scheduler_workflows(
        &self,
        request: Request<pb::ListSchedulerWorkflowsRequest>,
    ) -> Reply<pb::ListSchedulerWorkflowsResponse> {
        let page = request.into_inner().page.unwrap_or_default();
        let result = async {
            let (limit, after) = parse_page(page.limit, Some(&page.cursor))?;
            let (all, next) = self.engine.store.list_workflows(limit, after).await?;
            let workflows = all.iter().filter(|w| w.format == "scheduler").map(scheduler_pb).collect::<Result<_>>()?;
            Ok(pb::ListSchedulerWorkflowsResponse { workflows, next_cursor: next.unwrap_or_default() })
        };
        reply(result.await)
    }

    async fn get_scheduler_workflow(
        &self,
        request: Request<pb::GetSchedulerWorkflowRequest>,
    ) -> Reply<pb::SchedulerWorkflow> {
        let result = async { scheduler_pb(&self.scheduler_workflow(&request.get_ref().name).await?) };
        reply(result.await)
    }

    async fn delete_scheduler_workflow(
        &self,
        request: Request<pb::DeleteSchedulerWorkflowRequest>,
    ) -> Reply<pb::Empty> {
        let result = async {
            let w = self.scheduler_workflow(&request.get_ref().name).await?;
            self.engine.store.delete_workflow(w.id).await?;
            Ok(pb::Empty {})
        };
        reply(result.await)
    }

    async fn preview_scheduler_workflow(
        &self,
        request: Request<pb::PreviewSchedulerWorkflowRequest>,
    ) -> Reply<pb::SchedulerPreview> {
        let r = request.into_inner();
        let result =
            async { preview_pb(&spec_of(&self.scheduler_workflow(&r.name).await?)?, r.deadline, r.budget_usd) };
        reply(result.await)
    }

    async fn run_scheduler_workflow(&self, request: Request<pb::RunSchedulerWorkflowRequest>) -> Reply<pb::Execution> {
        let r = request.into_inner();
        let result = async {
            let w = self.scheduler_workflow(&r.name).await?;
            let vars = variables(&r.variables_json)?;
            let key = Some(r.idempotency_key.as_str()).filter(|k| !k.is_empty());
            let mut execution = execution_pb(self.engine.execute(w.id, vars, "scheduler", key).await?);
            execution.kind = "scheduler".into();
            Ok(execution)
        };
        reply(result.await)
    }

    async fn list_scheduler_templates(
        &self,
        _request: Request<pb::ListSchedulerTemplatesRequest>,
    ) -> Reply<pb::ListSchedulerTemplatesResponse> {
        reply(Ok(pb::ListSchedulerTemplatesResponse {
            templates: scheduler::templates().iter().map(template_pb).collect(),
        }))
    }

    async fn preview_scheduler_template(
        &self,
        request: Request<pb::PreviewSchedulerTemplateRequest>,
    ) -> Reply<pb::SchedulerPreview> {
        let r = request.into_inner();
        let result = async {
            let template = scheduler::template(&r.name)?;
            let spec = template.instantiate(template.name.to_owned(), &parameters(&r.parameters_json)?)?;
            preview_pb(&spec, r.deadline, r.budget_usd)
        };
        reply(result.await)
    }

    async fn add_scheduler_task(&self, request: Request<pb::AddSchedulerTaskRequest>) -> Reply<pb::SchedulerTask> {
        let r = request.into_inner();
        let result = async {
            if !r.workflow.is_empty() {
                return Err(Error::new(
                    ErrorKind::Unimplemented,
                    "not_built",
                    "tasks are added to the free-standing graph only; change a scheduler workflow by replacing it",
                ));
            }
            Ok(task_record_pb(self.engine.store.add_task(task_spec_from_pb(r.task)?).await?))
        };
        reply(result.await)
    }

    async fn get_scheduler_task(&self, request: Request<pb::GetSchedulerTaskRequest>) -> Reply<pb::SchedulerTask> {
        let result = async { Ok(task_record_pb(self.engine.store.get_task(&request.get_ref().task_id).await?)) };
        reply(result.await)
    }

    async fn list_ready_scheduler_tasks(
        &self,
        request: Request<pb::ListReadySchedulerTasksRequest>,
    ) -> Reply<pb::ListReadySchedulerTasksResponse> {
        let limit = match request.get_ref().limit {
            0 => 100,
            n => n,
        };
        let result = async {
            let tasks = self.engine.store.ready_tasks(limit).await?;
            Ok(pb::ListReadySchedulerTasksResponse { tasks: tasks.into_iter().map(task_record_pb).collect() })
        };
        reply(result.await)
    }

    async fn run_scheduler_task(&self, request: Request<pb::RunSchedulerTaskRequest>) -> Reply<pb::SchedulerTask> {
        let r = request.into_inner();
        let result = async { Ok(task_record_pb(self.engine.store.run_task(&r.task_id, &r.worker).await?)) };
        reply(result.await)
    }

    async fn complete_scheduler_task(
        &self,
        request: Request<pb::CompleteSchedulerTaskRequest>,
    ) -> Reply<pb::CompleteSchedulerTaskResponse> {
        let r = request.into_inner();
        let result = async {
            let output = match r.output_json.trim() {
                "" => None,
                text => Some(
                    serde_json::from_str::<Value>(text)
                        .map_err(|_| Error::invalid("invalid_output", "a task's output must be JSON"))?,
                ),
            };
            let (task, newly_ready) = self.engine.store.complete_task(&r.task_id, output.as_ref()).await?;
            Ok(pb::CompleteSchedulerTaskResponse { task: Some(task_record_pb(task)), gates_passed: true, newly_ready })
        };
        reply(result.await)
    }

    async fn fail_scheduler_task(
        &self,
        request: Request<pb::FailSchedulerTaskRequest>,
    ) -> Reply<pb::FailSchedulerTaskResponse> {
        let r = request.into_inner();
        let result = async {
            let (task, cancelled_downstream) = self.engine.store.fail_task(&r.task_id, &r.error).await?;
            Ok(pb::FailSchedulerTaskResponse {
                task: Some(task_record_pb(task)),
                will_retry: false,
                cancelled_downstream,
            })
        };
        reply(result.await)
    }

    async fn get_scheduler_waves(
        &self,
        request: Request<pb::GetSchedulerWavesRequest>,
    ) -> Reply<pb::GetSchedulerWavesResponse> {
        let r = request.into_inner();
        let result = async {
            let waves = match r.workflow.filter(|w| !w.is_empty()) {
                Some(name) => scheduler::preview(&spec_of(&self.scheduler_workflow(&name).await?)?)?.waves,
                None => self.engine.store.task_waves().await?,
            };
            Ok(pb::GetSchedulerWavesResponse { waves: waves_pb(&waves) })
        };
        reply(result.await)
    }

    async fn get_scheduler_stats(&self, _request: Request<pb::GetSchedulerStatsRequest>) -> Reply<pb::SchedulerStats> {
        let result = async {
            let s = self.engine.store.task_stats().await?;
            Ok(pb::SchedulerStats {
                total_tasks: s.total,
                pending: s.pending,
                ready: s.ready,
                running: s.running,
                completed: s.completed,
                failed: s.failed,
                cancelled: s.cancelled,
                workflows: s.workflows,
                active_executions: s.active_executions,
                waves: s.waves,
                mean_task_duration_secs: 0.0,
                gate_pass_rate: 0.0,
            })
        };
        reply(result.await)
    }

    async fn stream_progress(&self, request: Request<pb::StreamProgressRequest>) -> Reply<ProgressStream> {
        let r = request.into_inner();
        let id = match parse_id("execution", &r.id) {
            Ok(id) => id,
            Err(e) => return Err(e.into()),
        };
        if let Err(e) = self.engine.store.get_execution(id).await {
            return Err(e.into());
        }
        let store = self.engine.store.clone();
        let shutdown = self.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        // polls the progress log, which every replica writes to: a stream may follow an
        // execution another orchestrator runs
        self.tasks.spawn(async move {
            let mut after = r.after_sequence;
            loop {
                let entries = match store.progress_after(id, after).await {
                    Ok(entries) => entries,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                for entry in entries {
                    after = entry.seq;
                    let terminal = entry.terminal;
                    let event = pb::ProgressEvent {
                        execution_id: id.to_string(),
                        sequence: entry.seq,
                        kind: entry.kind,
                        step_id: entry.step_id,
                        progress: entry.progress,
                        message: entry.message,
                        data_json: entry.data.to_string(),
                        terminal,
                        at: Some(ts(entry.at)),
                    };
                    if tx.send(Ok(event)).await.is_err() || terminal {
                        return;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = tx.closed() => return,
                    _ = shutdown.cancelled() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
