use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Result;

/// NATS header carrying the envelope id; JetStream de-duplicates on it.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// NATS header carrying the W3C `traceparent` of the publisher.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// NATS header carrying the W3C `tracestate` of the publisher.
pub const HEADER_TRACESTATE: &str = "tracestate";

/// W3C trace context of the operation that published an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    /// `version-traceid-parentid-flags`, e.g. `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`.
    pub traceparent: String,
    /// Vendor-specific trace state, passed on untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// A trace context without trace state.
    pub fn new(traceparent: impl Into<String>) -> Self {
        Self { traceparent: traceparent.into(), tracestate: None }
    }
}

/// One event, as published and delivered (JSON).
///
/// ```json
/// {"id": "0190...", "type": "helix.node.created", "spec_version": 1,
///  "occurred_at": "2025-01-01T00:00:00.000000001Z", "source": "storage",
///  "trace": {"traceparent": "00-..."}, "payload": {...}}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// UUIDv7; also the de-duplication key (`Nats-Msg-Id`).
    pub id: Uuid,
    /// The subject, one of `subjects::ALL` (serialized as `type`).
    pub r#type: String,
    /// Version of this envelope format, [`Envelope::SPEC_VERSION`] when published by this crate.
    pub spec_version: u32,
    /// When the event happened (UTC).
    pub occurred_at: DateTime<Utc>,
    /// The publishing service, e.g. `storage`.
    pub source: String,
    /// Trace context of the publishing operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
    /// The event data; its shape is documented with the subject in `subjects`.
    #[serde(default)]
    pub payload: serde_json::Value,
}

impl Envelope {
    /// The envelope format this crate writes.
    pub const SPEC_VERSION: u32 = 1;

    /// A new event with a fresh UUIDv7 id, occurring now, without trace context.
    pub fn new(subject: impl Into<String>, source: impl Into<String>, payload: serde_json::Value) -> Self {
        Self {
            id: Uuid::now_v7(),
            r#type: subject.into(),
            spec_version: Self::SPEC_VERSION,
            occurred_at: Utc::now(),
            source: source.into(),
            trace: None,
            payload,
        }
    }

    /// A new event whose payload is `payload` serialized to JSON.
    pub fn from_payload<T: Serialize>(
        subject: impl Into<String>,
        source: impl Into<String>,
        payload: &T,
    ) -> Result<Self> {
        Ok(Self::new(subject, source, serde_json::to_value(payload)?))
    }

    /// Attaches the trace context of the publishing operation.
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    /// The subject of the event (its `type`).
    pub fn subject(&self) -> &str {
        &self.r#type
    }

    /// The payload deserialized into `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(T::deserialize(&self.payload)?)
    }

    /// The JSON encoding sent on the wire.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(self)?)
    }

    /// Decodes the JSON encoding sent on the wire.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        Ok(serde_json::from_slice(bytes)?)
    }
}
