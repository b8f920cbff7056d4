//! Free-standing scheduler tasks (`/api/v1/scheduler/tasks`): one shared graph that
//! workers drive by hand — add, take a ready task (run), complete or fail it.
//!
//! Every transition is one UPDATE whose WHERE states the rule (run: pending with every
//! dependency completed; complete: running, or ready; fail: running or pending), so of
//! two callers racing on one task exactly one changes it and the other gets a 409.
//! Graph changes and transitions also take one graph lock per transaction (an advisory
//! lock on PostgreSQL; SQLite's single writer, held from each transaction's first
//! statement, which is always a write): a cycle check sees every committed edge, and
//! two dependencies completed together cannot both miss their dependant's `newly_ready`.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use helix_core::{Error, ErrorKind, Result};
use helix_runtime::db::{Backend, db_error, from_micros, micros, now};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::scheduler::{self, TaskSpec};
use crate::store::Store;

/// The advisory lock key of the task graph on PostgreSQL.
const GRAPH_LOCK: i64 = 0x6865_6c69_7874_6b73;

/// A task is blocked while one of its dependencies is not completed.
const BLOCKED: &str = "EXISTS (SELECT 1 FROM scheduler_task_dependencies d JOIN scheduler_tasks u \
     ON u.task_id = d.depends_on WHERE d.task_id = scheduler_tasks.task_id AND u.state <> 'completed')";

const COLUMNS: &str = "task_id, spec, state, worker, output, error, attempts, created_at, started_at, finished_at";

#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub spec: TaskSpec,
    /// pending, ready, running, completed, failed, cancelled
    pub state: String,
    pub dependents: Vec<String>,
    pub worker: String,
    pub output: Option<Value>,
    pub error: String,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
pub struct TaskStats {
    pub total: u64,
    pub pending: u64,
    pub ready: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub waves: u32,
    pub workflows: u64,
    pub active_executions: u64,
}

fn task_from_row(row: &AnyRow) -> Result<TaskRecord> {
    let text = |c: &str| row.try_get::<String, _>(c).map_err(db_error);
    let time = |c: &str| row.try_get::<Option<i64>, _>(c).map(|t| t.map(from_micros)).map_err(db_error);
    let mut state = text("state")?;
    if state == "pending" && row.try_get::<i64, _>("blocked").map_err(db_error)? == 0 {
        state = "ready".into();
    }
    let output = text("output")?;
    Ok(TaskRecord {
        spec: serde_json::from_str(&text("spec")?).map_err(|_| Error::internal("a stored task does not parse"))?,
        state,
        dependents: Vec::new(),
        worker: text("worker")?,
        output: serde_json::from_str(&output).ok(),
        error: text("error")?,
        attempts: row.try_get::<i64, _>("attempts").map_err(db_error)? as u32,
        created_at: from_micros(row.try_get::<i64, _>("created_at").map_err(db_error)?),
        started_at: time("started_at")?,
        finished_at: time("finished_at")?,
    })
}

fn check_task_id(id: &str) -> Result<()> {
    let ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("invalid_task_id", format!("task id `{id}`: 1-64 characters of a-z A-Z 0-9 _ -")))
    }
}

/// The graph as specs (ids, dependencies, priorities): what cycles and waves are computed on.
async fn graph(conn: &mut sqlx::AnyConnection) -> Result<Vec<TaskSpec>> {
    let tasks = sqlx::query("SELECT task_id, spec FROM scheduler_tasks ORDER BY created_at, task_id")
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
    tasks
        .iter()
        .map(|r| {
            let spec: String = r.try_get("spec").map_err(db_error)?;
            serde_json::from_str(&spec).map_err(|_| Error::internal("a stored task does not parse"))
        })
        .collect()
}

impl Store {
    async fn lock_graph(&self, tx: &mut Transaction<'_, Any>) -> Result<()> {
        if self.db.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(GRAPH_LOCK)
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }

    /// Adds a task, or re-declares one nobody has started; refuses unknown dependencies
    /// and cycles (named by their path).
    pub async fn add_task(&self, spec: TaskSpec) -> Result<TaskRecord> {
        check_task_id(&spec.task_id)?;
        if !spec.gates.is_empty() {
            return Err(Error::invalid(
                "unsupported_gate",
                "quality gates run in scheduler workflows; a free-standing task's worker decides when it is done",
            ));
        }
        let mut tx = self.db.pool.begin().await.map_err(db_error)?;
        self.lock_graph(&mut tx).await?;
        let text = serde_json::to_string(&spec).map_err(|_| Error::internal("serializing a task failed"))?;
        let done = sqlx::query(
            "INSERT INTO scheduler_tasks (task_id, spec, priority, state, worker, output, error, attempts, created_at) \
             VALUES ($1, $2, $3, 'pending', '', '', '', 0, $4) ON CONFLICT (task_id) DO UPDATE \
             SET spec = excluded.spec, priority = excluded.priority WHERE scheduler_tasks.state = 'pending'",
        )
        .bind(&spec.task_id)
        .bind(&text)
        .bind(i64::from(spec.priority))
        .bind(micros(now()))
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        if done.rows_affected() == 0 {
            return Err(Error::new(
                ErrorKind::Conflict,
                "task_started",
                format!("task `{}` exists and has started; it cannot be re-declared", spec.task_id),
            ));
        }
        let graph = graph(&mut tx).await?;
        let known: HashSet<&str> = graph.iter().map(|t| t.task_id.as_str()).collect();
        if let Some(unknown) = spec.dependencies.iter().find(|d| !known.contains(d.as_str())) {
            return Err(Error::invalid(
                "unknown_dependency",
                format!("task `{}` depends on `{unknown}`, which is not a task (add it first)", spec.task_id),
            ));
        }
        scheduler::waves_by_priority(&graph).map_err(|e| match e.code() {
            "workflow_cycle" => Error::invalid("task_cycle", e.to_string()),
            _ => e,
        })?;
        sqlx::query("DELETE FROM scheduler_task_dependencies WHERE task_id = $1")
            .bind(&spec.task_id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        for dep in spec.dependencies.iter().collect::<HashSet<_>>() {
            sqlx::query("INSERT INTO scheduler_task_dependencies (task_id, depends_on) VALUES ($1, $2)")
                .bind(&spec.task_id)
                .bind(dep)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        self.get_task(&spec.task_id).await
    }

    pub async fn get_task(&self, id: &str) -> Result<TaskRecord> {
        let sql = format!(
            "SELECT {COLUMNS}, CAST(CASE WHEN {BLOCKED} THEN 1 ELSE 0 END AS BIGINT) AS blocked FROM scheduler_tasks WHERE task_id = $1"
        );
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.db.pool).await.map_err(db_error)?;
        let mut task = task_from_row(&row.ok_or_else(|| Error::not_found("task", id))?)?;
        let dependents =
            sqlx::query("SELECT task_id FROM scheduler_task_dependencies WHERE depends_on = $1 ORDER BY task_id")
                .bind(id)
                .fetch_all(&self.db.pool)
                .await
                .map_err(db_error)?;
        task.dependents = dependents.iter().map(|r| r.try_get("task_id").map_err(db_error)).collect::<Result<_>>()?;
        Ok(task)
    }

    /// Ready tasks, highest priority first.
    pub async fn ready_tasks(&self, limit: u32) -> Result<Vec<TaskRecord>> {
        let sql = format!(
            "SELECT {COLUMNS}, CAST(0 AS BIGINT) AS blocked FROM scheduler_tasks WHERE state = 'pending' AND NOT {BLOCKED} \
             ORDER BY priority DESC, task_id LIMIT {}",
            limit.clamp(1, 1000)
        );
        let rows = sqlx::query(&sql).fetch_all(&self.db.pool).await.map_err(db_error)?;
        rows.iter().map(task_from_row).collect()
    }

    /// The state a refused transition found the task in, as the error to answer.
    async fn refused(&self, id: &str, wanted: &str) -> Error {
        match self.get_task(id).await {
            Ok(task) => Error::new(
                ErrorKind::FailedPrecondition,
                "invalid_task_state",
                format!("task `{id}` is {}; {wanted}", task.state),
            ),
            Err(e) => e,
        }
    }

    /// ready → running; refused for any other state, so two workers never both run it.
    pub async fn run_task(&self, id: &str, worker: &str) -> Result<TaskRecord> {
        let mut tx = self.db.pool.begin().await.map_err(db_error)?;
        self.lock_graph(&mut tx).await?;
        let sql = format!(
            "UPDATE scheduler_tasks SET state = 'running', worker = $1, attempts = attempts + 1, started_at = $2 \
             WHERE task_id = $3 AND state = 'pending' AND NOT {BLOCKED}"
        );
        let done =
            sqlx::query(&sql).bind(worker).bind(micros(now())).bind(id).execute(&mut *tx).await.map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        if done.rows_affected() == 0 {
            return Err(self.refused(id, "only a ready task can be run").await);
        }
        self.get_task(id).await
    }

    /// running (or ready) → completed, once; returns the task and the dependants this
    /// made ready, highest priority first.
    pub async fn complete_task(&self, id: &str, output: Option<&Value>) -> Result<(TaskRecord, Vec<String>)> {
        let mut tx = self.db.pool.begin().await.map_err(db_error)?;
        self.lock_graph(&mut tx).await?;
        let sql = format!(
            "UPDATE scheduler_tasks SET state = 'completed', output = $1, finished_at = $2 \
             WHERE task_id = $3 AND (state = 'running' OR (state = 'pending' AND NOT {BLOCKED}))"
        );
        let output = output.map(Value::to_string).unwrap_or_default();
        let done =
            sqlx::query(&sql).bind(output).bind(micros(now())).bind(id).execute(&mut *tx).await.map_err(db_error)?;
        if done.rows_affected() == 0 {
            drop(tx);
            return Err(self.refused(id, "only a running or ready task can be completed").await);
        }
        let sql = format!(
            "SELECT task_id FROM scheduler_tasks WHERE state = 'pending' AND NOT {BLOCKED} AND task_id IN \
             (SELECT task_id FROM scheduler_task_dependencies WHERE depends_on = $1) ORDER BY priority DESC, task_id"
        );
        let rows = sqlx::query(&sql).bind(id).fetch_all(&mut *tx).await.map_err(db_error)?;
        let newly_ready = rows.iter().map(|r| r.try_get("task_id").map_err(db_error)).collect::<Result<_>>()?;
        tx.commit().await.map_err(db_error)?;
        Ok((self.get_task(id).await?, newly_ready))
    }

    /// running or pending → failed; every pending task downstream of it is cancelled
    /// (it can never become ready) and returned.
    pub async fn fail_task(&self, id: &str, error: &str) -> Result<(TaskRecord, Vec<String>)> {
        let mut tx = self.db.pool.begin().await.map_err(db_error)?;
        self.lock_graph(&mut tx).await?;
        let at = micros(now());
        let done = sqlx::query(
            "UPDATE scheduler_tasks SET state = 'failed', error = $1, finished_at = $2 \
             WHERE task_id = $3 AND state IN ('running', 'pending')",
        )
        .bind(error)
        .bind(at)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        if done.rows_affected() == 0 {
            drop(tx);
            return Err(self.refused(id, "only a running or pending task can fail").await);
        }
        let downstream = sqlx::query(
            "WITH RECURSIVE downstream(task_id) AS ( \
               SELECT task_id FROM scheduler_task_dependencies WHERE depends_on = $1 \
               UNION SELECT d.task_id FROM scheduler_task_dependencies d JOIN downstream s ON d.depends_on = s.task_id) \
             SELECT task_id FROM downstream ORDER BY task_id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let mut cancelled = Vec::new();
        for row in &downstream {
            let task: String = row.try_get("task_id").map_err(db_error)?;
            let done = sqlx::query(
                "UPDATE scheduler_tasks SET state = 'cancelled', error = $1, finished_at = $2 \
                 WHERE task_id = $3 AND state = 'pending'",
            )
            .bind(format!("upstream task `{id}` failed"))
            .bind(at)
            .bind(&task)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            if done.rows_affected() == 1 {
                cancelled.push(task);
            }
        }
        tx.commit().await.map_err(db_error)?;
        Ok((self.get_task(id).await?, cancelled))
    }

    /// The whole task graph's waves, each by priority.
    pub async fn task_waves(&self) -> Result<Vec<Vec<String>>> {
        let mut conn = self.db.pool.acquire().await.map_err(db_error)?;
        scheduler::waves_by_priority(&graph(&mut conn).await?)
    }

    pub async fn task_stats(&self) -> Result<TaskStats> {
        let sql = format!(
            "SELECT CASE WHEN state = 'pending' AND NOT {BLOCKED} THEN 'ready' ELSE state END AS shown, \
             COUNT(*) AS n FROM scheduler_tasks GROUP BY 1"
        );
        let rows = sqlx::query(&sql).fetch_all(&self.db.pool).await.map_err(db_error)?;
        let mut stats = TaskStats::default();
        for row in &rows {
            let n = row.try_get::<i64, _>("n").map_err(db_error)? as u64;
            stats.total += n;
            match row.try_get::<String, _>("shown").map_err(db_error)?.as_str() {
                "pending" => stats.pending = n,
                "ready" => stats.ready = n,
                "running" => stats.running = n,
                "completed" => stats.completed = n,
                "failed" => stats.failed = n,
                _ => stats.cancelled += n,
            }
        }
        stats.waves = self.task_waves().await?.len() as u32;
        let count = |sql: &'static str| async move {
            let row = sqlx::query(sql).fetch_one(&self.db.pool).await.map_err(db_error)?;
            row.try_get::<i64, _>("n").map(|n| n as u64).map_err(db_error)
        };
        stats.workflows = count("SELECT COUNT(*) AS n FROM workflows WHERE format = 'scheduler'").await?;
        stats.active_executions = count(
            "SELECT COUNT(*) AS n FROM executions WHERE state IN ('pending', 'running') AND workflow_id IN \
             (SELECT id FROM workflows WHERE format = 'scheduler')",
        )
        .await?;
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_checked() {
        let cases =
            [("fetch", true), ("a-b_9", true), ("", false), ("a b", false), ("a/b", false), (&*"x".repeat(65), false)];
        for (id, ok) in cases {
            assert_eq!(check_task_id(id).is_ok(), ok, "{id:?}");
        }
    }
}
