//! The cluster backend of [`VectorStore`]: a Qdrant server (or cluster) reached over
//! gRPC with `qdrant-client`, chosen when `HELIX_QDRANT_URL` is set.
//!
//! Every search replica writes the same collection: a node's vector is one point whose
//! id is the node's id, so replicas applying the same events write the same points.
//! The collection's name carries the embedder (`<collection>_<embedder>_<dim>`): vectors
//! of another model are never mixed in, and changing the embedder starts a new
//! collection that start-up fills by reindexing.
//!
//! [`VectorStore`] is synchronous (the writer thread and blocking tasks call it), so each
//! call runs the client's future to completion on the service's runtime from that
//! thread; it is never called from the async executor itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use helix_core::{Error, Result};
use qdrant_client::Qdrant;
use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::points_selector::PointsSelectorOneOf;
use qdrant_client::qdrant::points_update_operation::{DeletePoints, Operation, PointStructList};
use qdrant_client::qdrant::value::Kind;
use qdrant_client::qdrant::{
    Condition, CountPoints, CreateCollection, CreateFieldIndexCollection, Distance, FieldType, Filter, GetPoints,
    PointId, PointStruct, PointsIdsList, PointsSelector, PointsUpdateOperation, Query, QueryPoints, Range,
    UpdateBatchPoints, VectorParams, VectorsConfig, WithPayloadSelector, WithVectorsSelector,
};
use tokio::runtime::Handle;
use uuid::Uuid;

use super::{EmbedderMark, KIND, NAMESPACE, Neighbour, TAGS, UPDATED_AT, VERSION, VectorFilter, VectorOp, VectorStore};

/// Points per update request: a batch of the writer may hold thousands of 384-float
/// vectors, more than one gRPC message should carry.
const POINTS_PER_REQUEST: usize = 256;
/// How long one call to Qdrant may take before the writer fails the batch (its events
/// are redelivered) or the search answers an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the vectors live in a Qdrant deployment.
#[derive(Debug, Clone)]
pub struct QdrantSettings {
    /// gRPC URL, e.g. `http://qdrant:6334`
    pub url: String,
    pub api_key: Option<String>,
    /// the collection name before the embedder suffix
    pub collection: String,
}

pub struct QdrantVectors {
    client: Qdrant,
    collection: String,
    dim: usize,
    runtime: Handle,
    closed: AtomicBool,
}

fn qdrant_error(error: impl std::fmt::Display) -> Error {
    Error::unavailable(format!("qdrant: {error}"))
}

/// `helix_nodes` + MiniLM → `helix_nodes_all-minilm-l6-v2_384`: Qdrant names take
/// letters, digits, `-` and `_`.
pub fn collection_name(base: &str, mark: &EmbedderMark) -> String {
    let slug: String = mark
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c.to_ascii_lowercase() } else { '-' })
        .collect();
    format!("{base}_{slug}_{}", mark.dim)
}

impl QdrantVectors {
    /// Connects and makes sure the embedder's collection exists with its payload
    /// indexes. Answers true when the collection was created (it must be filled).
    /// Runs on a blocking thread of `runtime`.
    pub fn open(settings: &QdrantSettings, mark: &EmbedderMark, runtime: Handle) -> Result<(Self, bool)> {
        let client = Qdrant::from_url(&settings.url)
            .api_key(settings.api_key.clone())
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            // the server's version is checked by what answers, not by a start-up probe
            .skip_compatibility_check()
            .build()
            .map_err(qdrant_error)?;
        let collection = collection_name(&settings.collection, mark);
        let store = Self { client, collection, dim: mark.dim, runtime, closed: AtomicBool::new(false) };
        let created = store.ensure_collection()?;
        Ok((store, created))
    }

    fn ensure_collection(&self) -> Result<bool> {
        let exists = self.run(self.client.collection_exists(self.collection.as_str()))?;
        if exists {
            return Ok(false);
        }
        tracing::info!(collection = %self.collection, dim = self.dim, "creating the Qdrant collection");
        let created = self.run(self.client.create_collection(CreateCollection {
            collection_name: self.collection.clone(),
            vectors_config: Some(VectorsConfig::from(VectorParams {
                size: self.dim as u64,
                distance: Distance::Cosine.into(),
                ..Default::default()
            })),
            ..Default::default()
        }));
        if let Err(error) = created {
            // another replica created it first
            if !self.run(self.client.collection_exists(self.collection.as_str()))? {
                return Err(error);
            }
            return Ok(false);
        }
        for (field, kind) in [
            (NAMESPACE, FieldType::Keyword),
            (KIND, FieldType::Keyword),
            (TAGS, FieldType::Keyword),
            (UPDATED_AT, FieldType::Float),
        ] {
            self.run(self.client.create_field_index(CreateFieldIndexCollection {
                collection_name: self.collection.clone(),
                wait: Some(true),
                field_name: field.to_owned(),
                field_type: Some(kind.into()),
                ..Default::default()
            }))?;
        }
        Ok(true)
    }

    /// Runs a client call to completion from this (non-async) thread.
    fn run<T, E: std::fmt::Display>(&self, call: impl Future<Output = std::result::Result<T, E>>) -> Result<T> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::unavailable("the vector index is closed"));
        }
        self.runtime.block_on(call).map_err(qdrant_error)
    }

    fn check_dim(&self, vector: &[f32]) -> Result<()> {
        super::check_dim(self.dim, vector)
    }

    fn update(&self, operations: Vec<PointsUpdateOperation>) -> Result<()> {
        self.run(self.client.update_points_batch(UpdateBatchPoints {
            collection_name: self.collection.clone(),
            // answered once applied: the full-text commit that follows may show the
            // document, and a search must then find its vector
            wait: Some(true),
            operations,
            ..Default::default()
        }))
        .map(drop)
    }
}

fn point_id(id: Uuid) -> PointId {
    PointId::from(id.to_string())
}

fn selector(ids: Vec<PointId>) -> Option<PointsSelector> {
    Some(PointsSelector { points_selector_one_of: Some(PointsSelectorOneOf::Points(PointsIdsList { ids })) })
}

impl VectorStore for QdrantVectors {
    fn apply(&self, ops: Vec<VectorOp>) -> Result<()> {
        // consecutive changes of one kind go in one operation, at most
        // POINTS_PER_REQUEST points to a request; order is kept
        let mut operations = Vec::new();
        let mut in_request = 0;
        let mut ops = ops.into_iter().peekable();
        while let Some(first) = ops.next() {
            let upsert = matches!(first, VectorOp::Upsert(_));
            let mut run = vec![first];
            while in_request + run.len() < POINTS_PER_REQUEST
                && ops.peek().is_some_and(|next| matches!(next, VectorOp::Upsert(_)) == upsert)
            {
                run.extend(ops.next());
            }
            in_request += run.len();
            let operation = if upsert {
                let mut points = Vec::with_capacity(run.len());
                for op in run {
                    let VectorOp::Upsert(point) = op else { continue };
                    self.check_dim(&point.vector)?;
                    let payload = [
                        (NAMESPACE, point.namespace.into()),
                        (KIND, point.kind.into()),
                        (TAGS, point.tags.into()),
                        (UPDATED_AT, (point.updated_at as f64).into()),
                        (VERSION, point.version.into()),
                    ];
                    points.push(PointStruct::new(point_id(point.id), point.vector, payload));
                }
                Operation::Upsert(PointStructList { points, ..Default::default() })
            } else {
                let ids = run
                    .into_iter()
                    .filter_map(|op| match op {
                        VectorOp::Delete(id) => Some(point_id(id)),
                        VectorOp::Upsert(_) => None,
                    })
                    .collect();
                Operation::DeletePoints(DeletePoints { points: selector(ids), ..Default::default() })
            };
            operations.push(PointsUpdateOperation { operation: Some(operation) });
            if in_request >= POINTS_PER_REQUEST {
                self.update(std::mem::take(&mut operations))?;
                in_request = 0;
            }
        }
        if !operations.is_empty() {
            self.update(operations)?;
        }
        Ok(())
    }

    fn search(&self, query: &[f32], filter: &VectorFilter, limit: usize) -> Result<Vec<Neighbour>> {
        self.check_dim(query)?;
        let response = self.run(self.client.query(QueryPoints {
            collection_name: self.collection.clone(),
            query: Some(Query::new_nearest(query.to_vec())),
            filter: qdrant_filter(filter),
            limit: Some(limit as u64),
            with_payload: Some(WithPayloadSelector::from(false)),
            with_vectors: Some(WithVectorsSelector::from(false)),
            ..Default::default()
        }))?;
        Ok(response
            .result
            .into_iter()
            .filter_map(|point| {
                let id = uuid_of(point.id?)?;
                Some(Neighbour { id, similarity: point.score })
            })
            .collect())
    }

    fn count(&self) -> u64 {
        let counted = self.run(self.client.count(CountPoints {
            collection_name: self.collection.clone(),
            exact: Some(false),
            ..Default::default()
        }));
        match counted {
            Ok(response) => response.result.map_or(0, |result| result.count),
            Err(error) => {
                tracing::warn!(%error, "counting the Qdrant collection failed");
                0
            }
        }
    }

    fn versions(&self, ids: &[Uuid]) -> Result<Vec<Option<i64>>> {
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(POINTS_PER_REQUEST) {
            let response = self.run(self.client.get_points(GetPoints {
                collection_name: self.collection.clone(),
                ids: chunk.iter().map(|&id| point_id(id)).collect(),
                with_payload: Some(WithPayloadSelector::from(vec![VERSION])),
                with_vectors: Some(WithVectorsSelector::from(false)),
                ..Default::default()
            }))?;
            for point in response.result {
                let version = point.payload.get(VERSION).and_then(|value| match value.kind {
                    Some(Kind::IntegerValue(version)) => Some(version),
                    _ => None,
                });
                if let Some(id) = point.id.and_then(uuid_of) {
                    // a point written before versions were kept counts as lagging
                    found.insert(id, version.unwrap_or(i64::MIN));
                }
            }
        }
        Ok(ids.iter().map(|id| found.get(id).copied()).collect())
    }

    /// The server optimises its own segments.
    fn optimize(&self) -> Result<bool> {
        Ok(false)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

fn uuid_of(id: PointId) -> Option<Uuid> {
    match id.point_id_options? {
        PointIdOptions::Uuid(text) => text.parse().ok(),
        PointIdOptions::Num(_) => None,
    }
}

fn qdrant_filter(filter: &VectorFilter) -> Option<Filter> {
    let mut must = Vec::new();
    if !filter.namespaces.is_empty() {
        must.push(Condition::matches(NAMESPACE, filter.namespaces.clone()));
    }
    if !filter.kinds.is_empty() {
        must.push(Condition::matches(KIND, filter.kinds.clone()));
    }
    for tag in &filter.tags {
        must.push(Condition::matches(TAGS, tag.clone()));
    }
    if filter.updated_after.is_some() || filter.updated_before.is_some() {
        let range = Range {
            gt: filter.updated_after.map(|t| t as f64),
            lt: filter.updated_before.map(|t| t as f64),
            ..Default::default()
        };
        must.push(Condition::range(UPDATED_AT, range));
    }
    (!must.is_empty()).then(|| Filter::must(must))
}
