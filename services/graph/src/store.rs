//! The graph's database and its copy in memory. A write commits to the database first,
//! with its events in the outbox of the same transaction, and only then changes memory:
//! a write the database refused leaves memory as it was. Writes go one at a time, so
//! memory sees them in the order the database committed them.

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use helix_core::graph::{self, Direction, Edge, EdgeFields, EdgeFilter, NodeLabel};
use helix_core::{Error, Result};
use helix_events::subjects;
use helix_runtime::db::{self, Database, db_error, from_micros, micros, now};
use helix_runtime::outbox::{self, Outbox};
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::SERVICE;
use crate::memory::Memory;

const EDGE_COLUMNS: &str = "id, source_id, target_id, relation, weight, metadata, created_at";

/// One page of edges; `next_cursor` is set when more edges follow.
pub struct EdgePage {
    pub edges: Vec<Edge>,
    pub next_cursor: Option<String>,
}

pub struct GraphStore {
    db: Database,
    outbox: Outbox,
    /// Held from the start of a write's transaction until memory has it.
    writing: Mutex<()>,
    memory: RwLock<Memory>,
}

impl GraphStore {
    /// Reads the whole graph from the database into memory.
    pub async fn load(db: Database, outbox: Outbox) -> Result<Self> {
        let mut memory = Memory::default();
        let rows = sqlx::query("SELECT id, namespace, kind, title, deleted FROM graph_nodes")
            .fetch_all(&db.pool)
            .await
            .map_err(db_error)?;
        for row in &rows {
            let id = parse_stored_id(&text(row, "id")?)?;
            if row.try_get::<i64, _>("deleted").map_err(db_error)? != 0 {
                memory.mark_deleted(id);
            } else {
                let label = NodeLabel {
                    namespace: text(row, "namespace")?,
                    kind: text(row, "kind")?,
                    title: text(row, "title")?,
                };
                memory.set_label(id, label);
            }
        }
        let rows =
            sqlx::query(&format!("SELECT {EDGE_COLUMNS} FROM edges")).fetch_all(&db.pool).await.map_err(db_error)?;
        for row in &rows {
            memory.insert_edge(edge_from_row(row)?);
        }
        tracing::info!(nodes = memory.node_count(), edges = memory.edge_count(), "graph loaded");
        Ok(Self { db, outbox, writing: Mutex::new(()), memory: RwLock::new(memory) })
    }

    /// The graph in memory, for reading; hold it only briefly (writers wait for it).
    pub fn read(&self) -> RwLockReadGuard<'_, Memory> {
        self.memory.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Memory> {
        self.memory.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates the edge, or returns the one that already joins the same nodes by the
    /// same relation, unchanged.
    pub async fn create_edge(&self, fields: EdgeFields) -> Result<Edge> {
        let _writing = self.writing.lock().await;
        {
            let memory = self.read();
            if let Some(id) = [fields.source_id, fields.target_id].into_iter().find(|id| memory.is_deleted(*id)) {
                return Err(graph::node_deleted(id));
            }
            if let Some(edge) = memory.find_edge(fields.source_id, fields.target_id, &fields.relation) {
                return Ok(edge.clone());
            }
        }
        let edge = Edge {
            id: Uuid::now_v7(),
            source_id: fields.source_id,
            target_id: fields.target_id,
            relation: fields.relation,
            weight: fields.weight,
            metadata: fields.metadata,
            created_at: now(),
        };
        let mut tx = self.outbox.begin().await?;
        let sql = format!("INSERT INTO edges ({EDGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)");
        let inserted = sqlx::query(&sql)
            .bind(edge.id.to_string())
            .bind(edge.source_id.to_string())
            .bind(edge.target_id.to_string())
            .bind(&edge.relation)
            .bind(edge.weight)
            .bind(serde_json::Value::Object(edge.metadata.clone()).to_string())
            .bind(micros(edge.created_at))
            .execute(&mut *tx)
            .await;
        match inserted {
            Ok(_) => {}
            // memory holds every committed edge, so only another process can have won
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(Error::conflict("edge_exists", "another graph process created this edge; retry"));
            }
            Err(e) => return Err(db_error(e)),
        }
        let payload = json!({
            "id": edge.id, "source_id": edge.source_id, "target_id": edge.target_id,
            "relation": edge.relation, "weight": edge.weight,
        });
        outbox::enqueue(&mut tx, subjects::GRAPH_EDGE_CREATED, SERVICE, payload).await?;
        self.outbox.commit(tx).await?;
        self.write().insert_edge(edge.clone());
        Ok(edge)
    }

    pub fn get_edge(&self, id: Uuid) -> Result<Edge> {
        self.read().edge(id).cloned().ok_or_else(|| Error::not_found("edge", id))
    }

    pub async fn delete_edge(&self, id: Uuid) -> Result<()> {
        let _writing = self.writing.lock().await;
        let mut tx = self.outbox.begin().await?;
        let sql = format!("DELETE FROM edges WHERE id = $1 RETURNING {EDGE_COLUMNS}");
        let row = sqlx::query(&sql).bind(id.to_string()).fetch_optional(&mut *tx).await.map_err(db_error)?;
        let Some(row) = row else { return Err(Error::not_found("edge", id)) };
        enqueue_deleted(&mut tx, &edge_from_row(&row)?).await?;
        self.outbox.commit(tx).await?;
        self.write().remove_edge(id);
        Ok(())
    }

    /// Removes the node's label and every edge touching it; returns how many edges went.
    /// `deleted_version` (the node was deleted in storage) keeps a tombstone, so that no
    /// edge joins it again and no late event labels it again.
    pub async fn remove_node(&self, id: Uuid, deleted_version: Option<i64>) -> Result<u32> {
        let _writing = self.writing.lock().await;
        let mut tx = self.outbox.begin().await?;
        let sql = format!("DELETE FROM edges WHERE source_id = $1 OR target_id = $1 RETURNING {EDGE_COLUMNS}");
        let rows = sqlx::query(&sql).bind(id.to_string()).fetch_all(&mut *tx).await.map_err(db_error)?;
        for row in &rows {
            enqueue_deleted(&mut tx, &edge_from_row(row)?).await?;
        }
        let label = match deleted_version {
            Some(version) => sqlx::query(
                "INSERT INTO graph_nodes (id, namespace, kind, title, version, deleted) VALUES ($1, '', '', '', $2, 1) \
                 ON CONFLICT (id) DO UPDATE SET deleted = 1, version = excluded.version",
            )
            .bind(id.to_string())
            .bind(version),
            None => sqlx::query("DELETE FROM graph_nodes WHERE id = $1 AND deleted = 0").bind(id.to_string()),
        };
        label.execute(&mut *tx).await.map_err(db_error)?;
        self.outbox.commit(tx).await?;
        self.write().remove_node(id, deleted_version.is_some());
        Ok(rows.len() as u32)
    }

    /// Sets the labels of nodes; returns how many were set. A deleted node keeps none; a
    /// label from a node event (`version` ≥ 1) replaces only an older one, a label from a
    /// caller (`version` 0) any, until the node's next event.
    pub async fn set_labels(&self, labels: Vec<(Uuid, NodeLabel, i64)>) -> Result<u32> {
        let _writing = self.writing.lock().await;
        let mut tx = self.outbox.begin().await?;
        let mut applied = Vec::with_capacity(labels.len());
        for (id, label, version) in labels {
            let done = sqlx::query(
                "INSERT INTO graph_nodes (id, namespace, kind, title, version, deleted) VALUES ($1, $2, $3, $4, $5, 0) \
                 ON CONFLICT (id) DO UPDATE SET namespace = excluded.namespace, kind = excluded.kind, \
                 title = excluded.title, version = excluded.version \
                 WHERE graph_nodes.deleted = 0 AND (excluded.version = 0 OR graph_nodes.version < excluded.version)",
            )
            .bind(id.to_string())
            .bind(&label.namespace)
            .bind(&label.kind)
            .bind(&label.title)
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            if done.rows_affected() > 0 {
                applied.push((id, label));
            }
        }
        tx.commit().await.map_err(db_error)?;
        let mut memory = self.write();
        let count = applied.len() as u32;
        for (id, label) in applied {
            memory.set_label(id, label);
        }
        Ok(count)
    }

    /// Edges matching the filter, newest first (UUIDv7 order is creation order).
    pub async fn list_edges(&self, filter: &EdgeFilter) -> Result<EdgePage> {
        let mut sql = format!("SELECT {EDGE_COLUMNS} FROM edges WHERE 1 = 1");
        let mut args: Vec<String> = Vec::new();
        if let Some(node) = filter.node_id {
            args.push(node.to_string());
            sql.push_str(match filter.direction {
                Direction::Out => " AND source_id = $1",
                Direction::In => " AND target_id = $1",
                Direction::Both => " AND (source_id = $1 OR target_id = $1)",
            });
        }
        if let Some(relation) = &filter.relation {
            args.push(relation.clone());
            sql.push_str(&format!(" AND relation = ${}", args.len()));
        }
        let (edges, next_cursor) =
            db::newest_first(&self.db.pool, sql, args, filter.after, filter.limit, edge_from_row, |e| e.id).await?;
        Ok(EdgePage { edges, next_cursor })
    }
}

async fn enqueue_deleted(tx: &mut Transaction<'static, Any>, edge: &Edge) -> Result<()> {
    let payload = json!({
        "id": edge.id, "source_id": edge.source_id, "target_id": edge.target_id, "relation": edge.relation,
    });
    outbox::enqueue(tx, subjects::GRAPH_EDGE_DELETED, SERVICE, payload).await
}

fn edge_from_row(row: &AnyRow) -> Result<Edge> {
    let id = text(row, "id")?;
    let corrupt = |what: &str| Error::internal(format!("stored edge {id} has a corrupt {what}"));
    Ok(Edge {
        id: Uuid::try_parse(&id).map_err(|_| corrupt("id"))?,
        source_id: Uuid::try_parse(&text(row, "source_id")?).map_err(|_| corrupt("source_id"))?,
        target_id: Uuid::try_parse(&text(row, "target_id")?).map_err(|_| corrupt("target_id"))?,
        relation: text(row, "relation")?,
        weight: row.try_get("weight").map_err(db_error)?,
        metadata: serde_json::from_str(&text(row, "metadata")?).map_err(|_| corrupt("metadata"))?,
        created_at: from_micros(row.try_get("created_at").map_err(db_error)?),
    })
}

fn text(row: &AnyRow, column: &str) -> Result<String> {
    row.try_get(column).map_err(db_error)
}

fn parse_stored_id(id: &str) -> Result<Uuid> {
    Uuid::try_parse(id).map_err(|_| Error::internal(format!("stored graph node {id} has a corrupt id")))
}
