//! The search service: knowledge nodes found by their words, by their meaning, or both,
//! fed by node events.
//!
//! Its contract is `proto/helix/v1/search.proto`. Each replica keeps two indexes under
//! `HELIX_HOME/search`: a tantivy full-text index (`index/`), ranked by BM25 with field
//! boosts (title 2.0, tags 1.5, content 1.0), and a vector index (`vectors/`, an exact
//! in-memory scan kept as a snapshot and a log; or a Qdrant server the replicas share,
//! with `HELIX_QDRANT_URL`)
//! of one embedding per node from the configured embedder (MiniLM
//! in-process, an OpenAI-compatible endpoint, or the lexical hashing fallback). Modes:
//! `fulltext` (words joined by AND by default), `semantic` (cosine similarity, at least
//! `search.min_similarity`), and `hybrid`, the default: reciprocal rank fusion of the
//! two lists (the full-text side joined by OR), each hit with its rank on each side.
//! Filters by namespace (any of), kind (any of), tag (every one) and update time
//! restrict both sides without scoring; highlighted fragments (`<mark></mark>`); pages
//! of at most 100 hits whose cursor is the offset of the next hit. Any text is a valid
//! query; its operators (`"phrases"`, `word*` prefixes, `-not`, `OR`, `field:`) apply only
//! where unambiguous, as the `query::language` module describes. Title and content use the `en_stem` tokenizer (lowercased, English stemming:
//! "running" finds "runs"); tags, namespace and kind match exactly.
//!
//! # A replicated read model
//!
//! Every replica (process) of the service keeps a whole index of its own and builds it
//! from the `helix.node.*` events: it subscribes as the durable group `search-<replica>`,
//! where the replica is the `HOSTNAME` environment variable (a StatefulSet pod name,
//! a container's host name) or `local` without one. A group of its own means every
//! replica sees every event, so any replica can answer any search; storage remains the
//! source of truth, and `Reindex` rebuilds a replica's index from it.
//!
//! Changes are idempotent and ordered per node by version: a document older than the
//! indexed one is skipped, and a deleted node leaves a small tombstone (id and version)
//! so an event redelivered late cannot revive it. The writer commits in small batches
//! (what is waiting, at most every 200 ms) and reloads the reader, so a node is
//! searchable by its words well within a second of its commit in storage, however long
//! the embedder takes; its vector follows from the `embedding` backlog
//! (`vectors_pending` counts what waits). An event is acked only after the commit that
//! holds its change; vectors still waiting at a stop are found again at start.
//! `WaitIndexed` (`?wait_for=indexed|vectors` on node writes) is read-your-writes on
//! the replica that answers it.
//!
//! Its limits:
//! - Replicas converge independently: right after a write, one replica may have it and
//!   another not yet (typically for less than a second): there is no read-your-writes
//!   across replicas.
//! - `IndexDocuments`, `RemoveDocuments` and `Reindex` change only the replica that
//!   answers the call; only events reach every replica. An explicit removal leaves no
//!   tombstone: a later event or reindex may index the node again.
//! - The replica name must be stable (a StatefulSet's pod names are; a container's
//!   generated host name is not): a new name is a new group, which starts from the
//!   oldest event the stream retains (7 days by default), not from the beginning of
//!   time. A new replica, or one whose index was lost, needs `Reindex` to hold older
//!   nodes; the service does not run it by itself. A retired replica's durable group
//!   stays on NATS until removed (`nats consumer rm`).
//! - Tombstones (an id and a version each) stay until a full `Reindex`, which drops
//!   those older than an hour.
//! - `GetSearchStats` counts documents, vectors, pending vectors, bytes and the last
//!   commit of this replica only; query metrics are not measured yet (zero).
//! - Every replica embeds every node itself: N replicas do N times the embedding work.

mod document;
mod embedding;
mod grpc;
mod index;
mod indexer;
mod query;
mod reindex;
mod vectors;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use helix_embed::Embedder;

use helix_proto::v1::search_service_server::SearchServiceServer;
use helix_proto::v1::storage_service_client::StorageServiceClient;
use helix_runtime::{HelixConfig, ServiceContext};
use tokio_util::sync::CancellationToken;

pub use grpc::SearchApi;
use index::{IndexSettings, Opened, SearchIndex, VectorBackend};
use vectors::QdrantSettings;
/// The embedded vector store on its own: the search benchmark measures its raw write
/// cost beside raw tantivy's.
pub use vectors::{EmbedderMark, FlatVectors, VectorOp, VectorPoint, VectorStore};

/// Where the Qdrant API key is read from, as Qdrant's own clients do.
const QDRANT_API_KEY_ENV: &str = "QDRANT_API_KEY";

pub const SERVICE: &str = "search";
pub const GRPC_SERVICE: &str = helix_proto::service_names::SEARCH;
/// The events the index follows.
const NODE_EVENTS: &str = "helix.node.*";
/// How long one page of storage's listing may take during a reindex.
const STORAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the vector index's upkeep runs (the embedded store folds its log into a
/// snapshot once the log has grown).
const OPTIMIZE_EVERY: Duration = Duration::from_secs(10);

/// Where this replica's index lives under the data directory.
pub fn index_path(home: &Path) -> PathBuf {
    home.join("search").join("index")
}

/// The durable group of this replica: `search-` and the `HOSTNAME`, or `search-local`.
pub fn consumer_group() -> String {
    let replica = std::env::var("HOSTNAME").ok().filter(|name| !name.trim().is_empty());
    group_of(replica.as_deref().unwrap_or("local"))
}

/// Group names hold at most 64 bytes: a longer host name is cut and a hash of it kept,
/// so two long names stay two groups.
fn group_of(replica: &str) -> String {
    let group = format!("search-{replica}");
    if group.len() <= 64 {
        return group;
    }
    let hash =
        replica.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let mut cut = 40;
    while !group.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{hash:016x}", &group[..cut])
}

/// Where this replica's vectors live under the data directory.
pub fn vectors_path(home: &Path) -> PathBuf {
    home.join("search").join("vectors")
}

/// Qdrant when `HELIX_QDRANT_URL` is set, else this replica's embedded store.
/// Its API key: the environment, then the vault.
fn vector_backend(config: &HelixConfig, credentials: &helix_vault::Credentials) -> VectorBackend {
    match &config.qdrant_url {
        Some(url) => VectorBackend::Qdrant(QdrantSettings {
            url: url.clone(),
            api_key: credentials
                .get(QDRANT_API_KEY_ENV)
                .map(|key| helix_vault::ExposeSecret::expose_secret(&key).to_owned()),
            collection: config.search.qdrant_collection.clone(),
        }),
        None => VectorBackend::Embedded(vectors_path(&config.home)),
    }
}

/// The embedder the configuration asks for: an OpenAI-compatible endpoint, the local
/// model, or, without either, the lexical hashing fallback (announced in the log).
pub async fn embedder(config: &HelixConfig) -> helix_runtime::Result<Arc<dyn Embedder>> {
    let search = &config.search;
    let embed = helix_embed::EmbedConfig {
        model_dir: search.model_dir.clone(),
        openai: search.openai.as_ref().map(|openai| {
            let mut endpoint = helix_embed::OpenAiConfig::new(&openai.url, &openai.model);
            endpoint.api_key_env = openai.api_key_env.clone();
            endpoint.dim = openai.dim;
            endpoint
        }),
    };
    helix_embed::from_config(&embed, &config.home)
        .await
        .map_err(|e| helix_core::Error::unavailable(format!("the search embedder: {e}")).into())
}

/// The search gRPC service, ready to be served: the index is open, its writer runs and
/// the event indexer follows `helix.node.*`.
pub async fn start(ctx: &ServiceContext) -> helix_runtime::Result<SearchServiceServer<SearchApi>> {
    let embedder = embedder(&ctx.config).await?;
    let info = embedder.info();
    let settings = IndexSettings {
        path: index_path(&ctx.config.home),
        vectors: vector_backend(&ctx.config, &ctx.credentials),
        embedder,
        rrf_k: ctx.config.search.rrf_k,
        min_similarity: ctx.config.search.min_similarity,
    };
    let tasks = ctx.tasks.clone();
    let Opened { index, created, vectors_created } =
        tokio::task::spawn_blocking(move || SearchIndex::open(settings, tasks))
            .await
            .map_err(|e| helix_core::Error::internal(format!("opening the search index: {e}")))??;
    if created {
        tracing::info!("created an empty search index; run Reindex if storage already holds nodes");
    }
    let backend = if ctx.config.qdrant_url.is_some() { "qdrant" } else { "embedded" };
    tracing::info!(embedder = %info.name, dim = info.dim, kind = ?info.kind, vectors = backend, "search index open");
    vectors::spawn_optimizer(index.vectors.clone(), ctx.shutdown.clone(), OPTIMIZE_EVERY, &ctx.tasks)?;

    let checked = index.clone();
    ctx.readiness.add("search index", move || {
        let index = checked.clone();
        Box::pin(async move { index.check() })
    });

    let group = consumer_group();
    let events = ctx.bus.subscribe(NODE_EVENTS, &group).await?;
    ctx.tasks.spawn(indexer::run(events, index.writer.clone(), group, ctx.shutdown.clone()));

    let storage = StorageServiceClient::new(ctx.channel(&ctx.config.endpoints.storage, STORAGE_TIMEOUT)?);
    let api = SearchApi::new(index.clone(), storage, ctx.tasks.clone(), ctx.shutdown.clone());
    let (pending, gauge, shutdown) = (index.clone(), ctx.metrics.search_vectors_pending.clone(), ctx.shutdown.clone());
    ctx.tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while shutdown.run_until_cancelled(tick.tick()).await.is_some() {
            gauge.set(i64::try_from(pending.backlog.pending()).unwrap_or(i64::MAX));
        }
    });
    // documents indexed by words whose vectors lag (the backlog when the process
    // stopped), or all of them when the vector store is new: embedded in the background
    let lagging = index.clone();
    ctx.tasks.spawn(async move {
        match lagging.queue_lagging_vectors().await {
            Ok(0) => {}
            Ok(queued) => tracing::info!(queued, vectors_created, "documents queued for their vectors"),
            Err(error) => tracing::warn!(%error, "finding documents whose vectors lag failed"),
        }
    });
    Ok(SearchServiceServer::new(api).max_decoding_message_size(64 * 1024 * 1024))
}

/// Runs the search service alone in this process until `shutdown` is cancelled.
pub async fn serve(config: HelixConfig, shutdown: CancellationToken) -> helix_runtime::Result<()> {
    helix_runtime::serve_alone(config, shutdown, GRPC_SERVICE, |ctx| async move {
        Ok(tonic::service::Routes::new(start(&ctx).await?))
    })
    .await
}
