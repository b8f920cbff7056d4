//! `/api/v1/search` (and the original system's `POST /api/search` and
//! `GET /api/v1/search?q=`): search over knowledge nodes, answered by the search service.

use axum::extract::State;
use helix_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiResult, ErrorBody, Json, Query};
use crate::nodes::{NodeBody, node_body};
use helix_core::Error;

const SNIPPET_CHARS: usize = 200;

#[derive(Debug, Deserialize, ToSchema)]
pub struct SearchInput {
    pub query: String,
    /// `fulltext`, `semantic` or `hybrid`; unset lets the search service choose
    pub mode: Option<String>,
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
    pub node: NodeBody,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchResults {
    pub results: Vec<SearchResult>,
    /// the mode the search service used
    pub mode: String,
    /// matches in all, not only this page
    pub total: u64,
    pub took_ms: u32,
}

#[utoipa::path(post, path = "/api/v1/search", tag = "search", request_body = SearchInput,
    responses((status = 200, body = SearchResults), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn search(State(state): State<AppState>, Json(input): Json<SearchInput>) -> ApiResult<Json<SearchResults>> {
    run(&state, input).await
}

/// The original system's search routes: the same search, shaped the same.
#[utoipa::path(get, path = "/api/v1/search", tag = "search", params(SearchParams),
    responses((status = 200, body = SearchResults), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn search_get(
    State(state): State<AppState>,
    Query(params): Query<SearchParams>,
) -> ApiResult<Json<SearchResults>> {
    let input = SearchInput {
        query: params.q,
        mode: None,
        namespace: params.ns,
        kinds: Vec::new(),
        tags: Vec::new(),
        limit: params.limit,
        offset: 0,
    };
    run(&state, input).await
}

async fn run(state: &AppState, input: SearchInput) -> ApiResult<Json<SearchResults>> {
    if input.query.trim().is_empty() {
        return Err(Error::invalid("empty_query", "query must not be empty").into());
    }
    let mode = match input.mode.as_deref() {
        None => String::new(),
        Some("fulltext") => "fulltext".to_owned(),
        Some("semantic") => "vector".to_owned(),
        Some("hybrid") => "hybrid".to_owned(),
        Some(other) => {
            return Err(
                Error::invalid("invalid_mode", format!("mode {other:?} is not fulltext, semantic or hybrid")).into()
            );
        }
    };
    let limit = match input.limit {
        None => 10,
        Some(n @ 1..=100) => n,
        Some(_) => return Err(Error::invalid("invalid_limit", "limit must be from 1 to 100").into()),
    };
    let request = pb::SearchRequest {
        query: input.query,
        mode,
        namespaces: input.namespace.into_iter().collect(),
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
    Ok(Json(SearchResults { results, mode: response.mode, total: response.total_hits, took_ms: response.took_ms }))
}

fn result(hit: pb::SearchHit) -> Result<SearchResult, Error> {
    let snippet = hit.highlights.first().cloned().unwrap_or_else(|| hit.content.chars().take(SNIPPET_CHARS).collect());
    let (score, fulltext_score, vector_score) = (hit.score, hit.fulltext_score, hit.vector_score);
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
        node,
    })
}
