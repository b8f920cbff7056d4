//! Follows `helix.node.*` events into the index: created and updated index the node of
//! the payload, deleted drops it. An event is acked once the commit holding its change
//! succeeded, and nak'd (redelivered after a growing delay) when it failed; while one
//! batch commits, the next events are already on their way to the writer.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use helix_core::node::Node;
use helix_events::{Delivery, Envelope, Subscription, subjects};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::document::Document;
use crate::writer::{Op, Source, WriterHandle};

/// Events handed to the writer and not yet acked: at most what the index gets through
/// in [`IN_FLIGHT_HORIZON`] at its measured pace, within these bounds. A taken event's
/// ack_wait (30 s) is running: with a slow embedder (MiniLM on a CPU: ~40 nodes/s) a
/// fixed 4096 would let the last of a burst wait past it and be redelivered.
const MIN_IN_FLIGHT: usize = 64;
const MAX_IN_FLIGHT: usize = 4096;
/// Before any pace is known: ~12 s of MiniLM's work, a fast start for anything quicker.
const FIRST_IN_FLIGHT: usize = 512;
/// How often the pace is measured.
const PACE_WINDOW: Duration = Duration::from_millis(500);
const IN_FLIGHT_HORIZON: Duration = Duration::from_secs(10);

/// How many events may be in flight, from how fast they have been settling.
struct Pace {
    limit: usize,
    window: std::time::Instant,
    settled: usize,
    /// the most events in flight this window
    peak: usize,
}

impl Pace {
    fn new() -> Self {
        Self { limit: FIRST_IN_FLIGHT, window: std::time::Instant::now(), settled: 0, peak: 0 }
    }

    /// One event settled; `in_flight` were in flight with it.
    fn settled(&mut self, in_flight: usize) {
        self.settled += 1;
        self.peak = self.peak.max(in_flight + 1);
        let elapsed = self.window.elapsed();
        if elapsed < PACE_WINDOW {
            return;
        }
        // a pace measured while few events waited says nothing about how fast more
        // would go: then the limit only grows
        let pace = self.settled as f64 / elapsed.as_secs_f64();
        let fits = (pace * IN_FLIGHT_HORIZON.as_secs_f64()) as usize;
        let busy = self.peak >= self.limit / 2;
        self.limit = if busy { fits } else { fits.max(self.limit) }.clamp(MIN_IN_FLIGHT, MAX_IN_FLIGHT);
        self.window = std::time::Instant::now();
        self.settled = 0;
        self.peak = 0;
    }
}
/// How long a stopping indexer waits for the outcome of events already handed over.
const DRAIN: Duration = Duration::from_secs(5);
/// A failed event comes back after 250 ms, doubling with each delivery up to 30 s: a
/// commit fails when something needs time to return (Qdrant down, a full disk), and
/// redelivering at once would spend the event's max_deliver attempts in a second.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MOST: Duration = Duration::from_secs(30);

/// When a delivery that failed for the `delivery_count`-th time comes back.
fn retry_delay(delivery_count: u64) -> Duration {
    let doublings = u32::try_from(delivery_count.saturating_sub(1)).unwrap_or(u32::MAX).min(16);
    (RETRY_FIRST * 2u32.pow(doublings)).min(RETRY_MOST)
}

/// The change an event asks for: `None` for an event the index does not follow.
pub fn op_from_event(envelope: &Envelope) -> Result<Option<Op>, helix_events::Error> {
    #[derive(serde::Deserialize)]
    struct Deleted {
        id: uuid::Uuid,
        #[serde(default)]
        version: Option<i64>,
    }
    Ok(match envelope.subject() {
        subjects::NODE_CREATED | subjects::NODE_UPDATED => {
            Some(Op::Upsert(Box::new(Document::from(envelope.payload_as::<Node>()?))))
        }
        subjects::NODE_DELETED => {
            let deleted: Deleted = envelope.payload_as()?;
            Some(Op::Delete { id: deleted.id.to_string(), version: deleted.version })
        }
        _ => None,
    })
}

pub async fn run(mut events: Subscription, writer: WriterHandle, group: String, shutdown: CancellationToken) {
    let mut in_flight = FuturesOrdered::new();
    let mut pace = Pace::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => pace.settled(in_flight.len()),
            next = events.next(), if in_flight.len() < pace.limit => match next {
                None => {
                    tracing::warn!("the event bus closed, search indexing stopped");
                    break;
                }
                Some(Err(error)) => tracing::warn!(%error, "event subscription problem, it goes on"),
                Some(Ok(delivery)) => in_flight.push_back(handle(delivery, &writer, &group)),
            }
        }
    }
    // what was handed over is committed by the writer's last batch: ack it if it is
    // quick, else it is redelivered (and skipped or reapplied: changes are idempotent)
    writer.shutdown();
    let drained = tokio::time::timeout(DRAIN, async { while in_flight.next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("stopped before some events were acked; they will be redelivered");
    }
}

/// Hands the event's change to the writer now; the future settles the delivery.
fn handle(delivery: Delivery, writer: &WriterHandle, group: &str) -> impl Future<Output = ()> + use<> {
    let span = helix_runtime::metrics::consume_span(&delivery, group);
    let submitted = match op_from_event(&delivery.envelope) {
        Ok(Some(op)) => Some(writer.submit(vec![op], Source::Event, true)),
        Ok(None) => None,
        Err(error) => {
            // an unreadable payload is never going to index: drop it, loudly
            span.in_scope(|| tracing::error!(%error, event = %delivery.envelope.id, "unreadable node event, skipped"));
            None
        }
    };
    async move {
        let outcome = match submitted {
            None => Ok(()),
            Some(Ok(answer)) => match answer.await {
                Ok(result) => result.map(|_| ()),
                Err(_) => Err(helix_core::Error::unavailable("the search index is shutting down")),
            },
            Some(Err(error)) => Err(error),
        };
        let settled = match outcome {
            Ok(()) => delivery.ack().await,
            Err(error) => {
                let delay = retry_delay(delivery.delivery_count);
                tracing::warn!(%error, retry_in = ?delay, "indexing an event failed, it will be redelivered");
                delivery.nak_after(delay).await
            }
        };
        if let Err(error) = settled {
            tracing::warn!(%error, "settling an event failed, it may be redelivered");
        }
    }
    .instrument(span)
}
