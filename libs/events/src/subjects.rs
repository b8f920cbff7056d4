//! Every event subject of Helix, in one place.
//!
//! A subject reads `helix.<domain>.<event>` (the event part may have several tokens, such as
//! `helix.graph.edge.created`). Each domain has one JetStream stream, `HELIX_<DOMAIN>`, that captures
//! `helix.<domain>.>`; [`DOMAINS`] lists them. Only the service named as publisher publishes a subject;
//! anyone may subscribe. No other crate spells a subject: use these constants.
//!
//! Every event travels in an [`Envelope`](crate::Envelope) whose `type` is the subject and whose `id`
//! (UUIDv7) de-duplicates it. The payload shapes are given as JSON below; ids are UUIDv7 strings,
//! timestamps RFC 3339 UTC. A payload may gain fields (consumers ignore unknown ones); removing or
//! retyping one needs a new `spec_version` of the envelope.
//!
//! To add an event: add the constant here, with its publisher and payload, and list it in [`ALL`].
//! The bus refuses to publish a subject that is not listed.

use crate::error::{Error, Result};

/// The first token of every Helix subject.
pub const ROOT: &str = "helix";

/// One domain of events: its own JetStream stream capturing `helix.<name>.>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Domain {
    /// The second token of the subjects, e.g. `node`.
    pub name: &'static str,
    /// Stream name before any tenant prefix, `HELIX_<NAME>`.
    pub stream: &'static str,
    /// The subjects the stream captures, `helix.<name>.>`.
    pub subjects: &'static str,
    /// The service that publishes the domain's events.
    pub publisher: &'static str,
}

/// Every domain, each mapped to the stream that stores its events.
pub const DOMAINS: &[Domain] = &[
    Domain { name: "node", stream: "HELIX_NODE", subjects: "helix.node.>", publisher: "storage" },
    Domain { name: "source", stream: "HELIX_SOURCE", subjects: "helix.source.>", publisher: "storage" },
    Domain { name: "graph", stream: "HELIX_GRAPH", subjects: "helix.graph.>", publisher: "graph" },
    Domain { name: "llm", stream: "HELIX_LLM", subjects: "helix.llm.>", publisher: "llm-router" },
    Domain { name: "workflow", stream: "HELIX_WORKFLOW", subjects: "helix.workflow.>", publisher: "orchestrator" },
    Domain { name: "job", stream: "HELIX_JOB", subjects: "helix.job.>", publisher: "jobs" },
    Domain {
        name: "notification",
        stream: "HELIX_NOTIFICATION",
        subjects: "helix.notification.>",
        publisher: "notifications",
    },
    Domain { name: "gateway", stream: "HELIX_GATEWAY", subjects: "helix.gateway.>", publisher: "gateway" },
];

// ---------------------------------------------------------------------------------------------
// node — published by storage
// ---------------------------------------------------------------------------------------------

/// A knowledge node was stored. Publisher: storage. Payload: the whole node
/// (`helix_core::node::Node`): `{"id", "namespace", "kind", "title", "content", "tags",
/// "metadata", "source", "importance", "created_at", "updated_at", "version": 1}`.
/// Consumers: search (index it), graph (add the vertex), notifications (alert rules).
pub const NODE_CREATED: &str = "helix.node.created";
/// A knowledge node changed (a new version). Publisher: storage. Payload: the whole node
/// at its new version, as for [`NODE_CREATED`].
pub const NODE_UPDATED: &str = "helix.node.updated";
/// A knowledge node was deleted. Publisher: storage. Payload:
/// `{"id", "namespace", "version"}` (the version it had when deleted).
/// Consumers: search (drop it from the indexes), graph (drop its edges).
pub const NODE_DELETED: &str = "helix.node.deleted";

// ---------------------------------------------------------------------------------------------
// source — published by storage (sources and multimodal ingestion)
// ---------------------------------------------------------------------------------------------

/// A source (directory, RSS, GitHub, URL) was registered. Publisher: storage. Payload:
/// `{"id", "source_type", "name"}`.
pub const SOURCE_CREATED: &str = "helix.source.created";
/// A source was removed. Publisher: storage. Payload: `{"id", "source_type", "name"}`.
pub const SOURCE_DELETED: &str = "helix.source.deleted";
/// A source poll finished. Publisher: storage. Payload:
/// `{"id", "source_type", "items_seen", "nodes_created", "nodes_updated", "duration_ms"}`.
pub const SOURCE_POLLED: &str = "helix.source.polled";
/// A source poll failed. Publisher: storage. Payload: `{"id", "source_type", "error"}`.
pub const SOURCE_FAILED: &str = "helix.source.failed";
/// A document could not be ingested by the multimodal pipeline (PDF, image, audio, ...).
/// Publisher: storage. Payload: `{"source_id"?, "location", "modality", "error"}`.
pub const SOURCE_INGEST_FAILED: &str = "helix.source.ingest.failed";

// ---------------------------------------------------------------------------------------------
// graph — published by graph
// ---------------------------------------------------------------------------------------------

/// An edge was added to the knowledge graph. Publisher: graph. Payload:
/// `{"id", "source_id", "target_id", "relation", "weight"?}`.
pub const GRAPH_EDGE_CREATED: &str = "helix.graph.edge.created";
/// An edge was removed from the knowledge graph. Publisher: graph. Payload:
/// `{"id", "source_id", "target_id", "relation"}`.
pub const GRAPH_EDGE_DELETED: &str = "helix.graph.edge.deleted";

// ---------------------------------------------------------------------------------------------
// llm — published by llm-router
// ---------------------------------------------------------------------------------------------

/// An LLM request (generation or embedding) completed. Publisher: llm-router. Payload:
/// `{"request_id", "provider", "model", "operation": "generate"|"embed", "prompt_tokens",
/// "completion_tokens", "cost_usd", "latency_ms", "caller"?}`. Consumers: usage analytics.
pub const LLM_REQUEST_COMPLETED: &str = "helix.llm.request.completed";
/// An LLM request failed on every provider it was routed to. Publisher: llm-router. Payload:
/// `{"request_id", "providers": [..], "error", "caller"?}`.
pub const LLM_REQUEST_FAILED: &str = "helix.llm.request.failed";
/// A request fell back from one provider to another. Publisher: llm-router. Payload:
/// `{"request_id", "from_provider", "to_provider", "reason"}`.
pub const LLM_PROVIDER_FALLBACK: &str = "helix.llm.provider.fallback";
/// A spending cap was reached (`HELIX_DAILY_BUDGET` or a per-provider cap). Publisher: llm-router.
/// Payload: `{"scope": "daily"|"provider", "provider"?, "limit_usd", "spent_usd",
/// "action": "downgrade"|"reject"}`. Consumers: notifications.
pub const LLM_BUDGET_EXCEEDED: &str = "helix.llm.budget.exceeded";

// ---------------------------------------------------------------------------------------------
// workflow — published by orchestrator (workflow engine, DAG scheduler, feedback, reports)
// ---------------------------------------------------------------------------------------------

/// A workflow execution started. Publisher: orchestrator. Payload:
/// `{"execution_id", "workflow", "trigger": "api"|"schedule"|"event"}`.
pub const WORKFLOW_STARTED: &str = "helix.workflow.started";
/// One step of a workflow execution finished. Publisher: orchestrator. Payload:
/// `{"execution_id", "workflow", "step", "status": "succeeded"|"failed"|"skipped", "duration_ms"}`.
pub const WORKFLOW_STEP_COMPLETED: &str = "helix.workflow.step.completed";
/// A workflow execution succeeded. Publisher: orchestrator. Payload:
/// `{"execution_id", "workflow", "duration_ms"}`.
pub const WORKFLOW_COMPLETED: &str = "helix.workflow.completed";
/// A workflow execution failed. Publisher: orchestrator. Payload:
/// `{"execution_id", "workflow", "step"?, "error"}`.
pub const WORKFLOW_FAILED: &str = "helix.workflow.failed";
/// A workflow execution was cancelled. Publisher: orchestrator. Payload: `{"execution_id", "workflow"}`.
pub const WORKFLOW_CANCELLED: &str = "helix.workflow.cancelled";
/// A DAG-scheduler task completed. Publisher: orchestrator. Payload:
/// `{"task_id", "workflow"?, "newly_ready": [task ids]}`.
pub const WORKFLOW_TASK_COMPLETED: &str = "helix.workflow.task.completed";
/// A DAG-scheduler task failed. Publisher: orchestrator. Payload:
/// `{"task_id", "workflow"?, "error", "cancelled_downstream": [task ids]}`.
pub const WORKFLOW_TASK_FAILED: &str = "helix.workflow.task.failed";
/// Quality feedback was recorded (score 0.0–1.0). Publisher: orchestrator. Payload:
/// `{"feedback_id", "task_id"?, "score", "comment"?}`. Consumers: learning, analytics.
pub const WORKFLOW_FEEDBACK_RECORDED: &str = "helix.workflow.feedback.recorded";
/// A report (namespace summary, trend report) was generated. Publisher: orchestrator. Payload:
/// `{"report_id", "kind", "namespace"?}`.
pub const WORKFLOW_REPORT_GENERATED: &str = "helix.workflow.report.generated";

// ---------------------------------------------------------------------------------------------
// job — published by jobs
// ---------------------------------------------------------------------------------------------

/// A job was enqueued (not for an idempotency key seen before). Publisher: jobs. Payload:
/// `{"id", "kind", "queue", "priority", "run_at"}`.
pub const JOB_ENQUEUED: &str = "helix.job.enqueued";
/// A worker leased a job: an attempt started. Publisher: jobs. Payload:
/// `{"id", "kind", "queue", "attempt", "worker"}` (`attempt` is the lease's fencing token).
pub const JOB_STARTED: &str = "helix.job.started";
/// A job succeeded. Publisher: jobs. Payload: `{"id", "kind", "queue", "attempt", "duration_ms"}`.
pub const JOB_COMPLETED: &str = "helix.job.completed";
/// A job attempt failed (the worker said so, or its lease lapsed) and a retry is scheduled:
/// after `min(5*2^(retries-1), 3600)` s ±10% for a reported failure, at once for a lapsed
/// lease. Publisher: jobs. Payload: `{"id", "kind", "queue", "attempt", "retries", "error", "retry_at"}`.
pub const JOB_FAILED: &str = "helix.job.failed";
/// A job ran out of attempts (or failed permanently) and moved to the dead-letter queue.
/// Publisher: jobs. Payload: `{"id", "kind", "queue", "attempt", "retries", "error"}`.
/// Consumers: notifications.
pub const JOB_DEAD_LETTERED: &str = "helix.job.dead_lettered";
/// A job was cancelled: at once when it was waiting, when its worker stopped when it was
/// running. Publisher: jobs. Payload: `{"id", "kind", "queue", "reason"}`.
pub const JOB_CANCELLED: &str = "helix.job.cancelled";
/// A failed, dead or cancelled job was put back in its queue by hand (`RetryJob`).
/// Publisher: jobs. Payload: `{"id", "kind", "queue", "retries"}`.
pub const JOB_RETRIED: &str = "helix.job.retried";
/// A schedule fired and enqueued its job. Publisher: jobs. Payload:
/// `{"schedule_id", "cron", "job_id"}`.
pub const JOB_SCHEDULE_FIRED: &str = "helix.job.schedule.fired";

// ---------------------------------------------------------------------------------------------
// notification — published by notifications
// ---------------------------------------------------------------------------------------------

/// A notification was stored. Publisher: notifications. Payload:
/// `{"id", "severity": "info"|"warning"|"error"|"critical", "title", "channels": [..]}`.
/// Consumers: gateway (SSE stream to clients).
pub const NOTIFICATION_CREATED: &str = "helix.notification.created";
/// A notification was delivered through a channel adapter (Slack, Discord, Email, ...).
/// Publisher: notifications. Payload: `{"id", "channel", "adapter"}`.
pub const NOTIFICATION_DELIVERED: &str = "helix.notification.delivered";
/// Delivering a notification through a channel failed. Publisher: notifications. Payload:
/// `{"id", "channel", "adapter", "error"}`.
pub const NOTIFICATION_FAILED: &str = "helix.notification.failed";
/// An alert rule matched an event (outside its cooldown and quiet hours). Publisher: notifications.
/// Payload: `{"rule_id", "event_id", "event_type", "notification_id"}`.
pub const NOTIFICATION_ALERT_FIRED: &str = "helix.notification.alert.fired";
/// An outbound webhook was delivered. Publisher: notifications. Payload:
/// `{"webhook_id", "delivery_id", "event_type", "status_code", "duration_ms"}`.
pub const NOTIFICATION_WEBHOOK_DELIVERED: &str = "helix.notification.webhook.delivered";
/// An outbound webhook delivery failed. Publisher: notifications. Payload:
/// `{"webhook_id", "delivery_id", "event_type", "status_code"?, "error"}`.
pub const NOTIFICATION_WEBHOOK_FAILED: &str = "helix.notification.webhook.failed";

// ---------------------------------------------------------------------------------------------
// gateway — published by gateway
// ---------------------------------------------------------------------------------------------

/// An audit-log entry was written for a public API call. Publisher: gateway. Payload:
/// `{"id", "actor", "key_id"?, "action", "method", "path", "status", "ip"?}`.
pub const GATEWAY_AUDIT_RECORDED: &str = "helix.gateway.audit.recorded";
/// An external event was ingested through `POST /api/event`. Publisher: gateway. Payload:
/// `{"source", "kind", "data": {..}}`. Consumers: orchestrator (event router).
pub const GATEWAY_EVENT_RECEIVED: &str = "helix.gateway.event.received";
/// An API key was created. Publisher: gateway. Payload: `{"key_id", "name", "scopes": [..]}`.
pub const GATEWAY_KEY_CREATED: &str = "helix.gateway.key.created";
/// An API key was revoked. Publisher: gateway. Payload: `{"key_id"}`.
pub const GATEWAY_KEY_REVOKED: &str = "helix.gateway.key.revoked";
/// A client completed pairing (OTP confirmed, bearer token issued). Publisher: gateway. Payload:
/// `{"pairing_id", "client_name"?}`.
pub const GATEWAY_PAIRING_COMPLETED: &str = "helix.gateway.pairing.completed";

/// Every subject above. The bus publishes only these.
pub const ALL: &[&str] = &[
    NODE_CREATED,
    NODE_UPDATED,
    NODE_DELETED,
    SOURCE_CREATED,
    SOURCE_DELETED,
    SOURCE_POLLED,
    SOURCE_FAILED,
    SOURCE_INGEST_FAILED,
    GRAPH_EDGE_CREATED,
    GRAPH_EDGE_DELETED,
    LLM_REQUEST_COMPLETED,
    LLM_REQUEST_FAILED,
    LLM_PROVIDER_FALLBACK,
    LLM_BUDGET_EXCEEDED,
    WORKFLOW_STARTED,
    WORKFLOW_STEP_COMPLETED,
    WORKFLOW_COMPLETED,
    WORKFLOW_FAILED,
    WORKFLOW_CANCELLED,
    WORKFLOW_TASK_COMPLETED,
    WORKFLOW_TASK_FAILED,
    WORKFLOW_FEEDBACK_RECORDED,
    WORKFLOW_REPORT_GENERATED,
    JOB_ENQUEUED,
    JOB_STARTED,
    JOB_COMPLETED,
    JOB_FAILED,
    JOB_DEAD_LETTERED,
    JOB_CANCELLED,
    JOB_RETRIED,
    JOB_SCHEDULE_FIRED,
    NOTIFICATION_CREATED,
    NOTIFICATION_DELIVERED,
    NOTIFICATION_FAILED,
    NOTIFICATION_ALERT_FIRED,
    NOTIFICATION_WEBHOOK_DELIVERED,
    NOTIFICATION_WEBHOOK_FAILED,
    GATEWAY_AUDIT_RECORDED,
    GATEWAY_EVENT_RECEIVED,
    GATEWAY_KEY_CREATED,
    GATEWAY_KEY_REVOKED,
    GATEWAY_PAIRING_COMPLETED,
];

/// Whether `subject` is one of [`ALL`].
pub fn is_known(subject: &str) -> bool {
    ALL.contains(&subject)
}

/// The domain a concrete subject belongs to (`helix.node.created` → `node`), if it is a Helix domain.
pub fn domain_of(subject: &str) -> Option<&'static Domain> {
    let mut tokens = subject.split('.');
    if tokens.next() != Some(ROOT) {
        return None;
    }
    let name = tokens.next()?;
    tokens.next()?;
    DOMAINS.iter().find(|domain| domain.name == name)
}

/// Whether the subject `pattern` (NATS syntax: `*` matches one token, a final `>` one or more) matches
/// the concrete `subject`.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (literal, Some(actual)) if literal == actual => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// Checks that `subject` can be published: a subject listed in [`ALL`].
pub fn validate_subject(subject: &str) -> Result<&'static Domain> {
    let invalid = |reason: &'static str| Error::InvalidSubject { subject: subject.to_owned(), reason };
    for token in subject.split('.') {
        if token == "*" || token == ">" {
            return Err(invalid("a published subject has no wildcards"));
        }
        if !is_token(token) {
            return Err(invalid("tokens are non-empty and use only A-Z a-z 0-9 _ -"));
        }
    }
    let domain = domain_of(subject).ok_or_else(|| invalid("not of the form helix.<domain>.<event>"))?;
    if !is_known(subject) {
        return Err(invalid("not listed in helix_events::subjects::ALL"));
    }
    Ok(domain)
}

/// Checks a subscription filter and returns, for every domain it can match, the same filter narrowed to
/// that domain's stream: `helix.node.*` → `[(node, "helix.node.*")]`, `helix.*.created` →
/// `[(node, "helix.node.created"), (source, "helix.source.created"), ..]`, `helix.>` → every domain.
pub fn plan_filter(filter: &str) -> Result<Vec<(&'static Domain, String)>> {
    let invalid = |reason: &'static str| Error::InvalidFilter { filter: filter.to_owned(), reason };
    let tokens: Vec<&str> = filter.split('.').collect();
    for (index, token) in tokens.iter().enumerate() {
        let wildcard = *token == "*" || (*token == ">" && index == tokens.len() - 1);
        if !wildcard && !is_token(token) {
            return Err(invalid("tokens are `*`, a final `>` or non-empty A-Z a-z 0-9 _ -"));
        }
    }
    let mut plan = Vec::new();
    for domain in DOMAINS {
        let narrowed = match tokens.as_slice() {
            [">"] => Some(domain.subjects.to_owned()),
            [root, rest @ ..] if *root == ROOT || *root == "*" => match rest {
                [">"] => Some(domain.subjects.to_owned()),
                [name, event @ ..] if (*name == domain.name || *name == "*") && !event.is_empty() => {
                    Some(format!("{ROOT}.{}.{}", domain.name, event.join(".")))
                }
                _ => None,
            },
            _ => None,
        };
        plan.extend(narrowed.map(|narrowed| (domain, narrowed)));
    }
    if plan.is_empty() {
        return Err(invalid("matches no helix.<domain>.<event> subject"));
    }
    Ok(plan)
}

pub(crate) fn is_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
