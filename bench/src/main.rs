//! The foundation benchmark: one create + one get of a knowledge node,
//! - through the gateway (REST → gRPC → storage → database), and
//! - as the same storage calls made in-process (the baseline),
//!
//! at concurrency 1 and 64, on SQLite and on PostgreSQL, in one run on one machine.
//! Results are ratios of the two paths, so the machine's speed cancels out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::future::BoxFuture;
use helix_core::node::NodeDraft;
use helix_runtime::ServiceContext;
use helix_testkit::{Backend, TestEnv};
use hx::fleet::Role;
use serde_json::{Value, json};

mod graph;
mod jobs;
mod llm;
mod search;
mod security;
mod vault;

/// mimalloc: request handling allocates many small buffers; glibc malloc was a tenth
/// of the gateway path's CPU in `make bench`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// where the JSON results go
    #[arg(long, default_value = "bench/results/foundation.json")]
    out: String,
    /// seconds each (backend, concurrency, path) is measured, after a warm-up
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// which benchmark: foundation, search (bench/src/search.rs), search-indexing (its indexing
    /// part alone, for profiling), graph (bench/src/graph.rs), llm (bench/src/llm.rs), llm-steady
    /// (its steady 1,000 calls/s alone, for profiling), jobs (bench/src/jobs.rs) or jobs-steady
    /// (its steady 1,000 jobs/s alone), security (bench/src/security.rs) or vault (bench/src/vault.rs)
    #[arg(long, default_value = "foundation")]
    suite: String,
}

type Op = Arc<dyn Fn(u64) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

struct Measured {
    ops: usize,
    throughput: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs `op` from `concurrency` tasks for `duration`; latency is per create+get pair.
async fn measure(op: Op, concurrency: usize, duration: Duration) -> anyhow::Result<Measured> {
    // warm-up: connections, statement caches
    for i in 0..20 {
        op(i).await?;
    }
    let start = Instant::now();
    let workers = (0..concurrency).map(|w| {
        let op = op.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while start.elapsed() < duration {
                let t = Instant::now();
                op((w as u64) << 32 | i).await?;
                latencies.push(t.elapsed());
                i += 1;
            }
            anyhow::Ok(latencies)
        })
    });
    let mut latencies = Vec::new();
    for worker in futures::future::join_all(workers).await {
        latencies.extend(worker??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64() * 1e3;
    Ok(Measured {
        ops: latencies.len(),
        throughput: latencies.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

fn in_process_op(store: helix_storage::NodeStore) -> Op {
    Arc::new(move |i| {
        let store = store.clone();
        Box::pin(async move {
            let draft =
                NodeDraft { content: format!("bench node {i}"), tags: vec!["bench".into()], ..Default::default() };
            let node = store.create(draft).await?;
            store.get(node.id).await?;
            Ok(())
        })
    })
}

fn gateway_op(base: String, key: String) -> Op {
    let http = reqwest::Client::builder().pool_max_idle_per_host(128).build().expect("http client");
    Arc::new(move |i| {
        let (http, base, key) = (http.clone(), base.clone(), key.clone());
        Box::pin(async move {
            let body = json!({"content": format!("bench node {i}"), "tags": ["bench"]});
            let created: Value = http
                .post(format!("{base}/api/v1/nodes"))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let id = created["id"].as_str().context("created node has an id")?;
            http.get(format!("{base}/api/v1/nodes/{id}")).bearer_auth(&key).send().await?.error_for_status()?;
            Ok(())
        })
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.suite == "search" {
        return search::run(&args.out).await;
    }
    if args.suite == "search-indexing" {
        return search::run_indexing(&args.out).await;
    }
    if args.suite == "graph" {
        return graph::run(&args.out).await;
    }
    if args.suite == "llm" || args.suite == "llm-steady" {
        return llm::run(&args.out, args.suite == "llm-steady").await;
    }
    if args.suite == "security" {
        return security::run(&args.out).await;
    }
    if args.suite == "vault" {
        return vault::run(&args.out).await;
    }
    if args.suite == "jobs" || args.suite == "jobs-steady" {
        return jobs::run(&args.out, args.suite == "jobs-steady").await;
    }
    let duration = Duration::from_secs(args.seconds);
    let mut runs = Vec::new();
    let mut ratios = Vec::new();
    for (backend, label) in [(Backend::Embedded, "sqlite"), (Backend::Fleet, "postgres")] {
        let env = TestEnv::new(backend).await?;
        let bus = env.bus().await?;
        let ctx = ServiceContext::new(env.config.clone(), bus, helix_runtime::open_credentials(&env.config)?);
        let store = helix_storage::open(&ctx).await?;
        let node = env.start(&Role::ALL).await?;
        let gateway = node.gateway_url().expect("gateway runs");
        for concurrency in [1usize, 64] {
            let base = measure(in_process_op(store.clone()), concurrency, duration).await?;
            let through = measure(gateway_op(gateway.clone(), env.admin_key.clone()), concurrency, duration).await?;
            for (path, m) in [("in_process", &base), ("gateway", &through)] {
                eprintln!(
                    "{label:8} c={concurrency:<3} {path:10} {:>8.0} pairs/s  p50 {:>7.3} ms  p99 {:>7.3} ms  ({} pairs)",
                    m.throughput, m.p50_ms, m.p99_ms, m.ops
                );
                runs.push(json!({
                    "backend": label, "concurrency": concurrency, "path": path, "pairs": m.ops,
                    "throughput_pairs_per_s": m.throughput, "p50_ms": m.p50_ms, "p99_ms": m.p99_ms,
                }));
            }
            ratios.push(json!({
                "backend": label, "concurrency": concurrency,
                "throughput_ratio": through.throughput / base.throughput,
                "added_p50_ms": through.p50_ms - base.p50_ms,
                "added_p99_ms": through.p99_ms - base.p99_ms,
            }));
        }
        node.stop().await;
        ctx.stop().await;
    }
    let goals = ratios
        .iter()
        .map(|r| {
            let keeps_half = r["throughput_ratio"].as_f64().unwrap() >= 0.5;
            let c1_latency = r["concurrency"] != 1 || r["added_p99_ms"].as_f64().unwrap() < 1.0;
            json!({"backend": r["backend"], "concurrency": r["concurrency"], "keeps_50pct_throughput": keeps_half, "adds_under_1ms_p99_at_c1": c1_latency})
        })
        .collect::<Vec<_>>();
    let report = json!({
        "benchmark": "foundation: create+get of a node, gateway path vs in-process storage calls",
        "measured_at": chrono::Utc::now().to_rfc3339(),
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "os": std::env::consts::OS },
        "seconds_per_run": args.seconds,
        "runs": runs,
        "ratios": ratios,
        "goals": goals,
    });
    write_report(&args.out, &report)
}

/// Writes a suite's results as pretty JSON, creating the directory.
pub(crate) fn write_report(out: &str, report: &Value) -> anyhow::Result<()> {
    if let Some(dir) = std::path::Path::new(out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(report)? + "\n")?;
    eprintln!("wrote {out}");
    Ok(())
}

/// Count, p50, p99, mean and max of a set of latencies, in milliseconds.
pub(crate) fn percentiles(latencies: &mut [Duration]) -> Value {
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64() * 1e3;
    let mean = latencies.iter().map(Duration::as_secs_f64).sum::<f64>() / latencies.len().max(1) as f64 * 1e3;
    json!({"count": latencies.len(), "p50_ms": pct(0.50), "p99_ms": pct(0.99), "mean_ms": mean, "max_ms": pct(1.0)})
}

/// The machine a suite ran on, with its load (it may be shared).
pub(crate) fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kb = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok());
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "memory_gb": memory_kb.map(|kb| (kb as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0),
        "os": std::env::consts::OS,
        // the machine may be shared: other work running shows here
        "load_average_at_start": load_average(),
    })
}

/// The 1, 5 and 15 minute load averages.
pub(crate) fn load_average() -> Option<String> {
    let line = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(line.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}
