//! The full-text index of one replica: opening it on disk, searching it, measuring it.
//! Writing is the [`writer`](crate::writer) thread's; everything here runs on blocking
//! threads, never on the async executor.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use chrono::{DateTime, Utc};
use helix_core::{Error, Result};
use tantivy::collector::{Count, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::Query;
use tantivy::snippet::SnippetGenerator;
use tantivy::{Index, IndexReader, ReloadPolicy, Searcher, TantivyDocument};
use tokio_util::task::TaskTracker;

use crate::document::{Document, Fields};
use crate::query::{QueryBuilder, SearchQuery};
use crate::writer::{self, WriterHandle, index_error};

/// Longest highlighted fragment of the content, in characters.
const CONTENT_FRAGMENT_CHARS: usize = 200;
/// A title is highlighted whole (titles are at most 512 characters).
const TITLE_FRAGMENT_CHARS: usize = 512;

/// One hit of a search.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub document: Document,
    /// BM25 with the field boosts
    pub score: f64,
    /// when asked: the content's best fragment, then the title, each only when it has
    /// a match, matches in `<mark></mark>` (the text HTML-escaped)
    pub highlights: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchResults {
    pub hits: Vec<Hit>,
    /// matches of the query and filters (before `min_score`)
    pub total_hits: u64,
    /// the offset of the next page, when more hits follow
    pub next_offset: Option<usize>,
    pub took_ms: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub documents: u64,
    pub index_bytes: u64,
    pub namespaces: Vec<(String, u64)>,
    pub last_commit: Option<DateTime<Utc>>,
}

/// The index of this replica, shared by the rpcs and the event indexer.
pub struct SearchIndex {
    reader: IndexReader,
    fields: Fields,
    queries: QueryBuilder,
    path: PathBuf,
    pub writer: WriterHandle,
    /// Where blocking work runs, so shutdown waits for it.
    tasks: TaskTracker,
    reindexing: AtomicBool,
}

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
    pub fn open(path: &Path, tasks: TaskTracker) -> Result<(Arc<SearchIndex>, bool)> {
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
        let (handle, writer) = writer::writer(&index, reader.clone(), fields, last_commit)?;
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
            tasks,
            reindexing: AtomicBool::new(false),
        };
        Ok((Arc::new(index), created))
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
        let index = self.clone();
        self.blocking(move || index.search_now(&query)).await
    }

    pub async fn stats(self: &Arc<Self>, namespace: Option<String>) -> Result<Stats> {
        let index = self.clone();
        self.blocking(move || index.stats_now(namespace.as_deref())).await
    }

    async fn blocking<T: Send + 'static>(&self, work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        self.tasks.spawn_blocking(work).await.map_err(|e| Error::internal(format!("search task failed: {e}")))?
    }

    fn search_now(&self, search: &SearchQuery) -> Result<SearchResults> {
        let started = Instant::now();
        let searcher = self.reader.searcher();
        let text = self.queries.text(&search.text);
        let query = self.queries.filtered(text.box_clone(), search);
        let collector = (TopDocs::with_limit(search.limit).and_offset(search.offset).order_by_score(), Count);
        let (top, total) = searcher.search(&query, &collector).map_err(index_error)?;
        let page_full = top.len() == search.limit;
        let mut below_min = false;
        let snippets = match search.highlight {
            true => Some(self.snippet_generators(&searcher, text.as_ref())?),
            false => None,
        };
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let score = f64::from(score);
            if search.min_score.is_some_and(|min| score < min) {
                below_min = true;
                break;
            }
            let doc: TantivyDocument = searcher.doc(address).map_err(index_error)?;
            let highlights = match &snippets {
                Some((title, content)) => [content.snippet_from_doc(&doc), title.snippet_from_doc(&doc)]
                    .into_iter()
                    .filter(|snippet| !snippet.highlighted().is_empty())
                    .map(|mut snippet| {
                        snippet.set_snippet_prefix_postfix("<mark>", "</mark>");
                        snippet.to_html()
                    })
                    .collect(),
                None => Vec::new(),
            };
            hits.push(Hit { document: self.fields.read(&doc), score, highlights });
        }
        let next = search.offset + search.limit;
        let more = page_full && !below_min && (next as u64) < total as u64;
        Ok(SearchResults {
            hits,
            total_hits: total as u64,
            next_offset: more.then_some(next),
            took_ms: u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX),
        })
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
            index_bytes: directory_bytes(&self.path),
            namespaces,
            last_commit: self.writer.status.last_commit(),
        })
    }
}

/// The size of the files of the index directory (tantivy keeps no subdirectories).
fn directory_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries.flatten().filter_map(|entry| entry.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
}
