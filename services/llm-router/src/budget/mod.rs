//! The daily budget and usage records, durable in SQL (SQLite or PostgreSQL).
//!
//! Admission reserves a call's worst-case cost before anything goes upstream, and only
//! while `spent + reserved + worst case ≤ cap`; the decision is made under the row's
//! lock (PostgreSQL `FOR UPDATE`; SQLite's one writer), which makes check-and-add
//! atomic across every replica sharing the table. After the call, the reservation is
//! replaced by the cost the provider's usage gives (settle) or dropped (release), and
//! the usage record is written in the same transaction. So spend passes the cap by at
//! most what one call's actual cost exceeded its reservation (the prompt estimate is
//! deliberately high), never by concurrent admissions. All of these writes go through
//! one writer task that commits what arrived together as one transaction, and most
//! calls take their reservation from what this replica set aside in the database
//! beforehand, without waiting for it ([`writer`]: both, and what they cost).
//!
//! The global cap and action set through the API are stored too (`llm_budget_settings`)
//! and, like the key caps, re-read by every replica every few seconds.
//!
//! A call made with an API key reserves under the key's scope (`key:<id>`) too, in the
//! same transaction, against the key's daily cap (`llm.key_budgets`, or set through
//! `SetBudget`; without one the key's spend is only counted), so a key at its cap is
//! refused on every endpoint whatever the global budget has left.
//!
//! A reservation dropped without settling (a cancelled call) is released by the writer,
//! which at shutdown writes what is waiting and gives back what was set aside. A
//! process killed between reserve and settle leaves its reservation counted until the
//! day ends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use helix_core::{Error, Result};
use helix_runtime::db::{Database, db_error, micros};
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod writer;
use writer::{Allotments, Reserve, Settlement, Write};

pub const GLOBAL: &str = "global";

pub struct Budget {
    db: Database,
    /// the global cap and action of the configuration, until set through the API
    config_cap: (i64, bool),
    cap_micros: AtomicI64,
    reject: AtomicBool,
    /// daily caps per API key id: the configuration's, then the database's over them
    config_key_caps: BTreeMap<String, i64>,
    key_caps: RwLock<BTreeMap<String, i64>>,
    /// to the writer task ([`writer`])
    writes: mpsc::UnboundedSender<Write>,
    /// what this replica has set aside for its next calls
    allotments: Allotments,
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
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let config_key_caps: BTreeMap<String, i64> =
            key_caps_usd.iter().map(|(key, usd)| (key.clone(), usd_to_micros(*usd))).collect();
        let (writes, waiting) = mpsc::unbounded_channel();
        let allotments = Allotments::default();
        tasks.spawn(writer::write_together(db.clone(), allotments.clone(), waiting, shutdown));
        Arc::new(Self {
            db,
            config_cap: (usd_to_micros(cap_usd), reject),
            cap_micros: AtomicI64::new(usd_to_micros(cap_usd)),
            reject: AtomicBool::new(reject),
            key_caps: RwLock::new(config_key_caps.clone()),
            config_key_caps,
            writes,
            allotments,
        })
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    pub fn rejects(&self) -> bool {
        self.reject.load(Ordering::Relaxed)
    }

    /// Sets the global daily cap and what happens past it, for every replica: this one
    /// at once, the others at their next [`refresh_caps`](Self::refresh_caps).
    pub async fn set(&self, cap_usd: Option<f64>, reject: Option<bool>) -> Result<()> {
        if cap_usd.is_none() && reject.is_none() {
            return Ok(());
        }
        let cap = cap_usd.map(usd_to_micros).unwrap_or_else(|| self.cap_micros.load(Ordering::Relaxed));
        let reject = reject.unwrap_or_else(|| self.rejects());
        sqlx::query(
            "INSERT INTO llm_budget_settings (id, cap_micros, reject, updated_at) VALUES (1, $1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET cap_micros = excluded.cap_micros, reject = excluded.reject, \
             updated_at = excluded.updated_at",
        )
        .bind(cap)
        .bind(i64::from(reject))
        .bind(micros(chrono::Utc::now()))
        .execute(&self.db.writer)
        .await
        .map_err(db_error)?;
        self.apply_caps(cap, reject);
        Ok(())
    }

    /// A changed cap gives back what was set aside under the old one, so that a lowered
    /// cap holds at once on this replica.
    fn apply_caps(&self, cap: i64, reject: bool) {
        let before = self.cap_micros.swap(cap, Ordering::Relaxed);
        self.reject.store(reject, Ordering::Relaxed);
        if before != cap {
            self.give_back_allotments();
        }
    }

    /// Takes every allotment out of use at once (the next calls go to the database,
    /// under the new caps) and has the writer give them back.
    fn give_back_allotments(&self) {
        let held = writer::take_all(&self.allotments);
        if !held.is_empty() {
            let _ = self.writes.send(Write::GiveBack(held));
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
                .execute(&self.db.writer)
                .await
                .map_err(db_error)?;
            }
            None => {
                sqlx::query("DELETE FROM llm_key_budgets WHERE api_key_id = $1")
                    .bind(key)
                    .execute(&self.db.writer)
                    .await
                    .map_err(db_error)?;
            }
        }
        self.refresh_caps().await
    }

    /// Reads the caps set through the API, on this replica or another: the global cap
    /// and action, and the key caps (over the configuration's).
    pub async fn refresh_caps(&self) -> Result<()> {
        let row = sqlx::query("SELECT cap_micros, reject FROM llm_budget_settings WHERE id = 1")
            .fetch_optional(&self.db.pool)
            .await
            .map_err(db_error)?;
        let (cap, reject) = match row {
            Some(row) => (
                row.try_get::<i64, _>("cap_micros").map_err(db_error)?,
                row.try_get::<i64, _>("reject").map_err(db_error)? != 0,
            ),
            None => self.config_cap,
        };
        self.apply_caps(cap, reject);
        let rows = sqlx::query("SELECT api_key_id, cap_micros FROM llm_key_budgets")
            .fetch_all(&self.db.pool)
            .await
            .map_err(db_error)?;
        let mut caps = self.config_key_caps.clone();
        for row in rows {
            caps.insert(row.try_get("api_key_id").map_err(db_error)?, row.try_get("cap_micros").map_err(db_error)?);
        }
        let mut held = self.key_caps.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *held != caps {
            *held = caps;
            self.give_back_allotments();
        }
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
        if writer::take_allotted(&self.allotments, &self.writes, &scopes, &day, micros) {
            return Ok(Ok(reservation()));
        }
        let (answer, answered) = oneshot::channel();
        let write = Write::Reserve(Reserve { day: day.clone(), micros, scopes, answer });
        let stopping = || Error::unavailable("the llm-router is stopping");
        self.writes.send(write).map_err(|_| stopping())?;
        let fits = answered.await.map_err(|_| stopping())??;
        Ok(fits.map(|()| reservation()))
    }

    /// Gives a reservation back (the call failed everywhere, or was cancelled). Written
    /// with the next batch; nothing waits for it.
    pub fn release_later(&self, reservation: Reservation) {
        self.send_settlement(Settlement { reservation: Some(reservation), record: None });
    }

    /// Replaces the reservation (if any) by the record's cost and stores the record, in
    /// the next batch's transaction; nothing waits for it.
    pub fn settle_later(&self, reservation: Option<Reservation>, record: UsageRecord) {
        self.send_settlement(Settlement { reservation, record: Some(record) });
    }

    fn scopes_of(reservation: &Reservation) -> Vec<String> {
        std::iter::once(GLOBAL.to_owned()).chain(reservation.key.as_deref().map(key_scope)).collect()
    }

    fn send_settlement(&self, settlement: Settlement) {
        if self.writes.send(Write::Settle(Box::new(settlement))).is_err() {
            tracing::warn!("the llm-router stopped before a call's cost could be settled");
        }
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

/// The error of a call the budget refuses: nothing went upstream.
pub fn exceeded(message: String) -> Error {
    Error::new(helix_core::ErrorKind::BudgetExceeded, helix_core::error::BUDGET_EXCEEDED, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use helix_runtime::config::HelixConfig;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn record(cost_micros: i64) -> UsageRecord {
        UsageRecord {
            request_id: uuid::Uuid::now_v7().to_string(),
            caller: "test".into(),
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            outcome: "ok".into(),
            api_key_id: String::new(),
            kind: "chat",
            usage: crate::types::Usage::default(),
            cost_micros,
            latency_ms: 1,
            first_token_ms: 1,
            streamed: false,
            fell_back: false,
            downgraded: false,
        }
    }

    /// Two replicas sharing one PostgreSQL schema, 1,000 calls at once on each against a
    /// cap that holds 1,000 of them: together they never admit more than the cap, the
    /// allotments let most calls through without a round trip yet leave few unused at the
    /// end, and once the calls are settled and the replicas stopped nothing is left
    /// reserved (every allotment went back). Then a cap lowered through one replica holds
    /// on it at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_never_admit_past_the_cap_and_give_back_what_they_set_aside() -> TestResult {
        const CALL: i64 = 1_000;
        const CAP_USD: f64 = 1.0; // 1,000 calls
        let url = std::env::var("HELIX_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let config = HelixConfig { database_url: Some(url), ..HelixConfig::default() };
        let service = format!("llm_budget_{}", uuid::Uuid::now_v7().simple());
        let db = Database::connect(&config, &service).await?;
        db.migrate(&crate::SQLITE, &crate::POSTGRES).await?;
        let replicas: Vec<_> = (0..2)
            .map(|_| {
                let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
                let budget = Budget::new(db.clone(), CAP_USD, true, &BTreeMap::new(), &tasks, shutdown.clone());
                (budget, tasks, shutdown)
            })
            .collect();

        let calls = (0..2000).map(|i| {
            let budget = replicas[i % 2].0.clone();
            async move { budget.reserve(CALL, None).await }
        });
        let outcomes = futures::future::join_all(calls).await;
        let mut admitted = Vec::new();
        for outcome in outcomes {
            match outcome? {
                Ok(reservation) => admitted.push(reservation),
                Err(refusal) => assert_eq!(refusal, Refusal::Global),
            }
        }
        let cap_calls = (usd_to_micros(CAP_USD) / CALL) as usize;
        assert!(admitted.len() <= cap_calls, "{} admitted under a cap of {cap_calls}", admitted.len());
        assert!(admitted.len() >= cap_calls * 9 / 10, "only {} of {cap_calls} admitted", admitted.len());

        let n = admitted.len() as i64;
        for (i, reservation) in admitted.into_iter().enumerate() {
            replicas[i % 2].0.settle_later(Some(reservation), record(CALL));
        }
        for (_, tasks, shutdown) in &replicas {
            shutdown.cancel();
            tasks.close();
            tasks.wait().await;
        }
        let today = &replicas[0].0.status(1).await?.today;
        assert_eq!((today.spent_micros, today.reserved_micros, today.requests), (n * CALL, 0, n));

        // a replica that lowers the cap refuses at once, though it had money set aside
        let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let budget = Budget::new(db.clone(), 100.0, true, &BTreeMap::new(), &tasks, shutdown.clone());
        budget.refresh_caps().await?;
        assert!(budget.reserve(CALL, None).await?.is_ok(), "the day's 100 USD has room");
        budget.set(Some(0.0), None).await?;
        assert_eq!(budget.reserve(CALL, None).await?.err(), Some(Refusal::Global));
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;

        let schema = format!("helix_{service}");
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&db.pool).await?;
        Ok(())
    }
}
