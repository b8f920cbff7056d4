//! `/api/v1/nodes`: knowledge nodes over REST, answered by the storage service.
//! The REST shapes live here and stop here: handlers speak protobuf to storage.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use helix_core::Error;
use helix_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiResult, ErrorBody, Json, Path, Query};

/// A node as clients send it. Only `content` is required.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
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

/// A full replacement of a node's fields, accepted only at the node's current `version`:
/// the fields of a [`NodeInput`] and `version` (spelled out: serde refuses unknown fields
/// only in a struct that flattens none).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeUpdate {
    /// the version this update was based on; a stale one is answered 409
    pub version: i64,
    pub namespace: Option<String>,
    pub kind: Option<String>,
    pub title: Option<String>,
    pub content: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub metadata: Option<Map<String, Value>>,
    pub source: Option<String>,
    pub importance: Option<f64>,
}

impl NodeUpdate {
    /// The version it is based on, and the node's new fields.
    fn split(self) -> (i64, NodeInput) {
        let node = NodeInput {
            namespace: self.namespace,
            kind: self.kind,
            title: self.title,
            content: self.content,
            tags: self.tags,
            metadata: self.metadata,
            source: self.source,
            importance: self.importance,
        };
        (self.version, node)
    }
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
#[serde(deny_unknown_fields)]
pub struct BulkNodesInput {
    pub nodes: Vec<NodeInput>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkCreated {
    /// the new ids, in the order of the request
    pub ids: Vec<String>,
    pub nodes: Vec<NodeBody>,
}

/// Read-your-writes (Elasticsearch's `refresh=wait_for`): the write answers once the
/// search index shows it.
#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct WriteParams {
    /// `indexed`: searchable by words (within about a commit, 200 ms); `vectors`: by
    /// meaning too (after the embedding backlog). Without it the write answers at once
    /// and search catches up. A 504 `index_timeout` after 10 s means the write is stored
    /// but not searchable yet.
    #[param(inline)]
    pub wait_for: Option<WaitFor>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitFor {
    Indexed,
    Vectors,
}

/// Waits, when asked, until search shows the nodes at their versions.
async fn wait_searchable(state: &AppState, params: &WriteParams, nodes: &[NodeBody]) -> Result<(), Error> {
    let Some(wait_for) = params.wait_for else { return Ok(()) };
    let request = pb::WaitIndexedRequest {
        nodes: nodes.iter().map(|node| pb::NodeVersion { id: node.id.clone(), version: node.version }).collect(),
        vectors: wait_for == WaitFor::Vectors,
        timeout_ms: 0,
    };
    state.search().wait_indexed(request).await?;
    Ok(())
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

#[utoipa::path(post, path = "/api/v1/nodes", tag = "nodes", request_body = NodeInput, params(WriteParams),
    responses((status = 201, body = NodeBody), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 504, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<WriteParams>,
    Json(input): Json<NodeInput>,
) -> ApiResult<(StatusCode, Json<NodeBody>)> {
    let request = pb::CreateNodeRequest { node: Some(draft(in_own_namespace(&caller, input)?)) };
    let node = node_body(state.storage().create_node(request).await?.into_inner())?;
    wait_searchable(&state, &params, std::slice::from_ref(&node)).await?;
    Ok((StatusCode::CREATED, Json(node)))
}

#[utoipa::path(post, path = "/api/v1/nodes/bulk", tag = "nodes", request_body = BulkNodesInput, params(WriteParams),
    responses((status = 201, body = BulkCreated), (status = 400, body = ErrorBody), (status = 504, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn bulk_create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<WriteParams>,
    Json(input): Json<BulkNodesInput>,
) -> ApiResult<(StatusCode, Json<BulkCreated>)> {
    let nodes = input.nodes.into_iter().map(|n| in_own_namespace(&caller, n).map(draft));
    let request = pb::BulkCreateNodesRequest { nodes: nodes.collect::<Result<_, _>>()? };
    let nodes = state.storage().bulk_create_nodes(request).await?.into_inner().nodes;
    let nodes = nodes.into_iter().map(node_body).collect::<Result<Vec<_>, _>>()?;
    wait_searchable(&state, &params, &nodes).await?;
    Ok((StatusCode::CREATED, Json(BulkCreated { ids: nodes.iter().map(|n| n.id.clone()).collect(), nodes })))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}", tag = "nodes", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = NodeBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<NodeBody>> {
    check_id(&id)?;
    let node = state.storage().get_node(pb::GetNodeRequest { id: id.clone() }).await?.into_inner();
    if !caller.sees(&node.namespace) {
        return Err(Error::not_found("node", &id).into());
    }
    Ok(Json(node_body(node)?))
}

#[utoipa::path(put, path = "/api/v1/nodes/{id}", tag = "nodes", params(("id" = uuid::Uuid, Path), WriteParams),
    request_body = NodeUpdate,
    responses((status = 200, body = NodeBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 504, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(params): Query<WriteParams>,
    Json(input): Json<NodeUpdate>,
) -> ApiResult<Json<NodeBody>> {
    check_id(&id)?;
    check_visible(&state, &caller, &id).await?;
    let (expected_version, node) = input.split();
    let node = in_own_namespace(&caller, node)?;
    let request = pb::UpdateNodeRequest { id, expected_version, node: Some(draft(node)) };
    let node = node_body(state.storage().update_node(request).await?.into_inner())?;
    wait_searchable(&state, &params, std::slice::from_ref(&node)).await?;
    Ok(Json(node))
}

#[utoipa::path(delete, path = "/api/v1/nodes/{id}", tag = "nodes", params(("id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    check_id(&id)?;
    check_visible(&state, &caller, &id).await?;
    state.storage().delete_node(pb::DeleteNodeRequest { id, expected_version: 0 }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes", params(ListParams),
    responses((status = 200, body = NodeList), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<ListParams>,
) -> ApiResult<Json<NodeList>> {
    let request = pb::ListNodesRequest {
        namespace: listed_namespace(&caller, params.namespace)?,
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
pub async fn recall(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<RecallParams>,
) -> ApiResult<Json<NodeList>> {
    let request = pb::RecallNodesRequest {
        query: params.q,
        namespace: listed_namespace(&caller, params.namespace)?,
        limit: page_limit(params.limit)?,
    };
    let page = state.storage().recall_nodes(request).await?.into_inner();
    Ok(Json(NodeList { nodes: page.nodes.into_iter().map(node_body).collect::<Result<_, _>>()?, next_cursor: None }))
}

/// A node a namespace-limited key writes lands in the key's first namespace unless it
/// names one, and only in one of the key's.
fn in_own_namespace(caller: &Caller, mut input: NodeInput) -> Result<NodeInput, Error> {
    if input.namespace.is_none()
        && let Some(own) = caller.namespaces()
    {
        input.namespace = own.first().cloned();
    }
    caller.check_namespace(input.namespace.as_deref().unwrap_or(helix_core::node::DEFAULT_NAMESPACE))?;
    Ok(input)
}

/// For a namespace-limited key, a node of another namespace does not exist.
async fn check_visible(state: &AppState, caller: &Caller, id: &str) -> Result<(), Error> {
    if caller.namespaces().is_none() {
        return Ok(());
    }
    let node = state.storage().get_node(pb::GetNodeRequest { id: id.to_owned() }).await.map_err(Error::from)?;
    match caller.sees(&node.into_inner().namespace) {
        true => Ok(()),
        false => Err(Error::not_found("node", id)),
    }
}

/// The namespace a listing is confined to: the one asked for, if the key may see it; for
/// a key limited to one namespace, that one. Storage lists one namespace or all, so a key
/// limited to several must name one.
pub(crate) fn listed_namespace(caller: &Caller, asked: Option<String>) -> Result<Option<String>, Error> {
    match (asked, caller.namespaces()) {
        (asked, None) => Ok(asked),
        (Some(asked), Some(_)) => caller.check_namespace(&asked).map(|()| Some(asked)),
        (None, Some([only])) => Ok(Some(only.clone())),
        (None, Some(_)) => Err(Error::invalid(
            "namespace_required",
            "this API key is limited to several namespaces: name one with ?namespace=",
        )),
    }
}

/// Rejects a malformed id here, so storage is asked only about real ones.
fn check_id(id: &str) -> Result<(), Error> {
    helix_core::node::parse_id(id).map(drop)
}

/// The one rule of every list's `limit` (nodes, jobs, dead letters, schedules, workflows,
/// executions, edges, ready tasks, usage): absent, the service's default (0 on the wire);
/// present, from 1 to [`helix_core::node::MAX_PAGE`]; refused otherwise, never clamped silently.
pub(crate) fn page_limit(limit: Option<u32>) -> Result<u32, Error> {
    match limit {
        None => Ok(0),
        Some(n @ 1..=helix_core::node::MAX_PAGE) => Ok(n),
        Some(_) => {
            Err(Error::invalid("invalid_limit", format!("limit must be from 1 to {}", helix_core::node::MAX_PAGE)))
        }
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
