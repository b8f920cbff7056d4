//! The queue in the service's database. Every state change is one conditional UPDATE
//! whose WHERE clause is the rule (a lease takes only waiting jobs, a completion only
//! its own attempt of a running job), with the change's event put in the outbox of the
//! same transaction; so two replicas, two workers or a worker and the reaper can race
//! freely and exactly one of them wins.
//!
//! On PostgreSQL a lease and the reaper pick their rows `FOR UPDATE SKIP LOCKED`: a
//! concurrent lease skips the rows another one is taking instead of waiting for it.
//! SQLite has one writer at a time, so the same statements without the clause are
//! already exclusive; a lease takes its whole batch in one write transaction.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use helix_core::{Error, Result};
use helix_events::subjects;
use helix_runtime::db::{self, Backend, Database, db_error, from_micros, micros, now};
use helix_runtime::outbox::{self, Outbox};
use serde_json::{Map, Value, json};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use crate::SERVICE;
use crate::job::{Job, NewJob, State, backoff, clip_error, lease_lost};

const COLUMNS: &str = "id, kind, queue, payload, state, priority, retries, max_attempts, attempt, last_error, result, \
     timeout_secs, idempotency_key, schedule_id, worker_id, lease_expires_at, cancel_requested, progress, \
     progress_message, run_at, created_at, updated_at, started_at, finished_at";

/// How often a waiting lease or heartbeat looks at the database again: what it cannot be
/// woken for (a job enqueued on another replica, a retry coming due, a cancel made on
/// another replica) reaches it within this.
const POLL: Duration = Duration::from_millis(250);
/// Expired leases the reaper rescues per statement.
pub(crate) const REAP_BATCH: i64 = 1000;

pub struct JobFilter {
    pub state: Option<State>,
    pub kind: Option<String>,
    pub queue: Option<String>,
    pub limit: u32,
    pub after: Option<Uuid>,
}

pub struct JobPage {
    pub jobs: Vec<Job>,
    pub next_cursor: Option<String>,
}

/// What a lease asks for.
pub struct LeaseRequest {
    pub worker_id: String,
    pub kinds: Vec<String>,
    pub queues: Vec<String>,
    pub max_jobs: u32,
    pub lease: Duration,
    pub wait: Duration,
}

pub struct Heartbeat {
    pub id: Uuid,
    pub attempt: u32,
    pub lease: Duration,
    pub progress: Option<f64>,
    pub message: String,
    pub wait: Duration,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Counts {
    pub by_state: [u64; 6],
}

impl Counts {
    pub fn get(&self, state: State) -> u64 {
        self.by_state[State::ALL.iter().position(|s| *s == state).unwrap_or(0)]
    }
    fn add(&mut self, state: State, n: u64) {
        if let Some(i) = State::ALL.iter().position(|s| *s == state) {
            self.by_state[i] += n;
        }
    }
    fn total(&self) -> u64 {
        self.by_state.iter().sum()
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    pub total: u64,
    pub counts: Counts,
    /// (kind, counts, mean seconds of completed attempts)
    pub by_kind: Vec<(String, Counts, f64)>,
    pub by_queue: Vec<(String, Counts)>,
    pub oldest_pending_at: Option<DateTime<Utc>>,
    pub active_workers: u32,
}

/// A worker's report that attempt `attempt` of job `id` succeeded.
pub struct Completion {
    pub id: Uuid,
    pub attempt: u32,
    pub result: Map<String, Value>,
}

/// A single enqueue waiting for the transaction it will share.
type Waiting = (NewJob, oneshot::Sender<Result<Job>>);

/// Leases one enqueue wakes at most.
const WAKE_AT_MOST: usize = 64;

/// Single enqueues one shared transaction takes at most.
const ENQUEUE_TOGETHER: usize = 256;

pub struct JobStore {
    pub(crate) db: Database,
    pub(crate) outbox: Outbox,
    /// Single enqueues, for [`enqueue_together`].
    singles: mpsc::UnboundedSender<Waiting>,
    /// Woken when a job becomes ready on this replica: waiting leases look at once.
    pub(crate) ready: Notify,
    /// Woken when a running job is cancelled on this replica: waiting heartbeats answer at once.
    cancelled: Notify,
}

impl JobStore {
    pub fn new(db: Database, outbox: Outbox) -> Arc<Self> {
        let (singles, waiting) = mpsc::unbounded_channel();
        let store = Arc::new(Self { db, outbox, singles, ready: Notify::new(), cancelled: Notify::new() });
        // ends when the store is dropped (its sender with it)
        tokio::spawn(enqueue_together(Arc::downgrade(&store), waiting));
        store
    }

    /// Enqueues one job. Single enqueues that arrive while the previous ones commit share
    /// the next transaction: at a steady rate each call would otherwise wait for a commit
    /// (an fsync on PostgreSQL) of its own; when calls are rare nothing waits.
    pub async fn enqueue_one(&self, new: NewJob) -> Result<Job> {
        let stopping = || Error::unavailable("the jobs service is stopping");
        let (answer, answered) = oneshot::channel();
        self.singles.send((new, answer)).map_err(|_| stopping())?;
        answered.await.map_err(|_| stopping())?
    }

    /// Enqueues the jobs in one transaction, all or none, and returns them in the order
    /// given. A job whose idempotency key was seen before (in an earlier call or earlier
    /// in this one) is not enqueued again: the job enqueued then takes its place.
    pub async fn enqueue(&self, all: Vec<NewJob>) -> Result<Vec<Job>> {
        let now = now();
        let mut tx = self.outbox.begin().await?;
        let jobs = insert_jobs(&mut tx, all.into_iter().map(|new| new_job(new, now)).collect()).await?;
        self.outbox.commit(tx).await?;
        self.wake_leases(jobs.len());
        Ok(jobs)
    }

    /// Wakes one waiting lease per job made ready, not every lease: leases woken together
    /// race for the same rows, and the losers are still in their (empty) transactions
    /// when the next job arrives, which then waits for one of them to come back.
    fn wake_leases(&self, jobs: usize) {
        for _ in 0..jobs.min(WAKE_AT_MOST) {
            self.ready.notify_one();
        }
    }

    pub async fn get(&self, id: Uuid) -> Result<Job> {
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = $1");
        let row = sqlx::query(&sql).bind(id.to_string()).fetch_optional(&self.db.pool).await.map_err(db_error)?;
        row.map(|row| job_from_row(&row)).transpose()?.ok_or_else(|| Error::not_found("job", id))
    }

    /// Newest first.
    pub async fn list(&self, filter: &JobFilter) -> Result<JobPage> {
        let mut sql = format!("SELECT {COLUMNS} FROM jobs WHERE 1 = 1");
        let mut args = Vec::new();
        for (column, value) in [
            ("state", filter.state.map(|s| s.as_str().to_owned())),
            ("kind", filter.kind.clone()),
            ("queue", filter.queue.clone()),
        ] {
            if let Some(value) = value {
                args.push(value);
                sql.push_str(&format!(" AND {column} = ${}", args.len()));
            }
        }
        let (jobs, next_cursor) =
            db::newest_first(&self.db.pool, sql, args, filter.after, filter.limit, job_from_row, |j| j.id).await?;
        Ok(JobPage { jobs, next_cursor })
    }

    /// Leases up to `max_jobs` ready jobs of the given kinds, waiting up to `wait` for one.
    pub async fn lease(&self, request: &LeaseRequest) -> Result<Vec<Job>> {
        let deadline = Instant::now() + request.wait;
        loop {
            // Not enabled: a wake goes to a lease that is waiting, not to one still looking.
            // An enqueue between this look and the wait leaves a permit (or reaches this
            // future by `notify_waiters`), so it is not missed.
            let ready = self.ready.notified();
            let jobs = self.lease_now(request).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !jobs.is_empty() || left.is_zero() {
                return Ok(jobs);
            }
            tokio::select! {
                _ = ready => {}
                _ = tokio::time::sleep(left.min(POLL)) => {}
            }
        }
    }

    async fn lease_now(&self, request: &LeaseRequest) -> Result<Vec<Job>> {
        let now = now();
        let expires = now + chrono::Duration::from_std(request.lease).unwrap_or_default();
        // $1..$3 are the worker, the expiry and now; the kinds and queues follow
        let mut next = 3;
        let mut placeholders = |n: usize| {
            let list: Vec<String> = (1..=n).map(|i| format!("${}", next + i)).collect();
            next += n;
            list.join(", ")
        };
        let kinds = placeholders(request.kinds.len());
        let queues = (!request.queues.is_empty()).then(|| placeholders(request.queues.len()));
        let queue_filter = queues.map(|q| format!(" AND queue IN ({q})")).unwrap_or_default();
        let lock = match self.db.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE jobs SET state = 'running', attempt = attempt + 1, worker_id = $1, lease_expires_at = $2, \
             started_at = $3, updated_at = $3, progress = 0, progress_message = '' \
             WHERE id IN (SELECT id FROM jobs WHERE state IN ('pending', 'failed') AND run_at <= $3 \
             AND kind IN ({kinds}){queue_filter} ORDER BY priority DESC, id LIMIT {}{lock}) \
             RETURNING {COLUMNS}",
            request.max_jobs
        );
        let mut query = sqlx::query(&sql).bind(&request.worker_id).bind(micros(expires)).bind(micros(now));
        for value in request.kinds.iter().chain(&request.queues) {
            query = query.bind(value);
        }
        let mut tx = match self.db.backend {
            // Walk `jobs_ready` in its order and stop at the batch. Left to itself, with
            // statistics older than a burst of enqueues (autoanalyze runs up to a minute
            // later), the planner reads and sorts every waiting job on each lease: 100k
            // waiting jobs made a lease cost 50-200 ms.
            Backend::Postgres => self.outbox.begin_with("BEGIN; SET LOCAL enable_sort = off").await?,
            Backend::Sqlite => self.outbox.begin().await?,
        };
        let rows = query.fetch_all(&mut *tx).await.map_err(db_error)?;
        if rows.is_empty() {
            drop(tx);
            return Ok(Vec::new());
        }
        let mut jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
        jobs.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
        let events = jobs.iter().map(|job| {
            json!({
                "id": job.id, "kind": job.kind, "queue": job.queue, "attempt": job.attempt, "worker": request.worker_id,
            })
        });
        outbox::enqueue_all(&mut tx, subjects::JOB_STARTED, SERVICE, events.collect::<Vec<_>>()).await?;
        self.outbox.commit(tx).await?;
        Ok(jobs)
    }

    /// Extends the lease of attempt `attempt` when the call answers: after `wait`, or at
    /// once when the job is cancelled. Returns the new expiry and whether to stop.
    pub async fn heartbeat(&self, beat: &Heartbeat) -> Result<(DateTime<Utc>, bool)> {
        let deadline = Instant::now() + beat.wait;
        loop {
            let cancelled = self.cancelled.notified();
            let (state, attempt, cancel) = self.lease_state(beat.id).await?;
            if state != State::Running || attempt != beat.attempt {
                return Err(lease_lost(beat.id, beat.attempt, Some((state, attempt))));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if cancel || left.is_zero() {
                break;
            }
            tokio::select! {
                _ = cancelled => {}
                _ = tokio::time::sleep(left.min(POLL)) => {}
            }
        }
        let now = now();
        let expires = now + chrono::Duration::from_std(beat.lease).unwrap_or_default();
        let row = sqlx::query(
            "UPDATE jobs SET lease_expires_at = $1, updated_at = $2, progress = COALESCE($3, progress), \
             progress_message = $4 WHERE id = $5 AND attempt = $6 AND state = 'running' RETURNING cancel_requested",
        )
        .bind(micros(expires))
        .bind(micros(now))
        .bind(beat.progress)
        .bind(clip_error(&beat.message))
        .bind(beat.id.to_string())
        .bind(i64::from(beat.attempt))
        .fetch_optional(&self.db.pool)
        .await
        .map_err(db_error)?;
        match row {
            Some(row) => Ok((expires, row.try_get::<i64, _>("cancel_requested").map_err(db_error)? != 0)),
            None => Err(self.refusal(beat.id, beat.attempt).await),
        }
    }

    async fn lease_state(&self, id: Uuid) -> Result<(State, u32, bool)> {
        let row = sqlx::query("SELECT state, attempt, cancel_requested FROM jobs WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.db.pool)
            .await
            .map_err(db_error)?
            .ok_or_else(|| Error::not_found("job", id))?;
        let state = State::parse(&text(&row, "state")?).map_err(|_| corrupt(id, "state"))?;
        Ok((state, int(&row, "attempt")? as u32, int(&row, "cancel_requested")? != 0))
    }

    /// Why a write guarded by (id, attempt, running) matched nothing.
    async fn refusal(&self, id: Uuid, attempt: u32) -> Error {
        match self.lease_state(id).await {
            Ok((state, current, _)) => lease_lost(id, attempt, Some((state, current))),
            Err(error) => error,
        }
    }

    pub async fn complete(&self, id: Uuid, attempt: u32, result: Map<String, Value>) -> Result<Job> {
        let mut outcomes = self.complete_all(vec![Completion { id, attempt, result }]).await?;
        outcomes.pop().expect("one outcome per completion")
    }

    /// Completes many attempts in one transaction (one commit for a worker's batch);
    /// each is guarded on its own, so a stale one is refused without failing the rest.
    /// The outcomes come in the order given. A chunk of completions is one UPDATE joined
    /// to its rows (a statement per job made a worker's batch cost a round trip each:
    /// under a burn-down, most of the service's time).
    pub async fn complete_all(&self, completions: Vec<Completion>) -> Result<Vec<Result<Job>>> {
        /// bound values per completion
        const VALUES: usize = 4;
        let now = micros(now());
        let mut tx = self.outbox.begin().await?;
        let mut done = Vec::with_capacity(completions.len());
        for chunk in completions.chunks(outbox::ROWS_PER_INSERT) {
            // a CTE names the columns of VALUES on both backends (SQLite has no `AS c(..)`)
            let sql = format!(
                "WITH done (done_id, done_attempt, done_result, done_at) AS (VALUES {}) \
                 UPDATE jobs SET state = 'completed', result = done_result, finished_at = done_at, \
                 updated_at = done_at, lease_expires_at = NULL, progress = 1 FROM done \
                 WHERE id = done_id AND attempt = done_attempt AND state = 'running' RETURNING {COLUMNS}",
                db::value_rows(self.db.backend, chunk.len(), VALUES)
            );
            let mut query = sqlx::query(&sql);
            for completion in chunk {
                query = query
                    .bind(completion.id.to_string())
                    .bind(i64::from(completion.attempt))
                    .bind(Value::Object(completion.result.clone()).to_string())
                    .bind(now);
            }
            for row in query.fetch_all(&mut *tx).await.map_err(db_error)? {
                done.push(job_from_row(&row)?);
            }
        }
        let now = from_micros(now);
        let events = done.iter().map(|job| {
            let duration_ms = job.started_at.map(|s| (now - s).num_milliseconds()).unwrap_or(0);
            json!({
                "id": job.id, "kind": job.kind, "queue": job.queue, "attempt": job.attempt, "duration_ms": duration_ms,
            })
        });
        outbox::enqueue_all(&mut tx, subjects::JOB_COMPLETED, SERVICE, events.collect::<Vec<_>>()).await?;
        self.outbox.commit(tx).await?;
        let mut done: std::collections::HashMap<Uuid, Job> = done.into_iter().map(|job| (job.id, job)).collect();
        let mut outcomes = Vec::with_capacity(completions.len());
        for completion in &completions {
            // the attempt that completed is answered once; a second mention of it (and
            // any other attempt of the job) is refused as stale
            let outcome = match done.get(&completion.id) {
                Some(job) if job.attempt == completion.attempt => done.remove(&completion.id),
                _ => None,
            };
            outcomes.push(match outcome {
                Some(job) => Ok(job),
                None => Err(self.refusal(completion.id, completion.attempt).await),
            });
        }
        Ok(outcomes)
    }

    /// The attempt failed: retried after the backoff, dead once out of attempts (or at
    /// once when `permanent`), cancelled when a cancel was asked for while it ran.
    pub async fn fail(&self, id: Uuid, attempt: u32, error: &str, permanent: bool) -> Result<Job> {
        let job = self.get(id).await?;
        if job.state != State::Running || job.attempt != attempt {
            return Err(lease_lost(id, attempt, Some((job.state, job.attempt))));
        }
        let now = now();
        let retries = job.retries + 1;
        let (state, run_at, finished_at) = if job.cancel_requested {
            (State::Cancelled, job.run_at, Some(now))
        } else if permanent || retries >= job.max_attempts {
            (State::Dead, job.run_at, Some(now))
        } else {
            let wait = chrono::Duration::from_std(backoff(retries)).unwrap_or_default();
            (State::Failed, from_micros(micros(now + wait)), None)
        };
        let mut tx = self.outbox.begin().await?;
        let sql = format!(
            "UPDATE jobs SET state = $1, retries = $2, last_error = $3, run_at = $4, finished_at = $5, updated_at = $6, \
             lease_expires_at = NULL WHERE id = $7 AND attempt = $8 AND state = 'running' RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(state.as_str())
            .bind(i64::from(retries))
            .bind(clip_error(error))
            .bind(micros(run_at))
            .bind(finished_at.map(micros))
            .bind(micros(now))
            .bind(id.to_string())
            .bind(i64::from(attempt))
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        let Some(row) = row else {
            drop(tx);
            return Err(self.refusal(id, attempt).await);
        };
        let job = job_from_row(&row)?;
        enqueue_ended(&mut tx, &job, "cancelled while running").await?;
        self.outbox.commit(tx).await?;
        Ok(job)
    }

    /// A waiting job is cancelled now; a running one is flagged, its worker told on its
    /// heartbeat, and cancelled when the worker stops (or its lease lapses).
    pub async fn cancel(&self, id: Uuid, reason: &str) -> Result<Job> {
        let now = micros(now());
        let mut tx = self.outbox.begin().await?;
        let sql = format!(
            "UPDATE jobs SET state = 'cancelled', finished_at = $1, updated_at = $1, last_error = $2 \
             WHERE id = $3 AND state IN ('pending', 'failed') RETURNING {COLUMNS}"
        );
        let row =
            sqlx::query(&sql).bind(now).bind(clip_error(reason)).bind(id.to_string()).fetch_optional(&mut *tx).await;
        if let Some(row) = row.map_err(db_error)? {
            let job = job_from_row(&row)?;
            enqueue_ended(&mut tx, &job, reason).await?;
            self.outbox.commit(tx).await?;
            return Ok(job);
        }
        let sql = format!(
            "UPDATE jobs SET cancel_requested = 1, updated_at = $1 WHERE id = $2 AND state = 'running' RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql).bind(now).bind(id.to_string()).fetch_optional(&mut *tx).await;
        if let Some(row) = row.map_err(db_error)? {
            let job = job_from_row(&row)?;
            self.outbox.commit(tx).await?;
            self.cancelled.notify_waiters();
            return Ok(job);
        }
        drop(tx);
        let job = self.get(id).await?;
        match job.state {
            State::Cancelled => Ok(job),
            state => Err(Error::failed_precondition(
                "not_cancellable",
                format!("job {id} is {} and can no longer be cancelled", state.as_str()),
            )),
        }
    }

    /// Puts a failed, dead or cancelled job back in its queue, to run now.
    pub async fn retry(&self, id: Uuid, reset_retries: bool) -> Result<Job> {
        let now = micros(now());
        let mut tx = self.outbox.begin().await?;
        let sql = format!(
            "UPDATE jobs SET state = 'pending', run_at = $1, updated_at = $1, finished_at = NULL, cancel_requested = 0, \
             retries = CASE WHEN $2 = 1 THEN 0 ELSE retries END \
             WHERE id = $3 AND state IN ('failed', 'dead', 'cancelled') RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(now)
            .bind(i64::from(reset_retries))
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        let Some(row) = row else {
            drop(tx);
            let job = self.get(id).await?;
            return Err(Error::failed_precondition(
                "not_retryable",
                format!("job {id} is {}: only failed, dead and cancelled jobs can be retried", job.state.as_str()),
            ));
        };
        let job = job_from_row(&row)?;
        let payload = json!({"id": job.id, "kind": job.kind, "queue": job.queue, "retries": job.retries});
        outbox::enqueue(&mut tx, subjects::JOB_RETRIED, SERVICE, payload).await?;
        self.outbox.commit(tx).await?;
        self.ready.notify_waiters();
        Ok(job)
    }

    /// Deletes finished jobs in `states`, finished before `before` when given.
    pub async fn purge(&self, states: &[State], before: Option<DateTime<Utc>>, kind: Option<&str>) -> Result<u64> {
        let list: Vec<String> = (1..=states.len()).map(|i| format!("${i}")).collect();
        let mut sql = format!("DELETE FROM jobs WHERE state IN ({})", list.join(", "));
        let mut next = states.len();
        if kind.is_some() {
            next += 1;
            sql.push_str(&format!(" AND kind = ${next}"));
        }
        if before.is_some() {
            next += 1;
            sql.push_str(&format!(" AND finished_at < ${next}"));
        }
        let mut query = sqlx::query(&sql);
        for state in states {
            query = query.bind(state.as_str());
        }
        if let Some(kind) = kind {
            query = query.bind(kind);
        }
        if let Some(before) = before {
            query = query.bind(micros(before));
        }
        let done = query.execute(&self.db.pool).await.map_err(db_error)?;
        Ok(done.rows_affected())
    }

    /// Counts by queue, kind and state, all from one snapshot of the table.
    pub async fn stats(&self, queue: Option<&str>) -> Result<Stats> {
        let mut tx = self.db.pool.begin().await.map_err(db_error)?;
        if self.db.backend == Backend::Postgres {
            // both statements below see the same snapshot (SQLite's read transaction already does)
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await.map_err(db_error)?;
        }
        let filter = if queue.is_some() { " WHERE queue = $1" } else { "" };
        let sql = format!(
            "SELECT queue, kind, state, COUNT(*) AS n, \
             CAST(SUM(CASE WHEN state = 'completed' AND started_at IS NOT NULL THEN finished_at - started_at ELSE 0 END) AS BIGINT) AS busy, \
             MIN(created_at) AS oldest FROM jobs{filter} GROUP BY queue, kind, state"
        );
        let mut query = sqlx::query(&sql);
        if let Some(queue) = queue {
            query = query.bind(queue);
        }
        let rows = query.fetch_all(&mut *tx).await.map_err(db_error)?;
        let sql = format!(
            "SELECT COUNT(DISTINCT worker_id) AS workers FROM jobs WHERE state = 'running'{}",
            if queue.is_some() { " AND queue = $1" } else { "" }
        );
        let mut query = sqlx::query(&sql);
        if let Some(queue) = queue {
            query = query.bind(queue);
        }
        let workers: i64 = query.fetch_one(&mut *tx).await.and_then(|r| r.try_get("workers")).map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;

        let mut stats = Stats { active_workers: workers as u32, ..Stats::default() };
        let mut kinds: std::collections::BTreeMap<String, (Counts, i64)> = Default::default();
        let mut queues: std::collections::BTreeMap<String, Counts> = Default::default();
        for row in &rows {
            let state = State::parse(&text(row, "state")?)?;
            let n = int(row, "n")? as u64;
            let busy: Option<i64> = row.try_get("busy").map_err(db_error)?;
            stats.counts.add(state, n);
            let kind = kinds.entry(text(row, "kind")?).or_default();
            kind.0.add(state, n);
            kind.1 += busy.unwrap_or(0);
            queues.entry(text(row, "queue")?).or_default().add(state, n);
            if state == State::Pending {
                let oldest = from_micros(int(row, "oldest")?);
                stats.oldest_pending_at = Some(stats.oldest_pending_at.map_or(oldest, |o| o.min(oldest)));
            }
        }
        stats.total = stats.counts.total();
        stats.by_kind = kinds
            .into_iter()
            .map(|(kind, (counts, busy))| {
                let completed = counts.get(State::Completed);
                let mean = if completed > 0 { busy as f64 / 1e6 / completed as f64 } else { 0.0 };
                (kind, counts, mean)
            })
            .collect();
        stats.by_queue = queues.into_iter().collect();
        Ok(stats)
    }

    /// Rescues jobs whose lease lapsed (their worker crashed, was killed or cut off):
    /// each goes back to its queue at once, counting a failed attempt, or to the
    /// dead-letter queue when that was its last one. Returns how many it rescued.
    pub async fn reap(&self) -> Result<usize> {
        let now = micros(now());
        let lock = match self.db.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE jobs SET \
             state = CASE WHEN cancel_requested = 1 THEN 'cancelled' WHEN retries + 1 >= max_attempts THEN 'dead' ELSE 'pending' END, \
             finished_at = CASE WHEN cancel_requested = 1 OR retries + 1 >= max_attempts THEN $1 ELSE NULL END, \
             retries = retries + 1, run_at = $1, updated_at = $1, lease_expires_at = NULL, \
             last_error = 'the lease of attempt ' || CAST(attempt AS TEXT) || ' (worker ' || COALESCE(worker_id, '') || ') lapsed' \
             WHERE state = 'running' AND lease_expires_at < $1 AND id IN (SELECT id FROM jobs WHERE state = 'running' \
             AND lease_expires_at < $1 ORDER BY lease_expires_at LIMIT {REAP_BATCH}{lock}) RETURNING {COLUMNS}"
        );
        let mut tx = self.outbox.begin().await?;
        let rows = sqlx::query(&sql).bind(now).fetch_all(&mut *tx).await.map_err(db_error)?;
        if rows.is_empty() {
            drop(tx);
            return Ok(0);
        }
        for row in &rows {
            let job = job_from_row(row)?;
            tracing::info!(job = %job.id, kind = %job.kind, state = job.state.as_str(), "rescued a job whose lease lapsed");
            enqueue_ended(&mut tx, &job, "cancelled while running").await?;
        }
        self.outbox.commit(tx).await?;
        self.ready.notify_waiters();
        Ok(rows.len())
    }
}

/// Inserts the job with its `enqueued` event; when its idempotency key was taken,
/// returns the job that took it instead.
/// Takes the single enqueues waiting, enqueues them in one transaction, answers each.
async fn enqueue_together(store: Weak<JobStore>, mut waiting: mpsc::UnboundedReceiver<Waiting>) {
    let mut batch = Vec::with_capacity(ENQUEUE_TOGETHER);
    while waiting.recv_many(&mut batch, ENQUEUE_TOGETHER).await > 0 {
        let Some(store) = store.upgrade() else { return };
        let (jobs, answers): (Vec<NewJob>, Vec<_>) = batch.drain(..).unzip();
        match store.enqueue(jobs).await {
            Ok(jobs) => {
                for (answer, job) in answers.into_iter().zip(jobs) {
                    let _ = answer.send(Ok(job));
                }
            }
            Err(error) => {
                for answer in answers {
                    let _ = answer.send(Err(error.clone()));
                }
            }
        }
    }
}

pub(crate) async fn insert_job(tx: &mut Transaction<'static, Any>, job: Job) -> Result<Job> {
    insert_jobs(tx, vec![job]).await?.pop().ok_or_else(|| Error::internal("a job was inserted without an answer"))
}

/// Inserts the jobs with their `enqueued` events, in few statements (a batch is one
/// multi-row INSERT, one for the events: a statement per job made a batch of single
/// enqueues cost a round trip each, so under load batches grew and every job in them
/// waited); a job whose idempotency key was taken is answered by the job that took it.
pub(crate) async fn insert_jobs(tx: &mut Transaction<'static, Any>, jobs: Vec<Job>) -> Result<Vec<Job>> {
    /// bound values per row
    const VALUES: usize = 12;
    let backend = Backend::of(tx);
    let mut inserted = std::collections::HashSet::new();
    for chunk in jobs.chunks(outbox::ROWS_PER_INSERT) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|row| {
                let p = |i: usize| match backend {
                    Backend::Sqlite => "?".to_owned(),
                    Backend::Postgres => format!("${}", row * VALUES + i + 1),
                };
                format!(
                    "({}, {}, {}, {}, 'pending', {}, 0, {}, 0, '', NULL, {}, {}, {}, NULL, NULL, 0, 0, '', {}, {}, {}, NULL, NULL)",
                    p(0), p(1), p(2), p(3), p(4), p(5), p(6), p(7), p(8), p(9), p(10), p(11)
                )
            })
            .collect();
        let sql =
            format!("INSERT INTO jobs ({COLUMNS}) VALUES {} ON CONFLICT DO NOTHING RETURNING id", rows.join(", "));
        let mut query = sqlx::query(&sql);
        for job in chunk {
            query = query
                .bind(job.id.to_string())
                .bind(job.kind.clone())
                .bind(job.queue.clone())
                .bind(Value::Object(job.payload.clone()).to_string())
                .bind(i64::from(job.priority))
                .bind(i64::from(job.max_attempts))
                .bind(i64::from(job.timeout_secs))
                .bind(job.idempotency_key.clone())
                .bind(job.schedule_id.map(|id| id.to_string()))
                .bind(micros(job.run_at))
                .bind(micros(job.created_at))
                .bind(micros(job.updated_at));
        }
        for row in query.fetch_all(&mut **tx).await.map_err(db_error)? {
            inserted.insert(text(&row, "id")?);
        }
    }
    // only idempotency keys can conflict: ids are fresh UUIDv7s
    let taken: Vec<String> = jobs
        .iter()
        .filter(|job| !inserted.contains(&job.id.to_string()))
        .filter_map(|job| job.idempotency_key.clone())
        .collect();
    let mut holders = std::collections::HashMap::new();
    for chunk in taken.chunks(outbox::ROWS_PER_INSERT) {
        let sql = format!(
            "SELECT {COLUMNS} FROM jobs WHERE idempotency_key IN ({})",
            db::parameters(backend, 0, chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for key in chunk {
            query = query.bind(key.clone());
        }
        for row in query.fetch_all(&mut **tx).await.map_err(db_error)? {
            let job = job_from_row(&row)?;
            holders.insert(job.idempotency_key.clone().unwrap_or_default(), job);
        }
    }
    let events: Vec<Value> = jobs
        .iter()
        .filter(|job| inserted.contains(&job.id.to_string()))
        .map(|job| {
            json!({"id": job.id, "kind": job.kind, "queue": job.queue, "priority": job.priority, "run_at": job.run_at})
        })
        .collect();
    outbox::enqueue_all(tx, subjects::JOB_ENQUEUED, SERVICE, events).await?;
    jobs.into_iter()
        .map(|job| {
            if inserted.contains(&job.id.to_string()) {
                return Ok(job);
            }
            let key = job.idempotency_key.as_deref().unwrap_or_default();
            holders
                .get(key)
                .cloned()
                .ok_or_else(|| Error::internal(format!("job {} was neither inserted nor found", job.id)))
        })
        .collect()
}

pub(crate) fn new_job(new: NewJob, now: DateTime<Utc>) -> Job {
    Job {
        id: Uuid::now_v7(),
        kind: new.kind,
        queue: new.queue,
        payload: new.payload,
        state: State::Pending,
        priority: new.priority,
        retries: 0,
        max_attempts: new.max_attempts,
        attempt: 0,
        last_error: String::new(),
        result: None,
        timeout_secs: new.timeout_secs,
        idempotency_key: new.idempotency_key,
        schedule_id: new.schedule_id,
        worker_id: None,
        lease_expires_at: None,
        cancel_requested: false,
        progress: 0.0,
        progress_message: String::new(),
        run_at: new.run_at.map(|t| from_micros(micros(t))).unwrap_or(now),
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: None,
    }
}

/// The event of a job's failed attempt, after [`JobStore::fail`] or the reaper decided
/// what comes next.
async fn enqueue_ended(tx: &mut Transaction<'static, Any>, job: &Job, cancel_reason: &str) -> Result<()> {
    let (subject, payload) = match job.state {
        State::Cancelled => (
            subjects::JOB_CANCELLED,
            json!({"id": job.id, "kind": job.kind, "queue": job.queue, "reason": cancel_reason}),
        ),
        State::Dead => (
            subjects::JOB_DEAD_LETTERED,
            json!({"id": job.id, "kind": job.kind, "queue": job.queue, "attempt": job.attempt,
                   "retries": job.retries, "error": job.last_error}),
        ),
        _ => (
            subjects::JOB_FAILED,
            json!({"id": job.id, "kind": job.kind, "queue": job.queue, "attempt": job.attempt,
                   "retries": job.retries, "error": job.last_error, "retry_at": job.run_at}),
        ),
    };
    outbox::enqueue(tx, subject, SERVICE, payload).await
}

pub(crate) fn text(row: &AnyRow, column: &str) -> Result<String> {
    row.try_get(column).map_err(db_error)
}

pub(crate) fn int(row: &AnyRow, column: &str) -> Result<i64> {
    row.try_get(column).map_err(db_error)
}

pub(crate) fn corrupt(id: impl std::fmt::Display, what: &str) -> Error {
    Error::internal(format!("stored job {id} has a corrupt {what}"))
}

pub(crate) fn job_from_row(row: &AnyRow) -> Result<Job> {
    let id = text(row, "id")?;
    let time = |column: &str| -> Result<Option<DateTime<Utc>>> {
        Ok(row.try_get::<Option<i64>, _>(column).map_err(db_error)?.map(from_micros))
    };
    let object = |text: &str, what: &str| match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(corrupt(&id, what)),
    };
    let result: Option<String> = row.try_get("result").map_err(db_error)?;
    let schedule: Option<String> = row.try_get("schedule_id").map_err(db_error)?;
    Ok(Job {
        id: Uuid::try_parse(&id).map_err(|_| corrupt(&id, "id"))?,
        kind: text(row, "kind")?,
        queue: text(row, "queue")?,
        payload: object(&text(row, "payload")?, "payload")?,
        state: State::parse(&text(row, "state")?).map_err(|_| corrupt(&id, "state"))?,
        priority: int(row, "priority")? as i32,
        retries: int(row, "retries")? as u32,
        max_attempts: int(row, "max_attempts")? as u32,
        attempt: int(row, "attempt")? as u32,
        last_error: text(row, "last_error")?,
        result: result.map(|r| object(&r, "result")).transpose()?,
        timeout_secs: int(row, "timeout_secs")? as u32,
        idempotency_key: row.try_get("idempotency_key").map_err(db_error)?,
        schedule_id: schedule.map(|s| Uuid::try_parse(&s).map_err(|_| corrupt(&id, "schedule_id"))).transpose()?,
        worker_id: row.try_get("worker_id").map_err(db_error)?,
        lease_expires_at: time("lease_expires_at")?,
        cancel_requested: int(row, "cancel_requested")? != 0,
        progress: row.try_get("progress").map_err(db_error)?,
        progress_message: text(row, "progress_message")?,
        run_at: from_micros(int(row, "run_at")?),
        created_at: from_micros(int(row, "created_at")?),
        updated_at: from_micros(int(row, "updated_at")?),
        started_at: time("started_at")?,
        finished_at: time("finished_at")?,
    })
}
