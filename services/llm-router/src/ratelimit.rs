//! Per-provider request limits, enforced before any request goes upstream.
//!
//! Each provider with a limit has two token buckets: the minute bucket holds `burst`
//! tokens (default: the per-minute limit) and refills at `requests_per_minute` per
//! minute; the hour bucket holds `requests_per_hour` and refills at that rate per hour.
//! Every upstream attempt (retries included) takes one token from both; when either is
//! empty the attempt is not made and the wait until a token is back becomes the
//! answer's `Retry-After`.
//!
//! The limits come from the configuration (`[llm.providers.<name>]
//! requests_per_minute`, ...) and are overridden at run time through `SetRateLimit`,
//! which writes them to `llm_rate_limits`; every replica reads that table at start and
//! then every few seconds, so replicas agree on the limits. The buckets themselves are
//! per replica: N replicas let through up to N times a limit.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use helix_core::Result;
use helix_runtime::db::{Database, db_error, micros};
use sqlx::Row;

/// How often a replica reads the limits others may have changed.
pub const REFRESH: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limit {
    pub per_minute: u32,
    pub per_hour: u32,
    pub burst: u32,
}

impl Limit {
    fn minute_capacity(&self) -> u32 {
        if self.burst > 0 { self.burst } else { self.per_minute }
    }
}

/// Where a provider's limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Config,
    Api,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Api => "api",
        }
    }
}

#[derive(Debug)]
struct Bucket {
    capacity: f64,
    tokens: f64,
    per_second: f64,
}

impl Bucket {
    fn new(capacity: u32, per_second: f64) -> Option<Self> {
        (capacity > 0 && per_second > 0.0).then(|| Self {
            capacity: f64::from(capacity),
            tokens: f64::from(capacity),
            per_second,
        })
    }

    fn refill(&mut self, seconds: f64) {
        self.tokens = (self.tokens + seconds * self.per_second).min(self.capacity);
    }

    /// How long until one token is there.
    fn wait(&self) -> Duration {
        if self.tokens >= 1.0 { Duration::ZERO } else { Duration::from_secs_f64((1.0 - self.tokens) / self.per_second) }
    }
}

#[derive(Debug)]
struct State {
    limit: Limit,
    default: Limit,
    source: Source,
    minute: Option<Bucket>,
    hour: Option<Bucket>,
    at: Instant,
}

impl State {
    fn new(limit: Limit, default: Limit, source: Source, now: Instant) -> Self {
        Self {
            limit,
            default,
            source,
            minute: Bucket::new(limit.minute_capacity(), f64::from(limit.per_minute) / 60.0),
            hour: Bucket::new(limit.per_hour, f64::from(limit.per_hour) / 3600.0),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let seconds = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        for bucket in [&mut self.minute, &mut self.hour].into_iter().flatten() {
            bucket.refill(seconds);
        }
    }

    fn buckets(&self) -> impl Iterator<Item = &Bucket> {
        self.minute.iter().chain(self.hour.iter())
    }
}

/// A provider's limit as reported.
#[derive(Debug, Clone)]
pub struct Report {
    pub limit: Limit,
    pub source: Source,
    /// requests that may go now; `None` without a limit
    pub available: Option<u32>,
}

/// The buckets of every provider, by the router's provider index.
pub struct RateLimiter {
    providers: Vec<Mutex<State>>,
}

impl RateLimiter {
    /// `defaults`: the configured limit of each provider, by index.
    pub fn new(defaults: Vec<Limit>) -> Self {
        let now = Instant::now();
        Self { providers: defaults.into_iter().map(|d| Mutex::new(State::new(d, d, Source::Config, now))).collect() }
    }

    fn state(&self, provider: usize) -> std::sync::MutexGuard<'_, State> {
        self.providers[provider].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a token for one request to `provider`, or tells how long until one is back.
    pub fn take(&self, provider: usize) -> std::result::Result<(), Duration> {
        self.take_at(provider, Instant::now())
    }

    fn take_at(&self, provider: usize, now: Instant) -> std::result::Result<(), Duration> {
        let mut guard = self.state(provider);
        let state = &mut *guard;
        state.refill(now);
        let wait = state.buckets().map(Bucket::wait).max().unwrap_or(Duration::ZERO);
        if wait > Duration::ZERO {
            return Err(wait);
        }
        for bucket in [&mut state.minute, &mut state.hour].into_iter().flatten() {
            bucket.tokens -= 1.0;
        }
        Ok(())
    }

    /// Sets a provider's limit (`None`: back to the configured one). Unchanged limits
    /// keep their buckets; a changed one starts full.
    pub fn set(&self, provider: usize, limit: Option<Limit>) {
        let mut state = self.state(provider);
        let (limit, source) = match limit {
            Some(limit) => (limit, Source::Api),
            None => (state.default, Source::Config),
        };
        if state.limit != limit || state.source != source {
            *state = State::new(limit, state.default, source, Instant::now());
        }
    }

    pub fn report(&self, provider: usize) -> Report {
        let mut state = self.state(provider);
        state.refill(Instant::now());
        let available = state.buckets().map(|b| b.tokens.floor().max(0.0) as u32).min();
        Report { limit: state.limit, source: state.source, available }
    }
}

/// The limits set through the API, by provider name.
pub async fn load(db: &Database) -> Result<Vec<(String, Limit)>> {
    let rows = sqlx::query("SELECT provider, requests_per_minute, requests_per_hour, burst FROM llm_rate_limits")
        .fetch_all(&db.pool)
        .await
        .map_err(db_error)?;
    let as_u32 = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("provider")?,
                Limit {
                    per_minute: as_u32(row.try_get("requests_per_minute")?),
                    per_hour: as_u32(row.try_get("requests_per_hour")?),
                    burst: as_u32(row.try_get("burst")?),
                },
            ))
        })
        .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
        .map_err(db_error)
}

pub async fn save(db: &Database, provider: &str, limit: Limit) -> Result<()> {
    sqlx::query(
        "INSERT INTO llm_rate_limits (provider, requests_per_minute, requests_per_hour, burst, updated_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (provider) DO UPDATE SET \
         requests_per_minute = excluded.requests_per_minute, requests_per_hour = excluded.requests_per_hour, \
         burst = excluded.burst, updated_at = excluded.updated_at",
    )
    .bind(provider)
    .bind(i64::from(limit.per_minute))
    .bind(i64::from(limit.per_hour))
    .bind(i64::from(limit.burst))
    .bind(micros(chrono::Utc::now()))
    .execute(&db.writer)
    .await
    .map_err(db_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (limit, seconds since the start of each request, expected: Ok or the wait in whole seconds)
    #[test]
    fn buckets() {
        let per_minute = |n, burst| Limit { per_minute: n, per_hour: 0, burst };
        type Requests = Vec<(f64, std::result::Result<(), u64>)>;
        let cases: Vec<(Limit, Requests)> = vec![
            (Limit::default(), vec![(0.0, Ok(())), (0.0, Ok(())), (0.0, Ok(()))]),
            (per_minute(2, 0), vec![(0.0, Ok(())), (0.0, Ok(())), (0.0, Err(30)), (30.0, Ok(())), (30.0, Err(30))]),
            (per_minute(60, 3), vec![(0.0, Ok(())), (0.0, Ok(())), (0.0, Ok(())), (0.0, Err(1)), (1.0, Ok(()))]),
            (
                Limit { per_minute: 60, per_hour: 2, burst: 0 },
                vec![(0.0, Ok(())), (0.0, Ok(())), (10.0, Err(1790)), (1810.0, Ok(()))],
            ),
        ];
        for (limit, requests) in cases {
            let limiter = RateLimiter::new(vec![limit]);
            let start = limiter.state(0).at;
            for (i, (at, expected)) in requests.into_iter().enumerate() {
                let got =
                    limiter.take_at(0, start + Duration::from_secs_f64(at)).map_err(|w| w.as_secs_f64().round() as u64);
                assert_eq!(got, expected, "{limit:?}, request {i} at {at} s");
            }
        }
    }

    #[test]
    fn a_changed_limit_starts_full_and_none_restores_the_default() {
        let limiter = RateLimiter::new(vec![Limit { per_minute: 1, per_hour: 0, burst: 0 }]);
        assert!(limiter.take(0).is_ok());
        assert!(limiter.take(0).is_err());
        limiter.set(0, Some(Limit { per_minute: 1, per_hour: 0, burst: 0 }));
        assert!(limiter.take(0).is_ok(), "changed source: new buckets");
        limiter.set(0, Some(Limit { per_minute: 1, per_hour: 0, burst: 0 }));
        assert!(limiter.take(0).is_err(), "the same limit keeps its buckets");
        limiter.set(0, Some(Limit::default()));
        assert_eq!(limiter.report(0).available, None);
        limiter.set(0, None);
        assert_eq!((limiter.report(0).source, limiter.report(0).limit.per_minute), (Source::Config, 1));
    }
}
