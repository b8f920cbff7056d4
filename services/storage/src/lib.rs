//! The storage service: knowledge nodes (create, read, update with optimistic
//! concurrency, delete, list, bulk create, word recall) and the `helix.node.*` events
//! that announce every committed change.
//!
//! Sources and multimodal ingestion are part of this service's contract but not built
//! yet: their methods answer UNIMPLEMENTED.

mod grpc;
mod store;

use helix_proto::v1::storage_service_server::StorageServiceServer;
use helix_runtime::db::Database;
use helix_runtime::{HelixConfig, ServiceContext};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub use grpc::{StorageApi, node_to_pb};
pub use store::NodeStore;

/// The name events carry as their source and the health service reports.
pub const SERVICE: &str = "storage";
pub const GRPC_SERVICE: &str = helix_proto::service_names::STORAGE;

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// Brings this service's database schema up to date (`hx migrate`).
pub async fn migrate(config: &HelixConfig) -> helix_runtime::Result<()> {
    Database::connect(config, SERVICE).await?.migrate(&SQLITE, &POSTGRES).await
}

/// Opens the node store and starts its outbox relay on the context's task tracker.
pub async fn open(ctx: &ServiceContext) -> helix_runtime::Result<NodeStore> {
    let db = Database::open(ctx, SERVICE, &SQLITE, &POSTGRES).await?;
    let outbox = helix_runtime::outbox::Outbox::start(ctx, SERVICE, db.clone());
    Ok(NodeStore::new(db, outbox))
}

/// The storage gRPC service, ready to be served.
pub async fn start(ctx: &ServiceContext) -> helix_runtime::Result<StorageServiceServer<StorageApi>> {
    let store = open(ctx).await?;
    Ok(StorageServiceServer::new(StorageApi::new(store)).max_decoding_message_size(64 * 1024 * 1024))
}

/// Runs the storage service alone in this process until `shutdown` is cancelled.
pub async fn serve(config: HelixConfig, shutdown: CancellationToken) -> helix_runtime::Result<()> {
    helix_runtime::serve_alone(config, shutdown, GRPC_SERVICE, |ctx| async move {
        Ok(tonic::service::Routes::new(start(&ctx).await?))
    })
    .await
}
