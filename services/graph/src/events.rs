//! Follows the knowledge nodes: `helix.node.created` and `.updated` set a node's label,
//! `helix.node.deleted` removes the node's edges and keeps it out of the graph for good.
//! Each event is acked after its change committed; handling one twice changes nothing.
//! Events already delivered are applied together, label changes in one transaction.

use std::sync::Arc;
use std::time::Duration;

use helix_core::graph::NodeLabel;
use helix_core::{Error, Result};
use helix_events::{Delivery, Subscription, subjects};
use helix_runtime::metrics::consume_span;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::store::GraphStore;

/// The durable consumer group of the graph service.
pub const GROUP: &str = "graph";
pub const FILTER: &str = "helix.node.*";
/// How long a failed event waits before it is given back for redelivery.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What the graph reads of a node event's payload.
#[derive(Deserialize)]
struct NodeEvent {
    id: Uuid,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    version: i64,
}

/// Events applied together at most: the ones already delivered when the first arrives,
/// so a burst of node events costs a few transactions, not one each.
const BATCH: usize = 256;

pub async fn follow_nodes(store: Arc<GraphStore>, mut events: Subscription, shutdown: CancellationToken) {
    loop {
        let next = tokio::select! {
            next = events.next() => next,
            _ = shutdown.cancelled() => return,
        };
        let first = match next {
            None => return,
            Some(Err(error)) => {
                tracing::warn!(%error, "node events subscription");
                continue;
            }
            Some(Ok(delivery)) => delivery,
        };
        let mut batch = vec![first];
        events.take_ready(&mut batch, BATCH);
        if !settle(&store, batch, &shutdown).await {
            return;
        }
    }
}

/// Applies the events in order and acks each once its change committed; after a
/// failure the rest are nak'd after [`RETRY_AFTER`]. False when shutdown came first.
async fn settle(store: &GraphStore, batch: Vec<Delivery>, shutdown: &CancellationToken) -> bool {
    let mut pending = batch.into_iter().peekable();
    while pending.peek().is_some() {
        // a run of label changes goes in one transaction; a deletion goes alone
        let mut run = Vec::new();
        let mut labels = Vec::new();
        while let Some(delivery) = pending.peek() {
            let change = match change_of(delivery) {
                Ok(change) => change,
                Err(error) => {
                    // redelivering it would fail the same way
                    let delivery = pending.next().expect("peeked");
                    let span = consume_span(&delivery, GROUP);
                    span.in_scope(
                        || tracing::error!(%error, subject = %delivery.subject, "dropping unreadable node event"),
                    );
                    ack(delivery).instrument(span).await;
                    continue;
                }
            };
            match change {
                Change::Label(id, label, version) => {
                    labels.push((id, label, version));
                    run.push(pending.next().expect("peeked"));
                }
                Change::Delete(..) if !run.is_empty() => break,
                Change::Delete(id, version) => {
                    let delivery = pending.next().expect("peeked");
                    let span = consume_span(&delivery, GROUP);
                    match store.remove_node(id, Some(version)).instrument(span.clone()).await {
                        Ok(removed) => {
                            span.in_scope(
                                || tracing::debug!(node = %id, edges = removed, "deleted node left the graph"),
                            );
                            ack(delivery).instrument(span).await;
                        }
                        Err(error) => return retry(error, vec![delivery], pending.collect(), shutdown).await,
                    }
                }
                Change::Ignored => run.push(pending.next().expect("peeked")),
            }
        }
        if run.is_empty() {
            continue;
        }
        match store.set_labels(labels).await {
            Ok(_) => {
                for delivery in run {
                    let span = consume_span(&delivery, GROUP);
                    ack(delivery).instrument(span).await;
                }
            }
            Err(error) => return retry(error, run, pending.collect(), shutdown).await,
        }
    }
    true
}

async fn ack(delivery: Delivery) {
    if let Err(error) = delivery.ack().await {
        tracing::warn!(%error, "node event not acknowledged, it will come again");
    }
}

/// Gives back what failed and what was not tried, after a pause.
async fn retry(error: Error, failed: Vec<Delivery>, untried: Vec<Delivery>, shutdown: &CancellationToken) -> bool {
    tracing::warn!(%error, events = failed.len() + untried.len(), "node events not applied, will retry");
    tokio::select! {
        _ = tokio::time::sleep(RETRY_AFTER) => {}
        _ = shutdown.cancelled() => return false,
    }
    for delivery in failed.into_iter().chain(untried) {
        if let Err(error) = delivery.nak().await {
            tracing::warn!(%error, "node event not acknowledged, it will come again");
        }
    }
    true
}

/// What an event asks of the graph.
enum Change {
    /// a node's label at its version
    Label(Uuid, NodeLabel, i64),
    Delete(Uuid, i64),
    Ignored,
}

fn change_of(delivery: &Delivery) -> Result<Change> {
    let event: NodeEvent = delivery
        .envelope
        .payload_as()
        .map_err(|e| Error::invalid("invalid_event", format!("{} payload: {e}", delivery.subject)))?;
    // storage's versions start at 1; a label set by a caller has version 0
    let version = event.version.max(1);
    Ok(match delivery.subject.as_str() {
        subjects::NODE_CREATED | subjects::NODE_UPDATED => Change::Label(
            event.id,
            NodeLabel { namespace: event.namespace, kind: event.kind, title: event.title },
            version,
        ),
        subjects::NODE_DELETED => Change::Delete(event.id, version),
        _ => Change::Ignored,
    })
}
