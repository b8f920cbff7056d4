//! The knowledge graph: typed, directed, weighted edges between knowledge nodes, the
//! labels a node carries in the graph, and the rules every graph request follows.
//!
//! An edge's type is its `relation`: one of [`KNOWN_RELATIONS`] or any other name of
//! 1-64 characters of `a-z`, `0-9`, `_` and `-`. Self-loops are refused: a node related
//! to itself adds nothing to a walk or a path and only skews degrees.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::node;
use crate::{Error, ErrorKind, Result};

pub const RELATES_TO: &str = "relates_to";
pub const MENTIONS: &str = "mentions";
pub const DERIVED_FROM: &str = "derived_from";
pub const PART_OF: &str = "part_of";
/// The relations Helix itself creates; callers may use any other valid name.
pub const KNOWN_RELATIONS: [&str; 4] = [RELATES_TO, MENTIONS, DERIVED_FROM, PART_OF];
pub const DEFAULT_RELATION: &str = RELATES_TO;
pub const DEFAULT_WEIGHT: f64 = 1.0;
/// The deepest walk or longest path (in hops) a request may ask for.
pub const MAX_DEPTH: u32 = 10;
pub const DEFAULT_MAX_NODES: u32 = 1000;
pub const MAX_NODES: u32 = 10_000;
pub const MAX_PATHS: u32 = 10;
pub const MAX_START_IDS: usize = 100;
pub const DEFAULT_TOP: u32 = 10;
pub const MAX_TOP: u32 = 100;
const MAX_TITLE_CHARS: usize = 512;

/// A stored edge: `source_id` → `target_id`, of type `relation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    pub id: Uuid,
    pub source_id: Uuid,
    pub target_id: Uuid,
    pub relation: String,
    pub weight: f64,
    /// The edge's properties.
    pub metadata: Map<String, Value>,
    pub created_at: DateTime<Utc>,
}

/// An edge as a caller sends it; unset fields take defaults in [`EdgeDraft::validate`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeDraft {
    pub source_id: String,
    pub target_id: String,
    pub relation: String,
    pub weight: Option<f64>,
    pub metadata: Option<Map<String, Value>>,
}

/// An edge's content after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeFields {
    pub source_id: Uuid,
    pub target_id: Uuid,
    pub relation: String,
    pub weight: f64,
    pub metadata: Map<String, Value>,
}

impl EdgeDraft {
    pub fn validate(self) -> Result<EdgeFields> {
        let source_id = node::parse_id(&self.source_id)?;
        let target_id = node::parse_id(&self.target_id)?;
        if source_id == target_id {
            return Err(Error::invalid("self_loop", "an edge joins two different nodes"));
        }
        let relation = if self.relation.is_empty() { DEFAULT_RELATION.to_owned() } else { self.relation };
        validate_relation(&relation)?;
        let weight = self.weight.unwrap_or(DEFAULT_WEIGHT);
        if !weight.is_finite() || weight < 0.0 {
            return Err(Error::invalid("invalid_weight", "weight must be a finite number, not negative"));
        }
        let metadata = self.metadata.unwrap_or_default();
        node::check_metadata(&metadata)?;
        Ok(EdgeFields { source_id, target_id, relation, weight, metadata })
    }
}

pub fn validate_relation(relation: &str) -> Result<()> {
    if is_name(relation) {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_edge_type",
            format!(
                "relation '{}' is not 1-64 characters of a-z, 0-9, '_' or '-'",
                relation.chars().take(64).collect::<String>()
            ),
        ))
    }
}

/// Checks a relation filter; repeats are dropped.
pub fn relations(mut relations: Vec<String>) -> Result<Vec<String>> {
    relations.iter().try_for_each(|r| validate_relation(r))?;
    relations.sort();
    relations.dedup();
    Ok(relations)
}

fn is_name(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Which edges a step follows from a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// source → target
    Out,
    /// target → source
    In,
    Both,
}

impl Direction {
    /// `out`, `in` or `both`; empty means `default`.
    pub fn parse(text: &str, default: Direction) -> Result<Self> {
        match text {
            "" => Ok(default),
            "out" => Ok(Self::Out),
            "in" => Ok(Self::In),
            "both" => Ok(Self::Both),
            _ => Err(Error::invalid("invalid_direction", "direction must be out, in or both")),
        }
    }
}

/// The order a walk visits nodes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    BreadthFirst,
    DepthFirst,
}

impl Order {
    /// `bfs` or `dfs`; empty means `bfs`.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "" | "bfs" => Ok(Self::BreadthFirst),
            "dfs" => Ok(Self::DepthFirst),
            _ => Err(Error::invalid("invalid_algorithm", "algorithm must be bfs or dfs")),
        }
    }
}

/// A walk from one or more nodes: every node within `depth` hops along edges of the
/// given relations (all when empty), at most `max_nodes` of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Walk {
    pub start: Vec<Uuid>,
    pub order: Order,
    pub depth: u32,
    pub relations: Vec<String>,
    pub direction: Direction,
    pub max_nodes: u32,
}

impl Walk {
    /// `depth` 0 means `default_depth`; `max_nodes` 0 means [`DEFAULT_MAX_NODES`].
    pub fn new(
        start: &[String],
        order: Order,
        depth: u32,
        default_depth: u32,
        relations: Vec<String>,
        direction: Direction,
        max_nodes: u32,
    ) -> Result<Self> {
        if start.is_empty() || start.len() > MAX_START_IDS {
            return Err(Error::invalid("invalid_start_ids", format!("a walk starts from 1 to {MAX_START_IDS} nodes")));
        }
        let mut ids: Vec<Uuid> = Vec::with_capacity(start.len());
        for id in start {
            let id = node::parse_id(id)?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        Ok(Self {
            start: ids,
            order,
            depth: depth_or(depth, default_depth)?,
            relations: self::relations(relations)?,
            direction,
            max_nodes: max_nodes_or_default(max_nodes)?,
        })
    }
}

/// A requested depth: 0 means `default`, more than [`MAX_DEPTH`] is refused.
pub fn depth_or(depth: u32, default: u32) -> Result<u32> {
    match depth {
        0 => Ok(default),
        d if d > MAX_DEPTH => Err(Error::invalid("invalid_depth", format!("depth must be from 1 to {MAX_DEPTH}"))),
        d => Ok(d),
    }
}

/// A requested node budget: 0 means [`DEFAULT_MAX_NODES`], more than [`MAX_NODES`] is refused.
pub fn max_nodes_or_default(max_nodes: u32) -> Result<u32> {
    match max_nodes {
        0 => Ok(DEFAULT_MAX_NODES),
        n if n > MAX_NODES => {
            Err(Error::invalid("invalid_max_nodes", format!("max_nodes must be from 1 to {MAX_NODES}")))
        }
        n => Ok(n),
    }
}

/// The shortest paths from `source` to `target`: by hops (breadth-first), or by summed
/// weight (Dijkstra) when `weighted`; never longer than `max_depth` hops.
#[derive(Debug, Clone, PartialEq)]
pub struct PathQuery {
    pub source: Uuid,
    pub target: Uuid,
    pub max_depth: u32,
    pub relations: Vec<String>,
    pub weighted: bool,
    pub max_paths: u32,
    /// which way a step follows an edge: `Out` along it, `In` against it, `Both` either
    pub direction: Direction,
}

impl PathQuery {
    /// `max_depth` 0 means [`MAX_DEPTH`]; `max_paths` 0 means 1.
    pub fn new(
        source: &str,
        target: &str,
        max_depth: u32,
        relations: Vec<String>,
        weighted: bool,
        max_paths: u32,
        direction: Direction,
    ) -> Result<Self> {
        let max_paths = match max_paths {
            0 => 1,
            n if n > MAX_PATHS => {
                return Err(Error::invalid("invalid_max_paths", format!("max_paths must be from 1 to {MAX_PATHS}")));
            }
            n => n,
        };
        Ok(Self {
            source: node::parse_id(source)?,
            target: node::parse_id(target)?,
            max_depth: depth_or(max_depth, MAX_DEPTH)?,
            relations: self::relations(relations)?,
            weighted,
            max_paths,
            direction,
        })
    }
}

/// Which edges a listing returns, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeFilter {
    /// edges touching this node (in `direction`)
    pub node_id: Option<Uuid>,
    pub relation: Option<String>,
    pub direction: Direction,
    pub limit: u32,
    /// only edges older than this one (the previous page's last id)
    pub after: Option<Uuid>,
}

impl EdgeFilter {
    pub fn new(
        node_id: Option<&str>,
        relation: Option<String>,
        direction: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Self> {
        let node_id = node_id.filter(|id| !id.is_empty()).map(node::parse_id).transpose()?;
        if node_id.is_none() && !direction.is_empty() {
            return Err(Error::invalid("invalid_direction", "direction needs node_id"));
        }
        let direction = Direction::parse(direction, Direction::Both)?;
        let relation = relation.filter(|r| !r.is_empty());
        if let Some(relation) = &relation {
            validate_relation(relation)?;
        }
        let (limit, after) = node::parse_page(limit, cursor)?;
        Ok(Self { node_id, relation, direction, limit, after })
    }
}

/// What the graph knows of a knowledge node besides its edges (from node events, or
/// set by a caller).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLabel {
    pub namespace: String,
    pub kind: String,
    pub title: String,
}

impl NodeLabel {
    /// Checks a label a caller sends: empty namespace and kind take the node defaults.
    pub fn new(namespace: String, kind: String, title: String) -> Result<Self> {
        let namespace = if namespace.is_empty() { node::DEFAULT_NAMESPACE.to_owned() } else { namespace };
        node::validate_namespace(&namespace)?;
        let kind = if kind.is_empty() { node::DEFAULT_KIND.to_owned() } else { kind };
        if !is_name(&kind) {
            return Err(Error::invalid("invalid_kind", "kind must be 1-64 characters of a-z, 0-9, '_' or '-'"));
        }
        if title.chars().count() > MAX_TITLE_CHARS {
            return Err(Error::invalid("invalid_title", format!("title is longer than {MAX_TITLE_CHARS} characters")));
        }
        Ok(Self { namespace, kind, title })
    }
}

/// The error for an edge endpoint whose node was deleted: its edges went with it, and
/// none may be added.
pub fn node_deleted(id: Uuid) -> Error {
    Error::new(ErrorKind::NotFound, "node_deleted", format!("node {id} was deleted"))
}

/// `top` 0 means [`DEFAULT_TOP`].
pub fn top_or_default(top: u32) -> Result<u32> {
    match top {
        0 => Ok(DEFAULT_TOP),
        n if n > MAX_TOP => Err(Error::invalid("invalid_top", format!("top must be from 1 to {MAX_TOP}"))),
        n => Ok(n),
    }
}

/// The text formats a subgraph exports to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Json,
    GraphMl,
    Dot,
}

impl ExportFormat {
    /// `json`, `graphml` or `dot`; empty means `json`.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "" | "json" => Ok(Self::Json),
            "graphml" => Ok(Self::GraphMl),
            "dot" => Ok(Self::Dot),
            _ => Err(Error::invalid("invalid_format", "format must be json, graphml or dot")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::GraphMl => "graphml",
            Self::Dot => "dot",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::GraphMl => "application/graphml+xml",
            Self::Dot => "text/vnd.graphviz",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(relation: &str) -> EdgeDraft {
        EdgeDraft {
            source_id: Uuid::now_v7().to_string(),
            target_id: Uuid::now_v7().to_string(),
            relation: relation.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults() {
        let fields = draft("").validate().unwrap();
        assert_eq!((fields.relation.as_str(), fields.weight), (DEFAULT_RELATION, DEFAULT_WEIGHT));
        for relation in KNOWN_RELATIONS.into_iter().chain(["x", "a-b_9"]) {
            assert_eq!(draft(relation).validate().unwrap().relation, relation);
        }
    }

    #[test]
    fn rejects_each_broken_rule_with_its_code() {
        let id = Uuid::now_v7().to_string();
        let big: Map<String, Value> =
            [("x".to_owned(), Value::String("x".repeat(node::MAX_METADATA_BYTES)))].into_iter().collect();
        let cases: Vec<(EdgeDraft, &str)> = vec![
            (EdgeDraft { source_id: "nope".into(), ..draft("") }, "invalid_id"),
            (EdgeDraft { target_id: String::new(), ..draft("") }, "invalid_id"),
            (EdgeDraft { source_id: id.clone(), target_id: id, ..draft("") }, "self_loop"),
            (draft("Mentions"), "invalid_edge_type"),
            (draft("a b"), "invalid_edge_type"),
            (draft(&"r".repeat(65)), "invalid_edge_type"),
            (EdgeDraft { weight: Some(f64::NAN), ..draft("") }, "invalid_weight"),
            (EdgeDraft { weight: Some(f64::INFINITY), ..draft("") }, "invalid_weight"),
            (EdgeDraft { weight: Some(-1.0), ..draft("") }, "invalid_weight"),
            (EdgeDraft { metadata: Some(big), ..draft("") }, "metadata_too_large"),
        ];
        for (draft, code) in cases {
            assert_eq!(draft.clone().validate().unwrap_err().code(), code, "{draft:?}");
        }
    }

    #[test]
    fn request_limits() {
        assert_eq!(depth_or(0, 1).unwrap(), 1);
        assert_eq!(depth_or(MAX_DEPTH, 1).unwrap(), MAX_DEPTH);
        assert_eq!(depth_or(MAX_DEPTH + 1, 1).unwrap_err().code(), "invalid_depth");
        assert_eq!(max_nodes_or_default(0).unwrap(), DEFAULT_MAX_NODES);
        assert_eq!(max_nodes_or_default(MAX_NODES + 1).unwrap_err().code(), "invalid_max_nodes");
        assert_eq!(Direction::parse("sideways", Direction::Both).unwrap_err().code(), "invalid_direction");
        assert_eq!(Order::parse("random").unwrap_err().code(), "invalid_algorithm");
        assert_eq!(ExportFormat::parse("svg").unwrap_err().code(), "invalid_format");
        assert_eq!(EdgeFilter::new(None, None, "out", 0, None).unwrap_err().code(), "invalid_direction");
        assert_eq!(relations(vec!["b".into(), "a".into(), "b".into()]).unwrap(), ["a", "b"]);
    }
}
