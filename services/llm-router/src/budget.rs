//! The daily budget and usage records, durable in SQL (SQLite or PostgreSQL).
//!
//! Admission reserves a call's worst-case cost before anything goes upstream, with one
//! conditional UPDATE that succeeds only while `spent + reserved + worst case ≤ cap`;
//! the row lock (PostgreSQL) or the single writer (SQLite) makes that check-and-add
//! atomic across every replica sharing the table. After the call, the reservation is
//! replaced by the cost the provider's usage gives (settle) or dropped (release), and
//! the usage record is written in the same transaction. So spend passes the cap by at
//! most what one call's actual cost exceeded its reservation (the prompt estimate is
//! deliberately high), never by concurrent admissions.
//!
//! A reservation dropped without settling (a cancelled call) is released on the
//! context's task tracker. A process killed between reserve and settle leaves its
//! reservation counted until the day ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use helix_core::{Error, Result};
use helix_runtime::db::{Database, db_error, micros};
use sqlx::Row;
use tokio_util::task::TaskTracker;

pub const GLOBAL: &str = "global";

pub struct Budget {
    db: Database,
    cap_micros: AtomicI64,
    reject: AtomicBool,
    tasks: TaskTracker,
}

/// Money held for a call in flight.
#[derive(Debug)]
pub struct Reservation {
    day: String,
    pub micros: i64,
}

/// What a finished call leaves in `llm_usage`.
#[derive(Debug, Clone, Default)]
pub struct UsageRecord {
    pub request_id: String,
    pub caller: String,
    pub provider: String,
    pub model: String,
    /// ok, error, budget
    pub outcome: String,
    pub usage: crate::types::Usage,
    pub cost_micros: i64,
    pub latency_ms: u64,
    pub first_token_ms: u64,
    pub streamed: bool,
    pub fell_back: bool,
    pub downgraded: bool,
}

#[derive(Debug, Clone, Default)]
pub struct DaySpend {
    pub day: String,
    pub spent_micros: i64,
    pub reserved_micros: i64,
    pub requests: i64,
}

#[derive(Debug, Clone, Default)]
pub struct ProviderSpend {
    pub provider: String,
    pub cost_micros: i64,
    pub requests: i64,
    pub tokens: i64,
}

#[derive(Debug, Clone)]
pub struct Status {
    pub cap_micros: i64,
    pub reject: bool,
    pub today: DaySpend,
    pub providers: Vec<ProviderSpend>,
    /// newest first
    pub history: Vec<DaySpend>,
}

pub fn usd_to_micros(usd: f64) -> i64 {
    (usd * 1e6).round() as i64
}

pub fn micros_to_usd(micros: i64) -> f64 {
    micros as f64 / 1e6
}

pub fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

impl Budget {
    pub fn new(db: Database, cap_usd: f64, reject: bool, tasks: TaskTracker) -> Arc<Self> {
        Arc::new(Self {
            db,
            cap_micros: AtomicI64::new(usd_to_micros(cap_usd)),
            reject: AtomicBool::new(reject),
            tasks,
        })
    }

    pub fn rejects(&self) -> bool {
        self.reject.load(Ordering::Relaxed)
    }

    pub fn set(&self, cap_usd: Option<f64>, reject: Option<bool>) {
        if let Some(cap) = cap_usd {
            self.cap_micros.store(usd_to_micros(cap), Ordering::Relaxed);
        }
        if let Some(reject) = reject {
            self.reject.store(reject, Ordering::Relaxed);
        }
    }

    /// Holds `micros` of today's budget; `None` when it does not fit under the cap.
    pub async fn reserve(&self, micros: i64) -> Result<Option<Reservation>> {
        let day = today();
        let cap = self.cap_micros.load(Ordering::Relaxed);
        let reserve = |day: &str| {
            sqlx::query(
                "UPDATE llm_budget_days SET reserved_micros = reserved_micros + $1 \
                 WHERE scope = $2 AND day = $3 AND spent_micros + reserved_micros + $1 <= $4",
            )
            .bind(micros)
            .bind(GLOBAL)
            .bind(day.to_owned())
            .bind(cap)
        };
        let done = reserve(&day).execute(&self.db.pool).await.map_err(db_error)?;
        if done.rows_affected() == 1 {
            return Ok(Some(Reservation { day, micros }));
        }
        // the day's first call (or a full budget): make sure the row exists, then try once more
        sqlx::query(
            "INSERT INTO llm_budget_days (scope, day, spent_micros, reserved_micros, requests) \
             VALUES ($1, $2, 0, 0, 0) ON CONFLICT (scope, day) DO NOTHING",
        )
        .bind(GLOBAL)
        .bind(&day)
        .execute(&self.db.pool)
        .await
        .map_err(db_error)?;
        let done = reserve(&day).execute(&self.db.pool).await.map_err(db_error)?;
        Ok((done.rows_affected() == 1).then_some(Reservation { day, micros }))
    }

    /// Replaces the reservation by the actual cost and records the call, in one transaction.
    pub async fn settle(&self, reservation: Reservation, record: &UsageRecord) -> Result<()> {
        let mut tx = self.db.pool.begin().await.map_err(db_error)?;
        sqlx::query(
            "UPDATE llm_budget_days SET reserved_micros = reserved_micros - $1, \
             spent_micros = spent_micros + $2, requests = requests + 1 WHERE scope = $3 AND day = $4",
        )
        .bind(reservation.micros)
        .bind(record.cost_micros)
        .bind(GLOBAL)
        .bind(&reservation.day)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        insert_usage(&mut tx, record).await?;
        tx.commit().await.map_err(db_error)
    }

    /// Gives a reservation back (the call failed everywhere, or was cancelled).
    pub async fn release(&self, reservation: Reservation) -> Result<()> {
        sqlx::query("UPDATE llm_budget_days SET reserved_micros = reserved_micros - $1 WHERE scope = $2 AND day = $3")
            .bind(reservation.micros)
            .bind(GLOBAL)
            .bind(&reservation.day)
            .execute(&self.db.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Records a call that held no reservation (refused, or failed before one).
    pub async fn record(&self, record: &UsageRecord) -> Result<()> {
        let mut tx = self.db.pool.begin().await.map_err(db_error)?;
        insert_usage(&mut tx, record).await?;
        tx.commit().await.map_err(db_error)
    }

    /// Releases a reservation in the background: for drops, where nothing can be awaited.
    pub fn release_later(self: &Arc<Self>, reservation: Reservation) {
        let budget = self.clone();
        self.tasks.spawn(async move {
            if let Err(error) = budget.release(reservation).await {
                tracing::warn!(%error, "a budget reservation could not be released");
            }
        });
    }

    /// Settles in the background: a stream's end is seen by a poll, which cannot wait.
    pub fn settle_later(self: &Arc<Self>, reservation: Option<Reservation>, record: UsageRecord) {
        let budget = self.clone();
        self.tasks.spawn(async move {
            let result = match reservation {
                Some(reservation) => budget.settle(reservation, &record).await,
                None => budget.record(&record).await,
            };
            if let Err(error) = result {
                tracing::warn!(%error, "a call's cost could not be settled");
            }
        });
    }

    pub async fn status(&self, history_days: u32) -> Result<Status> {
        let day = today();
        let rows = sqlx::query(
            "SELECT day, spent_micros, reserved_micros, requests FROM llm_budget_days \
             WHERE scope = $1 ORDER BY day DESC LIMIT $2",
        )
        .bind(GLOBAL)
        .bind(i64::from(history_days.clamp(1, 366)))
        .fetch_all(&self.db.pool)
        .await
        .map_err(db_error)?;
        let history = rows
            .iter()
            .map(|row| {
                Ok(DaySpend {
                    day: row.try_get("day")?,
                    spent_micros: row.try_get("spent_micros")?,
                    reserved_micros: row.try_get("reserved_micros")?,
                    requests: row.try_get("requests")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(db_error)?;
        let today = history
            .iter()
            .find(|d| d.day == day)
            .cloned()
            .unwrap_or(DaySpend { day: day.clone(), ..Default::default() });
        let rows = sqlx::query(
            "SELECT provider, CAST(SUM(cost_micros) AS BIGINT) AS cost, COUNT(*) AS requests, \
             CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT) AS tokens FROM llm_usage WHERE day = $1 \
             GROUP BY provider ORDER BY provider",
        )
        .bind(&day)
        .fetch_all(&self.db.pool)
        .await
        .map_err(db_error)?;
        let providers = rows
            .iter()
            .map(|row| {
                Ok(ProviderSpend {
                    provider: row.try_get("provider")?,
                    cost_micros: row.try_get::<Option<i64>, _>("cost")?.unwrap_or(0),
                    requests: row.try_get("requests")?,
                    tokens: row.try_get::<Option<i64>, _>("tokens")?.unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(db_error)?;
        Ok(Status {
            cap_micros: self.cap_micros.load(Ordering::Relaxed),
            reject: self.rejects(),
            today,
            providers,
            history,
        })
    }
}

async fn insert_usage(tx: &mut sqlx::Transaction<'static, sqlx::Any>, r: &UsageRecord) -> Result<()> {
    let now = chrono::Utc::now();
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO llm_usage (id, created_at, day, request_id, caller, provider, model, outcome, \
         prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cost_micros, latency_ms, \
         first_token_ms, streamed, fell_back, downgraded) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(micros(now))
    .bind(now.format("%Y-%m-%d").to_string())
    .bind(&r.request_id)
    .bind(&r.caller)
    .bind(&r.provider)
    .bind(&r.model)
    .bind(&r.outcome)
    .bind(as_i64(r.usage.prompt_tokens))
    .bind(as_i64(r.usage.completion_tokens))
    .bind(as_i64(r.usage.cached_prompt_tokens))
    .bind(as_i64(r.usage.reasoning_tokens))
    .bind(r.cost_micros)
    .bind(as_i64(r.latency_ms))
    .bind(as_i64(r.first_token_ms))
    .bind(i64::from(r.streamed))
    .bind(i64::from(r.fell_back))
    .bind(i64::from(r.downgraded))
    .execute(&mut **tx)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// The error of a call the budget refuses: nothing went upstream.
pub fn exceeded(message: String) -> Error {
    Error::new(helix_core::ErrorKind::BudgetExceeded, helix_core::error::BUDGET_EXCEEDED, message)
}
