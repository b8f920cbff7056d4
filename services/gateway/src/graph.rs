//! `/api/v1/graph/...`: edges between knowledge nodes and walks over them, answered by
//! the graph service. Shapes of the original system's clients: `POST
//! /api/v1/graph/edges` with `{"source_id", "target_id", "relation"}` and `GET
//! /api/v1/graph/{id}?depth=` answering `{"nodes": [...], "edges": [...]}`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use helix_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiResult, ErrorBody, Json, Path, Query};

#[derive(Debug, Deserialize, ToSchema)]
pub struct EdgeInput {
    pub source_id: String,
    pub target_id: String,
    /// relates_to (default), mentions, derived_from, part_of, or a custom type
    pub relation: Option<String>,
    /// default 1.0; finite, not negative
    pub weight: Option<f64>,
    /// any JSON object
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EdgeBody {
    pub id: String,
    pub source_id: String,
    pub target_id: String,
    pub relation: String,
    pub weight: f64,
    pub metadata: Map<String, Value>,
    pub created_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GraphNodeBody {
    pub id: String,
    pub namespace: String,
    pub kind: String,
    pub title: String,
    /// hops from the root
    pub depth: u32,
    pub degree: u32,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubgraphBody {
    pub nodes: Vec<GraphNodeBody>,
    pub edges: Vec<EdgeBody>,
    /// the walk stopped at max_nodes
    pub truncated: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EdgeList {
    pub edges: Vec<EdgeBody>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct EdgeParams {
    pub node_id: Option<String>,
    pub relation: Option<String>,
    /// out, in or both (default both)
    pub direction: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct WalkParams {
    /// default 1, at most 10
    pub depth: Option<u32>,
    /// out, in or both (default both)
    pub direction: Option<String>,
    /// only edges of this type
    pub relation: Option<String>,
    pub max_nodes: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ExportParams {
    /// json (default), graphml or dot
    pub format: Option<String>,
    /// export this node's neighbourhood; unset exports the whole graph
    pub root: Option<String>,
    pub depth: Option<u32>,
}

fn edge_body(edge: pb::GraphEdge) -> EdgeBody {
    let metadata = match serde_json::from_str(&edge.metadata_json) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    EdgeBody {
        created_at: edge.created_at.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos as u32)),
        id: edge.id,
        source_id: edge.source_id,
        target_id: edge.target_id,
        relation: edge.relation,
        weight: edge.weight,
        metadata,
    }
}

#[utoipa::path(post, path = "/api/v1/graph/edges", tag = "graph", request_body = EdgeInput,
    responses((status = 201, body = EdgeBody), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn create_edge(
    State(state): State<AppState>,
    Json(input): Json<EdgeInput>,
) -> ApiResult<(StatusCode, Json<EdgeBody>)> {
    let request = pb::CreateEdgeRequest {
        source_id: input.source_id,
        target_id: input.target_id,
        relation: input.relation.unwrap_or_default(),
        weight: input.weight,
        metadata_json: input.metadata.map(|m| Value::Object(m).to_string()),
    };
    let edge = state.graph().create_edge(request).await?.into_inner();
    Ok((StatusCode::CREATED, Json(edge_body(edge))))
}

#[utoipa::path(get, path = "/api/v1/graph/edges/{id}", tag = "graph", params(("id" = String, Path)),
    responses((status = 200, body = EdgeBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_edge(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<EdgeBody>> {
    let edge = state.graph().get_edge(pb::GetEdgeRequest { id }).await?.into_inner();
    Ok(Json(edge_body(edge)))
}

#[utoipa::path(delete, path = "/api/v1/graph/edges/{id}", tag = "graph", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete_edge(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.graph().delete_edge(pb::DeleteEdgeRequest { id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/graph/edges", tag = "graph", params(EdgeParams),
    responses((status = 200, body = EdgeList), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_edges(State(state): State<AppState>, Query(params): Query<EdgeParams>) -> ApiResult<Json<EdgeList>> {
    let request = pb::ListEdgesRequest {
        node_id: params.node_id,
        relation: params.relation,
        direction: params.direction.unwrap_or_default(),
        page: Some(pb::PageRequest { limit: params.limit.unwrap_or(0), cursor: params.cursor.unwrap_or_default() }),
    };
    let page = state.graph().list_edges(request).await?.into_inner();
    Ok(Json(EdgeList {
        edges: page.edges.into_iter().map(edge_body).collect(),
        next_cursor: Some(page.next_cursor).filter(|c| !c.is_empty()),
    }))
}

#[utoipa::path(get, path = "/api/v1/graph/{id}", tag = "graph", params(("id" = String, Path), WalkParams),
    responses((status = 200, body = SubgraphBody), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn neighborhood(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<WalkParams>,
) -> ApiResult<Json<SubgraphBody>> {
    let request = pb::GetNeighborhoodRequest {
        id,
        depth: params.depth.unwrap_or(0),
        relations: params.relation.into_iter().collect(),
        direction: params.direction.unwrap_or_default(),
        max_nodes: params.max_nodes.unwrap_or(0),
    };
    let graph = state.graph().get_neighborhood(request).await?.into_inner();
    Ok(Json(SubgraphBody {
        nodes: graph
            .nodes
            .into_iter()
            .map(|n| GraphNodeBody {
                id: n.id,
                namespace: n.namespace,
                kind: n.kind,
                title: n.title,
                depth: n.depth,
                degree: n.degree,
            })
            .collect(),
        edges: graph.edges.into_iter().map(edge_body).collect(),
        truncated: graph.truncated,
    }))
}

#[utoipa::path(get, path = "/api/v1/graph/export", tag = "graph", params(ExportParams),
    responses((status = 200, description = "the graph as JSON, GraphML or DOT text"), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn export(State(state): State<AppState>, Query(params): Query<ExportParams>) -> ApiResult<Response> {
    let request = pb::ExportGraphRequest {
        format: params.format.unwrap_or_default(),
        root_ids: params.root.into_iter().collect(),
        depth: params.depth.unwrap_or(0),
        ..Default::default()
    };
    let exported = state.graph().export_graph(request).await?.into_inner();
    Ok(([(header::CONTENT_TYPE, exported.content_type)], exported.document).into_response())
}
