//! `/api/v1/graph/...`: edges between knowledge nodes and walks over them, answered by
//! the graph service. Shapes of the original system's clients: `POST
//! /api/v1/graph/edges` with `{"source_id", "target_id", "relation"}` and `GET
//! /api/v1/graph/{id}?depth=` answering `{"nodes": [...], "edges": [...]}`.
//!
//! Query parameters that filter by edge type (`relation`) take one type or several,
//! comma-separated. `GET /api/v1/graph/path` answers 200 with an empty `paths` list
//! when the nodes are not connected within `max_depth` (or the graph does not hold
//! them): "no path" is an answer, not an error; malformed ids and limits are 400s.

use axum::Extension;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use helix_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiResult, ErrorBody, Json, Path, Query};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
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
    /// only edges of these types (comma-separated)
    pub relation: Option<String>,
    /// default 1000, at most 10000
    pub max_nodes: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ExportParams {
    /// json (default), graphml or dot
    pub format: Option<String>,
    /// export the neighbourhood of this node (or these, comma-separated); unset exports
    /// the whole graph
    pub root: Option<String>,
    /// hops from the roots (default 1); only with root
    pub depth: Option<u32>,
    /// out, in or both (default both); only with root
    pub direction: Option<String>,
    /// only edges of these types (comma-separated)
    pub relation: Option<String>,
    /// default 1000, at most 10000; the `x-helix-truncated` header says whether it was reached
    pub max_nodes: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PathParams {
    /// the node the path starts at
    pub from: String,
    /// the node the path ends at
    pub to: String,
    /// longest path in hops: default and at most 10
    pub max_depth: Option<u32>,
    /// only edges of these types (comma-separated)
    pub relation: Option<String>,
    /// out (default): along edges; in: against them; both: either way
    pub direction: Option<String>,
    /// shortest by summed edge weight instead of by hops (default false)
    pub weighted: Option<bool>,
    /// how many paths, shortest first: default 1, at most 10
    pub max_paths: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PathBody {
    /// `from` first, `to` last
    pub node_ids: Vec<String>,
    /// the edges between consecutive nodes, in path order
    pub edges: Vec<EdgeBody>,
    /// the sum of the edges' weights
    pub total_weight: f64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PathsBody {
    /// shortest first; empty when the nodes are not connected within max_depth
    pub paths: Vec<PathBody>,
    /// every node on the paths, once
    pub nodes: Vec<GraphNodeBody>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct StatsParams {
    /// count only the nodes of this namespace and the edges between them
    pub namespace: Option<String>,
    /// how many of the highest-degree nodes `top_nodes` lists: default 10, at most 100
    pub top: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RelationCount {
    pub relation: String,
    pub edges: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GraphStatsBody {
    pub nodes: u64,
    pub edges: u64,
    /// edges by type, most first
    pub relations: Vec<RelationCount>,
    /// weakly connected components (edge direction ignored)
    pub connected_components: u64,
    /// nodes in the largest component
    pub largest_component: u64,
    /// nodes without an edge; each is a component of its own
    pub isolated_nodes: u64,
    /// edges in and out per node
    pub mean_degree: f64,
    pub max_degree: u32,
    /// the highest-degree nodes, highest first (ties by id)
    pub top_nodes: Vec<GraphNodeBody>,
}

/// A query parameter that holds one value or several, comma-separated (edge types, node ids).
fn comma_separated(param: Option<String>) -> Vec<String> {
    let param = param.unwrap_or_default();
    param.split(',').map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned).collect()
}

/// A walk as a namespace-limited key may see it: its nodes only, and the edges between them.
fn visible_subgraph(
    caller: &Caller,
    nodes: Vec<pb::GraphNode>,
    edges: Vec<pb::GraphEdge>,
    truncated: bool,
) -> SubgraphBody {
    let nodes: Vec<GraphNodeBody> = nodes.into_iter().filter(|n| caller.sees(&n.namespace)).map(node_body).collect();
    let edges = match caller.namespaces() {
        None => edges.into_iter().map(edge_body).collect(),
        Some(_) => {
            let seen: std::collections::HashSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
            edges
                .into_iter()
                .filter(|e| seen.contains(e.source_id.as_str()) && seen.contains(e.target_id.as_str()))
                .map(edge_body)
                .collect()
        }
    };
    SubgraphBody { nodes, edges, truncated }
}

/// Edges, paths, statistics and exports span namespaces without saying which: a
/// namespace-limited key walks the graph through neighbourhoods and traversals only.
fn whole_graph(caller: &Caller) -> Result<(), helix_core::Error> {
    match caller.namespaces() {
        None => Ok(()),
        Some(_) => Err(helix_core::Error::new(
            helix_core::ErrorKind::PermissionDenied,
            "namespace_limited",
            "this API key is limited to namespaces; use /api/v1/graph/{id} or /api/v1/graph/traverse",
        )),
    }
}

fn node_body(node: pb::GraphNode) -> GraphNodeBody {
    GraphNodeBody {
        id: node.id,
        namespace: node.namespace,
        kind: node.kind,
        title: node.title,
        depth: node.depth,
        degree: node.degree,
    }
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

#[utoipa::path(get, path = "/api/v1/graph/edges/{id}", tag = "graph", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = EdgeBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_edge(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<EdgeBody>> {
    whole_graph(&caller)?;
    let edge = state.graph().get_edge(pb::GetEdgeRequest { id }).await?.into_inner();
    Ok(Json(edge_body(edge)))
}

#[utoipa::path(delete, path = "/api/v1/graph/edges/{id}", tag = "graph", params(("id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete_edge(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.graph().delete_edge(pb::DeleteEdgeRequest { id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/graph/edges", tag = "graph", params(EdgeParams),
    responses((status = 200, body = EdgeList), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_edges(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<EdgeParams>,
) -> ApiResult<Json<EdgeList>> {
    whole_graph(&caller)?;
    let request = pb::ListEdgesRequest {
        node_id: params.node_id,
        relation: params.relation,
        direction: params.direction.unwrap_or_default(),
        page: Some(pb::PageRequest {
            limit: crate::nodes::page_limit(params.limit)?,
            cursor: params.cursor.unwrap_or_default(),
        }),
    };
    let page = state.graph().list_edges(request).await?.into_inner();
    Ok(Json(EdgeList {
        edges: page.edges.into_iter().map(edge_body).collect(),
        next_cursor: Some(page.next_cursor).filter(|c| !c.is_empty()),
    }))
}

#[utoipa::path(get, path = "/api/v1/graph/{id}", tag = "graph", params(("id" = uuid::Uuid, Path), WalkParams),
    responses((status = 200, body = SubgraphBody), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn neighborhood(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(params): Query<WalkParams>,
) -> ApiResult<Json<SubgraphBody>> {
    let request = pb::GetNeighborhoodRequest {
        id,
        depth: params.depth.unwrap_or(0),
        relations: comma_separated(params.relation),
        direction: params.direction.unwrap_or_default(),
        max_nodes: params.max_nodes.unwrap_or(0),
    };
    let graph = state.graph().get_neighborhood(request).await?.into_inner();
    Ok(Json(visible_subgraph(&caller, graph.nodes, graph.edges, graph.truncated)))
}

#[utoipa::path(get, path = "/api/v1/graph/path", tag = "graph", params(PathParams),
    responses((status = 200, description = "the shortest paths; `paths` is empty when there is none", body = PathsBody),
        (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn path(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<PathParams>,
) -> ApiResult<Json<PathsBody>> {
    whole_graph(&caller)?;
    let request = pb::FindPathsRequest {
        source_id: params.from,
        target_id: params.to,
        max_depth: params.max_depth.unwrap_or(0),
        relations: comma_separated(params.relation),
        weighted: params.weighted.unwrap_or(false),
        max_paths: params.max_paths.unwrap_or(0),
        undirected: false,
        direction: params.direction.unwrap_or_default(),
    };
    let found = state.graph().find_paths(request).await?.into_inner();
    Ok(Json(PathsBody {
        paths: found
            .paths
            .into_iter()
            .map(|p| PathBody {
                node_ids: p.node_ids,
                edges: p.edges.into_iter().map(edge_body).collect(),
                total_weight: p.total_weight,
            })
            .collect(),
        nodes: found.nodes.into_iter().map(node_body).collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/graph/stats", tag = "graph", params(StatsParams),
    responses((status = 200, body = GraphStatsBody), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn stats(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<StatsParams>,
) -> ApiResult<Json<GraphStatsBody>> {
    whole_graph(&caller)?;
    let request = pb::GetGraphStatsRequest { namespace: params.namespace, top: params.top.unwrap_or(0) };
    let stats = state.graph().get_graph_stats(request).await?.into_inner();
    Ok(Json(GraphStatsBody {
        nodes: stats.nodes,
        edges: stats.edges,
        relations: stats
            .relations
            .into_iter()
            .map(|r| RelationCount { relation: r.relation, edges: r.edges })
            .collect(),
        connected_components: stats.connected_components,
        largest_component: stats.largest_component,
        isolated_nodes: stats.isolated_nodes,
        mean_degree: stats.mean_degree,
        max_degree: stats.max_degree,
        top_nodes: stats.top_nodes.into_iter().map(node_body).collect(),
    }))
}

/// On an export: `true` when max_nodes was reached and the document holds part of the selection.
const TRUNCATED: header::HeaderName = header::HeaderName::from_static("x-helix-truncated");

#[utoipa::path(get, path = "/api/v1/graph/export", tag = "graph", params(ExportParams),
    responses((status = 200, description = "the graph as JSON, GraphML or DOT text",
        headers(("x-helix-truncated" = bool, description = "max_nodes was reached"))),
        (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn export(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<ExportParams>,
) -> ApiResult<Response> {
    whole_graph(&caller)?;
    let request = pb::ExportGraphRequest {
        format: params.format.unwrap_or_default(),
        root_ids: comma_separated(params.root),
        depth: params.depth.unwrap_or(0),
        relations: comma_separated(params.relation),
        direction: params.direction.unwrap_or_default(),
        max_nodes: params.max_nodes.unwrap_or(0),
    };
    let exported = state.graph().export_graph(request).await?.into_inner();
    let headers = [(header::CONTENT_TYPE, exported.content_type), (TRUNCATED, exported.truncated.to_string())];
    Ok((headers, exported.document).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TraverseInput {
    /// the roots of the walk
    pub start_ids: Vec<String>,
    /// bfs (default) or dfs
    pub algorithm: Option<String>,
    /// hops from the roots: default and at most 10
    pub max_depth: Option<u32>,
    /// only edges of these types
    #[serde(default)]
    pub relations: Vec<String>,
    /// out (default), in or both
    pub direction: Option<String>,
    /// default 1000, at most 10000
    pub max_nodes: Option<u32>,
    /// keep only nodes of these namespaces; empty keeps all
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// keep only nodes of these kinds; empty keeps all
    #[serde(default)]
    pub kinds: Vec<String>,
}

/// A breadth- or depth-first walk from several roots.
#[utoipa::path(post, path = "/api/v1/graph/traverse", tag = "graph", request_body = TraverseInput,
    responses((status = 200, body = SubgraphBody), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn traverse(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(input): Json<TraverseInput>,
) -> ApiResult<Json<SubgraphBody>> {
    let request = pb::TraverseRequest {
        start_ids: input.start_ids,
        algorithm: input.algorithm.unwrap_or_default(),
        max_depth: input.max_depth.unwrap_or(0),
        relations: input.relations,
        direction: input.direction.unwrap_or_default(),
        max_nodes: input.max_nodes.unwrap_or(0),
        namespaces: input.namespaces,
        kinds: input.kinds,
    };
    let graph = state.graph().traverse(request).await?.into_inner();
    Ok(Json(visible_subgraph(&caller, graph.nodes, graph.edges, graph.truncated)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeLabelInput {
    pub id: String,
    pub namespace: Option<String>,
    pub kind: Option<String>,
    pub title: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeLabelsInput {
    pub nodes: Vec<NodeLabelInput>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeLabelsOutcome {
    pub upserted: u32,
}

/// Sets the labels (namespace, kind, title) the graph shows for nodes, as node events
/// do: for vertices that are not nodes of storage.
#[utoipa::path(put, path = "/api/v1/graph/nodes", tag = "graph", request_body = NodeLabelsInput,
    responses((status = 200, body = NodeLabelsOutcome), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn upsert_nodes(
    State(state): State<AppState>,
    Json(input): Json<NodeLabelsInput>,
) -> ApiResult<Json<NodeLabelsOutcome>> {
    let nodes = input
        .nodes
        .into_iter()
        .map(|n| pb::GraphNode {
            id: n.id,
            namespace: n.namespace.unwrap_or_default(),
            kind: n.kind.unwrap_or_default(),
            title: n.title.unwrap_or_default(),
            ..Default::default()
        })
        .collect();
    let outcome = state.graph().upsert_graph_nodes(pb::UpsertGraphNodesRequest { nodes }).await?.into_inner();
    Ok(Json(NodeLabelsOutcome { upserted: outcome.upserted }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeRemoved {
    pub edges_removed: u32,
}

/// Removes a vertex and every edge touching it (the node in storage stays).
#[utoipa::path(delete, path = "/api/v1/graph/nodes/{id}", tag = "graph", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = NodeRemoved), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn remove_node(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<NodeRemoved>> {
    let outcome = state.graph().remove_graph_node(pb::RemoveGraphNodeRequest { id }).await?.into_inner();
    Ok(Json(NodeRemoved { edges_removed: outcome.edges_removed }))
}
