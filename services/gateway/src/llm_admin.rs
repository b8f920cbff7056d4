//! The llm-router's operations surface in the house shape: request limits
//! (`/api/v1/rate-limits`), the budget with per-key caps (`/api/v1/llm/budget`), the
//! usage records (`/api/v1/llm/usage`) and the original system's analytics
//! (`/api/analytics/dashboard`, `/trends`, `/providers`, `/token-usage`).

use axum::extract::State;
use helix_core::Error;
use helix_proto::v1 as pb;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, Json, Query};
use crate::llm::{budget_json, rfc3339};

type JsonResult = Result<Json<Value>, ApiError>;

fn usage_json(u: Option<&pb::TokenUsage>) -> Value {
    let u = u.copied().unwrap_or_default();
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens, "cost_usd": u.cost_usd})
}

fn range_json(range: Option<&pb::TimeRange>) -> Value {
    let range = range.cloned().unwrap_or_default();
    json!({"start": rfc3339(range.start), "end": rfc3339(range.end)})
}

fn rate_limits_json(limits: pb::RateLimits) -> Value {
    let providers: Vec<Value> = limits
        .providers
        .into_iter()
        .map(|p| {
            let limit = p.limit.unwrap_or_default();
            json!({"provider": p.provider, "requests_per_minute": limit.requests_per_minute,
                "requests_per_hour": limit.requests_per_hour, "burst": limit.burst,
                "requests_available": p.requests_available, "source": p.source})
        })
        .collect();
    json!({"providers": providers})
}

/// Every provider's request limits (0: none), where they come from and what is left.
#[utoipa::path(get, path = "/api/v1/rate-limits", tag = "llm",
    responses((status = 200, description = "{\"providers\": [{\"provider\", \"requests_per_minute\", \"requests_per_hour\", \"burst\", \"requests_available\", \"source\"}]}")),
    security(("bearer" = [])))]
pub async fn rate_limits(State(state): State<AppState>) -> JsonResult {
    let limits = state.llm().list_rate_limits(pb::ListRateLimitsRequest {}).await?.into_inner();
    Ok(Json(rate_limits_json(limits)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitInput {
    provider: String,
    #[serde(default)]
    requests_per_minute: u32,
    #[serde(default)]
    requests_per_hour: u32,
    #[serde(default)]
    burst: u32,
}

/// Sets one provider's request limits (0: none) for every replica.
#[utoipa::path(put, path = "/api/v1/rate-limits", tag = "llm",
    request_body = RateLimitInput,
    responses((status = 200, description = "every provider's limits, as GET"), (status = 404, description = "no such provider")),
    security(("bearer" = [])))]
pub async fn set_rate_limit(State(state): State<AppState>, Json(input): Json<RateLimitInput>) -> JsonResult {
    let request = pb::SetRateLimitRequest {
        provider: input.provider,
        limit: Some(pb::ProviderRateLimit {
            requests_per_minute: input.requests_per_minute,
            tokens_per_minute: 0,
            burst: input.burst,
            requests_per_hour: input.requests_per_hour,
        }),
    };
    let limits = state.llm().set_rate_limit(request).await?.into_inner();
    Ok(Json(rate_limits_json(limits)))
}

/// Today's spend against the daily cap, by provider and by API key with a cap.
#[utoipa::path(get, path = "/api/v1/llm/budget", tag = "llm",
    responses((status = 200, description = "as /api/budget, with \"keys\"")), security(("bearer" = [])))]
pub async fn get_budget(State(state): State<AppState>) -> JsonResult {
    let budget = state.llm().get_budget(pb::GetBudgetRequest { history_days: 7 }).await?.into_inner();
    Ok(Json(budget_json(budget)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetInput {
    daily_limit_usd: Option<f64>,
    action: Option<String>,
    #[serde(default)]
    keys: Vec<KeyBudgetInput>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyBudgetInput {
    api_key_id: String,
    /// null or absent removes the key's cap
    daily_limit_usd: Option<f64>,
}

/// Changes the daily cap, the action on excess, and API keys' own daily caps.
#[utoipa::path(put, path = "/api/v1/llm/budget", tag = "llm",
    request_body = BudgetInput,
    responses((status = 200, description = "the budget, as GET")), security(("bearer" = [])))]
pub async fn set_budget(State(state): State<AppState>, Json(input): Json<BudgetInput>) -> JsonResult {
    let request = pb::SetBudgetRequest {
        daily_limit_usd: input.daily_limit_usd,
        action: input.action,
        provider_limits: Vec::new(),
        key_limits: input
            .keys
            .into_iter()
            .map(|k| pb::KeyBudget {
                api_key_id: k.api_key_id,
                daily_limit_usd: k.daily_limit_usd,
                ..Default::default()
            })
            .collect(),
    };
    let budget = state.llm().set_budget(request).await?.into_inner();
    Ok(Json(budget_json(budget)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// an API key id
    key: Option<String>,
    provider: Option<String>,
    model: Option<String>,
    /// YYYY-MM-DD (UTC)
    day: Option<String>,
    limit: Option<u32>,
}

/// The usage records, newest first, filtered by key, provider, model and day, with
/// the totals of every record that matches.
#[utoipa::path(get, path = "/api/v1/llm/usage", tag = "llm",
    params(UsageParams),
    responses((status = 200, description = "{\"records\": [...], \"total\", \"requests\"}")), security(("bearer" = [])))]
pub async fn usage(State(state): State<AppState>, Query(params): Query<UsageParams>) -> JsonResult {
    let request = pb::QueryUsageRequest {
        api_key_id: params.key,
        provider: params.provider,
        model: params.model,
        day: params.day,
        limit: crate::nodes::page_limit(params.limit)?,
    };
    let found = state.llm().query_usage(request).await?.into_inner();
    let records: Vec<Value> = found
        .records
        .iter()
        .map(|r| {
            json!({"id": r.id, "created_at": rfc3339(r.created_at), "day": r.day, "request_id": r.request_id,
                "caller": r.caller, "api_key_id": r.api_key_id, "provider": r.provider, "model": r.model,
                "outcome": r.outcome, "kind": r.kind, "usage": usage_json(r.usage.as_ref()),
                "latency_ms": r.latency_ms, "streamed": r.streamed, "fell_back": r.fell_back,
                "downgraded": r.downgraded})
        })
        .collect();
    Ok(Json(json!({"records": records, "total": usage_json(found.total.as_ref()), "requests": found.requests})))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AnalyticsParams {
    /// RFC 3339; unset: the route's default window before `end`
    start: Option<String>,
    /// RFC 3339; unset: now
    end: Option<String>,
    granularity: Option<String>,
    provider: Option<String>,
    model: Option<String>,
    group_by: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

fn time_range(params: &AnalyticsParams) -> Result<Option<pb::TimeRange>, Error> {
    let parse = |name: &str, value: &Option<String>| -> Result<Option<helix_proto::Timestamp>, Error> {
        let Some(text) = value else { return Ok(None) };
        let t = chrono::DateTime::parse_from_rfc3339(text)
            .map_err(|e| Error::invalid("invalid_time", format!("{name} {text:?} is not an RFC 3339 time: {e}")))?;
        Ok(Some(helix_proto::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }))
    };
    let (start, end) = (parse("start", &params.start)?, parse("end", &params.end)?);
    Ok((start.is_some() || end.is_some()).then_some(pb::TimeRange { start, end }))
}

/// Requests, errors, tokens, cost, latency, fallbacks and the most used models of a
/// window (default: the last 24 hours), with the budget.
#[utoipa::path(get, path = "/api/analytics/dashboard", tag = "llm",
    params(AnalyticsParams),
    responses((status = 200, description = "the dashboard")), security(("bearer" = [])))]
pub async fn dashboard(State(state): State<AppState>, Query(params): Query<AnalyticsParams>) -> JsonResult {
    let range = time_range(&params)?;
    let d = state.llm().get_analytics_dashboard(pb::GetAnalyticsDashboardRequest { range }).await?.into_inner();
    let top: Vec<Value> = d
        .top_models
        .iter()
        .map(|m| json!({"provider": m.provider, "model": m.model, "requests": m.requests, "usage": usage_json(m.usage.as_ref())}))
        .collect();
    Ok(Json(json!({
        "range": range_json(d.range.as_ref()), "requests": d.requests, "errors": d.errors,
        "error_rate": d.error_rate, "usage": usage_json(d.usage.as_ref()), "mean_latency_ms": d.mean_latency_ms,
        "p95_latency_ms": d.p95_latency_ms, "fallbacks": d.fallbacks, "downgrades": d.downgrades,
        "budget_rejections": d.budget_rejections,
        "top_models": top, "providers_configured": d.providers_configured,
        "providers_healthy": d.providers_healthy, "budget": d.budget.map(budget_json),
    })))
}

/// Token usage and activity per hour, day or week (default: day over the last 7 days),
/// every bucket present, and the change against the window before.
#[utoipa::path(get, path = "/api/analytics/trends", tag = "llm",
    params(AnalyticsParams),
    responses((status = 200, description = "{\"granularity\", \"range\", \"buckets\", \"tokens_change\", \"cost_change\"}")),
    security(("bearer" = [])))]
pub async fn trends(State(state): State<AppState>, Query(params): Query<AnalyticsParams>) -> JsonResult {
    let request = pb::GetUsageTrendsRequest {
        range: time_range(&params)?,
        granularity: params.granularity.unwrap_or_default(),
        provider: params.provider,
        model: params.model,
    };
    let t = state.llm().get_usage_trends(request).await?.into_inner();
    let buckets: Vec<Value> = t
        .buckets
        .iter()
        .map(|b| {
            json!({"start": rfc3339(b.start), "requests": b.requests, "errors": b.errors,
                "usage": usage_json(b.usage.as_ref()), "mean_latency_ms": b.mean_latency_ms})
        })
        .collect();
    Ok(Json(json!({"granularity": t.granularity, "range": range_json(t.range.as_ref()), "buckets": buckets,
        "tokens_change": t.tokens_change, "cost_change": t.cost_change})))
}

/// Each provider's requests, success rate, latency percentiles, tokens and cost over a
/// window (default: the last 24 hours).
#[utoipa::path(get, path = "/api/analytics/providers", tag = "llm",
    params(AnalyticsParams),
    responses((status = 200, description = "{\"range\", \"providers\": [...]}")), security(("bearer" = [])))]
pub async fn providers(State(state): State<AppState>, Query(params): Query<AnalyticsParams>) -> JsonResult {
    let range = time_range(&params)?;
    let p = state.llm().get_provider_analytics(pb::GetProviderAnalyticsRequest { range }).await?.into_inner();
    let providers: Vec<Value> = p
        .providers
        .iter()
        .map(|p| {
            json!({"provider": p.provider, "requests": p.requests, "failures": p.failures,
                "success_rate": p.success_rate, "mean_latency_ms": p.mean_latency_ms,
                "p50_latency_ms": p.p50_latency_ms, "p95_latency_ms": p.p95_latency_ms,
                "mean_first_token_ms": p.mean_first_token_ms, "usage": usage_json(p.usage.as_ref()),
                "cost_per_1k_tokens": p.cost_per_1k_tokens, "fallbacks_to": p.fallbacks_to,
                "last_error": p.last_error, "last_used_at": rfc3339(p.last_used_at)})
        })
        .collect();
    Ok(Json(json!({"range": range_json(p.range.as_ref()), "providers": providers})))
}

/// Tokens and cost grouped by provider, model (default), caller, key, kind or day, most
/// tokens first, each with its share of the window's tokens.
#[utoipa::path(get, path = "/api/analytics/token-usage", tag = "llm",
    params(AnalyticsParams),
    responses((status = 200, description = "{\"range\", \"group_by\", \"rows\", \"total\", \"next_cursor\"}")),
    security(("bearer" = [])))]
pub async fn token_usage(State(state): State<AppState>, Query(params): Query<AnalyticsParams>) -> JsonResult {
    let request = pb::GetTokenUsageRequest {
        range: time_range(&params)?,
        group_by: params.group_by.unwrap_or_default(),
        provider: params.provider,
        page: Some(pb::PageRequest {
            limit: crate::nodes::page_limit(params.limit)?,
            cursor: params.cursor.unwrap_or_default(),
        }),
    };
    let t = state.llm().get_token_usage(request).await?.into_inner();
    let rows: Vec<Value> = t
        .rows
        .iter()
        .map(|r| json!({"key": r.key, "requests": r.requests, "usage": usage_json(r.usage.as_ref()), "share": r.share}))
        .collect();
    Ok(Json(json!({"range": range_json(t.range.as_ref()), "group_by": t.group_by, "rows": rows,
        "total": usage_json(t.total.as_ref()),
        "next_cursor": (!t.next_cursor.is_empty()).then_some(t.next_cursor)})))
}
