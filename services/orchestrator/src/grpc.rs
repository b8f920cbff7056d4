//! The orchestrator's gRPC face for the workflow engine: wire ↔ domain only.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use helix_core::node::parse_page;
use helix_core::{Error, Result};
use helix_proto::v1 as pb;
use helix_proto::v1::orchestrator_service_server::OrchestratorService;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::definition::Definition;
use crate::engine::{self, Engine};
use crate::store::{ExecutionFilter, ExecutionRecord, WorkflowRecord};

pub struct OrchestratorApi {
    engine: Arc<Engine>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
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
