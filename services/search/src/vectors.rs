//! The vector side of a replica's index: one embedding per live node, searched by
//! cosine similarity with the same filters as full text.
//!
//! [`VectorStore`] is the one interface; [`EdgeVectors`] is the embedded default,
//! Qdrant's own engine in-process (the `qdrant-edge` crate: segments with a WAL under
//! `HELIX_HOME/search/vectors`, HNSW once a segment outgrows plain scanning, keyword
//! payload indexes for the filters). It is synchronous: the writer thread, blocking
//! tasks and the optimiser thread call it, never the async executor.
//!
//! [`QdrantVectors`] is the cluster backend (`HELIX_QDRANT_URL`): see [`qdrant`].
//!
//! Only the [`writer`](crate::writer) changes the store, after its own version checks
//! against the full-text index: a vector is written exactly when the node's full-text
//! document is, and removed with it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use helix_core::{Error, Result};
use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::external::serde_json::json;
use qdrant_edge::{
    Condition, DEFAULT_VECTOR_NAME, Distance, EdgeConfig, EdgeShard, EdgeVectorParams, FieldCondition,
    FieldIndexOperations, Filter, Match, PayloadFieldSchema, PayloadSchemaType, PointId, PointInsertOperations,
    PointOperations, PointStruct, QueryEnum, Range, SearchRequest, UpdateOperation, WithPayloadInterface, WithVector,
};
use qdrant_edge::{CreateIndex, NamedQuery, OperationResult};
use uuid::Uuid;

pub mod qdrant;
pub use qdrant::{QdrantSettings, QdrantVectors};

/// The payload fields filters use; each has a keyword index (or a float range index).
const NAMESPACE: &str = "namespace";
const KIND: &str = "kind";
const TAGS: &str = "tags";
const UPDATED_AT: &str = "updated_at";
/// What the store was built with, so a change of embedder is noticed at start.
const EMBEDDER_FILE: &str = "embedder.json";

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
    /// Vectors held (approximately, while segments are being optimised).
    fn count(&self) -> u64;
    /// Whether the id has a vector.
    fn contains(&self, id: Uuid) -> Result<bool>;
    /// Builds indexes and merges segments; true when it changed anything.
    fn optimize(&self) -> Result<bool>;
    /// Flushes and releases the store's files (its WAL lock): a process that stops a
    /// search service and starts another on the same home needs them free, whoever
    /// still holds a handle. Every later call fails.
    fn close(&self);
}

/// The embedded store: a qdrant-edge shard.
pub struct EdgeVectors {
    /// `None` once closed
    shard: RwLock<Option<EdgeShard>>,
    dim: usize,
    /// changes since the last optimisation
    dirty: AtomicBool,
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

impl EdgeVectors {
    /// Opens the store at `path` for vectors of `mark`'s embedder, creating it when there
    /// is none. A store built by another embedder (or of another dimension) is moved
    /// aside and a new one created: answers true when the store is new, so the caller
    /// knows it must be filled.
    ///
    /// `fresh` drops what the store holds (its full-text side was lost: vectors without
    /// documents would never be cleaned).
    pub fn open(path: &Path, mark: &EmbedderMark, fresh: bool) -> Result<(Self, bool)> {
        let marked = path.join(EMBEDDER_FILE);
        if fresh && marked.exists() {
            tracing::info!(path = %path.display(), "the full-text index is new: its old vectors are dropped");
            std::fs::remove_file(&marked).map_err(vector_error)?;
        }
        let existing: Option<EmbedderMark> =
            std::fs::read(&marked).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let mut created = existing.is_none();
        if existing.as_ref().is_some_and(|old| old != mark) {
            let aside = aside_path(path);
            tracing::warn!(
                old = ?existing, new = ?mark, moved_to = %aside.display(),
                "the embedder changed: the vector index is rebuilt"
            );
            std::fs::rename(path, &aside).map_err(vector_error)?;
            created = true;
        }
        if created && path.exists() {
            // a store without its mark was never finished: start over
            std::fs::remove_dir_all(path).map_err(vector_error)?;
        }
        std::fs::create_dir_all(path).map_err(vector_error)?;
        let config = EdgeConfig {
            on_disk_payload: false,
            vectors: [(
                DEFAULT_VECTOR_NAME.to_owned(),
                EdgeVectorParams {
                    size: mark.dim,
                    distance: Distance::Cosine,
                    on_disk: None,
                    multivector_config: None,
                    datatype: None,
                    quantization_config: None,
                    hnsw_config: None,
                },
            )]
            .into(),
            ..EdgeConfig::default()
        };
        let shard = EdgeShard::load(path, Some(config)).map_err(vector_error)?;
        let store = Self { shard: RwLock::new(Some(shard)), dim: mark.dim, dirty: AtomicBool::new(true) };
        if created {
            store.create_payload_indexes()?;
            let bytes = serde_json::to_vec(mark).map_err(vector_error)?;
            std::fs::write(&marked, bytes).map_err(vector_error)?;
        }
        Ok((store, created))
    }

    fn create_payload_indexes(&self) -> Result<()> {
        for (field, schema) in [
            (NAMESPACE, PayloadSchemaType::Keyword),
            (KIND, PayloadSchemaType::Keyword),
            (TAGS, PayloadSchemaType::Keyword),
            (UPDATED_AT, PayloadSchemaType::Float),
        ] {
            let create = CreateIndex {
                field_name: payload_key(field)?,
                field_schema: Some(PayloadFieldSchema::FieldType(schema)),
            };
            self.with_shard(|shard| {
                shard.update(UpdateOperation::FieldIndexOperation(FieldIndexOperations::CreateIndex(create)))
            })?;
        }
        Ok(())
    }

    fn with_shard<T>(&self, work: impl FnOnce(&EdgeShard) -> OperationResult<T>) -> Result<T> {
        let shard = self.shard.read().expect("vector store lock");
        let shard = shard.as_ref().ok_or_else(|| Error::unavailable("the vector index is closed"))?;
        work(shard).map_err(vector_error)
    }

    fn check_dim(&self, vector: &[f32]) -> Result<()> {
        check_dim(self.dim, vector)
    }
}

/// A vector of another dimension than the store's is a bug of ours, not bad input.
fn check_dim(dim: usize, vector: &[f32]) -> Result<()> {
    if vector.len() != dim {
        return Err(Error::internal(format!("a vector of {} dimensions cannot go in an index of {dim}", vector.len())));
    }
    Ok(())
}

/// `vectors` → `vectors.replaced-<unix seconds>` beside it.
fn aside_path(path: &Path) -> PathBuf {
    let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".replaced-{seconds}"));
    path.with_file_name(name)
}

impl VectorStore for EdgeVectors {
    fn apply(&self, ops: Vec<VectorOp>) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        // consecutive changes of one kind go in one operation; order is kept
        let mut ops = ops.into_iter().peekable();
        while let Some(first) = ops.next() {
            let operation = match first {
                VectorOp::Upsert(point) => {
                    let mut points = vec![point];
                    while let Some(VectorOp::Upsert(_)) = ops.peek() {
                        let Some(VectorOp::Upsert(point)) = ops.next() else { unreachable!() };
                        points.push(point);
                    }
                    let mut list = Vec::with_capacity(points.len());
                    for point in points {
                        self.check_dim(&point.vector)?;
                        let payload = json!({
                            NAMESPACE: point.namespace,
                            KIND: point.kind,
                            TAGS: point.tags,
                            UPDATED_AT: point.updated_at as f64,
                        });
                        list.push(PointStruct::new(PointId::Uuid(point.id), point.vector, payload).into());
                    }
                    PointOperations::UpsertPoints(PointInsertOperations::PointsList(list))
                }
                VectorOp::Delete(id) => {
                    let mut ids = vec![PointId::Uuid(id)];
                    while let Some(VectorOp::Delete(_)) = ops.peek() {
                        let Some(VectorOp::Delete(id)) = ops.next() else { unreachable!() };
                        ids.push(PointId::Uuid(id));
                    }
                    PointOperations::DeletePoints { ids }
                }
            };
            self.with_shard(|shard| shard.update(UpdateOperation::PointOperation(operation)))?;
        }
        self.dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn search(&self, query: &[f32], filter: &VectorFilter, limit: usize) -> Result<Vec<Neighbour>> {
        self.check_dim(query)?;
        let request = SearchRequest {
            query: QueryEnum::Nearest(NamedQuery { query: query.to_vec().into(), using: None }),
            filter: edge_filter(filter)?,
            params: None,
            limit,
            offset: 0,
            with_payload: Some(WithPayloadInterface::Bool(false)),
            with_vector: Some(WithVector::Bool(false)),
            score_threshold: None,
        };
        let points = self.with_shard(|shard| shard.search(request))?;
        Ok(points
            .into_iter()
            .filter_map(|point| match point.id {
                PointId::Uuid(id) => Some(Neighbour { id, similarity: point.score }),
                PointId::NumId(_) => None,
            })
            .collect())
    }

    fn count(&self) -> u64 {
        self.with_shard(|shard| Ok(shard.info().points_count as u64)).unwrap_or(0)
    }

    fn contains(&self, id: Uuid) -> Result<bool> {
        let found = self.with_shard(|shard| {
            shard.retrieve(&[PointId::Uuid(id)], Some(WithPayloadInterface::Bool(false)), Some(WithVector::Bool(false)))
        })?;
        Ok(!found.is_empty())
    }

    fn optimize(&self) -> Result<bool> {
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return Ok(false);
        }
        self.with_shard(EdgeShard::optimize)
    }

    fn close(&self) {
        // dropping the shard flushes it and releases its WAL
        self.shard.write().expect("vector store lock").take();
    }
}

fn payload_key(name: &str) -> Result<qdrant_edge::JsonPath> {
    name.try_into().map_err(|()| vector_error(format!("{name:?} is not a payload key")))
}

fn edge_filter(filter: &VectorFilter) -> Result<Option<Filter>> {
    let key = payload_key;
    let keyword = |name: &str, value: &str| -> Result<Condition> {
        Ok(Condition::Field(FieldCondition::new_match(key(name)?, Match::from(value.to_owned()))))
    };
    let any_of = |name: &str, values: &[String]| -> Result<Condition> {
        let should = values.iter().map(|value| keyword(name, value)).collect::<Result<Vec<_>>>()?;
        Ok(Condition::Filter(Filter { should: Some(should), min_should: None, must: None, must_not: None }))
    };
    let mut must = Vec::new();
    if !filter.namespaces.is_empty() {
        must.push(any_of(NAMESPACE, &filter.namespaces)?);
    }
    if !filter.kinds.is_empty() {
        must.push(any_of(KIND, &filter.kinds)?);
    }
    for tag in &filter.tags {
        must.push(keyword(TAGS, tag)?);
    }
    if filter.updated_after.is_some() || filter.updated_before.is_some() {
        let range = Range {
            gt: filter.updated_after.map(|t| OrderedFloat(t as f64)),
            lt: filter.updated_before.map(|t| OrderedFloat(t as f64)),
            gte: None,
            lte: None,
        };
        must.push(Condition::Field(FieldCondition::new_range(key(UPDATED_AT)?, range)));
    }
    Ok((!must.is_empty()).then(|| Filter { should: None, min_should: None, must: Some(must), must_not: None }))
}

/// Optimises the store in the background (HNSW builds, segment merges) while it has
/// changes, on a thread of its own: an optimisation takes seconds on large segments.
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
