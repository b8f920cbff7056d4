//! The llm-router's overhead: the same chat call sent straight to a fake provider and
//! through the gateway and router (budget reservation and usage recording on), one at
//! a time. Reported: added latency (p50, p99) for whole answers, added time to first
//! token for streams, and the router's own time as it reports it
//! (`x-helix-router-overhead-us`).

use std::time::{Duration, Instant};

use helix_testkit::llm::{FakeLlm, Wire};
use helix_testkit::{Backend, TestEnv, TestHelix};
use hx::fleet::Role;
use serde_json::{Value, json};

const CALLS: usize = 2000;
const STREAMS: usize = 500;

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

/// Sends `body` and waits for the whole answer (or, streaming, the first content chunk
/// and then the rest); returns (total, first content) times and the overhead header.
async fn call(http: &reqwest::Client, url: &str, key: &str, body: &Value) -> anyhow::Result<(f64, f64, Option<f64>)> {
    let started = Instant::now();
    let mut response = http.post(url).bearer_auth(key).json(body).send().await?;
    anyhow::ensure!(response.status().is_success(), "{url}: {}", response.status());
    let overhead = response
        .headers()
        .get("x-helix-router-overhead-us")
        .and_then(|v| v.to_str().ok()?.parse::<f64>().ok())
        .map(|us| us / 1000.0);
    let mut first = None;
    while let Some(chunk) = response.chunk().await? {
        if first.is_none() && chunk.windows(9).any(|w| w == b"\"content\"") {
            first = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok((ms(total), ms(first.unwrap_or(total)), overhead))
}

pub async fn run(out: &str) -> anyhow::Result<()> {
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
        "note": "concurrency 1; fake provider on loopback; budget reservation and usage recording on (SQLite)"});
    for stream in [false, true] {
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
            let (total, first, _) = call(&http, &direct_url, &key, &direct_body).await?;
            direct.push(total);
            direct_first.push(first);
            let (total, first, own) = call(&http, &gateway_url, &key, &gateway_body).await?;
            through.push(total);
            through_first.push(first);
            overhead.extend(own);
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
    helix.stop().await;
    if let Some(dir) = std::path::Path::new(out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n")?;
    eprintln!("wrote {out}");
    Ok(())
}
