//! The gateway's identity layer under load (bench/results/security.json):
//! - API key verification with the cache warm, against hashing the key alone;
//! - REST throughput of a mutating route with the audit log on, against off, same run;
//! - a 64 MiB body: refused with 413 while the process's memory barely moves.

use std::time::{Duration, Instant};

use anyhow::Context;
use helix_testkit::{Backend, TestEnv};
use hx::fleet::Role;
use serde_json::{Value, json};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Op, gateway_op, machine, measure, percentiles, write_report};

const VERIFICATIONS: usize = 200_000;
const ROUND: Duration = Duration::from_secs(5);
const ROUNDS: usize = 6;

pub async fn run(out: &str) -> anyhow::Result<()> {
    // the body first: the other parts leave memory behind that the allocator returns later
    let body = oversized_body().await?;
    let verification = key_verification().await?;
    let audit = audit_overhead().await?;
    let goals = json!({
        "key_verification_p99_under_50us": verification["cached"]["p99_us"].as_f64() < Some(50.0),
        "throughput_with_audit_at_least_90pct": audit["ratio_on_to_off"].as_f64() >= Some(0.9),
        "body_64mib_refused_413": body["status"] == 413,
        "body_64mib_rss_growth_under_16mib": body["rss_growth_mib"].as_f64() < Some(16.0),
    });
    let report = json!({
        "benchmark": "security: key verification, audit overhead, oversized bodies",
        "measured_at": chrono::Utc::now().to_rfc3339(),
        "machine": machine(),
        "key_verification": verification,
        "audit": audit,
        "oversized_body": body,
        "goals": goals,
    });
    write_report(out, &report)
}

/// `KeyStore::verify` on a key it verified a moment ago, call by call; the baseline is
/// the SHA-256 of the same key, which every verification computes.
async fn key_verification() -> anyhow::Result<Value> {
    let env = TestEnv::new(Backend::Embedded).await?;
    let node = env.start(&Role::ALL).await?;
    let base = node.gateway_url().context("gateway runs")?;
    let issued: Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/keys"))
        .bearer_auth(&env.admin_key)
        .json(&json!({"name": "bench", "scopes": ["read"]}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let key = issued["secret"].as_str().context("a secret")?.to_owned();
    let db = helix_runtime::db::Database::connect(&env.config, "gateway").await?;
    let keys =
        helix_gateway::KeyStore::new(db, env.bus().await?, None, helix_gateway::ratelimit::KeyLimiter::new(0, 100));
    keys.verify(&key).await?;
    let mut cached = Vec::with_capacity(VERIFICATIONS);
    let mut refreshes = 0;
    for _ in 0..VERIFICATIONS {
        let t = Instant::now();
        keys.verify(&key).await?;
        cached.push(t.elapsed());
        // the cache holds a key for a second: a call past it reads the database
        if cached.last().is_some_and(|d| *d > Duration::from_micros(200)) {
            refreshes += 1;
        }
    }
    let mut hashing = Vec::with_capacity(VERIFICATIONS);
    for _ in 0..VERIFICATIONS {
        let t = Instant::now();
        std::hint::black_box(sha2::Sha256::digest(std::hint::black_box(key.as_bytes())));
        hashing.push(t.elapsed());
    }
    node.stop().await;
    Ok(json!({
        "calls": VERIFICATIONS,
        "cached": micros(&mut cached),
        "sha256_alone": micros(&mut hashing),
        "calls_over_200us (database refreshes, one per second)": refreshes,
    }))
}

fn micros(latencies: &mut [Duration]) -> Value {
    let ms = percentiles(latencies);
    let us = |name: &str| ms[name].as_f64().unwrap_or_default() * 1e3;
    json!({"p50_us": us("p50_ms"), "p99_us": us("p99_ms"), "mean_us": us("mean_ms"), "max_us": us("max_ms")})
}

/// Node creations + reads through the gateway at concurrency 16, audit on and off in
/// alternating rounds, so drift of a shared machine falls on both alike.
async fn audit_overhead() -> anyhow::Result<Value> {
    let mut gateways = Vec::new();
    for audit in [false, true] {
        let mut env = TestEnv::new(Backend::Embedded).await?;
        env.config.gateway.audit = audit;
        // the lexical embedder: with the model, each node's embedding (~25 ms of CPU)
        // would go on in the background of both gateways long after their rounds
        env.config.search.model_dir = None;
        let node = env.start(&Role::ALL).await?;
        let op: Op = gateway_op(node.gateway_url().context("gateway runs")?, env.admin_key.clone());
        gateways.push((audit, env, node, op));
    }
    let mut rounds = Vec::new();
    let (mut on, mut off) = (0.0, 0.0);
    for round in 0..ROUNDS {
        // who goes first alternates, so neither side always follows the other's work
        let order: Vec<_> = if round % 2 == 0 { gateways.iter().collect() } else { gateways.iter().rev().collect() };
        for (audit, _, _, op) in order {
            let measured = measure(op.clone(), 16, ROUND).await?;
            eprintln!(
                "audit {audit:5} round {round}: {:>7.0} pairs/s p99 {:.2} ms",
                measured.throughput, measured.p99_ms
            );
            match audit {
                true => on += measured.throughput,
                false => off += measured.throughput,
            }
            rounds.push(json!({"audit": audit, "round": round, "pairs_per_s": measured.throughput,
                "p50_ms": measured.p50_ms, "p99_ms": measured.p99_ms}));
        }
    }
    for (_, _, node, _) in gateways {
        node.stop().await;
    }
    Ok(json!({
        "operation": "POST /api/v1/nodes + GET /api/v1/nodes/{id}, concurrency 16, SQLite, lexical embedder",
        "rounds": rounds,
        "pairs_per_s_audit_on": on / ROUNDS as f64,
        "pairs_per_s_audit_off": off / ROUNDS as f64,
        "ratio_on_to_off": on / off,
    }))
}

/// Streams a 64 MiB body from one reused 64 KiB buffer (so the client adds nothing to
/// the process's memory) and reads the answer.
async fn oversized_body() -> anyhow::Result<Value> {
    let env = TestEnv::new(Backend::Embedded).await?;
    let node = env.start(&Role::ALL).await?;
    let addr = node.gateway_addr.context("gateway runs")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib()?;
    let size: usize = 64 * 1024 * 1024;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST /api/v1/nodes HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n",
        env.admin_key
    );
    stream.write_all(head.as_bytes()).await?;
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    while sent < size {
        // the server may answer and close before the body is all sent
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let after = rss_kib()?;
    let answer = String::from_utf8_lossy(&answer);
    let status: u16 = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    node.stop().await;
    Ok(json!({
        "body_bytes": size,
        "bytes_sent_before_the_answer": sent,
        "status": status,
        "rss_before_mib": before as f64 / 1024.0,
        "rss_after_mib": after as f64 / 1024.0,
        "rss_growth_mib": (after as f64 - before as f64) / 1024.0,
    }))
}

fn rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS in /proc/self/status")
}
