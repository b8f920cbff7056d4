//! The graph service's gRPC face: converts wire messages to domain types and back, and
//! nothing else. Rules live in `helix_core::graph`, persistence in [`GraphStore`], graph
//! algorithms in [`Memory`](crate::memory::Memory).

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use helix_core::graph::{self, Direction, EdgeDraft, EdgeFilter, ExportFormat, NodeLabel, Order, PathQuery, Walk};
use helix_core::node::{self, MAX_BULK};
use helix_core::{Error, Result};
use helix_proto::v1 as pb;
use helix_proto::v1::graph_service_server::GraphService;
use tonic::{Request, Response, Status};

use crate::export;
use crate::memory::{NodeView, Subgraph};
use crate::store::GraphStore;

pub struct GraphApi {
    store: Arc<GraphStore>,
}

impl GraphApi {
    pub fn new(store: Arc<GraphStore>) -> Self {
        Self { store }
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

fn reply<T>(result: Result<T>) -> Reply<T> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl GraphService for GraphApi {
    async fn create_edge(&self, request: Request<pb::CreateEdgeRequest>) -> Reply<pb::GraphEdge> {
        let request = request.into_inner();
        let result = async {
            let draft = EdgeDraft {
                source_id: request.source_id,
                target_id: request.target_id,
                relation: request.relation,
                weight: request.weight,
                metadata: metadata_from_pb(request.metadata_json.as_deref())?,
            };
            self.store.create_edge(draft.validate()?).await.map(edge_to_pb)
        };
        reply(result.await)
    }

    async fn get_edge(&self, request: Request<pb::GetEdgeRequest>) -> Reply<pb::GraphEdge> {
        let id = node::parse_id(&request.into_inner().id);
        reply(id.and_then(|id| self.store.get_edge(id)).map(edge_to_pb))
    }

    async fn list_edges(&self, request: Request<pb::ListEdgesRequest>) -> Reply<pb::ListEdgesResponse> {
        let request = request.into_inner();
        let page = request.page.unwrap_or_default();
        let result = async {
            let filter = EdgeFilter::new(
                request.node_id.as_deref(),
                request.relation,
                &request.direction,
                page.limit,
                Some(&page.cursor),
            )?;
            let page = self.store.list_edges(&filter).await?;
            Ok(pb::ListEdgesResponse {
                edges: page.edges.into_iter().map(edge_to_pb).collect(),
                next_cursor: page.next_cursor.unwrap_or_default(),
            })
        };
        reply(result.await)
    }

    async fn delete_edge(&self, request: Request<pb::DeleteEdgeRequest>) -> Reply<pb::Empty> {
        let id = node::parse_id(&request.into_inner().id);
        reply(async { self.store.delete_edge(id?).await.map(|()| pb::Empty {}) }.await)
    }

    async fn get_neighborhood(&self, request: Request<pb::GetNeighborhoodRequest>) -> Reply<pb::Subgraph> {
        let r = request.into_inner();
        let walk = Direction::parse(&r.direction, Direction::Both).and_then(|direction| {
            Walk::new(&[r.id], Order::BreadthFirst, r.depth, 1, r.relations, direction, r.max_nodes)
        });
        reply(walk.map(|walk| subgraph_to_pb(self.store.read().walk(&walk))))
    }

    async fn traverse(&self, request: Request<pb::TraverseRequest>) -> Reply<pb::Subgraph> {
        let r = request.into_inner();
        let result = (|| {
            let order = Order::parse(&r.algorithm)?;
            let direction = Direction::parse(&r.direction, Direction::Out)?;
            let walk =
                Walk::new(&r.start_ids, order, r.max_depth, graph::MAX_DEPTH, r.relations, direction, r.max_nodes)?;
            let mut subgraph = self.store.read().walk(&walk);
            subgraph.retain_labels(&r.namespaces, &r.kinds);
            Ok(subgraph_to_pb(subgraph))
        })();
        reply(result)
    }

    async fn find_paths(&self, request: Request<pb::FindPathsRequest>) -> Reply<pb::FindPathsResponse> {
        let r = request.into_inner();
        let direction = match (r.undirected, r.direction.as_str()) {
            (true, "" | "both") => Ok(Direction::Both),
            (true, _) => Err(Error::invalid("invalid_direction", "undirected contradicts direction out or in")),
            (false, text) => Direction::parse(text, Direction::Out),
        };
        let result = direction
            .and_then(|direction| {
                PathQuery::new(&r.source_id, &r.target_id, r.max_depth, r.relations, r.weighted, r.max_paths, direction)
            })
            .map(|query| {
                let memory = self.store.read();
                let paths = memory.paths(&query);
                let mut seen = HashSet::new();
                let nodes = paths
                    .iter()
                    .flat_map(|p| &p.node_ids)
                    .filter(|id| seen.insert(**id))
                    .map(|id| node_to_pb(memory.view(*id, 0)))
                    .collect();
                pb::FindPathsResponse {
                    paths: paths
                        .into_iter()
                        .map(|p| pb::GraphPath {
                            node_ids: p.node_ids.iter().map(ToString::to_string).collect(),
                            edges: p.edges.into_iter().map(edge_to_pb).collect(),
                            total_weight: p.total_weight,
                        })
                        .collect(),
                    nodes,
                }
            });
        reply(result)
    }

    async fn upsert_graph_nodes(
        &self,
        request: Request<pb::UpsertGraphNodesRequest>,
    ) -> Reply<pb::UpsertGraphNodesResponse> {
        let nodes = request.into_inner().nodes;
        let result = async {
            if nodes.len() > MAX_BULK {
                return Err(Error::invalid("bulk_too_large", format!("a request holds at most {MAX_BULK} nodes")));
            }
            let labels = nodes
                .into_iter()
                .enumerate()
                .map(|(i, n)| {
                    let label =
                        node::parse_id(&n.id).and_then(|id| Ok((id, NodeLabel::new(n.namespace, n.kind, n.title)?, 0)));
                    label.map_err(|e| Error::new(e.kind(), e.code().to_owned(), format!("nodes[{i}]: {}", e.message())))
                })
                .collect::<Result<Vec<_>>>()?;
            let upserted = self.store.set_labels(labels).await?;
            Ok(pb::UpsertGraphNodesResponse { upserted })
        };
        reply(result.await)
    }

    async fn remove_graph_node(
        &self,
        request: Request<pb::RemoveGraphNodeRequest>,
    ) -> Reply<pb::RemoveGraphNodeResponse> {
        let id = node::parse_id(&request.into_inner().id);
        let removed = async { self.store.remove_node(id?, None).await }.await;
        reply(removed.map(|edges_removed| pb::RemoveGraphNodeResponse { edges_removed }))
    }

    async fn get_graph_stats(&self, request: Request<pb::GetGraphStatsRequest>) -> Reply<pb::GraphStats> {
        let r = request.into_inner();
        let result = (|| {
            let namespace = r.namespace.filter(|ns| !ns.is_empty());
            if let Some(ns) = &namespace {
                node::validate_namespace(ns)?;
            }
            let stats = self.store.read().stats(namespace.as_deref(), graph::top_or_default(r.top)?);
            Ok(pb::GraphStats {
                nodes: stats.nodes,
                edges: stats.edges,
                relations: stats
                    .relations
                    .into_iter()
                    .map(|(relation, edges)| pb::GraphRelationCount { relation, edges })
                    .collect(),
                connected_components: stats.components,
                largest_component: stats.largest_component,
                isolated_nodes: stats.isolated,
                mean_degree: stats.mean_degree,
                max_degree: stats.max_degree,
                top_nodes: stats.top.into_iter().map(node_to_pb).collect(),
            })
        })();
        reply(result)
    }

    async fn export_graph(&self, request: Request<pb::ExportGraphRequest>) -> Reply<pb::ExportGraphResponse> {
        let r = request.into_inner();
        let result = (|| {
            let format = ExportFormat::parse(&r.format)?;
            let subgraph = if r.root_ids.is_empty() {
                if r.depth != 0 || !r.direction.is_empty() {
                    return Err(Error::invalid("invalid_depth", "depth and direction need root_ids"));
                }
                let relations = graph::relations(r.relations)?;
                self.store.read().whole(&relations, graph::max_nodes_or_default(r.max_nodes)?)
            } else {
                let direction = Direction::parse(&r.direction, Direction::Both)?;
                let walk =
                    Walk::new(&r.root_ids, Order::BreadthFirst, r.depth, 1, r.relations, direction, r.max_nodes)?;
                self.store.read().walk(&walk)
            };
            Ok(pb::ExportGraphResponse {
                format: format.name().to_owned(),
                content_type: format.content_type().to_owned(),
                document: export::render(&subgraph, format),
                truncated: subgraph.truncated,
            })
        })();
        reply(result)
    }
}

fn metadata_from_pb(text: Option<&str>) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
    match text {
        None | Some("") => Ok(None),
        Some(text) => match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(map)) => Ok(Some(map)),
            _ => Err(Error::invalid("invalid_metadata", "metadata must be a JSON object")),
        },
    }
}

fn subgraph_to_pb(subgraph: Subgraph) -> pb::Subgraph {
    pb::Subgraph {
        nodes: subgraph.nodes.into_iter().map(node_to_pb).collect(),
        edges: subgraph.edges.into_iter().map(edge_to_pb).collect(),
        truncated: subgraph.truncated,
    }
}

fn node_to_pb(node: NodeView) -> pb::GraphNode {
    let label = node.label.unwrap_or_default();
    pb::GraphNode {
        id: node.id.to_string(),
        namespace: label.namespace,
        kind: label.kind,
        title: label.title,
        depth: node.depth,
        degree: node.degree,
    }
}

pub fn edge_to_pb(edge: graph::Edge) -> pb::GraphEdge {
    pb::GraphEdge {
        id: edge.id.to_string(),
        source_id: edge.source_id.to_string(),
        target_id: edge.target_id.to_string(),
        relation: edge.relation,
        weight: edge.weight,
        metadata_json: serde_json::Value::Object(edge.metadata).to_string(),
        created_at: Some(timestamp(edge.created_at)),
    }
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}
