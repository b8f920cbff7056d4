//! What the index keeps of a node, and the tantivy schema it is kept in.
//!
//! Every node id has at most one tantivy document: a live one (the node's latest indexed
//! version) or a tombstone (the id and version it was deleted at, so that an older event
//! delivered late cannot bring it back). Searches only ever see live documents.

use chrono::{DateTime, TimeZone, Utc};
use helix_core::node::Node;
use tantivy::schema::{FAST, Field, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions, Value};
use tantivy::{TantivyDocument, Term};

/// The English stemming tokenizer tantivy registers (lowercases, splits on
/// non-alphanumerics, drops tokens over 40 bytes, Porter-stems).
const TEXT_TOKENIZER: &str = "en_stem";
const LIVE: &str = "live";
const TOMBSTONE: &str = "tombstone";

/// A node as the search service indexes and returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub id: String,
    pub namespace: String,
    pub kind: String,
    pub title: String,
    pub content: String,
    pub tags: Vec<String>,
    pub source: String,
    pub importance: f64,
    /// A JSON object, kept as the text it came in.
    pub metadata_json: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
    /// The vector of [`embedding_text`](Self::embedding_text): pushed with the document,
    /// or filled in by the embedding stage before the writer takes it.
    pub embedding: Option<Vec<f32>>,
}

impl Document {
    /// What is embedded: the title, the tags and the content (the model reads what fits
    /// of it: MiniLM the first 256 tokens).
    pub fn embedding_text(&self) -> String {
        let mut text = String::with_capacity(self.title.len() + self.content.len() + 16);
        text.push_str(&self.title);
        if !self.tags.is_empty() {
            text.push_str(" (");
            text.push_str(&self.tags.join(", "));
            text.push(')');
        }
        if !self.content.is_empty() {
            text.push_str(if text.is_empty() { "" } else { ". " });
            text.push_str(&self.content);
        }
        text
    }
}

impl From<Node> for Document {
    fn from(node: Node) -> Self {
        let f = node.fields;
        Self {
            id: node.id.to_string(),
            namespace: f.namespace,
            kind: f.kind,
            title: f.title,
            content: f.content,
            tags: f.tags,
            source: f.source.unwrap_or_default(),
            importance: f.importance,
            metadata_json: serde_json::Value::Object(f.metadata).to_string(),
            created_at: node.created_at,
            updated_at: node.updated_at,
            version: node.version,
            embedding: None,
        }
    }
}

/// What the index holds for an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Indexed {
    Live {
        version: i64,
    },
    /// Deleted at `version`: only a newer version may index the id again.
    Tombstone {
        version: i64,
    },
}

impl Indexed {
    /// Whether a document of `version` is older than what is indexed, and must be skipped.
    pub fn supersedes(self, version: i64) -> bool {
        match self {
            Indexed::Live { version: indexed } => version < indexed,
            Indexed::Tombstone { version: deleted } => version <= deleted,
        }
    }
}

/// The fields of the schema.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    pub id: Field,
    /// `live` or `tombstone`
    pub state: Field,
    pub namespace: Field,
    pub kind: Field,
    pub tags: Field,
    pub title: Field,
    pub content: Field,
    pub source: Field,
    pub importance: Field,
    pub metadata_json: Field,
    pub created_at: Field,
    /// UTC microseconds; a fast field for the updated_after/before filters. A tombstone
    /// holds the time of its deletion here.
    pub updated_at: Field,
    pub version: Field,
}

impl Fields {
    pub fn schema() -> (Schema, Fields) {
        let mut builder = Schema::builder();
        let text = TextOptions::default()
            .set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer(TEXT_TOKENIZER)
                    .set_index_option(IndexRecordOption::WithFreqsAndPositions),
            )
            .set_stored();
        let fields = Fields {
            // raw: one term for the whole value, matched exactly (case-sensitive)
            id: builder.add_text_field("id", STRING | STORED),
            state: builder.add_text_field("state", STRING | STORED),
            namespace: builder.add_text_field("namespace", STRING | STORED),
            kind: builder.add_text_field("kind", STRING | STORED),
            tags: builder.add_text_field("tags", STRING | STORED),
            title: builder.add_text_field("title", text.clone()),
            content: builder.add_text_field("content", text),
            source: builder.add_text_field("source", STORED),
            importance: builder.add_f64_field("importance", STORED),
            metadata_json: builder.add_text_field("metadata_json", STORED),
            created_at: builder.add_i64_field("created_at", STORED),
            updated_at: builder.add_i64_field("updated_at", STORED | FAST),
            version: builder.add_i64_field("version", STORED),
        };
        (builder.build(), fields)
    }

    pub fn id_term(&self, id: &str) -> Term {
        Term::from_field_text(self.id, id)
    }

    pub fn live_term(&self) -> Term {
        Term::from_field_text(self.state, LIVE)
    }

    pub fn tombstone_term(&self) -> Term {
        Term::from_field_text(self.state, TOMBSTONE)
    }

    pub fn document_of(&self, doc: &Document) -> TantivyDocument {
        let mut out = TantivyDocument::new();
        out.add_text(self.id, &doc.id);
        out.add_text(self.state, LIVE);
        out.add_text(self.namespace, &doc.namespace);
        out.add_text(self.kind, &doc.kind);
        for tag in &doc.tags {
            out.add_text(self.tags, tag);
        }
        out.add_text(self.title, &doc.title);
        out.add_text(self.content, &doc.content);
        out.add_text(self.source, &doc.source);
        out.add_f64(self.importance, doc.importance);
        out.add_text(self.metadata_json, &doc.metadata_json);
        out.add_i64(self.created_at, doc.created_at.timestamp_micros());
        out.add_i64(self.updated_at, doc.updated_at.timestamp_micros());
        out.add_i64(self.version, doc.version);
        out
    }

    pub fn tombstone(&self, id: &str, version: i64, deleted_at: DateTime<Utc>) -> TantivyDocument {
        let mut out = TantivyDocument::new();
        out.add_text(self.id, id);
        out.add_text(self.state, TOMBSTONE);
        out.add_i64(self.updated_at, deleted_at.timestamp_micros());
        out.add_i64(self.version, version);
        out
    }

    /// What a stored document says about its id.
    pub fn indexed(&self, doc: &TantivyDocument) -> Indexed {
        let version = self.i64(doc, self.version);
        match self.text(doc, self.state).as_str() {
            TOMBSTONE => Indexed::Tombstone { version },
            _ => Indexed::Live { version },
        }
    }

    pub fn read(&self, doc: &TantivyDocument) -> Document {
        Document {
            id: self.text(doc, self.id),
            namespace: self.text(doc, self.namespace),
            kind: self.text(doc, self.kind),
            title: self.text(doc, self.title),
            content: self.text(doc, self.content),
            tags: doc.get_all(self.tags).filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            source: self.text(doc, self.source),
            importance: doc.get_first(self.importance).and_then(|v| v.as_f64()).unwrap_or_default(),
            metadata_json: self.text(doc, self.metadata_json),
            created_at: micros_to_time(self.i64(doc, self.created_at)),
            updated_at: micros_to_time(self.i64(doc, self.updated_at)),
            version: self.i64(doc, self.version),
            embedding: None,
        }
    }

    pub fn read_id(&self, doc: &TantivyDocument) -> String {
        self.text(doc, self.id)
    }

    pub fn read_version(&self, doc: &TantivyDocument) -> i64 {
        self.i64(doc, self.version)
    }

    fn text(&self, doc: &TantivyDocument, field: Field) -> String {
        doc.get_first(field).and_then(|v| v.as_str()).unwrap_or_default().to_owned()
    }

    fn i64(&self, doc: &TantivyDocument, field: Field) -> i64 {
        doc.get_first(field).and_then(|v| v.as_i64()).unwrap_or_default()
    }
}

pub fn micros_to_time(micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(micros).single().unwrap_or_default()
}
