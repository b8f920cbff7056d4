//! `/api/v1/search` (and the original system's `POST /api/search` and
//! `GET /api/v1/search?q=`): search over knowledge nodes, answered by the search service.

use axum::Extension;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::StreamExt;
use helix_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiResult, ErrorBody, Json, Path, Query};
use crate::nodes::{NodeBody, node_body};
use helix_core::Error;

const SNIPPET_CHARS: usize = 200;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchInput {
    pub query: String,
    /// `fulltext`, `semantic` or `hybrid` (the default)
    pub mode: Option<String>,
    /// how the query's words combine in full text: `and` (default in mode fulltext) or
    /// `or` (default on the full-text side of hybrid)
    pub operator: Option<String>,
    /// weight of the vector list in hybrid fusion, 0.0..=1.0, default 0.5
    pub vector_weight: Option<f64>,
    /// hits scoring below this are dropped (BM25, cosine similarity or the fused score,
    /// by mode)
    pub min_score: Option<f64>,
    pub namespace: Option<String>,
    #[serde(default)]
    pub kinds: Vec<String>,
    /// every listed tag must be on a hit
    #[serde(default)]
    pub tags: Vec<String>,
    /// 1-100, default 10
    pub limit: Option<u32>,
    #[serde(default)]
    pub offset: u32,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct SearchParams {
    pub q: String,
    /// `fulltext`, `semantic` or `hybrid` (the default)
    pub mode: Option<String>,
    pub limit: Option<u32>,
    /// namespace
    pub ns: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchResult {
    pub id: String,
    pub title: String,
    /// the content, for clients of the original system
    pub content: String,
    /// matches wrapped in `<mark></mark>`, or the content's beginning
    pub snippet: String,
    pub score: f64,
    pub fulltext_score: Option<f64>,
    pub vector_score: Option<f64>,
    /// the hit's place in the full-text list (1 is first), when it was in it
    pub fulltext_rank: Option<u32>,
    /// the hit's place in the vector list, when it was in it
    pub vector_rank: Option<u32>,
    pub node: NodeBody,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchResults {
    pub results: Vec<SearchResult>,
    /// the mode the search service used
    pub mode: String,
    /// matches in all, not only this page (an estimate when vectors took part)
    pub total: u64,
    /// the offset of the next page, when more hits follow
    pub next_offset: Option<u32>,
    pub took_ms: u32,
    /// of took_ms, the time spent embedding the query
    pub embedding_ms: f64,
    /// documents searchable by words whose vectors are not written yet: while it is not
    /// 0, semantic and hybrid answers may miss them by meaning
    pub vectors_pending: u64,
}

#[utoipa::path(post, path = "/api/v1/search", tag = "search", request_body = SearchInput,
    responses((status = 200, body = SearchResults), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn search(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(input): Json<SearchInput>,
) -> ApiResult<Json<SearchResults>> {
    run(&state, &caller, input).await
}

/// The original system's search routes: the same search, shaped the same.
#[utoipa::path(get, path = "/api/v1/search", tag = "search", params(SearchParams),
    responses((status = 200, body = SearchResults), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn search_get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<SearchParams>,
) -> ApiResult<Json<SearchResults>> {
    let input = SearchInput {
        query: params.q,
        mode: params.mode,
        operator: None,
        vector_weight: None,
        min_score: None,
        namespace: params.ns,
        kinds: Vec::new(),
        tags: Vec::new(),
        limit: params.limit,
        offset: 0,
    };
    run(&state, &caller, input).await
}

async fn run(state: &AppState, caller: &Caller, input: SearchInput) -> ApiResult<Json<SearchResults>> {
    if input.query.trim().is_empty() {
        return Err(Error::invalid("empty_query", "query must not be empty").into());
    }
    let limit = match input.limit {
        None => 10,
        Some(n @ 1..=100) => n,
        Some(_) => return Err(Error::invalid("invalid_limit", "limit must be from 1 to 100").into()),
    };
    let request = pb::SearchRequest {
        query: input.query,
        mode: input.mode.unwrap_or_default(),
        operator: input.operator.unwrap_or_default(),
        vector_weight: input.vector_weight,
        min_score: input.min_score,
        namespaces: caller.searched(input.namespace)?,
        kinds: input.kinds,
        tags: input.tags,
        page: Some(pb::PageRequest {
            limit,
            cursor: if input.offset == 0 { String::new() } else { input.offset.to_string() },
        }),
        highlight: true,
        ..Default::default()
    };
    let response = state.search().search(request).await?.into_inner();
    let results = response.hits.into_iter().map(result).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(SearchResults {
        results,
        mode: response.mode,
        total: response.total_hits,
        next_offset: response.next_cursor.parse().ok(),
        took_ms: response.took_ms,
        embedding_ms: response.embedding_ms,
        vectors_pending: response.vectors_pending,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct SuggestParams {
    /// what was typed so far; its last word is completed
    pub q: String,
    /// namespace
    pub ns: Option<String>,
    /// 1-50, default 8
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SuggestedTitle {
    pub id: String,
    pub title: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Suggestions {
    /// `q` with its last word completed from the words of matching titles, most
    /// frequent first
    pub completions: Vec<String>,
    /// titles of the best matches
    pub titles: Vec<SuggestedTitle>,
}

/// Prefix completion for a search box.
#[utoipa::path(get, path = "/api/v1/search/suggest", tag = "search", params(SuggestParams),
    responses((status = 200, body = Suggestions), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn suggest(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<SuggestParams>,
) -> ApiResult<Json<Suggestions>> {
    if params.q.chars().count() > 256 {
        return Err(Error::invalid("query_too_long", "q is longer than 256 characters").into());
    }
    let limit = match params.limit {
        None => 8,
        Some(n @ 1..=50) => n,
        Some(_) => return Err(Error::invalid("invalid_limit", "limit must be from 1 to 50").into()),
    };
    let request = pb::SuggestRequest { prefix: params.q, namespaces: caller.searched(params.ns)?, limit };
    let response = state.search().suggest(request).await?.into_inner();
    Ok(Json(Suggestions {
        completions: response.completions,
        titles: response.titles.into_iter().map(|t| SuggestedTitle { id: t.id, title: t.title }).collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct SimilarParams {
    /// 1-100, default 10
    pub limit: Option<u32>,
    /// namespace
    pub ns: Option<String>,
}

/// The nodes nearest in meaning to an indexed node.
#[utoipa::path(get, path = "/api/v1/search/similar/{id}", tag = "search", params(("id" = uuid::Uuid, Path), SimilarParams),
    responses((status = 200, body = SearchResults), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn similar(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(params): Query<SimilarParams>,
) -> ApiResult<Json<SearchResults>> {
    let limit = match params.limit {
        None => 10,
        Some(n @ 1..=100) => n,
        Some(_) => return Err(Error::invalid("invalid_limit", "limit must be from 1 to 100").into()),
    };
    let request =
        pb::FindSimilarRequest { node_id: id, namespaces: caller.searched(params.ns)?, limit, ..Default::default() };
    let response = state.search().find_similar(request).await?.into_inner();
    let results = response.hits.into_iter().map(result).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(SearchResults {
        results,
        mode: response.mode,
        total: response.total_hits,
        next_offset: None,
        took_ms: response.took_ms,
        embedding_ms: response.embedding_ms,
        vectors_pending: response.vectors_pending,
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReindexInput {
    /// only this namespace; unset rebuilds every one
    pub namespace: Option<String>,
    /// embed every node again, even those indexed at their current version
    #[serde(default)]
    pub re_embed: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReindexProgress {
    /// listing, indexing, committing, done
    pub phase: String,
    pub processed: u64,
    /// 0 while not yet known
    pub total: u64,
    pub failed: u64,
    pub done: bool,
}

/// Rebuilds the search index of the replica that answers from storage; progress comes
/// as server-sent events (`event: progress`, and `event: error` with the error body if
/// it fails).
#[utoipa::path(post, path = "/api/v1/search/reindex", tag = "search", request_body = ReindexInput,
    responses((status = 200, content_type = "text/event-stream", body = String,
            description = "`event: progress` with a ReindexProgress as its data, until one with `done`; \
                `event: error` with an ErrorBody if it fails"),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn reindex(
    State(state): State<AppState>,
    Json(input): Json<ReindexInput>,
) -> ApiResult<Sse<impl futures::Stream<Item = Result<Event, std::convert::Infallible>>>> {
    let request = pb::ReindexRequest { namespace: input.namespace, re_embed: input.re_embed };
    let updates = state.search().reindex(request).await?.into_inner();
    let events = updates.map(|update| {
        let event = update.map(|p| {
            Event::default().event("progress").json_data(ReindexProgress {
                phase: p.phase,
                processed: p.processed,
                total: p.total,
                failed: p.failed,
                done: p.done,
            })
        });
        Ok(crate::error::sse_event(event))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

fn result(hit: pb::SearchHit) -> Result<SearchResult, Error> {
    let snippet = hit.highlights.first().cloned().unwrap_or_else(|| hit.content.chars().take(SNIPPET_CHARS).collect());
    let (score, fulltext_score, vector_score) = (hit.score, hit.fulltext_score, hit.vector_score);
    let (fulltext_rank, vector_rank) = (hit.fulltext_rank, hit.vector_rank);
    let node = node_body(pb::Node {
        id: hit.id,
        namespace: hit.namespace,
        kind: hit.kind,
        title: hit.title,
        content: hit.content,
        tags: hit.tags,
        metadata_json: hit.metadata_json,
        source: hit.source,
        importance: hit.importance,
        created_at: hit.created_at,
        updated_at: hit.updated_at,
        version: hit.version,
    })?;
    Ok(SearchResult {
        id: node.id.clone(),
        title: node.title.clone(),
        content: node.content.clone(),
        snippet,
        score,
        fulltext_score,
        vector_score,
        fulltext_rank,
        vector_rank,
        node,
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentInput {
    /// a UUID: the node's id
    pub id: String,
    pub namespace: Option<String>,
    pub kind: Option<String>,
    pub title: Option<String>,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub source: Option<String>,
    pub importance: Option<f64>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// an older version than the indexed one is skipped; default 1
    pub version: Option<i64>,
    /// a precomputed embedding of the embedder's dimension; unset: the search service
    /// embeds the text itself
    #[serde(default)]
    pub embedding: Vec<f32>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IndexInput {
    pub documents: Vec<DocumentInput>,
    /// answer once the documents are searchable (default true)
    pub wait_searchable: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IndexOutcome {
    pub indexed: u32,
    /// older than what the index holds, left out
    pub skipped_stale: u32,
}

/// Puts documents into both indexes, as node events do: for documents that are not
/// nodes of storage, or to repair one replica. A reindex drops what storage lacks.
#[utoipa::path(post, path = "/api/v1/search/index", tag = "search", request_body = IndexInput,
    responses((status = 200, body = IndexOutcome), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn index_documents(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(input): Json<IndexInput>,
) -> ApiResult<Json<IndexOutcome>> {
    for document in &input.documents {
        caller.check_namespace(document.namespace.as_deref().unwrap_or(helix_core::node::DEFAULT_NAMESPACE))?;
    }
    let documents = input
        .documents
        .into_iter()
        .map(|d| pb::SearchDocument {
            id: d.id,
            namespace: d.namespace.unwrap_or_default(),
            kind: d.kind.unwrap_or_default(),
            title: d.title.unwrap_or_default(),
            content: d.content,
            tags: d.tags,
            source: d.source.unwrap_or_default(),
            importance: d.importance.unwrap_or(0.5),
            metadata_json: d.metadata.map(|m| serde_json::Value::Object(m).to_string()).unwrap_or_default(),
            version: d.version.unwrap_or(1),
            embedding: d.embedding,
            ..Default::default()
        })
        .collect();
    let request = pb::IndexDocumentsRequest { documents, wait_searchable: input.wait_searchable.unwrap_or(true) };
    let outcome = state.search().index_documents(request).await?.into_inner();
    Ok(Json(IndexOutcome { indexed: outcome.indexed, skipped_stale: outcome.skipped_stale }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct RemoveParams {
    /// answer once the removal is searchable (default true)
    pub wait: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RemoveOutcome {
    /// 0 when the index did not hold it
    pub removed: u32,
}

/// Drops a document from both indexes of the replica that answers (not from storage:
/// a reindex brings back a node storage still has).
#[utoipa::path(delete, path = "/api/v1/search/index/{id}", tag = "search", params(("id" = uuid::Uuid, Path), RemoveParams),
    responses((status = 200, body = RemoveOutcome), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_document(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<RemoveParams>,
) -> ApiResult<Json<RemoveOutcome>> {
    let request = pb::RemoveDocumentsRequest { ids: vec![id], wait_searchable: params.wait.unwrap_or(true) };
    let outcome = state.search().remove_documents(request).await?.into_inner();
    Ok(Json(RemoveOutcome { removed: outcome.removed }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct StatsParams {
    /// count this namespace only
    pub namespace: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NamespaceCount {
    pub namespace: String,
    pub documents: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchStatsBody {
    pub documents: u64,
    pub vectors: u64,
    /// documents indexed by words whose vectors are still being computed
    pub vectors_pending: u64,
    pub index_bytes: u64,
    pub embedder_model: String,
    pub embedding_dimensions: u32,
    pub namespaces: Vec<NamespaceCount>,
    pub last_indexed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What the answering replica's index holds.
#[utoipa::path(get, path = "/api/v1/search/stats", tag = "search", params(StatsParams),
    responses((status = 200, body = SearchStatsBody)), security(("bearer" = [])))]
pub async fn stats(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<StatsParams>,
) -> ApiResult<Json<SearchStatsBody>> {
    let namespace = crate::nodes::listed_namespace(&caller, params.namespace)?;
    let request = pb::GetSearchStatsRequest { namespace, range: None };
    let stats = state.search().get_search_stats(request).await?.into_inner();
    Ok(Json(SearchStatsBody {
        documents: stats.documents,
        vectors: stats.vectors,
        vectors_pending: stats.vectors_pending,
        index_bytes: stats.index_bytes,
        embedder_model: stats.embedder_model,
        embedding_dimensions: stats.embedding_dimensions,
        namespaces: stats
            .namespaces
            .into_iter()
            .map(|n| NamespaceCount { namespace: n.namespace, documents: n.documents })
            .collect(),
        last_indexed_at: stats
            .last_indexed_at
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)),
    }))
}
