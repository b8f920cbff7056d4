//! The llm-router service: one door to every LLM provider the seed names — routing with
//! fallbacks, retries and circuit breakers, streaming, cost and the daily budget.
//!
//! Its contract is `proto/helix/v1/llm_router.proto`; the gateway's OpenAI- and
//! Anthropic-compatible routes (`/v1/chat/completions`, `/v1/embeddings`, `/v1/messages`,
//! `/v1/models`), `/api/budget`, `/api/v1/rate-limits`, `/api/v1/llm/...` and
//! `/api/analytics/...` call it.
//!
//! - `providers`: the catalogue (key variables, base URLs and their SDK variables);
//!   `upstream`: the one pooled HTTP client and the calls; `openai`, `anthropic`,
//!   `gemini`, `ollama`, `cohere` and `bedrock`: the wire protocols (most providers
//!   speak OpenAI's); `sse`: event streams and newline-delimited JSON; `sigv4`: AWS
//!   request signing.
//! - `router`: targets from model names and aliases, admission, retries, fallbacks,
//!   streams relayed delta by delta; `breaker`: per-provider health.
//! - `pricing` (`pricing.toml`) and `budget`: integer micro-dollars, reserve before,
//!   settle after, usage records in SQL, per-API-key caps; `ratelimit`: per-provider
//!   request limits (token buckets), kept in SQL; `analytics`: the usage records
//!   queried and summed in SQL (dashboard, trends, providers, token usage).

mod analytics;
mod anthropic;
mod bedrock;
mod breaker;
mod budget;
mod cohere;
mod gemini;
mod grpc;
mod ollama;
mod openai;
mod pricing;
mod providers;
mod ratelimit;
mod router;
mod sigv4;
mod sse;
mod types;
mod upstream;

use std::sync::Arc;

use helix_proto::v1::llm_router_service_server::LlmRouterServiceServer;
use helix_runtime::db::Database;
use helix_runtime::{Error, HelixConfig, ServiceContext};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub use grpc::{LlmApi, OVERHEAD_METADATA};
pub use router::Router;

pub const SERVICE: &str = "llm-router";
pub const GRPC_SERVICE: &str = helix_proto::service_names::LLM_ROUTER;

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// Brings this service's database schema up to date (`hx migrate`).
pub async fn migrate(config: &HelixConfig) -> helix_runtime::Result<()> {
    Database::connect(config, SERVICE).await?.migrate(&SQLITE, &POSTGRES).await
}

/// Builds the router: providers from the configuration, their keys from this process's
/// credentials (the environment, then the vault), the pricing table, the budget in this
/// service's database.
pub async fn open(ctx: &ServiceContext) -> helix_runtime::Result<Arc<Router>> {
    let config = &ctx.config.llm;
    let lookup = providers::lookup(config, &ctx.credentials, |name| std::env::var(name).ok());
    let providers = providers::build(config, &lookup).map_err(Error::Config)?;
    let pricing = match &config.pricing_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
            pricing::Pricing::parse(&text)
        }
        None => pricing::Pricing::parse(pricing::BUILT_IN),
    }
    .map_err(Error::Config)?;
    let db = Database::open(ctx, SERVICE, &SQLITE, &POSTGRES).await?;
    let budget = budget::Budget::new(
        db,
        config.daily_budget_usd,
        config.budget_action == "reject",
        &config.key_budgets,
        &ctx.tasks,
        ctx.shutdown.clone(),
    );
    let router = router::Router::new(config, providers, pricing, budget, ctx.metrics.clone()).map_err(Error::Config)?;
    let router = Arc::new(router);
    router.refresh_rate_limits().await.map_err(|e| Error::Config(format!("llm rate limits: {e}")))?;
    router.budget.refresh_caps().await.map_err(|e| Error::Config(format!("llm key budgets: {e}")))?;
    // what other replicas set through the API reaches this one within a few seconds
    let (refreshed, shutdown) = (router.clone(), ctx.shutdown.clone());
    ctx.tasks.spawn(async move {
        let mut tick = tokio::time::interval(ratelimit::REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let result = async {
                refreshed.refresh_rate_limits().await?;
                refreshed.budget.refresh_caps().await
            };
            if let Err(error) = result.await {
                tracing::warn!(%error, "llm limits could not be refreshed");
            }
        }
    });
    let usable: Vec<&str> =
        router.providers.iter().filter(|p| p.enabled && p.configured).map(|p| p.name.as_str()).collect();
    tracing::info!(providers = ?usable, pricing = %router.pricing.version, "llm router ready");
    Ok(router)
}

/// The llm-router gRPC service, ready to be served.
pub async fn start(ctx: &ServiceContext) -> helix_runtime::Result<LlmRouterServiceServer<LlmApi>> {
    let router = open(ctx).await?;
    Ok(LlmRouterServiceServer::new(LlmApi::new(router)).max_decoding_message_size(32 * 1024 * 1024))
}

/// Runs the llm-router service alone in this process until `shutdown` is cancelled.
pub async fn serve(config: HelixConfig, shutdown: CancellationToken) -> helix_runtime::Result<()> {
    helix_runtime::serve_alone(config, shutdown, GRPC_SERVICE, |ctx| async move {
        Ok(tonic::service::Routes::new(start(&ctx).await?))
    })
    .await
}
