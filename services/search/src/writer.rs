//! The one writer of the index: a thread of its own (tantivy's writer blocks), fed
//! through a channel by the event indexer, the index rpcs, reindexing and the
//! [`embedding`](crate::embedding) stage, so their changes apply in the order they were
//! sent.
//!
//! Words first, vectors after: a document without a vector is indexed by its words at
//! once and its text queued in the [`Backlog`]; the stage sends the vector back as a
//! change of its own, kept only if the document is still at that version. A document
//! pushed with its vector, and every removal, writes the vector side with the words.
//! Vector changes are written in order with the batch — in runs while it fills, the rest
//! just before the commit — and a search takes a vector hit only when its document is
//! committed.
//!
//! Changes are committed in small batches: the writer takes what is waiting, then
//! commits, but not more often than every [`COMMIT_INTERVAL`]; after a commit the
//! reader is reloaded, so searches see the batch. Whoever asked to wait (the event
//! indexer, to ack; `wait_searchable` pushes) is answered after that commit.
//!
//! Versions make every change idempotent: a document older than the indexed one is
//! skipped, and a node deleted by an event keeps a tombstone with the version it was
//! deleted at, so an event delivered again late cannot bring it back.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use helix_core::{Error, Result};
use tantivy::collector::{DocSetCollector, TopDocs};
use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::{Index, IndexReader, IndexWriter, TantivyDocument, Term};
use tokio::sync::oneshot;

use crate::document::{Document, Fields, Indexed};
use crate::embedding::{Backlog, EmbedRequest};
use crate::vectors::{VectorOp, VectorPoint, VectorStore};

/// The least time between two commits.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// Commit once this many changes wait, even if more are coming.
const MAX_BATCH: usize = 5_000;
/// Vector changes written together while a batch is still open.
const VECTOR_FLUSH: usize = 512;
/// Memory tantivy may fill before it writes a segment (its minimum is 15 MB).
const WRITER_MEMORY: usize = 32 * 1024 * 1024;
/// A full reindex drops tombstones older than this: late deliveries come within
/// ack_wait × max_deliver (30 s × 10 by default).
const TOMBSTONE_TTL: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// One change to the index.
#[derive(Debug, Clone)]
pub enum Op {
    /// Index the document, unless a newer version (or its deletion) is indexed.
    Upsert(Box<Document>),
    /// Drop the id. With the `version` it was deleted at (a node event), a tombstone
    /// keeps older versions out; without (an explicit removal), nothing does.
    Delete { id: String, version: Option<i64> },
}

/// Who sends a change: reindexing tells its own changes apart from the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Event,
    Push,
    Reindex,
}

/// What a batch of changes did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub indexed: u32,
    pub skipped_stale: u32,
    pub removed: u32,
}

type Reply<T> = oneshot::Sender<Result<T>>;

pub(crate) enum Command {
    Apply {
        ops: Vec<Op>,
        source: Source,
        wait: bool,
        reply: Reply<Applied>,
    },
    /// From now until the reindex finishes, remember the ids others change.
    BeginReindex {
        namespace: Option<String>,
        reply: Reply<()>,
    },
    /// Drop the live documents (of the namespace) that reindexing did not see and nobody
    /// else changed meanwhile: storage no longer has them. Answers how many.
    FinishReindex {
        seen: HashSet<String>,
        reply: Reply<u64>,
    },
    AbortReindex,
    /// Vectors the embedding stage computed, each for the version it names.
    Vectors {
        embedded: Vec<(EmbedRequest, Vec<f32>)>,
    },
    Shutdown,
}

/// What the writer thread reports to readiness checks and stats.
#[derive(Debug, Default)]
pub struct WriterStatus {
    running: AtomicBool,
    /// UTC microseconds of the last commit; 0 before the first one
    last_commit: AtomicI64,
    last_error: Mutex<Option<String>>,
}

impl WriterStatus {
    pub fn new(last_commit: Option<DateTime<Utc>>) -> Self {
        let status = Self::default();
        status.running.store(true, Ordering::SeqCst);
        status.last_commit.store(last_commit.map_or(0, |t| t.timestamp_micros()), Ordering::SeqCst);
        status
    }

    pub fn last_commit(&self) -> Option<DateTime<Utc>> {
        match self.last_commit.load(Ordering::SeqCst) {
            0 => None,
            micros => Some(crate::document::micros_to_time(micros)),
        }
    }

    /// Ok while the writer runs and its last commit succeeded.
    pub fn check(&self) -> std::result::Result<(), String> {
        if !self.running.load(Ordering::SeqCst) {
            return Err("the index writer stopped".to_owned());
        }
        match self.last_error.lock().expect("status lock").as_ref() {
            Some(error) => Err(format!("the last commit failed: {error}")),
            None => Ok(()),
        }
    }
}

/// The async side of the writer: sends changes, awaits their outcome.
#[derive(Clone)]
pub struct WriterHandle {
    commands: Sender<Command>,
    pub status: Arc<WriterStatus>,
}

fn stopped() -> Error {
    Error::unavailable("the search index is shutting down")
}

impl WriterHandle {
    /// Sends changes; the answer comes once they are applied, or with `wait` once they
    /// are committed and searchable.
    pub fn submit(&self, ops: Vec<Op>, source: Source, wait: bool) -> Result<oneshot::Receiver<Result<Applied>>> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Apply { ops, source, wait, reply }).map_err(|_| stopped())?;
        Ok(answer)
    }

    pub async fn apply(&self, ops: Vec<Op>, source: Source, wait: bool) -> Result<Applied> {
        self.submit(ops, source, wait)?.await.map_err(|_| stopped())?
    }

    pub async fn begin_reindex(&self, namespace: Option<String>) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::BeginReindex { namespace, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    pub async fn finish_reindex(&self, seen: HashSet<String>) -> Result<u64> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::FinishReindex { seen, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    pub fn abort_reindex(&self) {
        let _ = self.commands.send(Command::AbortReindex);
    }

    /// Commits what is waiting and ends the writer thread.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }
}

/// Opens the index's writer; [`Writer::run`] is its thread. The sender is the
/// embedding stage's way back to it.
pub(crate) fn writer(
    index: &Index,
    reader: IndexReader,
    fields: Fields,
    last_commit: Option<DateTime<Utc>>,
    vectors: Arc<dyn VectorStore>,
    backlog: Arc<Backlog>,
) -> Result<(WriterHandle, Sender<Command>, Writer)> {
    let inner = index.writer_with_num_threads(1, WRITER_MEMORY).map_err(index_error)?;
    let known = known_ids(&reader, fields).map_err(index_error)?;
    let (commands, receiver) = std::sync::mpsc::channel();
    let status = Arc::new(WriterStatus::new(last_commit));
    let writer = Writer {
        inner,
        reader,
        fields,
        receiver,
        status: status.clone(),
        vectors,
        backlog,
        embedded: Vec::new(),
        pending_vectors: Vec::new(),
        pending: HashMap::new(),
        known,
        vectors_failed: None,
        changes: 0,
        waiting: Vec::new(),
        last_commit: Instant::now().checked_sub(COMMIT_INTERVAL).unwrap_or_else(Instant::now),
        reindex: None,
    };
    Ok((WriterHandle { commands: commands.clone(), status }, commands, writer))
}

/// Every id the index has a document for (live or tombstone), from the id field's terms
/// of every segment; ids of deleted documents not merged away yet come too.
fn known_ids(reader: &IndexReader, fields: Fields) -> tantivy::Result<HashSet<u128>> {
    let mut known = HashSet::new();
    for segment in reader.searcher().segment_readers() {
        let terms = segment.inverted_index(fields.id)?;
        let mut stream = terms.terms().stream()?;
        while stream.advance() {
            if let Some(id) = std::str::from_utf8(stream.key()).ok().and_then(|id| id.parse::<uuid::Uuid>().ok()) {
                known.insert(id.as_u128());
            }
        }
    }
    Ok(known)
}

/// The vector of a node version, as the store keeps it.
fn vector_point(request: EmbedRequest, vector: Vec<f32>) -> VectorPoint {
    VectorPoint {
        id: request.id,
        vector,
        namespace: request.namespace,
        kind: request.kind,
        tags: request.tags,
        updated_at: request.updated_at,
        version: request.version,
    }
}

fn parse_uuid(id: &str) -> Result<uuid::Uuid> {
    id.parse().map_err(|_| Error::internal(format!("the index holds an id that is not a UUID: {id:?}")))
}

pub fn index_error(error: tantivy::TantivyError) -> Error {
    Error::internal(format!("search index: {error}"))
}

struct ReindexMark {
    namespace: Option<String>,
    /// ids changed by events and pushes since the reindex began
    touched: HashSet<String>,
}

pub struct Writer {
    inner: IndexWriter<TantivyDocument>,
    /// Shared with searches: reloading it after a commit shows them the batch.
    reader: IndexReader,
    fields: Fields,
    receiver: Receiver<Command>,
    status: Arc<WriterStatus>,
    vectors: Arc<dyn VectorStore>,
    /// texts waiting for their vectors
    backlog: Arc<Backlog>,
    /// what the stage sent back in this batch, reported to the backlog once written
    embedded: Vec<EmbedRequest>,
    /// vector changes of the uncommitted batch, in order; written just before the commit
    pending_vectors: Vec<VectorOp>,
    /// What the uncommitted changes left of each id they touched (the reader does not
    /// see them yet): `None` when they removed it.
    pending: HashMap<String, Option<Indexed>>,
    /// Ids that may have a document: one that is not here needs no lookup in the index,
    /// which is most of what a burst of new nodes would cost the writer. Ids removed
    /// stay (a lookup then finds nothing).
    known: HashSet<u128>,
    /// A flush of vectors before the commit failed: the commit fails with it, so its
    /// changes are rolled back and tried again.
    vectors_failed: Option<Error>,
    /// uncommitted changes
    changes: usize,
    waiting: Vec<(Reply<Applied>, Applied)>,
    last_commit: Instant,
    reindex: Option<ReindexMark>,
}

impl Writer {
    /// Applies commands until shut down (or every handle is gone), committing in batches.
    pub fn run(mut self) {
        let mut running = true;
        while running {
            let Ok(first) = self.receiver.recv() else { break };
            running = self.handle(first);
            while running && (self.changes > 0 || !self.embedded.is_empty() || !self.waiting.is_empty()) {
                let due = self.last_commit + COMMIT_INTERVAL;
                let now = Instant::now();
                if now >= due && self.changes >= MAX_BATCH {
                    break;
                }
                let next = if now >= due {
                    self.receiver.try_recv().map_err(|e| e == TryRecvError::Disconnected)
                } else {
                    self.receiver.recv_timeout(due - now).map_err(|e| e == RecvTimeoutError::Disconnected)
                };
                match next {
                    Ok(command) => running = self.handle(command),
                    Err(disconnected) => {
                        running = !disconnected;
                        break;
                    }
                }
            }
            // a failed commit is reported to whoever waited, and to readiness checks
            let _ = self.commit();
        }
        let _ = self.commit();
        self.backlog.close();
        self.vectors.close();
        self.status.running.store(false, Ordering::SeqCst);
        tracing::debug!("search index writer stopped");
    }

    /// Handles one command; false once told to stop.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Apply { ops, source, wait, reply } => {
                let applied = self.apply_all(ops, source);
                match applied {
                    Ok(applied) if wait => self.waiting.push((reply, applied)),
                    result => {
                        let _ = reply.send(result);
                    }
                }
            }
            Command::BeginReindex { namespace, reply } => {
                self.reindex = Some(ReindexMark { namespace, touched: HashSet::new() });
                let _ = reply.send(Ok(()));
            }
            Command::FinishReindex { seen, reply } => {
                let _ = reply.send(self.finish_reindex(seen));
            }
            Command::AbortReindex => self.reindex = None,
            Command::Vectors { embedded } => self.vectors_embedded(embedded),
            Command::Shutdown => return false,
        }
        true
    }

    fn apply_all(&mut self, ops: Vec<Op>, source: Source) -> Result<Applied> {
        let mut applied = Applied::default();
        for op in ops {
            if source != Source::Reindex
                && let Some(mark) = &mut self.reindex
            {
                let id = match &op {
                    Op::Upsert(doc) => &doc.id,
                    Op::Delete { id, .. } => id,
                };
                mark.touched.insert(id.clone());
            }
            self.apply(op, &mut applied)?;
        }
        Ok(applied)
    }

    fn apply(&mut self, op: Op, applied: &mut Applied) -> Result<()> {
        match op {
            Op::Upsert(doc) => {
                if self.lookup(&doc.id)?.is_some_and(|indexed| indexed.supersedes(doc.version)) {
                    applied.skipped_stale += 1;
                    return Ok(());
                }
                let id = parse_uuid(&doc.id)?;
                self.inner.delete_term(self.fields.id_term(&doc.id));
                self.inner.add_document(self.fields.document_of(&doc)).map_err(index_error)?;
                self.known.insert(id.as_u128());
                // until the new vector is written, the old one (if any) stays: the node
                // is still found by its former meaning rather than not at all
                match doc.embedding.clone() {
                    Some(vector) => {
                        self.backlog.remove(id);
                        self.push_vector(VectorOp::Upsert(vector_point(EmbedRequest::of(id, &doc), vector)));
                    }
                    None => self.backlog.push(EmbedRequest::of(id, &doc)),
                }
                self.pending.insert(doc.id, Some(Indexed::Live { version: doc.version }));
                applied.indexed += 1;
            }
            Op::Delete { id, version: None } => {
                // an explicit removal: the id may come back with any version (from a
                // push, an event or a reindex), so it leaves no tombstone
                if !matches!(self.lookup(&id)?, Some(Indexed::Live { .. })) {
                    return Ok(());
                }
                let uuid = parse_uuid(&id)?;
                self.inner.delete_term(self.fields.id_term(&id));
                self.backlog.remove(uuid);
                self.push_vector(VectorOp::Delete(uuid));
                self.pending.insert(id, None);
                applied.removed += 1;
            }
            Op::Delete { id, version: Some(deleted) } => {
                let tombstone = match self.lookup(&id)? {
                    Some(Indexed::Live { version: live }) => {
                        applied.removed += 1;
                        live.max(deleted)
                    }
                    Some(Indexed::Tombstone { version: old }) if old >= deleted => return Ok(()),
                    _ => deleted,
                };
                let uuid = parse_uuid(&id)?;
                self.inner.delete_term(self.fields.id_term(&id));
                self.inner.add_document(self.fields.tombstone(&id, tombstone, Utc::now())).map_err(index_error)?;
                self.known.insert(uuid.as_u128());
                self.backlog.remove(uuid);
                self.push_vector(VectorOp::Delete(uuid));
                self.pending.insert(id, Some(Indexed::Tombstone { version: tombstone }));
            }
        }
        self.changes += 1;
        Ok(())
    }

    /// Vectors from the embedding stage: each is written if its document is still live at
    /// the version it was computed for, in order with the rest of the batch.
    fn vectors_embedded(&mut self, embedded: Vec<(EmbedRequest, Vec<f32>)>) {
        for (request, vector) in embedded {
            let current = self.lookup(&request.id.to_string());
            if matches!(current, Ok(Some(Indexed::Live { version })) if version == request.version) {
                self.embedded.push(request.clone());
                self.push_vector(VectorOp::Upsert(vector_point(request, vector)));
            } else {
                self.backlog.finished(1);
            }
        }
    }

    /// Queues a vector change of the uncommitted batch. Every [`VECTOR_FLUSH`] changes
    /// they are written at once, while tantivy's thread indexes the documents, instead of
    /// all at the commit, when tantivy would wait for them: a vector may so be written
    /// before its document commits (searches skip it until then), never after.
    fn push_vector(&mut self, op: VectorOp) {
        self.pending_vectors.push(op);
        if self.pending_vectors.len() >= VECTOR_FLUSH && self.vectors_failed.is_none() {
            let ops = std::mem::take(&mut self.pending_vectors);
            if let Err(error) = self.vectors.apply(ops) {
                self.vectors_failed = Some(error);
            }
        }
    }

    /// What the index holds for `id`, uncommitted changes included.
    fn lookup(&self, id: &str) -> Result<Option<Indexed>> {
        if let Some(indexed) = self.pending.get(id) {
            return Ok(*indexed);
        }
        if !self.known.contains(&parse_uuid(id)?.as_u128()) {
            return Ok(None);
        }
        let searcher = self.reader.searcher();
        let query = TermQuery::new(self.fields.id_term(id), IndexRecordOption::Basic);
        let top = searcher.search(&query, &TopDocs::with_limit(1).order_by_score()).map_err(index_error)?;
        let Some((_, address)) = top.first() else { return Ok(None) };
        let doc: TantivyDocument = searcher.doc(*address).map_err(index_error)?;
        Ok(Some(self.fields.indexed(&doc)))
    }

    /// Commits the waiting changes, reloads the reader and answers whoever waits.
    fn commit(&mut self) -> Result<()> {
        let waiting = std::mem::take(&mut self.waiting);
        let embedded = std::mem::take(&mut self.embedded);
        if self.changes == 0 {
            // only vectors of committed documents: nothing for tantivy to commit
            let wrote = !self.pending_vectors.is_empty();
            let written = self.write_vectors();
            self.settle_embedded(embedded, &written);
            if wrote {
                // a vector store that fails makes the index unready, as a failed commit does
                *self.status.last_error.lock().expect("status lock") = written.as_ref().err().map(ToString::to_string);
            }
            for (reply, applied) in waiting {
                let _ = reply.send(Ok(applied));
            }
            return written;
        }
        let at = Utc::now();
        // vectors first: a failed full-text commit is redone (events redelivered,
        // pushes retried) and writing a vector again changes nothing
        let written = self.write_vectors();
        self.settle_embedded(embedded, &written);
        let result = written.and_then(|()| self.commit_at(at));
        self.pending.clear();
        self.changes = 0;
        self.last_commit = Instant::now();
        match &result {
            Ok(()) => {
                self.status.last_commit.store(at.timestamp_micros(), Ordering::SeqCst);
                *self.status.last_error.lock().expect("status lock") = None;
                for (reply, applied) in waiting {
                    let _ = reply.send(Ok(applied));
                }
            }
            Err(error) => {
                tracing::error!(%error, "search index commit failed, changes rolled back");
                *self.status.last_error.lock().expect("status lock") = Some(error.to_string());
                if let Err(error) = self.inner.rollback() {
                    tracing::error!(%error, "search index rollback failed");
                }
                for (reply, _) in waiting {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
        result
    }

    /// Writes the batch's vector changes not written yet, or fails with the error of an
    /// earlier run of them (the batch is then redone).
    fn write_vectors(&mut self) -> Result<()> {
        let vectors = std::mem::take(&mut self.pending_vectors);
        match self.vectors_failed.take() {
            Some(error) => Err(error),
            None => self.vectors.apply(vectors),
        }
    }

    /// Tells the backlog the stage's vectors of this batch are written, or queues them
    /// again when writing failed. (A failed full-text commit after them is redone with
    /// its documents, which queue their texts again.)
    fn settle_embedded(&self, embedded: Vec<EmbedRequest>, written: &Result<()>) {
        if embedded.is_empty() {
            return;
        }
        match written {
            Ok(()) => self.backlog.finished(embedded.len()),
            Err(error) => {
                tracing::warn!(%error, vectors = embedded.len(), "writing vectors failed; they are embedded again");
                self.backlog.put_back_failed(embedded);
            }
        }
    }

    fn commit_at(&mut self, at: DateTime<Utc>) -> Result<()> {
        let mut prepared = self.inner.prepare_commit().map_err(index_error)?;
        prepared.set_payload(&serde_json::json!({ "committed_at_micros": at.timestamp_micros() }).to_string());
        prepared.commit().map_err(index_error)?;
        self.reader.reload().map_err(index_error)
    }

    fn finish_reindex(&mut self, seen: HashSet<String>) -> Result<u64> {
        let Some(mark) = self.reindex.take() else {
            return Err(Error::internal("no reindex is running"));
        };
        // the reader must see every change before the live documents are listed
        self.commit()?;
        let f = self.fields;
        let mut live: Vec<(Occur, Box<dyn Query>)> =
            vec![(Occur::Must, Box::new(TermQuery::new(f.live_term(), IndexRecordOption::Basic)))];
        if let Some(namespace) = &mark.namespace {
            let term = Term::from_field_text(f.namespace, namespace);
            live.push((Occur::Must, Box::new(TermQuery::new(term, IndexRecordOption::Basic))));
        }
        let searcher = self.reader.searcher();
        let addresses = searcher.search(&BooleanQuery::new(live), &DocSetCollector).map_err(index_error)?;
        let mut gone = Vec::new();
        for address in addresses {
            let doc: TantivyDocument = searcher.doc(address).map_err(index_error)?;
            let id = f.read(&doc).id;
            if !seen.contains(&id) && !mark.touched.contains(&id) {
                gone.push(Op::Delete { id, version: None });
            }
        }
        let pruned = gone.len() as u64;
        let mut applied = Applied::default();
        for op in gone {
            self.apply(op, &mut applied)?;
        }
        if mark.namespace.is_none() {
            let cutoff = Utc::now() - TOMBSTONE_TTL;
            let old = Term::from_field_i64(f.updated_at, cutoff.timestamp_micros());
            let query = BooleanQuery::new(vec![
                (Occur::Must, Box::new(TermQuery::new(f.tombstone_term(), IndexRecordOption::Basic)) as Box<dyn Query>),
                (Occur::Must, Box::new(RangeQuery::new(std::ops::Bound::Unbounded, std::ops::Bound::Excluded(old)))),
            ]);
            self.inner.delete_query(Box::new(query)).map_err(index_error)?;
            self.changes += 1;
        }
        self.commit()?;
        Ok(pruned)
    }
}
