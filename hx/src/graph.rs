//! `hx graph`: the knowledge graph through the gateway's `/api/v1/graph` routes — relate
//! nodes (`link`, `unlink`), walk a neighbourhood, find a path, export, count. Readable
//! text by default; `--json` prints the gateway's JSON answer (`unlink` then prints
//! nothing: the gateway answers 204), and `export` prints the document as it came.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::{Remote, client};

#[derive(Debug, Args)]
pub struct GraphArgs {
    #[command(subcommand)]
    pub command: GraphCommand,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum GraphCommand {
    /// Relate two nodes: an edge from FROM to TO (an existing one is returned as is)
    Link {
        from: String,
        to: String,
        /// relates_to (default), mentions, derived_from, part_of, or a type of your own
        #[arg(short, long)]
        relation: Option<String>,
        /// default 1.0
        #[arg(short, long)]
        weight: Option<f64>,
    },
    /// Remove an edge
    Unlink { edge_id: String },
    /// The nodes within --depth hops of a node, and the edges between them
    #[command(visible_alias = "neighbors")]
    Neighbours {
        id: String,
        /// hops from the node: default 1, at most 10
        #[arg(short, long)]
        depth: Option<u32>,
        /// out, in or both (default both)
        #[arg(long)]
        direction: Option<String>,
        /// only edges of these types (comma-separated)
        #[arg(short, long)]
        relation: Option<String>,
        /// default 1000, at most 10000
        #[arg(long)]
        max_nodes: Option<u32>,
    },
    /// The shortest path from one node to another (by hops, or by weight)
    Path {
        from: String,
        to: String,
        /// longest path in hops: default and at most 10
        #[arg(long)]
        max_depth: Option<u32>,
        /// only edges of these types (comma-separated)
        #[arg(short, long)]
        relation: Option<String>,
        /// out (default: along edges), in or both
        #[arg(long)]
        direction: Option<String>,
        /// shortest by summed edge weight instead of by hops
        #[arg(long)]
        weighted: bool,
        /// how many paths, shortest first: default 1, at most 10
        #[arg(long)]
        paths: Option<u32>,
    },
    /// The graph, or a node's neighbourhood, as JSON, GraphML or DOT on standard output
    Export {
        /// json (default), graphml or dot
        #[arg(short, long)]
        format: Option<String>,
        /// export this node's neighbourhood instead of the whole graph
        #[arg(long)]
        root: Option<String>,
        /// hops from --root (default 1)
        #[arg(short, long, requires = "root")]
        depth: Option<u32>,
        /// out, in or both (default both); with --root
        #[arg(long, requires = "root")]
        direction: Option<String>,
        /// only edges of these types (comma-separated)
        #[arg(short, long)]
        relation: Option<String>,
        /// default 1000, at most 10000
        #[arg(long)]
        max_nodes: Option<u32>,
    },
    /// Counts: nodes, edges by type, connected components, degrees
    Stats {
        /// count only this namespace's nodes and the edges between them
        #[arg(short, long)]
        namespace: Option<String>,
        /// how many of the highest-degree nodes to list (default 10)
        #[arg(long)]
        top: Option<u32>,
    },
}

/// Query parameters from the options that are set.
fn query<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<String>)>) -> Vec<(&'a str, String)> {
    pairs.into_iter().filter_map(|(name, value)| value.map(|v| (name, v))).collect()
}

pub async fn run(GraphArgs { command, remote }: GraphArgs) -> anyhow::Result<ExitCode> {
    let gateway = client(&remote)?;
    let answer: Value = match command {
        GraphCommand::Link { from, to, relation, weight } => {
            let mut body = json!({"source_id": from, "target_id": to});
            if let Some(relation) = relation {
                body["relation"] = json!(relation);
            }
            if let Some(weight) = weight {
                body["weight"] = json!(weight);
            }
            let edge = gateway.call(Method::POST, "/api/v1/graph/edges", &[], Some(&body)).await?;
            if !remote.json {
                println!("linked {}", edge_line(&edge));
            }
            edge
        }
        GraphCommand::Unlink { edge_id } => {
            let path = format!("/api/v1/graph/edges/{edge_id}");
            let _: Value = gateway.call(Method::DELETE, &path, &[], None).await?;
            if !remote.json {
                println!("unlinked {edge_id}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        GraphCommand::Neighbours { id, depth, direction, relation, max_nodes } => {
            let query = query([
                ("depth", depth.map(|d| d.to_string())),
                ("direction", direction),
                ("relation", relation),
                ("max_nodes", max_nodes.map(|n| n.to_string())),
            ]);
            let graph = gateway.call(Method::GET, &format!("/api/v1/graph/{id}"), &query, None).await?;
            if !remote.json {
                print_subgraph(&graph);
            }
            graph
        }
        GraphCommand::Path { from, to, max_depth, relation, direction, weighted, paths } => {
            let query = query([
                ("from", Some(from.clone())),
                ("to", Some(to.clone())),
                ("max_depth", max_depth.map(|d| d.to_string())),
                ("relation", relation),
                ("direction", direction),
                ("weighted", weighted.then(|| "true".to_owned())),
                ("max_paths", paths.map(|n| n.to_string())),
            ]);
            let found = gateway.call(Method::GET, "/api/v1/graph/path", &query, None).await?;
            if !remote.json {
                print_paths(&found, &from, &to, max_depth);
            }
            found
        }
        GraphCommand::Export { format, root, depth, direction, relation, max_nodes } => {
            let query = query([
                ("format", format),
                ("root", root),
                ("depth", depth.map(|d| d.to_string())),
                ("direction", direction),
                ("relation", relation),
                ("max_nodes", max_nodes.map(|n| n.to_string())),
            ]);
            let document = gateway.text("/api/v1/graph/export", &query).await?;
            print!("{document}");
            if !document.ends_with('\n') {
                println!();
            }
            return Ok(ExitCode::SUCCESS);
        }
        GraphCommand::Stats { namespace, top } => {
            let query = query([("namespace", namespace), ("top", top.map(|n| n.to_string()))]);
            let stats = gateway.call(Method::GET, "/api/v1/graph/stats", &query, None).await?;
            if !remote.json {
                print_stats(&stats);
            }
            stats
        }
    };
    if remote.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    }
    Ok(ExitCode::SUCCESS)
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("?")
}

/// `<edge id>  <source> -[relation weight]-> <target>`
fn edge_line(edge: &Value) -> String {
    format!(
        "{}  {} -[{} {}]-> {}",
        text(&edge["id"]),
        text(&edge["source_id"]),
        text(&edge["relation"]),
        edge["weight"],
        text(&edge["target_id"])
    )
}

/// `<id>  title [namespace/kind]`; a node the graph knows no label of shows its id only.
fn node_line(node: &Value) -> String {
    let mut line = text(&node["id"]).to_owned();
    let title = node["title"].as_str().unwrap_or_default();
    if !title.is_empty() {
        line = format!("{line}  {title}");
    }
    let (namespace, kind) = (node["namespace"].as_str().unwrap_or_default(), node["kind"].as_str().unwrap_or_default());
    if !namespace.is_empty() {
        line = format!("{line} [{namespace}/{kind}]");
    }
    line
}

fn print_subgraph(graph: &Value) {
    let nodes = graph["nodes"].as_array().cloned().unwrap_or_default();
    let edges = graph["edges"].as_array().cloned().unwrap_or_default();
    println!(
        "{} nodes, {} edges{}",
        nodes.len(),
        edges.len(),
        match graph["truncated"].as_bool() {
            Some(true) => " (stopped at max_nodes)",
            _ => "",
        }
    );
    for node in &nodes {
        println!("  {}  {}  (degree {})", node["depth"], node_line(node), node["degree"]);
    }
    for edge in &edges {
        println!("  {}", edge_line(edge));
    }
}

fn print_paths(found: &Value, from: &str, to: &str, max_depth: Option<u32>) {
    let paths = found["paths"].as_array().cloned().unwrap_or_default();
    if paths.is_empty() {
        let within = max_depth.map(|d| format!(" within {d} hops")).unwrap_or_default();
        println!("no path from {from} to {to}{within}");
        return;
    }
    let nodes = found["nodes"].as_array().cloned().unwrap_or_default();
    let node = |id: &str| nodes.iter().find(|n| n["id"] == id).map_or_else(|| id.to_owned(), node_line);
    for (i, path) in paths.iter().enumerate() {
        let ids = path["node_ids"].as_array().cloned().unwrap_or_default();
        let edges = path["edges"].as_array().cloned().unwrap_or_default();
        println!("path {}: {} hops, total weight {}", i + 1, edges.len(), path["total_weight"]);
        println!("  {}", node(text(&ids[0])));
        for (edge, next) in edges.iter().zip(ids.iter().skip(1)) {
            // a path may take an edge against its direction (direction in or both)
            let arrow = match edge["target_id"] == *next {
                true => format!("-[{} {}]->", text(&edge["relation"]), edge["weight"]),
                false => format!("<-[{} {}]-", text(&edge["relation"]), edge["weight"]),
            };
            println!("  {arrow} {}", node(text(next)));
        }
    }
}

fn print_stats(stats: &Value) {
    println!("nodes       {}", stats["nodes"]);
    println!("edges       {}", stats["edges"]);
    println!(
        "components  {} (largest {} nodes; {} isolated nodes)",
        stats["connected_components"], stats["largest_component"], stats["isolated_nodes"]
    );
    println!("degree      mean {:.2}, max {}", stats["mean_degree"].as_f64().unwrap_or_default(), stats["max_degree"]);
    let relations = stats["relations"].as_array().cloned().unwrap_or_default();
    if !relations.is_empty() {
        println!("relations");
        for relation in relations {
            println!("  {:<20} {}", text(&relation["relation"]), relation["edges"]);
        }
    }
    let top = stats["top_nodes"].as_array().cloned().unwrap_or_default();
    if !top.is_empty() {
        println!("top nodes (degree)");
        for node in top {
            println!("  {:>6}  {}", node["degree"].as_u64().unwrap_or_default(), node_line(&node));
        }
    }
}
