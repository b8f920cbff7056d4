//! The engine: runs executions durably.
//!
//! An execution runs in one task of the orchestrator that holds its lease. Steps whose
//! dependencies succeeded (or were skipped) start together; each step's state and output
//! are committed before the engine looks for the steps they unblock, so a run stopped
//! at any point resumes from the database: finished steps keep their results, steps
//! that were running start over. At start-up, and every second after, the engine claims
//! live executions nobody holds (released at a shutdown, or whose owner's lease lapsed).
//!
//! Cancel sets `cancel_requested`; the owner learns of it at once (same process) or at
//! its next lease renewal (another replica, within [`RENEW_EVERY`]), stops its running
//! steps through their cancellation token and ends the execution `cancelled`.
//!
//! A plan's limits (`deadline`, `budget_usd`, see [`Definition`]) are kept by the run:
//! at the deadline it stops its running steps and fails naming the steps unfinished;
//! with a budget, each LLM call is capped at what is left ([`Spend`]) and, once it is
//! spent, no further step starts and the run fails. A resumed run counts the spend
//! recorded in its finished `llm.generate` steps' outputs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use helix_core::{Error, ErrorKind, Result};
use helix_runtime::ServiceContext;
use helix_runtime::db::now;
use helix_runtime::grpc::GrpcChannel;
use serde_json::{Map, Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::actions::{self, Site};
use crate::definition::{self, Definition, Gate, Step};
use crate::expr::{self, Condition, Path, Scope};
use crate::store::{ExecutionRecord, Progress, Store};

/// How long a claim holds without renewal: a crashed owner's executions resume
/// elsewhere within this.
const LEASE: Duration = Duration::from_secs(10);
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
const RESUME_EVERY: Duration = Duration::from_secs(1);

pub struct Channels {
    pub storage: GrpcChannel,
    pub search: GrpcChannel,
    pub jobs: GrpcChannel,
    pub llm: GrpcChannel,
}

/// What a run with a budget has spent on LLM calls, USD.
pub struct Spend {
    pub budget: f64,
    spent: Mutex<f64>,
}

impl Spend {
    pub fn spent(&self) -> f64 {
        *self.spent.lock().expect("spend lock")
    }

    /// What a further call may cost at most.
    pub fn left(&self) -> f64 {
        (self.budget - self.spent()).max(0.0)
    }

    pub fn add(&self, usd: f64) {
        if usd.is_finite() && usd > 0.0 {
            *self.spent.lock().expect("spend lock") += usd;
        }
    }

    pub fn is_spent(&self) -> bool {
        self.spent() >= self.budget
    }
}

/// The spend recorded in the outputs of a plan's finished `llm.generate` steps (each
/// iteration's, for loops).
fn recorded_spend(execution: &ExecutionRecord) -> f64 {
    let cost = |v: &Value| v["usage"]["cost_usd"].as_f64().unwrap_or(0.0);
    execution
        .steps
        .iter()
        .filter(|s| execution.plan.steps.iter().any(|p| p.id == s.step_id && p.action == "llm.generate"))
        .filter_map(|s| s.output.as_ref())
        .map(|output| match output {
            Value::Array(items) => items.iter().map(cost).sum(),
            one => cost(one),
        })
        .sum()
}

/// Why the run must stop starting steps, if a limit says so: the deadline passed with
/// steps unfinished (then running steps stop too: `true`), or the budget is spent with
/// steps not started.
fn limit_reached(plan: &Definition, spend: Option<&Spend>, states: &HashMap<String, String>) -> Option<(String, bool)> {
    let state = |id: &str| states.get(id).map_or("pending", String::as_str);
    if let Some(deadline) = plan.deadline
        && chrono::Utc::now() >= deadline
    {
        let unfinished: Vec<String> = plan
            .steps
            .iter()
            .filter(|s| matches!(state(&s.id), "pending" | "running"))
            .map(|s| format!("{} ({})", s.id, state(&s.id)))
            .collect();
        if !unfinished.is_empty() {
            let at = deadline.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            return Some((format!("the deadline {at} passed with steps unfinished: {}", unfinished.join(", ")), true));
        }
    }
    if let Some(spend) = spend.filter(|s| s.is_spent()) {
        let waiting: Vec<&str> =
            plan.steps.iter().filter(|s| state(&s.id) == "pending").map(|s| s.id.as_str()).collect();
        if !waiting.is_empty() {
            let (budget, spent) = (crate::scheduler::usd(spend.budget), crate::scheduler::usd(spend.spent()));
            return Some((
                format!(
                    "the budget of {budget} is spent ({spent} on LLM calls); steps not run: {}",
                    waiting.join(", ")
                ),
                false,
            ));
        }
    }
    None
}

/// A run of this engine: stopped at shutdown, on a lost lease or a cancel.
struct Run {
    stop: CancellationToken,
    cancelled: CancellationToken,
}

pub struct Engine {
    pub store: Arc<Store>,
    owner: String,
    pub(crate) channels: Channels,
    /// the outbound policy's client, for `http` steps
    pub(crate) http: helix_runtime::outbound::Outbound,
    runs: Mutex<HashMap<Uuid, Run>>,
    /// per execution: the last progress sequence, held while an entry is written so
    /// entries commit in sequence order
    seqs: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<u64>>>>,
    /// per running execution with a budget: what it spent
    spends: Mutex<HashMap<Uuid, Arc<Spend>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

fn lease_end() -> chrono::DateTime<chrono::Utc> {
    now() + chrono::Duration::from_std(LEASE).unwrap_or_default()
}

impl Engine {
    pub fn new(ctx: &ServiceContext, store: Arc<Store>) -> helix_runtime::Result<Arc<Self>> {
        let e = &ctx.config.endpoints;
        let call = Duration::from_secs(60);
        let llm_timeout = Duration::from_millis(ctx.config.llm.deadline_ms) + Duration::from_secs(10);
        let channels = Channels {
            storage: ctx.channel(&e.storage, call)?,
            search: ctx.channel(&e.search, call)?,
            jobs: ctx.channel(&e.jobs, call)?,
            llm: ctx.channel(&e.llm_router, llm_timeout)?,
        };
        Ok(Arc::new(Self {
            store,
            owner: format!("orchestrator-{}", Uuid::now_v7()),
            channels,
            http: helix_runtime::outbound::Outbound::new(&ctx.config.outbound, call)
                .map_err(|e| helix_runtime::Error::Config(format!("http client: {e}")))?,
            runs: Mutex::new(HashMap::new()),
            seqs: Mutex::new(HashMap::new()),
            spends: Mutex::new(HashMap::new()),
            tasks: ctx.tasks.clone(),
            shutdown: ctx.shutdown.clone(),
        }))
    }

    /// Claims and runs live executions nobody holds, now and every second, until shutdown.
    pub async fn resume_loop(self: Arc<Self>) {
        loop {
            match self.store.claimable(32).await {
                Ok(ids) => {
                    for id in ids {
                        self.clone().try_run(id).await;
                    }
                }
                Err(error) => tracing::warn!(%error, "looking for executions to resume failed, will retry"),
            }
            tokio::select! {
                _ = tokio::time::sleep(RESUME_EVERY) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Starts an execution of a stored workflow; returns at once.
    pub async fn execute(
        self: &Arc<Self>,
        workflow_id: Uuid,
        variables: Map<String, Value>,
        triggered_by: &str,
        idempotency_key: Option<&str>,
    ) -> Result<ExecutionRecord> {
        let workflow = self.store.get_workflow(workflow_id).await?;
        let mut merged = workflow.def.variables.clone();
        merged.extend(variables);
        let execution = self
            .store
            .create_execution(&workflow_id.to_string(), &workflow.def, &merged, triggered_by, idempotency_key)
            .await?;
        self.clone().try_run(execution.id).await;
        Ok(execution)
    }

    /// Runs a sub-workflow to its end: its results, or why it failed. Boxed: a step
    /// may start a workflow whose steps start workflows.
    pub(crate) fn run_child<'a>(
        self: &'a Arc<Self>,
        workflow_id: &'a str,
        variables: Map<String, Value>,
        parent: &'a str,
        key: &'a str,
    ) -> futures::future::BoxFuture<'a, std::result::Result<Value, String>> {
        Box::pin(async move {
            let id: Uuid = workflow_id.parse().map_err(|_| format!("workflow_id `{workflow_id}` is not a uuid"))?;
            let child = self.execute(id, variables, parent, Some(key)).await.map_err(|e| e.message().to_owned())?;
            loop {
                let now = self.store.get_execution(child.id).await.map_err(|e| e.message().to_owned())?;
                match now.state.as_str() {
                    "succeeded" => return Ok(Value::Object(now.results())),
                    "failed" => return Err(format!("sub-workflow {} failed: {}", now.id, now.error)),
                    "cancelled" => return Err(format!("sub-workflow {} was cancelled", now.id)),
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })
    }

    /// Asks an execution and every live sub-workflow under it to stop. A sub-workflow is
    /// an execution of its own (triggered by its parent's id): the parent's `workflow`
    /// step only waits for it, so stopping the parent alone would leave it running.
    pub async fn cancel(&self, id: Uuid) -> Result<ExecutionRecord> {
        let execution = self.cancel_one(id).await?;
        let mut parents = vec![id];
        while let Some(parent) = parents.pop() {
            for child in self.store.live_children(parent).await? {
                match self.cancel_one(child).await {
                    Ok(_) => parents.push(child),
                    // it ended meanwhile
                    Err(e) if e.kind() == ErrorKind::FailedPrecondition => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(execution)
    }

    /// Asks one execution to stop; ends it here when nobody runs it.
    async fn cancel_one(&self, id: Uuid) -> Result<ExecutionRecord> {
        let execution = self.store.get_execution(id).await?;
        if execution.is_terminal() {
            return Err(Error::failed_precondition(
                "not_cancellable",
                format!("execution {id} already ended {}", execution.state),
            ));
        }
        self.store.request_cancel(id).await?;
        let local = {
            let runs = self.runs.lock().expect("runs lock");
            runs.get(&id).map(|run| {
                run.cancelled.cancel();
                run.stop.cancel();
            })
        };
        if local.is_none() {
            // nobody here runs it: end it ourselves if nobody anywhere holds it
            if self.store.claim(id, &self.owner, lease_end()).await? {
                let seq = self.store.max_seq(id).await? + 1;
                self.store.finish(&execution, Some(&self.owner), "cancelled", "cancelled", seq).await?;
            }
        }
        Ok(execution)
    }

    async fn try_run(self: Arc<Self>, id: Uuid) {
        if self.shutdown.is_cancelled() || self.runs.lock().expect("runs lock").contains_key(&id) {
            return;
        }
        match self.store.claim(id, &self.owner, lease_end()).await {
            Ok(true) => {
                let run = Run { stop: self.shutdown.child_token(), cancelled: CancellationToken::new() };
                let (stop, cancelled) = (run.stop.clone(), run.cancelled.clone());
                self.runs.lock().expect("runs lock").insert(id, run);
                let engine = self.clone();
                self.tasks.spawn(async move {
                    if let Err(error) = engine.clone().run(id, stop, cancelled).await {
                        tracing::warn!(%error, execution = %id, "execution stopped");
                    }
                    engine.runs.lock().expect("runs lock").remove(&id);
                    engine.seqs.lock().expect("seqs lock").remove(&id);
                    engine.spends.lock().expect("spends lock").remove(&id);
                });
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, execution = %id, "claiming an execution failed"),
        }
    }

    /// What the execution may still spend, when its plan has a budget.
    pub(crate) fn spend(&self, id: Uuid) -> Option<Arc<Spend>> {
        self.spends.lock().expect("spends lock").get(&id).cloned()
    }

    async fn seq(&self, id: Uuid) -> Result<Arc<tokio::sync::Mutex<u64>>> {
        if let Some(seq) = self.seqs.lock().expect("seqs lock").get(&id) {
            return Ok(seq.clone());
        }
        let last = self.store.max_seq(id).await?;
        Ok(self
            .seqs
            .lock()
            .expect("seqs lock")
            .entry(id)
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(last)))
            .clone())
    }

    /// A log line in the execution's progress (best effort).
    pub(crate) async fn log(&self, id: Uuid, step_id: &str, message: &str) {
        let Ok(seq) = self.seq(id).await else { return };
        let mut seq = seq.lock().await;
        let entry = Progress {
            kind: "log",
            step_id: Some(step_id),
            progress: 0.0,
            message: message.to_owned(),
            data: json!({}),
        };
        if self.store.log(id, *seq + 1, &entry).await.is_ok() {
            *seq += 1;
        }
    }

    async fn step_state(
        &self,
        execution: &ExecutionRecord,
        step_id: &str,
        state: &str,
        output: Option<&Value>,
        error: &str,
        entry: Progress<'_>,
    ) -> Result<()> {
        let seq = self.seq(execution.id).await?;
        let mut seq = seq.lock().await;
        self.store.step_state(execution, &self.owner, step_id, state, output, error, 0, *seq + 1, &entry).await?;
        *seq += 1;
        Ok(())
    }

    async fn finish(&self, execution: &ExecutionRecord, state: &str, error: &str) -> Result<()> {
        let seq = self.seq(execution.id).await?;
        let mut seq = seq.lock().await;
        if self.store.finish(execution, Some(&self.owner), state, error, *seq + 1).await? {
            *seq += 1;
        }
        Ok(())
    }

    async fn run(self: Arc<Self>, id: Uuid, stop: CancellationToken, cancelled: CancellationToken) -> Result<()> {
        let execution = Arc::new(self.store.get_execution(id).await?);
        if let Some(budget) = execution.plan.budget_usd {
            let spend = Spend { budget, spent: Mutex::new(recorded_spend(&execution)) };
            self.spends.lock().expect("spends lock").insert(id, Arc::new(spend));
        }
        {
            let seq = self.seq(id).await?;
            let mut seq = seq.lock().await;
            self.store.start(&execution, &self.owner, *seq + 1).await?;
            *seq += 1;
        }
        // the lease keeper: renews, and learns of cancels made on other replicas
        let keeper = {
            let (engine, stop, cancelled) = (self.clone(), stop.clone(), cancelled.clone());
            self.tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(RENEW_EVERY) => {}
                        _ = stop.cancelled() => return,
                    }
                    match engine.store.renew(id, &engine.owner, lease_end()).await {
                        Ok(Some(false)) => {}
                        Ok(Some(true)) => {
                            cancelled.cancel();
                            stop.cancel();
                        }
                        Ok(None) => stop.cancel(),
                        Err(error) => tracing::warn!(%error, execution = %id, "renewing the lease failed"),
                    }
                }
            })
        };
        let outcome = self.clone().drive(&execution, &stop).await;
        if cancelled.is_cancelled() {
            stop.cancel();
            self.finish(&execution, "cancelled", "cancelled").await?;
        } else if stop.is_cancelled() {
            // shutdown or a lost lease: leave the execution running for whoever resumes it
            self.store.release(id, &self.owner).await?;
        } else {
            stop.cancel();
            match outcome {
                Ok(()) => self.finish(&execution, "succeeded", "").await?,
                Err(error) => self.finish(&execution, "failed", &error).await?,
            }
        }
        keeper.await.ok();
        Ok(())
    }

    /// Runs the steps until all are done, one failed, or `stop`.
    async fn drive(
        self: Arc<Self>,
        execution: &Arc<ExecutionRecord>,
        stop: &CancellationToken,
    ) -> std::result::Result<(), String> {
        let fresh = self.store.get_execution(execution.id).await.map_err(|e| e.message().to_owned())?;
        let mut states: HashMap<String, String> =
            fresh.steps.iter().map(|s| (s.step_id.clone(), s.state.clone())).collect();
        let mut results = fresh.results();
        if let Some(failed) = fresh.steps.iter().find(|s| s.state == "failed") {
            return Err(format!("step {} failed: {}", failed.step_id, failed.error));
        }
        let mut running: JoinSet<(String, std::result::Result<Option<Value>, String>)> = JoinSet::new();
        let steps_stop = stop.child_token();
        let mut failure = None;
        let spend = self.spend(execution.id);
        loop {
            if failure.is_none()
                && let Some((why, stop_running)) = limit_reached(&execution.plan, spend.as_deref(), &states)
            {
                failure = Some(why);
                if stop_running {
                    steps_stop.cancel();
                }
            }
            if failure.is_none() && !stop.is_cancelled() {
                for step in &execution.plan.steps {
                    let ready = states.get(&step.id).map(String::as_str) == Some("pending")
                        && step
                            .depends_on
                            .iter()
                            .all(|d| matches!(states.get(d).map(String::as_str), Some("succeeded" | "skipped")));
                    if !ready {
                        continue;
                    }
                    states.insert(step.id.clone(), "running".into());
                    let (engine, execution, step, results, token) =
                        (self.clone(), execution.clone(), step.clone(), results.clone(), steps_stop.clone());
                    running.spawn(async move {
                        let id = step.id.clone();
                        (id, engine.run_step(&execution, &step, results, &token).await)
                    });
                }
            }
            let ahead = execution.plan.deadline.filter(|d| failure.is_none() && *d > chrono::Utc::now());
            let next = match ahead {
                Some(deadline) => {
                    let wait = (deadline - chrono::Utc::now()).to_std().unwrap_or_default();
                    tokio::select! {
                        next = running.join_next() => next,
                        // the limit check at the top of the loop ends the run
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
                None => running.join_next().await,
            };
            let Some(joined) = next else { break };
            let (step_id, outcome) = match joined {
                Ok(done) => done,
                Err(error) => {
                    failure.get_or_insert_with(|| format!("a step task failed: {error}"));
                    steps_stop.cancel();
                    continue;
                }
            };
            match outcome {
                Ok(Some(output)) => {
                    states.insert(step_id.clone(), "succeeded".into());
                    results.insert(step_id, output);
                }
                Ok(None) => {
                    states.insert(step_id, "skipped".into());
                }
                Err(error) => {
                    states.insert(step_id.clone(), "failed".into());
                    if !stop.is_cancelled() {
                        failure.get_or_insert_with(|| format!("step {step_id} failed: {error}"));
                    }
                    steps_stop.cancel();
                }
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// One step: condition, loop, attempts with backoff and timeout, gate. `Ok(None)`
    /// when skipped. Its states and output are committed before it returns.
    async fn run_step(
        self: Arc<Self>,
        execution: &ExecutionRecord,
        step: &Step,
        results: Map<String, Value>,
        stop: &CancellationToken,
    ) -> std::result::Result<Option<Value>, String> {
        let lost = |e: Error| e.message().to_owned();
        let scope = Vars { vars: &execution.variables, results: &results, lp: Value::Null };
        if let Some(when) = &step.when
            && !Condition::parse(when).map_err(lost)?.eval(&scope)
        {
            let entry = progress("step_skipped", &step.id, format!("{}: condition is false", step.display_name()));
            self.step_state(execution, &step.id, "skipped", None, "", entry).await.map_err(lost)?;
            return Ok(None);
        }
        let attempts = step.attempts();
        let mut backoff = Duration::from_millis(step.retry.map_or(0, |r| r.backoff_ms));
        let mut attempt = 1;
        loop {
            let entry =
                progress("step_started", &step.id, format!("{} started (attempt {attempt})", step.display_name()));
            self.step_state(execution, &step.id, "running", None, "", entry).await.map_err(lost)?;
            let work = self.attempt(execution, step, &results);
            let result = tokio::select! {
                _ = stop.cancelled() => return Err("stopped".into()),
                r = async {
                    match step.timeout_secs {
                        Some(secs) => tokio::time::timeout(Duration::from_secs(u64::from(secs)), work)
                            .await
                            .unwrap_or_else(|_| Err(format!("timed out after {secs} s"))),
                        None => work.await,
                    }
                } => r,
            };
            match result {
                Ok(output) => {
                    let entry = Progress {
                        kind: "step_completed",
                        step_id: Some(&step.id),
                        progress: 0.0,
                        message: format!("{} succeeded", step.display_name()),
                        data: output.clone(),
                    };
                    self.step_state(execution, &step.id, "succeeded", Some(&output), "", entry).await.map_err(lost)?;
                    return Ok(Some(output));
                }
                Err(error) if attempt < attempts => {
                    self.log(execution.id, &step.id, &format!("attempt {attempt} failed: {error}; retrying")).await;
                    tokio::select! {
                        _ = stop.cancelled() => return Err("stopped".into()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff *= 2;
                    attempt += 1;
                }
                Err(error) => {
                    let entry = progress("step_failed", &step.id, format!("{} failed: {error}", step.display_name()));
                    self.step_state(execution, &step.id, "failed", None, &error, entry).await.map_err(lost)?;
                    return Err(error);
                }
            }
        }
    }

    /// One attempt: the action once, per for_each item, or while the condition holds;
    /// then the gate.
    async fn attempt(
        self: &Arc<Self>,
        execution: &ExecutionRecord,
        step: &Step,
        results: &Map<String, Value>,
    ) -> std::result::Result<Value, String> {
        let msg = |e: Error| e.message().to_owned();
        let base = Vars { vars: &execution.variables, results, lp: Value::Null };
        let output = if let Some(list) = &step.for_each {
            let items = match expr::render_value(list, &base).map_err(msg)? {
                Value::Array(items) => items,
                other => return Err(format!("for_each gave {other}, not a list")),
            };
            let mut outputs = Vec::with_capacity(items.len());
            for (index, item) in items.into_iter().enumerate() {
                let scope = Vars { lp: json!({"item": item, "index": index}), ..base.clone() };
                outputs.push(self.action(execution, step, &scope, index as u32).await?);
            }
            Value::Array(outputs)
        } else if let Some(cond) = &step.while_condition {
            let condition = Condition::parse(cond).map_err(msg)?;
            let bound = step.max_iterations.unwrap_or(definition::DEFAULT_MAX_ITERATIONS);
            let mut outputs = Vec::new();
            let mut last = Value::Null;
            for index in 0..bound {
                let scope = Vars { lp: json!({"index": index, "output": last}), ..base.clone() };
                if !condition.eval(&scope) {
                    break;
                }
                last = self.action(execution, step, &scope, index).await?;
                outputs.push(last.clone());
            }
            Value::Array(outputs)
        } else {
            self.action(execution, step, &base, 0).await?
        };
        if let Some(gate) = &step.gate {
            let criteria = match gate {
                Gate::LlmJudge { criteria, .. } => Some(expr::render(criteria, &base).map_err(msg)?),
                _ => None,
            };
            let criteria = criteria.map(|c| c.as_str().map(str::to_owned).unwrap_or_else(|| c.to_string()));
            let spend = self.spend(execution.id);
            let verdict = actions::check_gate(self, gate, &output, criteria.as_deref(), spend.as_deref()).await?;
            if !verdict.passed {
                return Err(format!("quality gate failed: {}", verdict.detail));
            }
            self.log(execution.id, &step.id, &format!("quality gate passed: {}", verdict.detail)).await;
        }
        Ok(output)
    }

    async fn action(
        self: &Arc<Self>,
        execution: &ExecutionRecord,
        step: &Step,
        scope: &Vars<'_>,
        iteration: u32,
    ) -> std::result::Result<Value, String> {
        let config =
            match expr::render_value(&Value::Object(step.config.clone()), scope).map_err(|e| e.message().to_owned())? {
                Value::Object(config) => config,
                _ => Map::new(),
            };
        let site = Site { execution_id: execution.id, step_id: &step.id, iteration };
        actions::run(self, &step.action, config, &site).await
    }
}

fn progress<'a>(kind: &'a str, step_id: &'a str, message: String) -> Progress<'a> {
    Progress { kind, step_id: Some(step_id), progress: 0.0, message, data: json!({}) }
}

/// What a step's expressions see.
#[derive(Clone)]
struct Vars<'a> {
    vars: &'a Map<String, Value>,
    results: &'a Map<String, Value>,
    lp: Value,
}

impl Scope for Vars<'_> {
    fn lookup(&self, path: &Path) -> Value {
        let (root, rest) = path.segments.split_first().expect("a parsed path has a segment");
        let start = match path.root.as_str() {
            "var" => self.vars.get(root),
            "result" => self.results.get(root),
            _ => self.lp.get(root),
        };
        start.map(|v| expr::walk(v, rest).clone()).unwrap_or(Value::Null)
    }
}

/// Parses and validates a definition; the waves are the plan.
pub fn check(format: &str, text: &str) -> Result<(String, Definition, Vec<Vec<String>>)> {
    let (format, def) = definition::parse(format, text)?;
    let waves = definition::validate(&def)?;
    Ok((format, def, waves))
}
