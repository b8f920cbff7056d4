//! The outbox relay: moves committed events from the outbox table to the bus.
//!
//! An event is deleted only after the bus accepted it, so a crash anywhere loses
//! nothing; a crash between publish and delete publishes it again, under the same
//! envelope id, which the bus de-duplicates.

use std::sync::Arc;
use std::time::Duration;

use helix_core::Result;
use helix_events::{Envelope, EventBus};
use helix_runtime::db::{Backend, Database};
use sqlx::{Executor, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::db_error;

const BATCH: i64 = 256;
/// How often the relay looks without being woken: events left by a crashed process, or
/// by another replica whose relay stopped.
const POLL: Duration = Duration::from_secs(1);
/// Any constant works; it names the one relay lock per PostgreSQL schema.
const RELAY_LOCK: i64 = 0x6865_6c69_785f_6f62;

pub async fn run_relay(db: Database, bus: Arc<dyn EventBus>, ready: Arc<Notify>, shutdown: CancellationToken) {
    let mut failures = 0u32;
    loop {
        match relay_batch(&db, bus.as_ref()).await {
            Ok(n) if n == BATCH as usize => continue,
            Ok(_) => failures = 0,
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, failures, "outbox relay failed, will retry");
            }
        }
        let wait = if failures == 0 { POLL } else { POLL * failures.min(10) };
        tokio::select! {
            _ = ready.notified(), if failures == 0 => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Publishes the oldest waiting events; returns how many it published.
async fn relay_batch(db: &Database, bus: &dyn EventBus) -> Result<usize> {
    match db.backend {
        // SQLite has one process per file: no lock, and no long transaction that would
        // block writers.
        Backend::Sqlite => {
            let rows = fetch_batch(&db.pool).await?;
            let published = publish_all(bus, rows).await;
            delete_published(&db.pool, &published.seqs).await?;
            published.result.map(|()| published.seqs.len())
        }
        // Replicas share the outbox: one relay at a time keeps events in commit order.
        Backend::Postgres => {
            let mut tx = db.pool.begin().await.map_err(db_error)?;
            let locked: bool = sqlx::query("SELECT pg_try_advisory_xact_lock($1) AS locked")
                .bind(RELAY_LOCK)
                .fetch_one(&mut *tx)
                .await
                .and_then(|row| row.try_get("locked"))
                .map_err(db_error)?;
            if !locked {
                return Ok(0);
            }
            let rows = fetch_batch(&mut *tx).await?;
            let published = publish_all(bus, rows).await;
            delete_published(&mut *tx, &published.seqs).await?;
            tx.commit().await.map_err(db_error)?;
            published.result.map(|()| published.seqs.len())
        }
    }
}

struct Published {
    seqs: Vec<i64>,
    result: Result<()>,
}

async fn fetch_batch<'e>(db: impl Executor<'e, Database = sqlx::Any>) -> Result<Vec<(i64, String)>> {
    let rows = sqlx::query("SELECT seq, envelope FROM outbox ORDER BY seq LIMIT $1")
        .bind(BATCH)
        .fetch_all(db)
        .await
        .map_err(db_error)?;
    rows.iter()
        .map(|row| Ok((row.try_get("seq").map_err(db_error)?, row.try_get("envelope").map_err(db_error)?)))
        .collect()
}

/// Publishes in order and stops at the first failure: later events wait, so
/// subscribers see a node's events in the order they happened.
async fn publish_all(bus: &dyn EventBus, rows: Vec<(i64, String)>) -> Published {
    let mut seqs = Vec::with_capacity(rows.len());
    for (seq, text) in rows {
        let envelope: Envelope = match serde_json::from_str(&text) {
            Ok(envelope) => envelope,
            Err(error) => {
                // Unreadable rows would block the outbox forever; they cannot be published.
                tracing::error!(seq, %error, "dropping unreadable outbox row");
                seqs.push(seq);
                continue;
            }
        };
        if let Err(error) = bus.publish(&envelope).await {
            return Published { seqs, result: Err(helix_core::Error::unavailable(format!("event bus: {error}"))) };
        }
        seqs.push(seq);
    }
    Published { seqs, result: Ok(()) }
}

async fn delete_published<'e>(db: impl Executor<'e, Database = sqlx::Any>, seqs: &[i64]) -> Result<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    // By the exact seqs published, never a range: under PostgreSQL a transaction that
    // took a lower seq may commit after the batch was read.
    let placeholders: Vec<String> = (1..=seqs.len()).map(|i| format!("${i}")).collect();
    let sql = format!("DELETE FROM outbox WHERE seq IN ({})", placeholders.join(", "));
    let mut query = sqlx::query(&sql);
    for seq in seqs {
        query = query.bind(*seq);
    }
    query.execute(db).await.map_err(db_error)?;
    Ok(())
}
