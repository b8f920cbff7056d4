use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::subjects;

/// Event bus settings (the `[events]` section of the Helix configuration).
///
/// Durations are written in seconds (`ack_wait_secs = 30`, fractions allowed); every field has a default,
/// so an empty section gives the in-process bus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// NATS server URL (`nats://host:4222`, several comma-separated). Unset: the in-process bus.
    pub nats_url: Option<String>,
    /// Isolates tenants (or tests) sharing one NATS server: with prefix `t1` the subject
    /// `helix.node.created` is `t1.helix.node.created` on the wire and the stream is `T1_HELIX_NODE`.
    /// The API always speaks unprefixed subjects. Empty by default.
    pub prefix: String,
    /// How long a delivered event may stay unacknowledged before it is redelivered.
    #[serde(rename = "ack_wait_secs", with = "secs")]
    pub ack_wait: Duration,
    /// How many times an event is delivered to a group at most (-1: no limit).
    pub max_deliver: i64,
    /// Publishing an envelope id again within this window stores it once.
    #[serde(rename = "duplicate_window_secs", with = "secs")]
    pub duplicate_window: Duration,
    /// Events older than this are discarded from the streams.
    #[serde(rename = "max_age_secs", with = "secs")]
    pub max_age: Duration,
    /// At most this many events are retained per domain stream, the oldest discarded first (-1: no limit).
    pub max_messages: i64,
    /// Replicas of each JetStream stream (3 on a NATS cluster; the in-process bus ignores it).
    pub replicas: usize,
    /// How long to keep retrying the first connection to NATS before giving up.
    #[serde(rename = "connect_timeout_secs", with = "secs")]
    pub connect_timeout: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            nats_url: None,
            prefix: String::new(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 10,
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_messages: 1_000_000,
            replicas: 1,
            connect_timeout: Duration::from_secs(30),
        }
    }
}

impl EventsConfig {
    /// Checks the settings; every bus constructor calls it.
    pub fn validate(&self) -> Result<()> {
        let invalid = |message: &str| Err(Error::Config(message.to_owned()));
        if !self.prefix.is_empty() && !self.prefix.split('.').all(subjects::is_token) {
            return invalid("prefix: dot-separated tokens of A-Z a-z 0-9 _ -");
        }
        if self.ack_wait.is_zero() {
            return invalid("ack_wait_secs must be positive");
        }
        if self.max_deliver == 0 || self.max_deliver < -1 {
            return invalid("max_deliver must be positive, or -1 for no limit");
        }
        if self.duplicate_window.is_zero() {
            return invalid("duplicate_window_secs must be positive");
        }
        if self.max_age < self.duplicate_window {
            return invalid("max_age_secs must be at least duplicate_window_secs");
        }
        if self.max_messages == 0 || self.max_messages < -1 {
            return invalid("max_messages must be positive, or -1 for no limit");
        }
        if !(1..=5).contains(&self.replicas) {
            return invalid("replicas must be between 1 and 5");
        }
        if self.nats_url.as_deref().is_some_and(|url| url.trim().is_empty()) {
            return invalid("nats_url is empty (leave it unset for the in-process bus)");
        }
        Ok(())
    }

    /// The wire subject for an API subject (adds the prefix).
    pub(crate) fn wire_subject(&self, subject: &str) -> String {
        if self.prefix.is_empty() { subject.to_owned() } else { format!("{}.{subject}", self.prefix) }
    }

    /// The API subject for a wire subject (strips the prefix).
    pub(crate) fn api_subject<'a>(&self, wire: &'a str) -> &'a str {
        if self.prefix.is_empty() {
            return wire;
        }
        wire.strip_prefix(self.prefix.as_str()).and_then(|rest| rest.strip_prefix('.')).unwrap_or(wire)
    }

    /// The stream name of a domain under the prefix: `HELIX_NODE`, or `T1_HELIX_NODE` with prefix `t1`.
    pub(crate) fn stream_name(&self, domain: &subjects::Domain) -> String {
        if self.prefix.is_empty() {
            return domain.stream.to_owned();
        }
        let prefix: String =
            self.prefix.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
        format!("{prefix}_{}", domain.stream)
    }
}

/// Serde for durations written as (possibly fractional) seconds.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        if duration.subsec_nanos() == 0 {
            serializer.serialize_u64(duration.as_secs())
        } else {
            serializer.serialize_f64(duration.as_secs_f64())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(deserializer)?;
        Duration::try_from_secs_f64(secs).map_err(|_| D::Error::custom(format!("{secs} is not a duration in seconds")))
    }
}
