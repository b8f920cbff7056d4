//! Rebuilding the index from storage, the source of truth: every node (of a namespace)
//! is listed through storage's `ListNodes` and indexed, then the live documents storage
//! did not list are dropped. Searches keep answering meanwhile, and events keep
//! flowing: a node an event changed during the reindex is left as the event made it,
//! and versions keep a listed node from replacing a newer one.
//!
//! A node already indexed at the listed version, with its vector, is left alone (no
//! new embedding): a reindex after a lost index or a new embedder embeds what needs
//! it, and `re_embed` embeds everything.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use helix_core::{Error, Result};
use helix_proto::v1 as pb;
use helix_proto::v1::storage_service_client::StorageServiceClient;
use helix_runtime::grpc::GrpcChannel;
use tokio::sync::mpsc;

use crate::index::{ReindexGuard, SearchIndex};
use crate::writer::{Op, Source};

/// Nodes asked of storage per page.
const PAGE: u32 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Listing,
    Indexing,
    Committing,
    Done,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Listing => "listing",
            Phase::Indexing => "indexing",
            Phase::Committing => "committing",
            Phase::Done => "done",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub phase: Phase,
    pub processed: u64,
    /// 0 while not yet known (storage does not count before listing)
    pub total: u64,
    pub failed: u64,
    /// live documents dropped because storage no longer has them
    pub removed: u64,
    pub at: DateTime<Utc>,
}

/// Runs one reindex, sending progress as it goes; an error ends it (and is sent).
pub async fn run(
    index: Arc<SearchIndex>,
    _guard: ReindexGuard,
    mut storage: StorageServiceClient<GrpcChannel>,
    namespace: Option<String>,
    re_embed: bool,
    progress: mpsc::Sender<Result<Progress>>,
) {
    let writer = &index.writer;
    let mut report = Progress { phase: Phase::Listing, processed: 0, total: 0, failed: 0, removed: 0, at: Utc::now() };
    let send = |report: &mut Progress, phase: Phase| {
        report.phase = phase;
        report.at = Utc::now();
        // a caller that went away does not stop the reindex
        let _ = progress.try_send(Ok(report.clone()));
    };
    let result: Result<()> = async {
        writer.begin_reindex(namespace.clone()).await?;
        send(&mut report, Phase::Listing);
        let mut seen = HashSet::new();
        let mut cursor = String::new();
        loop {
            let request = pb::ListNodesRequest {
                namespace: namespace.clone(),
                kind: None,
                tag: None,
                page: Some(pb::PageRequest { limit: PAGE, cursor: cursor.clone() }),
            };
            let page = storage.list_nodes(request).await.map_err(Error::from)?.into_inner();
            let current = match re_embed {
                true => Default::default(),
                false => index.embedded_versions(page.nodes.iter().map(|node| node.id.clone()).collect()).await?,
            };
            let mut ops = Vec::with_capacity(page.nodes.len());
            for node in page.nodes {
                match crate::grpc::document_from_node(node) {
                    Ok(doc) => {
                        seen.insert(doc.id.clone());
                        if current.get(&doc.id) == Some(&doc.version) {
                            report.processed += 1;
                            continue;
                        }
                        ops.push(Op::Upsert(Box::new(doc)));
                    }
                    Err(error) => {
                        tracing::warn!(%error, "storage listed a node the index cannot take");
                        report.failed += 1;
                    }
                }
            }
            report.processed += ops.len() as u64;
            writer.apply(ops, Source::Reindex, false).await?;
            send(&mut report, Phase::Indexing);
            if page.next_cursor.is_empty() {
                break;
            }
            cursor = page.next_cursor;
        }
        report.total = report.processed + report.failed;
        send(&mut report, Phase::Committing);
        report.removed = writer.finish_reindex(seen).await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            tracing::info!(processed = report.processed, failed = report.failed, removed = report.removed, "reindexed");
            report.phase = Phase::Done;
            report.at = Utc::now();
            let _ = progress.send(Ok(report)).await;
        }
        Err(error) => {
            tracing::warn!(%error, "reindex failed");
            writer.abort_reindex();
            let _ = progress.send(Err(error)).await;
        }
    }
}
