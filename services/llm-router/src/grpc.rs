//! The llm-router's gRPC face: wire messages to the router's calls and back, and
//! nothing else.

use std::sync::Arc;
use std::time::Duration;

use helix_core::{Error, Result};
use helix_proto::v1 as pb;
use helix_proto::v1::llm_router_service_server::LlmRouterService;
use serde_json::Value;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::analytics::{self, Filter, Totals};
use crate::budget::{self, micros_to_usd};
use crate::openai;
use crate::ratelimit::Limit;
use crate::router::{Answer, Call, CallError, Router, StreamItem};
use crate::types::{ChatRequest, Delta, Message, Role, Tool, ToolCall};

/// The response metadata entry (and, at the gateway, header) with the router's own
/// time on a call, in microseconds.
pub const OVERHEAD_METADATA: &str = "x-helix-router-overhead-us";

pub struct LlmApi {
    router: Arc<Router>,
}

impl LlmApi {
    pub fn new(router: Arc<Router>) -> Self {
        Self { router }
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

/// The gRPC metadata entry (and, at the gateway, header) telling a caller refused by a
/// request limit when to come back, in whole seconds.
pub const RETRY_AFTER_METADATA: &str = "retry-after";

impl From<CallError> for Status {
    fn from(error: CallError) -> Self {
        let mut status = Status::from(error.error);
        if let Some(wait) = error.retry_after
            && let Ok(value) = (wait.as_secs_f64().ceil().max(1.0) as u64).to_string().parse()
        {
            status.metadata_mut().insert(RETRY_AFTER_METADATA, value);
        }
        status
    }
}

fn reply<T>(result: Result<T>) -> Reply<T> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl LlmRouterService for LlmApi {
    async fn generate(&self, request: Request<pb::GenerateRequest>) -> Reply<pb::GenerateResponse> {
        let call = call_from_pb(request.into_inner()).map_err(Status::from)?;
        let request_id = call.request_id.clone();
        let answer = self.router.generate(call).await.map_err(Status::from)?;
        let overhead = answer.overhead;
        let mut response = Response::new(answer_to_pb(&answer, &request_id));
        if let Ok(value) = overhead.as_micros().to_string().parse() {
            response.metadata_mut().insert(OVERHEAD_METADATA, value);
        }
        Ok(response)
    }

    async fn generate_stream(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Reply<BoxStream<pb::GenerateStreamEvent>> {
        let call = call_from_pb(request.into_inner()).map_err(Status::from)?;
        let request_id = call.request_id.clone();
        let stream = self.router.stream(call).await.map_err(Status::from)?;
        let overhead = stream.overhead;
        let events =
            futures::stream::unfold((stream, 0u32, request_id), |(mut stream, index, request_id)| async move {
                let item = stream.next().await?;
                let event = match item {
                    Ok(StreamItem::Delta(delta)) => {
                        let first = index == 0;
                        let chunk =
                            chunk_to_pb(delta, index, first.then(|| (stream.provider.clone(), stream.model.clone())));
                        Ok(pb::GenerateStreamEvent { event: Some(pb::generate_stream_event::Event::Chunk(chunk)) })
                    }
                    Ok(StreamItem::Done(answer)) => Ok(pb::GenerateStreamEvent {
                        event: Some(pb::generate_stream_event::Event::Done(answer_to_pb(&answer, &request_id))),
                    }),
                    Err(error) => Err(Status::from(error)),
                };
                Some((event, (stream, index + 1, request_id)))
            });
        let mut response = Response::new(Box::pin(events) as BoxStream<pb::GenerateStreamEvent>);
        if let Ok(value) = overhead.as_micros().to_string().parse() {
            response.metadata_mut().insert(OVERHEAD_METADATA, value);
        }
        Ok(response)
    }

    async fn list_providers(&self, request: Request<pb::ListProvidersRequest>) -> Reply<pb::ListProvidersResponse> {
        let request = request.into_inner();
        let router = &self.router;
        let providers = router
            .providers
            .iter()
            .enumerate()
            .filter(|(_, p)| request.include_unconfigured || p.configured)
            .map(|(i, p)| {
                let health = router.health(i);
                pb::LlmProvider {
                    name: p.name.clone(),
                    display_name: p.display_name.clone(),
                    base_url: p.base_url.clone(),
                    configured: p.configured,
                    enabled: p.enabled,
                    priority: p.priority,
                    default_model: p.default_model.clone(),
                    models: router.pricing.cheapest_of(&p.name).into_iter().map(|(m, _)| m.to_owned()).collect(),
                    health: health.status().to_owned(),
                    circuit_open: health.is_open(),
                    last_error: health.last_error(),
                    rate_limit: Some(rate_limit_to_pb(router.rate.report(i).limit)),
                    requests_remaining: router.rate.report(i).available.unwrap_or(u32::MAX),
                    ..Default::default()
                }
            })
            .collect();
        Ok(Response::new(pb::ListProvidersResponse { providers }))
    }

    async fn list_models(&self, request: Request<pb::ListModelsRequest>) -> Reply<pb::ListModelsResponse> {
        let request = request.into_inner();
        let router = &self.router;
        let mut models: Vec<pb::LlmModel> = router
            .pricing
            .models()
            .filter_map(|price| {
                let (provider, name) = price.id.split_once('/')?;
                let p = router.providers.iter().find(|p| p.name == provider)?;
                let embed = name.contains("embed");
                let capabilities: Vec<String> = if embed {
                    vec!["embed".to_owned()]
                } else {
                    ["chat", "stream", "tools", "json"].map(str::to_owned).to_vec()
                };
                Some(pb::LlmModel {
                    id: price.id.clone(),
                    provider: provider.to_owned(),
                    name: name.to_owned(),
                    context_window: 0,
                    max_output_tokens: price.max_output_tokens,
                    input_cost_per_mtok: price.input_per_mtok(),
                    output_cost_per_mtok: price.output_per_mtok(),
                    capabilities,
                    tier: price.tier.clone(),
                    available: p.enabled && p.configured,
                })
            })
            .filter(|m| request.include_unavailable || m.available)
            .filter(|m| request.provider.as_ref().is_none_or(|p| *p == m.provider))
            .filter(|m| request.capability.as_ref().is_none_or(|c| m.capabilities.contains(c)))
            .collect();
        for (alias, config) in router.aliases() {
            models.push(pb::LlmModel {
                id: alias.clone(),
                provider: "alias".to_owned(),
                name: alias.clone(),
                capabilities: vec![format!("alias:{}", config.policy)],
                available: true,
                ..Default::default()
            });
        }
        models.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Response::new(pb::ListModelsResponse { models }))
    }

    async fn embed(&self, request: Request<pb::EmbedRequest>) -> Reply<pb::EmbedResponse> {
        let (embedded, overhead) = self.embed_inner(request.into_inner()).await.map_err(Status::from)?;
        let mut response = Response::new(embedded);
        if let Ok(value) = overhead.as_micros().to_string().parse() {
            response.metadata_mut().insert(OVERHEAD_METADATA, value);
        }
        Ok(response)
    }

    async fn list_rate_limits(&self, _: Request<pb::ListRateLimitsRequest>) -> Reply<pb::RateLimits> {
        Ok(Response::new(self.rate_limits()))
    }

    async fn set_rate_limit(&self, request: Request<pb::SetRateLimitRequest>) -> Reply<pb::RateLimits> {
        let request = request.into_inner();
        let result = async {
            let limit =
                request.limit.ok_or_else(|| Error::invalid("invalid_rate_limit", "a rate limit needs its limits"))?;
            if limit.tokens_per_minute != 0 {
                return Err(Error::new(
                    helix_core::ErrorKind::Unimplemented,
                    "unimplemented",
                    "tokens_per_minute is not enforced yet; set requests_per_minute, requests_per_hour and burst",
                ));
            }
            if limit.burst > 0 && limit.requests_per_minute == 0 {
                return Err(Error::invalid(
                    "invalid_rate_limit",
                    "burst sizes the per-minute bucket: it needs requests_per_minute",
                ));
            }
            let limit =
                Limit { per_minute: limit.requests_per_minute, per_hour: limit.requests_per_hour, burst: limit.burst };
            self.router.set_rate_limit(&request.provider, limit).await?;
            Ok(self.rate_limits())
        };
        reply(result.await)
    }

    async fn query_usage(&self, request: Request<pb::QueryUsageRequest>) -> Reply<pb::UsageRecords> {
        let r = request.into_inner();
        let result = async {
            if let Some(day) = &r.day
                && chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").is_err()
            {
                return Err(Error::invalid("invalid_day", format!("day {day:?} is not YYYY-MM-DD")));
            }
            let filter = Filter {
                api_key_id: r.api_key_id,
                provider: r.provider,
                model: r.model,
                day: r.day,
                ..Filter::default()
            };
            let db = self.router.budget.db();
            let limit = match r.limit {
                0 => 100,
                n => n.min(1000),
            };
            let totals = analytics::totals(db, &filter).await?;
            let records = analytics::records(db, &filter, limit).await?;
            let n = |v: i64| v.max(0) as u64;
            Ok(pb::UsageRecords {
                records: records
                    .into_iter()
                    .map(|r| pb::UsageRecord {
                        id: r.id,
                        created_at: Some(timestamp_of_micros(r.created_at)),
                        day: r.day,
                        request_id: r.request_id,
                        caller: r.caller,
                        api_key_id: r.api_key_id,
                        provider: r.provider,
                        model: r.model,
                        outcome: r.outcome,
                        kind: r.kind,
                        usage: Some(pb::TokenUsage {
                            prompt_tokens: n(r.prompt_tokens),
                            completion_tokens: n(r.completion_tokens),
                            total_tokens: n(r.prompt_tokens + r.completion_tokens),
                            cost_usd: micros_to_usd(r.cost_micros),
                        }),
                        latency_ms: u32::try_from(r.latency_ms).unwrap_or(u32::MAX),
                        streamed: r.streamed,
                        fell_back: r.fell_back,
                        downgraded: r.downgraded,
                    })
                    .collect(),
                total: Some(usage_pb(&totals)),
                requests: n(totals.requests),
            })
        };
        reply(result.await)
    }

    async fn get_analytics_dashboard(
        &self,
        request: Request<pb::GetAnalyticsDashboardRequest>,
    ) -> Reply<pb::AnalyticsDashboard> {
        let r = request.into_inner();
        let result = async {
            let (start, end) = window(r.range.as_ref(), chrono::Duration::hours(24))?;
            let filter = Filter { start: Some(start), end: Some(end), ..Filter::default() };
            let db = self.router.budget.db();
            let totals = analytics::totals(db, &filter).await?;
            let p95 = analytics::latency_percentile(db, &filter, totals.requests, 0.95).await?;
            let mut by_model: Vec<pb::ModelUsage> = Vec::new();
            for (model, _) in analytics::grouped(db, &filter, "model").await? {
                let provider_filter = Filter { model: Some(model.clone()), ..filter.clone() };
                for (provider, t) in analytics::grouped(db, &provider_filter, "provider").await? {
                    by_model.push(pb::ModelUsage {
                        provider,
                        model: model.clone(),
                        requests: t.requests.max(0) as u64,
                        usage: Some(usage_pb(&t)),
                    });
                }
            }
            by_model.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.model.cmp(&b.model)));
            by_model.truncate(10);
            let router = &self.router;
            let configured: Vec<usize> = (0..router.providers.len())
                .filter(|i| router.providers[*i].configured && router.providers[*i].enabled)
                .collect();
            let healthy = configured.iter().filter(|i| !router.health(**i).is_open()).count();
            let budget = router.budget.status(7).await?;
            Ok(pb::AnalyticsDashboard {
                range: Some(range_pb(start, end)),
                requests: totals.requests.max(0) as u64,
                errors: totals.errors.max(0) as u64,
                error_rate: ratio(totals.errors, totals.requests),
                usage: Some(usage_pb(&totals)),
                mean_latency_ms: totals.mean_latency_ms(),
                p95_latency_ms: p95,
                fallbacks: totals.fallbacks.max(0) as u64,
                downgrades: totals.downgrades.max(0) as u64,
                budget_rejections: totals.refused.max(0) as u64,
                top_models: by_model,
                providers_configured: configured.len() as u32,
                providers_healthy: healthy as u32,
                budget: Some(status_to_pb(budget)),
            })
        };
        reply(result.await)
    }

    async fn get_usage_trends(&self, request: Request<pb::GetUsageTrendsRequest>) -> Reply<pb::UsageTrends> {
        let r = request.into_inner();
        let result = async {
            let (granularity, width) = match r.granularity.as_str() {
                "hour" => ("hour", chrono::Duration::hours(1)),
                "" | "day" => ("day", chrono::Duration::days(1)),
                "week" => ("week", chrono::Duration::weeks(1)),
                other => {
                    return Err(Error::invalid(
                        "invalid_granularity",
                        format!("granularity {other:?} is not hour, day or week"),
                    ));
                }
            };
            let width = width.num_microseconds().unwrap_or(i64::MAX);
            let (start, end) = window(r.range.as_ref(), chrono::Duration::days(7))?;
            let count = (end - start + width - 1) / width;
            if count > 2000 {
                return Err(Error::invalid(
                    "invalid_range",
                    "the range holds more than 2000 buckets: widen granularity",
                ));
            }
            let filter = Filter {
                start: Some(start),
                end: Some(end),
                provider: r.provider,
                model: r.model,
                ..Filter::default()
            };
            let db = self.router.budget.db();
            let found: std::collections::BTreeMap<i64, Totals> =
                analytics::buckets(db, &filter, width).await?.into_iter().collect();
            let buckets = (0..count)
                .map(|i| {
                    let t = found.get(&i).copied().unwrap_or_default();
                    pb::UsageBucket {
                        start: Some(timestamp_of_micros(start + i * width)),
                        requests: t.requests.max(0) as u64,
                        errors: t.errors.max(0) as u64,
                        usage: Some(usage_pb(&t)),
                        mean_latency_ms: t.mean_latency_ms(),
                    }
                })
                .collect();
            let now = analytics::totals(db, &filter).await?;
            let before_filter = Filter { start: Some(start - (end - start)), end: Some(start), ..filter.clone() };
            let before = analytics::totals(db, &before_filter).await?;
            Ok(pb::UsageTrends {
                granularity: granularity.to_owned(),
                range: Some(range_pb(start, end)),
                buckets,
                tokens_change: change(before.tokens(), now.tokens()),
                cost_change: change(before.cost_micros, now.cost_micros),
            })
        };
        reply(result.await)
    }

    async fn get_provider_analytics(
        &self,
        request: Request<pb::GetProviderAnalyticsRequest>,
    ) -> Reply<pb::ProviderAnalytics> {
        let r = request.into_inner();
        let result = async {
            let (start, end) = window(r.range.as_ref(), chrono::Duration::hours(24))?;
            let filter = Filter { start: Some(start), end: Some(end), ..Filter::default() };
            let db = self.router.budget.db();
            let mut providers = Vec::new();
            for (name, t) in analytics::grouped(db, &filter, "provider").await? {
                let one = Filter { provider: Some(name.clone()), ..filter.clone() };
                let p50 = analytics::latency_percentile(db, &one, t.requests, 0.5).await?;
                let p95 = analytics::latency_percentile(db, &one, t.requests, 0.95).await?;
                let last_error =
                    self.router.provider_index(&name).map(|i| self.router.health(i).last_error()).unwrap_or_default();
                providers.push(pb::ProviderPerformance {
                    provider: name,
                    requests: t.requests.max(0) as u64,
                    failures: t.errors.max(0) as u64,
                    // of the calls that went to the provider: the budget's refusals did not
                    success_rate: ratio(t.requests - t.refused - t.errors, t.requests - t.refused),
                    mean_latency_ms: t.mean_latency_ms(),
                    p50_latency_ms: p50,
                    p95_latency_ms: p95,
                    mean_first_token_ms: t.mean_first_token_ms(),
                    usage: Some(usage_pb(&t)),
                    cost_per_1k_tokens: if t.tokens() == 0 {
                        0.0
                    } else {
                        micros_to_usd(t.cost_micros) * 1000.0 / t.tokens() as f64
                    },
                    fallbacks_from: 0,
                    fallbacks_to: t.fallbacks.max(0) as u64,
                    mean_feedback_score: None,
                    last_error,
                    last_used_at: (t.last_at > 0).then(|| timestamp_of_micros(t.last_at)),
                });
            }
            providers.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.provider.cmp(&b.provider)));
            Ok(pb::ProviderAnalytics { range: Some(range_pb(start, end)), providers })
        };
        reply(result.await)
    }

    async fn get_token_usage(&self, request: Request<pb::GetTokenUsageRequest>) -> Reply<pb::TokenUsageBreakdown> {
        let r = request.into_inner();
        let result = async {
            let column = analytics::group_column(&r.group_by)?;
            let (start, end) = window(r.range.as_ref(), chrono::Duration::hours(24))?;
            let filter = Filter { start: Some(start), end: Some(end), provider: r.provider, ..Filter::default() };
            let db = self.router.budget.db();
            let total = analytics::totals(db, &filter).await?;
            let groups = analytics::grouped(db, &filter, column).await?;
            let page = r.page.unwrap_or_default();
            let offset: usize = match page.cursor.as_str() {
                "" => 0,
                cursor => {
                    cursor.parse().map_err(|_| Error::invalid("invalid_cursor", "the cursor is not one we gave"))?
                }
            };
            let limit = match page.limit {
                0 => 100,
                n => n.min(1000) as usize,
            };
            let next = if groups.len() > offset + limit { (offset + limit).to_string() } else { String::new() };
            let rows = groups
                .into_iter()
                .skip(offset)
                .take(limit)
                .map(|(key, t)| pb::TokenUsageRow {
                    key,
                    requests: t.requests.max(0) as u64,
                    usage: Some(usage_pb(&t)),
                    share: ratio(t.tokens(), total.tokens()),
                })
                .collect();
            Ok(pb::TokenUsageBreakdown {
                range: Some(range_pb(start, end)),
                group_by: column.to_owned(),
                rows,
                total: Some(usage_pb(&total)),
                next_cursor: next,
            })
        };
        reply(result.await)
    }

    async fn get_budget(&self, request: Request<pb::GetBudgetRequest>) -> Reply<pb::BudgetStatus> {
        let days = match request.into_inner().history_days {
            0 => 7,
            n => n,
        };
        reply(self.router.budget.status(days).await.map(status_to_pb))
    }

    async fn set_budget(&self, request: Request<pb::SetBudgetRequest>) -> Reply<pb::BudgetStatus> {
        let request = request.into_inner();
        let result = async {
            if let Some(cap) = request.daily_limit_usd
                && !(cap.is_finite() && cap >= 0.0)
            {
                return Err(Error::invalid("invalid_budget", "daily_limit_usd must be a number of at least 0"));
            }
            let reject = match request.action.as_deref() {
                None => None,
                Some("reject") => Some(true),
                Some("downgrade") => Some(false),
                Some(other) => {
                    return Err(Error::invalid(
                        "invalid_action",
                        format!("action {other:?} is not downgrade or reject"),
                    ));
                }
            };
            for key in &request.key_limits {
                if key.api_key_id.is_empty() {
                    return Err(Error::invalid("invalid_key_budget", "every key limit needs api_key_id"));
                }
                if let Some(cap) = key.daily_limit_usd
                    && !(cap.is_finite() && cap >= 0.0)
                {
                    return Err(Error::invalid("invalid_budget", "daily_limit_usd must be a number of at least 0"));
                }
            }
            if !request.provider_limits.is_empty() {
                return Err(Error::new(
                    helix_core::ErrorKind::Unimplemented,
                    "unimplemented",
                    "per-provider caps are not built yet",
                ));
            }
            self.router.budget.set(request.daily_limit_usd, reject).await?;
            for key in &request.key_limits {
                self.router.budget.set_key_cap(&key.api_key_id, key.daily_limit_usd).await?;
            }
            self.router.budget.status(7).await.map(status_to_pb)
        };
        reply(result.await)
    }
}

impl LlmApi {
    async fn embed_inner(&self, r: pb::EmbedRequest) -> std::result::Result<(pb::EmbedResponse, Duration), CallError> {
        let call = Call {
            request_id: if r.request_id.is_empty() { uuid::Uuid::now_v7().to_string() } else { r.request_id },
            caller: r.caller,
            api_key_id: r.api_key_id,
            model: r.model,
            providers: if r.provider.is_empty() { Vec::new() } else { vec![r.provider] },
            ..Call::default()
        };
        let embedded = self.router.embed(call, r.inputs, r.dimensions).await?;
        let dimensions = embedded.vectors.first().map_or(0, |v| v.len() as u32);
        let overhead = embedded.overhead;
        let response = pb::EmbedResponse {
            embeddings: embedded
                .vectors
                .into_iter()
                .enumerate()
                .map(|(i, values)| pb::Embedding { index: i as u32, values })
                .collect(),
            provider: embedded.provider,
            model: embedded.model,
            dimensions,
            usage: Some(pb::TokenUsage {
                prompt_tokens: embedded.usage.prompt_tokens,
                completion_tokens: 0,
                total_tokens: embedded.usage.prompt_tokens,
                cost_usd: micros_to_usd(embedded.cost_micros),
            }),
        };
        Ok((response, overhead))
    }

    fn rate_limits(&self) -> pb::RateLimits {
        let router = &self.router;
        let providers = router
            .providers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let report = router.rate.report(i);
                pb::ProviderRateLimitStatus {
                    provider: p.name.clone(),
                    limit: Some(rate_limit_to_pb(report.limit)),
                    requests_available: report.available,
                    source: report.source.as_str().to_owned(),
                }
            })
            .collect();
        pb::RateLimits { providers }
    }
}

fn rate_limit_to_pb(limit: Limit) -> pb::ProviderRateLimit {
    pb::ProviderRateLimit {
        requests_per_minute: limit.per_minute,
        tokens_per_minute: 0,
        burst: limit.burst,
        requests_per_hour: limit.per_hour,
    }
}

fn micros_of(t: &prost_types::Timestamp) -> i64 {
    t.seconds.saturating_mul(1_000_000).saturating_add(i64::from(t.nanos / 1000))
}

fn timestamp_of_micros(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// A request's window in microseconds: unset bounds take the last `default` up to now.
fn window(range: Option<&pb::TimeRange>, default: chrono::Duration) -> Result<(i64, i64)> {
    let now = chrono::Utc::now().timestamp_micros() + 1;
    let end = range.and_then(|r| r.end.as_ref()).map_or(now, micros_of);
    let start = range.and_then(|r| r.start.as_ref()).map_or(end - default.num_microseconds().unwrap_or(0), micros_of);
    if start >= end {
        return Err(Error::invalid("invalid_range", "the range's start must come before its end"));
    }
    Ok((start, end))
}

fn range_pb(start: i64, end: i64) -> pb::TimeRange {
    pb::TimeRange { start: Some(timestamp_of_micros(start)), end: Some(timestamp_of_micros(end)) }
}

fn usage_pb(t: &Totals) -> pb::TokenUsage {
    let n = |v: i64| v.max(0) as u64;
    pb::TokenUsage {
        prompt_tokens: n(t.prompt_tokens),
        completion_tokens: n(t.completion_tokens),
        total_tokens: n(t.tokens()),
        cost_usd: micros_to_usd(t.cost_micros),
    }
}

fn ratio(part: i64, whole: i64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

/// The change from `before` to `now` as a ratio (0 when there was nothing before).
fn change(before: i64, now: i64) -> f64 {
    if before == 0 { 0.0 } else { (now - before) as f64 / before as f64 }
}

fn status_to_pb(status: budget::Status) -> pb::BudgetStatus {
    let start = chrono::Utc::now().date_naive().and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
    let spent = status.today.spent_micros;
    pb::BudgetStatus {
        day_start: Some(timestamp(start)),
        resets_at: Some(timestamp(start + chrono::Duration::days(1))),
        daily_limit_usd: micros_to_usd(status.cap_micros),
        spent_today_usd: micros_to_usd(spent),
        remaining_usd: micros_to_usd((status.cap_micros - spent - status.today.reserved_micros).max(0)),
        action: if status.reject { "reject" } else { "downgrade" }.to_owned(),
        exceeded: spent >= status.cap_micros,
        providers: status
            .providers
            .into_iter()
            .map(|p| pb::ProviderBudget {
                provider: p.provider,
                daily_limit_usd: None,
                spent_today_usd: micros_to_usd(p.cost_micros),
                requests_today: p.requests.max(0) as u64,
                tokens_today: p.tokens.max(0) as u64,
                exceeded: false,
            })
            .collect(),
        history: status
            .history
            .into_iter()
            .map(|d| pb::DailySpend {
                date: d.day,
                cost_usd: micros_to_usd(d.spent_micros),
                requests: d.requests.max(0) as u64,
            })
            .collect(),
        keys: status
            .keys
            .into_iter()
            .map(|k| pb::KeyBudget {
                exceeded: k.cap_micros.is_some_and(|cap| k.spent_micros >= cap),
                api_key_id: k.api_key_id,
                daily_limit_usd: k.cap_micros.map(micros_to_usd),
                spent_today_usd: micros_to_usd(k.spent_micros),
                requests_today: k.requests.max(0) as u64,
            })
            .collect(),
    }
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

fn invalid(code: &'static str, message: String) -> Error {
    Error::invalid(code, message)
}

/// A JSON array of OpenAI tool calls (`[{"id", "type", "function": {"name", "arguments"}}]`).
fn tool_calls_from_json(text: &str) -> Result<Vec<ToolCall>> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| invalid("invalid_tool_calls", format!("tool_calls: {e}")))?;
    let Value::Array(calls) = value else {
        return Err(invalid("invalid_tool_calls", "tool_calls must be an array".to_owned()));
    };
    calls
        .iter()
        .map(|c| {
            let name = c["function"]["name"].as_str().filter(|n| !n.is_empty());
            let name =
                name.ok_or_else(|| invalid("invalid_tool_calls", "every tool call needs function.name".into()))?;
            let arguments = match &c["function"]["arguments"] {
                Value::String(text) => text.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            Ok(ToolCall { id: c["id"].as_str().unwrap_or_default().to_owned(), name: name.to_owned(), arguments })
        })
        .collect()
}

fn tools_from_json(text: &str) -> Result<Vec<Tool>> {
    let value: Value = serde_json::from_str(text).map_err(|e| invalid("invalid_tools", format!("tools: {e}")))?;
    let Value::Array(tools) = value else {
        return Err(invalid("invalid_tools", "tools must be an array".to_owned()));
    };
    tools
        .iter()
        .map(|t| {
            let function = &t["function"];
            let name = function["name"].as_str().filter(|n| !n.is_empty());
            let name = name.ok_or_else(|| invalid("invalid_tools", "every tool needs function.name".into()))?;
            let parameters = match &function["parameters"] {
                Value::Null => serde_json::json!({"type": "object", "properties": {}}),
                p @ Value::Object(_) => p.clone(),
                _ => {
                    return Err(invalid(
                        "invalid_tools",
                        format!("tool {name}: parameters must be a JSON Schema object"),
                    ));
                }
            };
            Ok(Tool {
                name: name.to_owned(),
                description: function["description"].as_str().map(str::to_owned),
                parameters,
            })
        })
        .collect()
}

fn json_field(code: &'static str, what: &str, text: &str) -> Result<Option<Value>> {
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text).map(Some).map_err(|e| invalid(code, format!("{what}: {e}")))
}

pub fn call_from_pb(r: pb::GenerateRequest) -> Result<Call> {
    let mut messages = Vec::with_capacity(r.messages.len() + 2);
    if !r.system.is_empty() {
        messages.push(Message::text(Role::System, r.system));
    }
    for m in r.messages {
        let role = Role::parse(&m.role).ok_or_else(|| {
            invalid("invalid_role", format!("role {:?} is not system, user, assistant or tool", m.role))
        })?;
        let parts = match json_field("invalid_content", "content parts", &m.content_parts_json)? {
            None => None,
            Some(Value::Array(parts)) => Some(parts),
            Some(_) => return Err(invalid("invalid_content", "content parts must be an array".to_owned())),
        };
        let tool_calls =
            if m.tool_calls_json.is_empty() { Vec::new() } else { tool_calls_from_json(&m.tool_calls_json)? };
        if role == Role::Tool && m.tool_call_id.is_empty() {
            return Err(invalid("invalid_message", "a tool message needs tool_call_id".to_owned()));
        }
        messages.push(Message {
            role,
            content: m.content,
            parts,
            name: Some(m.name).filter(|n| !n.is_empty()),
            tool_call_id: Some(m.tool_call_id).filter(|n| !n.is_empty()),
            tool_calls,
        });
    }
    if !r.prompt.is_empty() {
        messages.push(Message::text(Role::User, r.prompt));
    }
    if messages.iter().all(|m| m.role == Role::System) {
        return Err(invalid("empty_messages", "a call needs at least one user message or a prompt".to_owned()));
    }
    if r.max_tokens == Some(0) {
        return Err(invalid("invalid_max_tokens", "max_tokens must be at least 1".to_owned()));
    }
    if let Some(t) = r.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(invalid("invalid_temperature", "temperature must be within 0..=2".to_owned()));
    }
    if let Some(p) = r.top_p
        && !(0.0..=1.0).contains(&p)
    {
        return Err(invalid("invalid_top_p", "top_p must be within 0..=1".to_owned()));
    }
    if r.timeout_ms == Some(0) {
        return Err(invalid("invalid_timeout", "timeout_ms must be at least 1".to_owned()));
    }
    let max_cost_micros = match r.max_cost_usd {
        Some(usd) if !(usd.is_finite() && usd >= 0.0) => {
            return Err(invalid("invalid_max_cost", "max_cost_usd must be a number of at least 0".to_owned()));
        }
        Some(usd) => Some(budget::usd_to_micros(usd)),
        None => None,
    };
    let tools = if r.tools_json.is_empty() { Vec::new() } else { tools_from_json(&r.tools_json)? };
    Ok(Call {
        request_id: if r.request_id.is_empty() { uuid::Uuid::now_v7().to_string() } else { r.request_id },
        caller: r.caller,
        api_key_id: r.api_key_id,
        chat: ChatRequest {
            messages,
            max_tokens: r.max_tokens,
            temperature: r.temperature,
            top_p: r.top_p,
            stop: r.stop,
            tools,
            tool_choice: json_field("invalid_tool_choice", "tool_choice", &r.tool_choice_json)?,
            response_format: json_field("invalid_response_format", "response_format", &r.response_format_json)?,
        },
        model: r.model,
        providers: r.providers,
        disable_fallback: r.disable_fallback,
        timeout: r.timeout_ms.map(|ms| Duration::from_millis(u64::from(ms))),
        max_cost_micros,
        kind: "chat",
    })
}

fn chunk_to_pb(delta: Delta, index: u32, first: Option<(String, String)>) -> pb::GenerateChunk {
    let (provider, model) = first.unwrap_or_default();
    let mut chunk = pb::GenerateChunk { provider, model, index, ..Default::default() };
    match delta {
        Delta::Text(text) => chunk.delta = text,
        Delta::ToolCall { index, id, name, arguments } => {
            let mut call = serde_json::json!({"index": index, "function": {"arguments": arguments}});
            if let Some(id) = id {
                call["id"] = id.into();
                call["type"] = "function".into();
            }
            if let Some(name) = name {
                call["function"]["name"] = name.into();
            }
            chunk.tool_calls_delta_json = Value::Array(vec![call]).to_string();
        }
        Delta::Finish(_) | Delta::Usage(_) => {}
    }
    chunk
}

fn answer_to_pb(answer: &Answer, request_id: &str) -> pb::GenerateResponse {
    let completion = &answer.completion;
    let usage = &answer.usage;
    let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    pb::GenerateResponse {
        id: format!("gen-{}", uuid::Uuid::now_v7().simple()),
        request_id: request_id.to_owned(),
        content: completion.content.clone(),
        tool_calls_json: if completion.tool_calls.is_empty() {
            String::new()
        } else {
            openai::tool_calls_json(&completion.tool_calls).to_string()
        },
        provider: answer.provider.clone(),
        model: answer.model.clone(),
        finish_reason: completion.finish_reason.as_str().to_owned(),
        usage: Some(pb::TokenUsage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.prompt_tokens + usage.completion_tokens,
            cost_usd: micros_to_usd(answer.cost_micros),
        }),
        latency_ms: ms(answer.latency),
        first_token_ms: answer.first_token.map_or(0, ms),
        routing: Some(pb::RoutingDecision {
            reason: answer.routing.reason.clone(),
            attempts: answer
                .routing
                .attempts
                .iter()
                .map(|a| pb::ProviderAttempt {
                    provider: a.provider.clone(),
                    model: a.model.clone(),
                    outcome: a.outcome.to_owned(),
                    error: a.error.clone(),
                    latency_ms: a.latency_ms,
                })
                .collect(),
            downgraded: answer.routing.downgraded,
            fell_back: answer.routing.fell_back,
        }),
        created_at: Some(timestamp(chrono::Utc::now())),
        router_overhead_us: u32::try_from(answer.overhead.as_micros()).unwrap_or(u32::MAX),
        cached_prompt_tokens: usage.cached_prompt_tokens,
        reasoning_tokens: usage.reasoning_tokens,
    }
}
