//! The worker runtime: leases jobs of its kinds over gRPC, runs their handlers, keeps
//! each lease alive with a heartbeat, and reports the outcome with the lease's fencing
//! token. `hx worker` runs it as a process of its own; a jobs service runs one in
//! process for the built-in kinds. A worker in another language does the same four
//! calls (LeaseJobs, HeartbeatJob, CompleteJob or CompleteJobs, FailJob).
//!
//! - **At least once.** A worker that dies (kill -9, a cut network) stops heartbeating;
//!   the service's reaper puts its jobs back once their leases lapse (15 s), and another
//!   worker runs them again. A worker that was only slow learns from its next heartbeat,
//!   or its completion, that the job is no longer its (FAILED_PRECONDITION) and drops it.
//! - **One heartbeat in flight per running job.** The call is held by the service for up
//!   to the heartbeat interval and answered at once when the job is cancelled, so a
//!   cancel reaches the handler within a fraction of a second, not an interval. Jobs
//!   that finish within [`FIRST_HEARTBEAT`] never heartbeat at all.
//! - **Completions in batches.** Successes go to one completer task, which sends what
//!   gathered while its previous call was in flight as one `CompleteJobs` (one commit for
//!   many jobs under load, no added wait when idle). A job keeps its slot until its
//!   completion is answered, so a worker never holds more leases than its concurrency.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use helix_proto::v1 as pb;
use helix_proto::v1::jobs_service_client::JobsServiceClient;
use helix_runtime::config::OutboundConfig;
use helix_runtime::grpc::GrpcChannel;
use helix_runtime::outbound::{self, Outbound, OutboundError};
use serde_json::{Map, Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A handler's refusal: the message is stored on the job; `permanent` skips the retries.
#[derive(Debug, Clone)]
pub struct Failure {
    pub message: String,
    pub permanent: bool,
}

impl Failure {
    pub fn retry(message: impl Into<String>) -> Self {
        Self { message: message.into(), permanent: false }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), permanent: true }
    }
}

/// Runs one job: its payload in, its result out.
pub type Handler = Arc<dyn Fn(Map<String, Value>) -> BoxFuture<'static, Result<Value, Failure>> + Send + Sync>;

/// The handlers of a worker, by kind.
pub type Handlers = HashMap<String, Handler>;

/// Jobs shorter than this never send a heartbeat.
const FIRST_HEARTBEAT: Duration = Duration::from_millis(200);
/// Completions one `CompleteJobs` call carries at most.
const COMPLETE_BATCH: usize = 256;
/// How long a lease call waits for work before the worker asks again.
const LEASE_WAIT: Duration = Duration::from_secs(5);
/// How long a busy worker waits for more free slots before it leases.
const LEASE_LINGER: Duration = Duration::from_millis(2);

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub worker_id: String,
    /// empty: every queue
    pub queues: Vec<String>,
    /// jobs run at once
    pub concurrency: usize,
    /// how long a lease lasts without a heartbeat
    pub lease: Duration,
    /// how often a running job's lease is extended
    pub heartbeat: Duration,
}

impl WorkerOptions {
    pub fn new(worker_id: impl Into<String>) -> Self {
        Self {
            worker_id: worker_id.into(),
            queues: Vec::new(),
            concurrency: 8,
            lease: Duration::from_secs(u64::from(crate::job::DEFAULT_LEASE_SECS)),
            heartbeat: Duration::from_secs(5),
        }
    }
}

/// A worker id that tells processes apart: `<host>-<pid>`.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

/// The built-in handlers: `echo` (returns its payload), `sleep` (`{"ms"}`), `fail`
/// (`{"message"?, "permanent"?}`: fails on purpose, for diagnostics) and `http.request`
/// (`{"url", "method"?, "headers"?, "body"?}`, under the outbound policy of `outbound`).
/// Unknown names are refused.
pub fn builtin(kinds: &[String], outbound: &OutboundConfig) -> Result<Handlers, String> {
    let mut handlers = Handlers::new();
    for kind in kinds {
        let handler = match kind.as_str() {
            "echo" => handler(|payload| async move { Ok(Value::Object(payload)) }),
            "sleep" => handler(sleep),
            "fail" => handler(|payload| async move {
                let message = payload.get("message").and_then(Value::as_str).unwrap_or("failed on purpose");
                let permanent = payload.get("permanent").and_then(Value::as_bool).unwrap_or(false);
                Err(Failure { message: message.to_owned(), permanent })
            }),
            "http.request" => {
                let client =
                    Outbound::new(outbound, Duration::from_secs(60)).map_err(|e| format!("http client: {e}"))?;
                handler(move |payload| http_request(client.clone(), payload))
            }
            other => return Err(format!("no built-in handler for kind {other:?} (echo, sleep, fail, http.request)")),
        };
        handlers.insert(kind.clone(), handler);
    }
    Ok(handlers)
}

/// A [`Handler`] from an async function of the payload.
pub fn handler<F, Fut>(run: F) -> Handler
where
    F: Fn(Map<String, Value>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Value, Failure>> + Send + 'static,
{
    Arc::new(move |payload| Box::pin(run(payload)) as BoxFuture<'static, _>)
}

async fn sleep(payload: Map<String, Value>) -> Result<Value, Failure> {
    let Some(ms) = payload.get("ms").and_then(Value::as_u64) else {
        return Err(Failure::permanent("sleep needs {\"ms\": <milliseconds>}"));
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(json!({"slept_ms": ms}))
}

/// An HTTP call: a 2xx answer completes the job with its status and body; 4xx (but 408
/// and 429) is permanent, anything else is retried. A target the outbound policy refuses,
/// or a body over [`outbound::MAX_BODY`], fails the job at once: a retry cannot change it.
async fn http_request(client: Outbound, payload: Map<String, Value>) -> Result<Value, Failure> {
    let Some(url) = payload.get("url").and_then(Value::as_str) else {
        return Err(Failure::permanent("http.request needs {\"url\"}"));
    };
    let method = payload.get("method").and_then(Value::as_str).unwrap_or("GET");
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes())
        .map_err(|_| Failure::permanent(format!("invalid method {method:?}")))?;
    let mut request = client.request(method, url).map_err(outbound_failure)?;
    if let Some(headers) = payload.get("headers").and_then(Value::as_object) {
        for (name, value) in headers {
            request = request.header(name, value.as_str().unwrap_or_default());
        }
    }
    match payload.get("body") {
        Some(Value::String(text)) => request = request.body(text.clone()),
        Some(body) => request = request.json(body),
        None => {}
    }
    let response = request.send().await.map_err(|e| outbound_failure(e.into()))?;
    let status = response.status();
    let body = outbound::read_capped(response, outbound::MAX_BODY).await.map_err(outbound_failure)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    if status.is_success() {
        return Ok(json!({"status": status.as_u16(), "body": body}));
    }
    let message = format!("HTTP {status}: {}", body.chars().take(500).collect::<String>());
    match status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
        true => Err(Failure::permanent(message)),
        false => Err(Failure::retry(message)),
    }
}

fn outbound_failure(e: OutboundError) -> Failure {
    match e.is_permanent() {
        true => Failure::permanent(e.to_string()),
        false => Failure::retry(e.to_string()),
    }
}

/// Leases and runs jobs of the handlers' kinds until `shutdown`. Every job runs as a
/// task on `tasks`; on shutdown running jobs are stopped and reported failed, so they
/// are retried elsewhere without waiting for their leases to lapse.
pub async fn run(
    channel: GrpcChannel,
    options: WorkerOptions,
    handlers: Handlers,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let mut client = JobsServiceClient::new(channel);
    let mut kinds: Vec<String> = handlers.keys().cloned().collect();
    kinds.sort();
    let handlers = Arc::new(handlers);
    let options = Arc::new(options);
    let slots = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let (completions, waiting) = mpsc::unbounded_channel();
    // ends once every job and this loop have dropped their senders
    tasks.spawn(complete_in_batches(client.clone(), waiting));
    let mut failures = 0u32;
    tracing::info!(worker = %options.worker_id, ?kinds, concurrency = options.concurrency, "worker started");
    loop {
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => return },
            _ = shutdown.cancelled() => return,
        };
        let mut permits = vec![first];
        take_free(&slots, &mut permits);
        if permits.len() < options.concurrency / 2 {
            // Busy: slots come back a completion batch at a time, and a lease of one or
            // two jobs costs the database nearly what one of thirty does. Waiting a moment
            // for more keeps leases large; an idle worker (most slots free) never waits.
            tokio::select! {
                _ = tokio::time::sleep(LEASE_LINGER) => {}
                _ = shutdown.cancelled() => return,
            }
            take_free(&slots, &mut permits);
        }
        let request = pb::LeaseJobsRequest {
            worker_id: options.worker_id.clone(),
            kinds: kinds.clone(),
            queues: options.queues.clone(),
            max_jobs: permits.len() as u32,
            lease_secs: options.lease.as_secs().max(1) as u32,
            wait_ms: LEASE_WAIT.as_millis() as u32,
        };
        let leased = tokio::select! {
            leased = client.lease_jobs(request) => leased,
            _ = shutdown.cancelled() => return,
        };
        match leased {
            Ok(response) => {
                failures = 0;
                for job in response.into_inner().jobs {
                    let Some(permit) = permits.pop() else { break };
                    let running = Running {
                        client: client.clone(),
                        handlers: handlers.clone(),
                        options: options.clone(),
                        shutdown: shutdown.clone(),
                        completions: completions.clone(),
                    };
                    tasks.spawn(running.run(job, permit));
                }
            }
            Err(status) => {
                failures += 1;
                let wait = Duration::from_millis(100 << failures.min(6));
                tracing::warn!(code = ?status.code(), message = status.message(), "lease failed, will retry");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

struct Running {
    client: JobsServiceClient<GrpcChannel>,
    handlers: Arc<Handlers>,
    options: Arc<WorkerOptions>,
    shutdown: CancellationToken,
    completions: mpsc::UnboundedSender<Done>,
}

/// A success waiting for the completer, with the slot it keeps until then.
struct Done {
    request: pb::CompleteJobRequest,
    slot: OwnedSemaphorePermit,
}

enum Stop {
    Cancelled,
    LeaseLost,
}

impl Running {
    async fn run(self, job: pb::Job, slot: OwnedSemaphorePermit) {
        let payload = match serde_json::from_str(&job.payload_json) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        let work: BoxFuture<'static, Result<Value, Failure>> = match self.handlers.get(&job.kind) {
            Some(handler) => handler(payload),
            None => Box::pin(async { Err(Failure::permanent("this worker has no handler for the kind")) }),
        };
        let timeout = Duration::from_secs(u64::from(job.timeout_secs.max(1)));
        let outcome = tokio::select! {
            done = tokio::time::timeout(timeout, work) => match done {
                Ok(outcome) => outcome,
                Err(_) => Err(Failure::retry(format!("timed out after {} s", timeout.as_secs()))),
            },
            stop = self.keep_alive(&job) => match stop {
                Stop::Cancelled => Err(Failure::permanent("cancelled")),
                Stop::LeaseLost => {
                    tracing::warn!(job = %job.id, attempt = job.attempt, "lost the lease, dropping the job");
                    return;
                }
            },
            _ = self.shutdown.cancelled() => Err(Failure::retry("the worker stopped")),
        };
        match outcome {
            Ok(result) => {
                let result = match result {
                    Value::Object(_) => result,
                    other => json!({ "value": other }),
                };
                let request = pb::CompleteJobRequest {
                    id: job.id.clone(),
                    worker_id: self.options.worker_id.clone(),
                    result_json: result.to_string(),
                    attempt: job.attempt,
                };
                // the completer outlives every job (it waits for their senders)
                let _ = self.completions.send(Done { request, slot });
            }
            Err(failure) => self.report_failure(&job, failure).await,
        }
    }

    /// Heartbeats until the job is cancelled or no longer ours; never returns otherwise.
    async fn keep_alive(&self, job: &pb::Job) -> Stop {
        tokio::time::sleep(FIRST_HEARTBEAT).await;
        let mut client = self.client.clone();
        loop {
            let request = pb::HeartbeatJobRequest {
                id: job.id.clone(),
                worker_id: self.options.worker_id.clone(),
                lease_secs: self.options.lease.as_secs().max(1) as u32,
                progress: None,
                message: String::new(),
                attempt: job.attempt,
                wait_ms: self.options.heartbeat.as_millis().min(10_000) as u32,
            };
            match client.heartbeat_job(request).await {
                Ok(beat) if beat.get_ref().cancel_requested => return Stop::Cancelled,
                Ok(_) => {}
                Err(status) if matches!(status.code(), tonic::Code::FailedPrecondition | tonic::Code::NotFound) => {
                    return Stop::LeaseLost;
                }
                // the lease has slack (15 s against a 5 s interval): try again soon
                Err(status) => {
                    tracing::warn!(job = %job.id, message = status.message(), "heartbeat failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Reports a failure; a refusal for a lost lease is final, a transient failure is
    /// tried again a few times (then the lease lapses and the job runs again).
    async fn report_failure(&self, job: &pb::Job, failure: Failure) {
        let request = pb::FailJobRequest {
            id: job.id.clone(),
            worker_id: self.options.worker_id.clone(),
            error: failure.message,
            permanent: failure.permanent,
            attempt: job.attempt,
        };
        let fail = || {
            let (mut client, request) = (self.client.clone(), request.clone());
            async move { client.fail_job(request).await }
        };
        if let Err(status) = with_retries(fail).await {
            tracing::warn!(job = %job.id, attempt = job.attempt, code = ?status.code(), message = status.message(), "failure refused");
        }
    }
}

fn take_free(slots: &Arc<Semaphore>, permits: &mut Vec<OwnedSemaphorePermit>) {
    while let Ok(permit) = slots.clone().try_acquire_owned() {
        permits.push(permit);
    }
}

/// The completer: sends the successes that gathered while its previous call was in
/// flight as one `CompleteJobs`, until every sender is gone.
async fn complete_in_batches(client: JobsServiceClient<GrpcChannel>, mut waiting: mpsc::UnboundedReceiver<Done>) {
    let mut batch = Vec::with_capacity(COMPLETE_BATCH);
    while waiting.recv_many(&mut batch, COMPLETE_BATCH).await > 0 {
        let request = pb::CompleteJobsRequest { jobs: batch.iter().map(|done| done.request.clone()).collect() };
        let complete = || {
            let (mut client, request) = (client.clone(), request.clone());
            async move { client.complete_jobs(request).await }
        };
        match with_retries(complete).await {
            Ok(response) => {
                for outcome in response.into_inner().outcomes.iter().filter(|o| !o.completed) {
                    tracing::warn!(job = %outcome.id, code = outcome.error_code, message = outcome.message, "completion refused");
                }
            }
            // the leases lapse and the jobs run again
            Err(status) => {
                tracing::warn!(jobs = batch.len(), code = ?status.code(), message = status.message(), "completions refused")
            }
        }
        // The batch's slots come back together: released one by one, the lease loop
        // (on the other core) would wake at the first and lease a job or two at a time.
        let mut slots = batch.drain(..).map(|done| done.slot);
        if let Some(mut all) = slots.next() {
            slots.for_each(|slot| all.merge(slot));
        }
    }
}

/// A worker-protocol call, tried again a few times while the service is unreachable.
async fn with_retries<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut round = 0u32;
    loop {
        match call().await {
            Err(status)
                if round < 4 && matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) =>
            {
                tokio::time::sleep(Duration::from_millis(200 << round)).await;
                round += 1;
            }
            outcome => return outcome,
        }
    }
}
