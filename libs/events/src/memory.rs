//! The in-process bus: the JetStream contract inside one process, for the embedded `hx up`.
//!
//! Each domain has a retained log (a `VecDeque` of events with sequence numbers), a de-duplication map
//! and its durable consumers. A consumer has a cursor into the log, the deliveries awaiting an ack (with
//! their deadline) and the events waiting to be redelivered. Subscribers pull under the stream's lock
//! and, when there is nothing to take, sleep on the stream's `Notify` (woken by publish, nak and close)
//! or until the earliest ack deadline of their consumer. The bus spawns no task at all.
//!
//! Unlike JetStream, which keeps a stream's events on disk for `max_age`, the log drops an event that every
//! group has passed once it is [`CONSUMED_KEPT_FOR`] old, so a busy process's memory does not grow with
//! the events it has handled; a group created later than that starts from the oldest event still held.
//!
//! A tail is registered with the streams its filter covers; publish copies each matching event into the
//! tail's bounded buffer (dropping the oldest when it is full) and wakes it. Dropping the tail unregisters it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use crate::bus::{self, Acker as DeliveryAcker, Delivery, EventBus, PublishAck, Subscription};
use crate::config::EventsConfig;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::subjects::{self, DOMAINS};

/// How long an event every group has passed stays in memory: long enough for a group that
/// subscribes just after (the services of `hx up` start one after another). JetStream keeps
/// events on disk for `max_age` (7 days); kept in memory for as long, every LLM call and job
/// event of a busy process would stay there, and its memory would only grow. A group that
/// exists keeps what it has not passed, however long it takes.
const CONSUMED_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Events a tail holds for its reader; when it is full, publishing drops the oldest.
const TAIL_CAPACITY: usize = 1024;

/// The event bus inside one process. Clones share the bus; create one per process and hand it to every
/// service, since two `InProcessBus::new` are two separate buses.
///
/// When the last clone is dropped (or [`close`](Self::close) is called) the bus closes: publishing fails
/// and every subscription ends.
#[derive(Clone)]
pub struct InProcessBus {
    handle: Arc<Handle>,
}

/// Closes the bus when the last `InProcessBus` clone goes; subscriptions and deliveries hold only `Core`.
struct Handle {
    core: Arc<Core>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.core.close();
    }
}

struct Core {
    config: EventsConfig,
    /// One per entry of `DOMAINS`, in the same order.
    streams: Vec<StreamCore>,
    closed: AtomicBool,
}

struct StreamCore {
    name: String,
    state: Mutex<StreamState>,
    /// Woken on publish, nak and close.
    changed: Notify,
}

struct StreamState {
    next_seq: u64,
    log: VecDeque<Arc<Stored>>,
    /// Envelope id → sequence, for the ids published within the duplicate window.
    dedup: HashMap<Uuid, u64>,
    dedup_order: VecDeque<(Instant, Uuid)>,
    consumers: HashMap<String, ConsumerState>,
    /// The live tails whose filter covers this stream.
    tails: Vec<TailEntry>,
}

struct Stored {
    seq: u64,
    subject: String,
    envelope: Arc<Envelope>,
    stored_at: Instant,
}

struct ConsumerState {
    filter: String,
    /// The next sequence to examine for a first delivery.
    cursor: u64,
    /// Delivered, awaiting ack, by sequence.
    pending: BTreeMap<u64, Attempt>,
    /// Nak'd or past their ack deadline: redelivered first, lowest sequence first.
    redeliver: BTreeMap<u64, Attempt>,
    /// No pending deadline is earlier (it may be earlier than all of them after acks):
    /// `pending` is searched for lapsed deliveries only once this has passed, not on
    /// every take, which with thousands in flight would cost more than the take.
    earliest_deadline: Option<Instant>,
    next_token: u64,
}

struct Attempt {
    message: Arc<Stored>,
    deliveries: u64,
    deadline: Instant,
    /// Identifies one delivery, so that a late nak of an old delivery does not requeue a newer one.
    token: u64,
}

/// A tail's registration with one stream.
struct TailEntry {
    /// The tail's filter narrowed to this stream's domain.
    filter: String,
    tail: Arc<TailShared>,
}

/// What a tail's reader and the streams share: the buffered events and the wake-up of the reader.
struct TailShared {
    /// The filter the tail was opened with (for the log).
    filter: String,
    buffer: Mutex<TailBuffer>,
    /// Woken on publish (of an event for the tail) and close. One permit is kept when the reader is not
    /// waiting, so a wake-up between its look and its wait is not lost.
    ready: Notify,
}

struct TailBuffer {
    events: VecDeque<Arc<Stored>>,
    /// Events dropped since the reader last took one.
    skipped: u64,
}

enum Next {
    Deliver { message: Arc<Stored>, deliveries: u64, token: u64 },
    Wait(Option<Instant>),
}

impl InProcessBus {
    /// A new, empty bus.
    pub fn new(config: &EventsConfig) -> Result<Self> {
        config.validate()?;
        let streams = DOMAINS
            .iter()
            .map(|domain| StreamCore {
                name: config.stream_name(domain),
                state: Mutex::new(StreamState {
                    next_seq: 1,
                    log: VecDeque::new(),
                    dedup: HashMap::new(),
                    dedup_order: VecDeque::new(),
                    consumers: HashMap::new(),
                    tails: Vec::new(),
                }),
                changed: Notify::new(),
            })
            .collect();
        let core = Arc::new(Core { config: config.clone(), streams, closed: AtomicBool::new(false) });
        Ok(Self { handle: Arc::new(Handle { core }) })
    }

    /// Closes the bus: publishing fails from now on and every subscription ends.
    pub fn close(&self) {
        self.handle.core.close();
    }

    /// How many events the streams hold in memory; for diagnostics and tests.
    pub fn retained_events(&self) -> usize {
        self.handle.core.streams.iter().map(|stream| stream.lock().log.len()).sum()
    }

    /// How many tails are open (made by [`tail`](EventBus::tail) and not dropped yet); for diagnostics
    /// and tests.
    pub fn live_tails(&self) -> usize {
        let mut tails = HashSet::new();
        for stream in &self.handle.core.streams {
            tails.extend(stream.lock().tails.iter().map(|entry| Arc::as_ptr(&entry.tail)));
        }
        tails.len()
    }
}

#[async_trait::async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, event: &Envelope) -> Result<PublishAck> {
        self.handle.core.publish(event.clone())
    }

    async fn publish_batch(&self, events: Vec<Envelope>) -> (Vec<PublishAck>, Result<()>) {
        self.handle.core.publish_batch(events)
    }

    async fn subscribe(&self, filter: &str, group: &str) -> Result<Subscription> {
        let core = &self.handle.core;
        core.ensure_open()?;
        bus::validate_group(group)?;
        let plan = subjects::plan_filter(filter)?;
        let name = bus::durable_name(group, filter);
        let mut members: Vec<BoxStream<'static, Result<Delivery>>> = Vec::with_capacity(plan.len());
        for (domain, narrowed) in plan {
            let index = domain_index(domain);
            {
                let mut state = core.streams[index].lock();
                state.trim(Instant::now(), &core.config);
                let first_seq = state.first_seq();
                state.consumers.entry(name.clone()).or_insert_with(|| ConsumerState {
                    filter: narrowed,
                    cursor: first_seq,
                    pending: BTreeMap::new(),
                    redeliver: BTreeMap::new(),
                    earliest_deadline: None,
                    next_token: 0,
                });
            }
            let member = Member { core: core.clone(), stream: index, consumer: name.clone() };
            members.push(
                stream::unfold(member, |member| async move {
                    let delivery = member.next().await?;
                    Some((Ok(delivery), member))
                })
                .boxed(),
            );
        }
        let merged = if members.len() == 1 { members.remove(0) } else { stream::select_all(members).boxed() };
        Ok(Subscription::new(merged))
    }

    async fn tail(&self, filter: &str) -> Result<Subscription> {
        let core = &self.handle.core;
        core.ensure_open()?;
        let plan = subjects::plan_filter(filter)?;
        let tail = Arc::new(TailShared {
            filter: filter.to_owned(),
            buffer: Mutex::new(TailBuffer { events: VecDeque::new(), skipped: 0 }),
            ready: Notify::new(),
        });
        let mut streams = Vec::with_capacity(plan.len());
        for (domain, narrowed) in plan {
            let index = domain_index(domain);
            core.streams[index].lock().tails.push(TailEntry { filter: narrowed, tail: tail.clone() });
            streams.push(index);
        }
        let reader = TailReader { core: core.clone(), tail, streams };
        Ok(Subscription::new(
            stream::unfold(reader, |reader| async move {
                let delivery = reader.next().await?;
                Some((Ok(delivery), reader))
            })
            .boxed(),
        ))
    }

    async fn check(&self) -> Result<()> {
        self.handle.core.ensure_open()
    }
}

impl Core {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for stream in &self.streams {
            stream.changed.notify_waiters();
            for entry in &stream.lock().tails {
                entry.tail.ready.notify_one();
            }
        }
    }

    fn ensure_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) { Err(Error::Closed) } else { Ok(()) }
    }

    fn publish(&self, event: Envelope) -> Result<PublishAck> {
        self.ensure_open()?;
        let domain = subjects::validate_subject(&event.r#type)?;
        let stream = &self.streams[domain_index(domain)];
        let (sequence, duplicate) = stream.lock().store(event, Instant::now(), &self.config);
        stream.changed.notify_waiters();
        Ok(PublishAck { stream: stream.name.clone(), sequence, duplicate })
    }

    /// Stores each run of events of one stream under one lock and wakes its subscribers once.
    fn publish_batch(&self, events: Vec<Envelope>) -> (Vec<PublishAck>, Result<()>) {
        let mut acks = Vec::with_capacity(events.len());
        let mut events = events.into_iter().peekable();
        while let Some(first) = events.next() {
            if let Err(error) = self.ensure_open() {
                return (acks, Err(error));
            }
            let index = match subjects::validate_subject(&first.r#type) {
                Ok(domain) => domain_index(domain),
                Err(error) => return (acks, Err(error)),
            };
            let stream = &self.streams[index];
            let ack = |(sequence, duplicate)| PublishAck { stream: stream.name.clone(), sequence, duplicate };
            {
                let mut state = stream.lock();
                let now = Instant::now();
                acks.push(ack(state.store(first, now, &self.config)));
                // the events after it that go to the same stream
                let same_stream = |next: &Envelope| {
                    subjects::validate_subject(&next.r#type).is_ok_and(|domain| domain_index(domain) == index)
                };
                while let Some(next) = events.next_if(same_stream) {
                    acks.push(ack(state.store(next, now, &self.config)));
                }
            }
            stream.changed.notify_waiters();
        }
        (acks, Ok(()))
    }
}

impl StreamCore {
    fn lock(&self) -> MutexGuard<'_, StreamState> {
        // The state stays consistent even if a holder panicked: every mutation is a few plain assignments.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StreamState {
    /// Appends the event to the log unless its id was published within the
    /// de-duplication window; its sequence, and whether it was a duplicate.
    fn store(&mut self, event: Envelope, now: Instant, config: &EventsConfig) -> (u64, bool) {
        self.forget_ids_before(now, config.duplicate_window);
        if let Some(&sequence) = self.dedup.get(&event.id) {
            return (sequence, true);
        }
        let sequence = self.next_seq;
        self.next_seq += 1;
        let id = event.id;
        let stored = Arc::new(Stored {
            seq: sequence,
            subject: event.r#type.clone(),
            envelope: Arc::new(event),
            stored_at: now,
        });
        for entry in &self.tails {
            if subjects::matches(&entry.filter, &stored.subject) {
                entry.tail.push(stored.clone());
            }
        }
        self.log.push_back(stored);
        self.dedup.insert(id, sequence);
        self.dedup_order.push_back((now, id));
        self.trim(now, config);
        (sequence, false)
    }

    fn first_seq(&self) -> u64 {
        self.log.front().map_or(self.next_seq, |message| message.seq)
    }

    fn forget_ids_before(&mut self, now: Instant, window: std::time::Duration) {
        while let Some(&(at, id)) = self.dedup_order.front() {
            if at + window > now {
                break;
            }
            self.dedup_order.pop_front();
            self.dedup.remove(&id);
        }
    }

    /// Applies the retention limits (as a JetStream limits-policy stream does), on publish and subscribe,
    /// and drops what every group has passed once it is [`CONSUMED_KEPT_FOR`] old.
    fn trim(&mut self, now: Instant, config: &EventsConfig) {
        let max_messages = usize::try_from(config.max_messages).unwrap_or(usize::MAX);
        while self.log.len() > max_messages {
            self.log.pop_front();
        }
        while self.log.front().is_some_and(|message| message.stored_at + config.max_age <= now) {
            self.log.pop_front();
        }
        // deliveries awaiting an ack hold their own reference to the event
        let passed = self.consumers.values().map(|consumer| consumer.cursor).min().unwrap_or(self.next_seq);
        while self
            .log
            .front()
            .is_some_and(|message| message.seq < passed && message.stored_at + CONSUMED_KEPT_FOR <= now)
        {
            self.log.pop_front();
        }
    }

    fn take_next(&mut self, consumer: &str, now: Instant, config: &EventsConfig) -> Next {
        let first_seq = self.first_seq();
        let Some(consumer) = self.consumers.get_mut(consumer) else {
            return Next::Wait(None);
        };
        if consumer.earliest_deadline.is_some_and(|earliest| earliest <= now) {
            let expired: Vec<u64> =
                consumer.pending.iter().filter(|(_, attempt)| attempt.deadline <= now).map(|(seq, _)| *seq).collect();
            for seq in expired {
                if let Some(attempt) = consumer.pending.remove(&seq) {
                    consumer.requeue(seq, attempt, config.max_deliver);
                }
            }
            consumer.earliest_deadline = consumer.pending.values().map(|attempt| attempt.deadline).min();
        }

        let (message, deliveries) = if let Some((_, attempt)) = consumer.redeliver.pop_first() {
            (attempt.message, attempt.deliveries + 1)
        } else {
            consumer.cursor = consumer.cursor.max(first_seq);
            let mut found = None;
            while found.is_none() {
                let Some(message) = usize::try_from(consumer.cursor - first_seq).ok().and_then(|i| self.log.get(i))
                else {
                    break;
                };
                consumer.cursor += 1;
                if subjects::matches(&consumer.filter, &message.subject) {
                    found = Some(message.clone());
                }
            }
            match found {
                Some(message) => (message, 1),
                None => return Next::Wait(consumer.earliest_deadline),
            }
        };
        consumer.next_token += 1;
        let token = consumer.next_token;
        let attempt = Attempt { message: message.clone(), deliveries, deadline: now + config.ack_wait, token };
        consumer.note_deadline(attempt.deadline);
        consumer.pending.insert(message.seq, attempt);
        Next::Deliver { message, deliveries, token }
    }
}

impl ConsumerState {
    fn note_deadline(&mut self, deadline: Instant) {
        self.earliest_deadline = Some(self.earliest_deadline.map_or(deadline, |earliest| earliest.min(deadline)));
    }

    fn requeue(&mut self, seq: u64, attempt: Attempt, max_deliver: i64) {
        let exhausted = u64::try_from(max_deliver).is_ok_and(|max| attempt.deliveries >= max);
        if exhausted {
            tracing::warn!(
                seq,
                subject = %attempt.message.subject,
                deliveries = attempt.deliveries,
                "event reached max_deliver, not redelivered"
            );
        } else {
            self.redeliver.insert(seq, attempt);
        }
    }
}

/// One subscription's pull loop on one domain stream.
struct Member {
    core: Arc<Core>,
    stream: usize,
    consumer: String,
}

impl Member {
    async fn next(&self) -> Option<Delivery> {
        let stream = &self.core.streams[self.stream];
        loop {
            // Registered before looking, so a publish between the look and the wait still wakes us.
            let changed = stream.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.core.ensure_open().is_err() {
                return None;
            }
            let next = stream.lock().take_next(&self.consumer, Instant::now(), &self.core.config);
            match next {
                Next::Deliver { message, deliveries, token } => {
                    return Some(Delivery {
                        envelope: message.envelope.clone(),
                        subject: message.subject.clone(),
                        redelivered: deliveries > 1,
                        delivery_count: deliveries,
                        acker: DeliveryAcker::InProcess(Acker {
                            core: self.core.clone(),
                            stream: self.stream,
                            consumer: self.consumer.clone(),
                            seq: message.seq,
                            token,
                        }),
                    });
                }
                Next::Wait(Some(deadline)) => {
                    tokio::select! {
                        () = &mut changed => {}
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                }
                Next::Wait(None) => changed.await,
            }
        }
    }
}

impl TailShared {
    fn lock(&self) -> MutexGuard<'_, TailBuffer> {
        // A buffer stays consistent even if a holder panicked: every mutation is one queue operation.
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Buffers a published event for the reader, dropping the oldest buffered one when the buffer is full.
    fn push(&self, message: Arc<Stored>) {
        {
            let mut buffer = self.lock();
            if buffer.events.len() >= TAIL_CAPACITY {
                buffer.events.pop_front();
                if buffer.skipped == 0 {
                    tracing::warn!(
                        filter = %self.filter,
                        capacity = TAIL_CAPACITY,
                        "tail is falling behind, dropping its oldest events"
                    );
                }
                buffer.skipped += 1;
            }
            buffer.events.push_back(message);
        }
        self.ready.notify_one();
    }

    fn pop(&self) -> Option<Arc<Stored>> {
        let mut buffer = self.lock();
        let message = buffer.events.pop_front()?;
        if buffer.skipped > 0 {
            tracing::warn!(filter = %self.filter, skipped = buffer.skipped, "tail skipped events it could not keep up with");
            buffer.skipped = 0;
        }
        Some(message)
    }
}

/// The reading end of a tail; dropping it unregisters the tail from its streams.
struct TailReader {
    core: Arc<Core>,
    tail: Arc<TailShared>,
    /// The streams the tail is registered with.
    streams: Vec<usize>,
}

impl TailReader {
    async fn next(&self) -> Option<Delivery> {
        loop {
            if self.core.ensure_open().is_err() {
                return None;
            }
            if let Some(message) = self.tail.pop() {
                return Some(Delivery {
                    envelope: message.envelope.clone(),
                    subject: message.subject.clone(),
                    redelivered: false,
                    delivery_count: 1,
                    acker: DeliveryAcker::Tail,
                });
            }
            self.tail.ready.notified().await;
        }
    }
}

impl Drop for TailReader {
    fn drop(&mut self) {
        for &index in &self.streams {
            self.core.streams[index].lock().tails.retain(|entry| !Arc::ptr_eq(&entry.tail, &self.tail));
        }
    }
}

/// Acks or naks one in-process delivery.
pub(crate) struct Acker {
    core: Arc<Core>,
    stream: usize,
    consumer: String,
    seq: u64,
    token: u64,
}

impl Acker {
    pub(crate) fn ack(self) -> Result<()> {
        self.core.ensure_open()?;
        let mut state = self.core.streams[self.stream].lock();
        if let Some(consumer) = state.consumers.get_mut(&self.consumer) {
            // A late ack still counts: the work was done, even if the event was queued for redelivery.
            consumer.pending.remove(&self.seq);
            consumer.redeliver.remove(&self.seq);
        }
        Ok(())
    }

    /// Redelivery now (`delay` zero), or once `delay` has passed: the delivery then stays
    /// pending with that deadline, as one not acked in time does.
    pub(crate) fn nak_after(self, delay: std::time::Duration) -> Result<()> {
        self.core.ensure_open()?;
        let stream = &self.core.streams[self.stream];
        {
            let mut state = stream.lock();
            let Some(consumer) = state.consumers.get_mut(&self.consumer) else {
                return Ok(());
            };
            let Some(attempt) = consumer.pending.get_mut(&self.seq).filter(|attempt| attempt.token == self.token)
            else {
                return Ok(());
            };
            if !delay.is_zero() {
                attempt.deadline = Instant::now() + delay;
                let deadline = attempt.deadline;
                consumer.note_deadline(deadline);
            } else if let Some(attempt) = consumer.pending.remove(&self.seq) {
                consumer.requeue(self.seq, attempt, self.core.config.max_deliver);
            }
        }
        stream.changed.notify_waiters();
        Ok(())
    }
}

fn domain_index(domain: &subjects::Domain) -> usize {
    DOMAINS
        .iter()
        .position(|candidate| candidate == domain)
        .expect("plan_filter and validate_subject return DOMAINS entries")
}
