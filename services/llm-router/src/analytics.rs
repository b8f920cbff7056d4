//! The usage records (`llm_usage`, one row per finished call) queried and summed in
//! SQL, the same statements on SQLite and PostgreSQL: sums and counts by GROUP BY,
//! time buckets by integer division of the microsecond timestamps, percentiles by
//! `ORDER BY ... LIMIT 1 OFFSET n`.

use helix_core::{Error, Result};
use helix_runtime::db::{Database, db_error};
use sqlx::Row;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;

/// Sums over a set of usage records.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub requests: i64,
    /// calls that failed (the budget's refusals not counted)
    pub errors: i64,
    /// calls the budget refused
    pub refused: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_micros: i64,
    pub latency_ms_sum: i64,
    pub first_token_ms_sum: i64,
    pub streamed: i64,
    pub fallbacks: i64,
    pub downgrades: i64,
    /// microseconds; 0 for no record
    pub last_at: i64,
}

impl Totals {
    pub fn tokens(&self) -> i64 {
        self.prompt_tokens + self.completion_tokens
    }

    pub fn mean_latency_ms(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.latency_ms_sum as f64 / self.requests as f64 }
    }

    pub fn mean_first_token_ms(&self) -> f64 {
        if self.streamed == 0 { 0.0 } else { self.first_token_ms_sum as f64 / self.streamed as f64 }
    }

    fn from_row(row: &AnyRow) -> std::result::Result<Self, sqlx::Error> {
        Ok(Self {
            requests: row.try_get("requests")?,
            errors: row.try_get("errors")?,
            refused: row.try_get("refused")?,
            prompt_tokens: row.try_get("prompt_tokens")?,
            completion_tokens: row.try_get("completion_tokens")?,
            cost_micros: row.try_get("cost_micros")?,
            latency_ms_sum: row.try_get("latency_ms_sum")?,
            first_token_ms_sum: row.try_get("first_token_ms_sum")?,
            streamed: row.try_get("streamed")?,
            fallbacks: row.try_get("fallbacks")?,
            downgrades: row.try_get("downgrades")?,
            last_at: row.try_get("last_at")?,
        })
    }
}

const TOTALS: &str = "COUNT(*) AS requests, \
    COALESCE(CAST(SUM(CASE WHEN outcome IN ('ok', 'budget') THEN 0 ELSE 1 END) AS BIGINT), 0) AS errors, \
    COALESCE(CAST(SUM(CASE WHEN outcome = 'budget' THEN 1 ELSE 0 END) AS BIGINT), 0) AS refused, \
    COALESCE(CAST(SUM(prompt_tokens) AS BIGINT), 0) AS prompt_tokens, \
    COALESCE(CAST(SUM(completion_tokens) AS BIGINT), 0) AS completion_tokens, \
    COALESCE(CAST(SUM(cost_micros) AS BIGINT), 0) AS cost_micros, \
    COALESCE(CAST(SUM(latency_ms) AS BIGINT), 0) AS latency_ms_sum, \
    COALESCE(CAST(SUM(CASE WHEN streamed = 1 THEN first_token_ms ELSE 0 END) AS BIGINT), 0) AS first_token_ms_sum, \
    COALESCE(CAST(SUM(streamed) AS BIGINT), 0) AS streamed, \
    COALESCE(CAST(SUM(fell_back) AS BIGINT), 0) AS fallbacks, \
    COALESCE(CAST(SUM(downgraded) AS BIGINT), 0) AS downgrades, \
    COALESCE(MAX(created_at), 0) AS last_at";

/// Which records: a time window `[start, end)` in microseconds and equality filters.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub api_key_id: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub day: Option<String>,
}

enum Bind {
    Text(String),
    Int(i64),
}

/// A WHERE clause and its parameters, numbered from $1.
struct Where {
    clauses: Vec<String>,
    binds: Vec<Bind>,
}

impl Where {
    fn of(filter: &Filter) -> Self {
        let mut w = Where { clauses: Vec::new(), binds: Vec::new() };
        if let Some(start) = filter.start {
            w.push("created_at >=", Bind::Int(start));
        }
        if let Some(end) = filter.end {
            w.push("created_at <", Bind::Int(end));
        }
        for (column, value) in [
            ("api_key_id", &filter.api_key_id),
            ("provider", &filter.provider),
            ("model", &filter.model),
            ("day", &filter.day),
        ] {
            if let Some(value) = value {
                w.push(&format!("{column} ="), Bind::Text(value.clone()));
            }
        }
        w
    }

    fn push(&mut self, condition: &str, bind: Bind) {
        self.binds.push(bind);
        self.clauses.push(format!("{condition} ${}", self.binds.len()));
    }

    /// The next parameter's placeholder, for what a statement adds after the clause.
    fn next(&self, offset: usize) -> String {
        format!("${}", self.binds.len() + offset)
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() { String::new() } else { format!(" WHERE {}", self.clauses.join(" AND ")) }
    }

    fn bind<'q>(&'q self, mut query: Query<'q, sqlx::Any, AnyArguments<'q>>) -> Query<'q, sqlx::Any, AnyArguments<'q>> {
        for bind in &self.binds {
            query = match bind {
                Bind::Text(text) => query.bind(text.as_str()),
                Bind::Int(n) => query.bind(*n),
            };
        }
        query
    }
}

pub async fn totals(db: &Database, filter: &Filter) -> Result<Totals> {
    let w = Where::of(filter);
    let sql = format!("SELECT {TOTALS} FROM llm_usage{}", w.sql());
    let row = w.bind(sqlx::query(&sql)).fetch_one(&db.pool).await.map_err(db_error)?;
    Totals::from_row(&row).map_err(db_error)
}

/// The latency below which a fraction `p` of the records fall (nearest rank).
pub async fn latency_percentile(db: &Database, filter: &Filter, requests: i64, p: f64) -> Result<f64> {
    if requests == 0 {
        return Ok(0.0);
    }
    let w = Where::of(filter);
    let offset = ((requests - 1) as f64 * p).round() as i64;
    let sql = format!("SELECT latency_ms FROM llm_usage{} ORDER BY latency_ms LIMIT 1 OFFSET {}", w.sql(), w.next(1));
    let row = w.bind(sqlx::query(&sql)).bind(offset).fetch_optional(&db.pool).await.map_err(db_error)?;
    Ok(match row {
        Some(row) => row.try_get::<i64, _>("latency_ms").map_err(db_error)? as f64,
        None => 0.0,
    })
}

/// What records can be grouped by: the name a caller gives, and the column.
pub fn group_column(name: &str) -> Result<&'static str> {
    Ok(match name {
        "" | "model" => "model",
        "provider" => "provider",
        "caller" => "caller",
        "key" | "api_key" | "api_key_id" => "api_key_id",
        "kind" => "kind",
        "day" => "day",
        other => {
            return Err(Error::invalid(
                "invalid_group_by",
                format!("group_by {other:?} is not provider, model, caller, key, kind or day"),
            ));
        }
    })
}

/// Totals per value of `column` (from [`group_column`]), most tokens first.
pub async fn grouped(db: &Database, filter: &Filter, column: &'static str) -> Result<Vec<(String, Totals)>> {
    let w = Where::of(filter);
    let sql = format!(
        "SELECT {column} AS grouped, {TOTALS} FROM llm_usage{} GROUP BY {column} \
         ORDER BY COALESCE(SUM(prompt_tokens + completion_tokens), 0) DESC, {column}",
        w.sql()
    );
    let rows = w.bind(sqlx::query(&sql)).fetch_all(&db.pool).await.map_err(db_error)?;
    rows.iter()
        .map(|row| Ok((row.try_get("grouped")?, Totals::from_row(row)?)))
        .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
        .map_err(db_error)
}

/// Totals per bucket of `width` microseconds from `filter.start`; buckets without a
/// record are absent (the caller fills them).
pub async fn buckets(db: &Database, filter: &Filter, width: i64) -> Result<Vec<(i64, Totals)>> {
    let start = filter.start.unwrap_or(0);
    let w = Where::of(filter);
    let sql = format!(
        "SELECT (created_at - {}) / {} AS bucket, {TOTALS} FROM llm_usage{} GROUP BY 1 ORDER BY 1",
        w.next(1),
        w.next(2),
        w.sql()
    );
    // the bucket's parameters come after the WHERE clause's in number, but first in
    // the text: bind the clause's, then them
    let rows = w.bind(sqlx::query(&sql)).bind(start).bind(width.max(1)).fetch_all(&db.pool).await.map_err(db_error)?;
    rows.iter()
        .map(|row| Ok((row.try_get("bucket")?, Totals::from_row(row)?)))
        .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
        .map_err(db_error)
}

/// One usage record as stored.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: String,
    pub created_at: i64,
    pub day: String,
    pub request_id: String,
    pub caller: String,
    pub api_key_id: String,
    pub provider: String,
    pub model: String,
    pub outcome: String,
    pub kind: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_micros: i64,
    pub latency_ms: i64,
    pub streamed: bool,
    pub fell_back: bool,
    pub downgraded: bool,
}

/// The newest `limit` records that match.
pub async fn records(db: &Database, filter: &Filter, limit: u32) -> Result<Vec<Record>> {
    let w = Where::of(filter);
    let sql = format!(
        "SELECT id, created_at, day, request_id, caller, api_key_id, provider, model, outcome, kind, \
         prompt_tokens, completion_tokens, cost_micros, latency_ms, streamed, fell_back, downgraded \
         FROM llm_usage{} ORDER BY id DESC LIMIT {}",
        w.sql(),
        w.next(1)
    );
    let rows = w.bind(sqlx::query(&sql)).bind(i64::from(limit)).fetch_all(&db.pool).await.map_err(db_error)?;
    rows.iter()
        .map(|row| {
            Ok(Record {
                id: row.try_get("id")?,
                created_at: row.try_get("created_at")?,
                day: row.try_get("day")?,
                request_id: row.try_get("request_id")?,
                caller: row.try_get("caller")?,
                api_key_id: row.try_get("api_key_id")?,
                provider: row.try_get("provider")?,
                model: row.try_get("model")?,
                outcome: row.try_get("outcome")?,
                kind: row.try_get("kind")?,
                prompt_tokens: row.try_get("prompt_tokens")?,
                completion_tokens: row.try_get("completion_tokens")?,
                cost_micros: row.try_get("cost_micros")?,
                latency_ms: row.try_get("latency_ms")?,
                streamed: row.try_get::<i64, _>("streamed")? != 0,
                fell_back: row.try_get::<i64, _>("fell_back")? != 0,
                downgraded: row.try_get::<i64, _>("downgraded")? != 0,
            })
        })
        .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
        .map_err(db_error)
}
