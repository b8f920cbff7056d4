//! Vectors after words: the writer indexes a document's words at once and leaves its
//! vector to this stage, so a burst of writes is searchable by words within a commit
//! however slow the embedder is (MiniLM on a CPU embeds tens of documents a second).
//!
//! The writer puts a document's text in the [`Backlog`], newest version per node; the
//! stage takes what waits, shortest texts first (a batch pads to its longest), embeds it
//! off the executor and hands the vectors back to the writer, which keeps those whose
//! document is still at that version. What the backlog holds when the process stops is
//! found again at start: every live document whose vector lags is queued.
//!
//! An embedder that fails (a remote endpoint down) loses nothing: the batch goes back in
//! the backlog and is tried again after a growing pause, while words stay searchable.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use helix_embed::Embedder;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::document::Document;
use crate::writer::Command;

/// Documents taken from the backlog at once: the embedder batches them itself (MiniLM
/// 32 to a forward pass); sorting this many by length keeps the padding low.
pub const MAX_BATCH: usize = 256;
/// The pause after a failed batch, doubling up to the longest.
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const LONGEST_PAUSE: Duration = Duration::from_secs(30);

/// What the vector of one node version needs.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedRequest {
    pub id: Uuid,
    pub version: i64,
    pub text: String,
    pub namespace: String,
    pub kind: String,
    pub tags: Vec<String>,
    /// UTC microseconds
    pub updated_at: i64,
}

impl EmbedRequest {
    pub fn of(id: Uuid, doc: &Document) -> Self {
        Self {
            id,
            version: doc.version,
            text: doc.embedding_text(),
            namespace: doc.namespace.clone(),
            kind: doc.kind.clone(),
            tags: doc.tags.clone(),
            updated_at: doc.updated_at.timestamp_micros(),
        }
    }
}

/// The documents waiting for a vector, oldest request first, one version per node.
#[derive(Default)]
pub struct Backlog {
    state: Mutex<State>,
    wake: Notify,
    closed: AtomicBool,
}

#[derive(Default)]
struct State {
    waiting: HashMap<Uuid, (u64, EmbedRequest)>,
    /// arrival order: sequence number → id
    order: BTreeMap<u64, Uuid>,
    next: u64,
    /// taken by the stage and not yet answered by the writer
    in_flight: usize,
    /// after vectors could not be written: no batch is taken before this
    paused_until: Option<Instant>,
    pause: Duration,
}

impl State {
    fn insert(&mut self, request: EmbedRequest) {
        if let Some(&(seq, ref old)) = self.waiting.get(&request.id) {
            if old.version > request.version {
                return;
            }
            self.order.remove(&seq);
        }
        let seq = self.next;
        self.next += 1;
        self.order.insert(seq, request.id);
        self.waiting.insert(request.id, (seq, request));
    }
}

impl Backlog {
    /// Queues a node version's text; an older version of the node waiting is replaced.
    pub fn push(&self, request: EmbedRequest) {
        self.state.lock().expect("backlog lock").insert(request);
        self.wake.notify_one();
    }

    /// The node is gone: its text need not be embedded.
    pub fn remove(&self, id: Uuid) {
        let mut state = self.state.lock().expect("backlog lock");
        if let Some((seq, _)) = state.waiting.remove(&id) {
            state.order.remove(&seq);
        }
    }

    /// Documents whose vector is not searchable yet: waiting or being embedded.
    pub fn pending(&self) -> u64 {
        let state = self.state.lock().expect("backlog lock");
        (state.waiting.len() + state.in_flight) as u64
    }

    /// Up to `max` of the oldest requests, now in flight.
    fn take(&self, max: usize) -> Vec<EmbedRequest> {
        let mut state = self.state.lock().expect("backlog lock");
        let mut taken = Vec::with_capacity(max.min(state.waiting.len()));
        while taken.len() < max {
            let Some((_, id)) = state.order.pop_first() else { break };
            if let Some((_, request)) = state.waiting.remove(&id) {
                taken.push(request);
            }
        }
        state.in_flight += taken.len();
        taken
    }

    /// The writer has dealt with `count` taken requests.
    pub fn finished(&self, count: usize) {
        let mut state = self.state.lock().expect("backlog lock");
        state.in_flight = state.in_flight.saturating_sub(count);
        state.pause = FIRST_PAUSE;
    }

    /// Taken requests whose vectors could not be written (the vector store failed):
    /// queued again, and the stage pauses before it takes more, longer each time.
    pub fn put_back_failed(&self, requests: Vec<EmbedRequest>) {
        {
            let mut state = self.state.lock().expect("backlog lock");
            let pause = state.pause.max(FIRST_PAUSE);
            state.paused_until = Some(Instant::now() + pause);
            state.pause = (pause * 2).min(LONGEST_PAUSE);
        }
        self.put_back(requests);
    }

    /// How long the stage must wait before it takes a batch.
    fn paused(&self) -> Option<Duration> {
        let state = self.state.lock().expect("backlog lock");
        state.paused_until.and_then(|until| until.checked_duration_since(Instant::now()))
    }

    /// Taken requests that must be tried again; a newer version queued meanwhile wins.
    pub fn put_back(&self, requests: Vec<EmbedRequest>) {
        let mut state = self.state.lock().expect("backlog lock");
        state.in_flight = state.in_flight.saturating_sub(requests.len());
        for request in requests {
            state.insert(request);
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Ends the stage (the writer stopped).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

/// Embeds what the backlog holds until it is closed or the writer is gone.
pub async fn run(backlog: std::sync::Arc<Backlog>, writer: Sender<Command>, embedder: std::sync::Arc<dyn Embedder>) {
    let mut pause = FIRST_PAUSE;
    while !backlog.closed.load(Ordering::SeqCst) {
        if let Some(pause) = backlog.paused() {
            tokio::time::sleep(pause).await;
            continue;
        }
        let mut batch = backlog.take(MAX_BATCH);
        if batch.is_empty() {
            backlog.wake.notified().await;
            continue;
        }
        batch.sort_by_key(|request| request.text.len());
        let texts: Vec<String> = batch.iter().map(|request| request.text.clone()).collect();
        match embedder.embed(&texts).await {
            Ok(vectors) if vectors.len() == batch.len() => {
                pause = FIRST_PAUSE;
                let embedded = batch.into_iter().zip(vectors).collect();
                if writer.send(Command::Vectors { embedded }).is_err() {
                    return;
                }
            }
            outcome => {
                let error = match outcome {
                    Err(error) => error.to_string(),
                    Ok(vectors) => format!("the embedder answered {} vectors for {} texts", vectors.len(), texts.len()),
                };
                tracing::warn!(
                    %error, documents = batch.len(), retry_in_ms = pause.as_millis() as u64,
                    "embedding failed; the documents stay searchable by words and are tried again"
                );
                backlog.put_back(batch);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LONGEST_PAUSE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(n: u8, version: i64, text: &str) -> EmbedRequest {
        EmbedRequest {
            id: Uuid::from_bytes([n; 16]),
            version,
            text: text.to_owned(),
            namespace: "default".to_owned(),
            kind: "note".to_owned(),
            tags: Vec::new(),
            updated_at: 0,
        }
    }

    fn versions(taken: &[EmbedRequest]) -> Vec<(u8, i64)> {
        taken.iter().map(|r| (r.id.as_bytes()[0], r.version)).collect()
    }

    #[test]
    fn the_backlog_keeps_the_newest_version_in_arrival_order_and_counts_what_is_in_flight() {
        let backlog = Backlog::default();
        backlog.push(request(1, 1, "a"));
        backlog.push(request(2, 1, "b"));
        backlog.push(request(1, 2, "a2"));
        backlog.push(request(2, 0, "older: ignored"));
        backlog.push(request(3, 1, "c"));
        backlog.remove(Uuid::from_bytes([3; 16]));
        assert_eq!(backlog.pending(), 2);
        let taken = backlog.take(1);
        assert_eq!(versions(&taken), vec![(2, 1)], "the oldest request first");
        assert_eq!(backlog.pending(), 2, "in flight still counts");
        backlog.push(request(2, 5, "b5"));
        backlog.put_back(taken);
        assert_eq!(versions(&backlog.take(10)), vec![(1, 2), (2, 5)], "a newer version queued meanwhile wins");
        backlog.finished(2);
        assert_eq!(backlog.pending(), 0);
    }
}
