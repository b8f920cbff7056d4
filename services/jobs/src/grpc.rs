//! The jobs service's gRPC face: converts wire messages to domain types and back, and
//! checks what the wire alone can say is wrong. Rules live in [`crate::job`], state
//! changes in [`JobStore`].

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use helix_core::node::parse_page;
use helix_core::{Error, Result};
use helix_proto::v1 as pb;
use helix_proto::v1::jobs_service_server::JobsService;
use serde_json::Value;
use tonic::{Request, Response, Status};

use crate::job::{self, Job, JobDraft, State, parse_job_id, parse_object};
use crate::schedule::{Schedule, ScheduleChanges, ScheduleDraft};
use crate::store::{Completion, Counts, Heartbeat, JobFilter, JobStore, LeaseRequest};

pub struct JobsApi {
    store: Arc<JobStore>,
}

impl JobsApi {
    pub fn new(store: Arc<JobStore>) -> Self {
        Self { store }
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

fn reply<T>(result: Result<T>) -> Reply<T> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl JobsService for JobsApi {
    async fn enqueue_job(&self, request: Request<pb::EnqueueJobRequest>) -> Reply<pb::Job> {
        let result = async {
            let new = draft(request.into_inner())?.validate()?;
            self.store.enqueue_one(new).await.map(job_to_pb)
        };
        reply(result.await)
    }

    async fn enqueue_jobs(&self, request: Request<pb::EnqueueJobsRequest>) -> Reply<pb::EnqueueJobsResponse> {
        let requests = request.into_inner().jobs;
        let result = async {
            let all = each_of(requests, |r| draft(r).and_then(JobDraft::validate))?;
            let jobs = self.store.enqueue(all).await?;
            Ok(pb::EnqueueJobsResponse { jobs: jobs.into_iter().map(job_to_pb).collect() })
        };
        reply(result.await)
    }

    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Reply<pb::ListJobsResponse> {
        let r = request.into_inner();
        let result = async {
            let state = r.state.filter(|s| !s.is_empty()).map(|s| State::parse(&s)).transpose()?;
            let filter = filter(state, r.kind, r.queue, r.page)?;
            list(&self.store, filter).await
        };
        reply(result.await)
    }

    async fn get_job_stats(&self, request: Request<pb::GetJobStatsRequest>) -> Reply<pb::JobStats> {
        let queue = request.into_inner().queue.filter(|q| !q.is_empty());
        let result = async {
            if let Some(queue) = &queue {
                job::validate_queue(queue)?;
            }
            let stats = self.store.stats(queue.as_deref()).await?;
            let c = &stats.counts;
            Ok(pb::JobStats {
                total: stats.total,
                pending: c.get(State::Pending),
                running: c.get(State::Running),
                completed: c.get(State::Completed),
                failed: c.get(State::Failed),
                dead: c.get(State::Dead),
                cancelled: c.get(State::Cancelled),
                by_kind: stats
                    .by_kind
                    .into_iter()
                    .map(|(kind, c, mean)| pb::JobKindStats {
                        kind,
                        pending: c.get(State::Pending),
                        running: c.get(State::Running),
                        completed: c.get(State::Completed),
                        failed: c.get(State::Failed),
                        dead: c.get(State::Dead),
                        cancelled: c.get(State::Cancelled),
                        mean_duration_secs: mean,
                    })
                    .collect(),
                oldest_pending_at: stats.oldest_pending_at.map(timestamp),
                active_workers: stats.active_workers,
                by_queue: stats.by_queue.into_iter().map(|(queue, c)| queue_stats(queue, &c)).collect(),
            })
        };
        reply(result.await)
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Reply<pb::Job> {
        let id = parse_job_id(&request.into_inner().id);
        reply(async { self.store.get(id?).await.map(job_to_pb) }.await)
    }

    async fn retry_job(&self, request: Request<pb::RetryJobRequest>) -> Reply<pb::Job> {
        let r = request.into_inner();
        reply(async { self.store.retry(parse_job_id(&r.id)?, r.reset_retries).await.map(job_to_pb) }.await)
    }

    async fn cancel_job(&self, request: Request<pb::CancelJobRequest>) -> Reply<pb::Job> {
        let r = request.into_inner();
        let reason = if r.reason.is_empty() { "cancelled".to_owned() } else { r.reason };
        reply(async { self.store.cancel(parse_job_id(&r.id)?, &reason).await.map(job_to_pb) }.await)
    }

    async fn list_dead_letter_jobs(
        &self,
        request: Request<pb::ListDeadLetterJobsRequest>,
    ) -> Reply<pb::ListJobsResponse> {
        let r = request.into_inner();
        let result = async {
            let filter = filter(Some(State::Dead), r.kind, None, r.page)?;
            list(&self.store, filter).await
        };
        reply(result.await)
    }

    async fn purge_jobs(&self, request: Request<pb::PurgeJobsRequest>) -> Reply<pb::PurgeJobsResponse> {
        let r = request.into_inner();
        let result = async {
            let mut states = r.states.iter().map(|s| State::parse(s)).collect::<Result<Vec<_>>>()?;
            if let Some(state) = states.iter().find(|s| !s.is_final()) {
                return Err(Error::invalid(
                    "invalid_state",
                    format!("only completed, cancelled and dead jobs can be purged, not {}", state.as_str()),
                ));
            }
            if states.is_empty() {
                states = vec![State::Completed, State::Cancelled];
            }
            states.dedup();
            let kind = r.kind.filter(|k| !k.is_empty());
            if let Some(kind) = &kind {
                job::validate_kind(kind)?;
            }
            let before = r.finished_before.map(from_timestamp).transpose()?;
            let purged = self.store.purge(&states, before, kind.as_deref()).await?;
            Ok(pb::PurgeJobsResponse { purged })
        };
        reply(result.await)
    }

    async fn create_job_schedule(&self, request: Request<pb::CreateJobScheduleRequest>) -> Reply<pb::JobSchedule> {
        let r = request.into_inner();
        let result = async {
            let draft = ScheduleDraft {
                name: r.name,
                cron: r.cron,
                interval_secs: r.interval_secs,
                timezone: r.timezone,
                kind: r.kind,
                queue: r.queue,
                payload: r.payload_json,
                priority: r.priority,
                max_attempts: r.max_attempts,
                enabled: r.enabled,
                allow_overlap: r.allow_overlap,
            };
            let schedule = draft.validate(helix_runtime::db::now())?;
            self.store.create_schedule(schedule).await.map(schedule_to_pb)
        };
        reply(result.await)
    }

    async fn list_job_schedules(
        &self,
        request: Request<pb::ListJobSchedulesRequest>,
    ) -> Reply<pb::ListJobSchedulesResponse> {
        let r = request.into_inner();
        let result = async {
            let page = r.page.unwrap_or_default();
            let (limit, after) = parse_page(page.limit, Some(&page.cursor))?;
            let (schedules, next) = self.store.list_schedules(r.enabled, limit, after).await?;
            Ok(pb::ListJobSchedulesResponse {
                schedules: schedules.into_iter().map(schedule_to_pb).collect(),
                next_cursor: next.unwrap_or_default(),
            })
        };
        reply(result.await)
    }

    async fn get_job_schedule(&self, request: Request<pb::GetJobScheduleRequest>) -> Reply<pb::JobSchedule> {
        let id = parse_schedule_id(&request.into_inner().id);
        reply(async { self.store.get_schedule(id?).await.map(schedule_to_pb) }.await)
    }

    async fn update_job_schedule(&self, request: Request<pb::UpdateJobScheduleRequest>) -> Reply<pb::JobSchedule> {
        let r = request.into_inner();
        let result = async {
            let changes = ScheduleChanges {
                name: r.name,
                cron: r.cron,
                interval_secs: r.interval_secs,
                timezone: r.timezone,
                payload: r.payload_json,
                priority: r.priority,
                max_attempts: r.max_attempts,
                enabled: r.enabled,
                allow_overlap: r.allow_overlap,
            };
            self.store.update_schedule(parse_schedule_id(&r.id)?, changes).await.map(schedule_to_pb)
        };
        reply(result.await)
    }

    async fn delete_job_schedule(&self, request: Request<pb::DeleteJobScheduleRequest>) -> Reply<pb::Empty> {
        let id = parse_schedule_id(&request.into_inner().id);
        reply(async { self.store.delete_schedule(id?).await.map(|()| pb::Empty {}) }.await)
    }

    async fn trigger_job_schedule(&self, request: Request<pb::TriggerJobScheduleRequest>) -> Reply<pb::Job> {
        let id = parse_schedule_id(&request.into_inner().id);
        reply(async { self.store.trigger_schedule(id?).await.map(job_to_pb) }.await)
    }

    async fn lease_jobs(&self, request: Request<pb::LeaseJobsRequest>) -> Reply<pb::LeaseJobsResponse> {
        let r = request.into_inner();
        let result = async {
            let worker_id = worker(&r.worker_id)?;
            if r.kinds.is_empty() {
                return Err(Error::invalid("invalid_kind", "kinds must name at least one kind"));
            }
            for kind in &r.kinds {
                job::validate_kind(kind)?;
            }
            for queue in &r.queues {
                job::validate_queue(queue)?;
            }
            let max_jobs = match r.max_jobs {
                0 => 1,
                n if n > job::MAX_LEASE_BATCH => {
                    return Err(Error::invalid(
                        "invalid_max_jobs",
                        format!("max_jobs must be from 1 to {}", job::MAX_LEASE_BATCH),
                    ));
                }
                n => n,
            };
            if r.wait_ms > job::MAX_LEASE_WAIT_MS {
                return Err(Error::invalid("invalid_wait", format!("wait_ms is at most {}", job::MAX_LEASE_WAIT_MS)));
            }
            let request = LeaseRequest {
                worker_id,
                kinds: r.kinds,
                queues: r.queues,
                max_jobs,
                lease: lease_secs(r.lease_secs)?,
                wait: Duration::from_millis(u64::from(r.wait_ms)),
            };
            let jobs = self.store.lease(&request).await?;
            Ok(pb::LeaseJobsResponse { jobs: jobs.into_iter().map(job_to_pb).collect() })
        };
        reply(result.await)
    }

    async fn heartbeat_job(&self, request: Request<pb::HeartbeatJobRequest>) -> Reply<pb::HeartbeatJobResponse> {
        let r = request.into_inner();
        let result = async {
            if let Some(progress) = r.progress
                && !(0.0..=1.0).contains(&progress)
            {
                return Err(Error::invalid("invalid_progress", "progress must be within 0.0..=1.0"));
            }
            if r.wait_ms > job::MAX_HEARTBEAT_WAIT_MS {
                return Err(Error::invalid(
                    "invalid_wait",
                    format!("wait_ms is at most {}", job::MAX_HEARTBEAT_WAIT_MS),
                ));
            }
            let beat = Heartbeat {
                id: parse_job_id(&r.id)?,
                attempt: attempt(r.attempt)?,
                lease: lease_secs(r.lease_secs)?,
                progress: r.progress,
                message: r.message,
                wait: Duration::from_millis(u64::from(r.wait_ms)),
            };
            let (expires, cancel_requested) = self.store.heartbeat(&beat).await?;
            Ok(pb::HeartbeatJobResponse { lease_expires_at: Some(timestamp(expires)), cancel_requested })
        };
        reply(result.await)
    }

    async fn complete_job(&self, request: Request<pb::CompleteJobRequest>) -> Reply<pb::Job> {
        let result = async {
            let Completion { id, attempt, result } = completion(request.into_inner())?;
            self.store.complete(id, attempt, result).await.map(job_to_pb)
        };
        reply(result.await)
    }

    async fn complete_jobs(&self, request: Request<pb::CompleteJobsRequest>) -> Reply<pb::CompleteJobsResponse> {
        let requests = request.into_inner().jobs;
        let result = async {
            let completions = each_of(requests, completion)?;
            let ids: Vec<String> = completions.iter().map(|c| c.id.to_string()).collect();
            let outcomes = self.store.complete_all(completions).await?;
            let outcomes = ids.into_iter().zip(outcomes).map(|(id, outcome)| match outcome {
                Ok(_) => pb::CompleteJobOutcome { id, completed: true, ..Default::default() },
                Err(error) => pb::CompleteJobOutcome {
                    id,
                    completed: false,
                    error_code: error.code().to_owned(),
                    message: error.message().to_owned(),
                },
            });
            Ok(pb::CompleteJobsResponse { outcomes: outcomes.collect() })
        };
        reply(result.await)
    }

    async fn fail_job(&self, request: Request<pb::FailJobRequest>) -> Reply<pb::Job> {
        let r = request.into_inner();
        let result = async {
            let id = parse_job_id(&r.id)?;
            let error = if r.error.is_empty() { "failed" } else { r.error.as_str() };
            self.store.fail(id, attempt(r.attempt)?, error, r.permanent).await.map(job_to_pb)
        };
        reply(result.await)
    }
}

fn schedule_to_pb(s: Schedule) -> pb::JobSchedule {
    pb::JobSchedule {
        id: s.id.to_string(),
        name: s.name,
        cron: s.cron,
        timezone: s.timezone,
        kind: s.kind,
        queue: s.queue,
        payload_json: Value::Object(s.payload).to_string(),
        priority: s.priority,
        max_attempts: s.max_attempts,
        enabled: s.enabled,
        allow_overlap: s.allow_overlap,
        next_run_at: Some(timestamp(s.next_run_at)),
        last_run_at: s.last_run_at.map(timestamp),
        last_job_id: s.last_job_id.map(|id| id.to_string()).unwrap_or_default(),
        created_at: Some(timestamp(s.created_at)),
        updated_at: Some(timestamp(s.updated_at)),
        interval_secs: s.interval_secs,
    }
}

fn parse_schedule_id(id: &str) -> Result<uuid::Uuid> {
    uuid::Uuid::try_parse(id).map_err(|_| Error::invalid("invalid_id", "not a schedule id (a UUID)"))
}

fn draft(r: pb::EnqueueJobRequest) -> Result<JobDraft> {
    Ok(JobDraft {
        kind: r.kind,
        queue: r.queue,
        payload: r.payload_json,
        priority: r.priority,
        max_attempts: r.max_attempts,
        run_at: r.run_at.map(from_timestamp).transpose()?,
        timeout_secs: r.timeout_secs,
        idempotency_key: r.idempotency_key,
        schedule_id: None,
    })
}

fn worker(id: &str) -> Result<String> {
    if id.is_empty() || id.chars().count() > 128 {
        return Err(Error::invalid("invalid_worker_id", "worker_id must be 1-128 characters"));
    }
    Ok(id.to_owned())
}

/// The entries of a bulk call (1 to [`job::MAX_BULK`]), each converted; the first that
/// cannot be refuses the call, named by its index.
fn each_of<T, U>(requests: Vec<T>, convert: impl Fn(T) -> Result<U>) -> Result<Vec<U>> {
    if requests.is_empty() || requests.len() > job::MAX_BULK {
        return Err(Error::invalid("invalid_bulk", format!("jobs must hold 1 to {} jobs", job::MAX_BULK)));
    }
    let entry = |(i, r)| {
        convert(r).map_err(|e: Error| Error::new(e.kind(), e.code().to_owned(), format!("jobs[{i}]: {}", e.message())))
    };
    requests.into_iter().enumerate().map(entry).collect()
}

fn completion(r: pb::CompleteJobRequest) -> Result<Completion> {
    Ok(Completion {
        id: parse_job_id(&r.id)?,
        attempt: attempt(r.attempt)?,
        result: parse_object(&r.result_json, "invalid_result", "result")?,
    })
}

fn attempt(attempt: u32) -> Result<u32> {
    if attempt == 0 {
        return Err(Error::invalid("invalid_attempt", "attempt (the fencing token of the lease) is required"));
    }
    Ok(attempt)
}

fn lease_secs(secs: u32) -> Result<Duration> {
    match secs {
        0 => Ok(Duration::from_secs(u64::from(job::DEFAULT_LEASE_SECS))),
        n if n > job::MAX_LEASE_SECS => {
            Err(Error::invalid("invalid_lease", format!("lease_secs is at most {}", job::MAX_LEASE_SECS)))
        }
        n => Ok(Duration::from_secs(u64::from(n))),
    }
}

fn filter(
    state: Option<State>,
    kind: Option<String>,
    queue: Option<String>,
    page: Option<pb::PageRequest>,
) -> Result<JobFilter> {
    let page = page.unwrap_or_default();
    let (limit, after) = parse_page(page.limit, Some(&page.cursor))?;
    let kind = kind.filter(|k| !k.is_empty());
    if let Some(kind) = &kind {
        job::validate_kind(kind)?;
    }
    let queue = queue.filter(|q| !q.is_empty());
    if let Some(queue) = &queue {
        job::validate_queue(queue)?;
    }
    Ok(JobFilter { state, kind, queue, limit, after })
}

async fn list(store: &JobStore, filter: JobFilter) -> Result<pb::ListJobsResponse> {
    let page = store.list(&filter).await?;
    Ok(pb::ListJobsResponse {
        jobs: page.jobs.into_iter().map(job_to_pb).collect(),
        next_cursor: page.next_cursor.unwrap_or_default(),
    })
}

fn queue_stats(queue: String, c: &Counts) -> pb::JobQueueStats {
    pb::JobQueueStats {
        queue,
        pending: c.get(State::Pending),
        running: c.get(State::Running),
        completed: c.get(State::Completed),
        failed: c.get(State::Failed),
        dead: c.get(State::Dead),
        cancelled: c.get(State::Cancelled),
    }
}

pub fn job_to_pb(job: Job) -> pb::Job {
    pb::Job {
        id: job.id.to_string(),
        kind: job.kind,
        queue: job.queue,
        payload_json: Value::Object(job.payload).to_string(),
        state: job.state.as_str().to_owned(),
        priority: job.priority,
        retries: job.retries,
        max_attempts: job.max_attempts,
        last_error: job.last_error,
        result_json: job.result.map(|r| Value::Object(r).to_string()).unwrap_or_default(),
        timeout_secs: job.timeout_secs,
        idempotency_key: job.idempotency_key.unwrap_or_default(),
        schedule_id: job.schedule_id.map(|id| id.to_string()).unwrap_or_default(),
        worker_id: job.worker_id.unwrap_or_default(),
        lease_expires_at: job.lease_expires_at.map(timestamp),
        cancel_requested: job.cancel_requested,
        run_at: Some(timestamp(job.run_at)),
        created_at: Some(timestamp(job.created_at)),
        updated_at: Some(timestamp(job.updated_at)),
        started_at: job.started_at.map(timestamp),
        finished_at: job.finished_at.map(timestamp),
        attempt: job.attempt,
        progress: job.progress,
        progress_message: job.progress_message,
    }
}

pub fn timestamp(t: DateTime<Utc>) -> helix_proto::Timestamp {
    helix_proto::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

fn from_timestamp(t: helix_proto::Timestamp) -> Result<DateTime<Utc>> {
    let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000);
    nanos
        .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
        .ok_or_else(|| Error::invalid("invalid_time", "the timestamp is out of range"))
}
