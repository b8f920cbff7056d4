//! The graph service over gRPC: edges, walks, paths, exports, statistics, its graph
//! rebuilt after a restart, and edges leaving with a node deleted through the gateway.

use std::collections::BTreeSet;
use std::time::Duration;

use helix_events::Subscription;
use helix_proto::v1 as pb;
use helix_proto::v1::graph_service_client::GraphServiceClient;
use helix_runtime::grpc::GrpcChannel;
use helix_testkit::{Backend, TestHelix};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::read;

crate::on_both_backends!(
    edges_crud_events_and_validation,
    walks_by_depth_direction_and_relation,
    shortest_paths,
    stats_and_exports_survive_restart,
    edges_go_with_a_deleted_node,
);

type Graph = GraphServiceClient<GrpcChannel>;
/// (node id, depth) of every node of a result
type Depths = BTreeSet<(String, u32)>;
type EdgeIds = BTreeSet<String>;
/// a path's node ids and total weight
type PathShape = (Vec<String>, f64);

async fn connect(helix: &TestHelix) -> anyhow::Result<Graph> {
    Ok(GraphServiceClient::new(helix.node.as_ref().expect("running").grpc_channel().await?))
}

fn ids(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::now_v7()).collect()
}

async fn edge(graph: &mut Graph, source: Uuid, target: Uuid, relation: &str, weight: f64) -> pb::GraphEdge {
    let request = pb::CreateEdgeRequest {
        source_id: source.to_string(),
        target_id: target.to_string(),
        relation: relation.to_owned(),
        weight: Some(weight),
        metadata_json: None,
    };
    graph.create_edge(request).await.expect("edge created").into_inner()
}

/// The Helix error code a refused call carries.
fn code<T>(result: Result<T, tonic::Status>) -> String {
    match result {
        Ok(_) => "<ok>".to_owned(),
        Err(status) => helix_core::Error::from(status).code().to_owned(),
    }
}

fn create(
    source: &str,
    target: &str,
    relation: &str,
    weight: Option<f64>,
    metadata: Option<&str>,
) -> pb::CreateEdgeRequest {
    pb::CreateEdgeRequest {
        source_id: source.to_owned(),
        target_id: target.to_owned(),
        relation: relation.to_owned(),
        weight,
        metadata_json: metadata.map(str::to_owned),
    }
}

async fn graph_events(helix: &TestHelix) -> anyhow::Result<Subscription> {
    let bus = match helix.env.backend {
        Backend::Embedded => helix.node.as_ref().unwrap().bus(),
        Backend::Fleet => helix.env.bus().await?,
    };
    Ok(bus.subscribe("helix.graph.edge.*", "e2e-graph-observer").await?)
}

async fn edges_crud_events_and_validation(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let mut graph = connect(&helix).await?;
    let mut events = graph_events(&helix).await?;
    let [a, b] = [Uuid::now_v7(), Uuid::now_v7()];

    let request = create(&a.to_string(), &b.to_string(), "", None, Some(r#"{"since": 2020, "note": "x"}"#));
    let created = graph.create_edge(request.clone()).await?.into_inner();
    assert_eq!(Uuid::parse_str(&created.id)?.get_version_num(), 7);
    assert_eq!((created.relation.as_str(), created.weight), ("relates_to", 1.0));
    let metadata: Value = serde_json::from_str(&created.metadata_json)?;
    assert_eq!(metadata, json!({"since": 2020, "note": "x"}));
    let again = graph.create_edge(request).await?.into_inner();
    assert_eq!(again, created, "idempotent on (source, target, relation)");
    let got = graph.get_edge(pb::GetEdgeRequest { id: created.id.clone() }).await?.into_inner();
    assert_eq!(got, created);
    let other = edge(&mut graph, a, b, "mentions", 0.5).await;
    assert_ne!(other.id, created.id, "another relation is another edge");

    graph.delete_edge(pb::DeleteEdgeRequest { id: created.id.clone() }).await?;
    assert_eq!(code(graph.get_edge(pb::GetEdgeRequest { id: created.id.clone() }).await), "not_found");
    assert_eq!(code(graph.delete_edge(pb::DeleteEdgeRequest { id: created.id.clone() }).await), "not_found");

    // events: one per committed write, none for a repeat or a refusal
    let (id, a, b) = (a.to_string(), a, b.to_string());
    let cases: Vec<(pb::CreateEdgeRequest, &str)> = vec![
        (create("nope", &b, "", None, None), "invalid_id"),
        (create(&id, "", "", None, None), "invalid_id"),
        (create(&id, &id, "", None, None), "self_loop"),
        (create(&id, &b, "Mentions", None, None), "invalid_edge_type"),
        (create(&id, &b, "has space", None, None), "invalid_edge_type"),
        (create(&id, &b, &"r".repeat(65), None, None), "invalid_edge_type"),
        (create(&id, &b, "", Some(f64::NAN), None), "invalid_weight"),
        (create(&id, &b, "", Some(f64::INFINITY), None), "invalid_weight"),
        (create(&id, &b, "", Some(-1.0), None), "invalid_weight"),
        (create(&id, &b, "", None, Some("[1]")), "invalid_metadata"),
        (create(&id, &b, "", None, Some("{")), "invalid_metadata"),
    ];
    for (request, expected) in cases {
        let result = graph.create_edge(request.clone()).await;
        if let Err(status) = &result {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{request:?}");
        }
        assert_eq!(code(result), expected, "{request:?}");
    }
    let unknown = Uuid::now_v7().to_string();
    let g = &mut graph;
    let neighbourhood = |depth, direction: &str, relations: Vec<&str>, max_nodes| pb::GetNeighborhoodRequest {
        id: id.clone(),
        depth,
        relations: relations.into_iter().map(str::to_owned).collect(),
        direction: direction.to_owned(),
        max_nodes,
    };
    let page = |limit, cursor: &str| pb::ListEdgesRequest {
        page: Some(pb::PageRequest { limit, cursor: cursor.to_owned() }),
        ..Default::default()
    };
    let paths = |max_depth, max_paths| pb::FindPathsRequest {
        source_id: id.clone(),
        target_id: b.clone(),
        max_depth,
        max_paths,
        ..Default::default()
    };
    let checks: Vec<(&str, String, &str)> = vec![
        ("get unknown", code(g.get_edge(pb::GetEdgeRequest { id: unknown.clone() }).await), "not_found"),
        ("get bad id", code(g.get_edge(pb::GetEdgeRequest { id: "x".into() }).await), "invalid_id"),
        ("delete unknown", code(g.delete_edge(pb::DeleteEdgeRequest { id: unknown.clone() }).await), "not_found"),
        ("depth 11", code(g.get_neighborhood(neighbourhood(11, "", vec![], 0)).await), "invalid_depth"),
        ("direction", code(g.get_neighborhood(neighbourhood(1, "up", vec![], 0)).await), "invalid_direction"),
        ("relation", code(g.get_neighborhood(neighbourhood(1, "", vec!["BAD"], 0)).await), "invalid_edge_type"),
        ("max_nodes", code(g.get_neighborhood(neighbourhood(1, "", vec![], 10_001)).await), "invalid_max_nodes"),
        (
            "algorithm",
            code(
                g.traverse(pb::TraverseRequest {
                    start_ids: vec![id.clone()],
                    algorithm: "astar".into(),
                    ..Default::default()
                })
                .await,
            ),
            "invalid_algorithm",
        ),
        ("no start", code(g.traverse(pb::TraverseRequest::default()).await), "invalid_start_ids"),
        ("path depth", code(g.find_paths(paths(11, 0)).await), "invalid_depth"),
        ("max_paths", code(g.find_paths(paths(0, 11)).await), "invalid_max_paths"),
        (
            "path direction",
            code(g.find_paths(pb::FindPathsRequest { direction: "up".into(), ..paths(0, 0) }).await),
            "invalid_direction",
        ),
        (
            "undirected out",
            code(g.find_paths(pb::FindPathsRequest { direction: "out".into(), undirected: true, ..paths(0, 0) }).await),
            "invalid_direction",
        ),
        (
            "format",
            code(g.export_graph(pb::ExportGraphRequest { format: "svg".into(), ..Default::default() }).await),
            "invalid_format",
        ),
        ("limit", code(g.list_edges(page(1001, "")).await), "invalid_limit"),
        ("cursor", code(g.list_edges(page(10, "zzz")).await), "invalid_cursor"),
        ("top", code(g.get_graph_stats(pb::GetGraphStatsRequest { namespace: None, top: 101 }).await), "invalid_top"),
    ];
    for (what, got, expected) in checks {
        assert_eq!(got, expected, "{what}");
    }

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let delivery = tokio::time::timeout(Duration::from_secs(20), events.next()).await?.expect("an event")?;
        let e = &delivery.envelope;
        assert_eq!(e.source, "graph");
        seen.push((e.r#type.clone(), e.payload["id"].as_str().unwrap().to_owned()));
        delivery.ack().await?;
    }
    assert_eq!(
        seen,
        [
            ("helix.graph.edge.created".to_owned(), created.id.clone()),
            ("helix.graph.edge.created".to_owned(), other.id.clone()),
            ("helix.graph.edge.deleted".to_owned(), created.id.clone()),
        ]
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), events.next()).await.is_err(),
        "no event for a repeat or a refused write"
    );

    // listing: by node and direction, by relation, in pages, newest first
    let hub = a;
    let spokes = ids(3);
    let mut out = Vec::new();
    for (i, spoke) in spokes.iter().enumerate() {
        out.push(edge(&mut graph, hub, *spoke, if i == 0 { "part_of" } else { "mentions" }, 1.0).await.id);
    }
    let into = edge(&mut graph, spokes[0], hub, "relates_to", 1.0).await.id;
    let newest_first = |ids: &[&String]| -> Vec<String> { ids.iter().rev().map(|s| s.to_string()).collect() };
    let list = |direction: &str, relation: Option<&str>| pb::ListEdgesRequest {
        node_id: Some(hub.to_string()),
        relation: relation.map(str::to_owned),
        direction: direction.to_owned(),
        page: None,
    };
    let cases: Vec<(pb::ListEdgesRequest, Vec<String>)> = vec![
        (list("out", None), newest_first(&[&other.id, &out[0], &out[1], &out[2]])),
        (list("in", None), newest_first(&[&into])),
        (list("", None), newest_first(&[&other.id, &out[0], &out[1], &out[2], &into])),
        (list("both", Some("mentions")), newest_first(&[&other.id, &out[1], &out[2]])),
        (list("out", Some("derived_from")), vec![]),
    ];
    for (request, expected) in cases {
        let got = graph.list_edges(request.clone()).await?.into_inner();
        let got: Vec<String> = got.edges.into_iter().map(|e| e.id).collect();
        assert_eq!(got, expected, "{request:?}");
    }
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let request = pb::ListEdgesRequest { page: Some(pb::PageRequest { limit: 2, cursor }), ..Default::default() };
        let page = graph.list_edges(request).await?.into_inner();
        paged.extend(page.edges.into_iter().map(|e| e.id));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(paged, newest_first(&[&other.id, &out[0], &out[1], &out[2], &into]));
    helix.stop().await;
    Ok(())
}

/// (id, depth) of every node of a result, sorted.
fn depths(subgraph: &pb::Subgraph) -> Depths {
    subgraph.nodes.iter().map(|n| (n.id.clone(), n.depth)).collect()
}

async fn walks_by_depth_direction_and_relation(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let mut graph = connect(&helix).await?;
    let n = ids(6);
    //  4 -part_of-> 0 -mentions-> 1 -relates_to-> 2 -relates_to-> 3
    //                              1 -derived_from-> 5
    let e01 = edge(&mut graph, n[0], n[1], "mentions", 1.0).await.id;
    let e12 = edge(&mut graph, n[1], n[2], "relates_to", 1.0).await.id;
    let e23 = edge(&mut graph, n[2], n[3], "relates_to", 1.0).await.id;
    let e40 = edge(&mut graph, n[4], n[0], "part_of", 1.0).await.id;
    let e15 = edge(&mut graph, n[1], n[5], "derived_from", 1.0).await.id;

    let at = |pairs: &[(usize, u32)]| -> BTreeSet<(String, u32)> {
        pairs.iter().map(|(i, d)| (n[*i].to_string(), *d)).collect()
    };
    let edge_set = |ids: &[&String]| -> BTreeSet<String> { ids.iter().map(|s| s.to_string()).collect() };
    let around = |root: usize, depth, direction: &str, relations: Vec<&str>, max_nodes| pb::GetNeighborhoodRequest {
        id: n[root].to_string(),
        depth,
        relations: relations.into_iter().map(str::to_owned).collect(),
        direction: direction.to_owned(),
        max_nodes,
    };
    #[rustfmt::skip]
    let cases: Vec<(pb::GetNeighborhoodRequest, Depths, EdgeIds, bool)> = vec![
        (around(0, 0, "", vec![], 0), at(&[(0, 0), (1, 1), (4, 1)]), edge_set(&[&e01, &e40]), false),
        (around(0, 2, "out", vec![], 0), at(&[(0, 0), (1, 1), (2, 2), (5, 2)]), edge_set(&[&e01, &e12, &e15]), false),
        (around(0, 3, "out", vec![], 0), at(&[(0, 0), (1, 1), (2, 2), (3, 3), (5, 2)]), edge_set(&[&e01, &e12, &e23, &e15]), false),
        (around(0, 10, "in", vec![], 0), at(&[(0, 0), (4, 1)]), edge_set(&[&e40]), false),
        (around(0, 3, "out", vec!["mentions", "relates_to"], 0), at(&[(0, 0), (1, 1), (2, 2), (3, 3)]), edge_set(&[&e01, &e12, &e23]), false),
        (around(0, 2, "both", vec!["part_of"], 0), at(&[(0, 0), (4, 1)]), edge_set(&[&e40]), false),
        (around(2, 2, "both", vec![], 0), at(&[(2, 0), (1, 1), (3, 1), (0, 2), (5, 2)]), edge_set(&[&e12, &e23, &e01, &e15]), false),
        (around(0, 3, "out", vec![], 2), at(&[(0, 0), (1, 1)]), edge_set(&[&e01]), true),
        (around(3, 1, "out", vec![], 0), at(&[(3, 0)]), edge_set(&[]), false),
    ];
    for (request, nodes, edges, truncated) in cases {
        let got = graph.get_neighborhood(request.clone()).await?.into_inner();
        assert_eq!(depths(&got), nodes, "{request:?}");
        assert_eq!(got.edges.iter().map(|e| e.id.clone()).collect::<BTreeSet<_>>(), edges, "{request:?}");
        assert_eq!(got.truncated, truncated, "{request:?}");
    }
    let unknown = Uuid::now_v7();
    let alone = graph
        .get_neighborhood(pb::GetNeighborhoodRequest { id: unknown.to_string(), depth: 3, ..Default::default() })
        .await?
        .into_inner();
    assert_eq!(depths(&alone), BTreeSet::from([(unknown.to_string(), 0)]), "a node without edges stands alone");
    let hub = graph.get_neighborhood(pb::GetNeighborhoodRequest { id: n[1].to_string(), ..Default::default() }).await?;
    assert_eq!(hub.into_inner().nodes[0].degree, 3);

    // breadth- and depth-first reach the same nodes at the same depths, in their own order
    let traverse = |algorithm: &str| pb::TraverseRequest {
        start_ids: vec![n[0].to_string()],
        algorithm: algorithm.to_owned(),
        max_depth: 3,
        ..Default::default()
    };
    let bfs = graph.traverse(traverse("bfs")).await?.into_inner();
    let dfs = graph.traverse(traverse("dfs")).await?.into_inner();
    assert_eq!(depths(&bfs), depths(&dfs));
    let order = |s: &pb::Subgraph| -> Vec<String> { s.nodes.iter().map(|n| n.id.clone()).collect() };
    let by_index = |idx: &[usize]| -> Vec<String> { idx.iter().map(|i| n[*i].to_string()).collect() };
    assert_eq!(order(&bfs), by_index(&[0, 1, 2, 5, 3]));
    assert_eq!(order(&dfs), by_index(&[0, 1, 2, 3, 5]));

    // labels set by a caller, and a walk that keeps one namespace
    let label = |i: usize, namespace: &str| pb::GraphNode {
        id: n[i].to_string(),
        namespace: namespace.to_owned(),
        kind: "fact".to_owned(),
        title: format!("node {i}"),
        ..Default::default()
    };
    let nodes = vec![label(0, "kg"), label(1, "kg"), label(2, "other"), label(3, "kg")];
    let upserted = graph.upsert_graph_nodes(pb::UpsertGraphNodesRequest { nodes }).await?.into_inner();
    assert_eq!(upserted.upserted, 4);
    let bad = pb::UpsertGraphNodesRequest {
        nodes: vec![label(4, "kg"), pb::GraphNode { kind: "Bad".into(), ..label(5, "kg") }],
    };
    assert_eq!(code(graph.upsert_graph_nodes(bad).await), "invalid_kind");
    let mut request = traverse("bfs");
    request.namespaces = vec!["kg".to_owned()];
    let kept = graph.traverse(request).await?.into_inner();
    assert_eq!(order(&kept), by_index(&[0, 1, 3]), "the walk goes on through the nodes it drops");
    assert_eq!(kept.edges.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), std::slice::from_ref(&e01));
    assert_eq!((kept.nodes[0].title.as_str(), kept.nodes[0].namespace.as_str()), ("node 0", "kg"));
    helix.stop().await;
    Ok(())
}

async fn shortest_paths(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let mut graph = connect(&helix).await?;
    let n = ids(5);
    let (a, b, c, d, e) = (n[0], n[1], n[2], n[3], n[4]);
    //  a -10-> d;  a -1-> b -1-> c -1-> d (relates_to);  a -1-> e -1-> d (mentions)
    edge(&mut graph, a, d, "relates_to", 10.0).await;
    edge(&mut graph, a, b, "relates_to", 1.0).await;
    edge(&mut graph, b, c, "relates_to", 1.0).await;
    edge(&mut graph, c, d, "relates_to", 1.0).await;
    edge(&mut graph, a, e, "mentions", 1.0).await;
    edge(&mut graph, e, d, "mentions", 1.0).await;

    let path = |nodes: &[Uuid], weight: f64| (nodes.iter().map(ToString::to_string).collect::<Vec<_>>(), weight);
    struct Case {
        from: Uuid,
        to: Uuid,
        weighted: bool,
        relations: Vec<&'static str>,
        max_depth: u32,
        max_paths: u32,
        undirected: bool,
        direction: &'static str,
    }
    let case = |from, to| Case {
        from,
        to,
        weighted: false,
        relations: vec![],
        max_depth: 0,
        max_paths: 0,
        undirected: false,
        direction: "",
    };
    let cases: Vec<(Case, Vec<PathShape>)> = vec![
        (case(a, d), vec![path(&[a, d], 10.0)]),
        (Case { weighted: true, ..case(a, d) }, vec![path(&[a, e, d], 2.0)]),
        (Case { weighted: true, relations: vec!["relates_to"], ..case(a, d) }, vec![path(&[a, b, c, d], 3.0)]),
        (Case { weighted: true, relations: vec!["relates_to"], max_depth: 2, ..case(a, d) }, vec![path(&[a, d], 10.0)]),
        (
            Case { max_paths: 3, ..case(a, d) },
            vec![path(&[a, d], 10.0), path(&[a, e, d], 2.0), path(&[a, b, c, d], 3.0)],
        ),
        (
            Case { weighted: true, max_paths: 5, ..case(a, d) },
            vec![path(&[a, e, d], 2.0), path(&[a, b, c, d], 3.0), path(&[a, d], 10.0)],
        ),
        (Case { max_depth: 1, ..case(b, d) }, vec![]),
        (case(d, a), vec![]),
        (Case { undirected: true, ..case(d, a) }, vec![path(&[d, a], 10.0)]),
        (Case { undirected: true, weighted: true, ..case(c, e) }, vec![path(&[c, d, e], 2.0)]),
        (Case { direction: "in", weighted: true, ..case(d, a) }, vec![path(&[d, e, a], 2.0)]),
        (Case { direction: "in", ..case(a, d) }, vec![]),
        (Case { direction: "both", undirected: true, ..case(d, a) }, vec![path(&[d, a], 10.0)]),
        (case(a, a), vec![path(&[a], 0.0)]),
        (case(a, Uuid::now_v7()), vec![]),
    ];
    for (case, expected) in cases {
        let request = pb::FindPathsRequest {
            source_id: case.from.to_string(),
            target_id: case.to.to_string(),
            max_depth: case.max_depth,
            relations: case.relations.iter().map(|r| r.to_string()).collect(),
            weighted: case.weighted,
            max_paths: case.max_paths,
            undirected: case.undirected,
            direction: case.direction.to_owned(),
        };
        let got = graph.find_paths(request.clone()).await?.into_inner();
        let paths: Vec<(Vec<String>, f64)> = got.paths.iter().map(|p| (p.node_ids.clone(), p.total_weight)).collect();
        assert_eq!(paths, expected, "{request:?}");
        for p in &got.paths {
            assert_eq!(p.edges.len() + 1, p.node_ids.len().max(1), "{request:?}");
            for (i, edge) in p.edges.iter().enumerate() {
                let ends = [edge.source_id.clone(), edge.target_id.clone()];
                assert!(ends.contains(&p.node_ids[i]) && ends.contains(&p.node_ids[i + 1]), "{request:?}");
            }
        }
        let on_paths: BTreeSet<&String> = got.paths.iter().flat_map(|p| &p.node_ids).collect();
        assert_eq!(got.nodes.iter().map(|n| &n.id).collect::<BTreeSet<_>>(), on_paths, "{request:?}");
    }
    helix.stop().await;
    Ok(())
}

/// Checks that `text` is well-formed XML as far as tags go (every opened element is
/// closed in order) and counts the elements by name.
fn xml_elements(text: &str) -> anyhow::Result<std::collections::BTreeMap<String, usize>> {
    let mut open: Vec<String> = Vec::new();
    let mut counts = std::collections::BTreeMap::new();
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').ok_or_else(|| anyhow::anyhow!("unclosed tag"))? + start;
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('?') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            anyhow::ensure!(open.pop().as_deref() == Some(name), "</{name}> closes nothing open");
            continue;
        }
        let name = tag.split_whitespace().next().unwrap_or_default().trim_end_matches('/').to_owned();
        *counts.entry(name.clone()).or_default() += 1;
        if !tag.ends_with('/') {
            open.push(name);
        }
    }
    anyhow::ensure!(open.is_empty(), "unclosed elements {open:?}");
    Ok(counts)
}

async fn export(
    graph: &mut Graph,
    format: &str,
    roots: &[Uuid],
    depth: u32,
) -> anyhow::Result<pb::ExportGraphResponse> {
    let request = pb::ExportGraphRequest {
        format: format.to_owned(),
        root_ids: roots.iter().map(ToString::to_string).collect(),
        depth,
        ..Default::default()
    };
    Ok(graph.export_graph(request).await?.into_inner())
}

async fn stats_and_exports_survive_restart(backend: Backend) -> anyhow::Result<()> {
    let mut helix = TestHelix::start(backend).await?;
    let mut graph = connect(&helix).await?;
    let n = ids(7);
    // two components: a star 0 → 1, 2, 3 and 1 → 2; a pair 4 → 5; and node 6 labelled only
    let mut edges = Vec::new();
    for (s, t, relation) in
        [(0, 1, "mentions"), (0, 2, "mentions"), (0, 3, "part_of"), (1, 2, "relates_to"), (4, 5, "x-custom")]
    {
        edges.push((n[s], n[t], edge(&mut graph, n[s], n[t], relation, 1.5).await));
    }
    let title = "Quotes \"<&>\" and \\ back";
    let labels = vec![
        pb::GraphNode {
            id: n[0].to_string(),
            namespace: "kg".into(),
            kind: "fact".into(),
            title: title.into(),
            ..Default::default()
        },
        pb::GraphNode { id: n[6].to_string(), namespace: "kg".into(), kind: "note".into(), ..Default::default() },
    ];
    graph.upsert_graph_nodes(pb::UpsertGraphNodesRequest { nodes: labels }).await?;

    let stats = graph.get_graph_stats(pb::GetGraphStatsRequest { namespace: None, top: 2 }).await?.into_inner();
    assert_eq!((stats.nodes, stats.edges, stats.connected_components), (7, 5, 3));
    let relations: Vec<(String, u64)> = stats.relations.iter().map(|r| (r.relation.clone(), r.edges)).collect();
    let expected: Vec<(String, u64)> =
        [("mentions", 2), ("part_of", 1), ("relates_to", 1), ("x-custom", 1)].map(|(r, c)| (r.to_owned(), c)).into();
    assert_eq!(relations, expected);
    assert_eq!(stats.max_degree, 3);
    assert!((stats.mean_degree - 10.0 / 7.0).abs() < 1e-9, "{}", stats.mean_degree);
    let top: Vec<(String, u32)> = stats.top_nodes.iter().map(|n| (n.id.clone(), n.degree)).collect();
    assert_eq!(top, [(n[0].to_string(), 3), (n[1].to_string(), 2)]);
    assert_eq!(stats.top_nodes[0].title, title);
    let kg =
        graph.get_graph_stats(pb::GetGraphStatsRequest { namespace: Some("kg".into()), top: 0 }).await?.into_inner();
    assert_eq!((kg.nodes, kg.edges, kg.connected_components, kg.max_degree), (2, 0, 2, 0));

    // the whole graph in each format
    let json_export = export(&mut graph, "", &[], 0).await?;
    assert_eq!((json_export.format.as_str(), json_export.content_type.as_str()), ("json", "application/json"));
    let document: Value = serde_json::from_str(&json_export.document)?;
    assert_eq!((document["nodes"].as_array().unwrap().len(), document["edges"].as_array().unwrap().len()), (7, 5));
    assert_eq!(document["truncated"], json!(false));
    let graphml = export(&mut graph, "graphml", &[], 0).await?;
    assert_eq!(graphml.content_type, "application/graphml+xml");
    assert!(graphml.document.starts_with("<?xml"));
    let elements = xml_elements(&graphml.document)?;
    assert_eq!((elements["graphml"], elements["graph"], elements["node"], elements["edge"]), (1, 1, 7, 5));
    assert!(graphml.document.contains("Quotes &quot;&lt;&amp;&gt;&quot; and \\ back"));
    let dot = export(&mut graph, "dot", &[], 0).await?;
    assert_eq!(dot.content_type, "text/vnd.graphviz");
    assert!(dot.document.starts_with("digraph helix {") && dot.document.trim_end().ends_with('}'));
    for (s, t, e) in &edges {
        assert!(dot.document.contains(&format!("\"{s}\" -> \"{t}\" [id=\"{}\"", e.id)), "{}", dot.document);
    }
    assert!(dot.document.contains(r#"label="Quotes \"<&>\" and \\ back""#), "{}", dot.document);
    assert_eq!(dot.document.matches(" -> ").count(), 5);
    // a neighbourhood
    let around = export(&mut graph, "graphml", &[n[4]], 1).await?;
    let elements = xml_elements(&around.document)?;
    assert_eq!((elements["node"], elements["edge"]), (2, 1));
    let truncated = graph
        .export_graph(pb::ExportGraphRequest { format: "dot".into(), max_nodes: 3, ..Default::default() })
        .await?
        .into_inner();
    assert!(truncated.truncated);

    // rebuilt from the database at start: the same graph
    let path_request = pb::FindPathsRequest {
        source_id: n[0].to_string(),
        target_id: n[2].to_string(),
        max_paths: 2,
        ..Default::default()
    };
    let paths_before = graph.find_paths(path_request.clone()).await?.into_inner();
    helix.restart().await?;
    let mut graph = connect(&helix).await?;
    let after = graph.get_graph_stats(pb::GetGraphStatsRequest { namespace: None, top: 2 }).await?.into_inner();
    assert_eq!(after, stats);
    assert_eq!(export(&mut graph, "", &[], 0).await?, json_export);
    assert_eq!(graph.find_paths(path_request).await?.into_inner(), paths_before);
    let (_, _, first) = &edges[0];
    assert_eq!(&graph.get_edge(pb::GetEdgeRequest { id: first.id.clone() }).await?.into_inner(), first);
    helix.stop().await;
    Ok(())
}

/// Polls `check` until it holds, for up to 20 seconds: the graph follows node events
/// asynchronously.
async fn eventually<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await? {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn edges_go_with_a_deleted_node(backend: Backend) -> anyhow::Result<()> {
    let mut helix = TestHelix::start(backend).await?;
    let mut graph = connect(&helix).await?;
    let mut nodes = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        let body = json!({"content": format!("{name} content"), "title": name, "namespace": "kg", "kind": "fact"});
        let (status, node) = read(helix.api(Method::POST, "/api/v1/nodes").json(&body).send().await?).await;
        assert_eq!(status, 201, "{node}");
        nodes.push(Uuid::parse_str(node["id"].as_str().unwrap())?);
    }
    let (a, b, c) = (nodes[0], nodes[1], nodes[2]);
    edge(&mut graph, a, b, "mentions", 1.0).await;
    edge(&mut graph, c, a, "derived_from", 1.0).await;
    let kept = edge(&mut graph, b, c, "relates_to", 1.0).await;

    // labels follow node events
    let neighbourhood = |id: Uuid| pb::GetNeighborhoodRequest { id: id.to_string(), ..Default::default() };
    let g = graph.clone();
    eventually("labels from helix.node.created", || {
        let mut g = g.clone();
        async move {
            let around = g.get_neighborhood(neighbourhood(a)).await?.into_inner();
            let labels: BTreeSet<(&str, &str)> =
                around.nodes.iter().map(|n| (n.title.as_str(), n.namespace.as_str())).collect();
            Ok::<_, anyhow::Error>(labels == BTreeSet::from([("alpha", "kg"), ("beta", "kg"), ("gamma", "kg")]))
        }
    })
    .await?;

    let (status, _) = read(helix.api(Method::DELETE, &format!("/api/v1/nodes/{a}")).send().await?).await;
    assert_eq!(status, 204);
    eventually("edges of the deleted node removed", || {
        let mut g = g.clone();
        async move {
            // the database, and memory (which follows it)
            let request = pb::ListEdgesRequest { node_id: Some(a.to_string()), ..Default::default() };
            let stored = g.list_edges(request).await?.into_inner().edges;
            let held = g.get_neighborhood(neighbourhood(a)).await?.into_inner().edges;
            Ok::<_, anyhow::Error>(stored.is_empty() && held.is_empty())
        }
    })
    .await?;
    let around = graph.get_neighborhood(neighbourhood(b)).await?.into_inner();
    let expected = BTreeSet::from([(b.to_string(), 0), (c.to_string(), 1)]);
    assert_eq!(depths(&around), expected);
    assert_eq!(around.edges, std::slice::from_ref(&kept));
    let stats = graph.get_graph_stats(pb::GetGraphStatsRequest::default()).await?.into_inner();
    assert_eq!((stats.nodes, stats.edges), (2, 1));
    assert_eq!(code(graph.create_edge(create(&c.to_string(), &a.to_string(), "", None, None)).await), "node_deleted");

    // the deletion holds after a restart, and a node without edges is removed alone
    helix.restart().await?;
    let mut graph = connect(&helix).await?;
    assert_eq!(code(graph.create_edge(create(&a.to_string(), &b.to_string(), "", None, None)).await), "node_deleted");
    let removed = graph.remove_graph_node(pb::RemoveGraphNodeRequest { id: c.to_string() }).await?.into_inner();
    assert_eq!(removed.edges_removed, 1);
    let stats = graph.get_graph_stats(pb::GetGraphStatsRequest::default()).await?.into_inner();
    assert_eq!((stats.nodes, stats.edges), (1, 0), "beta keeps its label");
    helix.stop().await;
    Ok(())
}

crate::on_both_backends!(rest_graph_routes);

/// The gateway's graph routes, in the original system's shapes.
async fn rest_graph_routes(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let mut ids = Vec::new();
    for content in ["a", "b", "c"] {
        let (_, node) =
            read(helix.api(Method::POST, "/api/v1/nodes").json(&json!({"content": content})).send().await?).await;
        ids.push(node["id"].as_str().unwrap().to_owned());
    }
    let edge = |s: usize, t: usize| json!({"source_id": ids[s], "target_id": ids[t], "relation": "mentions", "metadata": {"why": "test"}});
    let (status, ab) = read(helix.api(Method::POST, "/api/v1/graph/edges").json(&edge(0, 1)).send().await?).await;
    assert_eq!(status, 201, "{ab}");
    assert_eq!((ab["relation"].as_str(), &ab["metadata"]["why"]), (Some("mentions"), &json!("test")));
    let (status, _) = read(helix.api(Method::POST, "/api/v1/graph/edges").json(&edge(1, 2)).send().await?).await;
    assert_eq!(status, 201);

    let (status, hood) = read(helix.api(Method::GET, &format!("/api/v1/graph/{}?depth=2", ids[0])).send().await?).await;
    assert_eq!(status, 200, "{hood}");
    let reached: BTreeSet<&str> = hood["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(reached, ids.iter().map(String::as_str).collect());
    assert_eq!(hood["edges"].as_array().unwrap().len(), 2);

    let (status, got) =
        read(helix.api(Method::GET, &format!("/api/v1/graph/edges/{}", ab["id"].as_str().unwrap())).send().await?)
            .await;
    assert_eq!((status, &got), (200, &ab));
    let (status, list) =
        read(helix.api(Method::GET, &format!("/api/v1/graph/edges?node_id={}&direction=out", ids[1])).send().await?)
            .await;
    assert_eq!((status, list["edges"].as_array().map(Vec::len)), (200, Some(1)));

    let response =
        helix.api(Method::GET, &format!("/api/v1/graph/export?format=dot&root={}&depth=2", ids[0])).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/vnd.graphviz");
    assert!(response.text().await?.contains("digraph"));

    // a walk from several roots, against the edges
    let walk = json!({"start_ids": [ids[2]], "direction": "in", "max_depth": 1});
    let (status, walked) = read(helix.api(Method::POST, "/api/v1/graph/traverse").json(&walk).send().await?).await;
    assert_eq!(status, 200, "{walked}");
    let reached: BTreeSet<&str> =
        walked["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(reached, [ids[1].as_str(), ids[2].as_str()].into(), "one hop against the edges: {walked}");
    let (status, error) =
        read(helix.api(Method::POST, "/api/v1/graph/traverse").json(&json!({"start_ids": ["nope"]})).send().await?)
            .await;
    assert_eq!((status, crate::support::code(&error)), (400, "invalid_id"), "{error}");
    // labels for a vertex storage does not know, then the vertex removed with its edges
    let outside = uuid::Uuid::now_v7().to_string();
    let labels = json!({"nodes": [{"id": outside, "namespace": "ext", "title": "From elsewhere"}]});
    let (status, upserted) = read(helix.api(Method::PUT, "/api/v1/graph/nodes").json(&labels).send().await?).await;
    assert_eq!((status, &upserted["upserted"]), (200, &json!(1)), "{upserted}");
    let (status, _) = read(
        helix
            .api(Method::POST, "/api/v1/graph/edges")
            .json(&json!({"source_id": outside, "target_id": ids[0]}))
            .send()
            .await?,
    )
    .await;
    assert_eq!(status, 201);
    let (status, labelled) = read(helix.api(Method::GET, &format!("/api/v1/graph/{outside}")).send().await?).await;
    assert_eq!(status, 200, "{labelled}");
    let root = labelled["nodes"].as_array().unwrap().iter().find(|n| n["id"] == outside.as_str()).cloned();
    assert_eq!(
        root.map(|n| (n["namespace"].clone(), n["title"].clone())),
        Some((json!("ext"), json!("From elsewhere")))
    );
    let (status, removed) =
        read(helix.api(Method::DELETE, &format!("/api/v1/graph/nodes/{outside}")).send().await?).await;
    assert_eq!((status, &removed["edges_removed"]), (200, &json!(1)), "{removed}");

    let cases = [
        (json!({"source_id": ids[0], "target_id": ids[0]}), 400, "self_loop"),
        (json!({"source_id": "nope", "target_id": ids[0]}), 400, "invalid_id"),
        (json!({"source_id": ids[0], "target_id": ids[1], "relation": "Bad Type"}), 400, "invalid_edge_type"),
        (json!({"source_id": ids[0]}), 422, "invalid_body"),
    ];
    for (body, status, code) in cases {
        let (got, error) = read(helix.api(Method::POST, "/api/v1/graph/edges").json(&body).send().await?).await;
        assert_eq!((got, crate::support::code(&error)), (status, code), "{body}");
    }
    let (status, _) =
        read(helix.api(Method::DELETE, &format!("/api/v1/graph/edges/{}", ab["id"].as_str().unwrap())).send().await?)
            .await;
    assert_eq!(status, 204);
    let (status, gone) =
        read(helix.api(Method::GET, &format!("/api/v1/graph/edges/{}", ab["id"].as_str().unwrap())).send().await?)
            .await;
    assert_eq!((status, crate::support::code(&gone)), (404, "not_found"));
    helix.stop().await;
    Ok(())
}

crate::on_both_backends!(rest_paths, rest_stats_and_deleted_nodes, rest_neighbours_and_exports, hx_graph_commands);

/// GET on the gateway: the status and JSON body.
async fn get(helix: &TestHelix, path: &str) -> anyhow::Result<(u16, Value)> {
    Ok(read(helix.api(Method::GET, path).send().await?).await)
}

/// An edge created over REST; its id.
async fn link(helix: &TestHelix, source: &str, target: &str, relation: &str, weight: f64) -> anyhow::Result<String> {
    let body = json!({"source_id": source, "target_id": target, "relation": relation, "weight": weight});
    let (status, edge) = read(helix.api(Method::POST, "/api/v1/graph/edges").json(&body).send().await?).await;
    anyhow::ensure!(status == 201, "{status} {edge}");
    Ok(edge["id"].as_str().unwrap().to_owned())
}

/// A node stored over REST (the graph learns its label from the node event); its id.
async fn store(helix: &TestHelix, title: &str, namespace: &str) -> anyhow::Result<String> {
    let body = json!({"content": format!("{title} content"), "title": title, "namespace": namespace});
    let (status, node) = read(helix.api(Method::POST, "/api/v1/nodes").json(&body).send().await?).await;
    anyhow::ensure!(status == 201, "{status} {node}");
    Ok(node["id"].as_str().unwrap().to_owned())
}

/// What a REST call should answer: these paths (node ids, total weight), or an error.
#[derive(Debug, PartialEq)]
enum Answer {
    Paths(Vec<PathShape>),
    Error(u16, String),
}

async fn rest_paths(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let n: Vec<String> = ids(6).iter().map(ToString::to_string).collect();
    let (a, b, c, d, e, f) = (&n[0], &n[1], &n[2], &n[3], &n[4], &n[5]);
    //  a -1-> b -1-> c (relates_to);  a -5-> c (mentions);  c -1-> d (part_of);  e -1-> f apart
    let ab = link(&helix, a, b, "relates_to", 1.0).await?;
    let bc = link(&helix, b, c, "relates_to", 1.0).await?;
    let ac = link(&helix, a, c, "mentions", 5.0).await?;
    let cd = link(&helix, c, d, "part_of", 1.0).await?;
    link(&helix, e, f, "relates_to", 1.0).await?;

    let paths = |list: &[(&[&String], f64)]| {
        Answer::Paths(list.iter().map(|(ids, w)| (ids.iter().map(|s| s.to_string()).collect(), *w)).collect())
    };
    let error = |status, code: &str| Answer::Error(status, code.to_owned());
    let unknown = Uuid::now_v7().to_string();
    #[rustfmt::skip]
    let cases: Vec<(String, Answer, Vec<&String>)> = vec![
        (format!("from={a}&to={c}"), paths(&[(&[a, c], 5.0)]), vec![&ac]),
        (format!("from={a}&to={c}&weighted=true"), paths(&[(&[a, b, c], 2.0)]), vec![&ab, &bc]),
        (format!("from={a}&to={c}&relation=relates_to"), paths(&[(&[a, b, c], 2.0)]), vec![&ab, &bc]),
        (format!("from={a}&to={c}&relation=relates_to,mentions&max_paths=3"), paths(&[(&[a, c], 5.0), (&[a, b, c], 2.0)]), vec![&ac, &ab, &bc]),
        (format!("from={a}&to={d}"), paths(&[(&[a, c, d], 6.0)]), vec![&ac, &cd]),
        (format!("from={a}&to={d}&weighted=true"), paths(&[(&[a, b, c, d], 3.0)]), vec![&ab, &bc, &cd]),
        (format!("from={a}&to={d}&max_depth=1"), paths(&[]), vec![]),
        (format!("from={d}&to={a}"), paths(&[]), vec![]),
        (format!("from={d}&to={a}&direction=in"), paths(&[(&[d, c, a], 6.0)]), vec![&cd, &ac]),
        (format!("from={d}&to={b}&direction=both"), paths(&[(&[d, c, b], 2.0)]), vec![&cd, &bc]),
        (format!("from={d}&to={b}&direction=out"), paths(&[]), vec![]),
        (format!("from={a}&to={e}&direction=both"), paths(&[]), vec![]),
        (format!("from={a}&to={unknown}"), paths(&[]), vec![]),
        (format!("from={a}&to={a}"), paths(&[(&[a], 0.0)]), vec![]),
        (format!("from=nope&to={a}"), error(400, "invalid_id"), vec![]),
        (format!("from={a}&to="), error(400, "invalid_id"), vec![]),
        (format!("from={a}"), error(400, "invalid_query"), vec![]),
        (format!("from={a}&to={c}&max_depth=11"), error(400, "invalid_depth"), vec![]),
        (format!("from={a}&to={c}&max_paths=11"), error(400, "invalid_max_paths"), vec![]),
        (format!("from={a}&to={c}&direction=up"), error(400, "invalid_direction"), vec![]),
        (format!("from={a}&to={c}&relation=Bad"), error(400, "invalid_edge_type"), vec![]),
        (format!("from={a}&to={c}&weighted=yes"), error(400, "invalid_query"), vec![]),
    ];
    for (query, expected, edges) in cases {
        let (status, body) = get(&helix, &format!("/api/v1/graph/path?{query}")).await?;
        let got = match status {
            200 => Answer::Paths(
                body["paths"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        let ids = p["node_ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned());
                        (ids.collect(), p["total_weight"].as_f64().unwrap())
                    })
                    .collect(),
            ),
            _ => Answer::Error(status, crate::support::code(&body).to_owned()),
        };
        assert_eq!(got, expected, "{query}: {body}");
        if status != 200 {
            continue;
        }
        // the edges of every path, in path order, and every node on them once
        let got_edges: Vec<&str> = body["paths"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["edges"].as_array().unwrap())
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        assert_eq!(got_edges, edges.iter().map(|s| s.as_str()).collect::<Vec<_>>(), "{query}");
        let on_paths: BTreeSet<&str> = body["paths"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["node_ids"].as_array().unwrap())
            .map(|id| id.as_str().unwrap())
            .collect();
        let nodes: BTreeSet<&str> =
            body["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
        assert_eq!(nodes, on_paths, "{query}");
    }
    // the graph routes are in the OpenAPI document
    let (_, doc) = get(&helix, "/api/v1/openapi.json").await?;
    for path in ["/api/v1/graph/path", "/api/v1/graph/stats", "/api/v1/graph/{id}", "/api/v1/graph/export"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path} missing from the OpenAPI document");
    }
    let parameters: BTreeSet<&str> = doc["paths"]["/api/v1/graph/path"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        parameters,
        BTreeSet::from(["from", "to", "max_depth", "relation", "direction", "weighted", "max_paths"])
    );
    for schema in ["PathsBody", "PathBody", "GraphStatsBody", "RelationCount"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema} missing from the OpenAPI document");
    }
    helix.stop().await;
    Ok(())
}

async fn rest_stats_and_deleted_nodes(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    // namespace kg: h -> x1, x2, x3 (mentions), x1 -> x2 (relates_to), x3 -> y (part_of)
    // namespace other: p -> q (relates_to), and z without an edge
    let mut kg = Vec::new();
    for title in ["h", "x1", "x2", "x3", "y"] {
        kg.push(store(&helix, title, "kg").await?);
    }
    let mut other = Vec::new();
    for title in ["p", "q", "z"] {
        other.push(store(&helix, title, "other").await?);
    }
    let (h, x1, x2, x3, y) = (&kg[0], &kg[1], &kg[2], &kg[3], &kg[4]);
    let (p, q, z) = (&other[0], &other[1], &other[2]);
    for (s, t, relation) in
        [(h, x1, "mentions"), (h, x2, "mentions"), (h, x3, "mentions"), (x1, x2, "relates_to"), (x3, y, "part_of")]
    {
        link(&helix, s, t, relation, 1.0).await?;
    }
    link(&helix, p, q, "relates_to", 2.0).await?;
    // labels follow node events: wait until the graph holds all eight
    eventually("labels of the stored nodes", || async {
        let (_, kg) = get(&helix, "/api/v1/graph/stats?namespace=kg").await?;
        let (_, other) = get(&helix, "/api/v1/graph/stats?namespace=other").await?;
        Ok((kg["nodes"].as_u64(), other["nodes"].as_u64()) == (Some(5), Some(3)))
    })
    .await?;

    // counts: (nodes, edges, edges by relation, components, largest component, isolated nodes, max degree)
    let counts = |nodes, edges, relations: &[(&str, u64)], components, largest, isolated, max: u64| {
        let relations: Vec<Value> = relations.iter().map(|(r, n)| json!({"relation": r, "edges": n})).collect();
        json!({
            "nodes": nodes, "edges": edges, "relations": relations, "connected_components": components,
            "largest_component": largest, "isolated_nodes": isolated, "max_degree": max,
        })
    };
    let everything = [("mentions", 3), ("relates_to", 2), ("part_of", 1)];
    // (query, counts, mean degree, top node ids)
    #[rustfmt::skip]
    let cases: Vec<(&str, Value, f64, Vec<&String>)> = vec![
        ("top=3", counts(8, 6, &everything, 3, 5, 1, 3), 1.5, vec![h, x1, x2]),
        ("", counts(8, 6, &everything, 3, 5, 1, 3), 1.5, vec![h, x1, x2, x3, y, p, q, z]),
        ("namespace=kg&top=1", counts(5, 5, &[("mentions", 3), ("part_of", 1), ("relates_to", 1)], 1, 5, 0, 3), 2.0, vec![h]),
        ("namespace=other", counts(3, 1, &[("relates_to", 1)], 2, 2, 1, 1), 2.0 / 3.0, vec![p, q, z]),
        ("namespace=none", counts(0, 0, &[], 0, 0, 0, 0), 0.0, vec![]),
    ];
    for (query, expected, mean, top) in cases {
        let (status, stats) = get(&helix, &format!("/api/v1/graph/stats?{query}")).await?;
        assert_eq!(status, 200, "{query}: {stats}");
        for (field, value) in expected.as_object().unwrap() {
            assert_eq!(&stats[field], value, "{query}: {field} in {stats}");
        }
        assert!((stats["mean_degree"].as_f64().unwrap() - mean).abs() < 1e-9, "{query}: {stats}");
        // ties by id: ids are UUIDv7, so in creation order
        let top_ids: Vec<&str> =
            stats["top_nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
        assert_eq!(top_ids, top.iter().map(|s| s.as_str()).collect::<Vec<_>>(), "{query}: {stats}");
    }
    let (_, stats) = get(&helix, "/api/v1/graph/stats?top=1").await?;
    assert_eq!(
        stats["top_nodes"],
        json!([{"id": h, "namespace": "kg", "kind": "note", "title": "h", "depth": 0, "degree": 3}])
    );
    for (query, code) in
        [("top=101", "invalid_top"), ("top=x", "invalid_query"), ("namespace=a%20b", "invalid_namespace")]
    {
        let (status, body) = get(&helix, &format!("/api/v1/graph/stats?{query}")).await?;
        assert_eq!((status, crate::support::code(&body)), (400, code), "{query}");
    }

    // deleting a node takes its edges: x3's two go, y stays (it has a label) on its own
    let (status, _) = read(helix.api(Method::DELETE, &format!("/api/v1/nodes/{x3}")).send().await?).await;
    assert_eq!(status, 204);
    eventually("the deleted node's edges removed", || async {
        Ok(get(&helix, "/api/v1/graph/stats").await?.1["edges"] == json!(4))
    })
    .await?;
    let (_, stats) = get(&helix, "/api/v1/graph/stats").await?;
    let got = [&stats["nodes"], &stats["connected_components"], &stats["largest_component"], &stats["isolated_nodes"]];
    assert_eq!(got, [&json!(7), &json!(4), &json!(3), &json!(2)], "{stats}");
    let (status, around) = get(&helix, &format!("/api/v1/graph/{x3}?depth=2")).await?;
    assert_eq!((status, &around["edges"]), (200, &json!([])), "{around}");
    let (_, listed) = get(&helix, &format!("/api/v1/graph/edges?node_id={x3}")).await?;
    assert_eq!(listed["edges"], json!([]));
    // degrees follow removed edges: h lost x3, x1 then loses h
    let degree = |body: &Value, id: &str| {
        body["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).unwrap()["degree"].clone()
    };
    let (_, around) = get(&helix, &format!("/api/v1/graph/{h}")).await?;
    assert_eq!((degree(&around, h), degree(&around, x1)), (json!(2), json!(2)), "{around}");
    let (_, listed) = get(&helix, &format!("/api/v1/graph/edges?node_id={h}&direction=out&relation=mentions")).await?;
    let h_x1 =
        listed["edges"].as_array().unwrap().iter().find(|e| e["target_id"] == x1.as_str()).unwrap()["id"].clone();
    let (status, _) =
        read(helix.api(Method::DELETE, &format!("/api/v1/graph/edges/{}", h_x1.as_str().unwrap())).send().await?).await;
    assert_eq!(status, 204);
    let (_, around) = get(&helix, &format!("/api/v1/graph/{x1}")).await?;
    assert_eq!((degree(&around, x1), degree(&around, x2)), (json!(1), json!(2)), "{around}");
    let body = json!({"source_id": h, "target_id": x3});
    let (status, refused) = read(helix.api(Method::POST, "/api/v1/graph/edges").json(&body).send().await?).await;
    assert_eq!((status, crate::support::code(&refused)), (404, "node_deleted"));
    helix.stop().await;
    Ok(())
}

/// The `id` attribute values of `<tag ...>` elements, and for edges also `source` and `target`.
fn xml_attributes(text: &str, tag: &str, attribute: &str) -> Vec<String> {
    let open = format!("<{tag} ");
    let key = format!(" {attribute}=\"");
    text.match_indices(&open)
        .filter_map(|(at, _)| {
            let element = &text[at..at + text[at..].find('>')?];
            let start = element.find(&key)? + key.len();
            Some(element[start..start + element[start..].find('"')?].to_owned())
        })
        .collect()
}

async fn rest_neighbours_and_exports(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let n: Vec<String> = ids(6).iter().map(ToString::to_string).collect();
    //  4 -part_of-> 0 -mentions-> 1 -relates_to-> 2 -relates_to-> 3
    //                              1 -derived_from-> 5
    let e01 = link(&helix, &n[0], &n[1], "mentions", 1.0).await?;
    let e12 = link(&helix, &n[1], &n[2], "relates_to", 1.0).await?;
    let e23 = link(&helix, &n[2], &n[3], "relates_to", 1.0).await?;
    let e40 = link(&helix, &n[4], &n[0], "part_of", 1.0).await?;
    let e15 = link(&helix, &n[1], &n[5], "derived_from", 0.5).await?;
    let all = [(&e01, 0, 1), (&e12, 1, 2), (&e23, 2, 3), (&e40, 4, 0), (&e15, 1, 5)];

    let at = |pairs: &[(usize, u32)]| -> Depths { pairs.iter().map(|(i, d)| (n[*i].clone(), *d)).collect() };
    let edge_set = |ids: &[&String]| -> EdgeIds { ids.iter().map(|s| s.to_string()).collect() };
    #[rustfmt::skip]
    let cases: Vec<(usize, &str, Depths, EdgeIds, bool)> = vec![
        (0, "depth=2", at(&[(0, 0), (1, 1), (4, 1), (2, 2), (5, 2)]), edge_set(&[&e01, &e40, &e12, &e15]), false),
        (0, "depth=2&direction=out", at(&[(0, 0), (1, 1), (2, 2), (5, 2)]), edge_set(&[&e01, &e12, &e15]), false),
        (0, "depth=2&direction=in", at(&[(0, 0), (4, 1)]), edge_set(&[&e40]), false),
        (0, "depth=2&direction=out&relation=mentions", at(&[(0, 0), (1, 1)]), edge_set(&[&e01]), false),
        (0, "depth=2&direction=out&relation=mentions,relates_to", at(&[(0, 0), (1, 1), (2, 2)]), edge_set(&[&e01, &e12]), false),
        (2, "depth=2&direction=in", at(&[(2, 0), (1, 1), (0, 2)]), edge_set(&[&e12, &e01]), false),
        (2, "depth=2&direction=both&relation=relates_to", at(&[(2, 0), (1, 1), (3, 1)]), edge_set(&[&e12, &e23]), false),
        (1, "depth=2&relation=derived_from,part_of", at(&[(1, 0), (5, 1)]), edge_set(&[&e15]), false),
        (3, "depth=2&direction=out", at(&[(3, 0)]), edge_set(&[]), false),
        (0, "depth=2&max_nodes=2", at(&[(0, 0), (1, 1)]), edge_set(&[&e01]), true),
    ];
    for (root, query, nodes, edges, truncated) in cases {
        let (status, body) = get(&helix, &format!("/api/v1/graph/{}?{query}", n[root])).await?;
        assert_eq!(status, 200, "{query}: {body}");
        let got: Depths = body["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["id"].as_str().unwrap().to_owned(), n["depth"].as_u64().unwrap() as u32))
            .collect();
        assert_eq!(got, nodes, "{root} {query}");
        let got: EdgeIds =
            body["edges"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
        assert_eq!(got, edges, "{root} {query}");
        assert_eq!(body["truncated"], json!(truncated), "{root} {query}");
    }
    for (path, code) in [
        (format!("/api/v1/graph/{}?depth=11", n[0]), "invalid_depth"),
        (format!("/api/v1/graph/{}?direction=up", n[0]), "invalid_direction"),
        (format!("/api/v1/graph/{}?relation=Bad", n[0]), "invalid_edge_type"),
        (format!("/api/v1/graph/{}?max_nodes=10001", n[0]), "invalid_max_nodes"),
        (format!("/api/v1/graph/{}?depth=x", n[0]), "invalid_query"),
        ("/api/v1/graph/nope".to_owned(), "invalid_id"),
    ] {
        let (status, body) = get(&helix, &path).await?;
        assert_eq!((status, crate::support::code(&body)), (400, code), "{path}");
    }

    // exports: (query, content type, node ids, edge ids, truncated)
    let nodes_of = |idx: &[usize]| -> BTreeSet<String> { idx.iter().map(|i| n[*i].clone()).collect() };
    let every = edge_set(&[&e01, &e12, &e23, &e40, &e15]);
    #[rustfmt::skip]
    let cases: Vec<(String, &str, BTreeSet<String>, EdgeIds, bool)> = vec![
        (String::new(), "application/json", nodes_of(&[0, 1, 2, 3, 4, 5]), every.clone(), false),
        ("format=graphml".into(), "application/graphml+xml", nodes_of(&[0, 1, 2, 3, 4, 5]), every.clone(), false),
        ("format=dot".into(), "text/vnd.graphviz", nodes_of(&[0, 1, 2, 3, 4, 5]), every.clone(), false),
        (format!("format=dot&root={}&depth=2&direction=out", n[0]), "text/vnd.graphviz", nodes_of(&[0, 1, 2, 5]), edge_set(&[&e01, &e12, &e15]), false),
        (format!("format=graphml&root={}&depth=3&relation=part_of", n[0]), "application/graphml+xml", nodes_of(&[0, 4]), edge_set(&[&e40]), false),
        (format!("format=json&root={},{}&depth=1&direction=in", n[0], n[3]), "application/json", nodes_of(&[0, 4, 3, 2]), edge_set(&[&e40, &e23]), false),
        ("format=graphml&relation=relates_to".into(), "application/graphml+xml", nodes_of(&[0, 1, 2, 3, 4, 5]), edge_set(&[&e12, &e23]), false),
        (format!("format=json&root={}&depth=2&max_nodes=2", n[0]), "application/json", nodes_of(&[0, 1]), edge_set(&[&e01]), true),
    ];
    for (query, content_type, nodes, edges, truncated) in cases {
        let response = helix.api(Method::GET, &format!("/api/v1/graph/export?{query}")).send().await?;
        assert_eq!(response.status(), 200, "{query}");
        assert_eq!(response.headers()["content-type"], content_type, "{query}");
        assert_eq!(response.headers()["x-helix-truncated"], truncated.to_string().as_str(), "{query}");
        let text = response.text().await?;
        let (got_nodes, got_edges): (BTreeSet<String>, EdgeIds) = match content_type {
            "application/json" => {
                let document: Value = serde_json::from_str(&text)?;
                assert_eq!(document["truncated"], json!(truncated), "{query}");
                let ids = |key: &str| {
                    document[key].as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap().to_owned()).collect()
                };
                (ids("nodes"), ids("edges"))
            }
            "application/graphml+xml" => {
                let elements = xml_elements(&text)?;
                assert_eq!((elements["graphml"], elements["graph"]), (1, 1), "{query}");
                assert_eq!(elements.get("node").copied().unwrap_or(0), nodes.len(), "{query}");
                let declared: BTreeSet<String> = xml_attributes(&text, "node", "id").into_iter().collect();
                // every edge joins declared nodes
                for end in ["source", "target"] {
                    for id in xml_attributes(&text, "edge", end) {
                        assert!(declared.contains(&id), "{query}: edge {end} {id} is not a node");
                    }
                }
                (declared, xml_attributes(&text, "edge", "id").into_iter().collect())
            }
            _ => {
                assert!(text.starts_with("digraph helix {") && text.trim_end().ends_with('}'), "{query}: {text}");
                let mut edges = EdgeIds::new();
                for (id, s, t) in &all {
                    if text.contains(&format!("\"{}\" -> \"{}\" [id=\"{id}\"", n[*s], n[*t])) {
                        edges.insert(id.to_string());
                    }
                }
                assert_eq!(text.matches(" -> ").count(), edges.len(), "{query}: {text}");
                let nodes = n.iter().filter(|id| text.contains(&format!("  \"{id}\" [label="))).cloned().collect();
                (nodes, edges)
            }
        };
        assert_eq!((got_nodes, got_edges), (nodes, edges), "{query}");
    }
    for (query, code) in [
        ("format=svg".to_owned(), "invalid_format"),
        ("depth=2".to_owned(), "invalid_depth"),
        ("root=nope".to_owned(), "invalid_id"),
        (format!("root={}&direction=up", n[0]), "invalid_direction"),
        ("relation=Bad".to_owned(), "invalid_edge_type"),
    ] {
        let (status, body) = get(&helix, &format!("/api/v1/graph/export?{query}")).await?;
        assert_eq!((status, crate::support::code(&body)), (400, code), "{query}");
    }
    helix.stop().await;
    Ok(())
}

/// Runs the real `hx graph ...` against the test's gateway; success and what it printed.
async fn hx_graph(helix: &TestHelix, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_hx"))
        .arg("graph")
        .args(args)
        .args(["--server", &helix.base_url])
        .env("HELIX_API_KEY", &helix.env.admin_key)
        .output()
        .await?;
    let text = String::from_utf8(output.stdout)? + &String::from_utf8(output.stderr)?;
    Ok((output.status.success(), text))
}

async fn hx_graph_commands(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let (a, b, c) =
        (store(&helix, "alpha", "kg").await?, store(&helix, "beta", "kg").await?, store(&helix, "gamma", "kg").await?);
    let d = Uuid::now_v7().to_string();

    let (ok, out) = hx_graph(&helix, &["link", &a, &b, "--relation", "mentions", "--weight", "2.5"]).await?;
    assert!(ok && out.starts_with("linked ") && out.contains(&format!("{a} -[mentions 2.5]-> {b}")), "{out}");
    let ab = out.split_whitespace().nth(1).unwrap().to_owned();
    let (ok, out) = hx_graph(&helix, &["link", &a, &b, "-r", "mentions"]).await?;
    assert!(ok && out.contains(&ab), "linking again answers the same edge: {out}");
    let (ok, out) = hx_graph(&helix, &["link", &b, &c, "--json"]).await?;
    assert!(ok, "{out}");
    let bc: Value = serde_json::from_str(&out)?;
    assert_eq!((&bc["source_id"], &bc["relation"], &bc["weight"]), (&json!(b), &json!("relates_to"), &json!(1.0)));
    let (ok, out) = hx_graph(&helix, &["link", &c, &d, "-r", "part_of"]).await?;
    assert!(ok, "{out}");
    let cd = out.split_whitespace().nth(1).unwrap().to_owned();

    // labels come with node events
    eventually("labels", || async {
        let (_, stats) = get(&helix, "/api/v1/graph/stats?namespace=kg").await?;
        Ok(stats["nodes"] == json!(3))
    })
    .await?;

    let (ok, out) = hx_graph(&helix, &["neighbours", &a, "--depth", "2"]).await?;
    assert!(ok && out.starts_with("3 nodes, 2 edges\n"), "{out}");
    assert!(out.contains(&format!("  0  {a}  alpha [kg/note]  (degree 1)")), "{out}");
    assert!(out.contains(&format!("  2  {c}  gamma [kg/note]  (degree 2)")), "{out}");
    let (ok, out) =
        hx_graph(&helix, &["neighbors", &c, "-d", "2", "--direction", "in", "-r", "relates_to", "--json"]).await?;
    assert!(ok, "{out}");
    let around: Value = serde_json::from_str(&out)?;
    let reached: BTreeSet<&str> =
        around["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(reached, BTreeSet::from([c.as_str(), b.as_str()]));

    let (ok, out) = hx_graph(&helix, &["path", &a, &d]).await?;
    assert!(ok && out.starts_with("path 1: 3 hops, total weight 4.5\n"), "{out}");
    assert!(out.contains(&format!("  -[relates_to 1.0]-> {c}  gamma [kg/note]")), "{out}");
    assert!(out.trim_end().ends_with(&format!("-[part_of 1.0]-> {d}")), "{out}");
    let (ok, out) = hx_graph(&helix, &["path", &d, &a, "--direction", "in"]).await?;
    assert!(ok && out.contains(&format!("  <-[relates_to 1.0]- {b}  beta")), "{out}");
    assert!(out.trim_end().ends_with(&format!("  <-[mentions 2.5]- {a}  alpha [kg/note]")), "{out}");
    let (ok, out) = hx_graph(&helix, &["path", &d, &a, "--max-depth", "5"]).await?;
    assert!(ok && out.trim_end() == format!("no path from {d} to {a} within 5 hops"), "{out}");
    let (ok, out) = hx_graph(&helix, &["path", &a, &d, "--json"]).await?;
    let found: Value = serde_json::from_str(&out)?;
    assert!(ok && found["paths"][0]["node_ids"] == json!([a, b, c, d]), "{out}");

    let (ok, out) = hx_graph(&helix, &["stats"]).await?;
    assert!(ok, "{out}");
    for line in [
        "nodes       4",
        "edges       3",
        "components  1 (largest 4 nodes; 0 isolated nodes)",
        "degree      mean 1.50, max 2",
    ] {
        assert!(out.contains(line), "{line:?} in {out}");
    }
    assert!(
        out.contains("  mentions             1") && out.contains(&format!("       2  {b}  beta [kg/note]")),
        "{out}"
    );
    let (ok, out) = hx_graph(&helix, &["stats", "-n", "kg", "--json"]).await?;
    let stats: Value = serde_json::from_str(&out)?;
    assert!(ok && (stats["nodes"].clone(), stats["edges"].clone()) == (json!(3), json!(2)), "{out}");

    let (ok, out) = hx_graph(&helix, &["export", "--format", "dot"]).await?;
    assert!(ok && out.starts_with("digraph helix {") && out.matches(" -> ").count() == 3, "{out}");
    assert!(out.contains(&format!("\"{a}\" -> \"{b}\" [id=\"{ab}\"")), "{out}");
    let (ok, out) = hx_graph(&helix, &["export", "-f", "graphml", "--root", &a, "--depth", "1"]).await?;
    assert!(ok, "{out}");
    let elements = xml_elements(&out)?;
    assert_eq!((elements["node"], elements["edge"]), (2, 1), "{out}");
    let (ok, out) = hx_graph(&helix, &["export"]).await?;
    let document: Value = serde_json::from_str(&out)?;
    assert!(ok && document["edges"].as_array().unwrap().len() == 3, "{out}");

    let (ok, out) = hx_graph(&helix, &["unlink", &cd]).await?;
    assert!(ok && out.trim_end() == format!("unlinked {cd}"), "{out}");
    // refusals carry the gateway's code and fail the command
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["unlink", &cd], "(not_found, HTTP 404)"),
        (vec!["link", &a, &a], "(self_loop, HTTP 400)"),
        (vec!["link", &a, "nope"], "(invalid_id, HTTP 400)"),
        (vec!["neighbours", &a, "--direction", "up"], "(invalid_direction, HTTP 400)"),
        (vec!["path", "nope", &a], "(invalid_id, HTTP 400)"),
        (vec!["export", "--format", "svg"], "(invalid_format, HTTP 400)"),
        (vec!["stats", "--top", "1000"], "(invalid_top, HTTP 400)"),
    ];
    for (args, expected) in cases {
        let (ok, out) = hx_graph(&helix, &args).await?;
        assert!(!ok && out.starts_with("error: ") && out.contains(expected), "{args:?}: {out}");
    }
    helix.stop().await;
    Ok(())
}
