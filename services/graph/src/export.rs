//! A subgraph as text: JSON, GraphML (for Gephi, yEd, NetworkX) or DOT (Graphviz).

use std::fmt::Write;

use helix_core::graph::ExportFormat;
use serde_json::json;

use crate::memory::{NodeView, Subgraph};

pub fn render(subgraph: &Subgraph, format: ExportFormat) -> String {
    match format {
        ExportFormat::Json => json(subgraph),
        ExportFormat::GraphMl => graphml(subgraph),
        ExportFormat::Dot => dot(subgraph),
    }
}

fn label_parts(node: &NodeView) -> (&str, &str, &str) {
    node.label.as_ref().map_or(("", "", ""), |l| (l.namespace.as_str(), l.kind.as_str(), l.title.as_str()))
}

fn json(subgraph: &Subgraph) -> String {
    let nodes: Vec<_> = subgraph
        .nodes
        .iter()
        .map(|node| {
            let (namespace, kind, title) = label_parts(node);
            json!({
                "id": node.id, "namespace": namespace, "kind": kind, "title": title,
                "depth": node.depth, "degree": node.degree,
            })
        })
        .collect();
    json!({"nodes": nodes, "edges": subgraph.edges, "truncated": subgraph.truncated}).to_string()
}

fn graphml(subgraph: &Subgraph) -> String {
    let mut out = String::from(concat!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
        "<graphml xmlns=\"http://graphml.graphdrawing.org/xmlns\" ",
        "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" ",
        "xsi:schemaLocation=\"http://graphml.graphdrawing.org/xmlns ",
        "http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd\">\n",
        "  <key id=\"namespace\" for=\"node\" attr.name=\"namespace\" attr.type=\"string\"/>\n",
        "  <key id=\"kind\" for=\"node\" attr.name=\"kind\" attr.type=\"string\"/>\n",
        "  <key id=\"title\" for=\"node\" attr.name=\"title\" attr.type=\"string\"/>\n",
        "  <key id=\"depth\" for=\"node\" attr.name=\"depth\" attr.type=\"int\"/>\n",
        "  <key id=\"relation\" for=\"edge\" attr.name=\"relation\" attr.type=\"string\"/>\n",
        "  <key id=\"weight\" for=\"edge\" attr.name=\"weight\" attr.type=\"double\"/>\n",
        "  <key id=\"metadata\" for=\"edge\" attr.name=\"metadata\" attr.type=\"string\"/>\n",
        "  <graph id=\"helix\" edgedefault=\"directed\">\n",
    ));
    for node in &subgraph.nodes {
        let (namespace, kind, title) = label_parts(node);
        let _ = writeln!(
            out,
            "    <node id=\"{}\"><data key=\"namespace\">{}</data><data key=\"kind\">{}</data>\
             <data key=\"title\">{}</data><data key=\"depth\">{}</data></node>",
            node.id,
            xml(namespace),
            xml(kind),
            xml(title),
            node.depth
        );
    }
    for edge in &subgraph.edges {
        let _ = writeln!(
            out,
            "    <edge id=\"{}\" source=\"{}\" target=\"{}\"><data key=\"relation\">{}</data>\
             <data key=\"weight\">{}</data><data key=\"metadata\">{}</data></edge>",
            edge.id,
            edge.source_id,
            edge.target_id,
            xml(&edge.relation),
            edge.weight,
            xml(&serde_json::Value::Object(edge.metadata.clone()).to_string())
        );
    }
    out.push_str("  </graph>\n</graphml>\n");
    out
}

/// Text as XML character data or attribute value; characters XML 1.0 cannot hold
/// become U+FFFD.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Graphviz attributes: `label` is what Graphviz draws (the title, the relation);
/// `weight` is Graphviz's own integer layout attribute, so the edge weight is `helix_weight`.
fn dot(subgraph: &Subgraph) -> String {
    let mut out = String::from("digraph helix {\n");
    for node in &subgraph.nodes {
        let (namespace, kind, title) = label_parts(node);
        let label = if title.is_empty() { node.id.to_string() } else { title.to_owned() };
        let _ = writeln!(
            out,
            "  \"{}\" [label={}, namespace={}, kind={}, depth={}];",
            node.id,
            quoted(&label),
            quoted(namespace),
            quoted(kind),
            node.depth
        );
    }
    for edge in &subgraph.edges {
        let _ = writeln!(
            out,
            "  \"{}\" -> \"{}\" [id=\"{}\", label={}, helix_weight={}];",
            edge.source_id,
            edge.target_id,
            edge.id,
            quoted(&edge.relation),
            edge.weight
        );
    }
    out.push_str("}\n");
    out
}

/// A DOT quoted string.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
