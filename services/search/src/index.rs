//! The index of one replica — tantivy for words, a vector store for meaning: opening
//! both, searching them (fulltext, semantic, and hybrid by reciprocal rank fusion),
//! suggesting, measuring.
//! Writing is the [`writer`](crate::writer) thread's; everything here runs on blocking
//! threads, never on the async executor.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use helix_core::{Error, Result};
use tantivy::collector::{Count, DocSetCollector, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::{Query, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::snippet::SnippetGenerator;
use tantivy::{Index, IndexReader, ReloadPolicy, Searcher, TantivyDocument};
use tokio_util::task::TaskTracker;

use helix_embed::Embedder;

use crate::document::{Document, Fields, Indexed};
use crate::embedding::{Backlog, EmbedRequest};
use crate::query::{Mode, Operator, QueryBuilder, SearchQuery};
use crate::vectors::{EmbedderMark, FlatVectors, Neighbour, QdrantSettings, QdrantVectors, VectorFilter, VectorStore};
use crate::writer::{self, WriterHandle, index_error};

/// Longest highlighted fragment of the content, in characters.
const CONTENT_FRAGMENT_CHARS: usize = 200;
/// A title is highlighted whole (titles are at most 512 characters).
const TITLE_FRAGMENT_CHARS: usize = 512;

/// Where a hit stood in one of the ranked lists a search fused, and its score there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    /// 1 for the first
    pub rank: u32,
    /// BM25 on the full-text side, cosine similarity on the vector side
    pub score: f64,
}

/// One hit of a search.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub document: Document,
    /// what the hits are ranked by: BM25 (fulltext), cosine similarity (semantic) or
    /// the fused reciprocal-rank score (hybrid)
    pub score: f64,
    pub fulltext: Option<Ranked>,
    pub vector: Option<Ranked>,
    /// when asked: the content's best fragment, then the title, each only when it has
    /// a match, matches in `<mark></mark>` (the text HTML-escaped)
    pub highlights: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchResults {
    pub hits: Vec<Hit>,
    /// matches of the query and filters (before `min_score`); an estimate when vectors
    /// took part (the vector side has no count, only its nearest candidates)
    pub total_hits: u64,
    /// the offset of the next page, when more hits follow
    pub next_offset: Option<usize>,
    pub mode: Mode,
    /// the whole search, the query's embedding included
    pub took_ms: u32,
    /// embedding the query text (0 when cached or not needed)
    pub embedding_ms: f64,
    /// documents searchable by words whose vectors are not written yet
    pub vectors_pending: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub documents: u64,
    pub vectors: u64,
    /// documents searchable by words whose vectors are not written yet
    pub vectors_pending: u64,
    pub index_bytes: u64,
    pub namespaces: Vec<(String, u64)>,
    pub last_commit: Option<DateTime<Utc>>,
}

/// How the index is opened.
pub struct IndexSettings {
    /// the full-text index's directory
    pub path: PathBuf,
    /// where the vectors live
    pub vectors: VectorBackend,
    pub embedder: Arc<dyn Embedder>,
    /// the `k` of reciprocal rank fusion: 1/(k + rank)
    pub rrf_k: f64,
    /// vector neighbours less similar are not hits
    pub min_similarity: f64,
}

/// Where a replica keeps its vectors.
pub enum VectorBackend {
    /// its own embedded vector store in this directory
    Embedded(PathBuf),
    /// a Qdrant deployment the replicas share
    Qdrant(QdrantSettings),
}

/// What opening found.
pub struct Opened {
    pub index: Arc<SearchIndex>,
    /// the full-text index was created empty
    pub created: bool,
    /// the vector store was created empty (first start, or a new embedder)
    pub vectors_created: bool,
}

/// The index of this replica, shared by the rpcs and the event indexer.
pub struct SearchIndex {
    reader: IndexReader,
    fields: Fields,
    queries: QueryBuilder,
    path: PathBuf,
    pub writer: WriterHandle,
    pub vectors: Arc<dyn VectorStore>,
    /// documents waiting for their vectors
    pub backlog: Arc<Backlog>,
    pub embedder: Arc<dyn Embedder>,
    rrf_k: f64,
    min_similarity: f64,
    /// recent queries' vectors: a repeated query skips the model
    query_vectors: Mutex<HashMap<String, Arc<Vec<f32>>>>,
    /// Where blocking work runs, so shutdown waits for it.
    tasks: TaskTracker,
    reindexing: AtomicBool,
}

/// Queries whose vectors are kept; the cache is emptied when full.
const QUERY_CACHE: usize = 1024;
/// The least number of candidates hybrid search takes from each side.
const FUSION_CANDIDATES: usize = 50;

/// Marks the one reindex running; dropping it ends the mark.
pub struct ReindexGuard(Arc<SearchIndex>);

impl Drop for ReindexGuard {
    fn drop(&mut self) {
        self.0.reindexing.store(false, Ordering::SeqCst);
    }
}

impl SearchIndex {
    /// Opens the index at `path`, creating it when the directory holds none, and starts
    /// its writer thread on `tasks`. Answers whether the index was created.
    pub fn open(settings: IndexSettings, tasks: TaskTracker) -> Result<Opened> {
        let IndexSettings { path, vectors, embedder, rrf_k, min_similarity } = settings;
        let path = path.as_path();
        let info = embedder.info();
        let mark = EmbedderMark { name: info.name.clone(), dim: info.dim };
        let fulltext_exists = path.exists()
            && MmapDirectory::open(path).ok().is_some_and(|directory| Index::exists(&directory).unwrap_or(false));
        let (vectors, vectors_created): (Arc<dyn VectorStore>, bool) = match vectors {
            VectorBackend::Embedded(vectors_path) => {
                let (store, created) = FlatVectors::open(&vectors_path, &mark, !fulltext_exists)?;
                (Arc::new(store), created)
            }
            // shared with the other replicas: a new full-text index here is no reason
            // to drop them (start-up reindexes what this replica lacks)
            VectorBackend::Qdrant(settings) => {
                let (store, created) = QdrantVectors::open(&settings, &mark, tokio::runtime::Handle::current())?;
                (Arc::new(store), created)
            }
        };
        std::fs::create_dir_all(path)
            .map_err(|e| Error::internal(format!("search index directory {}: {e}", path.display())))?;
        let directory = MmapDirectory::open(path).map_err(|e| Error::internal(format!("search index: {e}")))?;
        let created = !Index::exists(&directory).map_err(|e| Error::internal(format!("search index: {e}")))?;
        let (schema, fields) = Fields::schema();
        let index = Index::open_or_create(directory, schema).map_err(|error| {
            Error::internal(format!(
                "search index at {} cannot be opened ({error}); move it away and run Reindex to rebuild it",
                path.display()
            ))
        })?;
        let last_commit = index
            .load_metas()
            .ok()
            .and_then(|metas| metas.payload)
            .and_then(|payload| serde_json::from_str::<serde_json::Value>(&payload).ok())
            .and_then(|payload| payload["committed_at_micros"].as_i64())
            .map(crate::document::micros_to_time);
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().map_err(index_error)?;
        let backlog = Arc::new(Backlog::default());
        let (handle, to_writer, writer) =
            writer::writer(&index, reader.clone(), fields, last_commit, vectors.clone(), backlog.clone())?;
        tasks.spawn(crate::embedding::run(backlog.clone(), to_writer, embedder.clone()));
        // A thread of its own rather than the runtime's blocking pool: a runtime that is
        // dropped without a shutdown (a panicking test) must not wait for it. Shutdown
        // still waits for it, through the task that awaits its end.
        let (ended, end) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("search-writer".to_owned())
            .spawn(move || {
                writer.run();
                drop(ended);
            })
            .map_err(|e| Error::internal(format!("starting the search index writer: {e}")))?;
        tasks.spawn(async move {
            let _ = end.await;
        });
        let queries = QueryBuilder::new(&index, fields);
        let index = SearchIndex {
            reader,
            fields,
            queries,
            path: path.to_owned(),
            writer: handle,
            vectors,
            backlog,
            embedder,
            rrf_k,
            min_similarity,
            query_vectors: Mutex::new(HashMap::new()),
            tasks,
            reindexing: AtomicBool::new(false),
        };
        Ok(Opened { index: Arc::new(index), created, vectors_created })
    }

    /// Claims the one reindex a replica runs at a time.
    pub fn claim_reindex(self: &Arc<Self>) -> Result<ReindexGuard> {
        if self.reindexing.swap(true, Ordering::SeqCst) {
            return Err(Error::conflict("reindex_running", "a reindex is already running on this replica"));
        }
        Ok(ReindexGuard(self.clone()))
    }

    /// Ok while the index is open and its writer works.
    pub fn check(&self) -> std::result::Result<(), String> {
        self.writer.status.check()?;
        self.reader.searcher().num_docs();
        Ok(())
    }

    pub async fn search(self: &Arc<Self>, query: SearchQuery) -> Result<SearchResults> {
        let started = Instant::now();
        let (vector, embedding_ms) = match query.mode {
            Mode::Fulltext => (None, 0.0),
            Mode::Semantic | Mode::Hybrid => {
                let embedding = Instant::now();
                let vector = self.query_vector(&query.text).await?;
                (Some(vector), embedding.elapsed().as_secs_f64() * 1e3)
            }
        };
        let index = self.clone();
        let mut results = self.blocking(move || index.search_now(&query, vector.as_deref().map(Vec::as_slice))).await?;
        results.embedding_ms = embedding_ms;
        results.took_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        results.vectors_pending = self.backlog.pending();
        Ok(results)
    }

    /// The nearest neighbours of an indexed node (itself left out), by the vector of
    /// its text.
    pub async fn similar(
        self: &Arc<Self>,
        id: uuid::Uuid,
        filter: VectorFilter,
        limit: usize,
        min_score: Option<f64>,
    ) -> Result<SearchResults> {
        let started = Instant::now();
        let index = self.clone();
        let key = id.to_string();
        let text = self
            .blocking(move || {
                let searcher = index.reader.searcher();
                let doc = index
                    .live_document(&searcher, &key)?
                    .ok_or_else(|| Error::not_found("not_indexed", format!("node {key} is not in the search index")))?;
                Ok(index.fields.read(&doc).embedding_text())
            })
            .await?;
        let embedding = Instant::now();
        let mut vectors =
            self.embedder.embed(&[text]).await.map_err(|e| Error::unavailable(format!("embedding failed: {e}")))?;
        let vector = vectors.pop().ok_or_else(|| Error::internal("the embedder answered no vector"))?;
        let embedding_ms = embedding.elapsed().as_secs_f64() * 1e3;
        let index = self.clone();
        let mut results = self
            .blocking(move || {
                let searcher = index.reader.searcher();
                let mut nearest = index.nearest(&vector, &filter, limit + 1)?;
                nearest.retain(|n| n.id != id);
                nearest.truncate(limit);
                let candidates = index.vector_candidates(&searcher, nearest, &filter)?;
                let hits: Vec<Hit> = candidates
                    .into_iter()
                    .take_while(|c| min_score.is_none_or(|min| c.score >= min))
                    .map(|c| Hit {
                        document: index.fields.read(&c.doc),
                        score: c.score,
                        fulltext: None,
                        vector: c.vector,
                        highlights: Vec::new(),
                    })
                    .collect();
                Ok(SearchResults {
                    total_hits: hits.len() as u64,
                    hits,
                    next_offset: None,
                    mode: Mode::Semantic,
                    took_ms: 0,
                    embedding_ms: 0.0,
                    vectors_pending: 0,
                })
            })
            .await?;
        results.embedding_ms = embedding_ms;
        results.took_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        Ok(results)
    }

    /// Completions of the last word of `typed` (from the words of matching titles), and
    /// the best matching titles, for a search box: every word typed must be in the
    /// title, the last one as a prefix.
    pub async fn suggest(
        self: &Arc<Self>,
        typed: String,
        namespaces: Vec<String>,
        limit: usize,
    ) -> Result<Suggestions> {
        let index = self.clone();
        self.blocking(move || index.suggest_now(&typed, namespaces, limit)).await
    }

    fn suggest_now(&self, typed: &str, namespaces: Vec<String>, limit: usize) -> Result<Suggestions> {
        let words: Vec<String> = typed
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .take(16)
            .map(str::to_lowercase)
            .collect();
        let ends_in_word = typed.chars().last().is_some_and(char::is_alphanumeric);
        let Some((last, before)) = words.split_last().filter(|_| ends_in_word) else {
            return Ok(Suggestions::default());
        };
        // titles only: a suggestion is a title, or a word of one
        let mut text: String = before.iter().map(|w| format!("title:{w} ")).collect();
        text.push_str(&format!("title:{last}*"));
        let mut search = SearchQuery::new(text.clone(), limit as u32, "")?.namespaces(namespaces)?;
        search.mode = Mode::Fulltext;
        let searcher = self.reader.searcher();
        let query = self.queries.text(&text, Operator::And);
        let (top, _) = self.fulltext_top(&searcher, query.as_ref(), &search, SUGGEST_SCAN)?;
        let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
        let mut titles = Vec::with_capacity(limit);
        for (order, candidate) in top.iter().enumerate() {
            let document = self.fields.read(&candidate.doc);
            for word in document.title.split(|c: char| !c.is_alphanumeric()) {
                let lower = word.to_lowercase();
                if lower.starts_with(last.as_str()) {
                    counts.entry(lower).or_insert((0, order)).0 += 1;
                }
            }
            if titles.len() < limit && !document.title.is_empty() {
                titles.push((document.id, document.title));
            }
        }
        let mut completed: Vec<(String, (usize, usize))> = counts.into_iter().collect();
        // most frequent first, then the one of the better hit
        completed.sort_by(|(a, (an, ao)), (b, (bn, bo))| bn.cmp(an).then(ao.cmp(bo)).then(a.cmp(b)));
        let prefix: String = before.iter().map(|w| format!("{w} ")).collect();
        let completions = completed.into_iter().take(limit).map(|(word, _)| format!("{prefix}{word}")).collect();
        Ok(Suggestions { completions, titles })
    }

    /// The indexed version of each id that has a live document and a vector of that
    /// version: what a reindex need not embed again.
    pub async fn embedded_versions(self: &Arc<Self>, ids: Vec<String>) -> Result<HashMap<String, i64>> {
        let index = self.clone();
        self.blocking(move || {
            let searcher = index.reader.searcher();
            let mut live = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(doc) = index.live_document(&searcher, &id)?
                    && let Ok(uuid) = id.parse::<uuid::Uuid>()
                {
                    live.push((id, uuid, index.fields.read_version(&doc)));
                }
            }
            let uuids: Vec<uuid::Uuid> = live.iter().map(|(_, uuid, _)| *uuid).collect();
            let vectors = index.vectors.versions(&uuids)?;
            Ok(live
                .into_iter()
                .zip(vectors)
                .filter(|((.., version), vector)| *vector == Some(*version))
                .map(|((id, _, version), _)| (id, version))
                .collect())
        })
        .await
    }

    /// Waits until the committed index shows each node at its version or a later one
    /// (deleted since counts), by words and with `vectors` by meaning too: read-your-
    /// writes for the client that wrote them. Checked every few milliseconds; a
    /// `Timeout` error after `timeout` says what is still missing.
    pub async fn wait_indexed(
        self: &Arc<Self>,
        nodes: Vec<(uuid::Uuid, i64)>,
        vectors: bool,
        timeout: Duration,
    ) -> Result<()> {
        const POLL: Duration = Duration::from_millis(5);
        let deadline = Instant::now() + timeout;
        let mut waiting = nodes;
        loop {
            let index = self.clone();
            let pending = std::mem::take(&mut waiting);
            waiting = self.blocking(move || index.not_yet_indexed(pending, vectors)).await?;
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let side = if vectors { "searchable by words and meaning" } else { "searchable" };
                return Err(Error::new(
                    helix_core::ErrorKind::Timeout,
                    "index_timeout",
                    format!(
                        "stored, but {} of the nodes (first {}) were not {side} within {} ms; {} documents wait for \
                         vectors",
                        waiting.len(),
                        waiting[0].0,
                        timeout.as_millis(),
                        self.backlog.pending()
                    ),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Which of the nodes the committed index does not show at their version yet.
    fn not_yet_indexed(&self, nodes: Vec<(uuid::Uuid, i64)>, vectors: bool) -> Result<Vec<(uuid::Uuid, i64)>> {
        let searcher = self.reader.searcher();
        let mut live_at = Vec::new();
        let mut missing = Vec::new();
        for (id, version) in nodes {
            let indexed = self.indexed_document(&searcher, &id.to_string())?.map(|doc| self.fields.indexed(&doc));
            match indexed {
                Some(Indexed::Tombstone { version: deleted }) if deleted >= version => {}
                Some(Indexed::Live { version: live }) if live >= version => {
                    if vectors {
                        live_at.push((id, version, live));
                    }
                }
                _ => missing.push((id, version)),
            }
        }
        if !live_at.is_empty() {
            let ids: Vec<uuid::Uuid> = live_at.iter().map(|(id, ..)| *id).collect();
            for ((id, version, live), vector) in live_at.into_iter().zip(self.vectors.versions(&ids)?) {
                if vector.is_none_or(|vector| vector < live) {
                    missing.push((id, version));
                }
            }
        }
        Ok(missing)
    }

    /// Queues every live document whose vector is missing or of an older version: what
    /// the backlog held when the process stopped, or all of them under a new embedder.
    /// Answers how many.
    pub async fn queue_lagging_vectors(self: &Arc<Self>) -> Result<u64> {
        const PAGE: usize = 512;
        let index = self.clone();
        self.blocking(move || {
            let searcher = index.reader.searcher();
            let live = searcher.search(&index.queries.live(None), &DocSetCollector).map_err(index_error)?;
            let mut queued = 0;
            let addresses: Vec<_> = live.into_iter().collect();
            for page in addresses.chunks(PAGE) {
                let mut docs = Vec::with_capacity(page.len());
                for address in page {
                    let doc: TantivyDocument = searcher.doc(*address).map_err(index_error)?;
                    let doc = index.fields.read(&doc);
                    if let Ok(uuid) = doc.id.parse::<uuid::Uuid>() {
                        docs.push((uuid, doc));
                    }
                }
                let uuids: Vec<uuid::Uuid> = docs.iter().map(|(uuid, _)| *uuid).collect();
                for ((uuid, doc), vector) in docs.into_iter().zip(index.vectors.versions(&uuids)?) {
                    if vector != Some(doc.version) {
                        index.backlog.push(EmbedRequest::of(uuid, &doc));
                        queued += 1;
                    }
                }
            }
            Ok(queued)
        })
        .await
    }

    /// The vector of a query text, from the cache or the embedder.
    async fn query_vector(&self, text: &str) -> Result<Arc<Vec<f32>>> {
        if let Some(vector) = self.query_vectors.lock().expect("query cache lock").get(text) {
            return Ok(vector.clone());
        }
        let mut vectors = self
            .embedder
            .embed(&[text.to_owned()])
            .await
            .map_err(|e| Error::unavailable(format!("embedding the query failed: {e}")))?;
        let vector = Arc::new(vectors.pop().ok_or_else(|| Error::internal("the embedder answered no vector"))?);
        let mut cache = self.query_vectors.lock().expect("query cache lock");
        if cache.len() >= QUERY_CACHE {
            cache.clear();
        }
        cache.insert(text.to_owned(), vector.clone());
        Ok(vector)
    }

    pub async fn stats(self: &Arc<Self>, namespace: Option<String>) -> Result<Stats> {
        let index = self.clone();
        self.blocking(move || index.stats_now(namespace.as_deref())).await
    }

    async fn blocking<T: Send + 'static>(&self, work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        self.tasks.spawn_blocking(work).await.map_err(|e| Error::internal(format!("search task failed: {e}")))?
    }

    fn search_now(&self, search: &SearchQuery, vector: Option<&[f32]>) -> Result<SearchResults> {
        let searcher = self.reader.searcher();
        let text = self.queries.text(&search.text, search.operator);
        let depth = search.offset + search.limit;
        let (candidates, total_hits, more_beyond) = match (search.mode, vector) {
            (Mode::Fulltext, _) | (_, None) => {
                let (top, total) = self.fulltext_top(&searcher, text.as_ref(), search, depth)?;
                let more = total > depth as u64;
                (top, total, more)
            }
            (Mode::Semantic, Some(vector)) => {
                // one more than the page reaches tells whether another page follows
                let filter = vector_filter(search);
                let nearest = self.nearest(vector, &filter, depth + 1)?;
                let more = nearest.len() > depth;
                let total = nearest.len() as u64;
                (self.vector_candidates(&searcher, nearest, &filter)?, total, more)
            }
            (Mode::Hybrid, Some(vector)) => {
                let wanted = depth.max(FUSION_CANDIDATES);
                let (full_text, total) = self.fulltext_top(&searcher, text.as_ref(), search, wanted)?;
                let filter = vector_filter(search);
                let nearest = self.nearest(vector, &filter, wanted)?;
                let fused = self.fuse(&searcher, full_text, nearest, &filter, search.vector_weight)?;
                let vector_only = fused.iter().filter(|c| c.fulltext.is_none()).count() as u64;
                let more = fused.len() > depth || total > wanted as u64;
                (fused, total + vector_only, more)
            }
        };
        let snippets = match search.highlight {
            true => Some(self.snippet_generators(&searcher, text.as_ref())?),
            false => None,
        };
        let mut hits = Vec::with_capacity(search.limit);
        let mut below_min = false;
        for candidate in candidates.into_iter().skip(search.offset).take(search.limit) {
            if search.min_score.is_some_and(|min| candidate.score < min) {
                below_min = true;
                break;
            }
            let highlights = match &snippets {
                Some((title, content)) => {
                    [content.snippet_from_doc(&candidate.doc), title.snippet_from_doc(&candidate.doc)]
                        .into_iter()
                        .filter(|snippet| !snippet.highlighted().is_empty())
                        .map(|mut snippet| {
                            snippet.set_snippet_prefix_postfix("<mark>", "</mark>");
                            snippet.to_html()
                        })
                        .collect()
                }
                None => Vec::new(),
            };
            hits.push(Hit {
                document: self.fields.read(&candidate.doc),
                score: candidate.score,
                fulltext: candidate.fulltext,
                vector: candidate.vector,
                highlights,
            });
        }
        let more = hits.len() == search.limit && !below_min && more_beyond;
        Ok(SearchResults {
            hits,
            total_hits,
            next_offset: more.then_some(depth),
            mode: if vector.is_some() { search.mode } else { Mode::Fulltext },
            took_ms: 0,
            embedding_ms: 0.0,
            vectors_pending: 0,
        })
    }

    /// The best `n` full-text matches (live, filtered), best first, and how many match.
    fn fulltext_top(
        &self,
        searcher: &Searcher,
        text: &dyn Query,
        search: &SearchQuery,
        n: usize,
    ) -> Result<(Vec<Candidate>, u64)> {
        let query = self.queries.filtered(text.box_clone(), search);
        let collector = (TopDocs::with_limit(n.max(1)).order_by_score(), Count);
        let (top, total) = searcher.search(&query, &collector).map_err(index_error)?;
        let mut candidates = Vec::with_capacity(top.len());
        for (rank, (score, address)) in top.into_iter().enumerate() {
            let doc: TantivyDocument = searcher.doc(address).map_err(index_error)?;
            let score = f64::from(score);
            let fulltext = Some(Ranked { rank: rank as u32 + 1, score });
            candidates.push(Candidate { doc, score, fulltext, vector: None });
        }
        Ok((candidates, total as u64))
    }

    /// The `limit` nearest neighbours at least as similar as the floor.
    fn nearest(&self, vector: &[f32], filter: &VectorFilter, limit: usize) -> Result<Vec<Neighbour>> {
        let mut nearest = self.vectors.search(vector, filter, limit)?;
        nearest.retain(|n| f64::from(n.similarity) >= self.min_similarity);
        Ok(nearest)
    }

    /// The live documents of vector neighbours, nearest first. A neighbour whose
    /// document the reader does not hold (not committed yet, or gone) is left out.
    fn vector_candidates(
        &self,
        searcher: &Searcher,
        nearest: Vec<Neighbour>,
        filter: &VectorFilter,
    ) -> Result<Vec<Candidate>> {
        let mut candidates = Vec::with_capacity(nearest.len());
        for (rank, neighbour) in nearest.into_iter().enumerate() {
            let Some(doc) = self.vector_document(searcher, &neighbour.id.to_string(), filter)? else { continue };
            let score = f64::from(neighbour.similarity);
            let vector = Some(Ranked { rank: rank as u32 + 1, score });
            candidates.push(Candidate { doc, score, fulltext: None, vector });
        }
        Ok(candidates)
    }

    /// Reciprocal rank fusion: each list adds `weight / (k + rank)` for the documents
    /// it ranks; the fused list is ordered by the sum (ties by id, so pages are stable).
    /// Weights are `2 (1 − vector_weight)` and `2 vector_weight`: 0.5 is plain RRF.
    fn fuse(
        &self,
        searcher: &Searcher,
        full_text: Vec<Candidate>,
        nearest: Vec<Neighbour>,
        filter: &VectorFilter,
        vector_weight: f64,
    ) -> Result<Vec<Candidate>> {
        let (text_weight, vector_weight) = (2.0 * (1.0 - vector_weight), 2.0 * vector_weight);
        let k = self.rrf_k;
        let mut fused: HashMap<String, Candidate> = HashMap::with_capacity(full_text.len() + nearest.len());
        for mut candidate in full_text {
            let rank = candidate.fulltext.map_or(0, |r| r.rank);
            candidate.score = text_weight / (k + f64::from(rank));
            fused.insert(self.fields.read_id(&candidate.doc), candidate);
        }
        for (rank, neighbour) in nearest.into_iter().enumerate() {
            let ranked = Ranked { rank: rank as u32 + 1, score: f64::from(neighbour.similarity) };
            let share = vector_weight / (k + f64::from(ranked.rank));
            let id = neighbour.id.to_string();
            match fused.get_mut(&id) {
                Some(candidate) => {
                    candidate.vector = Some(ranked);
                    candidate.score += share;
                }
                None => {
                    if let Some(doc) = self.vector_document(searcher, &id, filter)? {
                        fused.insert(id, Candidate { doc, score: share, fulltext: None, vector: Some(ranked) });
                    }
                }
            }
        }
        let mut fused: Vec<(String, Candidate)> = fused.into_iter().collect();
        fused.sort_by(|(a_id, a), (b_id, b)| b.score.total_cmp(&a.score).then_with(|| a_id.cmp(b_id)));
        Ok(fused.into_iter().map(|(_, candidate)| candidate).collect())
    }

    /// The live document of a vector hit, if it passes the search's filters. The vector's
    /// own filter fields may be those of an older version (it stays until its successor
    /// is written): a node moved to another namespace must not be found in the old one.
    fn vector_document(&self, searcher: &Searcher, id: &str, filter: &VectorFilter) -> Result<Option<TantivyDocument>> {
        Ok(self.live_document(searcher, id)?.filter(|doc| filter.admits(&self.fields.read(doc))))
    }

    /// The live document of `id`, if the reader holds one.
    fn live_document(&self, searcher: &Searcher, id: &str) -> Result<Option<TantivyDocument>> {
        let doc = self.indexed_document(searcher, id)?;
        Ok(doc.filter(|doc| matches!(self.fields.indexed(doc), Indexed::Live { .. })))
    }

    /// The document the reader holds for `id`: live or a tombstone.
    fn indexed_document(&self, searcher: &Searcher, id: &str) -> Result<Option<TantivyDocument>> {
        let query = TermQuery::new(self.fields.id_term(id), IndexRecordOption::Basic);
        let top = searcher.search(&query, &TopDocs::with_limit(1).order_by_score()).map_err(index_error)?;
        let Some((_, address)) = top.first() else { return Ok(None) };
        Ok(Some(searcher.doc(*address).map_err(index_error)?))
    }

    fn snippet_generators(
        &self,
        searcher: &Searcher,
        text: &dyn Query,
    ) -> Result<(SnippetGenerator, SnippetGenerator)> {
        let mut title = SnippetGenerator::create(searcher, text, self.fields.title).map_err(index_error)?;
        title.set_max_num_chars(TITLE_FRAGMENT_CHARS);
        let mut content = SnippetGenerator::create(searcher, text, self.fields.content).map_err(index_error)?;
        content.set_max_num_chars(CONTENT_FRAGMENT_CHARS);
        Ok((title, content))
    }

    fn stats_now(&self, namespace: Option<&str>) -> Result<Stats> {
        let searcher = self.reader.searcher();
        let count = |namespace: Option<&str>| -> Result<u64> {
            let query = self.queries.live(namespace);
            Ok(searcher.search(&query, &Count).map_err(index_error)? as u64)
        };
        let documents = count(namespace)?;
        let names: BTreeSet<String> = match namespace {
            Some(namespace) => BTreeSet::from([namespace.to_owned()]),
            None => {
                // every namespace term of every segment (terms of deleted documents linger
                // until a merge: those count 0 and are left out)
                let mut names = BTreeSet::new();
                for segment in searcher.segment_readers() {
                    let inverted = segment.inverted_index(self.fields.namespace).map_err(index_error)?;
                    let mut terms =
                        inverted.terms().stream().map_err(|e| Error::internal(format!("search index: {e}")))?;
                    while terms.advance() {
                        names.insert(String::from_utf8_lossy(terms.key()).into_owned());
                    }
                }
                names
            }
        };
        let mut namespaces = Vec::with_capacity(names.len());
        for name in names {
            let n = count(Some(&name))?;
            if n > 0 {
                namespaces.push((name, n));
            }
        }
        Ok(Stats {
            documents,
            vectors: self.vectors.count(),
            vectors_pending: self.backlog.pending(),
            index_bytes: directory_bytes(&self.path),
            namespaces,
            last_commit: self.writer.status.last_commit(),
        })
    }
}

/// What a search box may offer for what was typed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Suggestions {
    pub completions: Vec<String>,
    /// (id, title)
    pub titles: Vec<(String, String)>,
}

/// Hits whose titles are read for completions.
const SUGGEST_SCAN: usize = 50;

/// A document in a ranked list, with its final score.
struct Candidate {
    doc: TantivyDocument,
    score: f64,
    fulltext: Option<Ranked>,
    vector: Option<Ranked>,
}

fn vector_filter(search: &SearchQuery) -> VectorFilter {
    VectorFilter {
        namespaces: search.namespaces.clone(),
        kinds: search.kinds.clone(),
        tags: search.tags.clone(),
        updated_after: search.updated_after.map(|t| t.timestamp_micros()),
        updated_before: search.updated_before.map(|t| t.timestamp_micros()),
    }
}

/// The size of the files of the index directory (tantivy keeps no subdirectories).
fn directory_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries.flatten().filter_map(|entry| entry.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
}
