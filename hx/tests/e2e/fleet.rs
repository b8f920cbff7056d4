//! The fleet as a user deploys it: every service its own `hx serve` process, wired by
//! deploy/fleet.json exactly as docker-compose.yml and the Helm chart wire them (host
//! names and ports mapped to 127.0.0.1), on the machine's PostgreSQL and NATS.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use helix_testkit::{Backend, TestEnv};
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::support::{code, read};

const HX: &str = env!("CARGO_BIN_EXE_hx");

#[derive(Deserialize)]
struct Wiring {
    common_env: BTreeMap<String, String>,
    services: BTreeMap<String, ServiceWiring>,
    migrate: ServiceWiring,
}

#[derive(Deserialize)]
struct ServiceWiring {
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

struct Ports {
    grpc: u16,
    metrics: u16,
}

/// Fields drop in order: the processes die before their database and streams go.
struct Fleet {
    children: BTreeMap<String, Child>,
    env: TestEnv,
    wiring: Wiring,
    ports: BTreeMap<String, Ports>,
    gateway_port: u16,
    /// The mounted Secret of HELIX_GRPC_TOKEN_FILE: the test environment's fleet token.
    token_file: std::path::PathBuf,
}

/// `n` distinct free ports: all their listeners are held until every port is chosen, so
/// the kernel cannot hand one out twice.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

impl Fleet {
    fn new(env: TestEnv) -> anyhow::Result<Self> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/fleet.json");
        let wiring: Wiring = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        let mut free = free_ports(wiring.services.len() * 2 + 1).into_iter();
        let mut next = || free.next().expect("one port per listener");
        let ports =
            wiring.services.keys().map(|name| (name.clone(), Ports { grpc: next(), metrics: next() })).collect();
        let gateway_port = next();
        let token_file = env.home().join("grpc-token-secret");
        std::fs::write(&token_file, env.config.grpc.token.as_ref().expect("the test kit sets one").expose())?;
        Ok(Self { env, wiring, ports, gateway_port, children: BTreeMap::new(), token_file })
    }

    /// The deployment's environment for `service`, pointed at this machine.
    fn environment(&self, service: &str, wiring: &ServiceWiring) -> anyhow::Result<Vec<(String, String)>> {
        let config = &self.env.config;
        let mut env = Vec::new();
        for (key, value) in self.wiring.common_env.iter().chain(&wiring.env) {
            let value = match key.as_str() {
                "HELIX_HOME" => self.env.home().join(service).display().to_string(),
                "HELIX_DATABASE_URL" => config.database_url.clone().unwrap(),
                "HELIX_NATS_URL" => config.events.nats_url.clone().unwrap(),
                "HELIX_QDRANT_URL" => config.qdrant_url.clone().unwrap(),
                "HELIX_GRPC_ADDR" => format!("127.0.0.1:{}", self.ports.get(service).map_or(0, |p| p.grpc)),
                "HELIX_METRICS_ADDR" => format!("127.0.0.1:{}", self.ports.get(service).map_or(0, |p| p.metrics)),
                "HELIX_GATEWAY_ADDR" => format!("127.0.0.1:{}", self.gateway_port),
                "HELIX_GRPC_TOKEN_FILE" => self.token_file.display().to_string(),
                _ if key.ends_with("_URL") && value.starts_with("http://") => {
                    let host = value.trim_start_matches("http://").split(':').next().unwrap_or_default();
                    match self.ports.get(host) {
                        Some(ports) => format!("http://127.0.0.1:{}", ports.grpc),
                        None => value.clone(), // a dependency the tested services do not call yet
                    }
                }
                _ => value.clone(),
            };
            env.push((key.clone(), value));
        }
        // the one addition: this test's NATS subject prefix, so parallel tests stay apart
        env.push(("HELIX_EVENTS_PREFIX".into(), config.events.prefix.clone()));
        env.push(("HELIX_ADMIN_KEY".into(), self.env.admin_key.clone()));
        env.push(("HELIX_LOG".into(), "warn".into()));
        anyhow::ensure!(!wiring.command.is_empty(), "{service} has no command");
        Ok(env)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        let env = self.environment("migrate", &self.wiring.migrate)?;
        let output = Command::new(HX).args(&self.wiring.migrate.command).envs(env).output().await?;
        anyhow::ensure!(output.status.success(), "hx migrate failed: {}", String::from_utf8_lossy(&output.stderr));
        Ok(())
    }

    fn spawn(&mut self, service: &str) -> anyhow::Result<()> {
        let wiring = &self.wiring.services[service];
        let mut env = self.environment(service, wiring)?;
        env.push(("HELIX_MIGRATE".into(), "false".into()));
        std::fs::create_dir_all(self.env.home().join(service))?;
        let child =
            Command::new(HX).args(&wiring.command).envs(env).stdout(Stdio::null()).kill_on_drop(true).spawn()?;
        self.children.insert(service.to_owned(), child);
        Ok(())
    }

    async fn kill(&mut self, service: &str) -> anyhow::Result<()> {
        let mut child = self.children.remove(service).expect("running");
        child.start_kill()?;
        child.wait().await?;
        Ok(())
    }

    fn metrics_url(&self, service: &str) -> String {
        format!("http://127.0.0.1:{}/metrics", self.ports[service].metrics)
    }

    async fn wait_ready(&self, service: &str) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.ports[service].metrics);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = reqwest::get(&url).await
                && response.status() == 200
            {
                return Ok(());
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "{service} never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn api(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, format!("http://127.0.0.1:{}{path}", self.gateway_port))
            .bearer_auth(&self.env.admin_key)
    }
}

/// Parses Prometheus/OpenMetrics text strictly enough to catch a broken exposition:
/// returns every sample as (name with labels, value).
fn parse_metrics(text: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut samples = BTreeMap::new();
    let mut lines = text.lines().peekable();
    let valid_name = |name: &str| {
        !name.is_empty()
            && name
                .chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    };
    while let Some(line) = lines.next() {
        if line == "# EOF" {
            anyhow::ensure!(lines.peek().is_none(), "text after # EOF");
            return Ok(samples);
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            anyhow::ensure!(["HELP", "TYPE", "UNIT"].contains(&kind) && valid_name(name), "bad comment line: {line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| anyhow::anyhow!("bad sample: {line}"))?;
        let name = series.split('{').next().unwrap_or_default();
        anyhow::ensure!(valid_name(name), "bad metric name in: {line}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            anyhow::ensure!(labels.starts_with('{') && labels.ends_with('}'), "bad labels in: {line}");
            for pair in labels[1..labels.len() - 1].split("\",").filter(|p| !p.is_empty()) {
                let (key, val) = pair.split_once('=').ok_or_else(|| anyhow::anyhow!("bad label in: {line}"))?;
                anyhow::ensure!(valid_name(key) && val.starts_with('"'), "bad label {pair} in: {line}");
            }
        }
        let value: f64 = value.parse().map_err(|_| anyhow::anyhow!("bad value in: {line}"))?;
        samples.insert(series.to_owned(), value);
    }
    anyhow::bail!("no # EOF line")
}

/// The sum of the samples of `name` whose labels contain every one of `labels`.
fn total(samples: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| series.split('{').next() == Some(name) && labels.iter().all(|l| series.contains(l)))
        .map(|(_, v)| v)
        .sum()
}

async fn scrape(fleet: &Fleet, service: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let response = reqwest::get(fleet.metrics_url(service)).await?;
    anyhow::ensure!(response.status() == 200, "{service} /metrics answered {}", response.status());
    let text = response.text().await?;
    parse_metrics(&text).map_err(|e| anyhow::anyhow!("{service} /metrics: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_store_recall_and_survive_a_storage_restart() -> anyhow::Result<()> {
    let mut fleet = Fleet::new(TestEnv::new(Backend::Fleet).await?)?;
    fleet.migrate().await?;
    let services: Vec<String> = fleet.wiring.services.keys().cloned().collect();
    for service in &services {
        fleet.spawn(service)?;
    }
    for service in &services {
        fleet.wait_ready(service).await?;
    }
    let before: BTreeMap<String, BTreeMap<String, f64>> = {
        let mut all = BTreeMap::new();
        for service in &services {
            all.insert(service.clone(), scrape(&fleet, service).await?);
        }
        all
    };

    // the foundation's flow through the gateway
    let (status, health) = read(fleet.api(Method::GET, "/health").send().await?).await;
    assert_eq!(status, 200, "{health}");
    let mut stored = Vec::new();
    for content in ["alpha particles", "beta decay", "gamma rays"] {
        let (status, node) =
            read(fleet.api(Method::POST, "/api/v1/nodes").json(&json!({"content": content})).send().await?).await;
        assert_eq!(status, 201, "{node}");
        stored.push(node);
    }
    let (_, recalled) = read(fleet.api(Method::GET, "/api/v1/recall?q=decay").send().await?).await;
    assert_eq!(recalled["nodes"][0]["id"], stored[1]["id"]);

    // every service's /metrics is valid text, and its counters moved with the traffic
    for service in &services {
        let after = scrape(&fleet, service).await?;
        assert!(total(&after, "helix_build_info", &[]) == 1.0, "{service} has no build info");
        // the gateway answers REST; the others answer gRPC (calls and the gateway's health checks)
        let counter =
            if service == "gateway" { "helix_http_requests_total" } else { "helix_grpc_server_requests_total" };
        let calls = |m: &BTreeMap<String, f64>| total(m, counter, &[]);
        assert!(calls(&after) > calls(&before[service]), "{service}: {counter} did not move");
    }
    let gateway = scrape(&fleet, "gateway").await?;
    assert!(total(&gateway, "helix_http_requests_total", &["route=\"/api/v1/nodes\"", "status=\"201\""]) >= 3.0);
    let storage = scrape(&fleet, "storage").await?;
    assert!(total(&storage, "helix_grpc_server_requests_total", &["CreateNode", "code=\"OK\""]) >= 3.0);
    assert!(total(&storage, "helix_grpc_server_duration_seconds_count", &["CreateNode"]) >= 3.0);
    let published = || async {
        total(
            &scrape(&fleet, "storage").await.unwrap(),
            "helix_events_published_total",
            &["helix.node.created", "outcome=\"ok\""],
        )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while published().await < 3.0 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "storage never counted its published events");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // storage dies: the gateway says so, and refuses writes instead of losing them
    fleet.kill("storage").await?;
    let (status, health) = read(fleet.api(Method::GET, "/health").send().await?).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["failing"], json!(["storage"]));
    let (status, refused) =
        read(fleet.api(Method::POST, "/api/v1/nodes").json(&json!({"content": "while down"})).send().await?).await;
    assert_eq!((status, code(&refused)), (503, "unavailable"), "{refused}");
    let gateway = scrape(&fleet, "gateway").await?;
    assert!(total(&gateway, "helix_grpc_client_errors_total", &["StorageService"]) >= 1.0);

    // storage comes back: everything stored before is there, and writes work again
    fleet.spawn("storage")?;
    fleet.wait_ready("storage").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = read(fleet.api(Method::GET, "/health").send().await?).await;
        if status == 200 {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the gateway never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in &stored {
        let (status, got) =
            read(fleet.api(Method::GET, &format!("/api/v1/nodes/{}", node["id"].as_str().unwrap())).send().await?)
                .await;
        assert_eq!((status, &got), (200, node));
    }
    let (status, _) =
        read(fleet.api(Method::POST, "/api/v1/nodes").json(&json!({"content": "after"})).send().await?).await;
    assert_eq!(status, 201);
    let (_, page) = read(fleet.api(Method::GET, "/api/v1/nodes?limit=100").send().await?).await;
    let contents: Vec<&str> =
        page["nodes"].as_array().unwrap().iter().map(|n| n["content"].as_str().unwrap()).collect();
    assert_eq!(
        contents,
        ["after", "gamma rays", "beta decay", "alpha particles"],
        "nothing lost, nothing half-written"
    );
    Ok(())
}

/// A fleet process without the fleet token refuses to start, saying what to set: its
/// peers could not call it, nor it them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_process_without_the_token_does_not_start() -> anyhow::Result<()> {
    let env = TestEnv::new(Backend::Embedded).await?;
    let home = env.home();
    let missing = home.join("no-such-secret");
    let table = [
        // beyond loopback, nothing configured: a token made here would be this process's alone
        (vec![("HELIX_GRPC_ADDR", "0.0.0.0:0".to_owned())], "HELIX_GRPC_TOKEN_FILE"),
        // the mounted Secret is not there
        (vec![("HELIX_GRPC_TOKEN_FILE", missing.display().to_string())], "no-such-secret"),
    ];
    for (env, says) in table {
        let run = Command::new(HX)
            .args(["serve", "storage"])
            .env_remove("HELIX_GRPC_TOKEN")
            .env("HELIX_HOME", &home)
            .env("HELIX_METRICS_ADDR", "127.0.0.1:0")
            .env("HELIX_GRPC_ADDR", "127.0.0.1:0")
            .envs(env.clone())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(30), run).await??;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{env:?}: started");
        assert!(stderr.contains(says), "{env:?}: {stderr}");
    }
    assert!(!home.join("grpc.token").exists(), "no token made for a fleet process");
    Ok(())
}
