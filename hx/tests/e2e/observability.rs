//! What an operator sees: one trace per request across services and events, and
//! Prometheus metrics that move with traffic.

use std::time::Duration;

use helix_runtime::metrics::consume_span;
use helix_testkit::{Backend, TestHelix};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use reqwest::Method;
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

crate::on_both_backends!(one_request_is_one_trace);

async fn one_request_is_one_trace(backend: Backend) -> anyhow::Result<()> {
    // nextest runs every test in its own process: this subscriber sees only this test
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("e2e")))
        .try_init()?;
    helix_telemetry::install_propagator();

    let helix = TestHelix::start(backend).await?;
    let bus = match backend {
        Backend::Embedded => helix.node.as_ref().unwrap().bus(),
        Backend::Fleet => helix.env.bus().await?,
    };
    let mut events = bus.subscribe("helix.node.created", "trace-observer").await?;
    let response = helix.api(Method::POST, "/api/v1/nodes").json(&json!({"content": "traced"})).send().await?;
    assert_eq!(response.status(), 201);

    let delivery = tokio::time::timeout(Duration::from_secs(20), events.next()).await?.expect("an event")?;
    let handling = consume_span(&delivery, "trace-observer");
    handling.in_scope(|| tracing::info!("handled"));
    drop(handling);
    delivery.ack().await?;
    helix.stop().await;
    provider.force_flush()?;

    let spans = exporter.get_finished_spans()?;
    let find = |name: &str, detail: &str| -> anyhow::Result<SpanData> {
        spans
            .iter()
            .find(|s| s.name == name && s.attributes.iter().any(|kv| kv.value.as_str().contains(detail)))
            .cloned()
            .ok_or_else(|| {
                anyhow::anyhow!("no {name} span with {detail}: {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>())
            })
    };
    let gateway = find("http", "/api/v1/nodes")?;
    let storage = find("grpc.server", "StorageService/CreateNode")?;
    let publish = find("event.publish", "helix.node.created")?;
    let consume = find("event.consume", "helix.node.created")?;
    let trace = gateway.span_context.trace_id();
    for span in [&storage, &publish, &consume] {
        assert_eq!(span.span_context.trace_id(), trace, "{} is in another trace", span.name);
    }
    // and the chain is gateway → storage → publish → consume
    assert_eq!(storage.parent_span_id, gateway.span_context.span_id());
    assert_eq!(publish.parent_span_id, storage.span_context.span_id());
    assert_eq!(consume.parent_span_id, publish.span_context.span_id());
    Ok(())
}
