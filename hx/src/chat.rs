//! `hx chat`: a conversation with any model the gateway reaches, over its
//! OpenAI-compatible `/v1/chat/completions`, each answer printed as it streams in. The
//! whole conversation goes with every question. In the REPL, `/model <name>` switches
//! model (history kept), `/model` shows it, `/reset` forgets the history, `/exit` ends.
//! `--recall` puts the knowledge nodes a hybrid search finds for each question in
//! front of it.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::cli::{Remote, client};
use crate::client::GatewayClient;

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// `provider/model`, an alias, or `auto` (the router's choice)
    #[arg(short, long, default_value = "auto")]
    pub model: String,
    /// A system prompt for the conversation
    #[arg(long)]
    pub system: Option<String>,
    /// Give each question the nodes a hybrid search finds for it, as context
    #[arg(long)]
    pub recall: bool,
    /// Ask this and exit, instead of the conversation
    pub prompt: Vec<String>,
    #[command(flatten)]
    pub remote: Remote,
}

pub async fn run(args: ChatArgs) -> anyhow::Result<ExitCode> {
    let gateway = client(&args.remote)?;
    let mut model = args.model.clone();
    let mut history: Vec<Value> = Vec::new();
    if let Some(system) = &args.system {
        history.push(json!({"role": "system", "content": system}));
    }
    if !args.prompt.is_empty() {
        ask(&gateway, &model, &mut history, &args.prompt.join(" "), args.recall).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let interactive = std::io::stdin().is_terminal();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        if interactive {
            eprint!("{model}> ");
            std::io::stderr().flush()?;
        }
        let Some(line) = lines.next_line().await? else { break };
        let line = line.trim();
        match line.split_once(' ').map_or((line, ""), |(command, rest)| (command, rest.trim())) {
            ("", _) => continue,
            ("/exit" | "/quit", _) => break,
            ("/reset", _) => {
                history.retain(|m| m["role"] == "system");
                println!("history cleared");
            }
            ("/model", "") => println!("model: {model}"),
            ("/model", name) => {
                model = name.to_owned();
                println!("model: {model}");
            }
            _ => {
                // a failed question is reported and the conversation goes on
                if let Err(error) = ask(&gateway, &model, &mut history, line, args.recall).await {
                    println!();
                    eprintln!("error: {error:#}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends the question with the history, prints the answer as it streams, and keeps both.
async fn ask(
    gateway: &GatewayClient,
    model: &str,
    history: &mut Vec<Value>,
    question: &str,
    recall: bool,
) -> anyhow::Result<()> {
    let mut messages = history.clone();
    if recall {
        let body = json!({"query": question, "limit": 5, "mode": "hybrid"});
        let found: Value = gateway.call(Method::POST, "/api/v1/search", &[], Some(&body)).await?;
        let notes: Vec<String> = found["results"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|hit| format!("- {}: {}", hit["title"].as_str().unwrap_or(""), hit["content"].as_str().unwrap_or("")))
            .collect();
        if !notes.is_empty() {
            let context = format!("Notes from the user's knowledge base:\n{}", notes.join("\n"));
            messages.push(json!({"role": "system", "content": context}));
        }
    }
    messages.push(json!({"role": "user", "content": question}));
    let body = json!({"model": model, "messages": messages, "stream": true});
    let mut answer = String::new();
    let mut stdout = std::io::stdout();
    gateway
        .events("/v1/chat/completions", &body, |_, data| {
            if data == "[DONE]" {
                return Ok(());
            }
            let chunk: Value = serde_json::from_str(data)?;
            if let Some(error) = chunk.get("error") {
                anyhow::bail!("{} ({})", error["message"].as_str().unwrap_or("the answer broke"), error["code"]);
            }
            if let Some(text) = chunk["choices"][0]["delta"]["content"].as_str() {
                answer.push_str(text);
                stdout.write_all(text.as_bytes())?;
                stdout.flush()?;
            }
            Ok(())
        })
        .await?;
    println!();
    history.push(json!({"role": "user", "content": question}));
    history.push(json!({"role": "assistant", "content": answer}));
    Ok(())
}
