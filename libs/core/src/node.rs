//! Knowledge nodes: the unit of stored knowledge, and the rules a node must follow.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{Error, Result};

pub const DEFAULT_NAMESPACE: &str = "default";
pub const DEFAULT_KIND: &str = "note";
pub const DEFAULT_IMPORTANCE: f64 = 0.5;
pub const MAX_CONTENT_BYTES: usize = 2 * 1024 * 1024;
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
pub const MAX_TAGS: usize = 64;
pub const MAX_BULK: usize = 1000;
pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 1000;
const MAX_TITLE_CHARS: usize = 512;
const MAX_SOURCE_CHARS: usize = 1024;
const DERIVED_TITLE_CHARS: usize = 80;

/// A stored knowledge node. `version` starts at 1 and grows by one with every update.
/// Its serde form is the payload of the `helix.node.*` events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: Uuid,
    #[serde(flatten)]
    pub fields: NodeFields,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

/// A node's content as a caller sends it; unset fields take defaults in [`NodeDraft::validate`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeDraft {
    pub namespace: Option<String>,
    pub kind: Option<String>,
    pub title: Option<String>,
    pub content: String,
    pub tags: Vec<String>,
    pub metadata: Option<Map<String, Value>>,
    pub source: Option<String>,
    pub importance: Option<f64>,
}

/// A node's content after validation: every rule below holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeFields {
    pub namespace: String,
    pub kind: String,
    pub title: String,
    pub content: String,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
    pub source: Option<String>,
    pub importance: f64,
}

impl NodeDraft {
    pub fn validate(self) -> Result<NodeFields> {
        let namespace = self.namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        validate_namespace(&namespace)?;

        let kind = self.kind.unwrap_or_else(|| DEFAULT_KIND.to_owned());
        let kind_ok = (1..=64).contains(&kind.len())
            && kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !kind_ok {
            return Err(Error::invalid("invalid_kind", "kind must be 1-64 characters of a-z, 0-9, '_' or '-'"));
        }

        if self.content.trim().is_empty() {
            return Err(Error::invalid("empty_content", "content must not be empty"));
        }
        // content is free text (tabs, line and page breaks are text), but PostgreSQL
        // cannot store NUL, and SQLite would keep what PostgreSQL refuses
        if self.content.contains('\0') {
            return Err(Error::invalid("invalid_content", "content must not contain NUL characters (U+0000)"));
        }
        if self.content.len() > MAX_CONTENT_BYTES {
            return Err(Error::invalid(
                "content_too_large",
                format!("content is {} bytes, the limit is {MAX_CONTENT_BYTES}", self.content.len()),
            ));
        }

        let title = match self.title {
            Some(title) if title.chars().count() > MAX_TITLE_CHARS => {
                return Err(Error::invalid(
                    "invalid_title",
                    format!("title is longer than {MAX_TITLE_CHARS} characters"),
                ));
            }
            // a title is one line of text: after trimming, a control character left is
            // refused, not stripped (a title of nothing but them was once stored empty)
            Some(title) if title.trim().chars().any(char::is_control) => {
                return Err(Error::invalid(
                    "invalid_title",
                    "title must not contain control characters (line breaks and tabs included)",
                ));
            }
            Some(title) if !title.trim().is_empty() => title.trim().to_owned(),
            _ => derive_title(&self.content),
        };

        let tags = normalize_tags(self.tags)?;

        let metadata = self.metadata.unwrap_or_default();
        check_metadata(&metadata)?;

        let source = self.source.filter(|s| !s.is_empty());
        if source.as_ref().is_some_and(|s| s.chars().count() > MAX_SOURCE_CHARS) {
            return Err(Error::invalid(
                "invalid_source",
                format!("source is longer than {MAX_SOURCE_CHARS} characters"),
            ));
        }
        if source.as_ref().is_some_and(|s| s.chars().any(char::is_control)) {
            return Err(Error::invalid("invalid_source", "source must not contain control characters"));
        }

        let importance = self.importance.unwrap_or(DEFAULT_IMPORTANCE);
        if !importance.is_finite() || !(0.0..=1.0).contains(&importance) {
            return Err(Error::invalid("invalid_importance", "importance must be a number from 0.0 to 1.0"));
        }

        Ok(NodeFields { namespace, kind, title, content: self.content, tags, metadata, source, importance })
    }
}

/// Metadata (of a node or an edge) is a JSON object of at most [`MAX_METADATA_BYTES`].
pub fn check_metadata(metadata: &Map<String, Value>) -> Result<()> {
    let len = serde_json::to_vec(metadata).map(|v| v.len()).unwrap_or(usize::MAX);
    if len > MAX_METADATA_BYTES {
        return Err(Error::invalid(
            "metadata_too_large",
            format!("metadata is {len} bytes of JSON, the limit is {MAX_METADATA_BYTES}"),
        ));
    }
    Ok(())
}

pub fn validate_namespace(namespace: &str) -> Result<()> {
    let ok = (1..=128).contains(&namespace.len())
        && namespace.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_namespace",
            "namespace must be 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':', '/' or '-'",
        ))
    }
}

/// Trims tags, drops repeats (first one wins) and checks their count and length.
fn normalize_tags(tags: Vec<String>) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        let tag = tag.trim();
        if tag.is_empty() || tag.chars().count() > 64 || tag.chars().any(char::is_control) {
            return Err(Error::invalid("invalid_tag", "each tag must be 1-64 printable characters"));
        }
        if !out.iter().any(|t| t == tag) {
            out.push(tag.to_owned());
        }
    }
    if out.len() > MAX_TAGS {
        return Err(Error::invalid("too_many_tags", format!("a node has at most {MAX_TAGS} tags")));
    }
    Ok(out)
}

/// A title for a node stored without one: its first non-empty line, shortened, with the
/// control characters a title may not hold left out (a tab becomes a space).
fn derive_title(content: &str) -> String {
    let printable = |l: &str| -> String {
        l.chars().filter_map(|c| if c == '\t' { Some(' ') } else { Some(c).filter(|c| !c.is_control()) }).collect()
    };
    let line = content.lines().map(|l| printable(l).trim().to_owned()).find(|l| !l.is_empty()).unwrap_or_default();
    if line.chars().count() <= DERIVED_TITLE_CHARS {
        return line.to_owned();
    }
    let mut title: String = line.chars().take(DERIVED_TITLE_CHARS - 1).collect();
    title.push('…');
    title
}

pub fn parse_id(id: &str) -> Result<Uuid> {
    Uuid::try_parse(id).map_err(|_| {
        Error::invalid("invalid_id", format!("'{}' is not a node id (a UUID)", id.chars().take(64).collect::<String>()))
    })
}

/// Which nodes a listing returns, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFilter {
    pub namespace: Option<String>,
    pub kind: Option<String>,
    pub tag: Option<String>,
    pub limit: u32,
    /// only nodes older than this one (the previous page's last id)
    pub after: Option<Uuid>,
}

impl NodeFilter {
    /// Checks the filter and clamps nothing silently: a limit of 0 means the default.
    pub fn new(
        namespace: Option<String>,
        kind: Option<String>,
        tag: Option<String>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Self> {
        if let Some(ns) = &namespace {
            validate_namespace(ns)?;
        }
        let (limit, after) = parse_page(limit, cursor)?;
        Ok(Self { namespace, kind, tag, limit, after })
    }
}

/// Checks a page request of a newest-first listing: a limit of 0 means the default, one
/// over the maximum is refused (never clamped silently), and a cursor is the last id of
/// the previous page.
pub fn parse_page(limit: u32, cursor: Option<&str>) -> Result<(u32, Option<Uuid>)> {
    let limit = match limit {
        0 => DEFAULT_PAGE,
        n if n > MAX_PAGE => {
            return Err(Error::invalid("invalid_limit", format!("limit must be from 1 to {MAX_PAGE}")));
        }
        n => n,
    };
    let after = match cursor.filter(|c| !c.is_empty()) {
        Some(c) => Some(
            Uuid::try_parse(c).map_err(|_| Error::invalid("invalid_cursor", "cursor is not one this server issued"))?,
        ),
        None => None,
    };
    Ok((limit, after))
}

/// One page of nodes; `next_cursor` is set when more nodes follow.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePage {
    pub nodes: Vec<Node>,
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(content: &str) -> NodeDraft {
        NodeDraft { content: content.to_owned(), ..Default::default() }
    }

    #[test]
    fn defaults_and_derived_title() {
        let fields = draft("  \nfirst line\nsecond").validate().unwrap();
        assert_eq!(fields.namespace, DEFAULT_NAMESPACE);
        assert_eq!(fields.kind, DEFAULT_KIND);
        assert_eq!(fields.title, "first line");
        assert_eq!(fields.importance, DEFAULT_IMPORTANCE);
    }

    #[test]
    fn rejects_each_broken_rule_with_its_code() {
        let cases: Vec<(NodeDraft, &str)> = vec![
            (draft("   "), "empty_content"),
            (NodeDraft { namespace: Some(String::new()), ..draft("x") }, "invalid_namespace"),
            (NodeDraft { namespace: Some("a b".into()), ..draft("x") }, "invalid_namespace"),
            (NodeDraft { kind: Some("Fact".into()), ..draft("x") }, "invalid_kind"),
            (NodeDraft { title: Some("t".repeat(513)), ..draft("x") }, "invalid_title"),
            (NodeDraft { tags: vec![" ".into()], ..draft("x") }, "invalid_tag"),
            (NodeDraft { tags: (0..65).map(|i| i.to_string()).collect(), ..draft("x") }, "too_many_tags"),
            (NodeDraft { importance: Some(1.5), ..draft("x") }, "invalid_importance"),
            (NodeDraft { importance: Some(f64::NAN), ..draft("x") }, "invalid_importance"),
            (draft(&"x".repeat(MAX_CONTENT_BYTES + 1)), "content_too_large"),
            (draft("a\0b"), "invalid_content"),
            (NodeDraft { title: Some("\u{1}\u{2}\u{7f}".into()), ..draft("x") }, "invalid_title"),
            (NodeDraft { title: Some("two\nlines".into()), ..draft("x") }, "invalid_title"),
            (NodeDraft { title: Some("a\tb".into()), ..draft("x") }, "invalid_title"),
            (NodeDraft { title: Some("c1 \u{85} control".into()), ..draft("x") }, "invalid_title"),
            (NodeDraft { tags: vec!["a\u{1b}[31m".into()], ..draft("x") }, "invalid_tag"),
            (NodeDraft { namespace: Some("a\tb".into()), ..draft("x") }, "invalid_namespace"),
            (NodeDraft { kind: Some("note\n".into()), ..draft("x") }, "invalid_kind"),
            (NodeDraft { source: Some("https://x/\r\nSet-Cookie: a".into()), ..draft("x") }, "invalid_source"),
        ];
        for (draft, code) in cases {
            assert_eq!(draft.validate().unwrap_err().code(), code);
        }
    }

    #[test]
    fn titles_are_one_printable_line() {
        let title = |title: Option<&str>, content: &str| {
            NodeDraft { title: title.map(str::to_owned), ..draft(content) }.validate().map(|f| f.title)
        };
        // (given title, content) -> stored title
        let cases = [
            (Some("  padded \n"), "x", "padded"),
            (Some(" \t\r\n"), "from content", "from content"),
            (Some("émoji 👩‍💻 and zero-width joiners"), "x", "émoji 👩‍💻 and zero-width joiners"),
            (None, "\u{7}\u{1b}[1mbold\tword\nnext", "[1mbold word"),
            (None, "\u{1}\u{2}\nsecond line", "second line"),
        ];
        for (given, content, stored) in cases {
            assert_eq!(title(given, content).unwrap(), stored, "{given:?} {content:?}");
        }
    }

    #[test]
    fn tags_are_trimmed_and_deduplicated() {
        let fields = NodeDraft { tags: vec![" a".into(), "b".into(), "a ".into()], ..draft("x") }.validate().unwrap();
        assert_eq!(fields.tags, ["a", "b"]);
    }
}
