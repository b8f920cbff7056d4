//! Prometheus metrics of a process, one registry for all the services it runs, served
//! as text on the admin listener's `/metrics`. The families are fixed here, so every
//! service reports requests, latencies and events under the same names.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use helix_events::{Envelope, EventBus, PublishAck, Subscription};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tracing::Instrument;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// the route pattern (`/api/v1/nodes/{id}`), never the raw path: bounded cardinality
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    /// `/helix.v1.StorageService/CreateNode`
    pub method: String,
    /// gRPC status code name: `OK`, `NOT_FOUND`, ...
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub subject: String,
    /// `ok`, `duplicate` or `error`
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumeLabels {
    pub subject: String,
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LlmCallLabels {
    /// the provider's name (`custom` for every custom endpoint): bounded
    pub provider: String,
    /// `ok`, `error`, `timeout`, `rate_limited`, `circuit_open`
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LlmOverheadLabels {
    /// `generate` or `stream`
    pub call: String,
}

type Latency = Family<GrpcLabels, Histogram, fn() -> Histogram>;
type HttpLatency = Family<HttpLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.25 ms to ~8 s
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

fn overhead_histogram() -> Histogram {
    // 5 µs to ~80 ms: the router's overhead goal is under a millisecond
    Histogram::new(exponential_buckets(0.000005, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: HttpLatency,
    pub grpc_requests: Family<GrpcLabels, Counter>,
    pub grpc_duration: Latency,
    pub grpc_client_errors: Family<GrpcLabels, Counter>,
    pub events_published: Family<EventLabels, Counter>,
    pub events_consumed: Family<ConsumeLabels, Counter>,
    pub events_redelivered: Family<ConsumeLabels, Counter>,
    /// upstream attempts of the llm-router, by provider and outcome
    pub llm_attempts: Family<LlmCallLabels, Counter>,
    /// the llm-router's own time per call, upstream waits excluded
    pub llm_router_overhead: Family<LlmOverheadLabels, Histogram, fn() -> Histogram>,
    /// calls the budget refused or downgraded
    pub llm_budget_actions: Family<LlmOverheadLabels, Counter>,
    /// documents a search replica holds by words whose vectors are not written yet
    pub search_vectors_pending: Gauge,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("helix");
        let info = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
        registry.register("build", "Helix build", info);
        let metrics = Self {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram),
            grpc_requests: Family::default(),
            grpc_duration: Family::new_with_constructor(latency_histogram),
            grpc_client_errors: Family::default(),
            events_published: Family::default(),
            events_consumed: Family::default(),
            events_redelivered: Family::default(),
            llm_attempts: Family::default(),
            llm_router_overhead: Family::new_with_constructor(overhead_histogram),
            llm_budget_actions: Family::default(),
            search_vectors_pending: Gauge::default(),
            registry,
        };
        let mut metrics = metrics;
        let r = &mut metrics.registry;
        r.register("http_requests", "REST requests answered", metrics.http_requests.clone());
        r.register("http_request_duration_seconds", "REST request latency", metrics.http_duration.clone());
        r.register("grpc_server_requests", "gRPC calls answered", metrics.grpc_requests.clone());
        r.register("grpc_server_duration_seconds", "gRPC call latency", metrics.grpc_duration.clone());
        r.register(
            "grpc_client_errors",
            "gRPC calls to other services that failed",
            metrics.grpc_client_errors.clone(),
        );
        r.register("events_published", "events handed to the bus", metrics.events_published.clone());
        r.register("events_consumed", "events delivered to subscribers", metrics.events_consumed.clone());
        r.register("events_redelivered", "events delivered again after no ack", metrics.events_redelivered.clone());
        r.register("llm_attempts", "calls to LLM providers, by outcome", metrics.llm_attempts.clone());
        r.register(
            "llm_router_overhead_seconds",
            "the llm-router's own time per call, upstream waits excluded",
            metrics.llm_router_overhead.clone(),
        );
        r.register(
            "llm_budget_actions",
            "LLM calls the budget rejected or downgraded (label call: reject, downgrade)",
            metrics.llm_budget_actions.clone(),
        );
        r.register(
            "search_vectors_pending",
            "documents searchable by words whose vectors are still being computed",
            metrics.search_vectors_pending.clone(),
        );
        Arc::new(metrics)
    }

    /// The Prometheus (OpenMetrics) text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    pub const CONTENT_TYPE: &'static str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
}

/// axum middleware: counts and times REST requests by route pattern and status.
pub async fn observe_http(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let method = request.method().to_string();
    let start = Instant::now();
    let response = next.run(request).await;
    let labels = HttpLabels { method, route, status: response.status().as_u16() };
    metrics.http_duration.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
    metrics.http_requests.get_or_create(&labels).inc();
    response
}

/// axum middleware on a gRPC router: one span per call, child of the caller's trace
/// context in the metadata, and counts and latency by method and status code.
pub async fn observe_grpc(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let method = request.uri().path().to_owned();
    let span = tracing::info_span!("grpc.server", rpc.method = %method, otel.kind = "server");
    helix_telemetry::follow_headers(&span, request.headers());
    let start = Instant::now();
    let response = next.run(request).instrument(span).await;
    // errors come back trailers-only (status in the headers); success puts it in trailers
    let code = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let labels = GrpcLabels { method, code: code_name(code.unwrap_or(0)).to_owned() };
    metrics.grpc_duration.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
    metrics.grpc_requests.get_or_create(&labels).inc();
    response
}

pub fn code_name(code: i32) -> &'static str {
    match tonic::Code::from_i32(code) {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The bus with metrics and spans: publishes are counted by subject and outcome and
/// traced as children of the event's own trace context; deliveries are counted by
/// subject and group, redeliveries apart.
pub struct ObservedBus {
    inner: Arc<dyn EventBus>,
    metrics: Arc<Metrics>,
}

impl ObservedBus {
    pub fn wrap(inner: Arc<dyn EventBus>, metrics: Arc<Metrics>) -> Arc<dyn EventBus> {
        Arc::new(Self { inner, metrics })
    }
}

#[async_trait::async_trait]
impl EventBus for ObservedBus {
    async fn publish(&self, event: &Envelope) -> helix_events::Result<PublishAck> {
        let span = publish_span(event);
        let mut traced = event.clone();
        if let Some(trace) = span.in_scope(traced_context) {
            traced.trace = Some(trace);
        }
        let result = self.inner.publish(&traced).instrument(span).await;
        self.count_published(&event.r#type, result.as_ref().map(|ack| ack.duplicate).map_err(|_| ()));
        result
    }

    async fn publish_batch(&self, mut events: Vec<Envelope>) -> (Vec<PublishAck>, helix_events::Result<()>) {
        // one span for each run of events of one trace (a bulk write's events share one)
        let mut spans: Vec<tracing::Span> = Vec::new();
        let mut last_trace = None;
        let mut traced = None;
        for event in &mut events {
            let trace = event.trace.as_ref().map(|trace| trace.traceparent.clone());
            if spans.is_empty() || trace != last_trace {
                let span = publish_span(event);
                traced = span.in_scope(traced_context);
                spans.push(span);
                last_trace = trace;
            }
            if let Some(trace) = &traced {
                event.trace = Some(trace.clone());
            }
        }
        let subjects: Vec<String> = events.iter().map(|event| event.r#type.clone()).collect();
        let first = spans.first().cloned().unwrap_or_else(tracing::Span::none);
        let (acks, result) = self.inner.publish_batch(events).instrument(first).await;
        for (subject, ack) in subjects.iter().zip(&acks) {
            self.count_published(subject, Ok(ack.duplicate));
        }
        if result.is_err()
            && let Some(subject) = subjects.get(acks.len())
        {
            self.count_published(subject, Err(()));
        }
        (acks, result)
    }

    async fn subscribe(&self, filter: &str, group: &str) -> helix_events::Result<Subscription> {
        use futures::StreamExt;
        let inner = self.inner.subscribe(filter, group).await?;
        let metrics = self.metrics.clone();
        let group = group.to_owned();
        let counted = inner.inspect(move |delivery| {
            if let Ok(delivery) = delivery {
                let labels = ConsumeLabels { subject: delivery.subject.clone(), group: group.clone() };
                metrics.events_consumed.get_or_create(&labels).inc();
                if delivery.redelivered {
                    metrics.events_redelivered.get_or_create(&labels).inc();
                }
            }
        });
        Ok(Subscription::new(Box::pin(counted)))
    }

    async fn tail(&self, filter: &str) -> helix_events::Result<Subscription> {
        use futures::StreamExt;
        let inner = self.inner.tail(filter).await?;
        let metrics = self.metrics.clone();
        // a tail's deliveries are never redeliveries: only consumption is counted
        let counted = inner.inspect(move |delivery| {
            if let Ok(delivery) = delivery {
                let labels = ConsumeLabels { subject: delivery.subject.clone(), group: "tail".to_owned() };
                metrics.events_consumed.get_or_create(&labels).inc();
            }
        });
        Ok(Subscription::new(Box::pin(counted)))
    }

    async fn check(&self) -> helix_events::Result<()> {
        self.inner.check().await
    }
}

impl ObservedBus {
    /// Counts a publish: `Ok(duplicate)` or `Err(())` for a failed one.
    fn count_published(&self, subject: &str, outcome: Result<bool, ()>) {
        let outcome = match outcome {
            Ok(true) => "duplicate",
            Ok(false) => "ok",
            Err(()) => "error",
        };
        let labels = EventLabels { subject: subject.to_owned(), outcome: outcome.to_owned() };
        self.metrics.events_published.get_or_create(&labels).inc();
    }
}

/// The span of publishing `event`, a child of the trace the event carries.
fn publish_span(event: &Envelope) -> tracing::Span {
    let span =
        tracing::info_span!("event.publish", subject = %event.r#type, event.id = %event.id, otel.kind = "producer");
    if let Some(trace) = &event.trace {
        helix_telemetry::follow_trace(&span, &trace.traceparent, trace.tracestate.as_deref());
    }
    span
}

/// The trace context published events carry, taken inside their publish span:
/// subscribers continue from it (gateway → storage → publish → consume). `None` when
/// no trace is being recorded: the event then keeps the context it came with.
fn traced_context() -> Option<helix_events::TraceContext> {
    helix_telemetry::current_trace()
        .map(|(traceparent, tracestate)| helix_events::TraceContext { traceparent, tracestate })
}

/// A span for handling `delivery`, a child of the trace that published it.
pub fn consume_span(delivery: &helix_events::Delivery, group: &str) -> tracing::Span {
    let span = tracing::info_span!("event.consume", subject = %delivery.subject, group, otel.kind = "consumer");
    if let Some(trace) = &delivery.envelope.trace {
        helix_telemetry::follow_trace(&span, &trace.traceparent, trace.tracestate.as_deref());
    }
    span
}

/// Waits up to `timeout` for `check`; for readiness probes that must answer quickly.
pub async fn within<T>(timeout: Duration, check: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(timeout, check).await.ok()
}
