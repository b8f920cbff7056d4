//! Which scope each route needs: one declarative table, checked on every request by
//! `auth::require_key`. A route missing from the table is refused to every key (admin
//! included) and fails the auth matrix test, so no route ships unguarded.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a key may do. `admin` grants everything but `secrets:read`; within an area
/// `write` implies `read`. `secrets:read` (credential values from
/// `GET /api/v1/secrets/{key}`) is never implied, not by `admin` nor by the shorthands
/// `read` and `write`: a key carries it only when it names it (docs/decisions/0010).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    #[serde(rename = "nodes:read")]
    NodesRead,
    #[serde(rename = "nodes:write")]
    NodesWrite,
    #[serde(rename = "search:read")]
    SearchRead,
    #[serde(rename = "search:write")]
    SearchWrite,
    #[serde(rename = "graph:read")]
    GraphRead,
    #[serde(rename = "graph:write")]
    GraphWrite,
    #[serde(rename = "llm:read")]
    LlmRead,
    #[serde(rename = "llm:call")]
    LlmCall,
    #[serde(rename = "jobs:read")]
    JobsRead,
    #[serde(rename = "jobs:write")]
    JobsWrite,
    #[serde(rename = "workflows:read")]
    WorkflowsRead,
    #[serde(rename = "workflows:write")]
    WorkflowsWrite,
    #[serde(rename = "workflows:run")]
    WorkflowsRun,
    #[serde(rename = "admin")]
    Admin,
    #[serde(rename = "secrets:read")]
    SecretsRead,
}

impl Scope {
    pub const ALL: [Scope; 15] = [
        Scope::NodesRead,
        Scope::NodesWrite,
        Scope::SearchRead,
        Scope::SearchWrite,
        Scope::GraphRead,
        Scope::GraphWrite,
        Scope::LlmRead,
        Scope::LlmCall,
        Scope::JobsRead,
        Scope::JobsWrite,
        Scope::WorkflowsRead,
        Scope::WorkflowsWrite,
        Scope::WorkflowsRun,
        Scope::Admin,
        Scope::SecretsRead,
    ];

    /// What `admin` grants: every scope but [`Scope::SecretsRead`], which [`Scope::ALL`]
    /// keeps last so that a scope added to it is granted to admins without a second list.
    const ADMIN_GRANTS: &'static [Scope] = match Scope::ALL.split_last() {
        Some((Scope::SecretsRead, granted)) => granted,
        _ => panic!("Scope::ALL must end with SecretsRead, the one scope admin does not imply"),
    };

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::NodesRead => "nodes:read",
            Scope::NodesWrite => "nodes:write",
            Scope::SearchRead => "search:read",
            Scope::SearchWrite => "search:write",
            Scope::GraphRead => "graph:read",
            Scope::GraphWrite => "graph:write",
            Scope::LlmRead => "llm:read",
            Scope::LlmCall => "llm:call",
            Scope::JobsRead => "jobs:read",
            Scope::JobsWrite => "jobs:write",
            Scope::WorkflowsRead => "workflows:read",
            Scope::WorkflowsWrite => "workflows:write",
            Scope::WorkflowsRun => "workflows:run",
            Scope::Admin => "admin",
            Scope::SecretsRead => "secrets:read",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// The scopes this one grants besides itself.
    fn implied(self) -> &'static [Scope] {
        match self {
            Scope::NodesWrite => &[Scope::NodesRead],
            Scope::SearchWrite => &[Scope::SearchRead],
            Scope::GraphWrite => &[Scope::GraphRead],
            Scope::LlmCall => &[Scope::LlmRead],
            Scope::JobsWrite => &[Scope::JobsRead],
            Scope::WorkflowsWrite | Scope::WorkflowsRun => &[Scope::WorkflowsRead],
            Scope::Admin => Scope::ADMIN_GRANTS,
            _ => &[],
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s).ok_or_else(|| {
            format!("unknown scope {s:?}; one of read, write, {}", Scope::ALL.map(Scope::as_str).join(", "))
        })
    }
}

/// The scopes a key holds, as given (for display) and as the set they grant (for checks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    named: Vec<String>,
    bits: u32,
}

impl Grants {
    /// Parses scope names: each of [`Scope`], or the shorthands `read` (every `:read`)
    /// and `write` (every scope but admin); neither shorthand includes `secrets:read`.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        let mut grants = Grants::default();
        for name in names {
            let name = name.as_ref().trim();
            let scopes: Vec<Scope> = match name {
                "read" => Scope::ALL
                    .into_iter()
                    .filter(|s| s.as_str().ends_with(":read") && *s != Scope::SecretsRead)
                    .collect(),
                "write" => Scope::ALL.into_iter().filter(|s| !matches!(s, Scope::Admin | Scope::SecretsRead)).collect(),
                other => vec![other.parse()?],
            };
            for scope in scopes {
                grants.bits |= scope.bit();
                for implied in scope.implied() {
                    grants.bits |= implied.bit();
                }
            }
            if !grants.named.iter().any(|n| n == name) {
                grants.named.push(name.to_owned());
            }
        }
        Ok(grants)
    }

    /// Reads the stored, comma-separated form.
    pub fn from_stored(stored: &str) -> Result<Self, String> {
        let names: Vec<&str> = stored.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        Self::parse(&names)
    }

    pub fn stored(&self) -> String {
        self.named.join(",")
    }

    pub fn names(&self) -> &[String] {
        &self.named
    }

    pub fn allows(&self, needed: Scope) -> bool {
        self.bits & needed.bit() != 0
    }

    pub fn is_admin(&self) -> bool {
        self.allows(Scope::Admin)
    }

    /// Whether every scope of `other` is granted here (a key may only hand out what it
    /// has). An admin key may also hand out `secrets:read`, which it does not hold
    /// itself: how an operator gets the one key that reveals values. The scope is
    /// friction against using an everyday admin key for it; the server's
    /// `vault.allow_reveal` is the boundary (docs/decisions/0010).
    pub fn covers(&self, other: &Grants) -> bool {
        let grantable = if self.is_admin() { self.bits | Scope::SecretsRead.bit() } else { self.bits };
        other.bits & !grantable == 0
    }
}

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No key: health probes, and pairing confirmation (the code is the credential).
    Public,
    /// Any valid key.
    Authenticated,
    Scoped(Scope),
}

use Access::{Authenticated, Public, Scoped};
use Scope::*;

/// Every route of the REST API: (method, route template as registered, what it needs).
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/health", Public),
    ("GET", "/ready", Public),
    ("GET", "/api/v1/openapi.json", Authenticated),
    // identity
    ("GET", "/api/v1/keys", Scoped(Admin)),
    ("POST", "/api/v1/keys", Scoped(Admin)),
    ("GET", "/api/v1/keys/{id}", Scoped(Admin)),
    ("DELETE", "/api/v1/keys/{id}", Scoped(Admin)),
    ("POST", "/api/v1/keys/{id}/rotate", Scoped(Admin)),
    ("POST", "/api/v1/pair/initiate", Scoped(Admin)),
    ("POST", "/api/v1/pair/confirm", Public),
    ("GET", "/api/v1/audit/query", Scoped(Admin)),
    // credentials: names, origins and times; a value only with `secrets:read` as well
    // and `vault.allow_reveal` on the server (secrets.rs)
    ("GET", "/api/v1/secrets", Scoped(Admin)),
    ("GET", "/api/v1/secrets/status", Scoped(Admin)),
    ("GET", "/api/v1/secrets/{key}", Scoped(Admin)),
    ("PUT", "/api/v1/secrets/{key}", Scoped(Admin)),
    ("DELETE", "/api/v1/secrets/{key}", Scoped(Admin)),
    // nodes
    ("POST", "/api/v1/nodes", Scoped(NodesWrite)),
    ("GET", "/api/v1/nodes", Scoped(NodesRead)),
    ("POST", "/api/v1/nodes/bulk", Scoped(NodesWrite)),
    ("GET", "/api/v1/nodes/{id}", Scoped(NodesRead)),
    ("PUT", "/api/v1/nodes/{id}", Scoped(NodesWrite)),
    ("DELETE", "/api/v1/nodes/{id}", Scoped(NodesWrite)),
    ("GET", "/api/v1/recall", Scoped(NodesRead)),
    // search
    ("POST", "/api/v1/search", Scoped(SearchRead)),
    ("GET", "/api/v1/search", Scoped(SearchRead)),
    ("POST", "/api/search", Scoped(SearchRead)),
    ("GET", "/api/v1/search/suggest", Scoped(SearchRead)),
    ("GET", "/api/v1/search/similar/{id}", Scoped(SearchRead)),
    ("GET", "/api/v1/search/stats", Scoped(SearchRead)),
    // a rebuild reads every namespace and costs the whole corpus's embedding
    ("POST", "/api/v1/search/reindex", Scoped(Admin)),
    ("POST", "/api/v1/search/index", Scoped(SearchWrite)),
    ("DELETE", "/api/v1/search/index/{id}", Scoped(SearchWrite)),
    // graph
    ("POST", "/api/v1/graph/edges", Scoped(GraphWrite)),
    ("GET", "/api/v1/graph/edges", Scoped(GraphRead)),
    ("GET", "/api/v1/graph/edges/{id}", Scoped(GraphRead)),
    ("DELETE", "/api/v1/graph/edges/{id}", Scoped(GraphWrite)),
    ("GET", "/api/v1/graph/export", Scoped(GraphRead)),
    ("GET", "/api/v1/graph/path", Scoped(GraphRead)),
    ("GET", "/api/v1/graph/stats", Scoped(GraphRead)),
    ("POST", "/api/v1/graph/traverse", Scoped(GraphRead)),
    ("PUT", "/api/v1/graph/nodes", Scoped(GraphWrite)),
    ("DELETE", "/api/v1/graph/nodes/{id}", Scoped(GraphWrite)),
    ("GET", "/api/v1/graph/{id}", Scoped(GraphRead)),
    // jobs
    ("POST", "/api/v1/jobs", Scoped(JobsWrite)),
    ("GET", "/api/v1/jobs", Scoped(JobsRead)),
    ("POST", "/api/v1/jobs/bulk", Scoped(JobsWrite)),
    ("GET", "/api/v1/jobs/stats", Scoped(JobsRead)),
    ("GET", "/api/v1/jobs/dead-letter", Scoped(JobsRead)),
    ("POST", "/api/v1/jobs/purge", Scoped(JobsWrite)),
    ("POST", "/api/v1/jobs/schedules", Scoped(JobsWrite)),
    ("GET", "/api/v1/jobs/schedules", Scoped(JobsRead)),
    ("GET", "/api/v1/jobs/schedules/{id}", Scoped(JobsRead)),
    ("PUT", "/api/v1/jobs/schedules/{id}", Scoped(JobsWrite)),
    ("DELETE", "/api/v1/jobs/schedules/{id}", Scoped(JobsWrite)),
    ("POST", "/api/v1/jobs/schedules/{id}/trigger", Scoped(JobsWrite)),
    ("GET", "/api/v1/jobs/{id}", Scoped(JobsRead)),
    ("POST", "/api/v1/jobs/{id}/retry", Scoped(JobsWrite)),
    ("POST", "/api/v1/jobs/{id}/cancel", Scoped(JobsWrite)),
    // workflows
    ("POST", "/api/v1/workflows", Scoped(WorkflowsWrite)),
    ("GET", "/api/v1/workflows", Scoped(WorkflowsRead)),
    ("POST", "/api/v1/workflows/validate", Scoped(WorkflowsRead)),
    ("GET", "/api/v1/workflows/executions", Scoped(WorkflowsRead)),
    ("GET", "/api/v1/workflows/executions/{id}", Scoped(WorkflowsRead)),
    ("POST", "/api/v1/workflows/executions/{id}/cancel", Scoped(WorkflowsRun)),
    ("GET", "/api/v1/workflows/executions/{id}/progress", Scoped(WorkflowsRead)),
    ("GET", "/api/v1/workflows/{id}", Scoped(WorkflowsRead)),
    ("PUT", "/api/v1/workflows/{id}", Scoped(WorkflowsWrite)),
    ("DELETE", "/api/v1/workflows/{id}", Scoped(WorkflowsWrite)),
    ("POST", "/api/v1/workflows/{id}/execute", Scoped(WorkflowsRun)),
    ("GET", "/api/scheduler/executions", Scoped(WorkflowsRead)),
    ("GET", "/api/scheduler/executions/{id}", Scoped(WorkflowsRead)),
    ("POST", "/api/scheduler/executions/{id}/cancel", Scoped(WorkflowsRun)),
    ("GET", "/api/scheduler/executions/{id}/progress", Scoped(WorkflowsRead)),
    // scheduler: task graphs are workflows
    ("POST", "/api/v1/scheduler/workflows", Scoped(WorkflowsWrite)),
    ("GET", "/api/v1/scheduler/workflows", Scoped(WorkflowsRead)),
    ("POST", "/api/scheduler/workflows", Scoped(WorkflowsWrite)),
    ("GET", "/api/scheduler/workflows", Scoped(WorkflowsRead)),
    ("GET", "/api/v1/scheduler/workflows/{name}", Scoped(WorkflowsRead)),
    ("DELETE", "/api/v1/scheduler/workflows/{name}", Scoped(WorkflowsWrite)),
    ("GET", "/api/scheduler/workflows/{name}", Scoped(WorkflowsRead)),
    ("DELETE", "/api/scheduler/workflows/{name}", Scoped(WorkflowsWrite)),
    ("POST", "/api/v1/scheduler/workflows/{name}/preview", Scoped(WorkflowsRead)),
    ("POST", "/api/scheduler/workflows/{name}/preview", Scoped(WorkflowsRead)),
    ("POST", "/api/v1/scheduler/workflows/{name}/run", Scoped(WorkflowsRun)),
    ("POST", "/api/scheduler/workflows/{name}/run", Scoped(WorkflowsRun)),
    ("GET", "/api/v1/scheduler/templates", Scoped(WorkflowsRead)),
    ("GET", "/api/scheduler/templates", Scoped(WorkflowsRead)),
    ("POST", "/api/v1/scheduler/templates/{name}/preview", Scoped(WorkflowsRead)),
    ("POST", "/api/scheduler/templates/{name}/preview", Scoped(WorkflowsRead)),
    ("POST", "/api/v1/scheduler/templates/{name}/instantiate", Scoped(WorkflowsWrite)),
    ("POST", "/api/scheduler/templates/{name}/instantiate", Scoped(WorkflowsWrite)),
    ("POST", "/api/v1/scheduler/tasks", Scoped(WorkflowsWrite)),
    ("GET", "/api/v1/scheduler/tasks/ready", Scoped(WorkflowsRead)),
    ("GET", "/api/v1/scheduler/tasks/waves", Scoped(WorkflowsRead)),
    ("GET", "/api/scheduler/waves", Scoped(WorkflowsRead)),
    ("GET", "/api/v1/scheduler/tasks/{id}", Scoped(WorkflowsRead)),
    ("POST", "/api/v1/scheduler/tasks/{id}/run", Scoped(WorkflowsRun)),
    ("POST", "/api/v1/scheduler/tasks/{id}/complete", Scoped(WorkflowsRun)),
    ("POST", "/api/v1/scheduler/tasks/{id}/fail", Scoped(WorkflowsRun)),
    ("GET", "/api/v1/scheduler/stats", Scoped(WorkflowsRead)),
    ("GET", "/api/scheduler/stats", Scoped(WorkflowsRead)),
    // llm
    ("POST", "/v1/chat/completions", Scoped(LlmCall)),
    ("POST", "/v1/messages", Scoped(LlmCall)),
    ("GET", "/v1/models", Scoped(LlmRead)),
    ("POST", "/api/generate", Scoped(LlmCall)),
    ("GET", "/api/budget", Scoped(LlmRead)),
    ("POST", "/v1/embeddings", Scoped(LlmCall)),
    ("GET", "/api/v1/rate-limits", Scoped(LlmRead)),
    // limits and budgets bound what every key may spend: only an admin moves them
    ("PUT", "/api/v1/rate-limits", Scoped(Admin)),
    ("GET", "/api/v1/llm/budget", Scoped(LlmRead)),
    ("PUT", "/api/v1/llm/budget", Scoped(Admin)),
    ("GET", "/api/v1/llm/usage", Scoped(LlmRead)),
    ("GET", "/api/analytics/dashboard", Scoped(LlmRead)),
    ("GET", "/api/analytics/trends", Scoped(LlmRead)),
    ("GET", "/api/analytics/providers", Scoped(LlmRead)),
    ("GET", "/api/analytics/token-usage", Scoped(LlmRead)),
    // every event of every namespace passes through these
    ("GET", "/api/board", Scoped(Admin)),
    ("GET", "/tower", Scoped(Admin)),
];

/// What `method` on the route `template` needs; `None` for a route not in the table.
pub fn access(method: &http::Method, template: &str) -> Option<Access> {
    ROUTES.iter().find(|(m, path, _)| *m == method.as_str() && *path == template).map(|(_, _, access)| *access)
}
