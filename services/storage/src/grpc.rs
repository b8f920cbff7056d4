//! The storage service's gRPC face: converts wire messages to domain types and back,
//! and nothing else. Validation and persistence live in [`NodeStore`].

use chrono::{DateTime, Utc};
use helix_core::node::{self, Node, NodeDraft, NodeFilter};
use helix_core::{Error, Result};
use helix_proto::v1 as pb;
use helix_proto::v1::storage_service_server::StorageService;
use tonic::{Request, Response, Status};

use crate::store::NodeStore;

pub struct StorageApi {
    store: NodeStore,
}

impl StorageApi {
    pub fn new(store: NodeStore) -> Self {
        Self { store }
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

fn reply<T>(result: Result<T>) -> Reply<T> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl StorageService for StorageApi {
    async fn create_node(&self, request: Request<pb::CreateNodeRequest>) -> Reply<pb::Node> {
        let draft = draft_from_pb(request.into_inner().node.unwrap_or_default());
        reply(async { self.store.create(draft?).await.map(node_to_pb) }.await)
    }

    async fn bulk_create_nodes(
        &self,
        request: Request<pb::BulkCreateNodesRequest>,
    ) -> Reply<pb::BulkCreateNodesResponse> {
        let drafts = request.into_inner().nodes.into_iter().map(draft_from_pb).collect::<Result<Vec<_>>>();
        let created = async { self.store.bulk_create(drafts?).await }.await;
        reply(created.map(|nodes| pb::BulkCreateNodesResponse { nodes: nodes.into_iter().map(node_to_pb).collect() }))
    }

    async fn get_node(&self, request: Request<pb::GetNodeRequest>) -> Reply<pb::Node> {
        let id = node::parse_id(&request.into_inner().id);
        reply(async { self.store.get(id?).await.map(node_to_pb) }.await)
    }

    async fn update_node(&self, request: Request<pb::UpdateNodeRequest>) -> Reply<pb::Node> {
        let request = request.into_inner();
        let result = async {
            let id = node::parse_id(&request.id)?;
            let draft = draft_from_pb(request.node.unwrap_or_default())?;
            if request.expected_version < 1 {
                return Err(Error::invalid("invalid_version", "expected_version must be at least 1"));
            }
            self.store.update(id, request.expected_version, draft).await.map(node_to_pb)
        };
        reply(result.await)
    }

    async fn delete_node(&self, request: Request<pb::DeleteNodeRequest>) -> Reply<pb::DeleteNodeResponse> {
        let request = request.into_inner();
        let result = async {
            let id = node::parse_id(&request.id)?;
            let expected = Some(request.expected_version).filter(|v| *v != 0);
            self.store.delete(id, expected).await?;
            Ok(pb::DeleteNodeResponse { id: id.to_string() })
        };
        reply(result.await)
    }

    async fn list_nodes(&self, request: Request<pb::ListNodesRequest>) -> Reply<pb::ListNodesResponse> {
        let request = request.into_inner();
        let page = request.page.unwrap_or_default();
        let result = async {
            let filter = NodeFilter::new(request.namespace, request.kind, request.tag, page.limit, Some(&page.cursor))?;
            let page = self.store.list(&filter).await?;
            Ok(pb::ListNodesResponse {
                nodes: page.nodes.into_iter().map(node_to_pb).collect(),
                next_cursor: page.next_cursor.unwrap_or_default(),
            })
        };
        reply(result.await)
    }

    async fn recall_nodes(&self, request: Request<pb::RecallNodesRequest>) -> Reply<pb::ListNodesResponse> {
        let request = request.into_inner();
        let limit = if request.limit == 0 { node::DEFAULT_PAGE } else { request.limit };
        let nodes = self.store.recall(&request.query, request.namespace.as_deref(), limit).await;
        reply(nodes.map(|nodes| pb::ListNodesResponse {
            nodes: nodes.into_iter().map(node_to_pb).collect(),
            next_cursor: String::new(),
        }))
    }
}

fn draft_from_pb(draft: pb::NodeDraft) -> Result<NodeDraft> {
    let metadata = match draft.metadata_json.as_deref() {
        None | Some("") => None,
        Some(text) => match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(map)) => Some(map),
            _ => return Err(Error::invalid("invalid_metadata", "metadata must be a JSON object")),
        },
    };
    Ok(NodeDraft {
        namespace: draft.namespace,
        kind: draft.kind,
        title: draft.title,
        content: draft.content,
        tags: draft.tags,
        metadata,
        source: draft.source,
        importance: draft.importance,
    })
}

pub fn node_to_pb(node: Node) -> pb::Node {
    let f = node.fields;
    pb::Node {
        id: node.id.to_string(),
        namespace: f.namespace,
        kind: f.kind,
        title: f.title,
        content: f.content,
        tags: f.tags,
        metadata_json: serde_json::Value::Object(f.metadata).to_string(),
        source: f.source.unwrap_or_default(),
        importance: f.importance,
        created_at: Some(timestamp(node.created_at)),
        updated_at: Some(timestamp(node.updated_at)),
        version: node.version,
    }
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}
