//! Follows `helix.node.*` events into the index: created and updated index the node of
//! the payload, deleted drops it. An event is acked once the commit holding its change
//! succeeded, and nak'd (redelivered after a growing delay) when it failed; while one
//! batch commits, the next events are already on their way to the writer.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use helix_core::Result;
use helix_core::node::Node;
use helix_events::{Delivery, Envelope, Subscription, subjects};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::document::Document;
use crate::writer::{Applied, Op, Source, WriterHandle};

/// Events handed to the writer and not yet acked: at most what the index gets through
/// in [`IN_FLIGHT_HORIZON`] at its measured pace, within these bounds. A taken event's
/// ack_wait (30 s) is running: with a slow embedder (MiniLM on a CPU: ~40 nodes/s) a
/// fixed 4096 would let the last of a burst wait past it and be redelivered. Events are
/// acked at the commit, every 200 ms at most, so the most in flight also bounds the
/// pace: 4096 held a fast pipeline under ~20,000 events/s.
const MIN_IN_FLIGHT: usize = 64;
const MAX_IN_FLIGHT: usize = 32_768;
/// Before any pace is known: ~12 s of MiniLM's work, a fast start for anything quicker.
const FIRST_IN_FLIGHT: usize = 512;
/// How often the pace is measured: short, as a burst is held to [`FIRST_IN_FLIGHT`]
/// until the first measurement.
const PACE_WINDOW: Duration = Duration::from_millis(200);
const IN_FLIGHT_HORIZON: Duration = Duration::from_secs(10);
/// Events handed to the writer as one change at most: those already delivered when one
/// arrives, so a burst costs a few commands (and embedding calls), not one each.
const BATCH: usize = 512;

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

    /// `events` settled; `in_flight` are still in flight.
    fn settled(&mut self, events: usize, in_flight: usize) {
        self.settled += events;
        self.peak = self.peak.max(in_flight + events);
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
    // each settles one batch and yields its size
    let mut in_flight = FuturesOrdered::new();
    let mut in_flight_events = 0;
    let mut pace = Pace::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(settled) = in_flight.next(), if !in_flight.is_empty() => {
                in_flight_events -= settled;
                pace.settled(settled, in_flight_events);
            }
            next = events.next(), if in_flight_events < pace.limit => match next {
                None => {
                    tracing::warn!("the event bus closed, search indexing stopped");
                    break;
                }
                Some(Err(error)) => tracing::warn!(%error, "event subscription problem, it goes on"),
                Some(Ok(first)) => {
                    let room = pace.limit.saturating_sub(in_flight_events).clamp(1, BATCH);
                    let mut batch = vec![first];
                    events.take_ready(&mut batch, room);
                    in_flight_events += batch.len();
                    in_flight.push_back(handle(batch, &writer, &group));
                }
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

/// Hands the changes of a batch of events to the writer as one command, now; the future
/// settles every delivery of the batch and yields how many there were. A batch that
/// fails is tried again event by event, so one event that cannot be indexed does not
/// hold back the others delivered with it.
fn handle(batch: Vec<Delivery>, writer: &WriterHandle, group: &str) -> impl Future<Output = usize> + use<> {
    let spans = spans_of(&batch, group);
    let span = spans.first().cloned().unwrap_or_else(tracing::Span::none);
    let submitted = submit(&batch, writer);
    let writer = writer.clone();
    async move {
        let events = batch.len();
        match outcome(submitted).await {
            Err(_) if events > 1 => {
                // every event its own command, all sent at once: they share the writer's
                // next commit, so a failing commit (a store that is down) costs one more
                // commit, not one per event
                let alone: Vec<Submitted> =
                    batch.iter().map(|delivery| submit(std::slice::from_ref(delivery), &writer)).collect();
                for (delivery, submitted) in batch.into_iter().zip(alone) {
                    settle(delivery, &outcome(submitted).await).await;
                }
            }
            batch_outcome => {
                for delivery in batch {
                    settle(delivery, &batch_outcome).await;
                }
            }
        }
        drop(spans);
        events
    }
    .instrument(span)
}

type Submitted = Option<Result<oneshot::Receiver<Result<Applied>>>>;

/// Sends the changes the events ask for to the writer, as one command; `None` when they
/// ask for none.
fn submit(deliveries: &[Delivery], writer: &WriterHandle) -> Submitted {
    let mut ops = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        match op_from_event(&delivery.envelope) {
            Ok(Some(op)) => ops.push(op),
            Ok(None) => {}
            // an unreadable payload is never going to index: drop it, loudly
            Err(error) => tracing::error!(%error, event = %delivery.envelope.id, "unreadable node event, skipped"),
        }
    }
    (!ops.is_empty()).then(|| writer.submit(ops, Source::Event, true))
}

/// Whether the submitted changes were committed.
async fn outcome(submitted: Submitted) -> Result<()> {
    match submitted {
        None => Ok(()),
        Some(Ok(answer)) => match answer.await {
            Ok(result) => result.map(|_| ()),
            Err(_) => Err(helix_core::Error::unavailable("the search index is shutting down")),
        },
        Some(Err(error)) => Err(error),
    }
}

/// Acks a delivery whose change committed; gives it back for a later try otherwise.
async fn settle(delivery: Delivery, outcome: &Result<()>) {
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

/// One consumer span per trace the batch's events came from (a bulk write's events
/// share one), so each publishing trace shows its event consumed here.
fn spans_of(batch: &[Delivery], group: &str) -> Vec<tracing::Span> {
    let mut spans = Vec::new();
    let mut last: Option<&str> = None;
    for delivery in batch {
        let trace = delivery.envelope.trace.as_ref().map(|t| t.traceparent.as_str());
        if spans.is_empty() || trace != last {
            spans.push(helix_runtime::metrics::consume_span(delivery, group));
            last = trace;
        }
    }
    spans
}
