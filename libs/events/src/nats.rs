//! The bus on NATS JetStream: one stream per domain, one durable pull consumer per (group, filter).
//! A tail is a plain core NATS subscription per domain: JetStream publishes are ordinary publishes, so core
//! subscribers see them, and no consumer state is kept on the server.

use std::sync::Arc;
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use async_nats::{ConnectOptions, Event, HeaderMap, ServerAddr};
use futures::stream::{BoxStream, StreamExt};
use tokio::time::Instant;

use crate::bus::{self, Acker, Delivery, EventBus, PublishAck, Subscription};
use crate::config::EventsConfig;
use crate::envelope::{Envelope, HEADER_TRACEPARENT, HEADER_TRACESTATE, TraceContext};
use crate::error::{Error, Result};
use crate::subjects::{self, DOMAINS, Domain};

/// Messages a subscription asks for per pull request. Small, so that the members of a group share the
/// work, and so that few events wait for ack_wait when a subscription is dropped with prefetched events.
const PULL_BATCH: usize = 16;
/// Lifetime of a pull request; a dropped subscription's request lingers on the server this long at most.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
/// Idle heartbeat of a pull request. Two missed heartbeats re-open the subscription: that is how a consumer
/// lost with its stream (which servers before 2.10 do not report) is noticed and re-created.
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// Publishes a batch sends ahead of the acks it waits for.
const PUBLISH_WINDOW: usize = 256;
/// Longest wait between two attempts to re-open a broken subscription.
const MAX_REOPEN_DELAY: Duration = Duration::from_secs(5);

/// The event bus on NATS JetStream. Clones share one connection.
#[derive(Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    config: EventsConfig,
}

impl NatsBus {
    /// Connects to `config.nats_url` (retrying for up to `connect_timeout`; once connected, the client
    /// reconnects by itself forever) and creates the domain streams that do not exist yet. `source` names
    /// the connection (the publishing service).
    pub async fn connect(config: &EventsConfig, source: &str) -> Result<Self> {
        config.validate()?;
        let url = config.nats_url.as_deref().ok_or_else(|| Error::Config("nats_url is not set".to_owned()))?;
        let servers = url
            .split(',')
            .map(|server| server.trim().parse::<ServerAddr>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|err| Error::Config(format!("nats_url {url:?}: {err}")))?;

        let deadline = Instant::now() + config.connect_timeout;
        let mut delay = Duration::from_millis(100);
        let client = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let options = ConnectOptions::new()
                .name(source)
                .connection_timeout(remaining.clamp(Duration::from_millis(100), Duration::from_secs(5)))
                .max_reconnects(None)
                .event_callback(|event| async move {
                    match event {
                        // A core subscription (a tail) whose client buffer is full: the server's newest
                        // messages for it are dropped until it catches up.
                        Event::SlowConsumer(sid) => {
                            tracing::warn!(sid, "nats subscription is a slow consumer, events dropped");
                        }
                        event => tracing::debug!(%event, "nats connection event"),
                    }
                });
            match options.connect(servers.as_slice()).await {
                Ok(client) => break client,
                Err(err) if Instant::now() + delay < deadline => {
                    let retry_in_ms = delay.as_millis();
                    tracing::warn!(url, error = %err, retry_in_ms, "cannot connect to nats, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(err) => return Err(Error::Connect { url: url.to_owned(), source: err }),
            }
        };
        let jetstream = jetstream::new(client.clone());
        let bus = Self { inner: Arc::new(Inner { client, jetstream, config: config.clone() }) };
        for domain in DOMAINS {
            bus.inner.ensure_stream(domain).await?;
        }
        tracing::debug!(url, prefix = %config.prefix, "connected to nats");
        Ok(bus)
    }

    /// Deletes the domain streams of this bus's prefix, with their events and consumers. For tests and
    /// for tearing down a tenant; a later publish or subscribe re-creates them.
    pub async fn delete_streams(&self) -> Result<()> {
        for domain in DOMAINS {
            let name = self.inner.config.stream_name(domain);
            match self.inner.jetstream.delete_stream(&name).await {
                Ok(_) => {}
                Err(err) if is_not_found(&err) => {}
                Err(err) => return Err(Error::nats("delete stream", err)),
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl EventBus for NatsBus {
    async fn publish(&self, event: &Envelope) -> Result<PublishAck> {
        let domain = subjects::validate_subject(&event.r#type)?;
        let (subject, message) = self.inner.message_of(event)?;
        let mut recreated = false;
        loop {
            match self.inner.publish_once(&subject, message.clone()).await {
                Ok(ack) => {
                    return Ok(PublishAck { stream: ack.stream, sequence: ack.sequence, duplicate: ack.duplicate });
                }
                // The stream was deleted under us (by an operator, or a test): re-create it once.
                Err(err) if err.kind() == PublishErrorKind::StreamNotFound && !recreated => {
                    self.inner.ensure_stream(domain).await?;
                    recreated = true;
                }
                Err(err) => return Err(Error::nats("publish", err)),
            }
        }
    }

    /// Sends up to [`PUBLISH_WINDOW`] publishes before waiting for the first one's ack,
    /// so a batch costs about one round trip per window instead of one per event. After a
    /// failure the rest go one at a time through `publish`, which re-creates a lost stream.
    async fn publish_batch(&self, events: Vec<Envelope>) -> (Vec<PublishAck>, Result<()>) {
        let mut acks = Vec::with_capacity(events.len());
        let mut in_flight = std::collections::VecDeque::new();
        let mut failed = false;
        for event in &events {
            let Ok((subject, message)) = self.inner.message_of(event) else {
                failed = true;
                break;
            };
            match self.inner.jetstream.send_publish(subject, message).await {
                Ok(ack) => in_flight.push_back(ack),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
            if in_flight.len() >= PUBLISH_WINDOW
                && let Some(ack) = in_flight.pop_front()
            {
                let Ok(ack) = ack.await else {
                    failed = true;
                    break;
                };
                acks.push(PublishAck { stream: ack.stream, sequence: ack.sequence, duplicate: ack.duplicate });
            }
        }
        while !failed && let Some(ack) = in_flight.pop_front() {
            match ack.await {
                Ok(ack) => {
                    acks.push(PublishAck { stream: ack.stream, sequence: ack.sequence, duplicate: ack.duplicate })
                }
                Err(_) => failed = true,
            }
        }
        // the events after the first unacked one, again and in order: what the server
        // stored of them already is de-duplicated by their ids
        for event in events.iter().skip(acks.len()) {
            match self.publish(event).await {
                Ok(ack) => acks.push(ack),
                Err(error) => return (acks, Err(error)),
            }
        }
        (acks, Ok(()))
    }

    async fn subscribe(&self, filter: &str, group: &str) -> Result<Subscription> {
        bus::validate_group(group)?;
        let plan = subjects::plan_filter(filter)?;
        let durable = bus::durable_name(group, filter);
        let mut members: Vec<BoxStream<'static, Result<Delivery>>> = Vec::with_capacity(plan.len());
        for (domain, narrowed) in plan {
            let mut member = Member {
                inner: self.inner.clone(),
                domain,
                durable: durable.clone(),
                description: format!("helix group {group} on {filter}"),
                filter: self.inner.config.wire_subject(&narrowed),
                messages: None,
                reopen_at: None,
                reopen_delay: Duration::from_millis(100),
            };
            // Opened now, so that the group exists (and sees every later event) once subscribe returns.
            member.messages = Some(member.open().await?);
            members.push(
                futures::stream::unfold(member, |mut member| async move { Some((member.next().await, member)) })
                    .boxed(),
            );
        }
        let merged = if members.len() == 1 { members.remove(0) } else { futures::stream::select_all(members).boxed() };
        Ok(Subscription::new(merged))
    }

    async fn tail(&self, filter: &str) -> Result<Subscription> {
        let plan = subjects::plan_filter(filter)?;
        let client = &self.inner.client;
        let mut subscribers = Vec::with_capacity(plan.len());
        for (_, narrowed) in plan {
            let wire = self.inner.config.wire_subject(&narrowed);
            subscribers.push(client.subscribe(wire).await.map_err(|err| Error::nats("tail", err))?);
        }
        // One round trip: the server handles a connection's commands in order, so its answer (no responders,
        // on a fresh inbox) proves the subscriptions are registered and every later publish reaches them.
        match client.request(client.new_inbox(), bytes::Bytes::new()).await {
            Ok(_) => {}
            Err(err) if err.kind() == RequestErrorKind::NoResponders => {}
            Err(err) => return Err(Error::nats("tail", err)),
        }
        let inner = self.inner.clone();
        let deliveries = futures::stream::select_all(subscribers)
            .filter_map(move |message| futures::future::ready(inner.tail_delivery(message).map(Ok)));
        Ok(Subscription::new(deliveries.boxed()))
    }

    async fn check(&self) -> Result<()> {
        let state = self.inner.client.connection_state();
        if state != async_nats::connection::State::Connected {
            return Err(Error::nats("health check", format!("connection is {state}")));
        }
        // The account info request proves JetStream answers (read as plain JSON: the typed
        // `query_account` expects fields that servers before 2.10 do not send).
        let response: jetstream::response::Response<serde_json::Value> =
            self.inner.jetstream.request("INFO", &()).await.map_err(|err| Error::nats("health check", err))?;
        match response {
            jetstream::response::Response::Ok(_) => Ok(()),
            jetstream::response::Response::Err { error } => Err(Error::nats("health check", error)),
        }
    }
}

impl Inner {
    /// `None` for a message that is not an envelope: it is logged and skipped.
    fn tail_delivery(&self, message: async_nats::Message) -> Option<Delivery> {
        let subject = self.config.api_subject(message.subject.as_str()).to_owned();
        let mut envelope = match Envelope::from_json(&message.payload) {
            Ok(envelope) => envelope,
            Err(err) => {
                tracing::warn!(%subject, error = %err, "message is not a helix event envelope, skipped by tail");
                return None;
            }
        };
        if envelope.trace.is_none() {
            envelope.trace = trace_from_headers(message.headers.as_ref());
        }
        Some(Delivery {
            envelope: Arc::new(envelope),
            subject,
            redelivered: false,
            delivery_count: 1,
            acker: Acker::Tail,
        })
    }

    /// The wire subject and message of an event: its JSON, the trace headers, and its id
    /// as `Nats-Msg-Id` for de-duplication.
    fn message_of(&self, event: &Envelope) -> Result<(String, PublishMessage)> {
        subjects::validate_subject(&event.r#type)?;
        let payload = bytes::Bytes::from(event.to_json()?);
        let mut headers = HeaderMap::new();
        if let Some(trace) = &event.trace {
            headers.insert(HEADER_TRACEPARENT, trace.traceparent.as_str());
            if let Some(tracestate) = &trace.tracestate {
                headers.insert(HEADER_TRACESTATE, tracestate.as_str());
            }
        }
        let message = PublishMessage::build().payload(payload).headers(headers).message_id(event.id.to_string());
        Ok((self.config.wire_subject(&event.r#type), message))
    }

    async fn publish_once(
        &self,
        subject: &str,
        message: PublishMessage,
    ) -> std::result::Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
        self.jetstream.send_publish(subject.to_owned(), message).await?.await
    }

    async fn ensure_stream(&self, domain: &Domain) -> Result<stream::Stream> {
        let config = stream::Config {
            name: self.config.stream_name(domain),
            description: Some(format!("helix {} events, published by {}", domain.name, domain.publisher)),
            subjects: vec![self.config.wire_subject(domain.subjects)],
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_age: self.config.max_age,
            max_messages: self.config.max_messages,
            duplicate_window: self.config.duplicate_window,
            num_replicas: self.config.replicas,
            ..Default::default()
        };
        self.jetstream.get_or_create_stream(config).await.map_err(|err| Error::nats("create stream", err))
    }
}

/// One subscription's pull loop on one domain stream; re-opens itself when the consumer or stream vanish.
struct Member {
    inner: Arc<Inner>,
    domain: &'static Domain,
    durable: String,
    description: String,
    /// The filter on the wire (prefixed, narrowed to the domain).
    filter: String,
    messages: Option<pull::Stream>,
    reopen_at: Option<Instant>,
    reopen_delay: Duration,
}

impl Member {
    /// Creates (or updates) the durable consumer and starts pulling from it.
    async fn open(&self) -> Result<pull::Stream> {
        let stream = self.inner.ensure_stream(self.domain).await?;
        let config = pull::Config {
            durable_name: Some(self.durable.clone()),
            description: Some(self.description.clone()),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.inner.config.ack_wait,
            max_deliver: self.inner.config.max_deliver,
            filter_subject: self.filter.clone(),
            ..Default::default()
        };
        let consumer: PullConsumer =
            stream.create_consumer(config).await.map_err(|err| Error::nats("create consumer", err))?;
        consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(|err| Error::nats("pull", err))
    }

    async fn next(&mut self) -> Result<Delivery> {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                if let Some(at) = self.reopen_at.take() {
                    tokio::time::sleep_until(at).await;
                }
                match self.open().await {
                    Ok(messages) => {
                        self.messages = Some(messages);
                        self.reopen_delay = Duration::from_millis(100);
                        continue;
                    }
                    Err(err) => {
                        self.schedule_reopen();
                        return Err(err);
                    }
                }
            };
            match messages.next().await {
                Some(Ok(message)) => {
                    if let Some(delivery) = self.to_delivery(message).await {
                        return Ok(delivery);
                    }
                }
                Some(Err(err)) => {
                    let fatal = matches!(
                        err.kind(),
                        MessagesErrorKind::MissingHeartbeat
                            | MessagesErrorKind::ConsumerDeleted
                            | MessagesErrorKind::NoResponders
                            | MessagesErrorKind::PushBasedConsumer
                            | MessagesErrorKind::RequestLimitExceeded
                    );
                    if fatal {
                        self.messages = None;
                        self.schedule_reopen();
                    }
                    return Err(Error::nats("receive", err));
                }
                None => {
                    self.messages = None;
                    self.schedule_reopen();
                }
            }
        }
    }

    fn schedule_reopen(&mut self) {
        self.reopen_at = Some(Instant::now() + self.reopen_delay);
        self.reopen_delay = (self.reopen_delay * 2).min(MAX_REOPEN_DELAY);
    }

    /// `None` for a message that is not an envelope: it is terminated (never redelivered) and logged.
    async fn to_delivery(&self, message: jetstream::Message) -> Option<Delivery> {
        let delivery_count = match message.info() {
            Ok(info) => u64::try_from(info.delivered).unwrap_or(1).max(1),
            Err(err) => {
                tracing::warn!(subject = %message.subject, error = %err, "jetstream message without ack info, skipped");
                return None;
            }
        };
        let (message, acker) = message.split();
        let subject = self.inner.config.api_subject(message.subject.as_str()).to_owned();
        let mut envelope = match Envelope::from_json(&message.payload) {
            Ok(envelope) => envelope,
            Err(err) => {
                tracing::warn!(%subject, error = %err, "message is not a helix event envelope, terminated");
                if let Err(err) = acker.ack_with(AckKind::Term).await {
                    tracing::warn!(%subject, error = %err, "cannot terminate malformed message");
                }
                return None;
            }
        };
        if envelope.trace.is_none() {
            envelope.trace = trace_from_headers(message.headers.as_ref());
        }
        Some(Delivery {
            envelope: Arc::new(envelope),
            subject,
            redelivered: delivery_count > 1,
            delivery_count,
            acker: Acker::Nats(acker),
        })
    }
}

fn trace_from_headers(headers: Option<&HeaderMap>) -> Option<TraceContext> {
    let headers = headers?;
    let traceparent = headers.get(HEADER_TRACEPARENT)?.as_str().to_owned();
    let tracestate = headers.get(HEADER_TRACESTATE).map(|value| value.as_str().to_owned());
    Some(TraceContext { traceparent, tracestate })
}

fn is_not_found(err: &jetstream::context::DeleteStreamError) -> bool {
    matches!(
        err.kind(),
        jetstream::context::DeleteStreamErrorKind::JetStream(ref js)
            if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}
