//! Schedules: a job enqueued on a cron expression or every N seconds.
//!
//! Every replica runs the ticker ([`JobStore::fire_due`] every second); a tick fires
//! once however many replicas see it, because firing is a conditional UPDATE of the
//! schedule's `next_run_at` from the value the replica read to the next tick: one
//! replica's UPDATE matches, the others' match nothing and they enqueue nothing. The
//! job is inserted in the same transaction, so a tick is never lost between the two.
//! Ticks missed while no replica ran (or a backlog) fire once, not once each, and a
//! tick enqueues nothing while the previous job waits to start (or, without overlap,
//! until it finished): a schedule never piles up jobs (`skip_reason`).

use std::str::FromStr;

use chrono::{DateTime, Utc};
use helix_core::{Error, Result};
use helix_events::subjects;
use helix_runtime::db::{self, db_error, from_micros, micros, now};
use helix_runtime::outbox;
use serde_json::{Map, Value, json};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

use crate::SERVICE;
use crate::job::{self, DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, Job, MAX_MAX_ATTEMPTS, NewJob, State, parse_object};
use crate::store::{JobStore, corrupt, insert_job, int, new_job, text};

pub const MAX_INTERVAL_SECS: u32 = 366 * 86_400;

#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub id: Uuid,
    pub name: String,
    /// empty when it fires every `interval_secs`
    pub cron: String,
    pub interval_secs: u32,
    pub timezone: String,
    pub kind: String,
    pub queue: String,
    pub payload: Map<String, Value>,
    pub priority: i32,
    pub max_attempts: u32,
    pub enabled: bool,
    pub allow_overlap: bool,
    pub next_run_at: DateTime<Utc>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_job_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Every {
    Cron(Box<cron::Schedule>),
    Interval(chrono::Duration),
}

impl Every {
    /// Exactly one of a cron expression (five fields, or six with seconds first) and an
    /// interval in seconds.
    pub fn parse(cron: &str, interval_secs: u32) -> Result<Self> {
        match (cron.trim(), interval_secs) {
            ("", 0) => Err(Error::invalid("invalid_schedule", "give a cron expression or interval_secs")),
            ("", secs) if secs > MAX_INTERVAL_SECS => {
                Err(Error::invalid("invalid_schedule", format!("interval_secs is at most {MAX_INTERVAL_SECS}")))
            }
            ("", secs) => Ok(Every::Interval(chrono::Duration::seconds(i64::from(secs)))),
            (_, 0) => parse_cron(cron).map(|c| Every::Cron(Box::new(c))),
            _ => Err(Error::invalid("invalid_schedule", "give a cron expression or interval_secs, not both")),
        }
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Every::Cron(cron) => cron.after(&t).next(),
            Every::Interval(every) => Some(t + *every),
        }
    }
}

fn parse_cron(text: &str) -> Result<cron::Schedule> {
    let fields = text.split_whitespace().count();
    // the crate wants seconds first; the usual five fields mean second 0
    let full = match fields {
        5 => format!("0 {text}"),
        6 => text.to_owned(),
        _ => {
            return Err(Error::invalid(
                "invalid_cron",
                format!("a cron expression has five fields (minute hour day month weekday) or six, not {fields}"),
            ));
        }
    };
    let schedule =
        cron::Schedule::from_str(&full).map_err(|e| Error::invalid("invalid_cron", format!("{text:?}: {e}")))?;
    if schedule.upcoming(Utc).next().is_none() {
        return Err(Error::invalid("invalid_cron", format!("{text:?} never fires")));
    }
    Ok(schedule)
}

/// Only UTC for now: time zones would need the tz database compiled in.
pub fn validate_timezone(timezone: &str) -> Result<String> {
    match timezone {
        "" | "UTC" | "Etc/UTC" => Ok("UTC".to_owned()),
        other => Err(Error::invalid("invalid_timezone", format!("only UTC schedules are supported, not {other:?}"))),
    }
}

pub fn validate_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().count() > 128 {
        return Err(Error::invalid("invalid_name", "name must be 1-128 characters"));
    }
    Ok(())
}

/// A schedule as asked for.
#[derive(Debug, Clone, Default)]
pub struct ScheduleDraft {
    pub name: String,
    pub cron: String,
    pub interval_secs: u32,
    pub timezone: String,
    pub kind: String,
    pub queue: String,
    pub payload: String,
    pub priority: i32,
    pub max_attempts: Option<u32>,
    pub enabled: Option<bool>,
    pub allow_overlap: bool,
}

impl ScheduleDraft {
    /// The schedule it describes, first firing after `now`.
    pub fn validate(self, now: DateTime<Utc>) -> Result<Schedule> {
        validate_name(&self.name)?;
        let every = Every::parse(&self.cron, self.interval_secs)?;
        job::validate_kind(&self.kind)?;
        let queue = if self.queue.is_empty() { DEFAULT_QUEUE.to_owned() } else { self.queue };
        job::validate_queue(&queue)?;
        let max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=MAX_MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(Error::invalid(
                "invalid_max_attempts",
                format!("max_attempts must be from 1 to {MAX_MAX_ATTEMPTS}"),
            ));
        }
        let next_run_at =
            every.next_after(now).ok_or_else(|| Error::invalid("invalid_cron", "the expression never fires again"))?;
        Ok(Schedule {
            id: Uuid::now_v7(),
            name: self.name,
            cron: self.cron.trim().to_owned(),
            interval_secs: if self.cron.trim().is_empty() { self.interval_secs } else { 0 },
            timezone: validate_timezone(&self.timezone)?,
            kind: self.kind,
            queue,
            payload: parse_object(&self.payload, "invalid_payload", "payload")?,
            priority: self.priority,
            max_attempts,
            enabled: self.enabled.unwrap_or(true),
            allow_overlap: self.allow_overlap,
            next_run_at,
            last_run_at: None,
            last_job_id: None,
            created_at: now,
            updated_at: now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_never_pile_up_jobs() {
        use State::*;
        // (allow_overlap, the previous job's state, fires?)
        let cases = [
            (false, None, true),
            (false, Some(Pending), false),
            (false, Some(Failed), false),
            (false, Some(Running), false),
            (false, Some(Completed), true),
            (false, Some(Dead), true),
            (false, Some(Cancelled), true),
            (true, None, true),
            (true, Some(Pending), false),
            (true, Some(Failed), false),
            (true, Some(Running), true),
            (true, Some(Completed), true),
            (true, Some(Dead), true),
        ];
        for (overlap, last, fires) in cases {
            assert_eq!(skip_reason(overlap, last).is_none(), fires, "overlap {overlap}, last {last:?}");
        }
    }

    #[test]
    fn cron_and_interval_ticks() {
        let t = DateTime::parse_from_rfc3339("2026-01-01T10:07:30Z").unwrap().with_timezone(&Utc);
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let cases = [
            ("*/15 * * * *", 0, Ok(at("2026-01-01T10:15:00Z"))),
            ("0 0 * * *", 0, Ok(at("2026-01-02T00:00:00Z"))),
            ("*/10 * * * * *", 0, Ok(at("2026-01-01T10:07:40Z"))),
            ("", 90, Ok(at("2026-01-01T10:09:00Z"))),
            ("", 0, Err("invalid_schedule")),
            ("* * * * *", 5, Err("invalid_schedule")),
            ("* * *", 0, Err("invalid_cron")),
            ("61 * * * *", 0, Err("invalid_cron")),
        ];
        for (cron, secs, expected) in cases {
            let next = Every::parse(cron, secs).map(|e| e.next_after(t).unwrap()).map_err(|e| e.code().to_owned());
            assert_eq!(next, expected.map_err(str::to_owned), "{cron:?} {secs}");
        }
    }
}

const SCHEDULE_COLUMNS: &str = "id, name, cron, interval_secs, timezone, kind, queue, payload, priority, max_attempts, \
     enabled, allow_overlap, next_run_at, last_run_at, last_job_id, created_at, updated_at";

/// Changes to a schedule; unset fields keep their values.
#[derive(Debug, Default)]
pub struct ScheduleChanges {
    pub name: Option<String>,
    pub cron: Option<String>,
    pub interval_secs: Option<u32>,
    pub timezone: Option<String>,
    pub payload: Option<String>,
    pub priority: Option<i32>,
    pub max_attempts: Option<u32>,
    pub enabled: Option<bool>,
    pub allow_overlap: Option<bool>,
}

impl JobStore {
    pub async fn create_schedule(&self, schedule: Schedule) -> Result<Schedule> {
        let sql = format!(
            "INSERT INTO schedules ({SCHEDULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
             NULL, NULL, $14, $14)"
        );
        let done = sqlx::query(&sql)
            .bind(schedule.id.to_string())
            .bind(&schedule.name)
            .bind(&schedule.cron)
            .bind(i64::from(schedule.interval_secs))
            .bind(&schedule.timezone)
            .bind(&schedule.kind)
            .bind(&schedule.queue)
            .bind(Value::Object(schedule.payload.clone()).to_string())
            .bind(i64::from(schedule.priority))
            .bind(i64::from(schedule.max_attempts))
            .bind(i64::from(schedule.enabled))
            .bind(i64::from(schedule.allow_overlap))
            .bind(micros(schedule.next_run_at))
            .bind(micros(schedule.created_at))
            .execute(&self.db.pool)
            .await;
        match done {
            Ok(_) => Ok(schedule),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(Error::conflict("schedule_exists", format!("a schedule named {:?} exists", schedule.name)))
            }
            Err(e) => Err(db_error(e)),
        }
    }

    pub async fn get_schedule(&self, id: Uuid) -> Result<Schedule> {
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1");
        let row = sqlx::query(&sql).bind(id.to_string()).fetch_optional(&self.db.pool).await.map_err(db_error)?;
        row.map(|row| schedule_from_row(&row)).transpose()?.ok_or_else(|| Error::not_found("schedule", id))
    }

    /// Newest first.
    pub async fn list_schedules(
        &self,
        enabled: Option<bool>,
        limit: u32,
        after: Option<Uuid>,
    ) -> Result<(Vec<Schedule>, Option<String>)> {
        let filter = match enabled {
            Some(true) => " AND enabled = 1",
            Some(false) => " AND enabled = 0",
            None => "",
        };
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE 1 = 1{filter}");
        db::newest_first(&self.db.pool, sql, Vec::new(), after, limit, schedule_from_row, |s| s.id).await
    }

    pub async fn delete_schedule(&self, id: Uuid) -> Result<()> {
        let done = sqlx::query("DELETE FROM schedules WHERE id = $1").bind(id.to_string()).execute(&self.db.pool).await;
        match done.map_err(db_error)?.rows_affected() {
            0 => Err(Error::not_found("schedule", id)),
            _ => Ok(()),
        }
    }

    /// Applies the changes; a new cron or interval starts counting from now.
    pub async fn update_schedule(&self, id: Uuid, changes: ScheduleChanges) -> Result<Schedule> {
        let mut s = self.get_schedule(id).await?;
        let now = now();
        if let Some(name) = changes.name {
            validate_name(&name)?;
            s.name = name;
        }
        let timing = changes.cron.is_some() || changes.interval_secs.is_some() || changes.enabled == Some(true);
        if let Some(cron) = changes.cron {
            s.cron = cron.trim().to_owned();
            s.interval_secs = changes.interval_secs.unwrap_or(0);
        } else if let Some(secs) = changes.interval_secs {
            s.interval_secs = secs;
            s.cron = String::new();
        }
        let every = Every::parse(&s.cron, s.interval_secs)?;
        if timing {
            s.next_run_at = every.next_after(now).ok_or_else(|| Error::invalid("invalid_cron", "never fires again"))?;
        }
        if let Some(timezone) = changes.timezone {
            s.timezone = validate_timezone(&timezone)?;
        }
        if let Some(payload) = changes.payload {
            s.payload = parse_object(&payload, "invalid_payload", "payload")?;
        }
        if let Some(priority) = changes.priority {
            s.priority = priority;
        }
        if let Some(max) = changes.max_attempts {
            if !(1..=MAX_MAX_ATTEMPTS).contains(&max) {
                return Err(Error::invalid(
                    "invalid_max_attempts",
                    format!("max_attempts must be from 1 to {MAX_MAX_ATTEMPTS}"),
                ));
            }
            s.max_attempts = max;
        }
        s.enabled = changes.enabled.unwrap_or(s.enabled);
        s.allow_overlap = changes.allow_overlap.unwrap_or(s.allow_overlap);
        s.updated_at = now;
        let done = sqlx::query(
            "UPDATE schedules SET name = $1, cron = $2, interval_secs = $3, timezone = $4, payload = $5, priority = $6, \
             max_attempts = $7, enabled = $8, allow_overlap = $9, next_run_at = $10, updated_at = $11 WHERE id = $12",
        )
        .bind(&s.name)
        .bind(&s.cron)
        .bind(i64::from(s.interval_secs))
        .bind(&s.timezone)
        .bind(Value::Object(s.payload.clone()).to_string())
        .bind(i64::from(s.priority))
        .bind(i64::from(s.max_attempts))
        .bind(i64::from(s.enabled))
        .bind(i64::from(s.allow_overlap))
        .bind(micros(s.next_run_at))
        .bind(micros(now))
        .bind(id.to_string())
        .execute(&self.db.pool)
        .await;
        match done {
            Ok(done) if done.rows_affected() == 0 => Err(Error::not_found("schedule", id)),
            Ok(_) => Ok(s),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(Error::conflict("schedule_exists", format!("a schedule named {:?} exists", s.name)))
            }
            Err(e) => Err(db_error(e)),
        }
    }

    /// Enqueues the schedule's job now, outside its ticks.
    pub async fn trigger_schedule(&self, id: Uuid) -> Result<Job> {
        let s = self.get_schedule(id).await?;
        let now = now();
        let mut tx = self.outbox.begin().await?;
        let job = self.fire(&mut tx, &s, now).await?;
        self.outbox.commit(tx).await?;
        self.ready.notify_waiters();
        Ok(job)
    }

    async fn fire(&self, tx: &mut Transaction<'static, Any>, s: &Schedule, now: DateTime<Utc>) -> Result<Job> {
        let new = NewJob {
            kind: s.kind.clone(),
            queue: s.queue.clone(),
            payload: s.payload.clone(),
            priority: s.priority,
            max_attempts: s.max_attempts,
            run_at: None,
            timeout_secs: job::DEFAULT_TIMEOUT_SECS,
            idempotency_key: None,
            schedule_id: Some(s.id),
        };
        let job = insert_job(tx, new_job(new, now)).await?;
        sqlx::query("UPDATE schedules SET last_job_id = $1, last_run_at = $2 WHERE id = $3")
            .bind(job.id.to_string())
            .bind(micros(now))
            .bind(s.id.to_string())
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
        let cron = if s.cron.is_empty() { format!("every {} s", s.interval_secs) } else { s.cron.clone() };
        let payload = json!({"schedule_id": s.id, "cron": cron, "job_id": job.id});
        outbox::enqueue(tx, subjects::JOB_SCHEDULE_FIRED, SERVICE, payload).await?;
        Ok(job)
    }

    /// Fires the schedules that are due; returns how many this replica fired. A tick is
    /// claimed by moving `next_run_at` on from the value read: a replica that read the
    /// same tick finds it moved and fires nothing.
    pub async fn fire_due(&self) -> Result<usize> {
        let now = now();
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE enabled = 1 AND next_run_at <= $1 ORDER BY next_run_at LIMIT 100"
        );
        let rows = sqlx::query(&sql).bind(micros(now)).fetch_all(&self.db.pool).await.map_err(db_error)?;
        let mut fired = 0;
        for row in &rows {
            let s = schedule_from_row(row)?;
            let next = Every::parse(&s.cron, s.interval_secs).ok().and_then(|every| every.next_after(now));
            let mut tx = self.outbox.begin().await?;
            // a schedule that can never fire again is switched off rather than spun on
            let claimed = sqlx::query(
                "UPDATE schedules SET next_run_at = $1, enabled = $2, updated_at = $3 WHERE id = $4 AND next_run_at = $5",
            )
            .bind(micros(next.unwrap_or(now)))
            .bind(i64::from(next.is_some()))
            .bind(micros(now))
            .bind(s.id.to_string())
            .bind(micros(s.next_run_at))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            if claimed.rows_affected() == 0 {
                continue;
            }
            let last = match s.last_job_id {
                Some(last) => {
                    let state = sqlx::query("SELECT state FROM jobs WHERE id = $1")
                        .bind(last.to_string())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db_error)?;
                    state.map(|row| State::parse(&text(&row, "state")?)).transpose()?
                }
                None => None,
            };
            if let Some(reason) = skip_reason(s.allow_overlap, last) {
                tracing::info!(schedule = %s.id, "skipping a tick: {reason}");
            } else {
                self.fire(&mut tx, &s, now).await?;
                fired += 1;
            }
            self.outbox.commit(tx).await?;
        }
        if fired > 0 {
            self.ready.notify_waiters();
        }
        Ok(fired)
    }
}

/// Why a tick enqueues nothing, from the state of the schedule's previous job (`None`:
/// none, or purged). A schedule never piles up jobs: without overlap a tick waits for
/// the previous run to finish (pending, running or waiting for a retry); with overlap
/// runs may run side by side, but a tick still skips while the previous job has not
/// started, since a second waiting copy of the same work is only a backlog (a once-a-
/// second schedule with no worker would otherwise queue a job a second).
fn skip_reason(allow_overlap: bool, last: Option<State>) -> Option<&'static str> {
    match (allow_overlap, last?) {
        (_, State::Pending | State::Failed) => Some("the previous job has not run yet"),
        (false, State::Running) => Some("the previous run is unfinished"),
        _ => None,
    }
}

fn schedule_from_row(row: &AnyRow) -> Result<Schedule> {
    let id = text(row, "id")?;
    let last_job: Option<String> = row.try_get("last_job_id").map_err(db_error)?;
    let last_run: Option<i64> = row.try_get("last_run_at").map_err(db_error)?;
    let payload = match serde_json::from_str(&text(row, "payload")?) {
        Ok(Value::Object(map)) => map,
        _ => return Err(corrupt(&id, "payload")),
    };
    Ok(Schedule {
        id: Uuid::try_parse(&id).map_err(|_| corrupt(&id, "id"))?,
        name: text(row, "name")?,
        cron: text(row, "cron")?,
        interval_secs: int(row, "interval_secs")? as u32,
        timezone: text(row, "timezone")?,
        kind: text(row, "kind")?,
        queue: text(row, "queue")?,
        payload,
        priority: int(row, "priority")? as i32,
        max_attempts: int(row, "max_attempts")? as u32,
        enabled: int(row, "enabled")? != 0,
        allow_overlap: int(row, "allow_overlap")? != 0,
        next_run_at: from_micros(int(row, "next_run_at")?),
        last_run_at: last_run.map(from_micros),
        last_job_id: last_job.map(|j| Uuid::try_parse(&j).map_err(|_| corrupt(&id, "last_job_id"))).transpose()?,
        created_at: from_micros(int(row, "created_at")?),
        updated_at: from_micros(int(row, "updated_at")?),
    })
}
