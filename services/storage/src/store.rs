//! Knowledge nodes in the service's database. Every write puts its event in the outbox
//! inside the same transaction, so an event exists exactly when its change committed.

use helix_core::node::{MAX_BULK, Node, NodeDraft, NodeFields, NodeFilter, NodePage};
use helix_core::{Error, Result};
use helix_events::subjects;
use helix_runtime::db::{self, Backend, Database, db_error, from_micros, micros, now};
use helix_runtime::outbox::{self, Outbox};
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

use crate::SERVICE;

const NODE_COLUMNS: &str =
    "id, namespace, kind, title, content, tags, metadata, source, importance, created_at, updated_at, version";

/// The node store of one storage service instance.
#[derive(Clone)]
pub struct NodeStore {
    db: Database,
    outbox: Outbox,
}

impl NodeStore {
    pub fn new(db: Database, outbox: Outbox) -> Self {
        Self { db, outbox }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub async fn create(&self, draft: NodeDraft) -> Result<Node> {
        let mut nodes = self.create_all(vec![draft.validate()?]).await?;
        Ok(nodes.remove(0))
    }

    /// Creates every node or none; the nodes come back in the order given.
    pub async fn bulk_create(&self, drafts: Vec<NodeDraft>) -> Result<Vec<Node>> {
        if drafts.is_empty() {
            return Err(Error::invalid("empty_bulk", "nodes must hold at least one node"));
        }
        if drafts.len() > MAX_BULK {
            return Err(Error::invalid("bulk_too_large", format!("a bulk request holds at most {MAX_BULK} nodes")));
        }
        let fields = drafts
            .into_iter()
            .enumerate()
            .map(|(i, draft)| {
                draft
                    .validate()
                    .map_err(|e| Error::new(e.kind(), e.code().to_owned(), format!("nodes[{i}]: {}", e.message())))
            })
            .collect::<Result<Vec<_>>>()?;
        self.create_all(fields).await
    }

    async fn create_all(&self, all: Vec<NodeFields>) -> Result<Vec<Node>> {
        let now = now();
        let nodes: Vec<Node> = all
            .into_iter()
            .map(|fields| Node { id: Uuid::now_v7(), fields, created_at: now, updated_at: now, version: 1 })
            .collect();
        let mut tx = self.outbox.begin().await?;
        // multi-row statements: a bulk of 500 is a handful of round trips to the
        // database, not three per node
        for chunk in nodes.chunks(outbox::ROWS_PER_INSERT) {
            insert_nodes(&mut tx, chunk).await?;
            insert_tags(&mut tx, chunk).await?;
        }
        outbox::enqueue_all(&mut tx, subjects::NODE_CREATED, SERVICE, nodes.iter().map(|node| json!(node))).await?;
        self.outbox.commit(tx).await?;
        Ok(nodes)
    }

    pub async fn get(&self, id: Uuid) -> Result<Node> {
        let sql = format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1");
        let row = sqlx::query(&sql).bind(id.to_string()).fetch_optional(&self.db.pool).await.map_err(db_error)?;
        row.map(|row| node_from_row(&row)).transpose()?.ok_or_else(|| Error::not_found("node", id))
    }

    /// Replaces the node's fields if its stored version is `expected_version`.
    pub async fn update(&self, id: Uuid, expected_version: i64, draft: NodeDraft) -> Result<Node> {
        let fields = draft.validate()?;
        let updated_at = now();
        let mut tx = self.outbox.begin().await?;
        let row = sqlx::query(
            "UPDATE nodes SET namespace = $1, kind = $2, title = $3, content = $4, tags = $5, metadata = $6, \
             source = $7, importance = $8, updated_at = $9, version = version + 1 \
             WHERE id = $10 AND version = $11 RETURNING created_at, version",
        )
        .bind(&fields.namespace)
        .bind(&fields.kind)
        .bind(&fields.title)
        .bind(&fields.content)
        .bind(json_text(&fields.tags))
        .bind(json_text(&fields.metadata))
        .bind(fields.source.clone())
        .bind(fields.importance)
        .bind(micros(updated_at))
        .bind(id.to_string())
        .bind(expected_version)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let Some(row) = row else {
            drop(tx);
            return Err(self.missing_or_stale(id, expected_version).await);
        };
        let node = Node {
            id,
            fields,
            created_at: from_micros(row.try_get("created_at").map_err(db_error)?),
            updated_at,
            version: row.try_get("version").map_err(db_error)?,
        };
        sqlx::query("DELETE FROM node_tags WHERE node_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        insert_tags(&mut tx, std::slice::from_ref(&node)).await?;
        outbox::enqueue(&mut tx, subjects::NODE_UPDATED, SERVICE, json!(node)).await?;
        self.outbox.commit(tx).await?;
        Ok(node)
    }

    /// Deletes the node; with `expected_version`, only if that is still its version.
    pub async fn delete(&self, id: Uuid, expected_version: Option<i64>) -> Result<()> {
        let mut tx = self.outbox.begin().await?;
        let row =
            sqlx::query("DELETE FROM nodes WHERE id = $1 AND ($2 = 0 OR version = $2) RETURNING namespace, version")
                .bind(id.to_string())
                .bind(expected_version.unwrap_or(0))
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        let Some(row) = row else {
            drop(tx);
            return Err(self.missing_or_stale(id, expected_version.unwrap_or(0)).await);
        };
        let namespace: String = row.try_get("namespace").map_err(db_error)?;
        let version: i64 = row.try_get("version").map_err(db_error)?;
        outbox::enqueue(
            &mut tx,
            subjects::NODE_DELETED,
            SERVICE,
            json!({ "id": id, "namespace": namespace, "version": version }),
        )
        .await?;
        self.outbox.commit(tx).await
    }

    /// The error for a conditional write that matched no row.
    async fn missing_or_stale(&self, id: Uuid, expected_version: i64) -> Error {
        match self.get(id).await {
            Ok(node) => Error::conflict(
                "version_conflict",
                format!("node {id} is at version {}, not {expected_version}", node.version),
            ),
            Err(e) => e,
        }
    }

    /// Nodes matching the filter, newest first (UUIDv7 order is creation order).
    pub async fn list(&self, filter: &NodeFilter) -> Result<NodePage> {
        let mut sql = format!("SELECT {NODE_COLUMNS} FROM nodes WHERE 1 = 1");
        let mut args: Vec<String> = Vec::new();
        let mut arg = |sql: &mut String, clause: &str, value: String| {
            args.push(value);
            sql.push_str(&clause.replace("$?", &format!("${}", args.len())));
        };
        if let Some(namespace) = &filter.namespace {
            arg(&mut sql, " AND namespace = $?", namespace.clone());
        }
        if let Some(kind) = &filter.kind {
            arg(&mut sql, " AND kind = $?", kind.clone());
        }
        if let Some(tag) = &filter.tag {
            arg(&mut sql, " AND id IN (SELECT node_id FROM node_tags WHERE tag = $?)", tag.clone());
        }
        let (nodes, next_cursor) =
            db::newest_first(&self.db.pool, sql, args, filter.after, filter.limit, node_from_row, |n| n.id).await?;
        Ok(NodePage { nodes, next_cursor })
    }

    /// Nodes whose title or content contain every word of `query`, newest first.
    pub async fn recall(&self, query: &str, namespace: Option<&str>, limit: u32) -> Result<Vec<Node>> {
        let words: Vec<String> = query.split_whitespace().map(|w| like_pattern(&w.to_lowercase())).collect();
        if words.is_empty() {
            return Err(Error::invalid("empty_query", "query must hold at least one word"));
        }
        if words.len() > 32 {
            return Err(Error::invalid("query_too_long", "query holds at most 32 words"));
        }
        let mut sql = format!("SELECT {NODE_COLUMNS} FROM nodes WHERE 1 = 1");
        for i in 1..=words.len() {
            sql.push_str(&format!(" AND (LOWER(title) LIKE ${i} ESCAPE '\\' OR LOWER(content) LIKE ${i} ESCAPE '\\')"));
        }
        if namespace.is_some() {
            sql.push_str(&format!(" AND namespace = ${}", words.len() + 1));
        }
        let limit = limit.clamp(1, helix_core::node::MAX_PAGE);
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        let mut q = sqlx::query(&sql);
        for word in words {
            q = q.bind(word);
        }
        if let Some(namespace) = namespace {
            q = q.bind(namespace.to_owned());
        }
        let rows = q.fetch_all(&self.db.pool).await.map_err(db_error)?;
        rows.iter().map(node_from_row).collect()
    }
}

async fn insert_nodes(tx: &mut Transaction<'static, Any>, nodes: &[Node]) -> Result<()> {
    let sql = format!("INSERT INTO nodes ({NODE_COLUMNS}) VALUES {}", db::value_rows(Backend::of(tx), nodes.len(), 12));
    let mut query = sqlx::query(&sql);
    for node in nodes {
        let f = &node.fields;
        query = query
            .bind(node.id.to_string())
            .bind(&f.namespace)
            .bind(&f.kind)
            .bind(&f.title)
            .bind(&f.content)
            .bind(json_text(&f.tags))
            .bind(json_text(&f.metadata))
            .bind(f.source.clone())
            .bind(f.importance)
            .bind(micros(node.created_at))
            .bind(micros(node.updated_at))
            .bind(node.version);
    }
    query.execute(&mut **tx).await.map_err(db_error)?;
    Ok(())
}

async fn insert_tags(tx: &mut Transaction<'static, Any>, nodes: &[Node]) -> Result<()> {
    let tags: Vec<(&String, String)> =
        nodes.iter().flat_map(|node| node.fields.tags.iter().map(|tag| (tag, node.id.to_string()))).collect();
    for chunk in tags.chunks(outbox::ROWS_PER_INSERT) {
        let sql =
            format!("INSERT INTO node_tags (tag, node_id) VALUES {}", db::value_rows(Backend::of(tx), chunk.len(), 2));
        let mut query = sqlx::query(&sql);
        for (tag, id) in chunk {
            query = query.bind(tag.as_str()).bind(id.as_str());
        }
        query.execute(&mut **tx).await.map_err(db_error)?;
    }
    Ok(())
}

fn node_from_row(row: &AnyRow) -> Result<Node> {
    let get_text = |name: &str| row.try_get::<String, _>(name).map_err(db_error);
    let id = get_text("id")?;
    let corrupt = |what: &str| Error::internal(format!("stored node {id} has a corrupt {what}"));
    Ok(Node {
        id: Uuid::try_parse(&id).map_err(|_| corrupt("id"))?,
        fields: NodeFields {
            namespace: get_text("namespace")?,
            kind: get_text("kind")?,
            title: get_text("title")?,
            content: get_text("content")?,
            tags: serde_json::from_str(&get_text("tags")?).map_err(|_| corrupt("tag list"))?,
            metadata: serde_json::from_str(&get_text("metadata")?).map_err(|_| corrupt("metadata"))?,
            source: row.try_get("source").map_err(db_error)?,
            importance: row.try_get("importance").map_err(db_error)?,
        },
        created_at: from_micros(row.try_get("created_at").map_err(db_error)?),
        updated_at: from_micros(row.try_get("updated_at").map_err(db_error)?),
        version: row.try_get("version").map_err(db_error)?,
    })
}

fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("serializing plain data cannot fail")
}

fn like_pattern(word: &str) -> String {
    let escaped = word.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    format!("%{escaped}%")
}
