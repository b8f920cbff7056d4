//! The transactional outbox of services that announce their writes: an event is written
//! to the service's `outbox` table in the transaction of the change ([`enqueue`]), and
//! the relay ([`run_relay`]) moves committed events to the bus.
//!
//! An event is deleted only after the bus accepted it, so a crash anywhere loses
//! nothing; a crash between publish and delete publishes it again, under the same
//! envelope id, which the bus de-duplicates. A service using it has a table
//! `outbox (seq <auto-increment> PRIMARY KEY, subject TEXT, envelope TEXT)`.

use std::sync::Arc;
use std::time::Duration;

use helix_core::Result;
use helix_events::{Envelope, EventBus, TraceContext};
use sqlx::{Any, Executor, Row, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::{Backend, Database, db_error};

/// A service's outbox: write transactions whose commit wakes the relay, so events
/// leave without waiting for its poll.
#[derive(Clone)]
pub struct Outbox {
    db: Database,
    ready: Arc<Notify>,
}

impl Outbox {
    /// Starts `service`'s relay on the context's tasks.
    pub fn start(ctx: &crate::ServiceContext, service: &'static str, db: Database) -> Self {
        let ready = Arc::new(Notify::new());
        ctx.tasks.spawn(run_relay(service, db.clone(), ctx.bus.clone(), ready.clone(), ctx.shutdown.clone()));
        Self { db, ready }
    }

    /// A write transaction; put its events in with [`enqueue`].
    pub async fn begin(&self) -> Result<Transaction<'static, Any>> {
        self.db.writer.begin().await.map_err(db_error)
    }

    /// A write transaction opened by `statement` (e.g. `BEGIN; SET LOCAL ...` on
    /// PostgreSQL: the setting costs no round trip of its own).
    pub async fn begin_with(&self, statement: &'static str) -> Result<Transaction<'static, Any>> {
        self.db.writer.begin_with(statement).await.map_err(db_error)
    }

    /// Commits and wakes the relay.
    pub async fn commit(&self, tx: Transaction<'static, Any>) -> Result<()> {
        tx.commit().await.map_err(db_error)?;
        self.ready.notify_one();
        Ok(())
    }
}

/// Puts an event in the outbox; it reaches the bus only if the transaction commits.
/// The current trace goes with it, through the relay, to every subscriber.
pub async fn enqueue(
    tx: &mut Transaction<'static, Any>,
    subject: &str,
    source: &str,
    payload: serde_json::Value,
) -> Result<()> {
    let mut envelope = Envelope::new(subject, source, payload);
    if let Some((traceparent, tracestate)) = helix_telemetry::current_trace() {
        envelope = envelope.with_trace(TraceContext { traceparent, tracestate });
    }
    let text = serde_json::to_string(&envelope).expect("serializing plain data cannot fail");
    sqlx::query("INSERT INTO outbox (subject, envelope) VALUES ($1, $2)")
        .bind(subject)
        .bind(text)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Puts several events of one subject in the outbox with one statement per
/// [`ROWS_PER_INSERT`]: a bulk write's events cost a few statements, not one each.
/// They are relayed in the order given.
pub async fn enqueue_all(
    tx: &mut Transaction<'static, Any>,
    subject: &str,
    source: &str,
    payloads: impl IntoIterator<Item = serde_json::Value>,
) -> Result<()> {
    let trace = helix_telemetry::current_trace();
    let texts: Vec<String> = payloads
        .into_iter()
        .map(|payload| {
            let mut envelope = Envelope::new(subject, source, payload);
            if let Some((traceparent, tracestate)) = trace.clone() {
                envelope = envelope.with_trace(TraceContext { traceparent, tracestate });
            }
            serde_json::to_string(&envelope).expect("serializing plain data cannot fail")
        })
        .collect();
    for chunk in texts.chunks(ROWS_PER_INSERT) {
        let rows = crate::db::value_rows(Backend::of(tx), chunk.len(), 2);
        let sql = format!("INSERT INTO outbox (subject, envelope) VALUES {rows}");
        let mut query = sqlx::query(&sql);
        for text in chunk {
            query = query.bind(subject).bind(text.as_str());
        }
        query.execute(&mut **tx).await.map_err(db_error)?;
    }
    Ok(())
}

/// Rows one multi-row INSERT writes at most (SQLite takes 32 766 bound values, PostgreSQL 65 535).
pub const ROWS_PER_INSERT: usize = 256;

/// Events one relay round publishes at most. Each round reads and deletes in one
/// statement each, so a bulk write's events leave in few rounds; under SQLite each
/// round also waits for the single writer lock, which the bulk writes hold.
const BATCH: i64 = 1024;
/// How long a woken relay waits before it looks. Under a steady stream of commits (a
/// thousand jobs a second make three thousand events) a round per commit spent a
/// transaction and a publish per event or two, and the CPU they took delayed the work
/// itself; a few milliseconds of events per round costs them that little delay.
const GATHER: Duration = Duration::from_millis(5);
/// How often the relay looks without being woken: events left by a crashed process, or
/// by another replica whose relay stopped.
const POLL: Duration = Duration::from_secs(1);

/// The advisory lock of `service`'s relay: distinct per service, as services may share
/// one PostgreSQL database (each in its own schema).
fn relay_lock(service: &str) -> i64 {
    // FNV-1a: stable across builds, which replicas of one service must agree on
    let hash = service.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    hash as i64
}

/// Publishes `service`'s outbox until `shutdown`; `ready` wakes it after a commit, so
/// events leave without waiting for its poll.
pub async fn run_relay(
    service: &'static str,
    db: Database,
    bus: Arc<dyn EventBus>,
    ready: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let lock = relay_lock(service);
    let mut failures = 0u32;
    loop {
        match relay_batch(&db, bus.as_ref(), lock).await {
            Ok(n) if n == BATCH as usize => continue,
            Ok(_) => failures = 0,
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, failures, "outbox relay failed, will retry");
            }
        }
        let wait = if failures == 0 { POLL } else { POLL * failures.min(10) };
        tokio::select! {
            _ = ready.notified(), if failures == 0 => {
                // let the commits of the next few milliseconds join this round
                tokio::select! {
                    _ = tokio::time::sleep(GATHER) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Publishes the oldest waiting events; returns how many it published.
async fn relay_batch(db: &Database, bus: &dyn EventBus, lock: i64) -> Result<usize> {
    match db.backend {
        // SQLite has one process per file: no lock, and no long transaction that would
        // block writers.
        Backend::Sqlite => {
            let rows = fetch_batch(&db.pool).await?;
            let published = publish_all(bus, rows).await;
            delete_published(&db.writer, db.backend, &published.seqs).await?;
            published.result.map(|()| published.seqs.len())
        }
        // Replicas share the outbox: one relay at a time keeps events in commit order.
        Backend::Postgres => {
            let mut tx = db.pool.begin().await.map_err(db_error)?;
            let locked: bool = sqlx::query("SELECT pg_try_advisory_xact_lock($1) AS locked")
                .bind(lock)
                .fetch_one(&mut *tx)
                .await
                .and_then(|row| row.try_get("locked"))
                .map_err(db_error)?;
            if !locked {
                return Ok(0);
            }
            let rows = fetch_batch(&mut *tx).await?;
            let published = publish_all(bus, rows).await;
            delete_published(&mut *tx, db.backend, &published.seqs).await?;
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
    let mut batch = Vec::with_capacity(rows.len());
    // unreadable rows would block the outbox forever; they cannot be published
    let mut unreadable = Vec::new();
    for (seq, text) in rows {
        match serde_json::from_str::<Envelope>(&text) {
            Ok(envelope) => {
                seqs.push(seq);
                batch.push(envelope);
            }
            Err(error) => {
                tracing::error!(seq, %error, "dropping unreadable outbox row");
                unreadable.push(seq);
            }
        }
    }
    let (acks, result) = bus.publish_batch(batch).await;
    seqs.truncate(acks.len());
    seqs.extend(unreadable);
    Published { seqs, result: result.map_err(|error| helix_core::Error::unavailable(format!("event bus: {error}"))) }
}

async fn delete_published<'e>(
    db: impl Executor<'e, Database = sqlx::Any>,
    backend: Backend,
    seqs: &[i64],
) -> Result<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    // By the exact seqs published, never a range: under PostgreSQL a transaction that
    // took a lower seq may commit after the batch was read.
    let sql = format!("DELETE FROM outbox WHERE seq IN ({})", crate::db::parameters(backend, 0, seqs.len()));
    let mut query = sqlx::query(&sql);
    for seq in seqs {
        query = query.bind(*seq);
    }
    query.execute(db).await.map_err(db_error)?;
    Ok(())
}
