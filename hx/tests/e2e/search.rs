//! Search: nodes written through the gateway become searchable through the search
//! service's gRPC API within a second, by their words (the rules of the query language)
//! and by their meaning (the real MiniLM model), fused in hybrid; the index survives
//! restarts and is rebuilt from storage by Reindex.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use helix_proto::v1 as pb;
use helix_proto::v1::search_service_client::SearchServiceClient;
use helix_runtime::grpc::GrpcChannel;
use helix_testkit::{Backend, TestHelix};
use hx::fleet::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::read;

crate::on_both_backends!(
    writes_are_searchable_within_a_second,
    words_first_vectors_after,
    query_language_filters_and_ranking,
    semantic_and_hybrid_modes,
    bad_requests_are_refused,
    pushes_reindex_and_restarts,
);

type Search = SearchServiceClient<GrpcChannel>;

/// Longer than any wait may take before a test gives up; the asserted bounds are tighter.
const PATIENCE: Duration = Duration::from_secs(10);
const WITHIN: Duration = Duration::from_secs(1);

async fn search_client(helix: &TestHelix) -> anyhow::Result<Search> {
    Ok(SearchServiceClient::new(helix.node.as_ref().unwrap().grpc_channel().await?))
}

/// A full-text search, words joined by AND.
fn query(text: &str) -> pb::SearchRequest {
    pb::SearchRequest { query: text.to_owned(), mode: "fulltext".to_owned(), ..Default::default() }
}

fn semantic(text: &str) -> pb::SearchRequest {
    pb::SearchRequest { mode: "semantic".to_owned(), ..query(text) }
}

fn hybrid(text: &str) -> pb::SearchRequest {
    pb::SearchRequest { mode: String::new(), ..query(text) }
}

fn ids(response: &pb::SearchResponse) -> Vec<String> {
    response.hits.iter().map(|hit| hit.id.clone()).collect()
}

fn id_set(response: &pb::SearchResponse) -> BTreeSet<String> {
    response.hits.iter().map(|hit| hit.id.clone()).collect()
}

async fn create(helix: &TestHelix, body: Value) -> anyhow::Result<String> {
    let (status, node) = read(helix.api(Method::POST, "/api/v1/nodes").json(&body).send().await?).await;
    anyhow::ensure!(status == 201, "create answered {status}: {node}");
    Ok(node["id"].as_str().unwrap().to_owned())
}

/// Searches until `ready` holds for the answer; how long after `since` that was.
async fn until(
    search: &mut Search,
    request: pb::SearchRequest,
    since: Instant,
    ready: impl Fn(&pb::SearchResponse) -> bool,
) -> anyhow::Result<Duration> {
    loop {
        let response = search.search(request.clone()).await?.into_inner();
        if ready(&response) {
            return Ok(since.elapsed());
        }
        anyhow::ensure!(since.elapsed() < PATIENCE, "{:?} still answers {:?}", request.query, ids(&response));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn stats(search: &mut Search) -> anyhow::Result<pb::SearchStats> {
    Ok(search.get_search_stats(pb::GetSearchStatsRequest::default()).await?.into_inner())
}

/// Waits until the index holds `count` documents, by words and by meaning.
async fn until_indexed(search: &mut Search, count: u64) -> anyhow::Result<()> {
    let since = Instant::now();
    while !matches!(stats(search).await?, pb::SearchStats { documents, vectors_pending: 0, .. } if documents == count) {
        anyhow::ensure!(since.elapsed() < PATIENCE, "the index never held {count} documents");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Waits until no vector is pending; the stats then.
async fn until_vectors(search: &mut Search) -> anyhow::Result<pb::SearchStats> {
    let since = Instant::now();
    loop {
        let stats = stats(search).await?;
        if stats.vectors_pending == 0 {
            return Ok(stats);
        }
        anyhow::ensure!(since.elapsed() < Duration::from_secs(600), "vectors still pending: {stats:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn writes_are_searchable_within_a_second(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let mut search = search_client(&helix).await?;
    let ready = helix.http.get(format!("{}/readyz", helix.node.as_ref().unwrap().metrics_url())).send().await?;
    assert_eq!(ready.status(), 200, "the open index is ready: {}", ready.text().await?);

    // others first, so that finding the node by its meaning is not finding anything
    for content in ["Quarterly revenue grew by four percent", "Compile the kernel with debug symbols"] {
        create(&helix, json!({"content": content, "namespace": "other"})).await?;
    }
    until_indexed(&mut search, 2).await?;
    let zoo = |request: pb::SearchRequest| pb::SearchRequest { namespaces: vec!["zoo".into()], ..request };
    let top_is = |id: &str| {
        let id = id.to_owned();
        move |r: &pb::SearchResponse| r.hits.first().is_some_and(|hit| hit.id == id)
    };
    // no word in common with the node: found by meaning alone
    let paraphrase = semantic("a cheerful little animal that visitors photograph");

    let since = Instant::now();
    let body = json!({
        "title": "Marsupials", "content": "The quokka smiles at tourists", "namespace": "zoo", "kind": "fact",
        "tags": ["animal"], "metadata": {"legs": 4}, "source": "notes", "importance": 0.7
    });
    let id = create(&helix, body).await?;
    let took = until(&mut search, zoo(query("quokka")), since, |r| ids(r) == [id.clone()]).await?;
    assert!(took < WITHIN, "a new node was searchable after {took:?}");
    let took = until(&mut search, paraphrase.clone(), since, top_is(&id)).await?;
    assert!(took < WITHIN, "a new node was found by meaning after {took:?}");

    let response = search.search(zoo(query("quokka"))).await?.into_inner();
    assert_eq!((response.mode.as_str(), response.total_hits, response.next_cursor.as_str()), ("fulltext", 1, ""));
    let hit = &response.hits[0];
    assert_eq!(
        (hit.namespace.as_str(), hit.kind.as_str(), hit.title.as_str(), hit.content.as_str()),
        ("zoo", "fact", "Marsupials", "The quokka smiles at tourists")
    );
    assert_eq!(
        (hit.tags.clone(), hit.source.as_str(), hit.importance, hit.version),
        (vec!["animal".into()], "notes", 0.7, 1)
    );
    assert_eq!(serde_json::from_str::<Value>(&hit.metadata_json)?, json!({"legs": 4}));
    assert!(hit.score > 0.0 && hit.fulltext_score == Some(hit.score) && hit.vector_score.is_none(), "{hit:?}");
    assert_eq!((hit.fulltext_rank, hit.vector_rank), (Some(1), None));
    assert!(hit.created_at.is_some() && hit.created_at == hit.updated_at);
    assert!(hit.highlights.is_empty(), "highlights only when asked");

    // an update replaces the old text
    let since = Instant::now();
    let update = json!({"version": 1, "title": "Marsupials", "content": "The wombat digs burrows", "namespace": "zoo"});
    let (status, body) = read(helix.api(Method::PUT, &format!("/api/v1/nodes/{id}")).json(&update).send().await?).await;
    assert_eq!(status, 200, "{body}");
    let took = until(&mut search, query("wombat"), since, |r| ids(r) == [id.clone()]).await?;
    assert!(took < WITHIN, "an update was searchable after {took:?}");
    assert!(search.search(query("quokka")).await?.into_inner().hits.is_empty(), "the old text is gone");
    let digging = semantic("an animal excavating tunnels underground");
    let took = until(&mut search, digging.clone(), since, top_is(&id)).await?;
    assert!(took < WITHIN, "an update was found by meaning after {took:?}");
    assert_eq!(search.search(query("wombat")).await?.into_inner().hits[0].version, 2);

    // a deletion removes it
    let since = Instant::now();
    let (status, _) = read(helix.api(Method::DELETE, &format!("/api/v1/nodes/{id}")).send().await?).await;
    assert_eq!(status, 204);
    let took = until(&mut search, query("wombat"), since, |r| r.hits.is_empty()).await?;
    assert!(took < WITHIN, "a deleted node was found until {took:?}");
    let took = until(&mut search, digging, since, |r| !ids(r).contains(&id)).await?;
    assert!(took < WITHIN, "a deleted node was found by meaning until {took:?}");
    let left = search.search(hybrid("wombat digs burrows")).await?.into_inner();
    assert!(!ids(&left).contains(&id), "gone from hybrid too: {left:?}");
    let stats = stats(&mut search).await?;
    assert_eq!((stats.documents, stats.vectors), (2, 2));
    if let Some(qdrant) = helix.env.qdrant() {
        assert_eq!(qdrant.points(), 2, "the fleet keeps its vectors in Qdrant");
    }
    helix.stop().await;
    Ok(())
}

/// Issue 18: 2,000 nodes bulk-stored, 100 to a request, while the real model embeds a
/// few dozen a second. Each request's nodes are all searchable by their words within a
/// second of its answer, while vectors are still pending; once none is pending, a node is found by
/// its meaning alone. `?wait_for=vectors` answers once the node is found by meaning.
async fn words_first_vectors_after(backend: Backend) -> anyhow::Result<()> {
    const BATCHES: usize = 20;
    const PER_BATCH: usize = 100;
    let helix = TestHelix::start(backend).await?;
    let mut search = search_client(&helix).await?;
    let topics = [
        "Quarterly revenue grew by four percent in the northern region",
        "Compile the kernel with debug symbols before profiling",
        "The committee postponed the vote on the budget until spring",
        "Replace the air filter every twelve thousand kilometres",
        "The recipe needs two cups of flour and a pinch of salt",
    ];
    let quokka = 1234;
    for batch in 0..BATCHES {
        let nodes: Vec<Value> = (0..PER_BATCH)
            .map(|i| {
                let n = batch * PER_BATCH + i;
                let content = if n == quokka {
                    "The quokka smiles at tourists".to_owned()
                } else {
                    format!("{} (note {n})", topics[n % topics.len()])
                };
                json!({"title": format!("uniq{n} batch{batch}"), "content": content})
            })
            .collect();
        let (status, body) =
            read(helix.api(Method::POST, "/api/v1/nodes/bulk").json(&json!({ "nodes": nodes })).send().await?).await;
        anyhow::ensure!(status == 201, "bulk answered {status}: {body}");
        let written = Instant::now();
        let every = pb::SearchRequest {
            page: Some(pb::PageRequest { limit: 1, cursor: String::new() }),
            ..query(&format!("batch{batch}"))
        };
        let took = until(&mut search, every, written, |r| r.total_hits == PER_BATCH as u64).await?;
        let pending = stats(&mut search).await?.vectors_pending;
        assert!(
            took < WITHIN,
            "batch {batch}: all its nodes searchable by words after {took:?} ({pending} vectors pending)"
        );
        let last = batch * PER_BATCH + PER_BATCH - 1;
        until(&mut search, query(&format!("uniq{last}")), written, |r| r.hits.len() == 1).await?;
    }
    let pending = stats(&mut search).await?.vectors_pending;
    assert!(pending > 0, "the model cannot have embedded 2,000 nodes yet; the test would prove nothing");
    let found = search.search(semantic("a cheerful little animal that visitors photograph")).await?.into_inner();
    assert!(found.vectors_pending > 0, "answers say vectors are behind: {}", found.vectors_pending);

    let all = until_vectors(&mut search).await?;
    assert_eq!((all.documents, all.vectors), (2000, 2000));
    let found = search.search(semantic("a cheerful little animal that visitors photograph")).await?.into_inner();
    assert_eq!(found.hits.first().map(|h| h.title.as_str()), Some(format!("uniq{quokka} batch12").as_str()));
    assert_eq!(found.vectors_pending, 0);

    // read-your-writes by meaning: the answer comes once the vector is written
    let body = json!({"content": "The axolotl regrows its lost limbs"});
    let (status, node) =
        read(helix.api(Method::POST, "/api/v1/nodes?wait_for=vectors").json(&body).send().await?).await;
    assert_eq!(status, 201, "{node}");
    let found = search.search(semantic("an amphibian that can regenerate legs")).await?.into_inner();
    assert_eq!(found.hits.first().map(|h| h.id.as_str()), node["id"].as_str(), "found by meaning at once");
    let (status, body) =
        read(helix.api(Method::POST, "/api/v1/nodes?wait_for=soon").json(&json!({"content": "x"})).send().await?).await;
    assert_eq!((status, body["error"]["code"].as_str().is_some()), (400, true), "{body}");
    helix.stop().await;
    Ok(())
}

/// The fleet keeps its vectors in Qdrant. While Qdrant refuses every call, a new node
/// is searchable by its words, its vector waits (counted as pending) and the index
/// reports why it is not ready; once Qdrant answers again, the vector is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_outage_keeps_words_searchable_and_loses_no_vector() -> anyhow::Result<()> {
    let helix = TestHelix::start(Backend::Fleet).await?;
    let qdrant = helix.env.qdrant().expect("the fleet backend has a Qdrant");
    let collections = qdrant.collections();
    assert!(
        collections.len() == 1 && collections[0].starts_with("helix_nodes_") && collections[0].ends_with("_384"),
        "one collection named after the embedder: {collections:?}"
    );
    let mut search = search_client(&helix).await?;
    let okapi = create(&helix, json!({"content": "The okapi lives in the rainforest"})).await?;
    until(&mut search, semantic("okapi rainforest"), Instant::now(), |r| ids(r) == [okapi.clone()]).await?;

    qdrant.fail_next(usize::MAX);
    let since = Instant::now();
    let pangolin = create(&helix, json!({"content": "The pangolin rolls into a scaly ball"})).await?;
    let took = until(&mut search, query("pangolin"), since, |r| ids(r) == [pangolin.clone()]).await?;
    assert!(took < WITHIN, "words wait for no vector: searchable after {took:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pending = stats(&mut search).await?;
    assert_eq!((pending.documents, pending.vectors_pending), (2, 1), "the vector waits: {pending:?}");
    let ready = helix.http.get(format!("{}/readyz", helix.node.as_ref().unwrap().metrics_url())).send().await?;
    assert_eq!(ready.status(), 503, "the failing index is not ready: {}", ready.text().await?);

    let back = Instant::now();
    qdrant.fail_next(0);
    until(&mut search, semantic("scaly pangolin ball"), back, |r| r.hits.first().is_some_and(|h| h.id == pangolin))
        .await?;
    assert_eq!(qdrant.points(), 2);
    let after = stats(&mut search).await?;
    assert_eq!((after.vectors, after.vectors_pending), (2, 0));
    let ready = helix.http.get(format!("{}/readyz", helix.node.as_ref().unwrap().metrics_url())).send().await?;
    assert_eq!(ready.status(), 200, "ready again: {}", ready.text().await?);
    helix.stop().await;
    Ok(())
}

async fn query_language_filters_and_ranking(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let mut search = search_client(&helix).await?;
    let nodes = [
        json!({"title": "Morning routine", "content": "She runs along the river before breakfast",
               "tags": ["health"], "namespace": "life", "kind": "note"}),
        json!({"title": "Garbage collection", "content": "Rust has no garbage collector; ownership frees memory",
               "tags": ["rust", "lang"], "namespace": "tech", "kind": "fact"}),
        json!({"title": "Collectors", "content": "A stamp collector keeps garbage too",
               "tags": ["hobby"], "namespace": "life", "kind": "fact"}),
        json!({"title": "Rustaceans", "content": "The community of Rust programmers",
               "tags": ["rust"], "namespace": "tech", "kind": "note"}),
        json!({"title": "Zebra", "content": "A striped animal of the savanna"}),
        json!({"title": "Savanna notes", "content": "Lions hunt near the zebra herds at dusk while birds watch from the trees"}),
    ];
    let mut id = Vec::new();
    for node in nodes {
        id.push(create(&helix, node).await?);
    }
    until_indexed(&mut search, 6).await?;
    let set = |picked: &[usize]| -> BTreeSet<String> { picked.iter().map(|&i| id[i].clone()).collect() };

    let language: &[(&str, BTreeSet<String>)] = &[
        ("running", set(&[0])),               // stemming: runs ~ running
        ("RIVER", set(&[0])),                 // case does not matter
        ("garbage collector", set(&[1, 2])),  // every word, anywhere
        ("\"garbage collector\"", set(&[1])), // the words together, in order
        ("rustac*", set(&[3])),               // a prefix
        ("running*", set(&[0])),              // a whole word as a prefix finds what the word finds
        ("collec*", set(&[1, 2])),            // a prefix, in title or content
        ("rust -garbage", set(&[3])),         // excluded words
        ("stamp OR ownership", set(&[1, 2])), // either word
        ("tags:hobby", set(&[2])),            // one field
        ("programmers of rust", set(&[3])),   // the words in any order
        ("quokka", set(&[])),
    ];
    for (text, expected) in language {
        let response = search.search(query(text)).await?.into_inner();
        assert_eq!(&id_set(&response), expected, "{text}");
        assert_eq!(response.total_hits, expected.len() as u64, "{text}");
    }

    let every = "runs OR garbage OR rust";
    let filtered = |namespaces: &[&str], kinds: &[&str], tags: &[&str]| pb::SearchRequest {
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        kinds: kinds.iter().map(|s| s.to_string()).collect(),
        tags: tags.iter().map(|s| s.to_string()).collect(),
        ..query(every)
    };
    let filters: &[(pb::SearchRequest, BTreeSet<String>)] = &[
        (filtered(&[], &[], &[]), set(&[0, 1, 2, 3])),
        (filtered(&["tech"], &[], &[]), set(&[1, 3])),
        (filtered(&["life", "tech"], &[], &[]), set(&[0, 1, 2, 3])),
        (filtered(&[], &["fact"], &[]), set(&[1, 2])),
        (filtered(&[], &[], &["rust"]), set(&[1, 3])),
        (filtered(&[], &[], &["rust", "lang"]), set(&[1])),
        (filtered(&["tech"], &["note"], &[]), set(&[3])),
        (filtered(&["nobody"], &[], &[]), set(&[])),
    ];
    for (request, expected) in filters {
        let response = search.search(request.clone()).await?.into_inner();
        assert_eq!(&id_set(&response), expected, "{request:?}");
    }

    // a title match ranks above a content-only match
    let response = search.search(query("zebra")).await?.into_inner();
    assert_eq!(ids(&response), [id[4].clone(), id[5].clone()]);
    assert!(response.hits[0].score > response.hits[1].score);

    // highlights mark the matches of title and content
    let request = pb::SearchRequest { highlight: true, ..query("garbage collector") };
    let response = search.search(request).await?.into_inner();
    assert_eq!(response.hits.len(), 2);
    for hit in &response.hits {
        assert!(!hit.highlights.is_empty() && hit.highlights.iter().all(|h| h.contains("<mark>")), "{hit:?}");
    }
    let gc = response.hits.iter().find(|hit| hit.id == id[1]).unwrap();
    assert!(gc.highlights.contains(&"<mark>Garbage</mark> collection".to_owned()), "{:?}", gc.highlights);
    assert!(
        gc.highlights.iter().any(|h| h.contains("<mark>garbage</mark> <mark>collector</mark>")),
        "{:?}",
        gc.highlights
    );

    // pages: the cursor is where the next page starts
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let request =
            pb::SearchRequest { page: Some(pb::PageRequest { limit: 3, cursor: cursor.clone() }), ..query(every) };
        let response = search.search(request).await?.into_inner();
        assert_eq!(response.total_hits, 4);
        seen.extend(ids(&response));
        if response.next_cursor.is_empty() {
            break;
        }
        cursor = response.next_cursor;
    }
    assert_eq!((seen.len(), seen.iter().collect::<BTreeSet<_>>()), (4, set(&[0, 1, 2, 3]).iter().collect()));
    let request = pb::SearchRequest { min_score: Some(1000.0), ..query(every) };
    assert!(search.search(request).await?.into_inner().hits.is_empty(), "min_score drops weak hits");

    let stats = stats(&mut search).await?;
    assert_eq!(stats.documents, 6);
    let namespaces: Vec<(String, u64)> = stats.namespaces.into_iter().map(|n| (n.namespace, n.documents)).collect();
    assert_eq!(namespaces, [("default".into(), 2), ("life".into(), 2), ("tech".into(), 2)]);
    assert!(stats.index_bytes > 0 && stats.last_indexed_at.is_some(), "size and last commit are measured");
    assert_eq!(
        (stats.vectors, stats.embedder_model.as_str(), stats.embedding_dimensions),
        (6, "all-MiniLM-L6-v2", 384)
    );
    helix.stop().await;
    Ok(())
}

async fn semantic_and_hybrid_modes(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let mut search = search_client(&helix).await?;
    let nodes = [
        json!({"title": "Feline care", "content": "Cats need fresh water and a clean litter box", "namespace": "pets"}),
        json!({"title": "Dog walking", "content": "Dogs enjoy long walks in the park", "namespace": "pets"}),
        json!({"title": "Interest rates", "content": "The central bank raised interest rates again", "namespace": "money"}),
        json!({"title": "Stock market", "content": "Shares fell sharply as investors sold", "namespace": "money"}),
        json!({"title": "Bread", "content": "Knead the dough, let it rise, then bake it", "namespace": "food", "tags": ["baking"]}),
    ];
    let mut id = Vec::new();
    for node in nodes {
        id.push(create(&helix, node).await?);
    }
    until_indexed(&mut search, 5).await?;

    // by meaning: no word of the query is in the node
    let by_meaning: &[(&str, usize)] = &[
        ("looking after a kitten", 0),
        ("taking the puppy outside", 1),
        ("monetary policy of the federal reserve", 2),
        ("equities dropped", 3),
        ("how to make a loaf", 4),
    ];
    for (text, expected) in by_meaning {
        let response = search.search(semantic(text)).await?.into_inner();
        assert_eq!(response.mode, "semantic", "{text}");
        let top = &response.hits[0];
        assert_eq!(top.id, id[*expected], "{text}: {:?}", ids(&response));
        assert!(top.vector_rank == Some(1) && top.fulltext_rank.is_none() && top.fulltext_score.is_none());
        assert!(top.vector_score.is_some_and(|s| s > 0.2 && s <= 1.0) && top.score == top.vector_score.unwrap());
        // the older name of the mode
        let vector = pb::SearchRequest { mode: "vector".into(), ..semantic(text) };
        assert_eq!(search.search(vector).await?.into_inner().hits[0].id, id[*expected]);
    }
    // filters apply to the vector side too
    let only_money = pb::SearchRequest { namespaces: vec!["money".into()], ..semantic("economy, pets and food") };
    let money = search.search(only_money).await?.into_inner();
    assert!(!money.hits.is_empty() && money.hits.iter().all(|h| h.namespace == "money"), "{money:?}");
    let tagged = pb::SearchRequest { tags: vec!["baking".into()], ..semantic("how to make a loaf") };
    assert_eq!(ids(&search.search(tagged).await?.into_inner()), [id[4].clone()]);
    let untagged = pb::SearchRequest { tags: vec!["baking".into()], ..semantic("looking after a kitten") };
    assert!(search.search(untagged).await?.into_inner().hits.is_empty(), "the tag filter and the floor");

    // hybrid (the default): both lists fused, each hit with its ranks
    let response = search.search(hybrid("dogs and cats")).await?.into_inner();
    assert_eq!(response.mode, "hybrid");
    let top: BTreeSet<String> = response.hits.iter().take(2).map(|h| h.id.clone()).collect();
    assert_eq!(top, [id[0].clone(), id[1].clone()].into(), "{:?}", ids(&response));
    for hit in &response.hits {
        let k = 60.0;
        let share = |rank: Option<u32>| rank.map_or(0.0, |r| 1.0 / (k + f64::from(r)));
        let fused = share(hit.fulltext_rank) + share(hit.vector_rank);
        assert!((hit.score - fused).abs() < 1e-9, "the fused score is RRF of the ranks: {hit:?}");
        assert_eq!(hit.fulltext_rank.is_some(), hit.fulltext_score.is_some());
        assert_eq!(hit.vector_rank.is_some(), hit.vector_score.is_some());
    }
    let scores: Vec<f64> = response.hits.iter().map(|h| h.score).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "ordered by fused score: {scores:?}");
    // a hit found by words only still comes, a hit by meaning only too
    let words_only = search.search(hybrid("dough")).await?.into_inner();
    assert_eq!(words_only.hits[0].id, id[4]);
    assert_eq!(words_only.hits[0].fulltext_rank, Some(1));
    // vector_weight 0 is full text's order, 1 the vector side's
    for (weight, side) in [(0.0, "fulltext"), (1.0, "vector")] {
        let request = pb::SearchRequest { vector_weight: Some(weight), ..hybrid("dogs and cats") };
        let response = search.search(request).await?.into_inner();
        let ranks: Vec<u32> = response
            .hits
            .iter()
            .filter_map(|h| if side == "fulltext" { h.fulltext_rank } else { h.vector_rank })
            .collect();
        assert!(ranks.windows(2).all(|w| w[0] < w[1]), "weight {weight}: {side} order {ranks:?}");
    }
    // full text: words joined by AND by default, OR when asked
    let and = search.search(query("dogs cats")).await?.into_inner();
    assert!(and.hits.is_empty(), "no node has both words: {and:?}");
    let or = pb::SearchRequest { operator: "or".into(), ..query("dogs cats") };
    assert_eq!(id_set(&search.search(or).await?.into_inner()), [id[0].clone(), id[1].clone()].into());

    // pages of hybrid results do not overlap
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let request = pb::SearchRequest { page: Some(pb::PageRequest { limit: 1, cursor }), ..hybrid("animals") };
        let response = search.search(request).await?.into_inner();
        seen.extend(ids(&response));
        if response.next_cursor.is_empty() {
            break;
        }
        cursor = response.next_cursor;
    }
    assert_eq!(seen.len(), seen.iter().collect::<BTreeSet<_>>().len(), "{seen:?}");
    assert!(seen.contains(&id[0]) && seen.contains(&id[1]), "{seen:?}");

    // similar nodes: by the node's own text, itself left out
    let similar = pb::FindSimilarRequest { node_id: id[0].clone(), limit: 2, ..Default::default() };
    let response = search.find_similar(similar).await?.into_inner();
    assert_eq!(response.hits.first().map(|h| h.id.clone()), Some(id[1].clone()), "{:?}", ids(&response));
    assert!(!ids(&response).contains(&id[0]) && response.hits.len() <= 2);

    // suggestions complete the last word from matching titles
    let suggest = |prefix: &str| pb::SuggestRequest { prefix: prefix.into(), ..Default::default() };
    let got = search.suggest(suggest("fel")).await?.into_inner();
    assert_eq!(got.completions, ["feline"]);
    assert_eq!(
        got.titles.iter().map(|t| (t.id.clone(), t.title.clone())).collect::<Vec<_>>(),
        [(id[0].clone(), "Feline care".into())]
    );
    assert_eq!(search.suggest(suggest("stock ma")).await?.into_inner().completions, ["stock market"]);
    assert!(search.suggest(suggest("zz")).await?.into_inner().completions.is_empty());
    assert!(search.suggest(suggest("fel ")).await?.into_inner().completions.is_empty(), "a finished word");
    helix.stop().await;
    Ok(())
}

async fn bad_requests_are_refused(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let mut search = search_client(&helix).await?;
    let with = |mode: &str, text: &str, cursor: &str| pb::SearchRequest {
        mode: mode.to_owned(),
        page: Some(pb::PageRequest { limit: 0, cursor: cursor.to_owned() }),
        ..query(text)
    };
    let cases: &[(pb::SearchRequest, &str)] = &[
        (with("fuzzy", "rust", ""), "invalid_mode"),
        (with("", "   ", ""), "empty_query"),
        (with("semantic", "", ""), "empty_query"),
        (with("fulltext", "rust", "page-2"), "invalid_cursor"),
        (pb::SearchRequest { namespaces: vec!["a b".into()], ..query("rust") }, "invalid_namespace"),
        (pb::SearchRequest { vector_weight: Some(1.5), ..hybrid("rust") }, "invalid_vector_weight"),
        (pb::SearchRequest { vector_weight: Some(f64::NAN), ..hybrid("rust") }, "invalid_vector_weight"),
        (pb::SearchRequest { operator: "xor".into(), ..query("rust") }, "invalid_operator"),
        (pb::SearchRequest { min_score: Some(f64::INFINITY), ..semantic("rust") }, "invalid_min_score"),
    ];
    for (request, error_code) in cases {
        let status = search.search(request.clone()).await.unwrap_err();
        let got = status.metadata().get(helix_core::error::ERROR_CODE_METADATA).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            (status.code(), got.as_deref()),
            (tonic::Code::InvalidArgument, Some(*error_code)),
            "{request:?}: {status:?}"
        );
    }
    let status = search.find_similar(pb::FindSimilarRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let absent = pb::FindSimilarRequest { node_id: uuid::Uuid::now_v7().to_string(), ..Default::default() };
    assert_eq!(search.find_similar(absent).await.unwrap_err().code(), tonic::Code::NotFound);
    let wrong_size =
        pb::SearchDocument { embedding: vec![0.5; 3], ..document(&uuid::Uuid::now_v7().to_string(), "x", 1) };
    let request = pb::IndexDocumentsRequest { documents: vec![wrong_size], wait_searchable: true };
    assert_eq!(search.index_documents(request).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    // the default mode is hybrid; a pushed embedding is used as it is
    let id = create(&helix, json!({"content": "ocelots hunt at night"})).await?;
    until(&mut search, query("ocelot"), Instant::now(), |r| ids(r) == [id.clone()]).await?;
    let response = search.search(with("", "ocelots", "")).await?.into_inner();
    assert_eq!((ids(&response), response.mode.as_str()), (vec![id.clone()], "hybrid"));
    helix.stop().await;
    Ok(())
}

async fn reindex(search: &mut Search, namespace: Option<&str>) -> anyhow::Result<Vec<pb::ReindexProgress>> {
    let request = pb::ReindexRequest { namespace: namespace.map(str::to_owned), re_embed: false };
    let mut updates = search.reindex(request).await?.into_inner();
    let mut all = Vec::new();
    while let Some(update) = updates.message().await? {
        all.push(update);
    }
    Ok(all)
}

fn document(id: &str, content: &str, version: i64) -> pb::SearchDocument {
    pb::SearchDocument { id: id.to_owned(), content: content.to_owned(), version, ..Default::default() }
}

async fn pushes_reindex_and_restarts(backend: Backend) -> anyhow::Result<()> {
    let mut helix = TestHelix::start(backend).await?;
    let mut search = search_client(&helix).await?;
    let nodes: Vec<Value> =
        ["alpaca wool", "bison herd", "caribou migration"].iter().map(|c| json!({"content": c})).collect();
    let (status, created) =
        read(helix.api(Method::POST, "/api/v1/nodes/bulk").json(&json!({"nodes": nodes})).send().await?).await;
    assert_eq!(status, 201, "{created}");
    let node_ids: Vec<String> =
        created["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    until_indexed(&mut search, 3).await?;

    // a push of more documents than one embedding batch: every one gets its own vector
    let many: Vec<pb::SearchDocument> = (0..150)
        .map(|i| {
            let id = uuid::Uuid::now_v7().to_string();
            pb::SearchDocument { namespace: "many".into(), ..document(&id, &format!("numbered note {i}"), 1) }
        })
        .collect();
    let request = pb::IndexDocumentsRequest { documents: many, wait_searchable: true };
    assert_eq!(search.index_documents(request).await?.into_inner().indexed, 150);
    let all = until_vectors(&mut search).await?;
    assert_eq!((all.documents, all.vectors), (153, 153), "one vector per document");

    // explicit pushes, searchable when they answer
    let phantom = uuid::Uuid::now_v7().to_string();
    let push = |docs: Vec<pb::SearchDocument>| pb::IndexDocumentsRequest { documents: docs, wait_searchable: true };
    let pushed = search.index_documents(push(vec![document(&phantom, "phantom dingo", 2)])).await?.into_inner();
    assert_eq!((pushed.indexed, pushed.skipped_stale), (1, 0));
    assert_eq!(ids_of(&mut search, "dingo").await?, [phantom.as_str()]);
    let stale = search.index_documents(push(vec![document(&phantom, "older emu", 1)])).await?.into_inner();
    assert_eq!((stale.indexed, stale.skipped_stale), (0, 1), "an older version is skipped");
    assert!(ids_of(&mut search, "emu").await?.is_empty());
    let removed = pb::RemoveDocumentsRequest { ids: vec![node_ids[1].clone()], wait_searchable: true };
    assert_eq!(search.remove_documents(removed).await?.into_inner().removed, 1);
    assert!(ids_of(&mut search, "bison").await?.is_empty());
    let bad = search.index_documents(push(vec![document("not-an-id", "x", 1)])).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // reindexing makes the index what storage holds
    let progress = reindex(&mut search, None).await?;
    let last = progress.last().unwrap();
    assert_eq!((last.phase.as_str(), last.done, last.processed, last.total, last.failed), ("done", true, 3, 3, 0));
    assert!(progress.iter().any(|p| p.phase == "listing") && progress.iter().any(|p| p.phase == "committing"));
    assert_eq!(stats(&mut search).await?.documents, 3);
    assert_eq!(ids_of(&mut search, "bison").await?, [node_ids[1].as_str()], "a removed node is back");
    assert!(ids_of(&mut search, "dingo").await?.is_empty(), "a document storage lacks is gone");

    // the index survives a restart: searchable at once, before any event
    helix.restart().await?;
    let mut search = search_client(&helix).await?;
    for (word, id) in ["alpaca", "bison", "caribou"].iter().zip(&node_ids) {
        assert_eq!(ids_of(&mut search, word).await?, [id.as_str()], "{word}");
    }

    // a wiped index is empty until reindexed
    helix.node.take().unwrap().stop().await;
    std::fs::remove_dir_all(helix_search::index_path(&helix.env.home()))?;
    helix.node = Some(helix.env.start(&Role::ALL).await?);
    helix.base_url = helix.node.as_ref().unwrap().gateway_url().unwrap();
    let mut search = search_client(&helix).await?;
    assert_eq!(stats(&mut search).await?.documents, 0);
    let progress = reindex(&mut search, None).await?;
    assert_eq!(progress.last().map(|p| (p.done, p.processed)), Some((true, 3)));
    assert_eq!(stats(&mut search).await?.documents, 3);
    for (word, id) in ["alpaca", "bison", "caribou"].iter().zip(&node_ids) {
        assert_eq!(ids_of(&mut search, word).await?, [id.as_str()], "{word}");
    }
    // and writes keep flowing in
    let since = Instant::now();
    let id = create(&helix, json!({"content": "a dromedary crosses"})).await?;
    let took = until(&mut search, query("dromedary"), since, |r| ids(r) == [id.clone()]).await?;
    assert!(took < WITHIN, "searchable after {took:?}");
    helix.stop().await;
    Ok(())
}

async fn ids_of(search: &mut Search, text: &str) -> anyhow::Result<Vec<String>> {
    Ok(ids(&search.search(query(text)).await?.into_inner()))
}

crate::on_both_backends!(rest_search_routes);

/// The gateway's search routes: ours, and the original system's shapes.
async fn rest_search_routes(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    // read-your-writes by meaning: searchable both ways when the write answers
    let (_, node) = read(
        helix
            .api(Method::POST, "/api/v1/nodes?wait_for=vectors")
            .json(&json!({"title": "Tides", "content": "The moon pulls the oceans into tides", "namespace": "sea"}))
            .send()
            .await?,
    )
    .await;
    let id = node["id"].clone();
    let deadline = Instant::now() + PATIENCE;
    let found = loop {
        let (status, found) = read(
            helix
                .api(Method::POST, "/api/v1/search")
                .json(&json!({"query": "oceans", "mode": "fulltext"}))
                .send()
                .await?,
        )
        .await;
        assert_eq!(status, 200, "{found}");
        if found["results"].as_array().is_some_and(|r| !r.is_empty()) {
            break found;
        }
        anyhow::ensure!(Instant::now() < deadline, "never found through REST");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let hit = &found["results"][0];
    assert_eq!((&hit["id"], &hit["node"]["id"], hit["title"].as_str()), (&id, &id, Some("Tides")));
    assert!(hit["snippet"].as_str().unwrap().contains("<mark>"), "{hit}");
    assert_eq!(found["mode"], "fulltext");

    // the original system's clients: GET ?q=&ns= and POST /api/search, items with id/title/content
    let (status, compat) = read(helix.api(Method::GET, "/api/v1/search?q=moon&ns=sea&limit=5").send().await?).await;
    assert_eq!(status, 200, "{compat}");
    assert_eq!(compat["results"][0]["content"], node["content"]);
    let (status, seed) =
        read(helix.api(Method::POST, "/api/search").json(&json!({"query": "tides"})).send().await?).await;
    assert_eq!((status, &seed["results"][0]["id"]), (200, &id));
    assert_eq!(seed["mode"], "hybrid", "hybrid is the default");
    let (status, meaning) = read(
        helix
            .api(Method::POST, "/api/v1/search")
            .json(&json!({"query": "lunar gravity and the sea", "mode": "semantic"}))
            .send()
            .await?,
    )
    .await;
    assert_eq!((status, &meaning["results"][0]["id"], &meaning["mode"]), (200, &id, &json!("semantic")), "{meaning}");
    let hit = &meaning["results"][0];
    assert!(hit["vector_rank"] == 1 && hit["fulltext_rank"].is_null() && hit["vector_score"].is_f64(), "{hit}");
    assert!(meaning["embedding_ms"].is_f64(), "{meaning}");
    let (status, suggested) = read(helix.api(Method::GET, "/api/v1/search/suggest?q=Tid").send().await?).await;
    assert_eq!((status, &suggested["completions"], &suggested["titles"][0]["id"]), (200, &json!(["tides"]), &id));
    let (status, error) = read(helix.api(Method::GET, "/api/v1/search/suggest?q=t&limit=500").send().await?).await;
    assert_eq!((status, crate::support::code(&error)), (400, "invalid_limit"));
    let (status, similar) =
        read(helix.api(Method::GET, &format!("/api/v1/search/similar/{}", id.as_str().unwrap())).send().await?).await;
    assert_eq!((status, similar["results"].as_array().map(Vec::len)), (200, Some(0)), "{similar}");

    // documents pushed straight into the index, searchable when the push answers, and removed
    let pushed_id = uuid::Uuid::now_v7().to_string();
    let push =
        json!({"documents": [{"id": pushed_id, "content": "an albatross glides for hours", "namespace": "birds"}]});
    let (status, pushed) = read(helix.api(Method::POST, "/api/v1/search/index").json(&push).send().await?).await;
    assert_eq!((status, &pushed["indexed"], &pushed["skipped_stale"]), (200, &json!(1), &json!(0)), "{pushed}");
    let find = json!({"query": "albatross", "mode": "fulltext"});
    let (_, found) = read(helix.api(Method::POST, "/api/v1/search").json(&find).send().await?).await;
    assert_eq!(found["results"][0]["id"], pushed_id.as_str(), "{found}");
    let (status, stats) = read(helix.api(Method::GET, "/api/v1/search/stats?namespace=birds").send().await?).await;
    assert_eq!((status, &stats["documents"]), (200, &json!(1)), "{stats}");
    let held = stats["vectors"].as_u64().unwrap_or(0) + stats["vectors_pending"].as_u64().unwrap_or(0);
    assert!(held >= 2 && stats["embedding_dimensions"] == 384, "a vector per node, or on its way: {stats}");
    let (status, removed) =
        read(helix.api(Method::DELETE, &format!("/api/v1/search/index/{pushed_id}")).send().await?).await;
    assert_eq!((status, &removed["removed"]), (200, &json!(1)), "{removed}");
    let (_, found) = read(helix.api(Method::POST, "/api/v1/search").json(&find).send().await?).await;
    assert_eq!(found["results"], json!([]), "{found}");
    let bad = json!({"documents": [{"id": "not-a-uuid", "content": "x"}]});
    let (status, error) = read(helix.api(Method::POST, "/api/v1/search/index").json(&bad).send().await?).await;
    assert_eq!((status, crate::support::code(&error)), (400, "invalid_id"), "{error}");

    let cases = [
        (json!({"query": "moon", "mode": "psychic"}), 400, "invalid_mode"),
        (json!({"query": "  "}), 400, "empty_query"),
        (json!({"query": "moon", "limit": 0}), 400, "invalid_limit"),
        (json!({"mode": "fulltext"}), 422, "invalid_body"),
    ];
    for (body, status, code) in cases {
        let (got, error) = read(helix.api(Method::POST, "/api/v1/search").json(&body).send().await?).await;
        assert_eq!((got, crate::support::code(&error)), (status, code), "{body}");
    }
    helix.stop().await;
    Ok(())
}
