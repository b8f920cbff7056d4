//! Routes of the original system served beside our own under a second path
//! (`/api/scheduler/...` beside `/api/v1/scheduler/...`, `/api/search` beside
//! `/api/v1/search`). One handler answers both, and utoipa documents a handler once, so
//! the OpenAPI document gets each alias here as a copy of its twin's operation.

use utoipa::openapi::path::{HttpMethod, Operation, PathItem};

/// (alias path, method, documented twin): the same operation under another path.
const ALIASES: &[(&str, HttpMethod, &str)] = &[
    ("/api/search", HttpMethod::Post, "/api/v1/search"),
    ("/api/scheduler/executions", HttpMethod::Get, "/api/v1/workflows/executions"),
    ("/api/scheduler/executions/{id}", HttpMethod::Get, "/api/v1/workflows/executions/{id}"),
    ("/api/scheduler/executions/{id}/cancel", HttpMethod::Post, "/api/v1/workflows/executions/{id}/cancel"),
    ("/api/v1/workflows/executions/{id}/progress", HttpMethod::Get, "/api/scheduler/executions/{id}/progress"),
    ("/api/scheduler/workflows", HttpMethod::Post, "/api/v1/scheduler/workflows"),
    ("/api/scheduler/workflows", HttpMethod::Get, "/api/v1/scheduler/workflows"),
    ("/api/scheduler/workflows/{name}", HttpMethod::Get, "/api/v1/scheduler/workflows/{name}"),
    ("/api/scheduler/workflows/{name}", HttpMethod::Delete, "/api/v1/scheduler/workflows/{name}"),
    ("/api/scheduler/workflows/{name}/preview", HttpMethod::Post, "/api/v1/scheduler/workflows/{name}/preview"),
    ("/api/v1/scheduler/workflows/{name}/run", HttpMethod::Post, "/api/scheduler/workflows/{name}/run"),
    ("/api/scheduler/templates", HttpMethod::Get, "/api/v1/scheduler/templates"),
    ("/api/scheduler/templates/{name}/preview", HttpMethod::Post, "/api/v1/scheduler/templates/{name}/preview"),
    ("/api/scheduler/templates/{name}/instantiate", HttpMethod::Post, "/api/v1/scheduler/templates/{name}/instantiate"),
    ("/api/scheduler/waves", HttpMethod::Get, "/api/v1/scheduler/tasks/waves"),
    ("/api/scheduler/stats", HttpMethod::Get, "/api/v1/scheduler/stats"),
];

pub struct RouteAliases;

fn operation(item: &PathItem, method: &HttpMethod) -> Option<Operation> {
    match method {
        HttpMethod::Get => item.get.clone(),
        HttpMethod::Post => item.post.clone(),
        HttpMethod::Put => item.put.clone(),
        HttpMethod::Delete => item.delete.clone(),
        HttpMethod::Patch => item.patch.clone(),
        _ => None,
    }
}

fn set(item: &mut PathItem, method: &HttpMethod, operation: Operation) {
    let slot = match method {
        HttpMethod::Get => &mut item.get,
        HttpMethod::Post => &mut item.post,
        HttpMethod::Put => &mut item.put,
        HttpMethod::Delete => &mut item.delete,
        HttpMethod::Patch => &mut item.patch,
        _ => return,
    };
    if slot.is_none() {
        *slot = Some(operation);
    }
}

impl utoipa::Modify for RouteAliases {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (alias, method, twin) in ALIASES {
            let Some(mut copy) = openapi.paths.paths.get(*twin).and_then(|item| operation(item, method)) else {
                continue;
            };
            // operation ids are unique in a document
            copy.operation_id = copy.operation_id.map(|id| format!("{id}_alias"));
            let item = openapi.paths.paths.entry((*alias).to_owned()).or_default();
            set(item, method, copy);
        }
    }
}
