//! Helix events: the subjects, the envelope and the bus.
//!
//! - [`subjects`]: every event subject `helix.<domain>.<event>` of the system, and the domain streams.
//! - [`Envelope`]: the versioned JSON envelope every event travels in (UUIDv7 id = de-duplication key).
//! - [`EventBus`]: publish and durable group subscriptions, at-least-once, plus live tails (no group, no
//!   acks, may skip events) for dashboards. [`NatsBus`] runs it on NATS JetStream (the fleet),
//!   [`InProcessBus`] inside one process (the embedded `hx up`); [`connect`] picks one from [`EventsConfig`].
//!
//! ```ignore
//! let bus = helix_events::connect(&config.events, "storage").await?;
//! bus.publish(&Envelope::new(subjects::NODE_CREATED, "storage", json!({"id": id}))).await?;
//!
//! let mut events = bus.subscribe("helix.node.>", "search-indexer").await?;
//! while let Some(delivery) = events.next().await {
//!     let delivery = delivery?;            // an Err is a passing problem; the subscription goes on
//!     index(&delivery.envelope).await?;
//!     delivery.ack().await?;
//! }
//! ```

use std::sync::Arc;

mod bus;
mod config;
mod envelope;
mod error;
mod memory;
mod nats;
pub mod subjects;

pub use bus::{Delivery, EventBus, PublishAck, Subscription};
pub use config::EventsConfig;
pub use envelope::{Envelope, HEADER_MSG_ID, HEADER_TRACEPARENT, HEADER_TRACESTATE, TraceContext};
pub use error::{Error, Result};
pub use memory::InProcessBus;
pub use nats::NatsBus;

/// The bus `config` asks for: [`NatsBus`] when `nats_url` is set, else a new [`InProcessBus`].
/// `source` names the NATS connection (the service).
///
/// In one process, call this once and share the bus: every call makes a separate in-process bus.
pub async fn connect(config: &EventsConfig, source: &str) -> Result<Arc<dyn EventBus>> {
    Ok(match config.nats_url {
        Some(_) => Arc::new(NatsBus::connect(config, source).await?),
        None => Arc::new(InProcessBus::new(config)?),
    })
}
