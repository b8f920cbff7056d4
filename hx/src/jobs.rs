//! `hx jobs`: the job queue and its schedules through the gateway's `/api/v1/jobs` routes;
//! and `hx worker`,
//! a worker process that leases jobs from the jobs service over gRPC and runs the
//! built-in handlers (`helix_jobs::worker`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use helix_jobs::worker::{self, WorkerOptions};
use helix_runtime::HelixConfig;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cli::{Remote, client};

#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(subcommand)]
    pub command: JobsCommand,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Enqueue a job of KIND (echo, sleep, fail, http.request, or your workers' kinds)
    Enqueue {
        kind: String,
        /// the handler's input, a JSON object
        #[arg(short, long)]
        payload: Option<String>,
        #[arg(short, long)]
        queue: Option<String>,
        /// higher runs first
        #[arg(long)]
        priority: Option<i32>,
        /// attempts before the dead-letter queue (default 3)
        #[arg(long)]
        max_attempts: Option<u32>,
        /// run no sooner than this many seconds from now
        #[arg(long)]
        delay: Option<u32>,
        /// seconds an attempt may run (default 300)
        #[arg(long)]
        timeout: Option<u32>,
        /// enqueue once per key: a key used before returns that job
        #[arg(long)]
        key: Option<String>,
    },
    /// List jobs, newest first
    List {
        /// pending, running, completed, failed, dead or cancelled
        #[arg(short, long)]
        state: Option<String>,
        #[arg(short, long)]
        kind: Option<String>,
        #[arg(short, long)]
        queue: Option<String>,
        #[arg(short, long)]
        limit: Option<u32>,
    },
    /// One job, with its result or last error
    Get { id: String },
    /// Counts by state, queue and kind
    Stats {
        #[arg(short, long)]
        queue: Option<String>,
    },
    /// The jobs that ran out of attempts
    DeadLetter {
        #[arg(short, long)]
        kind: Option<String>,
        #[arg(short, long)]
        limit: Option<u32>,
    },
    /// Put a failed, dead or cancelled job back in its queue
    Retry {
        id: String,
        /// count attempts from zero again
        #[arg(long)]
        reset: bool,
    },
    /// Cancel a job; a running one is stopped by its worker
    Cancel {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Enqueue KIND on a schedule: --cron "*/5 * * * *" (UTC) or --every SECONDS
    Schedule {
        name: String,
        kind: String,
        /// five fields (minute hour day month weekday), or six with seconds first
        #[arg(long, conflicts_with = "every")]
        cron: Option<String>,
        /// seconds between runs
        #[arg(long)]
        every: Option<u32>,
        /// the jobs' input, a JSON object
        #[arg(short, long)]
        payload: Option<String>,
        /// enqueue while the previous run is still running (never while it waits to start)
        #[arg(long)]
        allow_overlap: bool,
    },
    /// The schedules, newest first
    Schedules,
    /// Delete finished jobs (default: completed and cancelled)
    Purge {
        /// completed, cancelled or dead; may be given more than once
        #[arg(long = "state")]
        states: Vec<String>,
        /// only jobs finished more than this many seconds ago
        #[arg(long)]
        older_than: Option<u64>,
        #[arg(short, long)]
        kind: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// the kinds to run (comma-separated): echo, sleep, fail, http.request
    #[arg(long, value_delimiter = ',', required = true)]
    pub kinds: Vec<String>,
    /// only these queues (comma-separated); default every queue
    #[arg(long, value_delimiter = ',')]
    pub queues: Vec<String>,
    /// jobs run at once
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// default `<host>-<pid>`
    #[arg(long)]
    pub worker_id: Option<String>,
    /// the jobs service's gRPC endpoint; default HELIX_JOBS_URL
    #[arg(long)]
    pub jobs_url: Option<String>,
    /// seconds a lease lasts without a heartbeat
    #[arg(long, default_value_t = 15)]
    pub lease_secs: u64,
    /// seconds between heartbeats
    #[arg(long, default_value_t = 5)]
    pub heartbeat_secs: u64,
}

/// Runs a worker until SIGINT or SIGTERM; running jobs are then stopped and reported
/// failed, so they are retried at once elsewhere.
pub async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let config = HelixConfig::load()?;
    let _telemetry = helix_telemetry::init(&config.log, "helix-worker");
    anyhow::ensure!(args.heartbeat_secs < args.lease_secs, "--heartbeat-secs must be shorter than --lease-secs");
    let credentials = helix_runtime::open_credentials(&config)?;
    let token = helix_runtime::grpc::fleet_token(&config, None, &credentials)?;
    let url = args.jobs_url.unwrap_or(config.endpoints.jobs);
    let handlers = worker::builtin(&args.kinds, &config.outbound).map_err(anyhow::Error::msg)?;
    let metrics = helix_runtime::metrics::Metrics::new();
    let channel = helix_runtime::grpc::channel(&url, None, Duration::from_secs(60), metrics, Some(&token))
        .with_context(|| format!("jobs service at {url}"))?;
    let mut options = WorkerOptions::new(args.worker_id.unwrap_or_else(worker::default_worker_id));
    options.queues = args.queues;
    options.concurrency = args.concurrency.max(1);
    options.lease = Duration::from_secs(args.lease_secs.max(1));
    options.heartbeat = Duration::from_secs(args.heartbeat_secs.max(1));
    println!("worker {} runs {} from {url}", options.worker_id, args.kinds.join(","));
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(worker::run(channel, options, handlers, shutdown.clone(), tasks.clone()));
    crate::cli::shutdown_signal().await;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(ExitCode::SUCCESS)
}

fn query<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<String>)>) -> Vec<(&'a str, String)> {
    pairs.into_iter().filter_map(|(name, value)| value.map(|v| (name, v))).collect()
}

pub async fn run(JobsArgs { command, remote }: JobsArgs) -> anyhow::Result<ExitCode> {
    let gateway = client(&remote)?;
    let answer: Value = match command {
        JobsCommand::Enqueue { kind, payload, queue, priority, max_attempts, delay, timeout, key } => {
            let mut body = json!({ "kind": kind });
            if let Some(payload) = payload {
                let payload: Value = serde_json::from_str(&payload).context("--payload is not JSON")?;
                body["payload"] = payload;
            }
            for (field, value) in [
                ("queue", queue.map(Value::from)),
                ("priority", priority.map(Value::from)),
                ("max_attempts", max_attempts.map(Value::from)),
                ("delay_secs", delay.map(Value::from)),
                ("timeout_secs", timeout.map(Value::from)),
                ("idempotency_key", key.map(Value::from)),
            ] {
                if let Some(value) = value {
                    body[field] = value;
                }
            }
            let job: Value = gateway.call(Method::POST, "/api/v1/jobs", &[], Some(&body)).await?;
            if !remote.json {
                println!("enqueued {} ({}, {})", text(&job["id"]), text(&job["kind"]), text(&job["state"]));
            }
            job
        }
        JobsCommand::List { state, kind, queue, limit } => {
            let query =
                query([("state", state), ("kind", kind), ("queue", queue), ("limit", limit.map(|n| n.to_string()))]);
            let page: Value = gateway.call(Method::GET, "/api/v1/jobs", &query, None).await?;
            if !remote.json {
                print_jobs(&page);
            }
            page
        }
        JobsCommand::Get { id } => {
            let job: Value = gateway.call(Method::GET, &format!("/api/v1/jobs/{id}"), &[], None).await?;
            if !remote.json {
                print_job(&job);
            }
            job
        }
        JobsCommand::Stats { queue } => {
            let stats: Value =
                gateway.call(Method::GET, "/api/v1/jobs/stats", &query([("queue", queue)]), None).await?;
            if !remote.json {
                print_stats(&stats);
            }
            stats
        }
        JobsCommand::DeadLetter { kind, limit } => {
            let query = query([("kind", kind), ("limit", limit.map(|n| n.to_string()))]);
            let page: Value = gateway.call(Method::GET, "/api/v1/jobs/dead-letter", &query, None).await?;
            if !remote.json {
                print_jobs(&page);
            }
            page
        }
        JobsCommand::Retry { id, reset } => {
            let body = json!({ "reset_retries": reset });
            let job: Value = gateway.call(Method::POST, &format!("/api/v1/jobs/{id}/retry"), &[], Some(&body)).await?;
            if !remote.json {
                println!("{} is {} again", text(&job["id"]), text(&job["state"]));
            }
            job
        }
        JobsCommand::Cancel { id, reason } => {
            let body = json!({ "reason": reason });
            let job: Value = gateway.call(Method::POST, &format!("/api/v1/jobs/{id}/cancel"), &[], Some(&body)).await?;
            if !remote.json {
                match job["state"].as_str() {
                    Some("running") => println!("{} is running: its worker was told to stop", text(&job["id"])),
                    _ => println!("{} is {}", text(&job["id"]), text(&job["state"])),
                }
            }
            job
        }
        JobsCommand::Schedule { name, kind, cron, every, payload, allow_overlap } => {
            let mut body = json!({ "name": name, "kind": kind, "cron": cron, "interval_secs": every,
                "allow_overlap": allow_overlap });
            if let Some(payload) = payload {
                body["payload"] = serde_json::from_str(&payload).context("--payload is not JSON")?;
            }
            let schedule: Value = gateway.call(Method::POST, "/api/v1/jobs/schedules", &[], Some(&body)).await?;
            if !remote.json {
                println!(
                    "scheduled {} ({}), next run {}",
                    text(&schedule["name"]),
                    text(&schedule["id"]),
                    text(&schedule["next_run_at"])
                );
            }
            schedule
        }
        JobsCommand::Schedules => {
            let page: Value = gateway.call(Method::GET, "/api/v1/jobs/schedules", &[], None).await?;
            if !remote.json {
                for s in page["schedules"].as_array().cloned().unwrap_or_default() {
                    let when = match s["cron"].as_str() {
                        Some(cron) => cron.to_owned(),
                        None => format!("every {} s", s["interval_secs"]),
                    };
                    let state = if s["enabled"] == true { "on" } else { "off" };
                    println!(
                        "{}  {:<20} {:<3} {:<16} {:<14} next {}",
                        text(&s["id"]),
                        text(&s["name"]),
                        state,
                        when,
                        text(&s["kind"]),
                        text(&s["next_run_at"])
                    );
                }
            }
            page
        }
        JobsCommand::Purge { states, older_than, kind } => {
            let mut body = json!({ "states": states, "kind": kind });
            if let Some(secs) = older_than {
                let before = chrono::Utc::now() - chrono::Duration::seconds(secs as i64);
                body["finished_before"] = json!(before);
            }
            let purged: Value = gateway.call(Method::POST, "/api/v1/jobs/purge", &[], Some(&body)).await?;
            if !remote.json {
                println!("purged {} jobs", purged["purged"]);
            }
            purged
        }
    };
    if remote.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    }
    Ok(ExitCode::SUCCESS)
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("?")
}

fn print_jobs(page: &Value) {
    let jobs = page["jobs"].as_array().cloned().unwrap_or_default();
    if jobs.is_empty() {
        println!("no jobs");
    }
    for job in &jobs {
        println!(
            "{}  {:<9} {:<14} {:<10} attempt {} of {}",
            text(&job["id"]),
            text(&job["state"]),
            text(&job["kind"]),
            text(&job["queue"]),
            job["attempt"],
            job["max_attempts"]
        );
    }
    if let Some(cursor) = page["next_cursor"].as_str() {
        println!("more: --cursor {cursor}");
    }
}

fn print_job(job: &Value) {
    for field in ["id", "kind", "queue", "state", "priority", "attempt", "retries", "max_attempts", "worker_id"] {
        if !job[field].is_null() {
            println!("{field:<14} {}", job[field].as_str().map_or_else(|| job[field].to_string(), str::to_owned));
        }
    }
    for field in ["run_at", "created_at", "started_at", "finished_at", "last_error"] {
        if let Some(value) = job[field].as_str() {
            println!("{field:<14} {value}");
        }
    }
    println!("{:<14} {}", "payload", job["payload"]);
    if !job["result"].is_null() {
        println!("{:<14} {}", "result", job["result"]);
    }
}

fn print_stats(stats: &Value) {
    let states = ["pending", "running", "completed", "failed", "dead", "cancelled"];
    println!("{:<20} {}", "", states.map(|s| format!("{s:>10}")).join(""));
    let row = |name: &str, counts: &Value| {
        println!("{name:<20} {}", states.map(|s| format!("{:>10}", counts[s].as_u64().unwrap_or(0))).join(""));
    };
    row("all", stats);
    for queue in stats["by_queue"].as_array().cloned().unwrap_or_default() {
        row(&format!("queue {}", text(&queue["queue"])), &queue);
    }
    for kind in stats["by_kind"].as_array().cloned().unwrap_or_default() {
        row(&format!("kind {}", text(&kind["kind"])), &kind);
    }
    println!("active workers {}", stats["active_workers"]);
    if let Some(oldest) = stats["oldest_pending_at"].as_str() {
        println!("oldest pending {oldest}");
    }
}
