//! Per-key request limits: a token bucket per API key, refilled continuously at the
//! key's requests per minute and holding at most its burst.
//!
//! Buckets live in each gateway replica's memory: N replicas admit up to N times a key's
//! rate (ARCHITECTURE.md states it). A shared counter would put a round trip to
//! PostgreSQL or NATS on every request, which is what the limit is meant to protect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;

use crate::auth::KeyRecord;

#[derive(Clone)]
pub struct KeyLimiter {
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
    default_per_minute: u32,
    default_burst: u32,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What the limiter decided, with what the `RateLimit-*` headers say.
pub enum Admission {
    /// The key has no limit.
    Unlimited,
    Admitted(Quota),
    Refused(Quota),
}

pub struct Quota {
    /// requests per minute
    pub limit: u32,
    pub remaining: u32,
    /// seconds until a request would be admitted again (refused) or the bucket is full
    pub reset_secs: u64,
}

impl KeyLimiter {
    pub fn new(default_per_minute: u32, default_burst: u32) -> Self {
        Self { buckets: Arc::default(), default_per_minute, default_burst: default_burst.max(1) }
    }

    /// Takes a token from the key's bucket. The bootstrap admin key has no default
    /// limit: it is the operator's, and a limit only set on it applies.
    pub fn admit(&self, key: &KeyRecord) -> Admission {
        let per_minute = match key.requests_per_minute {
            Some(n) => n,
            None if key.id == crate::auth::ADMIN_KEY_ID => 0,
            None => self.default_per_minute,
        };
        if per_minute == 0 {
            return Admission::Unlimited;
        }
        let capacity = f64::from(self.default_burst.min(per_minute).max(1));
        let per_second = f64::from(per_minute) / 60.0;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limit lock");
        if buckets.len() > 100_000 {
            // a bucket holds at most a minute's worth, so one idle for a minute is full:
            // forgetting it changes nothing
            buckets.retain(|_, b| now - b.at < Duration::from_secs(60));
        }
        let bucket = buckets.entry(key.id.clone()).or_insert(Bucket { tokens: capacity, at: now });
        bucket.tokens = (bucket.tokens + (now - bucket.at).as_secs_f64() * per_second).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            let reset_secs = ((capacity - bucket.tokens) / per_second).ceil() as u64;
            Admission::Admitted(Quota { limit: per_minute, remaining: bucket.tokens as u32, reset_secs })
        } else {
            let reset_secs = ((1.0 - bucket.tokens) / per_second).ceil().max(1.0) as u64;
            Admission::Refused(Quota { limit: per_minute, remaining: 0, reset_secs })
        }
    }
}

impl Admission {
    /// `RateLimit-Limit`, `-Remaining`, `-Reset` (the IETF draft's fields), and
    /// `Retry-After` on a refusal.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let quota = match self {
            Admission::Unlimited => return,
            Admission::Admitted(quota) => quota,
            Admission::Refused(quota) => {
                headers.insert(http::header::RETRY_AFTER, quota.reset_secs.into());
                quota
            }
        };
        headers.insert("ratelimit-limit", quota.limit.into());
        headers.insert("ratelimit-remaining", quota.remaining.into());
        headers.insert("ratelimit-reset", quota.reset_secs.into());
    }
}
