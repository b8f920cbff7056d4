//! Per-provider health: a circuit breaker and the observed latency.
//!
//! Closed: calls go through; `failures` consecutive health failures (5xx, timeouts,
//! refused connections, broken answers) open it. Open: calls skip the provider until
//! `cooldown` has passed; then one probe call goes through (half-open) — its success
//! closes the circuit, its failure opens it for another cooldown. Client errors (4xx)
//! say nothing about the provider's health and are not counted.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// the probe is out; nobody else may call until it returns
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive: u32,
    /// exponentially weighted mean latency of successful calls, in ms
    latency_ms: Option<f64>,
    last_error: String,
}

#[derive(Debug)]
pub struct Health {
    inner: Mutex<Inner>,
    failures: u32,
    cooldown: Duration,
}

/// Whether a call may go to the provider now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// this call is the half-open probe
    Probe,
    No,
}

impl Health {
    pub fn new(failures: u32, cooldown: Duration) -> Self {
        let inner = Inner { state: State::Closed, consecutive: 0, latency_ms: None, last_error: String::new() };
        Self { inner: Mutex::new(inner), failures: failures.max(1), cooldown }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn admit(&self) -> Admit {
        let mut inner = self.lock();
        match inner.state {
            State::Closed => Admit::Yes,
            State::Open { until } if Instant::now() >= until => {
                inner.state = State::HalfOpen;
                Admit::Probe
            }
            State::Open { .. } | State::HalfOpen => Admit::No,
        }
    }

    pub fn success(&self, latency: Duration) {
        let mut inner = self.lock();
        inner.state = State::Closed;
        inner.consecutive = 0;
        let ms = latency.as_secs_f64() * 1000.0;
        inner.latency_ms = Some(inner.latency_ms.map_or(ms, |mean| 0.8 * mean + 0.2 * ms));
    }

    /// A failure that says the provider is unwell.
    pub fn failure(&self, error: &str) {
        let mut inner = self.lock();
        inner.last_error = error.to_owned();
        inner.consecutive += 1;
        if inner.state == State::HalfOpen || inner.consecutive >= self.failures {
            inner.state = State::Open { until: Instant::now() + self.cooldown };
        }
    }

    /// A call that ended without telling anything about health (a client error, a
    /// cancelled call): a probe that ends so lets the next call probe again.
    pub fn neutral(&self, error: Option<&str>) {
        let mut inner = self.lock();
        if let Some(error) = error {
            inner.last_error = error.to_owned();
        }
        if inner.state == State::HalfOpen {
            inner.state = State::Open { until: Instant::now() };
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.lock().state, State::Open { until } if Instant::now() < until)
    }

    pub fn latency_ms(&self) -> Option<f64> {
        self.lock().latency_ms
    }

    pub fn last_error(&self) -> String {
        self.lock().last_error.clone()
    }

    /// `healthy`, `degraded` (recent failures), `down` (open) or `unknown` (never called)
    pub fn status(&self) -> &'static str {
        let inner = self.lock();
        match inner.state {
            State::Open { .. } | State::HalfOpen => "down",
            State::Closed if inner.consecutive > 0 => "degraded",
            State::Closed if inner.latency_ms.is_none() => "unknown",
            State::Closed => "healthy",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_then_probes_once() {
        let health = Health::new(2, Duration::from_millis(30));
        health.failure("boom");
        assert_eq!(health.admit(), Admit::Yes, "one failure of two");
        health.failure("boom");
        assert_eq!(health.admit(), Admit::No, "open");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(health.admit(), Admit::Probe);
        assert_eq!(health.admit(), Admit::No, "only one probe at a time");
        health.failure("still down");
        assert_eq!(health.admit(), Admit::No, "a failed probe opens it again");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(health.admit(), Admit::Probe);
        health.success(Duration::from_millis(5));
        assert_eq!(health.admit(), Admit::Yes, "a good probe closes it");
        assert_eq!(health.status(), "healthy");
    }
}
