//! The graph service: the knowledge graph — typed, directed, weighted edges between
//! knowledge nodes (with properties), neighbourhoods and walks, shortest paths (by hops
//! or by weight), statistics, and exports as JSON, GraphML and DOT.
//!
//! Its contract is `proto/helix/v1/graph.proto`; the rules (relations, weights, depths,
//! no self-loops) are `helix_core::graph`.
//!
//! - **Database, then memory.** Edges and node labels are stored with sqlx (SQLite or
//!   PostgreSQL, [`migrate`]); the whole graph is also held in memory, in a petgraph
//!   `StableDiGraph`, rebuilt from the database at start. Reads (walks, paths, stats)
//!   use memory only. A write commits to the database first, then changes memory; one
//!   write at a time, so memory follows the commit order. That makes the service a
//!   single replica (its Helm chart runs one): a second process would not see the first
//!   one's writes in its memory.
//! - **Events.** Every created or deleted edge puts `helix.graph.edge.created` /
//!   `.deleted` in the outbox of its transaction; `helix_runtime::outbox` publishes them.
//! - **Decoupled from storage.** The service never calls storage: an edge may name any
//!   UUID, whether or not storage holds that node, and a node the graph has no edge or
//!   label for is simply a node without neighbours. What it knows of nodes comes from
//!   `helix.node.*` events (consumer group `graph`): created and updated set a node's
//!   label (namespace, kind, title); deleted removes the node's edges and keeps a
//!   tombstone, so no edge can join a deleted node afterwards and a late event cannot
//!   bring it back. Each event is acked once applied; applying one twice is harmless.

mod events;
mod export;
mod grpc;
mod memory;
mod store;

use std::sync::Arc;

use helix_proto::v1::graph_service_server::GraphServiceServer;
use helix_runtime::db::Database;
use helix_runtime::{HelixConfig, ServiceContext};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub use grpc::GraphApi;
pub use store::GraphStore;

/// The name events carry as their source and the health service reports.
pub const SERVICE: &str = "graph";
pub const GRPC_SERVICE: &str = helix_proto::service_names::GRAPH;

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// Brings this service's database schema up to date (`hx migrate`).
pub async fn migrate(config: &HelixConfig) -> helix_runtime::Result<()> {
    Database::connect(config, SERVICE).await?.migrate(&SQLITE, &POSTGRES).await
}

/// Opens the graph (database, then memory from it), starts the outbox relay and the
/// node events consumer on the context's task tracker.
pub async fn open(ctx: &ServiceContext) -> helix_runtime::Result<Arc<GraphStore>> {
    let db = Database::open(ctx, SERVICE, &SQLITE, &POSTGRES).await?;
    let outbox = helix_runtime::outbox::Outbox::start(ctx, SERVICE, db.clone());
    let store = Arc::new(GraphStore::load(db, outbox).await?);
    let node_events = ctx.bus.subscribe(events::FILTER, events::GROUP).await?;
    ctx.tasks.spawn(events::follow_nodes(store.clone(), node_events, ctx.shutdown.clone()));
    Ok(store)
}

/// The graph gRPC service, ready to be served.
pub async fn start(ctx: &ServiceContext) -> helix_runtime::Result<GraphServiceServer<GraphApi>> {
    let store = open(ctx).await?;
    Ok(GraphServiceServer::new(GraphApi::new(store)))
}

/// Runs the graph service alone in this process until `shutdown` is cancelled.
pub async fn serve(config: HelixConfig, shutdown: CancellationToken) -> helix_runtime::Result<()> {
    helix_runtime::serve_alone(config, shutdown, GRPC_SERVICE, |ctx| async move {
        Ok(tonic::service::Routes::new(start(&ctx).await?))
    })
    .await
}
