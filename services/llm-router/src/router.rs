//! Routing: which providers a call goes to and in what order, admission against the
//! budget, retries, fallbacks and the circuit breakers — for whole answers and streams.
//!
//! A call's targets come from its model name: `provider/model` pins one; an alias
//! from the configuration lists several under a policy; a bare model name goes to the
//! providers that price it (the call's `providers` first); no name takes
//! `llm.default_model`, else every usable provider by priority with its default model.
//! Each target is tried with retries (429, 5xx, timeouts, refused connections; full
//! jitter backoff, Retry-After honoured when it fits the deadline), then the next target.
//! A 400-class answer is the caller's error and ends the call. A stream counts as
//! answered once its first content arrives; a failure before that falls back like a
//! whole answer, one after it ends the stream with an error the client sees.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use helix_core::{Error, ErrorKind, Result};
use helix_runtime::config::{LlmAlias, LlmConfig};
use helix_runtime::metrics::{LlmCallLabels, LlmOverheadLabels, Metrics};
use rand::Rng;

use crate::breaker::{Admit, Health};
use crate::budget::{self, Budget, Reservation, UsageRecord};
use crate::pricing::{Price, Pricing};
use crate::providers::Provider;
use crate::ratelimit::{Limit, RateLimiter};
use crate::types::{ChatRequest, Completion, Delta, FinishReason, ToolCall, UpstreamError, Usage};
use crate::upstream::{Upstream, UpstreamStream};

struct Limits {
    attempt_timeout: Duration,
    deadline: Duration,
    idle: Duration,
    max_retries: u32,
    retry_base: Duration,
    retry_max: Duration,
}

pub struct Router {
    pub providers: Vec<Provider>,
    index: BTreeMap<String, usize>,
    health: Vec<Health>,
    upstream: Upstream,
    limits: Limits,
    default_model: Option<String>,
    aliases: BTreeMap<String, LlmAlias>,
    pub pricing: Pricing,
    unpriced_downgrade: bool,
    pub budget: Arc<Budget>,
    /// per-provider request limits, by provider index
    pub rate: RateLimiter,
    embedding_model: String,
    metrics: Arc<Metrics>,
}

/// A call's failure, and for a call refused by the request limits the wait after
/// which one may pass (the answer's `Retry-After`).
#[derive(Debug)]
pub struct CallError {
    pub error: Error,
    pub retry_after: Option<Duration>,
}

impl From<Error> for CallError {
    fn from(error: Error) -> Self {
        Self { error, retry_after: None }
    }
}

pub type CallResult<T> = std::result::Result<T, CallError>;

/// Embeddings and how they were reached.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub provider: String,
    pub model: String,
    pub usage: Usage,
    pub cost_micros: i64,
    pub overhead: Duration,
}

/// One call as the router takes it.
#[derive(Debug, Clone, Default)]
pub struct Call {
    pub request_id: String,
    pub caller: String,
    /// the API key the gateway authenticated; its daily cap applies too
    pub api_key_id: String,
    pub chat: ChatRequest,
    pub model: String,
    /// providers to try first for a bare model name
    pub providers: Vec<String>,
    pub disable_fallback: bool,
    pub timeout: Option<Duration>,
    /// above this worst-case cost the budget action applies
    pub max_cost_micros: Option<i64>,
    /// chat (the default when empty) or embed, for the usage records
    pub kind: &'static str,
}

impl Call {
    fn kind(&self) -> &'static str {
        if self.kind.is_empty() { "chat" } else { self.kind }
    }
}

#[derive(Debug, Clone)]
struct Target {
    provider: usize,
    model: String,
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub provider: String,
    pub model: String,
    /// ok, error, timeout, rate_limited, budget, skipped
    pub outcome: &'static str,
    pub error: String,
    pub latency_ms: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Routing {
    pub reason: String,
    pub attempts: Vec<Attempt>,
    pub downgraded: bool,
    pub fell_back: bool,
}

/// A whole answer and how it was reached.
#[derive(Debug, Clone)]
pub struct Answer {
    pub completion: Completion,
    pub provider: String,
    pub model: String,
    pub routing: Routing,
    pub usage: Usage,
    pub cost_micros: i64,
    pub latency: Duration,
    pub first_token: Option<Duration>,
    /// the router's own time, upstream waits and backoff sleeps excluded
    pub overhead: Duration,
}

/// Where a call stands while it is routed.
struct Progress {
    started: Instant,
    deadline: Instant,
    upstream: Duration,
    waited: Duration,
    routing: Routing,
}

impl Progress {
    fn overhead(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.upstream + self.waited)
    }
}

/// A target admitted by the budget.
struct Admitted {
    target: Target,
    price: Price,
    reservation: Option<Reservation>,
}

impl Router {
    pub fn new(
        config: &LlmConfig,
        providers: Vec<Provider>,
        pricing: Pricing,
        budget: Arc<Budget>,
        metrics: Arc<Metrics>,
    ) -> std::result::Result<Self, String> {
        let index = crate::providers::by_name(&providers);
        for (name, alias) in &config.aliases {
            if alias.targets.is_empty() {
                return Err(format!("llm.aliases.{name}: targets must not be empty"));
            }
            if !matches!(alias.policy.as_str(), "fallback" | "weighted" | "cheapest" | "latency") {
                return Err(format!("llm.aliases.{name}.policy must be fallback, weighted, cheapest or latency"));
            }
            if alias.policy == "weighted" && alias.weights.len() != alias.targets.len() {
                return Err(format!("llm.aliases.{name}: weighted needs one weight per target"));
            }
            for target in &alias.targets {
                match target.split_once('/') {
                    Some((provider, model)) if index.contains_key(provider) && !model.is_empty() => {}
                    _ => return Err(format!("llm.aliases.{name}: {target:?} is not <known provider>/<model>")),
                }
            }
        }
        let breaker =
            |_: &Provider| Health::new(config.breaker_failures, Duration::from_millis(config.breaker_cooldown_ms));
        let limits = providers
            .iter()
            .map(|p| {
                let c = config.providers.get(&p.name);
                let get = |f: fn(&helix_runtime::config::LlmProviderConfig) -> Option<u32>| c.and_then(f).unwrap_or(0);
                Limit {
                    per_minute: get(|c| c.requests_per_minute),
                    per_hour: get(|c| c.requests_per_hour),
                    burst: get(|c| c.burst),
                }
            })
            .collect();
        Ok(Self {
            rate: RateLimiter::new(limits),
            embedding_model: config.embedding_model.clone(),
            health: providers.iter().map(breaker).collect(),
            providers,
            index,
            upstream: Upstream::new()?,
            limits: Limits {
                attempt_timeout: Duration::from_millis(config.attempt_timeout_ms),
                deadline: Duration::from_millis(config.deadline_ms),
                idle: Duration::from_millis(config.stream_idle_timeout_ms),
                max_retries: config.max_retries,
                retry_base: Duration::from_millis(config.retry_base_ms.max(1)),
                retry_max: Duration::from_millis(config.retry_max_ms.max(1)),
            },
            default_model: config.default_model.clone(),
            aliases: config.aliases.clone(),
            pricing,
            unpriced_downgrade: config.unpriced_action == "downgrade",
            budget,
            metrics,
        })
    }

    pub fn health(&self, provider: usize) -> &Health {
        &self.health[provider]
    }

    pub fn aliases(&self) -> &BTreeMap<String, LlmAlias> {
        &self.aliases
    }

    pub fn provider_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Takes the request limits set through the API (by any replica) into this one.
    pub async fn refresh_rate_limits(&self) -> Result<()> {
        let set: BTreeMap<String, Limit> = crate::ratelimit::load(self.budget.db()).await?.into_iter().collect();
        for (i, provider) in self.providers.iter().enumerate() {
            self.rate.set(i, set.get(&provider.name).copied());
        }
        Ok(())
    }

    /// Changes a provider's request limits for every replica.
    pub async fn set_rate_limit(&self, provider: &str, limit: Limit) -> Result<()> {
        let Some(i) = self.provider_index(provider) else {
            return Err(Error::not_found("provider", provider));
        };
        crate::ratelimit::save(self.budget.db(), provider, limit).await?;
        self.rate.set(i, Some(limit));
        Ok(())
    }

    fn usable(&self, i: usize) -> bool {
        let p = &self.providers[i];
        p.enabled && p.configured
    }

    fn by_priority(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.providers.len()).filter(|i| self.usable(*i)).collect();
        order.sort_by_key(|i| self.providers[*i].priority);
        order
    }

    fn resolve(&self, call: &Call) -> Result<(Vec<Target>, String)> {
        let named = call.model.trim();
        let model = match named {
            "" | "auto" => self.default_model.as_deref().unwrap_or(""),
            other => other,
        };
        if let Some(alias) = self.aliases.get(model) {
            return Ok((self.alias_targets(alias), format!("alias {model:?}, policy {}", alias.policy)));
        }
        if let Some((provider, name)) = model.split_once('/')
            && let Some(&i) = self.index.get(provider)
        {
            if name.is_empty() {
                return Err(Error::invalid(
                    "invalid_model",
                    format!("model {model:?} names no model after the provider"),
                ));
            }
            return Ok((vec![Target { provider: i, model: name.to_owned() }], format!("{model} was named")));
        }
        let preferred: Vec<usize> = call.providers.iter().filter_map(|name| self.index.get(name).copied()).collect();
        if let Some(unknown) = call.providers.iter().find(|name| !self.index.contains_key(*name)) {
            return Err(Error::invalid("unknown_provider", format!("no provider is named {unknown:?}")));
        }
        if model.is_empty() {
            let mut order = preferred;
            for i in self.by_priority() {
                if !order.contains(&i) {
                    order.push(i);
                }
            }
            let targets = order
                .into_iter()
                .filter(|i| !self.providers[*i].default_model.is_empty())
                .map(|i| Target { provider: i, model: self.providers[i].default_model.clone() })
                .collect();
            return Ok((targets, "no model named: providers by priority with their default models".to_owned()));
        }
        let mut order = preferred;
        for provider in self.pricing.providers_of(model) {
            if let Some(&i) = self.index.get(provider)
                && !order.contains(&i)
            {
                order.push(i);
            }
        }
        let reason = if order.is_empty() {
            order.extend(self.by_priority().first());
            format!("{model:?} is priced by no provider: the first by priority")
        } else {
            format!("{model:?} from the providers that serve it")
        };
        Ok((order.into_iter().map(|i| Target { provider: i, model: model.to_owned() }).collect(), reason))
    }

    fn alias_targets(&self, alias: &LlmAlias) -> Vec<Target> {
        let mut targets: Vec<Target> = alias
            .targets
            .iter()
            .filter_map(|t| {
                let (provider, model) = t.split_once('/')?;
                Some(Target { provider: *self.index.get(provider)?, model: model.to_owned() })
            })
            .collect();
        match alias.policy.as_str() {
            "weighted" => {
                let total: u64 = alias.weights.iter().map(|w| u64::from(*w)).sum();
                if total > 0 {
                    let mut pick = rand::rng().random_range(0..total);
                    let first = alias
                        .weights
                        .iter()
                        .position(|w| {
                            let w = u64::from(*w);
                            if pick < w {
                                true
                            } else {
                                pick -= w;
                                false
                            }
                        })
                        .unwrap_or(0);
                    let chosen = targets.remove(first);
                    targets.insert(0, chosen);
                }
            }
            "cheapest" => targets.sort_by_key(|t| {
                let price = self.pricing.get(&self.providers[t.provider].name, &t.model);
                price.map_or(u64::MAX, |p| p.input + p.output)
            }),
            "latency" => targets.sort_by(|a, b| {
                // never measured goes first, so that it gets measured
                let latency = |t: &Target| self.health[t.provider].latency_ms().unwrap_or(-1.0);
                latency(a).total_cmp(&latency(b))
            }),
            _ => {}
        }
        targets
    }

    /// Reserves the target's worst-case cost; downgrades or refuses as configured.
    async fn admit(&self, call: &Call, target: Target, progress: &mut Progress) -> Result<Admitted> {
        let provider = &self.providers[target.provider];
        let (target, price) = match self.pricing.get(&provider.name, &target.model) {
            Some(price) => (target, price.clone()),
            None if self.unpriced_downgrade => match self.pricing.cheapest_of(&provider.name).first() {
                Some((model, price)) => {
                    progress.routing.downgraded = true;
                    (Target { provider: target.provider, model: (*model).to_owned() }, (*price).clone())
                }
                None => return Err(unpriced(&provider.name, &target.model)),
            },
            None => return Err(unpriced(&provider.name, &target.model)),
        };
        let prompt = call.chat.prompt_token_estimate();
        let fits = |price: &Price| {
            let worst = price.worst_case_micros(prompt, call.chat.max_tokens);
            (call.max_cost_micros.is_none_or(|max| worst <= max)).then_some(worst)
        };
        let key = Some(call.api_key_id.as_str());
        // None: no budget refused a reservation, the call's own cap (max_cost_usd) did
        let mut refusal = None;
        if let Some(worst) = fits(&price) {
            match self.budget.reserve(worst, key).await? {
                Ok(reservation) => return Ok(Admitted { target, price, reservation: Some(reservation) }),
                Err(why) => refusal = Some(why),
            }
        }
        let refuse = |refusal: Option<budget::Refusal>, what: &str| {
            let whose = match refusal {
                Some(budget::Refusal::Global) => "the daily LLM budget",
                Some(budget::Refusal::Key) => "this API key's daily LLM budget",
                None => "the call's cost cap (max_cost_usd)",
            };
            budget::exceeded(format!(
                "{whose} cannot cover this call ({}/{}{what}); nothing was sent to the provider",
                provider.name, target.model
            ))
        };
        if self.budget.rejects() {
            self.refused(call, &provider.name, &target.model);
            return Err(refuse(refusal, ""));
        }
        // the dearest model that still fits: a downgrade gives up as little as it can
        let current = price.input + price.output;
        let cheaper = self.pricing.cheapest_of(&provider.name);
        for (model, cheaper) in cheaper.into_iter().filter(|(_, p)| p.input + p.output < current).rev() {
            let Some(worst) = fits(cheaper) else { continue };
            let reservation = match self.budget.reserve(worst, key).await? {
                Ok(reservation) => reservation,
                Err(why) => {
                    refusal = Some(why);
                    continue;
                }
            };
            {
                self.count_budget("downgrade");
                progress.routing.downgraded = true;
                let target = Target { provider: target.provider, model: model.to_owned() };
                return Ok(Admitted { target, price: cheaper.clone(), reservation: Some(reservation) });
            }
        }
        self.refused(call, &provider.name, &target.model);
        Err(refuse(refusal, ", nor any cheaper model of it"))
    }

    /// Counts and records (outcome `budget`, nothing spent) a call the budget refused.
    fn refused(&self, call: &Call, provider: &str, model: &str) {
        self.count_budget("reject");
        let record = UsageRecord {
            request_id: call.request_id.clone(),
            caller: call.caller.clone(),
            api_key_id: call.api_key_id.clone(),
            kind: call.kind(),
            provider: provider.to_owned(),
            model: model.to_owned(),
            outcome: "budget".to_owned(),
            usage: Usage::default(),
            cost_micros: 0,
            latency_ms: 0,
            first_token_ms: 0,
            streamed: false,
            fell_back: false,
            downgraded: false,
        };
        self.budget.settle_later(None, record);
    }

    fn count_budget(&self, action: &str) {
        self.metrics.llm_budget_actions.get_or_create(&LlmOverheadLabels { call: action.to_owned() }).inc();
    }

    fn count_attempt(&self, provider: &str, outcome: &str) {
        let labels = LlmCallLabels { provider: provider.to_owned(), outcome: outcome.to_owned() };
        self.metrics.llm_attempts.get_or_create(&labels).inc();
    }

    fn backoff(&self, retry: u32, error: &UpstreamError) -> Duration {
        if let Some(after) = error.retry_after {
            return after;
        }
        let cap = self.limits.retry_base.saturating_mul(1u32 << retry.min(16)).min(self.limits.retry_max);
        cap.mul_f64(rand::rng().random_range(0.0..=1.0))
    }

    /// Tries the targets in order, each with retries, until `attempt` succeeds.
    async fn route<'a, T, F, Fut>(&'a self, call: &Call, mut attempt: F) -> CallResult<(T, Admitted, Progress)>
    where
        F: FnMut(&'a Provider, String) -> Fut,
        Fut: Future<Output = std::result::Result<T, UpstreamError>>,
    {
        let started = Instant::now();
        let deadline = started + call.timeout.unwrap_or(self.limits.deadline).min(self.limits.deadline);
        let mut progress = Progress {
            started,
            deadline,
            upstream: Duration::ZERO,
            waited: Duration::ZERO,
            routing: Routing::default(),
        };
        let (targets, reason) = self.resolve(call)?;
        progress.routing.reason = reason;
        let mut last_error: Option<Error> = None;
        // the shortest wait until a provider's request limit lets a request through
        let mut limited: Option<Duration> = None;
        for (n, target) in targets.into_iter().enumerate() {
            if n > 0 && call.disable_fallback {
                break;
            }
            let provider = &self.providers[target.provider];
            let target_model = target.model.clone();
            let skip = |progress: &mut Progress, why: &str| {
                progress.routing.attempts.push(Attempt {
                    provider: provider.name.clone(),
                    model: target_model.clone(),
                    outcome: "skipped",
                    error: why.to_owned(),
                    latency_ms: 0,
                });
            };
            if !provider.enabled {
                skip(&mut progress, "disabled");
                continue;
            }
            if !provider.configured {
                skip(&mut progress, "no API key configured");
                continue;
            }
            if self.health[target.provider].is_open() {
                self.count_attempt(&provider.name, "circuit_open");
                skip(&mut progress, "circuit open");
                continue;
            }
            let admitted = self.admit(call, target, &mut progress).await?;
            let health = &self.health[admitted.target.provider];
            let model = admitted.target.model.clone();
            let mut retry = 0;
            let failure = loop {
                let now = Instant::now();
                if now >= progress.deadline {
                    break Error::new(ErrorKind::Timeout, "deadline_exceeded", "the call's deadline passed");
                }
                if health.admit() == Admit::No {
                    self.count_attempt(&provider.name, "circuit_open");
                    skip(&mut progress, "circuit open");
                    break Error::unavailable(format!("{}: circuit open", provider.name));
                }
                if let Err(wait) = self.rate.take(admitted.target.provider) {
                    self.count_attempt(&provider.name, "rate_limited_here");
                    let error = format!(
                        "over {}'s request limit: the next request may go in {} ms",
                        provider.name,
                        wait.as_millis()
                    );
                    progress.routing.attempts.push(Attempt {
                        provider: provider.name.clone(),
                        model: model.clone(),
                        outcome: "rate_limited",
                        error: error.clone(),
                        latency_ms: 0,
                    });
                    limited = Some(limited.map_or(wait, |w| w.min(wait)));
                    break Error::new(ErrorKind::RateLimited, "rate_limited", error);
                }
                let timeout = self.limits.attempt_timeout.min(progress.deadline - now);
                let result = match tokio::time::timeout(timeout, attempt(provider, model.clone())).await {
                    Ok(result) => result,
                    Err(_) => Err(UpstreamError::new(
                        crate::types::FailureKind::Timeout,
                        format!("no answer within {} ms", timeout.as_millis()),
                    )),
                };
                let took = now.elapsed();
                progress.upstream += took;
                let outcome = result.as_ref().map_or_else(UpstreamError::outcome, |_| "ok");
                self.count_attempt(&provider.name, outcome);
                progress.routing.attempts.push(Attempt {
                    provider: provider.name.clone(),
                    model: model.clone(),
                    outcome,
                    error: result.as_ref().err().map(ToString::to_string).unwrap_or_default(),
                    latency_ms: u32::try_from(took.as_millis()).unwrap_or(u32::MAX),
                });
                let error = match result {
                    Ok(value) => {
                        health.success(took);
                        progress.routing.fell_back = n > 0;
                        return Ok((value, admitted, progress));
                    }
                    Err(error) => error,
                };
                if error.is_health_failure() {
                    health.failure(&error.to_string());
                } else {
                    health.neutral(Some(&error.to_string()));
                }
                if error.kind == crate::types::FailureKind::BadRequest {
                    if let Some(reservation) = admitted.reservation {
                        self.budget.release_later(reservation);
                    }
                    return Err(Error::invalid(
                        "provider_rejected_request",
                        format!("{} refused the request: {}", provider.name, error.message),
                    )
                    .into());
                }
                if error.retryable() && retry < self.limits.max_retries {
                    let wait = self.backoff(retry, &error);
                    if Instant::now() + wait < progress.deadline {
                        tokio::time::sleep(wait).await;
                        progress.waited += wait;
                        retry += 1;
                        continue;
                    }
                }
                break Error::unavailable(format!("{}: {error}", provider.name));
            };
            if let Some(reservation) = admitted.reservation {
                self.budget.release_later(reservation);
            }
            last_error = Some(failure);
        }
        let tried: Vec<String> = progress
            .routing
            .attempts
            .iter()
            .map(|a| format!("{}/{}: {} {}", a.provider, a.model, a.outcome, a.error).trim_end().to_owned())
            .collect();
        let message = if tried.is_empty() {
            "no provider is configured for this model: set a provider's API key (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...)"
                .to_owned()
        } else {
            format!("no provider could answer: {}", tried.join("; "))
        };
        let kind = match last_error.map(|e| e.kind()) {
            Some(ErrorKind::RateLimited) => {
                // the last provider was held back by its request limit: the caller may come back
                let wait = limited.unwrap_or(Duration::from_secs(1));
                let message = format!("{message} (retry after {} s)", wait.as_secs_f64().ceil());
                return Err(CallError {
                    error: Error::new(ErrorKind::RateLimited, "rate_limited", message),
                    retry_after: Some(wait),
                });
            }
            Some(ErrorKind::Timeout) => ErrorKind::Timeout,
            _ => ErrorKind::Unavailable,
        };
        Err(Error::new(kind, "no_provider_available", message).into())
    }

    /// A whole answer.
    pub async fn generate(&self, call: Call) -> CallResult<Answer> {
        let upstream = &self.upstream;
        let chat = &call.chat;
        let (completion, mut admitted, progress) =
            self.route(&call, |provider, model| async move { upstream.complete(provider, &model, chat).await }).await?;
        let usage = completion.usage.unwrap_or_default();
        // no usage reported: the reservation is charged, never nothing
        let cost = match completion.usage {
            Some(usage) => admitted.price.cost_micros(&usage),
            None => admitted.reservation.as_ref().map_or(0, |r| r.micros),
        };
        let (provider, overhead) = self.settle_whole(&call, "generate", &mut admitted, &progress, usage, cost);
        let latency = progress.started.elapsed();
        Ok(Answer {
            completion,
            provider,
            model: admitted.target.model,
            routing: progress.routing,
            usage,
            cost_micros: cost,
            latency,
            first_token: None,
            overhead,
        })
    }

    /// A stream, returned once its first content arrived (after fallbacks if need be).
    pub async fn stream(self: &Arc<Self>, call: Call) -> CallResult<ChatStream> {
        let upstream = &self.upstream;
        let chat = &call.chat;
        let idle = self.limits.idle;
        let opened = self
            .route(&call, |provider, model| async move {
                let mut stream = upstream.open_stream(provider, &model, chat, idle).await?;
                let mut buffered = VecDeque::new();
                // up to the first content: a failure before it may still fall back
                loop {
                    match stream.next().await {
                        Some(Ok(delta)) => {
                            let content = delta.is_content();
                            buffered.push_back(delta);
                            if content {
                                break;
                            }
                        }
                        Some(Err(error)) => return Err(error),
                        None => break,
                    }
                }
                Ok((stream, buffered))
            })
            .await?;
        let ((upstream, buffered), admitted, progress) = opened;
        let overhead = progress.overhead();
        self.metrics
            .llm_router_overhead
            .get_or_create(&LlmOverheadLabels { call: "stream".to_owned() })
            .observe(overhead.as_secs_f64());
        let provider = self.providers[admitted.target.provider].name.clone();
        Ok(ChatStream {
            router: self.clone(),
            upstream,
            buffered,
            provider,
            model: admitted.target.model,
            price: admitted.price,
            reservation: admitted.reservation,
            routing: progress.routing,
            request_id: call.request_id,
            caller: call.caller,
            api_key_id: call.api_key_id,
            started: progress.started,
            first_token: progress.started.elapsed(),
            overhead,
            content: String::new(),
            tool_calls: BTreeMap::new(),
            finish: None,
            usage: None,
            ended: false,
        })
    }
}

impl Router {
    /// Embeddings of `inputs`, routed, limited and paid for like a chat call: admitted
    /// on a worst case of the inputs' estimated tokens at the model's input price (an
    /// embedding model gives no output), settled on the tokens the provider reports.
    pub async fn embed(&self, mut call: Call, inputs: Vec<String>, dimensions: Option<u32>) -> CallResult<Embedded> {
        if inputs.is_empty() {
            return Err(Error::invalid("empty_input", "input must hold at least one text").into());
        }
        if inputs.iter().any(String::is_empty) {
            return Err(Error::invalid("empty_input", "input must not contain an empty string").into());
        }
        if dimensions == Some(0) {
            return Err(Error::invalid("invalid_dimensions", "dimensions must be at least 1").into());
        }
        if matches!(call.model.trim(), "" | "auto") {
            call.model.clone_from(&self.embedding_model);
        }
        call.kind = "embed";
        // admission sees the inputs as the prompt, and no output
        call.chat = ChatRequest {
            messages: inputs
                .iter()
                .map(|text| crate::types::Message::text(crate::types::Role::User, text.clone()))
                .collect(),
            max_tokens: Some(0),
            ..ChatRequest::default()
        };
        let upstream = &self.upstream;
        let inputs = &inputs;
        let ((vectors, reported), mut admitted, progress) = self
            .route(&call, |provider, model| async move { upstream.embed(provider, &model, inputs, dimensions).await })
            .await?;
        let usage = Usage { prompt_tokens: reported.unwrap_or(0), ..Usage::default() };
        let cost = match reported {
            Some(_) => admitted.price.cost_micros(&usage),
            None => admitted.reservation.as_ref().map_or(0, |r| r.micros),
        };
        let (provider, overhead) = self.settle_whole(&call, "embed", &mut admitted, &progress, usage, cost);
        Ok(Embedded { vectors, provider, model: admitted.target.model, usage, cost_micros: cost, overhead })
    }
}

impl Router {
    /// Settles a whole (not streamed) answer in the background and observes the
    /// router's overhead (`label`: the metric's call label).
    /// Returns the provider's name and the overhead.
    fn settle_whole(
        &self,
        call: &Call,
        label: &str,
        admitted: &mut Admitted,
        progress: &Progress,
        usage: Usage,
        cost_micros: i64,
    ) -> (String, Duration) {
        let provider = self.providers[admitted.target.provider].name.clone();
        let record = UsageRecord {
            request_id: call.request_id.clone(),
            caller: call.caller.clone(),
            api_key_id: call.api_key_id.clone(),
            kind: call.kind(),
            provider: provider.clone(),
            model: admitted.target.model.clone(),
            outcome: "ok".to_owned(),
            usage,
            cost_micros,
            latency_ms: progress.started.elapsed().as_millis() as u64,
            first_token_ms: 0,
            streamed: false,
            fell_back: progress.routing.fell_back,
            downgraded: progress.routing.downgraded,
        };
        self.budget.settle_later(admitted.reservation.take(), record);
        let overhead = progress.overhead();
        self.metrics
            .llm_router_overhead
            .get_or_create(&LlmOverheadLabels { call: label.to_owned() })
            .observe(overhead.as_secs_f64());
        (provider, overhead)
    }
}

fn unpriced(provider: &str, model: &str) -> Error {
    Error::invalid(
        "unpriced_model",
        format!(
            "{provider}/{model} has no price in the pricing table, and unpriced models are refused \
             (add it to llm.pricing_file, or set llm.unpriced_action = \"downgrade\")"
        ),
    )
}

/// What a stream yields: deltas as they come, then the whole answer once.
pub enum StreamItem {
    Delta(Delta),
    Done(Box<Answer>),
}

/// A streamed answer being relayed. Dropped before its end (the client went away), it
/// still settles: the whole reservation is charged, since the provider bills what it
/// generated and nobody counted it.
pub struct ChatStream {
    router: Arc<Router>,
    upstream: UpstreamStream,
    buffered: VecDeque<Delta>,
    pub provider: String,
    pub model: String,
    price: Price,
    reservation: Option<Reservation>,
    routing: Routing,
    request_id: String,
    caller: String,
    api_key_id: String,
    started: Instant,
    first_token: Duration,
    pub overhead: Duration,
    content: String,
    tool_calls: BTreeMap<u32, ToolCall>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    ended: bool,
}

impl ChatStream {
    /// The next piece; `None` after `Done` or an error.
    pub async fn next(&mut self) -> Option<Result<StreamItem>> {
        loop {
            if self.ended {
                return None;
            }
            let delta = match self.buffered.pop_front() {
                Some(delta) => Some(Ok(delta)),
                None => self.upstream.next().await,
            };
            match delta {
                Some(Ok(delta)) => {
                    self.accumulate(&delta);
                    if delta.is_content() {
                        return Some(Ok(StreamItem::Delta(delta)));
                    }
                }
                None => {
                    self.ended = true;
                    return Some(Ok(StreamItem::Done(Box::new(self.finish_ok()))));
                }
                Some(Err(error)) => {
                    self.ended = true;
                    self.router.count_attempt(&self.provider, "stream_broken");
                    self.settle("error");
                    let message = format!("{} failed in the middle of the answer: {error}", self.provider);
                    return Some(Err(Error::new(ErrorKind::Unavailable, "stream_interrupted", message)));
                }
            }
        }
    }

    fn accumulate(&mut self, delta: &Delta) {
        match delta {
            Delta::Text(text) => self.content.push_str(text),
            Delta::ToolCall { index, id, name, arguments } => {
                let call = self.tool_calls.entry(*index).or_insert_with(|| ToolCall {
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                });
                if let Some(id) = id {
                    call.id.clone_from(id);
                }
                if let Some(name) = name {
                    call.name.push_str(name);
                }
                call.arguments.push_str(arguments);
            }
            Delta::Finish(reason) => self.finish = Some(*reason),
            Delta::Usage(usage) => self.usage = Some(*usage),
        }
    }

    fn cost(&self) -> i64 {
        match (&self.usage, &self.reservation) {
            (Some(usage), _) => self.price.cost_micros(usage),
            (None, Some(reservation)) => reservation.micros,
            (None, None) => 0,
        }
    }

    fn settle(&mut self, outcome: &str) {
        let record = UsageRecord {
            request_id: self.request_id.clone(),
            caller: self.caller.clone(),
            api_key_id: self.api_key_id.clone(),
            kind: "chat",
            provider: self.provider.clone(),
            model: self.model.clone(),
            outcome: outcome.to_owned(),
            usage: self.usage.unwrap_or_default(),
            cost_micros: self.cost(),
            latency_ms: self.started.elapsed().as_millis() as u64,
            first_token_ms: self.first_token.as_millis() as u64,
            streamed: true,
            fell_back: self.routing.fell_back,
            downgraded: self.routing.downgraded,
        };
        self.router.budget.settle_later(self.reservation.take(), record);
    }

    fn finish_ok(&mut self) -> Answer {
        let cost = self.cost();
        self.settle("ok");
        let tool_calls: Vec<ToolCall> = std::mem::take(&mut self.tool_calls).into_values().collect();
        let finish =
            self.finish.unwrap_or(if tool_calls.is_empty() { FinishReason::Stop } else { FinishReason::ToolCalls });
        Answer {
            completion: Completion {
                content: std::mem::take(&mut self.content),
                tool_calls,
                finish_reason: finish,
                usage: self.usage,
            },
            provider: self.provider.clone(),
            model: self.model.clone(),
            routing: std::mem::take(&mut self.routing),
            usage: self.usage.unwrap_or_default(),
            cost_micros: cost,
            latency: self.started.elapsed(),
            first_token: Some(self.first_token),
            overhead: self.overhead,
        }
    }
}

impl Drop for ChatStream {
    fn drop(&mut self) {
        if !self.ended {
            self.usage = None;
            self.settle("cancelled");
        }
    }
}
