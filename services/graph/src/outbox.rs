//! The outbox relay, as in storage: moves committed `helix.graph.edge.*` events from the
//! outbox table to the bus, deleting each only after the bus accepted it (a re-publish
//! after a crash carries the same envelope id, which the bus de-duplicates).

use std::sync::Arc;
use std::time::Duration;

use helix_core::{Error, Result};
use helix_events::{Envelope, EventBus};
use helix_runtime::db::{Backend, Database};
use sqlx::{Executor, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::db_error;

const BATCH: i64 = 256;
/// How often the relay looks without being woken (events left by a crashed process).
const POLL: Duration = Duration::from_secs(1);
/// Names the one relay lock of the graph's PostgreSQL schema.
const RELAY_LOCK: i64 = 0x6865_6c69_785f_6772;

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
        tokio::select! {
            _ = ready.notified(), if failures == 0 => {}
            _ = tokio::time::sleep(POLL * failures.clamp(1, 10)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Publishes the oldest waiting events in order, stopping at the first failure; returns
/// how many it published.
async fn relay_batch(db: &Database, bus: &dyn EventBus) -> Result<usize> {
    match db.backend {
        // one process per SQLite file: no lock, and no transaction held while publishing
        Backend::Sqlite => {
            let rows = fetch_batch(&db.pool).await?;
            let (seqs, result) = publish_all(bus, rows).await;
            delete_published(&db.pool, &seqs).await?;
            result.map(|()| seqs.len())
        }
        // one relay at a time keeps events in commit order
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
            let (seqs, result) = publish_all(bus, rows).await;
            delete_published(&mut *tx, &seqs).await?;
            tx.commit().await.map_err(db_error)?;
            result.map(|()| seqs.len())
        }
    }
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

/// The seqs done with (published, or unreadable and dropped), and whether all were.
async fn publish_all(bus: &dyn EventBus, rows: Vec<(i64, String)>) -> (Vec<i64>, Result<()>) {
    let mut seqs = Vec::with_capacity(rows.len());
    for (seq, text) in rows {
        match serde_json::from_str::<Envelope>(&text) {
            Ok(envelope) => {
                if let Err(error) = bus.publish(&envelope).await {
                    return (seqs, Err(Error::unavailable(format!("event bus: {error}"))));
                }
            }
            // it could never be published and would block the outbox forever
            Err(error) => tracing::error!(seq, %error, "dropping unreadable outbox row"),
        }
        seqs.push(seq);
    }
    (seqs, Ok(()))
}

/// Deletes exactly the published seqs, never a range: under PostgreSQL a transaction
/// that took a lower seq may commit after the batch was read.
async fn delete_published<'e>(db: impl Executor<'e, Database = sqlx::Any>, seqs: &[i64]) -> Result<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    let placeholders: Vec<String> = (1..=seqs.len()).map(|i| format!("${i}")).collect();
    let sql = format!("DELETE FROM outbox WHERE seq IN ({})", placeholders.join(", "));
    let mut query = sqlx::query(&sql);
    for seq in seqs {
        query = query.bind(*seq);
    }
    query.execute(db).await.map_err(db_error)?;
    Ok(())
}
