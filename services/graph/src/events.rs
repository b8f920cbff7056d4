//! Follows the knowledge nodes: `helix.node.created` and `.updated` set a node's label,
//! `helix.node.deleted` removes the node's edges and keeps it out of the graph for good.
//! Each event is acked after its change committed; handling one twice changes nothing.

use std::sync::Arc;
use std::time::Duration;

use helix_core::graph::NodeLabel;
use helix_core::{Error, ErrorKind, Result};
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

pub async fn follow_nodes(store: Arc<GraphStore>, mut events: Subscription, shutdown: CancellationToken) {
    loop {
        let next = tokio::select! {
            next = events.next() => next,
            _ = shutdown.cancelled() => return,
        };
        let delivery = match next {
            None => return,
            Some(Err(error)) => {
                tracing::warn!(%error, "node events subscription");
                continue;
            }
            Some(Ok(delivery)) => delivery,
        };
        let span = consume_span(&delivery, GROUP);
        let outcome = apply(&store, &delivery).instrument(span).await;
        let settled = match outcome {
            Ok(()) => delivery.ack().await,
            Err(error) if error.kind() == ErrorKind::InvalidArgument => {
                // redelivering it would fail the same way
                tracing::error!(%error, subject = %delivery.subject, "dropping unreadable node event");
                delivery.ack().await
            }
            Err(error) => {
                tracing::warn!(%error, subject = %delivery.subject, "node event not applied, will retry");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                    _ = shutdown.cancelled() => return,
                }
                delivery.nak().await
            }
        };
        if let Err(error) = settled {
            tracing::warn!(%error, "node event not acknowledged, it will come again");
        }
    }
}

async fn apply(store: &GraphStore, delivery: &Delivery) -> Result<()> {
    let event: NodeEvent = delivery
        .envelope
        .payload_as()
        .map_err(|e| Error::invalid("invalid_event", format!("{} payload: {e}", delivery.subject)))?;
    // storage's versions start at 1; a label set by a caller has version 0
    let version = event.version.max(1);
    match delivery.subject.as_str() {
        subjects::NODE_CREATED | subjects::NODE_UPDATED => {
            let label = NodeLabel { namespace: event.namespace, kind: event.kind, title: event.title };
            store.set_labels(vec![(event.id, label)], version).await?;
        }
        subjects::NODE_DELETED => {
            let removed = store.remove_node(event.id, Some(version)).await?;
            tracing::debug!(node = %event.id, edges = removed, "deleted node left the graph");
        }
        _ => {}
    }
    Ok(())
}
