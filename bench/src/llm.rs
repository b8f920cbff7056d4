//! The llm-router's overhead: the same chat call sent straight to a fake provider and
//! through the gateway and router (budget reservation and usage recording on):
//!
//! - one at a time: added latency (p50, p99) for whole answers, added time to first
//!   token for streams, and the router's own time as it reports it
//!   (`x-helix-router-overhead-us`);
//! - [`STREAMS`] streams at once: time to first token and the delay between chunks,
//!   each path's distribution and the difference of their percentiles;
//! - a steady [`STEADY_RATE`] whole calls a second (open loop: a call is sent on its
//!   tick whether or not earlier ones answered), each path, and the difference;
//! - the process's resident memory over [`RSS_CALLS`] calls through the gateway (64 at
//!   a time, every other one a stream), sampled every 10,000 calls, the fake's record of
//!   the requests dropped before each sample; growth is measured from the first sample,
//!   after the warm-up.
//!
//! The provider, the gateway and the router all run in this process, on this machine's
//! two cores: under load the fake and the client compete with the router for them.

use std::time::{Duration, Instant};

use helix_testkit::llm::{FakeLlm, Wire};
use helix_testkit::{Backend, TestEnv, TestHelix};
use hx::fleet::Role;
use serde_json::{Value, json};

const CALLS: usize = 2000;
const STREAMS: usize = 500;
const STEADY_RATE: u64 = 1000;
const STEADY_SECS: u64 = 10;
const RSS_CALLS: usize = 100_000;
const RSS_SAMPLE_EVERY: usize = 10_000;
const RSS_CONCURRENCY: usize = 64;
const RSS_GOAL_GROWTH: f64 = 0.10;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    json!({"p50_ms": percentile(&ms, 0.5), "p99_ms": percentile(&ms, 0.99), "n": ms.len()})
}

/// What one call took, in milliseconds.
struct Timing {
    total: f64,
    /// until the first chunk with content (the whole answer when not streaming)
    first: f64,
    /// between one chunk and the next
    gaps: Vec<f64>,
    /// the router's own time, from its header
    overhead: Option<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Sends `body` and waits for the whole answer (or, streaming, the first content chunk
/// and then the rest).
async fn call(http: &reqwest::Client, url: &str, key: &str, body: &Value) -> anyhow::Result<Timing> {
    let started = Instant::now();
    let mut response = http.post(url).bearer_auth(key).json(body).send().await?;
    if !response.status().is_success() {
        let status = response.status();
        anyhow::bail!("{url}: {status}: {}", response.text().await.unwrap_or_default());
    }
    let overhead = response
        .headers()
        .get("x-helix-router-overhead-us")
        .and_then(|v| v.to_str().ok()?.parse::<f64>().ok())
        .map(|us| us / 1000.0);
    let mut first = None;
    let mut gaps = Vec::new();
    let mut last = None;
    while let Some(chunk) = response.chunk().await? {
        let now = Instant::now();
        if let Some(last) = last {
            gaps.push(ms(now - last));
        }
        last = Some(now);
        if first.is_none() && chunk.windows(9).any(|w| w == b"\"content\"") {
            first = Some(now - started);
        }
    }
    let total = started.elapsed();
    Ok(Timing { total: ms(total), first: ms(first.unwrap_or(total)), gaps, overhead })
}

/// `p50` and `p99` of `through` minus those of `direct`.
fn added(direct: &Value, through: &Value) -> Value {
    let at = |v: &Value, k: &str| v[k].as_f64().unwrap_or_default();
    json!({
        "p50_ms": at(through, "p50_ms") - at(direct, "p50_ms"),
        "p99_ms": at(through, "p99_ms") - at(direct, "p99_ms"),
    })
}

/// `n` streams sent at once; their times to first token and chunk gaps.
async fn at_once(http: &reqwest::Client, url: &str, key: &str, body: &Value, n: usize) -> anyhow::Result<Value> {
    let calls = (0..n).map(|_| call(http, url, key, body));
    let timings = futures::future::try_join_all(calls).await?;
    let first = summary(timings.iter().map(|t| t.first).collect());
    let total = summary(timings.iter().map(|t| t.total).collect());
    let gaps = summary(timings.iter().flat_map(|t| t.gaps.iter().copied()).collect());
    Ok(json!({"time_to_first_token": first, "total": total, "inter_chunk": gaps}))
}

/// Whole calls sent at `rate` a second for `seconds`, each on its tick.
async fn steady(http: &reqwest::Client, url: &str, key: &str, body: &Value, rate: u64) -> anyhow::Result<Value> {
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut calls = tokio::task::JoinSet::new();
    let started = Instant::now();
    for _ in 0..rate * STEADY_SECS {
        ticker.tick().await;
        let (http, url, key, body) = (http.clone(), url.to_owned(), key.to_owned(), body.clone());
        calls.spawn(async move { call(&http, &url, &key, &body).await });
    }
    let offered = (rate * STEADY_SECS) as f64 / started.elapsed().as_secs_f64();
    let (mut totals, mut overheads) = (Vec::new(), Vec::new());
    while let Some(done) = calls.join_next().await {
        let timing = done??;
        totals.push(timing.total);
        overheads.extend(timing.overhead);
    }
    let mut result = json!({"offered_rate_per_s": offered, "latency": summary(totals)});
    if !overheads.is_empty() {
        result["router_overhead_header"] = summary(overheads);
    }
    Ok(result)
}

/// This process's resident memory, in MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Resident memory sampled while [`RSS_CALLS`] calls go through the gateway.
async fn memory(
    fake: &FakeLlm,
    http: &reqwest::Client,
    url: &str,
    key: &str,
    whole: &Value,
    stream: &Value,
) -> anyhow::Result<Value> {
    use futures::StreamExt;
    fake.forget_received();
    let mut samples = vec![json!({"calls": 0, "rss_mib": rss_mib()})];
    let started = Instant::now();
    for round in 0..RSS_CALLS / RSS_SAMPLE_EVERY {
        let calls = (0..RSS_SAMPLE_EVERY).map(|i| call(http, url, key, if i % 2 == 0 { whole } else { stream }));
        let mut running = futures::stream::iter(calls).buffer_unordered(RSS_CONCURRENCY);
        while let Some(done) = running.next().await {
            done?;
        }
        // the fake keeps every request it got: not the router's memory
        fake.forget_received();
        samples.push(json!({"calls": (round + 1) * RSS_SAMPLE_EVERY, "rss_mib": rss_mib()}));
    }
    let rss = |i: usize| samples[i]["rss_mib"].as_f64().unwrap_or_default();
    let growth = (rss(samples.len() - 1) - rss(1)) / rss(1);
    Ok(json!({
        "calls": RSS_CALLS,
        "calls_per_s": RSS_CALLS as f64 / started.elapsed().as_secs_f64(),
        "concurrency": RSS_CONCURRENCY,
        "samples": samples,
        "growth_after_first_10k": growth,
        "goal": format!("growth < {RSS_GOAL_GROWTH}"),
        "met": growth < RSS_GOAL_GROWTH,
    }))
}

/// The whole suite, or (`steady_only`, for profiling) the steady 1,000 calls/s alone.
pub async fn run(out: &str, steady_only: bool) -> anyhow::Result<()> {
    let fake = FakeLlm::start().await?;
    let mut env = TestEnv::new(Backend::Embedded).await?;
    fake.serve_as(&mut env.config, "openai", Wire::OpenAi);
    let node = env.start(&Role::ALL).await?;
    let base = node.gateway_url().expect("gateway role runs");
    let helix = TestHelix { env, node: Some(node), base_url: base, http: reqwest::Client::new() };
    let http = reqwest::Client::new();
    let direct_url = format!("{}/v1/chat/completions", fake.url);
    let gateway_url = helix.url("/v1/chat/completions");
    let key = helix.env.admin_key.clone();
    let messages = json!([{"role": "user", "content": "Say hello"}]);

    let mut report = json!({"suite": "llm-router", "calls": CALLS, "streams": STREAMS,
        "note": "fake provider on loopback, in this process; budget reservation and usage recording on (SQLite); \
    release build; `whole` and `stream` one call at a time"});
    for stream in [false, true].into_iter().filter(|_| !steady_only) {
        let n = if stream { STREAMS } else { CALLS };
        let direct_body = json!({"model": "gpt-4o-mini", "messages": messages, "stream": stream});
        let gateway_body = json!({"model": "openai/gpt-4o-mini", "messages": messages, "stream": stream});
        // warm both paths (connections, first-call initialisation)
        for _ in 0..50 {
            call(&http, &direct_url, &key, &direct_body).await?;
            call(&http, &gateway_url, &key, &gateway_body).await?;
        }
        let (mut direct, mut through, mut direct_first, mut through_first, mut overhead) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            let timing = call(&http, &direct_url, &key, &direct_body).await?;
            direct.push(timing.total);
            direct_first.push(timing.first);
            let timing = call(&http, &gateway_url, &key, &gateway_body).await?;
            through.push(timing.total);
            through_first.push(timing.first);
            overhead.extend(timing.overhead);
        }
        let added: Vec<f64> = through.iter().zip(&direct).map(|(t, d)| t - d).collect();
        let added_first: Vec<f64> = through_first.iter().zip(&direct_first).map(|(t, d)| t - d).collect();
        let name = if stream { "stream" } else { "whole" };
        report[name] = json!({
            "direct": summary(direct), "through_gateway": summary(through),
            "added_latency": summary(added),
            "router_overhead_header": summary(overhead),
        });
        if stream {
            report[name]["added_time_to_first_token"] = summary(added_first);
        }
        eprintln!("{name}: {}", report[name]);
    }

    let direct_stream = json!({"model": "gpt-4o-mini", "messages": messages, "stream": true});
    let gateway_stream = json!({"model": "openai/gpt-4o-mini", "messages": messages, "stream": true});
    if !steady_only {
        let direct_at_once = at_once(&http, &direct_url, &key, &direct_stream, STREAMS).await?;
        let through_at_once = at_once(&http, &gateway_url, &key, &gateway_stream, STREAMS).await?;
        report["streams_at_once"] = json!({
            "streams": STREAMS,
            "direct": direct_at_once,
            "through_gateway": through_at_once,
            "added_time_to_first_token": added(&direct_at_once["time_to_first_token"], &through_at_once["time_to_first_token"]),
            "added_inter_chunk": added(&direct_at_once["inter_chunk"], &through_at_once["inter_chunk"]),
        });
        eprintln!("{STREAMS} streams at once: {}", report["streams_at_once"]);
    }

    let direct_whole = json!({"model": "gpt-4o-mini", "messages": messages});
    let gateway_whole = json!({"model": "openai/gpt-4o-mini", "messages": messages});
    if steady_only {
        for _ in 0..200 {
            call(&http, &direct_url, &key, &direct_whole).await?;
            call(&http, &gateway_url, &key, &gateway_whole).await?;
        }
    }
    let direct_steady = steady(&http, &direct_url, &key, &direct_whole, STEADY_RATE).await?;
    let through_steady = steady(&http, &gateway_url, &key, &gateway_whole, STEADY_RATE).await?;
    let added_steady = added(&direct_steady["latency"], &through_steady["latency"]);
    let added_p99 = added_steady["p99_ms"].as_f64().unwrap_or(f64::INFINITY);
    report["steady"] = json!({
        "rate_per_s": STEADY_RATE,
        "seconds": STEADY_SECS,
        "direct": direct_steady,
        "through_gateway": through_steady,
        "added_latency": added_steady,
        "goal": "added p99 < 1 ms at 1,000 req/s",
        "met": added_p99 < 1.0,
    });
    eprintln!("steady {STEADY_RATE}/s: {}", report["steady"]);

    if !steady_only {
        report["memory"] = memory(&fake, &http, &gateway_url, &key, &gateway_whole, &gateway_stream).await?;
        eprintln!("memory over {RSS_CALLS} calls: {}", report["memory"]);
    }
    helix.stop().await;
    if let Some(dir) = std::path::Path::new(out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n")?;
    eprintln!("wrote {out}");
    Ok(())
}
