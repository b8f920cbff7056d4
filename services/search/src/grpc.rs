//! The search service's gRPC face: converts wire messages to domain types and back,
//! and nothing else. The index lives in [`SearchIndex`], query rules in
//! [`SearchQuery`].

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use helix_core::node::{self, DEFAULT_KIND, DEFAULT_NAMESPACE};
use helix_core::{Error, Result};
use helix_proto::v1 as pb;
use helix_proto::v1::search_service_server::SearchService;
use helix_proto::v1::storage_service_client::StorageServiceClient;
use helix_runtime::grpc::GrpcChannel;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::document::Document;
use crate::index::{Hit, SearchIndex, SearchResults, Stats};
use crate::query::{Mode, Operator, SearchQuery};
use crate::reindex::{self, Progress};
use crate::writer::{Op, Source};

/// Documents (or ids) one index or remove request may carry.
const MAX_DOCUMENTS: usize = node::MAX_BULK;
/// Neighbours FindSimilar answers at most.
const MAX_SIMILAR: u32 = 100;

pub struct SearchApi {
    index: Arc<SearchIndex>,
    storage: StorageServiceClient<GrpcChannel>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl SearchApi {
    pub fn new(
        index: Arc<SearchIndex>,
        storage: StorageServiceClient<GrpcChannel>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self { index, storage, tasks, shutdown }
    }

    /// Starts a reindex of this replica from storage; its progress comes on the answer.
    pub fn spawn_reindex(&self, namespace: Option<String>, re_embed: bool) -> Result<mpsc::Receiver<Result<Progress>>> {
        let guard = self.index.claim_reindex()?;
        let (progress, updates) = mpsc::channel(64);
        let run = reindex::run(self.index.clone(), guard, self.storage.clone(), namespace, re_embed, progress);
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = run => {}
                () = shutdown.cancelled() => {}
            }
        });
        Ok(updates)
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

fn reply<T>(result: Result<T>) -> Reply<T> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl SearchService for SearchApi {
    async fn search(&self, request: Request<pb::SearchRequest>) -> Reply<pb::SearchResponse> {
        let request = request.into_inner();
        let result = async { self.index.search(search_query_from_pb(request)?).await.map(results_to_pb) };
        reply(result.await)
    }

    async fn find_similar(&self, request: Request<pb::FindSimilarRequest>) -> Reply<pb::SearchResponse> {
        let request = request.into_inner();
        let result = async {
            let id = node::parse_id(&request.node_id)?;
            for namespace in &request.namespaces {
                node::validate_namespace(namespace)?;
            }
            let limit = match request.limit {
                0 => 10,
                n => n.min(MAX_SIMILAR),
            } as usize;
            let filter = crate::vectors::VectorFilter {
                namespaces: request.namespaces,
                kinds: request.kinds,
                ..Default::default()
            };
            let min_score = match request.min_score {
                Some(min) if !min.is_finite() => {
                    return Err(Error::invalid("invalid_min_score", "min_score must be a number"));
                }
                min => min,
            };
            self.index.similar(id, filter, limit, min_score).await.map(results_to_pb)
        };
        reply(result.await)
    }

    async fn suggest(&self, request: Request<pb::SuggestRequest>) -> Reply<pb::SuggestResponse> {
        let request = request.into_inner();
        let result = async {
            for namespace in &request.namespaces {
                node::validate_namespace(namespace)?;
            }
            let limit = match request.limit {
                0 => 8,
                n => n.min(50),
            } as usize;
            let suggestions = self.index.suggest(request.prefix, request.namespaces, limit).await?;
            Ok(pb::SuggestResponse {
                completions: suggestions.completions,
                titles: suggestions.titles.into_iter().map(|(id, title)| pb::SuggestedTitle { id, title }).collect(),
            })
        };
        reply(result.await)
    }

    async fn index_documents(&self, request: Request<pb::IndexDocumentsRequest>) -> Reply<pb::IndexDocumentsResponse> {
        let request = request.into_inner();
        let result = async {
            if request.documents.len() > MAX_DOCUMENTS {
                return Err(Error::invalid(
                    "too_many_documents",
                    format!("a request indexes at most {MAX_DOCUMENTS} documents"),
                ));
            }
            let dim = self.index.embedder.info().dim;
            let ops = request
                .documents
                .into_iter()
                .enumerate()
                .map(|(i, doc)| {
                    document_from_pb(doc, dim).map(|doc| Op::Upsert(Box::new(doc))).map_err(|e| {
                        Error::new(e.kind(), e.code().to_owned(), format!("documents[{i}]: {}", e.message()))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let applied = self.index.writer.apply(ops, Source::Push, request.wait_searchable).await?;
            Ok(pb::IndexDocumentsResponse { indexed: applied.indexed, skipped_stale: applied.skipped_stale })
        };
        reply(result.await)
    }

    async fn remove_documents(
        &self,
        request: Request<pb::RemoveDocumentsRequest>,
    ) -> Reply<pb::RemoveDocumentsResponse> {
        let request = request.into_inner();
        let result = async {
            if request.ids.len() > MAX_DOCUMENTS {
                return Err(Error::invalid(
                    "too_many_documents",
                    format!("a request removes at most {MAX_DOCUMENTS} ids"),
                ));
            }
            let ops = request
                .ids
                .iter()
                .map(|id| Ok(Op::Delete { id: node::parse_id(id)?.to_string(), version: None }))
                .collect::<Result<Vec<_>>>()?;
            let applied = self.index.writer.apply(ops, Source::Push, request.wait_searchable).await?;
            Ok(pb::RemoveDocumentsResponse { removed: applied.removed })
        };
        reply(result.await)
    }

    /// Every node listed is embedded again unless its indexed version is the same and
    /// it has a vector; `re_embed` embeds them all (after a change of the model files
    /// under one name).
    async fn reindex(&self, request: Request<pb::ReindexRequest>) -> Reply<BoxStream<pb::ReindexProgress>> {
        let request = request.into_inner();
        if let Some(namespace) = &request.namespace {
            node::validate_namespace(namespace).map_err(Status::from)?;
        }
        let updates = self.spawn_reindex(request.namespace, request.re_embed).map_err(Status::from)?;
        let stream = ReceiverStream::new(updates).map(|update| update.map(progress_to_pb).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    /// The query metrics (queries, latencies, zero-result rate, top score) are not
    /// measured yet and answer 0. `range` only windows those metrics, so it changes
    /// nothing yet. Vectors are counted over every namespace.
    async fn get_search_stats(&self, request: Request<pb::GetSearchStatsRequest>) -> Reply<pb::SearchStats> {
        let request = request.into_inner();
        let result = async {
            if let Some(namespace) = &request.namespace {
                node::validate_namespace(namespace)?;
            }
            let info = self.index.embedder.info();
            self.index.stats(request.namespace).await.map(|stats| stats_to_pb(stats, info))
        };
        reply(result.await)
    }

    async fn wait_indexed(&self, request: Request<pb::WaitIndexedRequest>) -> Reply<pb::WaitIndexedResponse> {
        let request = request.into_inner();
        let result = async {
            let nodes = request
                .nodes
                .into_iter()
                .map(|node| {
                    let id = node.id.parse::<uuid::Uuid>().map_err(|_| {
                        Error::invalid(
                            "invalid_id",
                            format!("{:?} is not a node id", node.id.chars().take(40).collect::<String>()),
                        )
                    })?;
                    Ok((id, node.version))
                })
                .collect::<Result<Vec<_>>>()?;
            let timeout = match request.timeout_ms {
                0 => WAIT_DEFAULT,
                ms => Duration::from_millis(u64::from(ms)).min(WAIT_LONGEST),
            };
            self.index.wait_indexed(nodes, request.vectors, timeout).await?;
            Ok(pb::WaitIndexedResponse { vectors_pending: self.index.backlog.pending() })
        };
        reply(result.await)
    }
}

/// How long WaitIndexed waits unless told.
const WAIT_DEFAULT: Duration = Duration::from_secs(10);
const WAIT_LONGEST: Duration = Duration::from_secs(60);

fn search_query_from_pb(request: pb::SearchRequest) -> Result<SearchQuery> {
    let page = request.page.unwrap_or_default();
    let mut query = SearchQuery::new(request.query, page.limit, &page.cursor)?.namespaces(request.namespaces)?;
    query.mode = Mode::parse(&request.mode)?;
    query.operator = Operator::parse(&request.operator, query.mode)?;
    query.vector_weight = match request.vector_weight {
        None => crate::query::DEFAULT_VECTOR_WEIGHT,
        Some(w) if (0.0..=1.0).contains(&w) => w,
        Some(_) => return Err(Error::invalid("invalid_vector_weight", "vector_weight must be within 0.0..=1.0")),
    };
    query.kinds = request.kinds;
    query.tags = request.tags;
    query.min_score = match request.min_score {
        Some(min) if !min.is_finite() => return Err(Error::invalid("invalid_min_score", "min_score must be a number")),
        min => min,
    };
    query.highlight = request.highlight;
    query.updated_after = request.updated_after.map(time_from_pb).transpose()?;
    query.updated_before = request.updated_before.map(time_from_pb).transpose()?;
    Ok(query)
}

fn results_to_pb(results: SearchResults) -> pb::SearchResponse {
    pb::SearchResponse {
        hits: results.hits.into_iter().map(hit_to_pb).collect(),
        next_cursor: results.next_offset.map(|offset| offset.to_string()).unwrap_or_default(),
        total_hits: results.total_hits,
        mode: results.mode.name().to_owned(),
        took_ms: results.took_ms,
        embedding_ms: results.embedding_ms,
        vectors_pending: results.vectors_pending,
    }
}

fn hit_to_pb(hit: Hit) -> pb::SearchHit {
    let d = hit.document;
    pb::SearchHit {
        id: d.id,
        namespace: d.namespace,
        kind: d.kind,
        title: d.title,
        content: d.content,
        tags: d.tags,
        source: d.source,
        importance: d.importance,
        metadata_json: d.metadata_json,
        score: hit.score,
        fulltext_score: hit.fulltext.map(|r| r.score),
        vector_score: hit.vector.map(|r| r.score),
        fulltext_rank: hit.fulltext.map(|r| r.rank),
        vector_rank: hit.vector.map(|r| r.rank),
        highlights: hit.highlights,
        created_at: Some(timestamp(d.created_at)),
        updated_at: Some(timestamp(d.updated_at)),
        version: d.version,
    }
}

/// A pushed document: the same rules as a node where the index relies on them. A
/// precomputed `embedding` must be of the embedder's dimension (and space: the index
/// cannot tell); without one the service embeds the text.
fn document_from_pb(doc: pb::SearchDocument, dim: usize) -> Result<Document> {
    let id = node::parse_id(&doc.id)?;
    let embedding = match doc.embedding {
        vector if vector.is_empty() => None,
        vector if vector.len() != dim => {
            return Err(Error::invalid(
                "invalid_embedding",
                format!("embedding has {} dimensions, the index's embedder {dim}", vector.len()),
            ));
        }
        vector if vector.iter().any(|x| !x.is_finite()) => {
            return Err(Error::invalid("invalid_embedding", "embedding holds a value that is not a number"));
        }
        mut vector => {
            let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm == 0.0 {
                return Err(Error::invalid("invalid_embedding", "embedding is all zeros"));
            }
            vector.iter_mut().for_each(|x| *x /= norm);
            Some(vector)
        }
    };
    let namespace = if doc.namespace.is_empty() { DEFAULT_NAMESPACE.to_owned() } else { doc.namespace };
    node::validate_namespace(&namespace)?;
    if doc.version < 1 {
        return Err(Error::invalid("invalid_version", "version must be at least 1"));
    }
    if !doc.importance.is_finite() {
        return Err(Error::invalid("invalid_importance", "importance must be a number"));
    }
    let metadata_json = match doc.metadata_json.as_str() {
        "" => "{}".to_owned(),
        text => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(_)) => doc.metadata_json,
            _ => return Err(Error::invalid("invalid_metadata", "metadata_json must be a JSON object")),
        },
    };
    let now = Utc::now();
    Ok(Document {
        id: id.to_string(),
        namespace,
        kind: if doc.kind.is_empty() { DEFAULT_KIND.to_owned() } else { doc.kind },
        title: doc.title,
        content: doc.content,
        tags: doc.tags,
        source: doc.source,
        importance: doc.importance,
        metadata_json,
        created_at: doc.created_at.map(time_from_pb).transpose()?.unwrap_or(now),
        updated_at: doc.updated_at.map(time_from_pb).transpose()?.unwrap_or(now),
        version: doc.version,
        embedding,
    })
}

/// A node as storage lists it (for reindexing).
pub fn document_from_node(node: pb::Node) -> Result<Document> {
    let id = node::parse_id(&node.id)?;
    Ok(Document {
        id: id.to_string(),
        namespace: node.namespace,
        kind: node.kind,
        title: node.title,
        content: node.content,
        tags: node.tags,
        source: node.source,
        importance: node.importance,
        metadata_json: node.metadata_json,
        created_at: node.created_at.map(time_from_pb).transpose()?.unwrap_or_default(),
        updated_at: node.updated_at.map(time_from_pb).transpose()?.unwrap_or_default(),
        version: node.version,
        embedding: None,
    })
}

fn stats_to_pb(stats: Stats, embedder: helix_embed::EmbedderInfo) -> pb::SearchStats {
    pb::SearchStats {
        documents: stats.documents,
        vectors_pending: stats.vectors_pending,
        index_bytes: stats.index_bytes,
        namespaces: stats
            .namespaces
            .into_iter()
            .map(|(namespace, documents)| pb::SearchNamespaceCount { namespace, documents })
            .collect(),
        last_indexed_at: stats.last_commit.map(timestamp),
        vectors: stats.vectors,
        embedder_model: embedder.name,
        embedding_dimensions: u32::try_from(embedder.dim).unwrap_or(u32::MAX),
        // not measured yet (see get_search_stats)
        queries: 0,
        mean_latency_ms: 0.0,
        p95_latency_ms: 0.0,
        zero_result_rate: 0.0,
        mean_top_score: 0.0,
    }
}

fn progress_to_pb(progress: Progress) -> pb::ReindexProgress {
    pb::ReindexProgress {
        phase: progress.phase.name().to_owned(),
        processed: progress.processed,
        total: progress.total,
        failed: progress.failed,
        done: progress.phase == reindex::Phase::Done,
        at: Some(timestamp(progress.at)),
    }
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

fn time_from_pb(t: prost_types::Timestamp) -> Result<DateTime<Utc>> {
    u32::try_from(t.nanos)
        .ok()
        .and_then(|nanos| Utc.timestamp_opt(t.seconds, nanos).single())
        .ok_or_else(|| Error::invalid("invalid_time", "a timestamp is out of range"))
}
