//! The command line: `hx up`, `hx serve <service>`, and the gateway commands
//! `hx store`, `hx recall`, `hx health`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use helix_runtime::HelixConfig;
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::GatewayClient;
use crate::fleet::{Node, Role};

#[derive(Debug, Parser)]
#[command(name = "hx", version, about = "Helix: keep knowledge, reach any LLM, run durable work")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run all eight services in this process (the embedded default)
    Up,
    /// Run one service in this process
    Serve {
        /// storage, search, graph, llm-router, orchestrator, jobs, notifications or gateway
        service: Role,
    },
    /// Store a knowledge node through the gateway
    Store(StoreArgs),
    /// List the nodes whose title or content contain the words
    Recall(RecallArgs),
    /// Search the nodes, ranked: by words (the default), meaning or both
    Search(SearchArgs),
    /// Rebuild the search index (words and vectors) from storage, with progress
    Reindex(ReindexArgs),
    /// Relate nodes and explore the graph: link, unlink, neighbours, path, export, stats
    Graph(crate::graph::GraphArgs),
    /// The job queue: enqueue, list, show, stats, dead-letter, retry, cancel, purge
    Jobs(crate::jobs::JobsArgs),
    /// Workflows: run a definition file (--wait follows it), validate, ls, show, cancel
    Workflow(crate::workflow::WorkflowArgs),
    /// Run jobs: lease jobs of the given kinds from the jobs service over gRPC, run them
    Worker(crate::jobs::WorkerArgs),
    /// Talk with a model through the gateway: answers stream in; /model switches model
    Chat(crate::chat::ChatArgs),
    /// Show the gateway's health and its dependencies'
    Health(Remote),
    /// Pair a device: print a one-time code (admin), or `hx pair confirm CODE` on the device
    Pair(crate::pair::PairArgs),
    /// Run every service's database migrations, then exit (once per release)
    Migrate,
    /// This machine's credential vault: init, set, get, list, rm, rotate
    Keychain(crate::keychain::KeychainArgs),
    /// Configure Helix by answering questions (or `--quick`), then start or check it
    Setup(crate::setup::SetupArgs),
    /// The sentence-embedding model: `hx model fetch` puts it in HELIX_HOME/models
    Model(crate::model::ModelArgs),
    /// Exit 0 when this machine's Helix process is ready (container health checks)
    Probe {
        /// default: /readyz on HELIX_METRICS_ADDR's port
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct Remote {
    /// The gateway to talk to
    #[arg(long, env = "HELIX_SERVER", default_value = "http://127.0.0.1:9470", global = true)]
    pub server: String,
    /// API key; default: HELIX_HOME/admin.key, written by a gateway on this machine
    #[arg(long, env = "HELIX_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// Print the gateway's JSON answer
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The content; `-` reads it from standard input
    #[arg(required = true, num_args = 1..)]
    pub content: Vec<String>,
    #[arg(short, long)]
    pub title: Option<String>,
    #[arg(short, long)]
    pub namespace: Option<String>,
    #[arg(short, long)]
    pub kind: Option<String>,
    /// May be given more than once
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    #[arg(long)]
    pub source: Option<String>,
    #[arg(long)]
    pub importance: Option<f64>,
    /// Answer once the note is searchable: `indexed` by words (so `hx recall` right
    /// after finds it), `vectors` by meaning too, `none` at once
    #[arg(long, value_enum, default_value_t = WaitFor::Indexed)]
    pub wait_for: WaitFor,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WaitFor {
    Indexed,
    Vectors,
    None,
}

#[derive(Debug, Args)]
pub struct RecallArgs {
    #[arg(required = true, num_args = 1..)]
    pub words: Vec<String>,
    #[arg(short, long)]
    pub namespace: Option<String>,
    #[arg(short, long, default_value_t = 10)]
    pub limit: u32,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    #[command(flatten)]
    pub query: RecallArgs,
    /// fulltext (the default), semantic or hybrid
    #[arg(short, long, default_value = "fulltext")]
    pub mode: String,
}

#[derive(Debug, Args)]
pub struct ReindexArgs {
    /// only this namespace
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// embed every node again, even those indexed at their current version
    #[arg(long)]
    pub re_embed: bool,
    #[command(flatten)]
    pub remote: Remote,
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up => run_node(&Role::ALL, "helix").await,
        Command::Serve { service } => run_node(&[service], &format!("helix-{}", service.name())).await,
        Command::Store(args) => store(args).await,
        Command::Recall(args) => recall(args).await,
        Command::Search(args) => search(args).await,
        Command::Reindex(args) => reindex(args).await,
        Command::Graph(args) => crate::graph::run(args).await,
        Command::Jobs(args) => crate::jobs::run(args).await,
        Command::Worker(args) => crate::jobs::worker(args).await,
        Command::Workflow(args) => crate::workflow::run(args).await,
        Command::Chat(args) => crate::chat::run(args).await,
        Command::Health(remote) => health(remote).await,
        Command::Pair(args) => crate::pair::run(args).await,
        Command::Migrate => migrate().await,
        Command::Probe { url } => probe(url).await,
        Command::Keychain(args) => crate::keychain::run(args).await,
        Command::Setup(args) => crate::setup::run(args).await,
        Command::Model(args) => crate::model::run(args).await,
    }
}

async fn migrate() -> anyhow::Result<ExitCode> {
    let config = HelixConfig::load()?;
    let _telemetry = helix_telemetry::init(&config.log, "helix-migrate");
    helix_storage::migrate(&config).await.context("storage migrations")?;
    helix_graph::migrate(&config).await.context("graph migrations")?;
    helix_jobs::migrate(&config).await.context("jobs migrations")?;
    helix_orchestrator::migrate(&config).await.context("orchestrator migrations")?;
    helix_llm_router::migrate(&config).await.context("llm-router migrations")?;
    helix_gateway::migrate(&config).await.context("gateway migrations")?;
    println!("migrations applied");
    Ok(ExitCode::SUCCESS)
}

async fn probe(url: Option<String>) -> anyhow::Result<ExitCode> {
    let url = match url {
        Some(url) => url,
        None => {
            let config = HelixConfig::load()?;
            format!("http://127.0.0.1:{}/readyz", config.metrics.addr.port())
        }
    };
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(5)).build()?;
    let response = client.get(&url).send().await.with_context(|| format!("nothing answers at {url}"))?;
    let status = response.status();
    print!("{}", response.text().await.unwrap_or_default());
    Ok(if status.is_success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn run_node(roles: &[Role], service_name: &str) -> anyhow::Result<ExitCode> {
    let config = HelixConfig::load()?;
    let _telemetry = helix_telemetry::init(&config.log, service_name);
    let home = config.home.clone();
    let node = Node::start(config, roles).await.context("cannot start")?;
    if let Some(url) = node.gateway_url() {
        println!("helix is up: REST {url}, gRPC {}, data in {}", node.grpc_url(), home.display());
    }
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        _ = node.stopped() => tracing::warn!("a server stopped, shutting down"),
    }
    node.stop().await;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

pub(crate) fn client(remote: &Remote) -> anyhow::Result<GatewayClient> {
    let key = match &remote.api_key {
        Some(key) => Some(key.clone()),
        None => crate::pair::saved_key(&remote.server).or_else(read_key_file),
    };
    GatewayClient::new(&remote.server, key)
}

/// HELIX_HOME, else ~/.helix: where a gateway on this machine leaves its admin key and
/// `hx pair confirm` its paired key.
pub(crate) fn helix_home() -> Option<PathBuf> {
    std::env::var_os("HELIX_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".helix")))
}

fn read_key_file() -> Option<String> {
    let home = helix_home()?;
    let key = std::fs::read_to_string(home.join("admin.key")).ok()?;
    Some(key.trim().to_owned()).filter(|k| !k.is_empty())
}

async fn store(args: StoreArgs) -> anyhow::Result<ExitCode> {
    let content = if args.content == ["-"] {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read standard input")?;
        text
    } else {
        args.content.join(" ")
    };
    let mut body = json!({ "content": content, "tags": args.tags });
    for (field, value) in
        [("title", args.title), ("namespace", args.namespace), ("kind", args.kind), ("source", args.source)]
    {
        if let Some(value) = value {
            body[field] = json!(value);
        }
    }
    if let Some(importance) = args.importance {
        body["importance"] = json!(importance);
    }
    let wait_for = match args.wait_for {
        WaitFor::Indexed => vec![("wait_for", "indexed".to_owned())],
        WaitFor::Vectors => vec![("wait_for", "vectors".to_owned())],
        WaitFor::None => vec![],
    };
    let node: Value = client(&args.remote)?.call(Method::POST, "/api/v1/nodes", &wait_for, Some(&body)).await?;
    if args.remote.json {
        println!("{}", serde_json::to_string_pretty(&node)?);
    } else {
        println!(
            "stored {} ({}/{}, version {})",
            node["id"].as_str().unwrap_or("?"),
            node["namespace"].as_str().unwrap_or("?"),
            node["kind"].as_str().unwrap_or("?"),
            node["version"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Hybrid search: what the words say and what they mean.
async fn recall(args: RecallArgs) -> anyhow::Result<ExitCode> {
    let Some(results) = find(&args, "hybrid").await? else { return Ok(ExitCode::SUCCESS) };
    for hit in results {
        let node = &hit["node"];
        let content = node["content"].as_str().unwrap_or_default();
        let snippet: String = content.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(120).collect();
        println!(
            "{}  [{}] {}",
            node["id"].as_str().unwrap_or("?"),
            node["namespace"].as_str().unwrap_or("?"),
            node["title"].as_str().unwrap_or("")
        );
        println!("    {snippet}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Searches; with `--json` prints the answer and returns `None`, else returns the hits
/// for the caller to print (after saying "nothing found" when there are none).
async fn find(args: &RecallArgs, mode: &str) -> anyhow::Result<Option<Vec<Value>>> {
    let mut body = json!({ "query": args.words.join(" "), "limit": args.limit, "mode": mode });
    if let Some(namespace) = &args.namespace {
        body["namespace"] = json!(namespace);
    }
    let found: Value = client(&args.remote)?.call(Method::POST, "/api/v1/search", &[], Some(&body)).await?;
    if args.remote.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(None);
    }
    let results = found["results"].as_array().cloned().unwrap_or_default();
    if results.is_empty() {
        println!("nothing found");
    }
    Ok(Some(results))
}

async fn search(SearchArgs { query: args, mode }: SearchArgs) -> anyhow::Result<ExitCode> {
    let Some(results) = find(&args, &mode).await? else { return Ok(ExitCode::SUCCESS) };
    for hit in results {
        let snippet = hit["snippet"].as_str().unwrap_or_default().replace("<mark>", "[").replace("</mark>", "]");
        let snippet: String = snippet.split_whitespace().collect::<Vec<_>>().join(" ");
        println!(
            "{}  {:.3}  {}",
            hit["id"].as_str().unwrap_or("?"),
            hit["score"].as_f64().unwrap_or_default(),
            hit["title"].as_str().unwrap_or("")
        );
        println!("    {snippet}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Streams the reindex's progress: a bar on a terminal, the last line otherwise.
async fn reindex(args: ReindexArgs) -> anyhow::Result<ExitCode> {
    let body = json!({ "namespace": args.namespace, "re_embed": args.re_embed });
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg:>10} [{bar:40}] {pos}/{len} nodes ({per_sec}, {eta})")?
            .progress_chars("=> "),
    );
    let mut last: Option<Value> = None;
    let mut failure: Option<String> = None;
    client(&args.remote)?
        .events("/api/v1/search/reindex", &body, |event, data| {
            let value: Value = serde_json::from_str(data)?;
            match event {
                "error" => failure = Some(value["error"]["message"].as_str().unwrap_or(data).to_owned()),
                _ => {
                    let total = value["total"].as_u64().unwrap_or(0);
                    bar.set_length(total.max(value["processed"].as_u64().unwrap_or(0)));
                    bar.set_position(value["processed"].as_u64().unwrap_or(0));
                    bar.set_message(value["phase"].as_str().unwrap_or("").to_owned());
                    last = Some(value);
                }
            }
            Ok(())
        })
        .await?;
    bar.finish_and_clear();
    if let Some(message) = failure {
        eprintln!("reindex failed: {message}");
        return Ok(ExitCode::FAILURE);
    }
    let Some(last) = last.filter(|p| p["done"] == true) else {
        eprintln!("the reindex stream ended before it was done");
        return Ok(ExitCode::FAILURE);
    };
    if args.remote.json {
        println!("{}", serde_json::to_string_pretty(&last)?);
    } else {
        println!(
            "reindexed {} nodes ({} failed)",
            last["processed"].as_u64().unwrap_or(0),
            last["failed"].as_u64().unwrap_or(0)
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn health(remote: Remote) -> anyhow::Result<ExitCode> {
    let gateway = client(&remote)?;
    let (status, text) = gateway.send(Method::GET, "/health", &[], None).await?;
    let mut health: Value = serde_json::from_str(&text).with_context(|| format!("unexpected answer: {text}"))?;
    // where each credential comes from, when the key may see it (admin); never a value
    let credentials = match gateway.send(Method::GET, "/api/v1/secrets/status", &[], None).await {
        Ok((status, text)) if status.is_success() => serde_json::from_str::<Value>(&text).ok(),
        _ => None,
    };
    if remote.json {
        if let (Some(credentials), Some(object)) = (credentials, health.as_object_mut()) {
            object.insert("credentials".to_owned(), credentials);
        }
        println!("{}", serde_json::to_string_pretty(&health)?);
    } else {
        println!("{}", health["status"].as_str().unwrap_or("unknown"));
        if let Some(checks) = health["checks"].as_object() {
            for (name, verdict) in checks {
                println!("  {name:<14} {}", verdict.as_str().unwrap_or("?"));
            }
        }
        if let Some(credentials) = credentials {
            print_credentials(&credentials);
        }
    }
    Ok(if status.is_success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The credentials that are set, each with where it comes from and who reads it, then
/// how many known ones are not; the vault's file and key source. Never a value.
fn print_credentials(status: &Value) {
    let vault = &status["vault"];
    let file = vault["path"].as_str().unwrap_or("?");
    let state = if vault["exists"] == true { "" } else { ", not created yet" };
    println!("credentials (vault {file}{state}; key: {})", vault["key_source"].as_str().unwrap_or("?"));
    let secrets = status["secrets"].as_array().map(Vec::as_slice).unwrap_or_default();
    let (set, unset): (Vec<&Value>, Vec<&Value>) = secrets.iter().partition(|s| s["set"] == true);
    for secret in &set {
        let name = secret["name"].as_str().unwrap_or("?");
        let origin = secret["origin"].as_str().unwrap_or("?");
        let used_by = secret["used_by"].as_str().unwrap_or("stored in the vault");
        println!("  {name:<28} {origin:<12} {used_by}");
    }
    if set.is_empty() {
        println!("  none set: `hx keychain set NAME` stores one in the vault");
    }
    if !unset.is_empty() {
        println!("  ({} other known credentials unset)", unset.len());
    }
}
