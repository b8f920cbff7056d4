//! `hx workflow`: the workflow engine through the gateway's `/api/v1/workflows` routes.
//! `run <file>` stores the definition (TOML or JSON, told by its extension) and starts
//! it; with `--wait` it follows the execution to its end and exits non-zero unless it
//! succeeded. `templates` and `instantiate` reach the scheduler's built-in templates.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::{Remote, client};

#[derive(Debug, Args)]
pub struct WorkflowArgs {
    #[command(subcommand)]
    pub command: WorkflowCommand,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Store the workflow in FILE (.toml or .json) and start it
    Run {
        file: std::path::PathBuf,
        /// input variables, a JSON object merged over the declared defaults
        #[arg(long)]
        vars: Option<String>,
        /// follow the execution to its end; exit 1 unless it succeeded
        #[arg(long)]
        wait: bool,
    },
    /// Check the workflow in FILE and print its plan (waves) without running it
    Validate { file: std::path::PathBuf },
    /// List executions, newest first
    Ls {
        /// pending, running, succeeded, failed or cancelled
        #[arg(short, long)]
        state: Option<String>,
        #[arg(short, long)]
        limit: Option<u32>,
    },
    /// One execution with its steps
    Show { id: String },
    /// Stop a running execution and the sub-workflows it started
    Cancel { id: String },
    /// List the built-in scheduler templates and their parameters
    Templates,
    /// Store a scheduler template as a named scheduler workflow (run it with
    /// POST /api/v1/scheduler/workflows/{name}/run)
    Instantiate {
        template: String,
        /// the workflow's name; the template's when absent
        #[arg(long)]
        name: Option<String>,
        /// the template's parameters, a JSON object
        #[arg(long)]
        params: Option<String>,
    },
}

fn read_definition(file: &std::path::Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let format = match file.extension().and_then(|e| e.to_str()) {
        Some("json") => "json",
        _ => "toml",
    };
    Ok(json!({ "format": format, "definition": text }))
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("?")
}

fn print_execution(e: &Value) {
    println!("{}  {}  {}", text(&e["id"]), text(&e["workflow_name"]), text(&e["state"]));
    if let Some(error) = e["error"].as_str() {
        println!("  error: {error}");
    }
    for step in e["steps"].as_array().cloned().unwrap_or_default() {
        println!("  {:<24} {:<10} attempt {}", text(&step["step_id"]), text(&step["state"]), step["attempt"]);
    }
}

pub async fn run(WorkflowArgs { command, remote }: WorkflowArgs) -> anyhow::Result<ExitCode> {
    let gateway = client(&remote)?;
    let mut code = ExitCode::SUCCESS;
    let answer: Value = match command {
        WorkflowCommand::Run { file, vars, wait } => {
            let body = read_definition(&file)?;
            let workflow: Value = gateway.call(Method::POST, "/api/v1/workflows", &[], Some(&body)).await?;
            let id = text(&workflow["id"]).to_owned();
            let mut input = json!({});
            if let Some(vars) = vars {
                input["variables"] = serde_json::from_str(&vars).context("--vars is not JSON")?;
            }
            let mut execution: Value =
                gateway.call(Method::POST, &format!("/api/v1/workflows/{id}/execute"), &[], Some(&input)).await?;
            if !remote.json {
                println!("started {} of {} ({id})", text(&execution["id"]), text(&workflow["name"]));
            }
            if wait {
                let path = format!("/api/v1/workflows/executions/{}", text(&execution["id"]));
                loop {
                    execution = gateway.call(Method::GET, &path, &[], None).await?;
                    if matches!(execution["state"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                if !remote.json {
                    print_execution(&execution);
                }
                if execution["state"] != "succeeded" {
                    code = ExitCode::FAILURE;
                }
            }
            execution
        }
        WorkflowCommand::Validate { file } => {
            let body = read_definition(&file)?;
            let plan: Value = gateway.call(Method::POST, "/api/v1/workflows/validate", &[], Some(&body)).await?;
            if !remote.json {
                println!("{} is valid", text(&plan["name"]));
                for (i, wave) in plan["waves"].as_array().cloned().unwrap_or_default().iter().enumerate() {
                    let ids: Vec<&str> = wave.as_array().map(|w| w.iter().map(text).collect()).unwrap_or_default();
                    println!("  wave {i}: {}", ids.join(", "));
                }
            }
            plan
        }
        WorkflowCommand::Ls { state, limit } => {
            let query: Vec<(&str, String)> = [("state", state), ("limit", limit.map(|n| n.to_string()))]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect();
            let page: Value = gateway.call(Method::GET, "/api/v1/workflows/executions", &query, None).await?;
            if !remote.json {
                let all = page["executions"].as_array().cloned().unwrap_or_default();
                if all.is_empty() {
                    println!("no executions");
                }
                for e in all {
                    println!(
                        "{}  {:<24} {:<10} {}/{} steps",
                        text(&e["id"]),
                        text(&e["workflow_name"]),
                        text(&e["state"]),
                        e["steps_done"],
                        e["steps_total"]
                    );
                }
            }
            page
        }
        WorkflowCommand::Show { id } => {
            let execution: Value =
                gateway.call(Method::GET, &format!("/api/v1/workflows/executions/{id}"), &[], None).await?;
            if !remote.json {
                print_execution(&execution);
            }
            execution
        }
        WorkflowCommand::Cancel { id } => {
            let execution: Value = gateway
                .call(Method::POST, &format!("/api/v1/workflows/executions/{id}/cancel"), &[], Some(&json!({})))
                .await?;
            if !remote.json {
                println!("{} is {}", text(&execution["id"]), text(&execution["state"]));
            }
            execution
        }
        WorkflowCommand::Templates => {
            let list: Value = gateway.call(Method::GET, "/api/v1/scheduler/templates", &[], None).await?;
            if !remote.json {
                for t in list["templates"].as_array().cloned().unwrap_or_default() {
                    println!("{:<20} {}", text(&t["name"]), text(&t["description"]));
                    for p in t["parameters"].as_array().cloned().unwrap_or_default() {
                        let default = if p["required"] == true {
                            "required".to_owned()
                        } else {
                            format!("default {}", p["default"])
                        };
                        println!("  {:<18} {} ({default})", text(&p["name"]), text(&p["description"]));
                    }
                }
            }
            list
        }
        WorkflowCommand::Instantiate { template, name, params } => {
            let mut body = json!({"name": name.unwrap_or_default()});
            if let Some(params) = params {
                body["parameters"] = serde_json::from_str(&params).context("--params is not JSON")?;
            }
            let path = format!("/api/v1/scheduler/templates/{template}/instantiate");
            let saved: Value = gateway.call(Method::POST, &path, &[], Some(&body)).await?;
            if !remote.json {
                let tasks = saved["tasks"].as_array().map_or(0, Vec::len);
                println!("{} stored from {template}: {tasks} tasks", text(&saved["name"]));
            }
            saved
        }
    };
    if remote.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    }
    Ok(code)
}
