//! The event bus contract, run against both implementations, plus the tables of subjects, filters,
//! configuration and envelope encoding.
//!
//! The NATS variants use the server at `HELIX_TEST_NATS_URL` (default `nats://127.0.0.1:4222`, JetStream
//! enabled). An unreachable server fails the tests. Each test runs under its own random subject prefix and
//! deletes its streams at the end, so tests running in parallel never see each other.

use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use futures::FutureExt as _;
use helix_events::subjects::{self, DOMAINS};
use helix_events::{
    Delivery, Envelope, Error, EventBus, EventsConfig, InProcessBus, NatsBus, Subscription, TraceContext,
};
use serde_json::json;
use tokio::time::{Instant, timeout};
use uuid::Uuid;

/// Longest wait for an expected delivery.
const WAIT: Duration = Duration::from_secs(10);
/// The ack_wait of most tests.
const ACK_WAIT: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Kind {
    InProcess,
    Nats,
}

fn nats_url() -> String {
    std::env::var("HELIX_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// `ct` + a UUIDv7: unique, marks the streams as this suite's, and its timestamp tells how old a leftover
/// stream is.
fn unique_prefix() -> String {
    format!("ct{}", Uuid::now_v7().simple())
}

/// Deletes this suite's streams older than ten minutes: those of runs killed before their cleanup.
async fn sweep_stale_test_streams() -> Result<()> {
    use futures::TryStreamExt as _;
    let client = async_nats::connect(nats_url()).await?;
    let jetstream = async_nats::jetstream::new(client);
    let names: Vec<String> = jetstream.stream_names().try_collect().await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    for name in names {
        let Some((prefix, _)) = name.split_once("_HELIX_") else { continue };
        let Some(Ok(id)) = prefix.strip_prefix("CT").map(Uuid::parse_str) else { continue };
        let Some((created, _)) = id.get_timestamp().map(|timestamp| timestamp.to_unix()) else { continue };
        if created + 600 < now {
            // Another test may sweep the same stream at the same time: its deletion is as good as ours.
            jetstream.delete_stream(&name).await.ok();
        }
    }
    Ok(())
}

/// Builds the buses of one test: all share one random prefix; NATS streams are deleted at the end.
struct Harness {
    kind: Kind,
    prefix: String,
    created: Arc<Mutex<Vec<NatsBus>>>,
}

impl Harness {
    fn config(&self) -> EventsConfig {
        EventsConfig {
            nats_url: matches!(self.kind, Kind::Nats).then(nats_url),
            prefix: self.prefix.clone(),
            ack_wait: ACK_WAIT,
            max_deliver: 10,
            connect_timeout: Duration::from_secs(10),
            ..EventsConfig::default()
        }
    }

    async fn bus(&self) -> Arc<dyn EventBus> {
        self.bus_with(|_| {}).await
    }

    /// A bus with the test's settings adjusted by `adjust`. (Each in-process bus is a separate bus, so an
    /// in-process test uses one.)
    async fn bus_with(&self, adjust: impl FnOnce(&mut EventsConfig)) -> Arc<dyn EventBus> {
        let mut config = self.config();
        adjust(&mut config);
        match self.kind {
            Kind::InProcess => Arc::new(InProcessBus::new(&config).expect("valid config")),
            Kind::Nats => {
                let bus = NatsBus::connect(&config, "contract-test")
                    .await
                    .unwrap_or_else(|err| panic!("NATS with JetStream must be reachable at {}: {err}", nats_url()));
                self.created.lock().unwrap().push(bus.clone());
                Arc::new(bus)
            }
        }
    }
}

/// Runs one behaviour against one implementation, then deletes the NATS streams of every bus it created
/// (also when the behaviour panicked).
async fn run<F, Fut>(kind: Kind, behaviour: F)
where
    F: FnOnce(Harness) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    if matches!(kind, Kind::Nats) {
        sweep_stale_test_streams()
            .await
            .unwrap_or_else(|err| panic!("NATS with JetStream must be reachable at {}: {err:#}", nats_url()));
    }
    let created = Arc::new(Mutex::new(Vec::new()));
    let harness = Harness { kind, prefix: unique_prefix(), created: created.clone() };
    let outcome = AssertUnwindSafe(behaviour(harness)).catch_unwind().await;
    let buses: Vec<NatsBus> = created.lock().unwrap().drain(..).collect();
    for bus in buses {
        if let Err(err) = bus.delete_streams().await {
            eprintln!("cannot delete the test's streams: {err}");
        }
    }
    match outcome {
        Ok(result) => result.unwrap_or_else(|err| panic!("{kind:?}: {err:#}")),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// One test per behaviour and implementation: `in_process::<name>` and `nats::<name>`.
macro_rules! contract {
    ($($behaviour:ident),* $(,)?) => {
        mod in_process {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    super::run(super::Kind::InProcess, super::$behaviour).await
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    super::run(super::Kind::Nats, super::$behaviour).await
                }
            )*
        }
    };
}

contract! {
    delivers_the_published_envelope,
    filters_match_like_nats,
    every_group_gets_every_event,
    members_of_a_group_share_the_events,
    ack_stops_redelivery,
    unacked_event_is_redelivered_after_ack_wait,
    nak_redelivers_promptly,
    delayed_nak_redelivers_after_the_delay,
    redelivery_stops_at_max_deliver,
    duplicate_id_is_stored_once,
    group_resumes_after_resubscribing,
    order_within_a_subject_is_kept,
    a_batch_is_published_in_order_and_deduplicated,
    a_batch_stops_at_an_invalid_subject,
    rejects_invalid_subjects_filters_and_groups,
    group_names_need_not_be_nats_names,
    health_check_passes,
    tail_sees_only_events_published_after_it_starts,
    tail_filters_match_like_nats,
    every_tail_sees_every_event_in_order,
    tails_do_not_affect_groups,
    dropping_a_tail_leaves_nothing_behind,
}

fn event(subject: &str, n: u64) -> Envelope {
    Envelope::new(subject, "contract-test", json!({ "n": n }))
}

async fn publish_all(bus: &Arc<dyn EventBus>, events: &[Envelope]) -> Result<()> {
    for event in events {
        let ack = bus.publish(event).await?;
        ensure!(!ack.duplicate, "fresh event {} reported duplicate", event.id);
    }
    Ok(())
}

async fn recv(subscription: &mut Subscription) -> Result<Delivery> {
    match timeout(WAIT, subscription.next()).await {
        Err(_) => bail!("no delivery within {WAIT:?}"),
        Ok(None) => bail!("subscription ended"),
        Ok(Some(item)) => Ok(item?),
    }
}

/// Asserts that nothing is delivered for `period` (used only to prove an absence).
async fn assert_quiet(subscription: &mut Subscription, period: Duration) -> Result<()> {
    match timeout(period, subscription.next()).await {
        Err(_) | Ok(None) => Ok(()),
        Ok(Some(Ok(delivery))) => bail!("unexpected delivery {delivery:?}"),
        Ok(Some(Err(err))) => bail!("subscription error {err}"),
    }
}

/// Receives (and acks) until every id of `expected` arrived; fails on anything else.
async fn recv_exactly(subscription: &mut Subscription, expected: &[&Envelope]) -> Result<()> {
    let mut missing: HashSet<Uuid> = expected.iter().map(|event| event.id).collect();
    while !missing.is_empty() {
        let delivery = recv(subscription).await.with_context(|| format!("{} events missing", missing.len()))?;
        ensure!(
            missing.remove(&delivery.envelope.id),
            "unexpected delivery {} on {}",
            delivery.envelope.id,
            delivery.subject
        );
        delivery.ack().await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The contract
// ---------------------------------------------------------------------------------------------

async fn delivers_the_published_envelope(h: Harness) -> Result<()> {
    let bus = h.bus().await;
    let trace = TraceContext {
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        tracestate: Some("vendor=opaque".to_owned()),
    };
    let published = Envelope::new(subjects::NODE_CREATED, "storage", json!({"id": "n1", "tags": ["a"], "x": 1.5}))
        .with_trace(trace);
    let ack = bus.publish(&published).await?;
    ensure!(!ack.duplicate && ack.sequence == 1, "first publish: {ack:?}");
    ensure!(ack.stream.ends_with("_HELIX_NODE"), "stream named after prefix and domain: {}", ack.stream);

    let mut subscription = bus.subscribe(subjects::NODE_CREATED, "reader").await?;
    let delivery = recv(&mut subscription).await?;
    ensure!(*delivery.envelope == published, "envelope changed in transit: {:?}", delivery.envelope);
    ensure!(delivery.subject == subjects::NODE_CREATED, "subject without prefix: {}", delivery.subject);
    ensure!(!delivery.redelivered && delivery.delivery_count == 1, "first delivery: {delivery:?}");
    delivery.ack().await?;
    Ok(())
}

async fn filters_match_like_nats(h: Harness) -> Result<()> {
    let bus = h.bus().await;
    let node_created = event(subjects::NODE_CREATED, 1);
    let node_updated = event(subjects::NODE_UPDATED, 2);
    let edge_created = event(subjects::GRAPH_EDGE_CREATED, 3);
    let job_completed = event(subjects::JOB_COMPLETED, 4);
    let all = [&node_created, &node_updated, &edge_created, &job_completed];
    publish_all(&bus, &[node_created.clone(), node_updated.clone(), edge_created.clone(), job_completed.clone()])
        .await?;

    let table: &[(&str, Vec<&Envelope>)] = &[
        ("helix.node.created", vec![&node_created]),
        ("helix.node.*", vec![&node_created, &node_updated]),
        ("helix.node.>", vec![&node_created, &node_updated]),
        ("helix.graph.*", vec![]),
        ("helix.graph.>", vec![&edge_created]),
        ("helix.graph.edge.*", vec![&edge_created]),
        ("helix.*.created", vec![&node_created]),
        ("helix.*.edge.created", vec![&edge_created]),
        ("helix.*.*", vec![&node_created, &node_updated, &job_completed]),
        ("helix.>", all.to_vec()),
        (">", all.to_vec()),
    ];
    for (index, (filter, expected)) in table.iter().enumerate() {
        let group = format!("filter{index}");
        let mut subscription = bus.subscribe(filter, &group).await?;
        recv_exactly(&mut subscription, expected).await.with_context(|| format!("filter {filter}"))?;
        assert_quiet(&mut subscription, Duration::from_millis(300))
            .await
            .with_context(|| format!("filter {filter}"))?;
    }
    Ok(())
}

async fn every_group_gets_every_event(h: Harness) -> Result<()> {
    let bus = h.bus().await;
    let events: Vec<Envelope> = (0..10).map(|n| event(subjects::JOB_ENQUEUED, n)).collect();
    let mut first = bus.subscribe("helix.job.>", "first").await?;
    let mut second = bus.subscribe("helix.job.>", "second").await?;
    publish_all(&bus, &events).await?;
    let expected: Vec<&Envelope> = events.iter().collect();
    recv_exactly(&mut first, &expected).await.context("group first")?;
    recv_exactly(&mut second, &expected).await.context("group second")?;
    // A group created after the events starts from the oldest retained one.
    let mut late = bus.subscribe("helix.job.>", "late").await?;
    recv_exactly(&mut late, &expected).await.context("group late")?;
    Ok(())
}

async fn members_of_a_group_share_the_events(h: Harness) -> Result<()> {
    let bus = h.bus().await;
    let events: Vec<Envelope> = (0..20).map(|n| event(subjects::NODE_UPDATED, n)).collect();
    let mut a = bus.subscribe("helix.node.*", "workers").await?;
    let mut b = bus.subscribe("helix.node.*", "workers").await?;
    publish_all(&bus, &events).await?;

    let mut seen: HashSet<Uuid> = HashSet::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < events.len() {
        let delivery = tokio::select! {
            item = a.next() => item,
            item = b.next() => item,
            () = tokio::time::sleep_until(deadline) => bail!("{} of {} events delivered", seen.len(), events.len()),
        };
        let delivery = delivery.context("subscription ended")??;
        ensure!(seen.insert(delivery.envelope.id), "event {} delivered twice to one group", delivery.envelope.id);
        delivery.ack().await?;
    }
    ensure!(events.iter().all(|event| seen.contains(&event.id)), "every event reaches the group");
    let quiet = ACK_WAIT + Duration::from_millis(500);
    tokio::try_join!(assert_quiet(&mut a, quiet), assert_quiet(&mut b, quiet))?;
    Ok(())
}

async fn ack_stops_redelivery(h: Harness) -> Result<()> {
    let bus = h.bus().await;
    let published = event(subjects::SOURCE_POLLED, 1);
    publish_all(&bus, std::slice::from_ref(&published)).await?;
    let mut subscription = bus.subscribe(subjects::SOURCE_POLLED, "acker").await?;
    let delivery = recv(&mut subscription).await?;
    ensure!(delivery.envelope.id == published.id);
    delivery.ack().await?;
    assert_quiet(&mut subscription, ACK_WAIT * 5 / 2).await
}

async fn unacked_event_is_redelivered_after_ack_wait(h: Harness) -> Result<()> {
    let bus = h.bus().await;
    let published = event(subjects::LLM_REQUEST_COMPLETED, 1);
    publish_all(&bus, std::slice::from_ref(&published)).await?;
    let mut subscription = bus.subscribe("helix.llm.>", "forgetful").await?;
    let first = recv(&mut subscription).await?;
    let received_at = Instant::now();
    ensure!(first.envelope.id == published.id && !first.redelivered);

    let again = recv(&mut subscription).await?;
    let waited = received_at.elapsed();
    ensure!(again.envelope.id == published.id, "the unacked event comes back");
    ensure!(again.redelivered && again.delivery_count == 2, "marked redelivered: {again:?}");
    ensure!(waited >= ACK_WAIT / 2, "redelivered after ack_wait, not after {waited:?}");
    again.ack().await?;
    drop(first);
    Ok(())
}

async fn nak_redelivers_promptly(h: Harness) -> Result<()> {
    // A long ack_wait, so that a redelivery within WAIT can only come from the nak.
    let bus = h.bus_with(|config| config.ack_wait = Duration::from_secs(60)).await;
    let published = event(subjects::WORKFLOW_STARTED, 1);
    publish_all(&bus, std::slice::from_ref(&published)).await?;
    let mut subscription = bus.subscribe("helix.workflow.*", "picky").await?;
    let first = recv(&mut subscription).await?;
    first.nak().await?;
    let again = recv(&mut subscription).await?;
    ensure!(again.envelope.id == published.id && again.redelivered && again.delivery_count == 2, "{again:?}");
    again.ack().await?;
    Ok(())
}

async fn delayed_nak_redelivers_after_the_delay(h: Harness) -> Result<()> {
    const DELAY: Duration = Duration::from_millis(600);
    let bus = h.bus_with(|config| config.ack_wait = Duration::from_secs(60)).await;
    let published = event(subjects::WORKFLOW_STARTED, 1);
    publish_all(&bus, std::slice::from_ref(&published)).await?;
    let mut subscription = bus.subscribe("helix.workflow.*", "patient").await?;
    let first = recv(&mut subscription).await?;
    let since = std::time::Instant::now();
    first.nak_after(DELAY).await?;
    assert_quiet(&mut subscription, DELAY / 2).await?;
    let again = recv(&mut subscription).await?;
    ensure!(since.elapsed() >= DELAY, "redelivered after {:?}, before the delay", since.elapsed());
    ensure!(again.envelope.id == published.id && again.delivery_count == 2, "{again:?}");
    again.ack().await?;
    Ok(())
}

async fn redelivery_stops_at_max_deliver(h: Harness) -> Result<()> {
    let bus = h.bus_with(|config| config.max_deliver = 2).await;
    let published = event(subjects::NOTIFICATION_FAILED, 1);
    publish_all(&bus, std::slice::from_ref(&published)).await?;
    let mut subscription = bus.subscribe(subjects::NOTIFICATION_FAILED, "poisoned").await?;
    let first = recv(&mut subscription).await?;
    first.nak().await?;
    let second = recv(&mut subscription).await?;
    ensure!(second.delivery_count == 2, "{second:?}");
    second.nak().await?;
    assert_quiet(&mut subscription, ACK_WAIT * 5 / 2).await
}

async fn duplicate_id_is_stored_once(h: Harness) -> Result<()> {
    let bus = h.bus().await;
    let published = event(subjects::GRAPH_EDGE_CREATED, 1);
    let first = bus.publish(&published).await?;
    let second = bus.publish(&published).await?;
    ensure!(!first.duplicate && second.duplicate, "second publish is a duplicate: {first:?} {second:?}");
    ensure!(second.sequence == first.sequence, "a duplicate reports the stored copy: {first:?} {second:?}");
    let next = event(subjects::GRAPH_EDGE_CREATED, 2);
    publish_all(&bus, std::slice::from_ref(&next)).await?;

    let mut subscription = bus.subscribe("helix.graph.>", "dedup").await?;
    let delivery = recv(&mut subscription).await?;
    ensure!(delivery.envelope.id == published.id);
    delivery.ack().await?;
    // Events of one subject arrive in order, so the next one proves there was no second copy.
    let delivery = recv(&mut subscription).await?;
    ensure!(delivery.envelope.id == next.id, "duplicate delivered: {delivery:?}");
    delivery.ack().await?;
    Ok(())
}

async fn group_resumes_after_resubscribing(h: Harness) -> Result<()> {
    let bus = h.bus().await;
    let events: Vec<Envelope> = (0..6).map(|n| event(subjects::JOB_COMPLETED, n)).collect();
    publish_all(&bus, &events).await?;
    let mut acked = HashSet::new();
    {
        let mut subscription = bus.subscribe("helix.job.completed", "resumer").await?;
        for _ in 0..3 {
            let delivery = recv(&mut subscription).await?;
            acked.insert(delivery.envelope.id);
            delivery.ack().await?;
        }
    }
    let later: Vec<Envelope> = (6..8).map(|n| event(subjects::JOB_COMPLETED, n)).collect();
    publish_all(&bus, &later).await?;

    let mut subscription = bus.subscribe("helix.job.completed", "resumer").await?;
    let rest: Vec<&Envelope> = events.iter().chain(&later).filter(|event| !acked.contains(&event.id)).collect();
    ensure!(rest.len() == 5);
    recv_exactly(&mut subscription, &rest).await.context("no loss, no replay of acked events")?;
    Ok(())
}

async fn order_within_a_subject_is_kept(h: Harness) -> Result<()> {
    let bus = h.bus().await;
    let events: Vec<Envelope> = (0..50).map(|n| event(subjects::NODE_UPDATED, n)).collect();
    let mut subscription = bus.subscribe(subjects::NODE_UPDATED, "ordered").await?;
    publish_all(&bus, &events).await?;
    for expected in &events {
        let delivery = recv(&mut subscription).await?;
        ensure!(
            delivery.envelope.id == expected.id,
            "expected n={}, got {}",
            expected.payload["n"],
            delivery.envelope.payload["n"]
        );
        delivery.ack().await?;
    }
    Ok(())
}

async fn a_batch_is_published_in_order_and_deduplicated(h: Harness) -> Result<()> {
    let bus = h.bus().await;
    // more than NATS's publish window, over two streams, one event twice
    let nodes: Vec<Envelope> = (0..600).map(|n| event(subjects::NODE_CREATED, n)).collect();
    let edge = event(subjects::GRAPH_EDGE_CREATED, 600);
    let mut batch = nodes[..300].to_vec();
    batch.push(edge.clone());
    batch.extend_from_slice(&nodes[300..]);
    batch.push(nodes[0].clone());
    let mut subscription = bus.subscribe("helix.>", "batched").await?;
    let (acks, result) = bus.publish_batch(batch).await;
    result?;
    ensure!(acks.len() == 602, "an ack for every event: {}", acks.len());
    ensure!(acks[..601].iter().all(|ack| !ack.duplicate), "fresh events reported duplicate");
    ensure!(acks[601].duplicate && acks[601].sequence == acks[0].sequence, "the repeated event: {:?}", acks[601]);
    ensure!(acks[300].stream.ends_with("_HELIX_GRAPH"), "the edge went to its stream: {:?}", acks[300]);
    let node_sequences: Vec<u64> = acks[..300].iter().chain(&acks[301..601]).map(|ack| ack.sequence).collect();
    ensure!(node_sequences == (1..=600).collect::<Vec<u64>>(), "nodes stored in order");
    let mut delivered = Vec::new();
    while delivered.len() < 601 {
        let delivery = recv(&mut subscription).await.with_context(|| format!("after {}", delivered.len()))?;
        if delivery.subject == subjects::NODE_CREATED {
            delivered.push(delivery.envelope.id);
        } else {
            ensure!(delivery.envelope.id == edge.id, "unexpected {delivery:?}");
            delivered.push(edge.id);
        }
        delivery.ack().await?;
    }
    let nodes_delivered: Vec<Uuid> = delivered.iter().copied().filter(|id| *id != edge.id).collect();
    ensure!(nodes_delivered == nodes.iter().map(|e| e.id).collect::<Vec<_>>(), "node events out of order");
    assert_quiet(&mut subscription, Duration::from_millis(300)).await.context("the repeated event")
}

async fn a_batch_stops_at_an_invalid_subject(h: Harness) -> Result<()> {
    let bus = h.bus().await;
    let good = event(subjects::NODE_CREATED, 1);
    let after = event(subjects::NODE_CREATED, 3);
    let batch = vec![good.clone(), event("helix.node.exploded", 2), after];
    let mut subscription = bus.subscribe(subjects::NODE_CREATED, "stopped").await?;
    let (acks, result) = bus.publish_batch(batch).await;
    ensure!(matches!(result, Err(Error::InvalidSubject { .. })), "{result:?}");
    ensure!(acks.len() == 1, "the event before the invalid one is acked alone: {acks:?}");
    recv_exactly(&mut subscription, &[&good]).await?;
    assert_quiet(&mut subscription, Duration::from_millis(300)).await.context("nothing after the invalid event")
}

async fn rejects_invalid_subjects_filters_and_groups(h: Harness) -> Result<()> {
    let bus = h.bus().await;
    for subject in ["helix.node.exploded", "helix.node.*", "helix.node", "node.created", "", "helix..created"] {
        let result = bus.publish(&event(subject, 1)).await;
        ensure!(matches!(result, Err(Error::InvalidSubject { .. })), "publish {subject:?}: {result:?}");
    }
    for filter in ["", "helix.node.>.x", "helix.node", "other.>", "helix.unknown.>", "helix.node.a b", "helix..x"] {
        let result = bus.subscribe(filter, "group").await;
        ensure!(matches!(result, Err(Error::InvalidFilter { .. })), "filter {filter:?}: {result:?}");
    }
    for filter in ["", "helix.node.>.x", "helix.node", "other.>", "helix.unknown.>"] {
        let result = bus.tail(filter).await;
        ensure!(matches!(result, Err(Error::InvalidFilter { .. })), "tail filter {filter:?}: {result:?}");
    }
    let long = "g".repeat(65);
    for group in ["", " ", long.as_str()] {
        let result = bus.subscribe("helix.node.>", group).await;
        ensure!(matches!(result, Err(Error::InvalidGroup { .. })), "group {group:?}: {result:?}");
    }
    Ok(())
}

async fn group_names_need_not_be_nats_names(h: Harness) -> Result<()> {
    let bus = h.bus().await;
    let published = event(subjects::NODE_CREATED, 1);
    publish_all(&bus, std::slice::from_ref(&published)).await?;
    // Groups that sanitize alike stay distinct groups: each gets the event.
    for group in ["search.indexer v2/*>", "search_indexer_v2___"] {
        let mut subscription = bus.subscribe("helix.node.>", group).await?;
        recv_exactly(&mut subscription, &[&published]).await.with_context(|| format!("group {group:?}"))?;
    }
    Ok(())
}

async fn health_check_passes(h: Harness) -> Result<()> {
    let bus = h.bus().await;
    bus.check().await?;
    Ok(())
}

async fn tail_sees_only_events_published_after_it_starts(h: Harness) -> Result<()> {
    let bus = h.bus().await;
    // On NATS the events come from another connection: once `tail` returns, the server knows the tail.
    let publisher = match h.kind {
        Kind::InProcess => bus.clone(),
        Kind::Nats => h.bus().await,
    };
    let before = event(subjects::NODE_CREATED, 1);
    publish_all(&publisher, std::slice::from_ref(&before)).await?;
    let mut tail = bus.tail(subjects::NODE_CREATED).await?;
    let after = event(subjects::NODE_CREATED, 2)
        .with_trace(TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    publish_all(&publisher, std::slice::from_ref(&after)).await?;

    let delivery = recv(&mut tail).await?;
    ensure!(*delivery.envelope == after, "the event published after the tail started: {delivery:?}");
    ensure!(delivery.subject == subjects::NODE_CREATED, "subject without prefix: {}", delivery.subject);
    ensure!(!delivery.redelivered && delivery.delivery_count == 1, "a tail never redelivers: {delivery:?}");
    // Nak is a no-op: nothing comes back.
    delivery.nak().await?;
    assert_quiet(&mut tail, ACK_WAIT * 2).await.context("nothing before the tail, no redelivery")
}

async fn tail_filters_match_like_nats(h: Harness) -> Result<()> {
    let bus = h.bus().await;
    let node_created = event(subjects::NODE_CREATED, 1);
    let node_updated = event(subjects::NODE_UPDATED, 2);
    let edge_created = event(subjects::GRAPH_EDGE_CREATED, 3);
    let job_completed = event(subjects::JOB_COMPLETED, 4);
    let all = [&node_created, &node_updated, &edge_created, &job_completed];

    let table: &[(&str, Vec<&Envelope>)] = &[
        ("helix.node.created", vec![&node_created]),
        ("helix.node.*", vec![&node_created, &node_updated]),
        ("helix.node.>", vec![&node_created, &node_updated]),
        ("helix.graph.*", vec![]),
        ("helix.graph.>", vec![&edge_created]),
        ("helix.*.created", vec![&node_created]),
        ("helix.*.edge.created", vec![&edge_created]),
        ("helix.*.*", vec![&node_created, &node_updated, &job_completed]),
        ("helix.>", all.to_vec()),
        (">", all.to_vec()),
    ];
    let mut tails = Vec::with_capacity(table.len());
    for (filter, _) in table {
        tails.push(bus.tail(filter).await?);
    }
    publish_all(&bus, &[node_created.clone(), node_updated.clone(), edge_created.clone(), job_completed.clone()])
        .await?;
    for ((filter, expected), tail) in table.iter().zip(&mut tails) {
        recv_exactly(tail, expected).await.with_context(|| format!("tail {filter}"))?;
    }
    let quiet = tails.iter_mut().zip(table).map(|(tail, (filter, _))| async move {
        assert_quiet(tail, Duration::from_millis(300)).await.with_context(|| format!("tail {filter}"))
    });
    futures::future::try_join_all(quiet).await?;
    Ok(())
}

async fn every_tail_sees_every_event_in_order(h: Harness) -> Result<()> {
    let bus = h.bus().await;
    let events: Vec<Envelope> = (0..20).map(|n| event(subjects::JOB_ENQUEUED, n)).collect();
    let mut first = bus.tail("helix.job.>").await?;
    let mut second = bus.tail("helix.job.enqueued").await?;
    publish_all(&bus, &events).await?;
    for (name, tail) in [("first", &mut first), ("second", &mut second)] {
        for expected in &events {
            let delivery = recv(tail).await.with_context(|| format!("tail {name}"))?;
            ensure!(
                delivery.envelope.id == expected.id,
                "tail {name}: expected n={}, got {}",
                expected.payload["n"],
                delivery.envelope.payload["n"]
            );
        }
    }
    Ok(())
}

async fn tails_do_not_affect_groups(h: Harness) -> Result<()> {
    let bus = h.bus().await;
    let events: Vec<Envelope> = (0..10).map(|n| event(subjects::WORKFLOW_STEP_COMPLETED, n)).collect();
    let mut group = bus.subscribe("helix.workflow.>", "durable").await?;
    let mut tail = bus.tail("helix.workflow.>").await?;
    publish_all(&bus, &events).await?;
    let expected: Vec<&Envelope> = events.iter().collect();
    // The tail reads everything first (and acks nothing): the group still gets every event, once.
    recv_exactly(&mut tail, &expected).await.context("tail")?;
    recv_exactly(&mut group, &expected).await.context("group")?;
    let mut late = bus.subscribe("helix.workflow.>", "late").await?;
    recv_exactly(&mut late, &expected).await.context("a group created after the tail")?;
    let quiet = ACK_WAIT + Duration::from_millis(500);
    tokio::try_join!(assert_quiet(&mut group, quiet), assert_quiet(&mut late, quiet), assert_quiet(&mut tail, quiet))?;
    Ok(())
}

/// What a bus keeps for its subscribers: the open tails of an in-process bus; on NATS, the number of
/// consumers of each domain stream.
async fn footprint(h: &Harness, in_process: Option<&InProcessBus>) -> Result<Vec<usize>> {
    if let Some(bus) = in_process {
        return Ok(vec![bus.live_tails()]);
    }
    let jetstream = async_nats::jetstream::new(async_nats::connect(nats_url()).await?);
    let mut counts = Vec::with_capacity(DOMAINS.len());
    for domain in DOMAINS {
        let name = format!("{}_{}", h.prefix.to_uppercase(), domain.stream);
        let mut stream = jetstream.get_stream(&name).await.with_context(|| format!("stream {name}"))?;
        counts.push(stream.info().await?.state.consumer_count);
    }
    Ok(counts)
}

async fn dropping_a_tail_leaves_nothing_behind(h: Harness) -> Result<()> {
    let in_process = match h.kind {
        Kind::InProcess => Some(InProcessBus::new(&h.config())?),
        Kind::Nats => None,
    };
    let bus: Arc<dyn EventBus> = match &in_process {
        Some(bus) => Arc::new(bus.clone()),
        None => h.bus().await,
    };
    let mut group = bus.subscribe("helix.>", "steady").await?;
    let before = footprint(&h, in_process.as_ref()).await?;

    let mut tail = bus.tail("helix.>").await?;
    let first = event(subjects::GATEWAY_KEY_CREATED, 1);
    publish_all(&bus, std::slice::from_ref(&first)).await?;
    recv_exactly(&mut tail, &[&first]).await.context("tail")?;
    recv_exactly(&mut group, &[&first]).await.context("group")?;
    let open = footprint(&h, in_process.as_ref()).await?;
    match h.kind {
        Kind::InProcess => ensure!(open == [1], "the open tail is registered: {open:?}"),
        Kind::Nats => ensure!(open == before, "a tail creates no consumer: {before:?} then {open:?}"),
    }

    drop(tail);
    let after = footprint(&h, in_process.as_ref()).await?;
    ensure!(after == before, "a dropped tail leaves nothing: {before:?} then {after:?}");
    let second = event(subjects::GATEWAY_KEY_REVOKED, 2);
    publish_all(&bus, std::slice::from_ref(&second)).await?;
    recv_exactly(&mut group, &[&second]).await.context("group after the tail was dropped")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// NATS only: the wire format, tenancy and connection errors
// ---------------------------------------------------------------------------------------------

mod nats_wire {
    use super::*;

    #[tokio::test]
    async fn headers_carry_the_id_and_trace_and_subjects_are_prefixed() {
        run(Kind::Nats, |h| async move {
            let bus = h.bus().await;
            let wire_subject = format!("{}.{}", h.prefix, subjects::NODE_DELETED);

            let published = event(subjects::NODE_DELETED, 1)
                .with_trace(TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
            let ack = bus.publish(&published).await?;
            ensure!(ack.stream == format!("{}_HELIX_NODE", h.prefix.to_uppercase()), "stream {}", ack.stream);

            // The message as JetStream stored it, read back by its sequence: what every consumer
            // gets. (A core subscription racing the publish made this test flaky under load.)
            let jetstream = async_nats::jetstream::new(async_nats::connect(nats_url()).await?);
            let message = jetstream.get_stream(&ack.stream).await?.get_raw_message(ack.sequence).await?;
            ensure!(message.subject.as_str() == wire_subject, "subject {}", message.subject);
            let headers = &message.headers;
            ensure!(headers.get(helix_events::HEADER_MSG_ID).map(|v| v.as_str()) == Some(&*published.id.to_string()));
            ensure!(
                headers.get(helix_events::HEADER_TRACEPARENT).map(|v| v.as_str())
                    == published.trace.as_ref().map(|t| t.traceparent.as_str())
            );
            let body: serde_json::Value = serde_json::from_slice(&message.payload)?;
            ensure!(body["type"] == subjects::NODE_DELETED && body["spec_version"] == 1, "body {body}");
            Ok(())
        })
        .await
    }

    #[tokio::test]
    async fn trace_context_from_headers_fills_an_envelope_without_one() {
        run(Kind::Nats, |h| async move {
            let bus = h.bus().await;
            let client = async_nats::connect(nats_url()).await?;
            let jetstream = async_nats::jetstream::new(client);
            let envelope = event(subjects::NODE_CREATED, 1);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(helix_events::HEADER_TRACEPARENT, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
            jetstream
                .publish_with_headers(
                    format!("{}.{}", h.prefix, subjects::NODE_CREATED),
                    headers,
                    envelope.to_json()?.into(),
                )
                .await?
                .await?;
            let mut subscription = bus.subscribe(subjects::NODE_CREATED, "tracer").await?;
            let delivery = recv(&mut subscription).await?;
            let trace = delivery.envelope.trace.clone().context("trace from headers")?;
            ensure!(trace.traceparent == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
            delivery.ack().await?;
            Ok(())
        })
        .await
    }

    #[tokio::test]
    async fn a_message_that_is_not_an_envelope_is_skipped() {
        run(Kind::Nats, |h| async move {
            let bus = h.bus().await;
            let client = async_nats::connect(nats_url()).await?;
            let jetstream = async_nats::jetstream::new(client);
            jetstream.publish(format!("{}.{}", h.prefix, subjects::JOB_FAILED), "not json".into()).await?.await?;
            let valid = event(subjects::JOB_FAILED, 1);
            publish_all(&bus, std::slice::from_ref(&valid)).await?;
            let mut subscription = bus.subscribe(subjects::JOB_FAILED, "strict").await?;
            let delivery = recv(&mut subscription).await?;
            ensure!(delivery.envelope.id == valid.id, "{delivery:?}");
            delivery.ack().await?;
            assert_quiet(&mut subscription, ACK_WAIT * 2).await
        })
        .await
    }

    #[tokio::test]
    async fn a_tail_skips_non_envelopes_and_reads_trace_from_headers() {
        run(Kind::Nats, |h| async move {
            let bus = h.bus().await;
            let mut tail = bus.tail("helix.job.>").await?;
            // Core publishes from another connection: the stream captures them, and the tail sees them.
            let client = async_nats::connect(nats_url()).await?;
            let wire_subject = format!("{}.{}", h.prefix, subjects::JOB_FAILED);
            client.publish(wire_subject.clone(), "not json".into()).await?;
            let envelope = event(subjects::JOB_FAILED, 1);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(helix_events::HEADER_TRACEPARENT, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
            client.publish_with_headers(wire_subject, headers, envelope.to_json()?.into()).await?;
            client.flush().await?;

            let delivery = recv(&mut tail).await?;
            ensure!(delivery.envelope.id == envelope.id, "the envelope after the skipped message: {delivery:?}");
            ensure!(delivery.subject == subjects::JOB_FAILED, "subject without prefix: {}", delivery.subject);
            let trace = delivery.envelope.trace.clone().context("trace from headers")?;
            ensure!(trace.traceparent == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
            delivery.ack().await?;
            assert_quiet(&mut tail, Duration::from_millis(500)).await
        })
        .await
    }

    #[tokio::test]
    async fn prefixes_isolate_tenants() {
        run(Kind::Nats, |h| async move {
            let tenant = h.bus().await;
            let other = Harness { kind: Kind::Nats, prefix: unique_prefix(), created: h.created.clone() };
            let other_bus = other.bus().await;
            let mut other_subscription = other_bus.subscribe("helix.>", "all").await?;
            let mut other_tail = other_bus.tail(">").await?;
            let published = event(subjects::NODE_CREATED, 1);
            publish_all(&tenant, std::slice::from_ref(&published)).await?;
            let mut subscription = tenant.subscribe("helix.>", "all").await?;
            recv_exactly(&mut subscription, &[&published]).await?;
            tokio::try_join!(
                assert_quiet(&mut other_subscription, Duration::from_millis(500)),
                assert_quiet(&mut other_tail, Duration::from_millis(500)),
            )?;
            Ok(())
        })
        .await
    }

    #[tokio::test]
    async fn publishing_and_subscriptions_survive_deleted_streams() {
        run(Kind::Nats, |h| async move {
            let nats = NatsBus::connect(&h.config(), "contract-test").await?;
            h.created.lock().unwrap().push(nats.clone());
            let bus: Arc<dyn EventBus> = Arc::new(nats.clone());
            let mut subscription = bus.subscribe("helix.notification.>", "survivor").await?;
            nats.delete_streams().await?;
            let published = event(subjects::NOTIFICATION_CREATED, 1);
            publish_all(&bus, std::slice::from_ref(&published)).await.context("publish re-creates the stream")?;
            // The subscription notices the lost consumer (two missed heartbeats, ~4 s), re-creates it and
            // goes on.
            let deadline = Instant::now() + WAIT * 2;
            loop {
                let item = timeout(deadline.saturating_duration_since(Instant::now()), subscription.next())
                    .await
                    .context("no delivery after the stream was re-created")?
                    .context("subscription ended")?;
                match item {
                    Ok(delivery) => {
                        ensure!(delivery.envelope.id == published.id, "{delivery:?}");
                        delivery.ack().await?;
                        return Ok(());
                    }
                    Err(err) => eprintln!("reported while recovering: {err}"),
                }
            }
        })
        .await
    }

    #[tokio::test]
    async fn connect_picks_nats_when_a_url_is_set() {
        run(Kind::Nats, |h| async move {
            let bus = helix_events::connect(&h.config(), "contract-test").await?;
            let observer = h.bus().await;
            let published = event(subjects::GATEWAY_AUDIT_RECORDED, 1);
            publish_all(&bus, std::slice::from_ref(&published)).await?;
            let mut subscription = observer.subscribe("helix.gateway.>", "observer").await?;
            recv_exactly(&mut subscription, &[&published]).await
        })
        .await
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_error() {
        let config = EventsConfig {
            nats_url: Some("nats://127.0.0.1:1".to_owned()),
            connect_timeout: Duration::from_millis(500),
            ..EventsConfig::default()
        };
        let started = Instant::now();
        let result = NatsBus::connect(&config, "contract-test").await;
        assert!(matches!(result, Err(Error::Connect { .. })), "{:?}", result.err());
        assert!(started.elapsed() < Duration::from_secs(10), "bounded retry");
    }
}

// ---------------------------------------------------------------------------------------------
// In-process only: lifecycle
// ---------------------------------------------------------------------------------------------

mod in_process_lifecycle {
    use super::*;

    fn config() -> EventsConfig {
        EventsConfig { ack_wait: ACK_WAIT, ..EventsConfig::default() }
    }

    /// Unlike JetStream's stream on disk, the in-process log lets go of what every group
    /// has passed, once it is old enough for a group subscribing late at start to find it.
    #[tokio::test(start_paused = true)]
    async fn events_every_group_passed_leave_memory_after_a_while() -> Result<()> {
        let bus = InProcessBus::new(&config())?;
        let mut reader = bus.subscribe(subjects::NODE_CREATED, "reader").await?;
        let lagging = bus.subscribe(subjects::NODE_CREATED, "lagging").await?;
        for n in 0..100 {
            bus.publish(&event(subjects::NODE_CREATED, n)).await?;
        }
        for _ in 0..100 {
            recv(&mut reader).await?.ack().await?;
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        bus.publish(&event(subjects::NODE_CREATED, 100)).await?;
        ensure!(bus.retained_events() == 101, "a group that has not passed them keeps them");

        // a group joining now starts from what is held
        drop(lagging);
        let mut late = bus.subscribe(subjects::NODE_CREATED, "late").await?;
        for _ in 0..101 {
            recv(&mut late).await?.ack().await?;
        }
        let mut lagging = bus.subscribe(subjects::NODE_CREATED, "lagging").await?;
        for _ in 0..101 {
            recv(&mut lagging).await?.ack().await?;
        }
        recv(&mut reader).await?.ack().await?;
        bus.publish(&event(subjects::NODE_CREATED, 101)).await?;
        ensure!(bus.retained_events() == 2, "passed and old: gone, recent: kept; held {}", bus.retained_events());
        for group in [&mut reader, &mut late, &mut lagging] {
            recv(group).await?.ack().await?;
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        bus.publish(&event(subjects::NODE_CREATED, 102)).await?;
        ensure!(bus.retained_events() == 1, "only the newest is held: {}", bus.retained_events());
        Ok(())
    }

    #[tokio::test]
    async fn close_ends_subscriptions_and_refuses_publishing() -> Result<()> {
        let bus = InProcessBus::new(&config())?;
        let mut subscription = bus.subscribe("helix.>", "closing").await?;
        let mut tail = bus.tail("helix.>").await?;
        let waiter = tokio::spawn(async move { subscription.next().await.is_none() });
        let tail_waiter = tokio::spawn(async move { tail.next().await.is_none() });
        bus.close();
        ensure!(timeout(WAIT, waiter).await??, "subscription ends on close");
        ensure!(timeout(WAIT, tail_waiter).await??, "tail ends on close");
        ensure!(matches!(bus.publish(&event(subjects::NODE_CREATED, 1)).await, Err(Error::Closed)));
        ensure!(matches!(bus.check().await, Err(Error::Closed)));
        ensure!(matches!(bus.tail("helix.>").await, Err(Error::Closed)), "no tail on a closed bus");
        Ok(())
    }

    #[tokio::test]
    async fn dropping_the_bus_ends_subscriptions() -> Result<()> {
        let bus = InProcessBus::new(&config())?;
        let mut subscription = bus.subscribe(subjects::NODE_CREATED, "dropping").await?;
        let mut tail = bus.tail(subjects::NODE_CREATED).await?;
        let clone = bus.clone();
        drop(bus);
        clone.publish(&event(subjects::NODE_CREATED, 1)).await?;
        recv(&mut subscription).await?.ack().await?;
        recv(&mut tail).await?;
        drop(clone);
        ensure!(timeout(WAIT, subscription.next()).await?.is_none(), "subscription ends with the last handle");
        ensure!(timeout(WAIT, tail.next()).await?.is_none(), "tail ends with the last handle");
        Ok(())
    }

    #[tokio::test]
    async fn spawns_no_tasks() -> Result<()> {
        let bus = helix_events::connect(&config(), "contract-test").await?;
        let mut subscription = bus.subscribe("helix.>", "counted").await?;
        let mut tail = bus.tail("helix.>").await?;
        bus.publish(&event(subjects::JOB_STARTED, 1)).await?;
        let delivery = recv(&mut subscription).await?;
        delivery.nak().await?;
        recv(&mut subscription).await?.ack().await?;
        recv(&mut tail).await?.ack().await?;
        let tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks();
        ensure!(tasks == 0, "{tasks} tasks alive");
        Ok(())
    }

    #[tokio::test]
    async fn a_slow_tail_drops_its_oldest_events() -> Result<()> {
        // The buffer of an in-process tail holds 1024 events.
        const CAPACITY: u64 = 1024;
        let bus = InProcessBus::new(&config())?;
        let mut tail = bus.tail("helix.job.*").await?;
        let events: Vec<Envelope> = (0..CAPACITY + 100).map(|n| event(subjects::JOB_ENQUEUED, n)).collect();
        for event in &events {
            bus.publish(event).await?;
        }
        for expected in &events[100..] {
            let delivery = recv(&mut tail).await?;
            ensure!(
                delivery.envelope.id == expected.id,
                "the newest {CAPACITY} events, in order: expected n={}, got {}",
                expected.payload["n"],
                delivery.envelope.payload["n"]
            );
        }
        assert_quiet(&mut tail, Duration::from_millis(100)).await?;
        // Caught up: nothing is dropped any more.
        let next = event(subjects::JOB_ENQUEUED, 9999);
        bus.publish(&next).await?;
        ensure!(recv(&mut tail).await?.envelope.id == next.id);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn duplicate_window_and_retention_expire() -> Result<()> {
        let config = EventsConfig {
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(3600),
            max_messages: 3,
            ..config()
        };
        let bus = InProcessBus::new(&config)?;
        let published = event(subjects::SOURCE_CREATED, 0);
        ensure!(!bus.publish(&published).await?.duplicate);
        ensure!(bus.publish(&published).await?.duplicate, "within the window");
        tokio::time::advance(Duration::from_secs(121)).await;
        ensure!(!bus.publish(&published).await?.duplicate, "after the window the id is forgotten");

        let events: Vec<Envelope> = (1..=4).map(|n| event(subjects::SOURCE_CREATED, n)).collect();
        for event in &events {
            bus.publish(event).await?;
        }
        let mut subscription = bus.subscribe(subjects::SOURCE_CREATED, "retained").await?;
        for expected in &events[1..] {
            let delivery = recv(&mut subscription).await?;
            ensure!(delivery.envelope.id == expected.id, "only the newest max_messages are retained");
            delivery.ack().await?;
        }
        tokio::time::advance(Duration::from_secs(3601)).await;
        let fresh = event(subjects::SOURCE_CREATED, 9);
        bus.publish(&fresh).await?;
        let mut late = bus.subscribe(subjects::SOURCE_CREATED, "late").await?;
        let delivery = recv(&mut late).await?;
        ensure!(delivery.envelope.id == fresh.id, "events older than max_age are gone");
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Tables: subjects, filters, configuration, envelope
// ---------------------------------------------------------------------------------------------

mod tables {
    use super::*;

    #[test]
    fn every_subject_is_valid_unique_and_in_a_listed_domain() {
        let unique: HashSet<&str> = subjects::ALL.iter().copied().collect();
        assert_eq!(unique.len(), subjects::ALL.len(), "no subject listed twice");
        for subject in subjects::ALL {
            let domain = subjects::validate_subject(subject).unwrap_or_else(|err| panic!("{err}"));
            assert!(subjects::matches(domain.subjects, subject), "{subject} is captured by {}", domain.stream);
        }
        for domain in DOMAINS {
            assert_eq!(domain.stream, format!("HELIX_{}", domain.name.to_uppercase()));
            assert_eq!(domain.subjects, format!("helix.{}.>", domain.name));
            assert!(subjects::ALL.iter().any(|s| subjects::domain_of(s) == Some(domain)), "{} has events", domain.name);
        }
        assert_eq!(subjects::NODE_CREATED, "helix.node.created");
        assert_eq!(subjects::NODE_UPDATED, "helix.node.updated");
        assert_eq!(subjects::NODE_DELETED, "helix.node.deleted");
    }

    #[test]
    fn subject_patterns_match_like_nats() {
        let table = [
            ("helix.node.created", "helix.node.created", true),
            ("helix.node.created", "helix.node.updated", false),
            ("helix.node.*", "helix.node.created", true),
            ("helix.node.*", "helix.node", false),
            ("helix.graph.*", "helix.graph.edge.created", false),
            ("helix.graph.>", "helix.graph.edge.created", true),
            ("helix.graph.>", "helix.graph", false),
            ("helix.*.created", "helix.node.created", true),
            ("helix.*.created", "helix.graph.edge.created", false),
            (">", "helix.node.created", true),
            ("helix.node.created.>", "helix.node.created", false),
        ];
        for (pattern, subject, expected) in table {
            assert_eq!(subjects::matches(pattern, subject), expected, "{pattern} vs {subject}");
        }
    }

    #[test]
    fn filters_are_narrowed_to_the_domain_streams() {
        let plan = |filter: &str| -> Vec<(String, String)> {
            subjects::plan_filter(filter)
                .unwrap()
                .into_iter()
                .map(|(domain, narrowed)| (domain.name.to_owned(), narrowed))
                .collect()
        };
        assert_eq!(plan("helix.node.*"), [("node".to_owned(), "helix.node.*".to_owned())]);
        assert_eq!(plan("helix.node.created"), [("node".to_owned(), "helix.node.created".to_owned())]);
        assert_eq!(plan("helix.>").len(), DOMAINS.len());
        assert_eq!(plan(">").len(), DOMAINS.len());
        assert!(plan("helix.*.created").contains(&("job".to_owned(), "helix.job.created".to_owned())));
        assert_eq!(plan("*.graph.>"), [("graph".to_owned(), "helix.graph.>".to_owned())]);
    }

    #[test]
    fn config_has_defaults_seconds_and_validation() {
        let empty: EventsConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, EventsConfig::default());
        assert!(empty.nats_url.is_none() && empty.prefix.is_empty());
        assert_eq!(empty.duplicate_window, Duration::from_secs(120));
        empty.validate().unwrap();

        let parsed: EventsConfig =
            serde_json::from_value(json!({"nats_url": "nats://nats:4222", "ack_wait_secs": 0.5, "max_deliver": 3}))
                .unwrap();
        assert_eq!(parsed.ack_wait, Duration::from_millis(500));
        assert_eq!(parsed.max_deliver, 3);
        let round_trip: EventsConfig = serde_json::from_value(serde_json::to_value(&parsed).unwrap()).unwrap();
        assert_eq!(round_trip, parsed);
        assert!(serde_json::from_value::<EventsConfig>(json!({"ack_wait": 3})).is_err(), "unknown keys rejected");

        let invalid = [
            EventsConfig { prefix: "a b".to_owned(), ..EventsConfig::default() },
            EventsConfig { prefix: "a.".to_owned(), ..EventsConfig::default() },
            EventsConfig { ack_wait: Duration::ZERO, ..EventsConfig::default() },
            EventsConfig { max_deliver: 0, ..EventsConfig::default() },
            EventsConfig { duplicate_window: Duration::ZERO, ..EventsConfig::default() },
            EventsConfig { max_messages: 0, ..EventsConfig::default() },
            EventsConfig { replicas: 0, ..EventsConfig::default() },
            EventsConfig { nats_url: Some(" ".to_owned()), ..EventsConfig::default() },
        ];
        for config in invalid {
            assert!(matches!(config.validate(), Err(Error::Config(_))), "{config:?}");
        }
    }

    #[test]
    fn envelope_json_is_versioned_and_typed() {
        let envelope = Envelope::from_payload(subjects::NODE_CREATED, "storage", &json!({"id": "n1"})).unwrap();
        assert_eq!(envelope.id.get_version_num(), 7, "UUIDv7");
        assert_eq!(envelope.spec_version, Envelope::SPEC_VERSION);
        assert_eq!(Envelope::SPEC_VERSION, 1);
        let value = serde_json::to_value(&envelope).unwrap();
        assert_eq!(value["type"], subjects::NODE_CREATED);
        assert_eq!(value["source"], "storage");
        assert!(value.get("trace").is_none(), "no trace, no key");
        let occurred_at = value["occurred_at"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(occurred_at).is_ok(), "{occurred_at}");
        assert_eq!(Envelope::from_json(&envelope.to_json().unwrap()).unwrap(), envelope);

        #[derive(serde::Deserialize)]
        struct NodeCreated {
            id: String,
        }
        assert_eq!(envelope.payload_as::<NodeCreated>().unwrap().id, "n1");
    }
}
