//! `hx pair`: an admin asks for a one-time code; on the new device, `hx pair confirm
//! CODE --server URL` trades it for the device's own key, saved for later `hx` calls.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cli::{Remote, client, helix_home};
use crate::client::GatewayClient;

#[derive(Debug, Args)]
pub struct PairArgs {
    #[command(subcommand)]
    pub command: Option<PairCommand>,
    /// a scope of the device's key (repeat); default: write (read and write, never admin)
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// limit the device's key to a namespace (repeat)
    #[arg(long = "namespace")]
    pub namespaces: Vec<String>,
    /// seconds the code is valid (at most 600)
    #[arg(long)]
    pub ttl: Option<u32>,
    /// a label for the device
    #[arg(long)]
    pub device: Option<String>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum PairCommand {
    /// On the new device: trade the code for this device's key and save it
    Confirm {
        /// the code the admin's `hx pair` printed, XXXX-XXXX
        code: String,
        /// this device's name (default: the host name)
        #[arg(long)]
        name: Option<String>,
    },
}

/// What `hx pair confirm` saves: the key, and the gateway it is for.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedPairing {
    pub server: String,
    pub key_id: String,
    pub token: String,
}

pub fn saved_path() -> Option<PathBuf> {
    helix_home().map(|home| home.join("pairing.json"))
}

/// The paired key saved for `server`, if any.
pub fn saved_key(server: &str) -> Option<String> {
    let text = std::fs::read_to_string(saved_path()?).ok()?;
    let saved: SavedPairing = serde_json::from_str(&text).ok()?;
    (saved.server.trim_end_matches('/') == server.trim_end_matches('/')).then_some(saved.token)
}

pub async fn run(args: PairArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        None => initiate(args).await,
        Some(PairCommand::Confirm { code, name }) => confirm(&args.remote, &code, name).await,
    }
}

async fn initiate(args: PairArgs) -> anyhow::Result<ExitCode> {
    let mut body = json!({});
    if !args.scopes.is_empty() {
        body["scopes"] = json!(args.scopes);
    }
    if !args.namespaces.is_empty() {
        body["namespaces"] = json!(args.namespaces);
    }
    if let Some(ttl) = args.ttl {
        body["ttl_secs"] = json!(ttl);
    }
    if let Some(device) = args.device {
        body["device_name"] = json!(device);
    }
    let answer: Value = client(&args.remote)?.call(Method::POST, "/api/v1/pair/initiate", &[], Some(&body)).await?;
    if args.remote.json {
        println!("{answer:#}");
        return Ok(ExitCode::SUCCESS);
    }
    let code = answer["code"].as_str().unwrap_or_default();
    println!("pairing code: {code}");
    println!("valid until {} for scopes {}", answer["expires_at"].as_str().unwrap_or("?"), answer["scopes"]);
    println!("on the device: hx pair confirm {code} --server {}", args.remote.server);
    Ok(ExitCode::SUCCESS)
}

async fn confirm(remote: &Remote, code: &str, name: Option<String>) -> anyhow::Result<ExitCode> {
    let name = name.or_else(|| std::env::var("HOSTNAME").ok()).unwrap_or_else(|| "paired device".to_owned());
    let body = json!({"code": code, "device_name": name});
    let gateway = GatewayClient::new(&remote.server, None)?;
    let answer: Value = gateway.call(Method::POST, "/api/v1/pair/confirm", &[], Some(&body)).await?;
    let saved = SavedPairing {
        server: remote.server.clone(),
        key_id: answer["key_id"].as_str().unwrap_or_default().to_owned(),
        token: answer["token"].as_str().context("the gateway answered without a token")?.to_owned(),
    };
    let path = saved_path().context("no HELIX_HOME or HOME to save the key in")?;
    helix_gateway::write_key_file(&path, &serde_json::to_string(&saved)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if remote.json {
        println!("{}", json!({"key_id": saved.key_id, "scopes": answer["scopes"], "saved": path}));
    } else {
        println!("paired as key {} with scopes {}; saved in {}", saved.key_id, answer["scopes"], path.display());
    }
    Ok(ExitCode::SUCCESS)
}
