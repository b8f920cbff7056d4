//! `/api/v1/nodes`: knowledge nodes over REST, answered by the storage service.
//! The REST shapes live here and stop here: handlers speak protobuf to storage.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use helix_core::Error;
use helix_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiResult, ErrorBody, Json, Path, Query};

/// A node as clients send it. Only `content` is required.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NodeInput {
    /// default `default`; 1-128 characters of A-Z a-z 0-9 . _ : / -
    pub namespace: Option<String>,
    /// default `note`; 1-64 characters of a-z 0-9 _ -
    pub kind: Option<String>,
    /// default: the first line of the content
    pub title: Option<String>,
    pub content: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// any JSON object
    pub metadata: Option<Map<String, Value>>,
    pub source: Option<String>,
    /// 0.0 to 1.0, default 0.5
    pub importance: Option<f64>,
}

/// A full replacement of a node's fields, accepted only at the node's current `version`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NodeUpdate {
    /// the version this update was based on; a stale one is answered 409
    pub version: i64,
    #[serde(flatten)]
    pub node: NodeInput,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeBody {
    pub id: String,
    pub namespace: String,
    pub kind: String,
    pub title: String,
    pub content: String,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
    pub source: Option<String>,
    pub importance: f64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    /// newest first
    pub nodes: Vec<NodeBody>,
    /// pass as `cursor` for the next page; absent on the last page
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct BulkInput {
    pub nodes: Vec<NodeInput>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkCreated {
    /// the new ids, in the order of the request
    pub ids: Vec<String>,
    pub nodes: Vec<NodeBody>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListParams {
    pub namespace: Option<String>,
    pub kind: Option<String>,
    pub tag: Option<String>,
    /// 1-1000, default 50
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct RecallParams {
    /// words that must all appear in the title or content
    pub q: String,
    pub namespace: Option<String>,
    /// 1-1000, default 50
    pub limit: Option<u32>,
}

#[utoipa::path(post, path = "/api/v1/nodes", tag = "nodes", request_body = NodeInput,
    responses((status = 201, body = NodeBody), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Json(input): Json<NodeInput>,
) -> ApiResult<(StatusCode, Json<NodeBody>)> {
    let request = pb::CreateNodeRequest { node: Some(draft(input)) };
    let node = state.storage().create_node(request).await?.into_inner();
    Ok((StatusCode::CREATED, Json(node_body(node)?)))
}

#[utoipa::path(post, path = "/api/v1/nodes/bulk", tag = "nodes", request_body = BulkInput,
    responses((status = 201, body = BulkCreated), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn bulk_create(
    State(state): State<AppState>,
    Json(input): Json<BulkInput>,
) -> ApiResult<(StatusCode, Json<BulkCreated>)> {
    let request = pb::BulkCreateNodesRequest { nodes: input.nodes.into_iter().map(draft).collect() };
    let nodes = state.storage().bulk_create_nodes(request).await?.into_inner().nodes;
    let nodes = nodes.into_iter().map(node_body).collect::<Result<Vec<_>, _>>()?;
    Ok((StatusCode::CREATED, Json(BulkCreated { ids: nodes.iter().map(|n| n.id.clone()).collect(), nodes })))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}", tag = "nodes", params(("id" = String, Path)),
    responses((status = 200, body = NodeBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<NodeBody>> {
    check_id(&id)?;
    let node = state.storage().get_node(pb::GetNodeRequest { id }).await?.into_inner();
    Ok(Json(node_body(node)?))
}

#[utoipa::path(put, path = "/api/v1/nodes/{id}", tag = "nodes", params(("id" = String, Path)), request_body = NodeUpdate,
    responses((status = 200, body = NodeBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(input): Json<NodeUpdate>,
) -> ApiResult<Json<NodeBody>> {
    check_id(&id)?;
    let request = pb::UpdateNodeRequest { id, expected_version: input.version, node: Some(draft(input.node)) };
    let node = state.storage().update_node(request).await?.into_inner();
    Ok(Json(node_body(node)?))
}

#[utoipa::path(delete, path = "/api/v1/nodes/{id}", tag = "nodes", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    check_id(&id)?;
    state.storage().delete_node(pb::DeleteNodeRequest { id, expected_version: 0 }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes", params(ListParams),
    responses((status = 200, body = NodeList), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, Query(params): Query<ListParams>) -> ApiResult<Json<NodeList>> {
    let request = pb::ListNodesRequest {
        namespace: params.namespace,
        kind: params.kind,
        tag: params.tag,
        page: Some(pb::PageRequest { limit: page_limit(params.limit)?, cursor: params.cursor.unwrap_or_default() }),
    };
    let page = state.storage().list_nodes(request).await?.into_inner();
    Ok(Json(NodeList {
        nodes: page.nodes.into_iter().map(node_body).collect::<Result<_, _>>()?,
        next_cursor: Some(page.next_cursor).filter(|c| !c.is_empty()),
    }))
}

#[utoipa::path(get, path = "/api/v1/recall", tag = "nodes", params(RecallParams),
    responses((status = 200, body = NodeList), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn recall(State(state): State<AppState>, Query(params): Query<RecallParams>) -> ApiResult<Json<NodeList>> {
    let request =
        pb::RecallNodesRequest { query: params.q, namespace: params.namespace, limit: page_limit(params.limit)? };
    let page = state.storage().recall_nodes(request).await?.into_inner();
    Ok(Json(NodeList { nodes: page.nodes.into_iter().map(node_body).collect::<Result<_, _>>()?, next_cursor: None }))
}

/// Rejects a malformed id here, so storage is asked only about real ones.
fn check_id(id: &str) -> Result<(), Error> {
    helix_core::node::parse_id(id).map(drop)
}

fn page_limit(limit: Option<u32>) -> Result<u32, Error> {
    match limit {
        None => Ok(0),
        Some(0) => Err(Error::invalid("invalid_limit", "limit must be from 1 to 1000")),
        Some(n) => Ok(n),
    }
}

fn draft(input: NodeInput) -> pb::NodeDraft {
    pb::NodeDraft {
        namespace: input.namespace,
        kind: input.kind,
        title: input.title,
        content: input.content,
        tags: input.tags,
        metadata_json: input.metadata.map(|m| Value::Object(m).to_string()),
        source: input.source,
        importance: input.importance,
    }
}

pub(crate) fn node_body(node: pb::Node) -> Result<NodeBody, Error> {
    let time = |t: Option<helix_proto::Timestamp>| {
        t.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos as u32))
            .ok_or_else(|| Error::internal("storage returned a node without its timestamps"))
    };
    let metadata = match serde_json::from_str(&node.metadata_json) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    Ok(NodeBody {
        created_at: time(node.created_at)?,
        updated_at: time(node.updated_at)?,
        id: node.id,
        namespace: node.namespace,
        kind: node.kind,
        title: node.title,
        content: node.content,
        tags: node.tags,
        metadata,
        source: Some(node.source).filter(|s| !s.is_empty()),
        importance: node.importance,
        version: node.version,
    })
}
