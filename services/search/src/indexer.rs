//! Follows `helix.node.*` events into the index: created and updated index the node of
//! the payload, deleted drops it. An event is acked once the commit holding its change
//! succeeded, and nak'd (redelivered) when it failed; while one batch commits, the next
//! events are already on their way to the writer.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use helix_core::node::Node;
use helix_events::{Delivery, Envelope, Subscription, subjects};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::document::Document;
use crate::writer::{Op, Source, WriterHandle};

/// Events handed to the writer and not yet acked, at most.
const MAX_IN_FLIGHT: usize = 4096;
/// How long a stopping indexer waits for the outcome of events already handed over.
const DRAIN: Duration = Duration::from_secs(5);

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
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            next = events.next(), if in_flight.len() < MAX_IN_FLIGHT => match next {
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
                tracing::warn!(%error, "indexing an event failed, it will be redelivered");
                delivery.nak().await
            }
        };
        if let Err(error) = settled {
            tracing::warn!(%error, "settling an event failed, it may be redelivered");
        }
    }
    .instrument(span)
}
