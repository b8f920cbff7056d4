use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use futures::stream::{BoxStream, Stream, StreamExt};

use crate::envelope::Envelope;
use crate::error::{Error, Result};

/// The event bus: durable publish, durable, load-balanced, at-least-once subscriptions, and live tails.
///
/// Two implementations keep the same contract (tests/contract.rs runs one suite against both):
/// [`NatsBus`](crate::NatsBus) on NATS JetStream and [`InProcessBus`](crate::InProcessBus) inside one process.
#[async_trait::async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Resolves once the bus has durably accepted the event. Publishing an envelope whose id was already
    /// published within the de-duplication window stores it once (returns Ok, reports duplicate=true).
    async fn publish(&self, event: &Envelope) -> Result<PublishAck>;

    /// Publishes `events` in order, as [`publish`](Self::publish) does each, without waiting
    /// for one to be accepted before the next is sent where the bus allows it (NATS
    /// pipelines them; in process they are stored under one lock). Answers the acks of the
    /// first events, as many as the bus accepted, and the error that stopped the rest. An
    /// event after the failed one may have been stored too (and then before it): publishing
    /// it again is de-duplicated.
    async fn publish_batch(&self, events: Vec<Envelope>) -> (Vec<PublishAck>, Result<()>) {
        let mut acks = Vec::with_capacity(events.len());
        for event in &events {
            match self.publish(event).await {
                Ok(ack) => acks.push(ack),
                Err(error) => return (acks, Err(error)),
            }
        }
        (acks, Ok(()))
    }

    /// Durable subscription: `filter` is a subject pattern (`helix.node.*`, `helix.node.>`, exact), `group`
    /// names a durable consumer: each event goes to one member of the group; every group sees every event
    /// (starting from the oldest retained event when the group is new, resuming where it left when it exists);
    /// an event not acked within ack_wait (or nak'd) is redelivered, marked redelivered, up to max_deliver.
    async fn subscribe(&self, filter: &str, group: &str) -> Result<Subscription>;

    /// A live view of the events matching `filter` (same patterns as [`subscribe`](Self::subscribe)) published
    /// from now on, for this subscriber alone: no group, no acks needed (ack and nak are no-ops), nothing left
    /// behind on the server when it is dropped. Every delivery has `redelivered == false` and
    /// `delivery_count == 1`.
    ///
    /// For dashboards and tails, not for work that must not miss an event: a tail that falls behind skips
    /// events, with a warning in the log (in process its oldest buffered events beyond 1024; on NATS the
    /// newest, once the client holds 65,536 for it), and on NATS it misses what is published while the
    /// connection is down. Events of one subject arrive in publish order. On NATS a tail sees the wire, not
    /// the stream: an envelope published again within the de-duplication window reaches it again.
    async fn tail(&self, filter: &str) -> Result<Subscription>;

    /// Health for /health checks.
    async fn check(&self) -> Result<()>;
}

/// What the bus reports about a published event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishAck {
    /// The stream that stored the event (with the tenant prefix, e.g. `HELIX_NODE`).
    pub stream: String,
    /// The event's sequence number in that stream (the earlier copy's for a duplicate).
    pub sequence: u64,
    /// The envelope id had already been published within the de-duplication window; nothing was stored.
    pub duplicate: bool,
}

/// One delivery of an event to a member of a group. Ack it once handled, or nak it to have it redelivered
/// now; a delivery neither acked nor nak'd within ack_wait is redelivered as well. A delivery of a
/// [tail](EventBus::tail) needs neither: its ack and nak do nothing.
pub struct Delivery {
    /// The event, shared by every group and tail it goes to (a payload can be large).
    pub envelope: Arc<Envelope>,
    /// The subject it was published on (without tenant prefix).
    pub subject: String,
    /// This event was delivered to the group before (`delivery_count > 1`).
    pub redelivered: bool,
    /// How many times the event has been delivered to the group, this delivery included (from 1).
    pub delivery_count: u64,
    pub(crate) acker: Acker,
}

pub(crate) enum Acker {
    Nats(async_nats::jetstream::message::Acker),
    InProcess(crate::memory::Acker),
    /// A tail's delivery: nothing to acknowledge.
    Tail,
}

impl Delivery {
    /// Marks the event handled: it is not delivered to this group again. A no-op for a tail's delivery.
    pub async fn ack(self) -> Result<()> {
        match self.acker {
            Acker::Nats(acker) => acker.ack().await.map_err(|err| Error::nats("ack", err)),
            Acker::InProcess(acker) => acker.ack(),
            Acker::Tail => Ok(()),
        }
    }

    /// Gives the event back: it is redelivered now (to any member of the group), unless it has
    /// reached max_deliver. A no-op for a tail's delivery.
    pub async fn nak(self) -> Result<()> {
        self.nak_after(Duration::ZERO).await
    }

    /// Gives the event back to be redelivered once `delay` has passed, unless it has reached
    /// max_deliver: for work that failed on something that needs time to come back (a server
    /// that is down), so its deliveries are not spent at once. A no-op for a tail's delivery.
    pub async fn nak_after(self, delay: Duration) -> Result<()> {
        match self.acker {
            Acker::Nats(acker) => {
                let delay = (!delay.is_zero()).then_some(delay);
                acker.ack_with(async_nats::jetstream::AckKind::Nak(delay)).await.map_err(|err| Error::nats("nak", err))
            }
            Acker::InProcess(acker) => acker.nak_after(delay),
            Acker::Tail => Ok(()),
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("envelope", &self.envelope)
            .field("subject", &self.subject)
            .field("redelivered", &self.redelivered)
            .field("delivery_count", &self.delivery_count)
            .finish_non_exhaustive()
    }
}

/// A member of a consumer group, or a tail: a stream of deliveries.
///
/// An `Err` item reports a problem (a lost connection, say) and the subscription goes on; `None` means
/// the bus was closed. Dropping the subscription leaves the group: events it received but did not ack are
/// redelivered to the group after ack_wait. Dropping a tail ends it and leaves nothing behind.
pub struct Subscription {
    inner: BoxStream<'static, Result<Delivery>>,
}

impl Subscription {
    pub fn new(inner: BoxStream<'static, Result<Delivery>>) -> Self {
        Self { inner }
    }

    /// The next delivery; `None` once the bus is closed.
    pub async fn next(&mut self) -> Option<Result<Delivery>> {
        self.inner.next().await
    }

    /// Adds to `batch` the deliveries that have already arrived, until it holds `max`,
    /// without waiting: for consumers that handle what a burst brought together. A
    /// problem reported in between ends the take (with a warning); the end of the
    /// subscription is seen by the next call of [`next`](Self::next).
    pub fn take_ready(&mut self, batch: &mut Vec<Delivery>, max: usize) {
        while batch.len() < max {
            match self.inner.next().now_or_never() {
                Some(Some(Ok(delivery))) => batch.push(delivery),
                Some(Some(Err(error))) => {
                    tracing::warn!(%error, "event subscription problem, it goes on");
                    break;
                }
                Some(None) | None => break,
            }
        }
    }
}

impl Stream for Subscription {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

/// Checks a consumer group name: any non-empty name of at most 64 bytes (it is sanitized for NATS).
pub(crate) fn validate_group(group: &str) -> Result<()> {
    let invalid = |reason: &'static str| Err(Error::InvalidGroup { group: group.to_owned(), reason });
    if group.trim().is_empty() {
        return invalid("empty");
    }
    if group.len() > 64 {
        return invalid("longer than 64 bytes");
    }
    Ok(())
}

/// The durable consumer name of a (group, filter) pair: readable, a valid NATS name (characters other than
/// A-Z a-z 0-9 _ - become `_`), and distinct for distinct pairs (a stable hash of both is part of it, so
/// `*` and `>` filters, or groups differing only in replaced characters, never share a consumer).
pub(crate) fn durable_name(group: &str, filter: &str) -> String {
    let sanitize = |text: &str| -> String {
        text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
    };
    let mut readable: String = filter
        .split('.')
        .map(|token| match token {
            "*" => "any",
            ">" => "all",
            token => token,
        })
        .collect::<Vec<_>>()
        .join("-");
    readable.truncate(64);
    let key = format!("{group}\n{filter}");
    format!("{}_{}_{:016x}", sanitize(group), sanitize(&readable), fnv1a64(key.as_bytes()))
}

/// FNV-1a: tiny and stable across Rust releases (durable names must not change between builds).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}
