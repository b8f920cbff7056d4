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
//! A call made with an API key reserves under the key's scope (`key:<id>`) too, in the
//! same transaction, against the key's daily cap (`llm.key_budgets`, or set through
//! `SetBudget`; without one the key's spend is only counted), so a key at its cap is
//! refused on every endpoint whatever the global budget has left.
//!
//! A reservation dropped without settling (a cancelled call) is released on the
//! context's task tracker. A process killed between reserve and settle leaves its
//! reservation counted until the day ends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use helix_core::{Error, Result};
use helix_runtime::db::{Database, db_error, micros};
use sqlx::Row;
use tokio_util::task::TaskTracker;

pub const GLOBAL: &str = "global";

pub struct Budget {
    db: Database,
    cap_micros: AtomicI64,
    reject: AtomicBool,
    /// daily caps per API key id: the configuration's, then the database's over them
    config_key_caps: BTreeMap<String, i64>,
    key_caps: RwLock<BTreeMap<String, i64>>,
    tasks: TaskTracker,
}

/// Money held for a call in flight.
#[derive(Debug)]
pub struct Reservation {
    day: String,
    pub micros: i64,
    /// the API key's scope, reserved too
    key: Option<String>,
}

/// Why a reservation did not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Global,
    Key,
}

/// A key's cap and today's spend under it.
#[derive(Debug, Clone, Default)]
pub struct KeySpend {
    pub api_key_id: String,
    pub cap_micros: Option<i64>,
    pub spent_micros: i64,
    pub requests: i64,
}

fn key_scope(key: &str) -> String {
    format!("key:{key}")
}

/// What a finished call leaves in `llm_usage`.
#[derive(Debug, Clone)]
pub struct UsageRecord {
    pub request_id: String,
    pub caller: String,
    pub provider: String,
    pub model: String,
    /// ok, error, budget
    pub outcome: String,
    pub api_key_id: String,
    /// chat or embed
    pub kind: &'static str,
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
    /// the keys with a cap of their own
    pub keys: Vec<KeySpend>,
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
    pub fn new(
        db: Database,
        cap_usd: f64,
        reject: bool,
        key_caps_usd: &BTreeMap<String, f64>,
        tasks: TaskTracker,
    ) -> Arc<Self> {
        let config_key_caps: BTreeMap<String, i64> =
            key_caps_usd.iter().map(|(key, usd)| (key.clone(), usd_to_micros(*usd))).collect();
        Arc::new(Self {
            db,
            cap_micros: AtomicI64::new(usd_to_micros(cap_usd)),
            reject: AtomicBool::new(reject),
            key_caps: RwLock::new(config_key_caps.clone()),
            config_key_caps,
            tasks,
        })
    }

    pub fn db(&self) -> &Database {
        &self.db
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

    fn key_cap(&self, key: &str) -> Option<i64> {
        self.key_caps.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(key).copied()
    }

    /// Sets (or with `None` removes) an API key's daily cap, for every replica.
    pub async fn set_key_cap(&self, key: &str, cap_usd: Option<f64>) -> Result<()> {
        match cap_usd {
            Some(usd) => {
                sqlx::query(
                    "INSERT INTO llm_key_budgets (api_key_id, cap_micros, updated_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (api_key_id) DO UPDATE SET cap_micros = excluded.cap_micros, \
                     updated_at = excluded.updated_at",
                )
                .bind(key)
                .bind(usd_to_micros(usd))
                .bind(micros(chrono::Utc::now()))
                .execute(&self.db.pool)
                .await
                .map_err(db_error)?;
            }
            None => {
                sqlx::query("DELETE FROM llm_key_budgets WHERE api_key_id = $1")
                    .bind(key)
                    .execute(&self.db.pool)
                    .await
                    .map_err(db_error)?;
            }
        }
        self.refresh_key_caps().await
    }

    /// Reads the key caps set through the API (over the configuration's).
    pub async fn refresh_key_caps(&self) -> Result<()> {
        let rows = sqlx::query("SELECT api_key_id, cap_micros FROM llm_key_budgets")
            .fetch_all(&self.db.pool)
            .await
            .map_err(db_error)?;
        let mut caps = self.config_key_caps.clone();
        for row in rows {
            caps.insert(row.try_get("api_key_id").map_err(db_error)?, row.try_get("cap_micros").map_err(db_error)?);
        }
        *self.key_caps.write().unwrap_or_else(std::sync::PoisonError::into_inner) = caps;
        Ok(())
    }

    /// Holds `micros` of today's budget, and of the API key's when a call has one;
    /// `Err` tells which cap it does not fit under.
    pub async fn reserve(&self, micros: i64, key: Option<&str>) -> Result<std::result::Result<Reservation, Refusal>> {
        let day = today();
        let key = key.filter(|k| !k.is_empty());
        let mut scopes = vec![(GLOBAL.to_owned(), self.cap_micros.load(Ordering::Relaxed), Refusal::Global)];
        if let Some(key) = key {
            // a key without a cap is counted all the same, so that a cap set later today holds
            scopes.push((key_scope(key), self.key_cap(key).unwrap_or(i64::MAX), Refusal::Key));
        }
        let reservation = || Reservation { day: day.clone(), micros, key: key.map(str::to_owned) };
        if self.try_reserve(&scopes, &day, micros).await?.is_ok() {
            return Ok(Ok(reservation()));
        }
        // the day's first call (or a full budget): make sure the rows exist, then try once more
        for (scope, _, _) in &scopes {
            sqlx::query(
                "INSERT INTO llm_budget_days (scope, day, spent_micros, reserved_micros, requests) \
                 VALUES ($1, $2, 0, 0, 0) ON CONFLICT (scope, day) DO NOTHING",
            )
            .bind(scope)
            .bind(&day)
            .execute(&self.db.pool)
            .await
            .map_err(db_error)?;
        }
        Ok(self.try_reserve(&scopes, &day, micros).await?.map(|()| reservation()))
    }

    /// Adds `micros` to every scope's reservation in one transaction, or to none.
    async fn try_reserve(
        &self,
        scopes: &[(String, i64, Refusal)],
        day: &str,
        micros: i64,
    ) -> Result<std::result::Result<(), Refusal>> {
        let mut tx = self.db.pool.begin().await.map_err(db_error)?;
        // always the global row first: one lock order for every caller
        for (scope, cap, refusal) in scopes {
            let done = sqlx::query(
                "UPDATE llm_budget_days SET reserved_micros = reserved_micros + $1 \
                 WHERE scope = $2 AND day = $3 AND spent_micros + reserved_micros + $1 <= $4",
            )
            .bind(micros)
            .bind(scope)
            .bind(day)
            .bind(*cap)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            if done.rows_affected() != 1 {
                tx.rollback().await.map_err(db_error)?;
                return Ok(Err(*refusal));
            }
        }
        tx.commit().await.map_err(db_error)?;
        Ok(Ok(()))
    }

    fn scopes_of(reservation: &Reservation) -> Vec<String> {
        std::iter::once(GLOBAL.to_owned()).chain(reservation.key.as_deref().map(key_scope)).collect()
    }

    /// Replaces the reservation by the actual cost and records the call, in one transaction.
    pub async fn settle(&self, reservation: Reservation, record: &UsageRecord) -> Result<()> {
        let mut tx = self.db.pool.begin().await.map_err(db_error)?;
        for scope in Self::scopes_of(&reservation) {
            sqlx::query(
                "UPDATE llm_budget_days SET reserved_micros = reserved_micros - $1, \
                 spent_micros = spent_micros + $2, requests = requests + 1 WHERE scope = $3 AND day = $4",
            )
            .bind(reservation.micros)
            .bind(record.cost_micros)
            .bind(scope)
            .bind(&reservation.day)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        insert_usage(&mut tx, record).await?;
        tx.commit().await.map_err(db_error)
    }

    /// Gives a reservation back (the call failed everywhere, or was cancelled).
    pub async fn release(&self, reservation: Reservation) -> Result<()> {
        let mut tx = self.db.pool.begin().await.map_err(db_error)?;
        for scope in Self::scopes_of(&reservation) {
            sqlx::query(
                "UPDATE llm_budget_days SET reserved_micros = reserved_micros - $1 WHERE scope = $2 AND day = $3",
            )
            .bind(reservation.micros)
            .bind(scope)
            .bind(&reservation.day)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)
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
        let caps = self.key_caps.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut keys = Vec::with_capacity(caps.len());
        for (key, cap) in caps {
            let row = sqlx::query("SELECT spent_micros, requests FROM llm_budget_days WHERE scope = $1 AND day = $2")
                .bind(key_scope(&key))
                .bind(&day)
                .fetch_optional(&self.db.pool)
                .await
                .map_err(db_error)?;
            let (spent_micros, requests) = match row {
                Some(row) => {
                    (row.try_get("spent_micros").map_err(db_error)?, row.try_get("requests").map_err(db_error)?)
                }
                None => (0, 0),
            };
            keys.push(KeySpend { api_key_id: key, cap_micros: Some(cap), spent_micros, requests });
        }
        Ok(Status {
            cap_micros: self.cap_micros.load(Ordering::Relaxed),
            reject: self.rejects(),
            today,
            providers,
            history,
            keys,
        })
    }
}

async fn insert_usage(tx: &mut sqlx::Transaction<'static, sqlx::Any>, r: &UsageRecord) -> Result<()> {
    let now = chrono::Utc::now();
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO llm_usage (id, created_at, day, request_id, caller, provider, model, outcome, \
         prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cost_micros, latency_ms, \
         first_token_ms, streamed, fell_back, downgraded, api_key_id, kind) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
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
    .bind(&r.api_key_id)
    .bind(r.kind)
    .execute(&mut **tx)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// The error of a call the budget refuses: nothing went upstream.
pub fn exceeded(message: String) -> Error {
    Error::new(helix_core::ErrorKind::BudgetExceeded, helix_core::error::BUDGET_EXCEEDED, message)
}
