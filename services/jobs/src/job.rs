//! A job and its rules: states, what an enqueue may ask for, and the retry backoff.

use std::time::Duration;

use chrono::{DateTime, Utc};
use helix_core::{Error, Result};
use serde_json::{Map, Value};
use uuid::Uuid;

pub const DEFAULT_QUEUE: &str = "default";
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const MAX_MAX_ATTEMPTS: u32 = 100;
pub const DEFAULT_TIMEOUT_SECS: u32 = 300;
pub const MAX_TIMEOUT_SECS: u32 = 86_400;
/// A lease lasts this long unless the worker asks otherwise; its heartbeats (every 5 s
/// by default) keep extending it, so a worker that dies is noticed within 15 s.
pub const DEFAULT_LEASE_SECS: u32 = 15;
pub const MAX_LEASE_SECS: u32 = 3600;
pub const MAX_LEASE_BATCH: u32 = 1000;
pub const MAX_LEASE_WAIT_MS: u32 = 30_000;
pub const MAX_HEARTBEAT_WAIT_MS: u32 = 10_000;
/// Jobs one bulk enqueue holds at most.
pub const MAX_BULK: usize = 1000;
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
const MAX_NAME_CHARS: usize = 64;
const MAX_KEY_CHARS: usize = 256;
const MAX_ERROR_CHARS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// waiting for a worker, from `run_at` on
    Pending,
    /// leased by a worker
    Running,
    Completed,
    /// an attempt failed; waiting for its retry at `run_at`
    Failed,
    /// out of attempts: the dead-letter queue
    Dead,
    Cancelled,
}

impl State {
    pub const ALL: [State; 6] =
        [State::Pending, State::Running, State::Completed, State::Failed, State::Dead, State::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Completed => "completed",
            State::Failed => "failed",
            State::Dead => "dead",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        State::ALL.into_iter().find(|s| s.as_str() == text).ok_or_else(|| {
            Error::invalid(
                "invalid_state",
                format!("state must be one of pending, running, completed, failed, dead, cancelled, not {text:?}"),
            )
        })
    }

    /// Finished for good: only these may be purged.
    pub fn is_final(self) -> bool {
        matches!(self, State::Completed | State::Dead | State::Cancelled)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: Uuid,
    pub kind: String,
    pub queue: String,
    pub payload: Map<String, Value>,
    pub state: State,
    pub priority: i32,
    pub retries: u32,
    pub max_attempts: u32,
    /// leases so far; the fencing token of the current one
    pub attempt: u32,
    pub last_error: String,
    pub result: Option<Map<String, Value>>,
    pub timeout_secs: u32,
    pub idempotency_key: Option<String>,
    pub schedule_id: Option<Uuid>,
    pub worker_id: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    pub progress: f64,
    pub progress_message: String,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// An enqueue as asked for, before its rules are checked.
#[derive(Debug, Clone, Default)]
pub struct JobDraft {
    pub kind: String,
    pub queue: String,
    /// JSON text of an object; empty means `{}`
    pub payload: String,
    pub priority: i32,
    pub max_attempts: Option<u32>,
    pub run_at: Option<DateTime<Utc>>,
    pub timeout_secs: Option<u32>,
    pub idempotency_key: String,
    pub schedule_id: Option<Uuid>,
}

/// An enqueue that follows the rules.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    pub queue: String,
    pub payload: Map<String, Value>,
    pub priority: i32,
    pub max_attempts: u32,
    pub run_at: Option<DateTime<Utc>>,
    pub timeout_secs: u32,
    pub idempotency_key: Option<String>,
    pub schedule_id: Option<Uuid>,
}

impl JobDraft {
    pub fn validate(self) -> Result<NewJob> {
        validate_kind(&self.kind)?;
        let queue = if self.queue.is_empty() { DEFAULT_QUEUE.to_owned() } else { self.queue };
        validate_queue(&queue)?;
        let payload = parse_object(&self.payload, "invalid_payload", "payload")?;
        let max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=MAX_MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(Error::invalid(
                "invalid_max_attempts",
                format!("max_attempts must be from 1 to {MAX_MAX_ATTEMPTS}"),
            ));
        }
        let timeout_secs = self.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if !(1..=MAX_TIMEOUT_SECS).contains(&timeout_secs) {
            return Err(Error::invalid(
                "invalid_timeout",
                format!("timeout_secs must be from 1 to {MAX_TIMEOUT_SECS}"),
            ));
        }
        if let Some(at) = self.run_at {
            validate_time("run_at", at).map_err(|message| Error::invalid("invalid_run_at", message))?;
        }
        let idempotency_key = Some(self.idempotency_key).filter(|k| !k.is_empty());
        if idempotency_key.as_ref().is_some_and(|k| k.chars().count() > MAX_KEY_CHARS) {
            return Err(Error::invalid(
                "invalid_idempotency_key",
                format!("idempotency_key is at most {MAX_KEY_CHARS} characters"),
            ));
        }
        Ok(NewJob {
            kind: self.kind,
            queue,
            payload,
            priority: self.priority,
            max_attempts,
            run_at: self.run_at,
            timeout_secs,
            idempotency_key,
            schedule_id: self.schedule_id,
        })
    }
}

/// Times a job may carry: from the Unix epoch (times are stored as microseconds since
/// it, and nothing a job does predates it) to the end of year 9999, the last one RFC 3339
/// writes with four digits and the last one common clients read back (Python's
/// `datetime`, SQL `timestamp` columns); a year like -262143 is a typo or a probe, not
/// a plan. A past time within the range just means "now".
pub fn validate_time(field: &str, at: DateTime<Utc>) -> std::result::Result<(), String> {
    // 9999-12-31T23:59:59Z
    const LAST_SECOND: i64 = 253_402_300_799;
    match (0..=LAST_SECOND).contains(&at.timestamp()) {
        true => Ok(()),
        false => Err(format!("{field} must be from 1970-01-01 to 9999-12-31 (UTC), not {}", at.to_rfc3339())),
    }
}

/// `echo`, `sleep`, `http.request`, `source.poll`: 1-64 characters of a-z 0-9 . _ -
pub fn validate_kind(kind: &str) -> Result<()> {
    let ok = !kind.is_empty()
        && kind.len() <= MAX_NAME_CHARS
        && kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("invalid_kind", format!("kind must be 1-{MAX_NAME_CHARS} characters of a-z 0-9 . _ -")))
    }
}

/// 1-64 characters of A-Z a-z 0-9 . _ -
pub fn validate_queue(queue: &str) -> Result<()> {
    let ok = !queue.is_empty()
        && queue.len() <= MAX_NAME_CHARS
        && queue.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_queue",
            format!("queue must be 1-{MAX_NAME_CHARS} characters of A-Z a-z 0-9 . _ -"),
        ))
    }
}

/// A JSON object given as text (empty is `{}`), at most [`MAX_PAYLOAD_BYTES`].
pub fn parse_object(text: &str, code: &'static str, what: &str) -> Result<Map<String, Value>> {
    if text.is_empty() {
        return Ok(Map::new());
    }
    if text.len() > MAX_PAYLOAD_BYTES {
        return Err(Error::invalid(code, format!("{what} is {} bytes, the limit is {MAX_PAYLOAD_BYTES}", text.len())));
    }
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Error::invalid(code, format!("{what} must be a JSON object"))),
    }
}

/// A worker's error text as stored: bounded, so a huge stack trace cannot bloat the row.
pub fn clip_error(error: &str) -> String {
    error.chars().take(MAX_ERROR_CHARS).collect()
}

/// How long a job waits after its `retries`-th failed attempt (1, 2, ...):
/// `min(5·2^(retries−1), 3600)` s, spread ±10% so jobs that failed together (a
/// dependency was down) do not all come back at the same instant.
pub fn backoff(retries: u32) -> Duration {
    let exponent = retries.saturating_sub(1).min(20);
    let base = (5u64 << exponent).min(3600) as f64;
    let jitter = 0.9 + 0.2 * rand::random::<f64>();
    Duration::from_secs_f64(base * jitter)
}

pub fn parse_job_id(id: &str) -> Result<Uuid> {
    Uuid::try_parse(id).map_err(|_| {
        Error::invalid("invalid_id", format!("'{}' is not a job id (a UUID)", id.chars().take(64).collect::<String>()))
    })
}

/// The refusal of a worker that no longer holds a job's lease.
pub fn lease_lost(id: Uuid, attempt: u32, job: Option<(State, u32)>) -> Error {
    let now = match job {
        Some((state, current)) => format!("the job is {} at attempt {current}", state.as_str()),
        None => "the job is gone".to_owned(),
    };
    Error::failed_precondition("lease_lost", format!("attempt {attempt} of job {id} no longer holds its lease: {now}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_five_seconds_up_to_an_hour_with_ten_percent_jitter() {
        for (retries, base) in [(1, 5.0), (2, 10.0), (3, 20.0), (8, 640.0), (11, 3600.0), (64, 3600.0)] {
            for _ in 0..50 {
                let wait = backoff(retries).as_secs_f64();
                assert!((base * 0.9..=base * 1.1).contains(&wait), "retries {retries}: {wait} s");
            }
        }
    }

    #[test]
    fn drafts_follow_the_rules() {
        let ok = |draft: JobDraft| draft.validate().map(|_| ()).map_err(|e| e.code().to_owned());
        let draft = |kind: &str| JobDraft { kind: kind.to_owned(), ..Default::default() };
        let at = |text: &str| DateTime::parse_from_rfc3339(text).unwrap().to_utc();
        let cases: Vec<(JobDraft, Result<(), &str>)> = vec![
            (draft("echo"), Ok(())),
            (draft("http.request"), Ok(())),
            (draft(""), Err("invalid_kind")),
            (draft("Echo"), Err("invalid_kind")),
            (draft(&"k".repeat(65)), Err("invalid_kind")),
            (JobDraft { queue: "a b".into(), ..draft("echo") }, Err("invalid_queue")),
            (JobDraft { payload: "[1]".into(), ..draft("echo") }, Err("invalid_payload")),
            (JobDraft { payload: "{".into(), ..draft("echo") }, Err("invalid_payload")),
            (JobDraft { max_attempts: Some(0), ..draft("echo") }, Err("invalid_max_attempts")),
            (JobDraft { max_attempts: Some(101), ..draft("echo") }, Err("invalid_max_attempts")),
            (JobDraft { timeout_secs: Some(0), ..draft("echo") }, Err("invalid_timeout")),
            (JobDraft { idempotency_key: "k".repeat(257), ..draft("echo") }, Err("invalid_idempotency_key")),
            (JobDraft { run_at: Some(at("2030-01-01T00:00:00Z")), ..draft("echo") }, Ok(())),
            (JobDraft { run_at: Some(at("1970-01-01T00:00:00Z")), ..draft("echo") }, Ok(())),
            (JobDraft { run_at: Some(at("9999-12-31T23:59:59Z")), ..draft("echo") }, Ok(())),
            (JobDraft { run_at: Some(at("1969-12-31T23:59:59Z")), ..draft("echo") }, Err("invalid_run_at")),
            (JobDraft { run_at: DateTime::from_timestamp(253_402_300_800, 0), ..draft("echo") }, Err("invalid_run_at")),
            (JobDraft { run_at: Some(DateTime::<Utc>::MIN_UTC), ..draft("echo") }, Err("invalid_run_at")),
            (JobDraft { run_at: Some(DateTime::<Utc>::MAX_UTC), ..draft("echo") }, Err("invalid_run_at")),
        ];
        for (draft, expected) in cases {
            let seen = format!("{draft:?}");
            assert_eq!(ok(draft), expected.map_err(str::to_owned), "{seen}");
        }
    }
}
