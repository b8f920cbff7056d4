//! Workflows, executions, step results and the progress log in the orchestrator's
//! database (SQLite or PostgreSQL through sqlx `Any`). Every state change of an
//! execution commits with its progress entry and, for the announced ones, its
//! `helix.workflow.*` event in the outbox.
//!
//! An execution is run by one orchestrator at a time: the one whose id is in `owner`
//! while `lease_expires_at` lies ahead. Claiming is one conditional UPDATE (the lease
//! must be free or lapsed), renewal another (the owner must still be us), so replicas
//! race safely; a replica that dies leaves a lease that lapses and another claims it.

use chrono::{DateTime, Utc};
use helix_core::{Error, Result};
use helix_events::subjects;
use helix_runtime::db::{self, Database, db_error, from_micros, micros, now};
use helix_runtime::outbox::{self, Outbox};
use serde_json::{Map, Value, json};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

use crate::SERVICE;
use crate::definition::Definition;

const WORKFLOW_COLUMNS: &str = "id, name, description, format, definition, tags, version, created_at, updated_at";
const EXECUTION_COLUMNS: &str = "id, workflow_id, workflow_name, plan, state, variables, error, triggered_by, \
     cancel_requested, created_at, started_at, finished_at";
const STEP_COLUMNS: &str = "step_id, state, attempt, iteration, output, error, started_at, finished_at";

#[derive(Debug, Clone)]
pub struct WorkflowRecord {
    pub id: Uuid,
    pub format: String,
    pub definition: String,
    pub def: Definition,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct StepRecord {
    pub step_id: String,
    /// pending, running, succeeded, failed, skipped, cancelled
    pub state: String,
    pub attempt: u32,
    pub iteration: u32,
    pub output: Option<Value>,
    pub error: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct ExecutionRecord {
    pub id: Uuid,
    pub workflow_id: String,
    pub workflow_name: String,
    pub plan: Definition,
    /// pending, running, succeeded, failed, cancelled
    pub state: String,
    pub variables: Map<String, Value>,
    pub error: String,
    pub triggered_by: String,
    pub cancel_requested: bool,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// in the plan's order
    pub steps: Vec<StepRecord>,
}

impl ExecutionRecord {
    pub fn is_terminal(&self) -> bool {
        matches!(self.state.as_str(), "succeeded" | "failed" | "cancelled")
    }

    /// Step outputs by step id: what `{{result.step}}` reads.
    pub fn results(&self) -> Map<String, Value> {
        self.steps.iter().filter_map(|s| s.output.clone().map(|o| (s.step_id.clone(), o))).collect()
    }
}

#[derive(Debug, Clone)]
pub struct ProgressRecord {
    pub execution_id: Uuid,
    pub seq: u64,
    pub kind: String,
    pub step_id: Option<String>,
    pub progress: f64,
    pub message: String,
    pub data: Value,
    pub terminal: bool,
    pub at: DateTime<Utc>,
}

/// A progress entry to append.
pub struct Progress<'a> {
    pub kind: &'a str,
    pub step_id: Option<&'a str>,
    pub progress: f64,
    pub message: String,
    pub data: Value,
}

pub struct ExecutionFilter {
    pub workflow_id: Option<String>,
    pub state: Option<String>,
    pub limit: u32,
    pub after: Option<Uuid>,
}

pub struct Store {
    pub(crate) db: Database,
    pub(crate) outbox: Outbox,
}

fn text(row: &AnyRow, column: &str) -> Result<String> {
    row.try_get::<String, _>(column).map_err(db_error)
}

fn opt_text(row: &AnyRow, column: &str) -> Result<Option<String>> {
    row.try_get::<Option<String>, _>(column).map_err(db_error)
}

fn int(row: &AnyRow, column: &str) -> Result<i64> {
    row.try_get::<i64, _>(column).map_err(db_error)
}

fn opt_time(row: &AnyRow, column: &str) -> Result<Option<DateTime<Utc>>> {
    Ok(row.try_get::<Option<i64>, _>(column).map_err(db_error)?.map(from_micros))
}

fn uuid(row: &AnyRow) -> Result<Uuid> {
    text(row, "id")?.parse().map_err(|_| Error::internal("a stored id is not a uuid"))
}

fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("serializing plain data cannot fail")
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|_| Error::internal("a stored JSON value does not parse"))
}

fn workflow_from_row(row: &AnyRow) -> Result<WorkflowRecord> {
    let format = text(row, "format")?;
    let definition = text(row, "definition")?;
    let def = if format == "scheduler" {
        serde_json::from_str::<crate::scheduler::SchedulerSpec>(&definition)
            .map_err(|_| Error::internal("a stored scheduler workflow does not parse"))?
            .definition()?
    } else {
        crate::definition::parse(&format, &definition)?.1
    };
    Ok(WorkflowRecord {
        id: uuid(row)?,
        format,
        definition,
        def,
        version: int(row, "version")?,
        created_at: from_micros(int(row, "created_at")?),
        updated_at: from_micros(int(row, "updated_at")?),
    })
}

fn execution_from_row(row: &AnyRow) -> Result<ExecutionRecord> {
    Ok(ExecutionRecord {
        id: uuid(row)?,
        workflow_id: text(row, "workflow_id")?,
        workflow_name: text(row, "workflow_name")?,
        plan: parse_json(&text(row, "plan")?)?,
        state: text(row, "state")?,
        variables: parse_json(&text(row, "variables")?)?,
        error: text(row, "error")?,
        triggered_by: text(row, "triggered_by")?,
        cancel_requested: int(row, "cancel_requested")? != 0,
        created_at: from_micros(int(row, "created_at")?),
        started_at: opt_time(row, "started_at")?,
        finished_at: opt_time(row, "finished_at")?,
        steps: Vec::new(),
    })
}

fn step_from_row(row: &AnyRow) -> Result<StepRecord> {
    Ok(StepRecord {
        step_id: text(row, "step_id")?,
        state: text(row, "state")?,
        attempt: int(row, "attempt")? as u32,
        iteration: int(row, "iteration")? as u32,
        output: opt_text(row, "output")?.map(|t| parse_json(&t)).transpose()?,
        error: text(row, "error")?,
        started_at: opt_time(row, "started_at")?,
        finished_at: opt_time(row, "finished_at")?,
    })
}

impl Store {
    pub fn new(db: Database, outbox: Outbox) -> Self {
        Self { db, outbox }
    }

    // ---- workflows ----

    pub async fn create_workflow(&self, format: &str, definition: &str, def: &Definition) -> Result<WorkflowRecord> {
        let id = Uuid::now_v7();
        let at = micros(now());
        sqlx::query(
            "INSERT INTO workflows (id, name, description, format, definition, tags, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $7)",
        )
        .bind(id.to_string())
        .bind(&def.name)
        .bind(&def.description)
        .bind(format)
        .bind(definition)
        .bind(json_text(&def.tags))
        .bind(at)
        .execute(&self.db.pool)
        .await
        .map_err(db_error)?;
        self.get_workflow(id).await
    }

    pub async fn get_workflow(&self, id: Uuid) -> Result<WorkflowRecord> {
        let sql = format!("SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE id = $1");
        let row = sqlx::query(&sql).bind(id.to_string()).fetch_optional(&self.db.pool).await.map_err(db_error)?;
        row.map(|r| workflow_from_row(&r)).transpose()?.ok_or_else(|| Error::not_found("workflow", id))
    }

    /// The scheduler workflow of this name.
    pub async fn scheduler_workflow(&self, name: &str) -> Result<Option<WorkflowRecord>> {
        let sql = format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE format = 'scheduler' AND name = $1 ORDER BY id LIMIT 1"
        );
        let row = sqlx::query(&sql).bind(name).fetch_optional(&self.db.pool).await.map_err(db_error)?;
        row.map(|r| workflow_from_row(&r)).transpose()
    }

    pub async fn list_workflows(
        &self,
        limit: u32,
        after: Option<Uuid>,
    ) -> Result<(Vec<WorkflowRecord>, Option<String>)> {
        let sql = format!("SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE 1 = 1");
        db::newest_first(&self.db.pool, sql, Vec::new(), after, limit, workflow_from_row, |w| w.id).await
    }

    /// Replaces the definition when `expected_version` is the stored one (0 skips the check).
    pub async fn update_workflow(
        &self,
        id: Uuid,
        expected_version: i64,
        format: &str,
        definition: &str,
        def: &Definition,
    ) -> Result<WorkflowRecord> {
        let current = self.get_workflow(id).await?;
        let expected = if expected_version == 0 { current.version } else { expected_version };
        let done = sqlx::query(
            "UPDATE workflows SET name = $1, description = $2, format = $3, definition = $4, tags = $5, \
             version = version + 1, updated_at = $6 WHERE id = $7 AND version = $8",
        )
        .bind(&def.name)
        .bind(&def.description)
        .bind(format)
        .bind(definition)
        .bind(json_text(&def.tags))
        .bind(micros(now()))
        .bind(id.to_string())
        .bind(expected)
        .execute(&self.db.pool)
        .await
        .map_err(db_error)?;
        if done.rows_affected() == 0 {
            return Err(Error::new(
                helix_core::ErrorKind::Conflict,
                "version_conflict",
                format!("workflow {id} is at version {}, not {expected}", current.version),
            ));
        }
        self.get_workflow(id).await
    }

    pub async fn delete_workflow(&self, id: Uuid) -> Result<()> {
        let done = sqlx::query("DELETE FROM workflows WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.db.pool)
            .await
            .map_err(db_error)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("workflow", id));
        }
        Ok(())
    }

    // ---- executions ----

    /// Creates a pending execution with every step pending, or returns the one an
    /// earlier call with the same idempotency key created.
    pub async fn create_execution(
        &self,
        workflow_id: &str,
        plan: &Definition,
        variables: &Map<String, Value>,
        triggered_by: &str,
        idempotency_key: Option<&str>,
    ) -> Result<ExecutionRecord> {
        if let Some(key) = idempotency_key {
            let row = sqlx::query("SELECT id FROM executions WHERE idempotency_key = $1")
                .bind(key)
                .fetch_optional(&self.db.pool)
                .await
                .map_err(db_error)?;
            if let Some(row) = row {
                return self.get_execution(uuid(&row)?).await;
            }
        }
        let id = Uuid::now_v7();
        let at = micros(now());
        let mut tx = self.outbox.begin().await?;
        sqlx::query(
            "INSERT INTO executions (id, workflow_id, workflow_name, plan, state, variables, error, triggered_by, \
             idempotency_key, owner, lease_expires_at, cancel_requested, created_at) \
             VALUES ($1, $2, $3, $4, 'pending', $5, '', $6, $7, NULL, NULL, 0, $8)",
        )
        .bind(id.to_string())
        .bind(workflow_id)
        .bind(&plan.name)
        .bind(json_text(plan))
        .bind(json_text(variables))
        .bind(triggered_by)
        .bind(idempotency_key)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        for step in &plan.steps {
            sqlx::query(
                "INSERT INTO execution_steps (execution_id, step_id, state, attempt, iteration, output, error) \
                 VALUES ($1, $2, 'pending', 0, 0, NULL, '')",
            )
            .bind(id.to_string())
            .bind(&step.id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        let entry = Progress {
            kind: "created",
            step_id: None,
            progress: 0.0,
            message: "execution created".into(),
            data: json!({}),
        };
        append(&mut tx, id, 1, &entry, false).await?;
        self.outbox.commit(tx).await?;
        self.get_execution(id).await
    }

    pub async fn get_execution(&self, id: Uuid) -> Result<ExecutionRecord> {
        let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = $1");
        let row = sqlx::query(&sql).bind(id.to_string()).fetch_optional(&self.db.pool).await.map_err(db_error)?;
        let mut execution =
            row.map(|r| execution_from_row(&r)).transpose()?.ok_or_else(|| Error::not_found("execution", id))?;
        self.load_steps(&mut execution).await?;
        Ok(execution)
    }

    async fn load_steps(&self, execution: &mut ExecutionRecord) -> Result<()> {
        let sql = format!("SELECT {STEP_COLUMNS} FROM execution_steps WHERE execution_id = $1");
        let rows = sqlx::query(&sql).bind(execution.id.to_string()).fetch_all(&self.db.pool).await.map_err(db_error)?;
        let mut steps = rows.iter().map(step_from_row).collect::<Result<Vec<_>>>()?;
        let order: Vec<&str> = execution.plan.steps.iter().map(|s| s.id.as_str()).collect();
        steps.sort_by_key(|s| order.iter().position(|id| *id == s.step_id).unwrap_or(usize::MAX));
        execution.steps = steps;
        Ok(())
    }

    pub async fn list_executions(&self, filter: &ExecutionFilter) -> Result<(Vec<ExecutionRecord>, Option<String>)> {
        let mut sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE 1 = 1");
        let mut args = Vec::new();
        for (column, value) in [("workflow_id", &filter.workflow_id), ("state", &filter.state)] {
            if let Some(value) = value {
                args.push(value.clone());
                sql.push_str(&format!(" AND {column} = ${}", args.len()));
            }
        }
        let (mut executions, next) =
            db::newest_first(&self.db.pool, sql, args, filter.after, filter.limit, execution_from_row, |e| e.id)
                .await?;
        for execution in &mut executions {
            self.load_steps(execution).await?;
        }
        Ok((executions, next))
    }

    /// Takes the execution for `owner` until `until` if it is live and its lease is
    /// free or lapsed; true when taken.
    pub async fn claim(&self, id: Uuid, owner: &str, until: DateTime<Utc>) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE executions SET owner = $1, lease_expires_at = $2 WHERE id = $3 AND state IN ('pending', 'running') \
             AND (owner IS NULL OR lease_expires_at < $4)",
        )
        .bind(owner)
        .bind(micros(until))
        .bind(id.to_string())
        .bind(micros(now()))
        .execute(&self.db.pool)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected() == 1)
    }

    /// Live executions started by `parent`'s `workflow` steps.
    pub async fn live_children(&self, parent: Uuid) -> Result<Vec<Uuid>> {
        let rows = sqlx::query(
            "SELECT id FROM executions WHERE triggered_by = $1 AND state IN ('pending', 'running') ORDER BY id",
        )
        .bind(parent.to_string())
        .fetch_all(&self.db.pool)
        .await
        .map_err(db_error)?;
        rows.iter().map(uuid).collect()
    }

    /// Live executions nobody holds (never claimed, released, or whose owner's lease lapsed).
    pub async fn claimable(&self, limit: u32) -> Result<Vec<Uuid>> {
        let rows = sqlx::query(&format!(
            "SELECT id FROM executions WHERE state IN ('pending', 'running') \
             AND (owner IS NULL OR lease_expires_at < $1) ORDER BY id LIMIT {limit}"
        ))
        .bind(micros(now()))
        .fetch_all(&self.db.pool)
        .await
        .map_err(db_error)?;
        rows.iter().map(uuid).collect()
    }

    /// Extends our lease; `None` when it is no longer ours, else whether a cancel was asked.
    pub async fn renew(&self, id: Uuid, owner: &str, until: DateTime<Utc>) -> Result<Option<bool>> {
        let row = sqlx::query(
            "UPDATE executions SET lease_expires_at = $1 WHERE id = $2 AND owner = $3 \
             AND state IN ('pending', 'running') RETURNING cancel_requested",
        )
        .bind(micros(until))
        .bind(id.to_string())
        .bind(owner)
        .fetch_optional(&self.db.pool)
        .await
        .map_err(db_error)?;
        row.map(|r| int(&r, "cancel_requested").map(|c| c != 0)).transpose()
    }

    /// Gives the lease back (at shutdown), so a restarted or other orchestrator resumes at once.
    pub async fn release(&self, id: Uuid, owner: &str) -> Result<()> {
        sqlx::query("UPDATE executions SET owner = NULL, lease_expires_at = NULL WHERE id = $1 AND owner = $2")
            .bind(id.to_string())
            .bind(owner)
            .execute(&self.db.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    pub async fn max_seq(&self, id: Uuid) -> Result<u64> {
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM progress WHERE execution_id = $1")
            .bind(id.to_string())
            .fetch_one(&self.db.pool)
            .await
            .map_err(db_error)?;
        Ok(int(&row, "seq")? as u64)
    }

    /// pending → running (a resumed run stays running); steps left running by an
    /// earlier owner go back to pending: only unfinished steps run again.
    pub async fn start(&self, execution: &ExecutionRecord, owner: &str, seq: u64) -> Result<()> {
        let mut tx = self.outbox.begin().await?;
        let at = micros(now());
        let done = sqlx::query(
            "UPDATE executions SET state = 'running', started_at = COALESCE(started_at, $1) \
             WHERE id = $2 AND owner = $3 AND state IN ('pending', 'running')",
        )
        .bind(at)
        .bind(execution.id.to_string())
        .bind(owner)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        if done.rows_affected() == 0 {
            return Err(Error::conflict("lease_lost", "the execution is no longer ours"));
        }
        sqlx::query("UPDATE execution_steps SET state = 'pending' WHERE execution_id = $1 AND state = 'running'")
            .bind(execution.id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let resumed = execution.state == "running";
        let entry = Progress {
            kind: if resumed { "resumed" } else { "started" },
            step_id: None,
            progress: 0.0,
            message: format!("execution {}", if resumed { "resumed" } else { "started" }),
            data: json!({}),
        };
        append(&mut tx, execution.id, seq, &entry, false).await?;
        if !resumed {
            let payload = json!({"execution_id": execution.id.to_string(), "workflow": execution.workflow_name, "trigger": "api"});
            outbox::enqueue(&mut tx, subjects::WORKFLOW_STARTED, SERVICE, payload).await?;
        }
        self.outbox.commit(tx).await
    }

    /// A step's new state (running, succeeded, failed, skipped), with its progress entry
    /// and, when it finished, its `helix.workflow.step.completed` event; only while we
    /// own the execution.
    #[allow(clippy::too_many_arguments)]
    pub async fn step_state(
        &self,
        execution: &ExecutionRecord,
        owner: &str,
        step_id: &str,
        state: &str,
        output: Option<&Value>,
        error: &str,
        iteration: u32,
        seq: u64,
        entry: &Progress<'_>,
    ) -> Result<()> {
        let mut tx = self.outbox.begin().await?;
        let at = micros(now());
        // a write first: on SQLite the transaction takes the write lock now (waiting for
        // it), instead of failing busy when a read lock must be upgraded later
        let owned =
            sqlx::query("UPDATE executions SET owner = owner WHERE id = $1 AND owner = $2 AND state = 'running'")
                .bind(execution.id.to_string())
                .bind(owner)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        if owned.rows_affected() == 0 {
            return Err(Error::conflict("lease_lost", "the execution is no longer ours"));
        }
        let sql = if state == "running" {
            "UPDATE execution_steps SET state = $1, attempt = attempt + 1, error = $2, iteration = $3, started_at = $4, \
             finished_at = NULL, output = $5 WHERE execution_id = $6 AND step_id = $7"
        } else {
            "UPDATE execution_steps SET state = $1, error = $2, iteration = $3, finished_at = $4, output = $5 \
             WHERE execution_id = $6 AND step_id = $7"
        };
        sqlx::query(sql)
            .bind(state)
            .bind(error)
            .bind(i64::from(iteration))
            .bind(at)
            .bind(output.map(json_text))
            .bind(execution.id.to_string())
            .bind(step_id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        append(&mut tx, execution.id, seq, entry, false).await?;
        if matches!(state, "succeeded" | "failed" | "skipped") {
            let payload = json!({
                "execution_id": execution.id.to_string(), "workflow": execution.workflow_name, "step": step_id, "status": state,
            });
            outbox::enqueue(&mut tx, subjects::WORKFLOW_STEP_COMPLETED, SERVICE, payload).await?;
        }
        self.outbox.commit(tx).await
    }

    /// Ends the execution (succeeded, failed or cancelled) with its terminal progress
    /// entry and event. `owner` None ends one nobody runs (a cancel).
    pub async fn finish(
        &self,
        execution: &ExecutionRecord,
        owner: Option<&str>,
        state: &str,
        error: &str,
        seq: u64,
    ) -> Result<bool> {
        let mut tx = self.outbox.begin().await?;
        let at = micros(now());
        let mut sql =
            "UPDATE executions SET state = $1, error = $2, finished_at = $3, owner = NULL, lease_expires_at = NULL \
                       WHERE id = $4 AND state IN ('pending', 'running')"
                .to_owned();
        if owner.is_some() {
            sql.push_str(" AND owner = $5");
        }
        let mut query = sqlx::query(&sql).bind(state).bind(error).bind(at).bind(execution.id.to_string());
        if let Some(owner) = owner {
            query = query.bind(owner);
        }
        if query.execute(&mut *tx).await.map_err(db_error)?.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE execution_steps SET state = $1, finished_at = $2 WHERE execution_id = $3 AND state IN ('pending', 'running')",
        )
        .bind(if state == "succeeded" { "skipped" } else { "cancelled" })
        .bind(at)
        .bind(execution.id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        let entry = Progress {
            kind: state,
            step_id: None,
            progress: 1.0,
            message: format!("execution {state}"),
            data: json!({"error": error}),
        };
        append(&mut tx, execution.id, seq, &entry, true).await?;
        let id = execution.id.to_string();
        let (subject, payload) = match state {
            "succeeded" => {
                (subjects::WORKFLOW_COMPLETED, json!({"execution_id": id, "workflow": execution.workflow_name}))
            }
            "failed" => (
                subjects::WORKFLOW_FAILED,
                json!({"execution_id": id, "workflow": execution.workflow_name, "error": error}),
            ),
            _ => (subjects::WORKFLOW_CANCELLED, json!({"execution_id": id, "workflow": execution.workflow_name})),
        };
        outbox::enqueue(&mut tx, subject, SERVICE, payload).await?;
        self.outbox.commit(tx).await?;
        Ok(true)
    }

    /// Flags a live execution for cancellation; its owner stops it.
    pub async fn request_cancel(&self, id: Uuid) -> Result<()> {
        sqlx::query("UPDATE executions SET cancel_requested = 1 WHERE id = $1 AND state IN ('pending', 'running')")
            .bind(id.to_string())
            .execute(&self.db.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Appends a progress entry outside a state change (logs).
    pub async fn log(&self, id: Uuid, seq: u64, entry: &Progress<'_>) -> Result<()> {
        let mut tx = self.outbox.begin().await?;
        append(&mut tx, id, seq, entry, false).await?;
        self.outbox.commit(tx).await
    }

    pub async fn progress_after(&self, id: Uuid, after: u64) -> Result<Vec<ProgressRecord>> {
        let rows = sqlx::query(
            "SELECT seq, kind, step_id, progress, message, data, terminal, at FROM progress \
             WHERE execution_id = $1 AND seq > $2 ORDER BY seq LIMIT 500",
        )
        .bind(id.to_string())
        .bind(after as i64)
        .fetch_all(&self.db.pool)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                Ok(ProgressRecord {
                    execution_id: id,
                    seq: int(row, "seq")? as u64,
                    kind: text(row, "kind")?,
                    step_id: opt_text(row, "step_id")?,
                    progress: row.try_get::<f64, _>("progress").map_err(db_error)?,
                    message: text(row, "message")?,
                    data: parse_json(&text(row, "data")?)?,
                    terminal: int(row, "terminal")? != 0,
                    at: from_micros(int(row, "at")?),
                })
            })
            .collect()
    }
}

async fn append(
    tx: &mut Transaction<'static, Any>,
    id: Uuid,
    seq: u64,
    entry: &Progress<'_>,
    terminal: bool,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO progress (execution_id, seq, kind, step_id, progress, message, data, terminal, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(id.to_string())
    .bind(seq as i64)
    .bind(entry.kind)
    .bind(entry.step_id)
    .bind(entry.progress)
    .bind(&entry.message)
    .bind(json_text(&entry.data))
    .bind(i64::from(terminal))
    .bind(micros(now()))
    .execute(&mut **tx)
    .await
    .map_err(db_error)?;
    Ok(())
}
