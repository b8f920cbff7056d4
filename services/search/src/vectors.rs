//! The vector side of a replica's index: one embedding per live node, searched by
//! cosine similarity with the same filters as full text.
//!
//! [`VectorStore`] is the one interface; [`FlatVectors`] is the embedded default: an
//! exact search over every vector in memory, kept under `HELIX_HOME/search/vectors` as
//! a snapshot and a log of changes (see [`flat`]). It is synchronous: the writer
//! thread, blocking tasks and the optimiser thread call it, never the async executor.
//!
//! [`QdrantVectors`] is the cluster backend (`HELIX_QDRANT_URL`): see [`qdrant`].
//!
//! Only the [`writer`](crate::writer) changes the store, after its own version checks
//! against the full-text index: a vector is written exactly when the node's full-text
//! document is, and removed with it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use helix_core::{Error, Result};
use uuid::Uuid;

mod file;
pub mod flat;
pub mod qdrant;
pub use flat::FlatVectors;
pub use qdrant::{QdrantSettings, QdrantVectors};

/// The payload fields filters use in the cluster backend; each has a keyword index (or
/// a float range index). [`VERSION`] is read back, never filtered on.
const NAMESPACE: &str = "namespace";
const KIND: &str = "kind";
const TAGS: &str = "tags";
const UPDATED_AT: &str = "updated_at";
const VERSION: &str = "version";

/// A node's embedding with what filters need of it.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorPoint {
    pub id: Uuid,
    pub vector: Vec<f32>,
    pub namespace: String,
    pub kind: String,
    pub tags: Vec<String>,
    /// UTC microseconds
    pub updated_at: i64,
    /// the node version the vector was computed for: a vector may lag its document
    /// (words are searchable first), and start-up embeds what lags
    pub version: i64,
}

/// One change, applied in order with its neighbours.
#[derive(Debug, Clone, PartialEq)]
pub enum VectorOp {
    Upsert(VectorPoint),
    Delete(Uuid),
}

impl VectorOp {
    /// The node the change is about.
    pub fn id(&self) -> Uuid {
        match self {
            VectorOp::Upsert(point) => point.id,
            VectorOp::Delete(id) => *id,
        }
    }
}

/// The filters of a search, as full text applies them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VectorFilter {
    /// any of these; empty means every namespace
    pub namespaces: Vec<String>,
    /// any of these; empty means every kind
    pub kinds: Vec<String>,
    /// every one of these
    pub tags: Vec<String>,
    /// UTC microseconds, exclusive
    pub updated_after: Option<i64>,
    pub updated_before: Option<i64>,
}

impl VectorFilter {
    /// Whether a document passes the filter, as its vector would if it were current.
    pub fn admits(&self, doc: &crate::document::Document) -> bool {
        let updated_at = doc.updated_at.timestamp_micros();
        (self.namespaces.is_empty() || self.namespaces.contains(&doc.namespace))
            && (self.kinds.is_empty() || self.kinds.contains(&doc.kind))
            && self.tags.iter().all(|tag| doc.tags.contains(tag))
            && self.updated_after.is_none_or(|after| updated_at > after)
            && self.updated_before.is_none_or(|before| updated_at < before)
    }
}

/// A nearest neighbour: the node id and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbour {
    pub id: Uuid,
    pub similarity: f32,
}

pub trait VectorStore: Send + Sync + 'static {
    /// Applies the changes in order; a delete of an absent id is no error.
    fn apply(&self, ops: Vec<VectorOp>) -> Result<()>;
    /// The `limit` nearest live vectors that pass the filter, nearest first.
    fn search(&self, query: &[f32], filter: &VectorFilter, limit: usize) -> Result<Vec<Neighbour>>;
    /// Vectors held (approximately, in the cluster backend).
    fn count(&self) -> u64;
    /// The node version each id's vector was computed for; `None` where it has none.
    fn versions(&self, ids: &[Uuid]) -> Result<Vec<Option<i64>>>;
    /// Background upkeep (folding the log into a snapshot, building indexes); true
    /// when it changed anything.
    fn optimize(&self) -> Result<bool>;
    /// Flushes and releases the store's files (its WAL lock): a process that stops a
    /// search service and starts another on the same home needs them free, whoever
    /// still holds a handle. Every later call fails.
    fn close(&self);
}

/// What the store was built with; another embedder's vectors are not comparable.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EmbedderMark {
    pub name: String,
    pub dim: usize,
}

fn vector_error(error: impl std::fmt::Display) -> Error {
    Error::internal(format!("vector index: {error}"))
}

/// A vector of another dimension than the store's is a bug of ours, not bad input.
fn check_dim(dim: usize, vector: &[f32]) -> Result<()> {
    if vector.len() != dim {
        return Err(Error::internal(format!("a vector of {} dimensions cannot go in an index of {dim}", vector.len())));
    }
    Ok(())
}

/// Optimises the store in the background (compaction) on a thread of its own: it
/// takes seconds on a large store.
/// Shutdown waits for it through `tasks`, so the store is closed before it may be
/// opened again.
pub fn spawn_optimizer(
    store: Arc<dyn VectorStore>,
    shutdown: CancellationToken,
    every: Duration,
    tasks: &TaskTracker,
) -> Result<()> {
    const TICK: Duration = Duration::from_millis(100);
    let (ended, end) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("vector-optimizer".to_owned())
        .spawn(move || {
            let mut waited = Duration::ZERO;
            while !shutdown.is_cancelled() {
                std::thread::sleep(TICK);
                waited += TICK;
                if waited < every {
                    continue;
                }
                waited = Duration::ZERO;
                if let Err(error) = store.optimize() {
                    tracing::warn!(%error, "optimising the vector index failed; searches still work, unindexed");
                }
            }
            drop(ended);
        })
        .map_err(|e| Error::internal(format!("starting the vector optimiser: {e}")))?;
    tasks.spawn(async move {
        let _ = end.await;
    });
    Ok(())
}
